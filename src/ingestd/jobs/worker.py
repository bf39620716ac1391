"""The worker loop: claim, run the step with a heartbeat, finish or fail.

Step code is async and receives a :class:`StepContext`; database calls of the engine
are synchronous and run in threads so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ingestd.errors import IngestdError, LeaseLost, SourceRejected, StepTimeout
from ingestd.jobs.dispatch import Dispatcher, Hint
from ingestd.jobs.engine import Claim, Hook, JobEngine
from ingestd.jobs.progress import ProgressBoard

T = TypeVar("T")


@dataclass
class Outcome:
    """What a step returns: a JSON result, and rows to write when it commits."""

    result: dict[str, Any] = field(default_factory=dict)
    hook: Hook | None = None


@dataclass
class StepContext:
    claim: Claim
    engine: JobEngine
    workdir: Path
    logger: logging.Logger
    progress: float = 0.0
    eta_s: float | None = None

    def report(self, fraction: float, eta_s: float | None = None) -> None:
        """Record progress; the heartbeat stores it."""
        self.progress = max(self.progress, min(1.0, fraction))
        self.eta_s = eta_s

    async def write(self, hook: Hook) -> None:
        """Write rows now, only while the lease is held (raises LeaseLost)."""
        await anyio.to_thread.run_sync(self.engine.write, self.claim, hook)

    async def read(self, fn: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.engine.db.transaction() as session:
                return fn(session)

        return await anyio.to_thread.run_sync(run)


StepFn = Callable[[StepContext], Awaitable[Outcome]]


@dataclass(frozen=True)
class Step:
    run: StepFn
    timeout_s: float | None = None


class Worker:
    def __init__(
        self,
        engine: JobEngine,
        dispatcher: Dispatcher,
        steps: Mapping[str, Step],
        *,
        worker_id: str,
        queues: Sequence[str],
        concurrency: int = 2,
        workdir: Path,
        heartbeat_s: float = 10.0,
        progress_s: float = 1.0,
        board: ProgressBoard | None = None,
        poll_s: float = 2.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.steps = steps
        self.worker_id = worker_id
        self.queues = list(queues)
        self.concurrency = concurrency
        self.workdir = workdir
        self.heartbeat_s = heartbeat_s
        self.progress_s = progress_s
        self.board = board
        self.poll_s = poll_s
        self.log = logger or logging.getLogger("ingestd.worker")
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        hints: list[Hint] = []
        try:
            while not stop.is_set():
                if hints:  # a broker named orders: claim those, acknowledging each after
                    await self._claim_named(hints)
                    hints = []
                else:  # nothing announced (or no broker): look in the database
                    claimed = False
                    while self._free() and not stop.is_set():
                        claim = await anyio.to_thread.run_sync(
                            self.engine.claim, self.worker_id, self.queues
                        )
                        if claim is None:
                            break
                        claimed = True
                        self._start(claim)
                    if claimed and self._free():
                        continue
                hints = await self._wait(stop)
        finally:
            for hint in hints:
                await hint.retry()
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    def _free(self) -> int:
        return max(0, self.concurrency - len(self._running))

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._execute(claim))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _claim_named(self, hints: list[Hint]) -> None:
        for hint in hints:
            if not self._free():
                await hint.retry()
                continue
            try:
                claim = await anyio.to_thread.run_sync(
                    self.engine.claim_order, self.worker_id, hint.order_id, self.queues
                )
            except (IngestdError, SQLAlchemyError) as exc:  # the database is away: later
                self.log.warning("claim of %s failed: %s", hint.order_id, exc)
                await hint.retry()
                continue
            # the claim has committed (or there was nothing to take): the message is done,
            # so the broker's delivery timeout never meets a long step
            await hint.settle()
            if claim is not None:
                self._start(claim)

    async def _wait(self, stop: asyncio.Event) -> list[Hint]:
        announced = asyncio.create_task(
            self.dispatcher.wait(self.queues, self.poll_s, limit=self._free())
        )
        waiters: list[asyncio.Task[Any]] = [announced, asyncio.create_task(stop.wait())]
        if self._running:
            waiters.append(asyncio.create_task(asyncio.wait(set(self._running))))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if announced.done() and not announced.cancelled() and announced.exception() is None:
            return announced.result()
        return []

    async def _execute(self, claim: Claim) -> None:
        # "family:member" steps (one per ladder rung, say) share the family's implementation
        step = self.steps.get(claim.step) or self.steps.get(claim.step.split(":", 1)[0] + ":")
        if step is None:
            await anyio.to_thread.run_sync(
                lambda: self.engine.fail(claim, f"no step named {claim.step!r}", retryable=False)
            )
            return
        workdir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{claim.step}-", dir=self.workdir))
        ctx = StepContext(claim, self.engine, workdir, self.log.getChild(claim.step))
        body = asyncio.create_task(self._run_body(step, ctx))
        beat = asyncio.create_task(self._heartbeat(ctx, body))
        try:
            outcome = await body
        except LeaseLost:
            self.log.warning("lost the lease on %s/%s; stopped", claim.asset_id, claim.step)
            return
        except asyncio.CancelledError:
            if beat.done() and not beat.cancelled() and beat.exception() is not None:
                return  # the lease was lost: another worker owns the order now
            # shutting down: hand the order back at once instead of waiting out the lease
            with contextlib.suppress(LeaseLost):
                await asyncio.shield(anyio.to_thread.run_sync(self.engine.release, claim))
            raise
        except SourceRejected as exc:
            await self._fail(claim, exc.message, retryable=False)
        except IngestdError as exc:
            await self._fail(claim, exc.message, retryable=True)
        except Exception as exc:  # a bug in a step must not kill the worker
            self.log.exception("step %s crashed", claim.step)
            await self._fail(claim, f"{type(exc).__name__}: {exc}", retryable=True)
        else:
            try:
                ready = await anyio.to_thread.run_sync(
                    self.engine.complete, claim, outcome.result, outcome.hook
                )
            except LeaseLost:
                self.log.warning("lease on %s/%s lost before commit", claim.asset_id, claim.step)
                return
            await self.dispatcher.announce(ready)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await beat
            shutil.rmtree(workdir, ignore_errors=True)

    async def _run_body(self, step: Step, ctx: StepContext) -> Outcome:
        try:
            return await asyncio.wait_for(step.run(ctx), timeout=step.timeout_s)
        except TimeoutError as exc:
            raise StepTimeout(f"step {ctx.claim.step} ran over {step.timeout_s} s") from exc

    async def _fail(self, claim: Claim, error: str, *, retryable: bool) -> None:
        try:
            retried = await anyio.to_thread.run_sync(
                lambda: self.engine.fail(claim, error, retryable=retryable)
            )
        except LeaseLost:
            return
        self.log.info(
            "%s/%s failed (attempt %d): %s%s",
            claim.asset_id,
            claim.step,
            claim.attempt,
            error,
            "; will retry" if retried else "",
        )

    async def _heartbeat(self, ctx: StepContext, body: asyncio.Task[Outcome]) -> None:
        """Extend the lease and store progress; cancel the step if the lease is lost.

        With a progress board (shared by every api replica), live figures go there each
        ``progress_s`` and the database sees one lease heartbeat each ``heartbeat_s``;
        without one, the database takes every change.
        """
        claim = ctx.claim
        last_beat = time.monotonic()
        sent = posted = -1.0
        try:
            while True:
                await asyncio.sleep(self.progress_s)
                due = time.monotonic() - last_beat >= self.heartbeat_s
                # a figure that does not move is put again with each heartbeat: the board
                # forgets what nobody renews
                if self.board is not None and (ctx.progress != posted or due):
                    try:
                        await self.board.put(
                            claim.asset_id, claim.order_id, ctx.progress, ctx.eta_s
                        )
                        posted = ctx.progress
                    except IngestdError as exc:  # the database still gets it at the heartbeat
                        self.log.warning("progress board: %s", exc)
                if not due and (self.board is not None or ctx.progress == sent):
                    continue
                try:
                    await anyio.to_thread.run_sync(
                        self.engine.heartbeat, claim, ctx.progress, ctx.eta_s
                    )
                except LeaseLost:
                    body.cancel()
                    raise
                sent = ctx.progress
                last_beat = time.monotonic()
        finally:
            if self.board is not None and posted >= 0:
                with contextlib.suppress(IngestdError):
                    await asyncio.shield(self.board.clear(claim.asset_id, claim.order_id))
