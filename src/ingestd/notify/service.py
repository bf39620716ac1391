"""Subscriptions, fan-out of events to deliveries, and the sender.

Events are written by whoever changes state (:func:`ingestd.jobs.engine.emit`), in that
transaction. :meth:`Notifier.fan_out` turns each new event (``published_at IS NULL``) into
one :class:`Delivery` per matching enabled subscription of the event's owner and marks the
event, in one transaction: several schedulers take disjoint events (``SKIP LOCKED`` on
PostgreSQL, one writer at a time on SQLite) and the unique (subscription, event) pair makes a
second insert a no-op. :meth:`Notifier.send_due` claims due deliveries for a lease (the
attempt is counted at the claim, so a sender that dies mid-send still uses up an attempt),
sends outside any transaction, then records the outcome if the claim still holds.

Delivery is at least once: a receiver deduplicates on ``Ingestd-Delivery``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ingestd.auth.signing import UrlSigner
from ingestd.db.engine import Database
from ingestd.db.models import Asset, Delivery, Event, Rendition, Subscription
from ingestd.db.types import new_id, utcnow
from ingestd.errors import InvalidRequest, NotFound
from ingestd.jobs.engine import Backoff
from ingestd.notify.email import EmailSender, Link, Notice, compose
from ingestd.notify.webhooks import DeliveryFailed, Response, WebhookSender, check_url, encode

#: The event types a subscription may name; ``"*"`` (all) and ``"<group>.*"`` are allowed too.
EVENT_TYPES = frozenset(
    {
        "upload.created",
        "upload.completed",
        "upload.cancelled",
        "upload.expired",
        "source.ingested",
        "source.rejected",
        "step.started",
        "step.succeeded",
        "step.retrying",
        "step.failed",
        "step.released",
        "step.rescued",
        "asset.ready",
        "asset.failed",
        "asset.cancelled",
        "asset.retry",
        "asset.published",
        "asset.unpublished",
        "publication.failed",
    }
)
KINDS = ("webhook", "email")
MAX_SUBSCRIPTIONS = 50  # per owner
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_FAILURE_LINES = 20  # the failed attempts kept in ``Delivery.error``
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
# renditions that are not "the" output of an asset, for the e-mail's link
_SIDE_KINDS = {"dash", "poster", "preview", "storyboard", "waveform", "waveform_image"}


# -- subscriptions --------------------------------------------------------------------------


def check_events(events: Sequence[str]) -> list[str]:
    groups = {t.split(".", 1)[0] + ".*" for t in EVENT_TYPES}
    unknown = [e for e in events if e != "*" and e not in EVENT_TYPES and e not in groups]
    if not events:
        raise InvalidRequest('name at least one event type (or "*")')
    if unknown:
        raise InvalidRequest(
            f"unknown event types: {', '.join(unknown)}", known=sorted(EVENT_TYPES)
        )
    return sorted(set(events))


def check_email(address: str) -> str:
    if len(address) > 254 or not _EMAIL.match(address):
        raise InvalidRequest(f"{address!r} is not an e-mail address")
    return address


def matches(patterns: Iterable[str], event_type: str) -> bool:
    group = event_type.split(".", 1)[0] + ".*"
    return any(p in ("*", event_type, group) for p in patterns)


def mask(secret: str | None) -> str | None:
    return f"{secret[:6]}…{secret[-4:]}" if secret else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def subscription_view(sub: Subscription, *, secret: str | None = None) -> dict[str, Any]:
    """The API's and the CLI's form; the secret only when just created, else masked."""
    return {
        "id": sub.id,
        "kind": sub.kind,
        "url" if sub.kind == "webhook" else "address": sub.address,
        "events": list(sub.events),
        "enabled": sub.enabled,
        "secret": secret if secret is not None else mask(sub.secret),
        "created_at": _iso(sub.created_at),
    }


def delivery_view(d: Delivery, event_type: str) -> dict[str, Any]:
    failures = d.error.splitlines() if d.error else []
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": event_type,
        "status": d.status,
        "attempts": d.attempts,
        "response_status": d.response_status,
        "response_body": d.response_body,
        "error": failures[-1] if failures and d.status != DELIVERED else None,
        "failures": failures,
        "created_at": _iso(d.created_at),
        "next_attempt_at": _iso(d.next_attempt_at) if d.status == PENDING else None,
        "delivered_at": _iso(d.delivered_at),
    }


class Subscriptions:
    """An owner's notification endpoints; every lookup is scoped to the owner."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, owner_id: str, kind: str, address: str, events: Sequence[str]
    ) -> tuple[Subscription, str | None]:
        """The new subscription and, for a webhook, its signing secret (shown only now).
        Raises InvalidRequest."""
        if kind == "webhook":
            try:
                check_url(address)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from exc
        elif kind == "email":
            check_email(address)
        else:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
        types = check_events(events)
        secret = f"whsec_{secrets.token_urlsafe(32)}" if kind == "webhook" else None
        with self.db.transaction() as session:
            count = session.scalar(
                select(func.count())
                .select_from(Subscription)
                .where(Subscription.owner_id == owner_id)
            )
            if (count or 0) >= MAX_SUBSCRIPTIONS:
                raise InvalidRequest(f"at most {MAX_SUBSCRIPTIONS} subscriptions per owner")
            sub = Subscription(
                id=new_id("sub"),
                owner_id=owner_id,
                kind=kind,
                address=address,
                secret=secret,
                events=types,
                enabled=True,
                created_at=utcnow(),
            )
            session.add(sub)
        return sub, secret

    def owned(self, owner_id: str) -> list[Subscription]:
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(Subscription)
                    .where(Subscription.owner_id == owner_id)
                    .order_by(Subscription.created_at, Subscription.id)
                )
            )

    def _owned(self, session: Session, owner_id: str, sub_id: str) -> Subscription:
        sub = session.get(Subscription, sub_id)
        if sub is None or sub.owner_id != owner_id:
            raise NotFound(f"subscription {sub_id} not found")
        return sub

    def remove(self, owner_id: str, sub_id: str) -> None:
        """Delete it and its deliveries (pending ones are not sent). Raises NotFound."""
        with self.db.transaction() as session:
            session.delete(self._owned(session, owner_id, sub_id))

    def deliveries(
        self, owner_id: str, sub_id: str, *, limit: int = 50
    ) -> list[tuple[Delivery, str]]:
        """The newest deliveries with their event type. Raises NotFound."""
        with self.db.transaction() as session:
            self._owned(session, owner_id, sub_id)
            rows = session.execute(
                select(Delivery, Event.type)
                .join(Event, Event.id == Delivery.event_id)
                .where(Delivery.subscription_id == sub_id)
                .order_by(Delivery.created_at.desc(), Delivery.event_id.desc())
                .limit(max(1, min(limit, 500)))
            ).all()
            return [(d, t) for d, t in rows]


# -- fan-out and sending --------------------------------------------------------------------


@dataclass(frozen=True)
class _Outgoing:
    """A claimed delivery attempt, with everything needed to send it off the database."""

    delivery_id: str
    attempt: int
    kind: str
    address: str
    secret: str | None
    event_type: str
    body: bytes
    notice: Notice


class Notifier:
    """Fans events out to deliveries and sends the due ones; :meth:`run_once` does both.

    ``base_url`` is where recipients reach this server: e-mails link renditions under it.
    """

    #: a mark older than this vouches that every event up to its id was seen
    MARK_LAG_S = 60.0
    #: and every this often the whole table is looked at again anyway
    FULL_SCAN_S = 600.0

    def __init__(
        self,
        db: Database,
        signer: UrlSigner,
        *,
        webhooks: WebhookSender,
        email: EmailSender,
        base_url: str,
        max_attempts: int = 8,
        backoff: Backoff | None = None,
        batch: int = 200,
        concurrency: int = 16,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.db = db
        self.signer = signer
        self.webhooks = webhooks
        self.email = email
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff(base_s=10.0, cap_s=3600.0)
        self.batch = batch
        self.concurrency = concurrency
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logger or logging.getLogger("ingestd.notify")
        timeout = max(webhooks.timeout_s, email.config.timeout_s if email.config else 0.0)
        self.lease = timedelta(seconds=timeout + 60.0)
        self._marks: deque[tuple[float, int]] = deque()
        self._full_scan_at = 0.0

    async def run_once(self) -> int:
        """Fan out new events, then send what is due; returns the attempts made."""
        created = await asyncio.to_thread(self.fan_out)
        if created:
            self.log.debug("notify: %d deliveries created", created)
        return await self.send_due()

    async def aclose(self) -> None:
        await self.webhooks.aclose()

    # -- fan-out ----------------------------------------------------------------------

    def _floor(self) -> int:
        """An event id at or below which every event is already fanned out (0: unknown)."""
        now = time.monotonic()
        if now - self._full_scan_at > self.FULL_SCAN_S:
            self._full_scan_at = now
            return 0
        while len(self._marks) > 1 and now - self._marks[1][0] >= self.MARK_LAG_S:
            self._marks.popleft()
        if self._marks and now - self._marks[0][0] >= self.MARK_LAG_S:
            return self._marks[0][1]
        return 0

    def fan_out(self) -> int:
        """One batch of new events into deliveries; returns how many deliveries it made."""
        floor = self._floor()
        now = self.clock()
        with self.db.transaction() as session:
            top = session.scalar(select(func.max(Event.id))) or 0
            query = (
                select(Event)
                .where(Event.published_at.is_(None), Event.id > floor, Event.id <= top)
                .order_by(Event.id)
                .limit(self.batch)
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            events = list(session.scalars(query))
            rows = self._deliveries_for(session, events, now)
            if rows:
                insert = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
                session.execute(
                    insert(Delivery).on_conflict_do_nothing(
                        index_elements=["subscription_id", "event_id"]
                    ),
                    rows,
                )
            for event in events:
                event.published_at = now
        if len(events) < self.batch:  # everything committed up to ``top`` was seen
            self._marks.append((time.monotonic(), top))
        return len(rows)

    @staticmethod
    def _deliveries_for(
        session: Session, events: list[Event], now: datetime
    ) -> list[dict[str, Any]]:
        if not events:
            return []
        subs = list(
            session.scalars(
                select(Subscription).where(
                    Subscription.owner_id.in_({e.owner_id for e in events}),
                    Subscription.enabled.is_(True),
                )
            )
        )
        return [
            {
                "id": new_id("dl"),
                "subscription_id": s.id,
                "event_id": e.id,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for e in events
            for s in subs
            if s.owner_id == e.owner_id and matches(s.events, e.type)
        ]

    # -- sending ----------------------------------------------------------------------

    async def send_due(self) -> int:
        """Claim one batch of due deliveries, send them (some at once), record the
        outcomes; returns how many were attempted."""
        outgoing = await self.db.run(self._claim_due)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(out: _Outgoing) -> None:
            async with gate:
                result = await self._attempt(out)
            await self.db.run(lambda session: self._record(session, out, result))

        await asyncio.gather(*(one(o) for o in outgoing))
        return len(outgoing)

    def _claim_due(self, session: Session) -> list[_Outgoing]:
        now = self.clock()
        query = (
            select(Delivery, Subscription, Event)
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .join(Event, Event.id == Delivery.event_id)
            .where(
                Delivery.status == PENDING,
                Delivery.next_attempt_at <= now,
                Subscription.enabled.is_(True),
            )
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(self.batch)
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update(of=Delivery, skip_locked=True)
        claimed: list[_Outgoing] = []
        for delivery, sub, event in session.execute(query).all():
            delivery.attempts += 1
            delivery.next_attempt_at = now + self.lease  # other senders leave it meanwhile
            asset = session.get(Asset, event.asset_id) if event.asset_id else None
            claimed.append(
                _Outgoing(
                    delivery_id=delivery.id,
                    attempt=delivery.attempts,
                    kind=sub.kind,
                    address=sub.address,
                    secret=sub.secret,
                    event_type=event.type,
                    body=encode(_payload(event, asset)),
                    notice=self._notice(session, event, asset, sub.kind),
                )
            )
        return claimed

    def _notice(self, session: Session, event: Event, asset: Asset | None, kind: str) -> Notice:
        link = None
        if kind == "email" and asset is not None and event.type == "asset.ready":
            renditions = session.scalars(select(Rendition).where(Rendition.asset_id == asset.id))
            link = self.download_link(list(renditions))
        title = (asset.title if asset else None) or (asset.id if asset else "ingestd")
        return Notice(event.type, event.asset_id, title, dict(event.data), link)

    def download_link(self, renditions: Sequence[Rendition]) -> Link | None:
        """The HLS master playlist when there is one, else the largest main rendition (an
        archive, an audio or video file...), signed for the signer's ttl (rounded up to
        the hour)."""
        by_name = {r.name: r for r in renditions}
        if "hls" in by_name:
            chosen, label = by_name["hls"], "Play or download it (HLS master playlist)"
        else:
            main = [r for r in renditions if r.kind not in _SIDE_KINDS] or list(renditions)
            if not main:
                return None
            chosen = max(main, key=lambda r: (r.size or 0, r.name))
            label = f"Download it ({chosen.name})"
        path = self.signer.sign(chosen.storage_key)
        expires = datetime.fromtimestamp(int(path.split("/")[2]), UTC)
        return Link(self.base_url + path, label, expires)

    async def _attempt(self, out: _Outgoing) -> Response | DeliveryFailed:
        try:
            if out.kind == "webhook":
                if not out.secret:
                    raise DeliveryFailed("the subscription has no signing secret", permanent=True)
                return await self.webhooks.send(
                    out.address,
                    out.secret,
                    out.body,
                    event_type=out.event_type,
                    delivery_id=out.delivery_id,
                )
            if out.kind == "email":
                message = compose(out.notice, to=out.address, sender=self.email.sender)
                return await self.email.send(message)
            raise DeliveryFailed(f"unknown subscription kind {out.kind!r}", permanent=True)
        except DeliveryFailed as exc:
            return exc

    def _record(self, session: Session, out: _Outgoing, result: Response | DeliveryFailed) -> None:
        delivery = session.get(Delivery, out.delivery_id, with_for_update=True)
        if delivery is None or delivery.status != PENDING or delivery.attempts != out.attempt:
            return  # deleted, or our lease ran out and another sender took it
        now = self.clock()
        if isinstance(result, Response):
            delivery.status = DELIVERED
            delivery.delivered_at = now
            delivery.response_status = result.status
            delivery.response_body = result.body
            return
        delivery.response_status = result.status
        delivery.response_body = result.body
        line = f"attempt {out.attempt} at {_iso(now)}: {result.message}"
        lines = [*(delivery.error or "").splitlines(), " ".join(line.split())]
        delivery.error = "\n".join(lines[-_FAILURE_LINES:])
        if result.permanent or delivery.attempts >= self.max_attempts:
            delivery.status = FAILED
            self.log.warning("notify: delivery %s failed: %s", delivery.id, result.message)
        else:
            delay = self.backoff.delay(delivery.attempts, self.rng)
            delivery.next_attempt_at = now + timedelta(seconds=delay)


def _payload(event: Event, asset: Asset | None) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "created_at": _iso(event.created_at),
        "asset_id": event.asset_id,
        "data": event.data,
        "asset": (
            {"id": asset.id, "status": asset.status, "title": asset.title, "kind": asset.kind}
            if asset is not None
            else None
        ),
    }
