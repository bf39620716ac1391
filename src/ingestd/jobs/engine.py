"""Work orders in the database: claim with a lease, heartbeat, finish, retry.

The database holds all job state; a dispatcher only says "look". Every write of a
result checks the lease token, so a worker that lost its lease cannot overwrite.
Finishing a step, enabling the steps whose inputs are now done, and writing the
event happen in one transaction.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, select, update
from sqlalchemy.orm import Session

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Event, OutboxMessage, WorkOrder
from ingestd.db.types import new_id, utcnow
from ingestd.domain.states import (
    ACTIVE_ORDER_STATES,
    DONE_ORDER_STATES,
    AssetStatus,
    OrderState,
    can_transition,
    check_transition,
)
from ingestd.errors import InvalidState, LeaseLost, NotFound
from ingestd.jobs.graph import Graph, is_ready

Hook = Callable[[Session], None]


@dataclass(frozen=True)
class Claim:
    order_id: str
    asset_id: str
    step: str
    queue: str
    token: str
    attempt: int
    max_attempts: int
    params: dict[str, Any]
    content_key: str | None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    """A work order that may be claimed now: what a dispatcher announces."""

    order_id: str
    queue: str


@dataclass(frozen=True)
class Backoff:
    base_s: float = 2.0
    cap_s: float = 300.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Exponential in the attempt number, with full jitter in [0.5, 1.5)."""
        raw = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return raw * (0.5 + rng.random())


def emit(session: Session, owner_id: str, asset_id: str | None, type_: str, **data: Any) -> None:
    session.add(Event(owner_id=owner_id, asset_id=asset_id, type=type_, data=data))


def set_asset_status(session: Session, asset: Asset, status: AssetStatus) -> bool:
    """Move an asset to ``status`` if allowed; returns whether it moved."""
    current = AssetStatus(asset.status)
    if current == status:
        return False
    check_transition(current, status)
    asset.status = status.value
    return True


class JobEngine:
    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 60.0,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        outbox: bool = False,
    ) -> None:
        """With ``outbox``, every order made ready also gets an :class:`OutboxMessage` in the
        same transaction, for a broker relay to publish after commit."""
        self.db = db
        self.outbox = outbox
        self.lease = timedelta(seconds=lease_s)
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.rng = rng or random.Random()

    # -- creating orders --------------------------------------------------------------

    def enqueue_graph(
        self, session: Session, asset_id: str, graph: Graph, *, force: bool = False
    ) -> list[Ready]:
        """Add the graph's orders for an asset inside the caller's transaction.

        A step whose content key equals that of its last successful run is skipped
        (its previous result stands) unless ``force``.
        """
        states: dict[str, OrderState] = {}
        orders: list[WorkOrder] = []
        for name in graph.topological_order():
            spec = next(s for s in graph.steps if s.name == name)
            previous = None
            if spec.content_key and not force:
                previous = session.scalars(
                    select(WorkOrder)
                    .where(
                        WorkOrder.asset_id == asset_id,
                        WorkOrder.step == name,
                        WorkOrder.state == OrderState.SUCCEEDED.value,
                        WorkOrder.content_key == spec.content_key,
                    )
                    .order_by(WorkOrder.finished_at.desc())
                    .limit(1)
                ).first()
            if previous is not None:
                state = OrderState.SKIPPED
            elif is_ready(spec.depends_on, states):
                state = OrderState.READY
            else:
                state = OrderState.BLOCKED
            states[name] = state
            order = WorkOrder(
                id=new_id("wo"),
                asset_id=asset_id,
                step=name,
                queue=spec.queue,
                depends_on=list(spec.depends_on),
                state=state.value,
                priority=round(spec.weight * 10),
                max_attempts=spec.max_attempts,
                content_key=spec.content_key,
                params={**spec.params, "weight": spec.weight},
                run_after=self.clock(),
                result=previous.result if previous is not None else None,
                progress=1.0 if previous is not None else 0.0,
                finished_at=self.clock() if previous is not None else None,
            )
            session.add(order)
            orders.append(order)
        session.flush()
        return self._post(
            session, [Ready(o.id, o.queue) for o in orders if o.state == OrderState.READY.value]
        )

    # -- claiming ---------------------------------------------------------------------

    def claim(self, worker_id: str, queues: Sequence[str]) -> Claim | None:
        """Take the most urgent ready order of ``queues``, or None."""
        now = self.clock()
        query = (
            select(WorkOrder)
            .where(
                WorkOrder.state == OrderState.READY.value,
                WorkOrder.queue.in_(list(queues)),
                WorkOrder.run_after <= now,
            )
            .order_by(WorkOrder.priority.desc(), WorkOrder.created_at, WorkOrder.id)
            .limit(1)
        )
        return self._claim(worker_id, query, now)

    def claim_order(self, worker_id: str, order_id: str, queues: Sequence[str]) -> Claim | None:
        """Take this order if it is ready now (a broker message named it), else None: it was
        taken, finished or cancelled meanwhile, or waits for a retry delay."""
        now = self.clock()
        query = select(WorkOrder).where(
            WorkOrder.id == order_id,
            WorkOrder.state == OrderState.READY.value,
            WorkOrder.queue.in_(list(queues)),
            WorkOrder.run_after <= now,
        )
        return self._claim(worker_id, query, now)

    def _claim(self, worker_id: str, query: Select[WorkOrder], now: datetime) -> Claim | None:
        with self.db.transaction() as session:
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            order = session.scalars(query).first()
            if order is None:
                return None
            check_transition(OrderState(order.state), OrderState.RUNNING)
            order.state = OrderState.RUNNING.value
            order.attempts += 1
            order.lease_owner = worker_id
            order.lease_token = secrets.token_hex(16)
            order.lease_expires_at = now + self.lease
            order.started_at = order.started_at or now
            order.error = None
            inputs = {
                o.step: o.result or {}
                for o in session.scalars(
                    select(WorkOrder).where(
                        WorkOrder.asset_id == order.asset_id,
                        WorkOrder.step.in_(order.depends_on),
                        WorkOrder.state.in_([s.value for s in DONE_ORDER_STATES]),
                    )
                )
            }
            asset = session.get_one(Asset, order.asset_id)
            emit(
                session,
                asset.owner_id,
                asset.id,
                "step.started",
                step=order.step,
                attempt=order.attempts,
            )
            return Claim(
                order_id=order.id,
                asset_id=order.asset_id,
                step=order.step,
                queue=order.queue,
                token=order.lease_token,
                attempt=order.attempts,
                max_attempts=order.max_attempts,
                params=dict(order.params),
                content_key=order.content_key,
                inputs=inputs,
            )

    def _held(self, session: Session, claim: Claim) -> WorkOrder:
        """The claimed order, locked, if this claim still holds its lease."""
        query = select(WorkOrder).where(WorkOrder.id == claim.order_id)
        if self.db.dialect == "postgresql":
            query = query.with_for_update()
        order = session.scalars(query).first()
        if (
            order is None
            or order.state != OrderState.RUNNING.value
            or order.lease_token != claim.token
        ):
            raise LeaseLost(f"lease on {claim.step} of {claim.asset_id} is no longer held")
        return order

    def heartbeat(
        self, claim: Claim, progress: float | None = None, eta_s: float | None = None
    ) -> None:
        """Extend the lease and record progress; raises :class:`LeaseLost`."""
        with self.db.transaction() as session:
            order = self._held(session, claim)
            order.lease_expires_at = self.clock() + self.lease
            if progress is not None:
                order.progress = max(0.0, min(1.0, progress))
            order.eta_s = eta_s

    def write(self, claim: Claim, hook: Hook) -> None:
        """Run ``hook`` in a transaction only while the lease is held."""
        with self.db.transaction() as session:
            self._held(session, claim)
            hook(session)

    # -- finishing --------------------------------------------------------------------

    def complete(
        self, claim: Claim, result: dict[str, Any], hook: Hook | None = None
    ) -> list[Ready]:
        """Finish a step; enable its dependents; settle the asset. One transaction."""
        now = self.clock()
        with self.db.transaction() as session:
            # The asset row first: two last steps finishing at once would otherwise each
            # see the other still running (READ COMMITTED) and neither settle the asset.
            asset = session.get_one(Asset, claim.asset_id, with_for_update=True)
            order = self._held(session, claim)
            order.state = check_transition(OrderState.RUNNING, OrderState.SUCCEEDED).value
            order.result = result
            order.progress = 1.0
            order.eta_s = None
            order.finished_at = now
            order.lease_token = None
            order.lease_expires_at = None
            emit(session, asset.owner_id, asset.id, "step.succeeded", step=claim.step)
            if hook is not None:
                hook(session)
            session.flush()
            ready = self._release_dependents(session, claim.asset_id)
            self._settle_asset(session, asset)
            return self._post(session, ready)

    def fail(self, claim: Claim, error: str, *, retryable: bool = True) -> bool:
        """Record a failed attempt. Returns True if the step will be retried."""
        now = self.clock()
        with self.db.transaction() as session:
            asset = session.get_one(Asset, claim.asset_id, with_for_update=True)  # see complete
            order = self._held(session, claim)
            order.error = error
            order.lease_token = None
            order.lease_expires_at = None
            if retryable and order.attempts < order.max_attempts:
                delay = self.backoff.delay(order.attempts, self.rng)
                order.state = OrderState.READY.value
                order.run_after = now + timedelta(seconds=delay)
                emit(
                    session,
                    asset.owner_id,
                    asset.id,
                    "step.retrying",
                    step=claim.step,
                    attempt=order.attempts,
                    error=error,
                    retry_in_s=round(delay, 3),
                )
                return True
            order.state = OrderState.FAILED.value
            order.finished_at = now
            emit(session, asset.owner_id, asset.id, "step.failed", step=claim.step, error=error)
            self._fail_asset(session, asset, f"{claim.step}: {error}")
            return False

    def release(self, claim: Claim) -> Ready:
        """Give a claimed order back untried (the worker is stopping; not the step's fault)."""
        with self.db.transaction() as session:
            order = self._held(session, claim)
            order.state = check_transition(OrderState.RUNNING, OrderState.READY).value
            order.attempts = max(0, order.attempts - 1)
            order.lease_token = None
            order.lease_expires_at = None
            order.run_after = self.clock()
            asset = session.get_one(Asset, claim.asset_id)
            emit(session, asset.owner_id, asset.id, "step.released", step=claim.step)
            return self._post(session, [Ready(order.id, order.queue)])[0]

    def rescue_expired(self) -> list[Ready]:
        """Put orders whose lease expired back in line (or fail them when out of attempts)."""
        now = self.clock()
        ready: list[Ready] = []
        with self.db.transaction() as session:
            query = select(WorkOrder).where(
                WorkOrder.state == OrderState.RUNNING.value, WorkOrder.lease_expires_at < now
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            for order in session.scalars(query).all():
                asset = session.get_one(Asset, order.asset_id)
                order.lease_token = None
                order.lease_expires_at = None
                order.error = f"lease held by {order.lease_owner} expired"
                if order.attempts < order.max_attempts:
                    order.state = OrderState.READY.value
                    order.run_after = now
                    ready.append(Ready(order.id, order.queue))
                    emit(
                        session,
                        asset.owner_id,
                        asset.id,
                        "step.rescued",
                        step=order.step,
                        worker=order.lease_owner,
                    )
                else:
                    order.state = OrderState.FAILED.value
                    order.finished_at = now
                    self._fail_asset(session, asset, f"{order.step}: {order.error}")
            self._post(session, ready)
        return ready

    def cancel_asset(self, session: Session, asset_id: str) -> int:
        """Cancel every active order of an asset (running ones lose their lease)."""
        result = session.execute(
            update(WorkOrder)
            .where(
                WorkOrder.asset_id == asset_id,
                WorkOrder.state.in_([s.value for s in ACTIVE_ORDER_STATES]),
            )
            .values(
                state=OrderState.CANCELLED.value,
                lease_token=None,
                lease_expires_at=None,
                finished_at=self.clock(),
            )
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def cancel_processing(self, owner_id: str, asset_id: str) -> int:
        """The owner stops an asset's processing: active orders are cancelled (a running
        step loses its lease at its next heartbeat, which stops its ffmpeg) and the asset
        fails with the reason. Returns how many orders were cancelled."""
        with self.db.transaction() as session:
            asset = session.get(Asset, asset_id, with_for_update=True)
            if asset is None or asset.owner_id != owner_id:
                raise NotFound(f"asset {asset_id} not found")
            if AssetStatus(asset.status) not in (AssetStatus.INGESTING, AssetStatus.PROCESSING):
                raise InvalidState(f"asset {asset_id} is {asset.status}; nothing to cancel")
            cancelled = self.cancel_asset(session, asset_id)
            self._fail_asset(session, asset, "processing cancelled by the owner")
            emit(session, owner_id, asset_id, "asset.cancelled", orders=cancelled)
            return cancelled

    def retry(self, owner_id: str, asset_id: str, steps: Sequence[str]) -> list[Ready]:
        """Run again the first of ``steps`` the asset has, with every order of the asset that
        did not finish (failed or cancelled) and everything downstream of them; orders that
        succeeded stay. The asset goes back to processing. Raises NotFound or InvalidState."""
        with self.db.transaction() as session:
            asset = session.get(Asset, asset_id, with_for_update=True)
            if asset is None or asset.owner_id != owner_id:
                raise NotFound(f"asset {asset_id} not found")
            latest = self._latest_orders(session, asset_id)
            by_step = {o.step: o for o in latest}
            step = next((s for s in steps if s in by_step), None)
            if step is None:
                raise NotFound(f"asset {asset_id} has no work order for {steps[0]}")
            if any(OrderState(o.state) in ACTIVE_ORDER_STATES for o in latest):
                raise InvalidState(f"asset {asset_id} is still being processed")
            redo = {step} | {
                o.step
                for o in latest
                if o.state in (OrderState.FAILED.value, OrderState.CANCELLED.value)
            }
            grew = True
            while grew:  # everything downstream of what runs again runs again
                extra = {o.step for o in latest if o.step not in redo and redo & set(o.depends_on)}
                redo |= extra
                grew = bool(extra)
            states = {o.step: OrderState(o.state) for o in latest if o.step not in redo}
            ready: list[Ready] = []
            for old in latest:  # in creation order, so dependencies come first
                if old.step not in redo:
                    continue
                state = OrderState.READY if is_ready(old.depends_on, states) else OrderState.BLOCKED
                states[old.step] = state
                order = WorkOrder(
                    id=new_id("wo"),
                    asset_id=asset_id,
                    step=old.step,
                    queue=old.queue,
                    depends_on=list(old.depends_on),
                    state=state.value,
                    priority=old.priority,
                    max_attempts=old.max_attempts,
                    content_key=old.content_key,
                    params=old.params,
                    run_after=self.clock(),
                )
                session.add(order)
                if state == OrderState.READY:
                    ready.append(Ready(order.id, order.queue))
            if AssetStatus(asset.status) != AssetStatus.PROCESSING:
                set_asset_status(session, asset, AssetStatus.PROCESSING)
            asset.error = None
            emit(session, owner_id, asset_id, "asset.retry", steps=sorted(redo))
            session.flush()
            return self._post(session, ready)

    # -- the dispatch outbox ------------------------------------------------------------

    def _post(self, session: Session, ready: list[Ready]) -> list[Ready]:
        """Write an outbox message per ready order, in the caller's transaction."""
        if self.outbox:
            session.add_all(OutboxMessage(queue=r.queue, order_id=r.order_id) for r in ready)
        return ready

    def outbox_batch(self, limit: int = 200, *, hold_s: float = 30.0) -> list[tuple[int, Ready]]:
        """Take the oldest messages waiting to be published, for ``hold_s``: another relay
        skips them meanwhile, and takes them after that if they are still there (the
        publisher died). Delete them with :meth:`outbox_done` once the broker confirmed."""
        now = self.clock()
        with self.db.transaction() as session:
            query = (
                select(OutboxMessage)
                .where((OutboxMessage.relay_until.is_(None)) | (OutboxMessage.relay_until < now))
                .order_by(OutboxMessage.id)
                .limit(limit)
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            for m in rows:
                m.relay_until = now + timedelta(seconds=hold_s)
            return [(m.id, Ready(m.order_id, m.queue)) for m in rows]

    def outbox_done(self, ids: Sequence[int]) -> None:
        """Forget messages the broker confirmed."""
        if not ids:
            return
        with self.db.transaction() as session:
            session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(list(ids))))

    # -- internals --------------------------------------------------------------------

    def _latest_orders(self, session: Session, asset_id: str) -> list[WorkOrder]:
        """The newest order of each step of an asset (earlier runs are history)."""
        latest: dict[str, WorkOrder] = {}
        for o in session.scalars(
            select(WorkOrder)
            .where(WorkOrder.asset_id == asset_id)
            .order_by(WorkOrder.created_at, WorkOrder.id)
        ):
            latest[o.step] = o
        return list(latest.values())

    def _release_dependents(self, session: Session, asset_id: str) -> list[Ready]:
        orders = self._latest_orders(session, asset_id)
        states = {o.step: OrderState(o.state) for o in orders}
        ready: list[Ready] = []
        for o in orders:
            if o.state == OrderState.BLOCKED.value and is_ready(o.depends_on, states):
                o.state = check_transition(OrderState.BLOCKED, OrderState.READY).value
                o.run_after = self.clock()
            if o.state == OrderState.READY.value:
                ready.append(Ready(o.id, o.queue))
        return ready

    def _settle_asset(self, session: Session, asset: Asset) -> None:
        states = [o.state for o in self._latest_orders(session, asset.id)]
        if not states or any(OrderState(s) not in DONE_ORDER_STATES for s in states):
            return
        if AssetStatus(asset.status) == AssetStatus.PROCESSING:
            set_asset_status(session, asset, AssetStatus.READY)
            asset.error = None
            emit(session, asset.owner_id, asset.id, "asset.ready")

    def _fail_asset(self, session: Session, asset: Asset, error: str) -> None:
        self.cancel_asset(session, asset.id)
        if can_transition(AssetStatus(asset.status), AssetStatus.FAILED):
            asset.status = AssetStatus.FAILED.value
            asset.error = error
            emit(session, asset.owner_id, asset.id, "asset.failed", error=error)
