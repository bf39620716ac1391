"""The worker loop with real databases: progress, leases, timeouts, crashes, rejection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio.to_thread
import pytest

from ingestd.db.engine import Database
from ingestd.db.models import Asset
from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.jobs.dispatch import InProcessDispatcher
from ingestd.jobs.engine import Backoff, JobEngine
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext, Worker
from ingestd.queries import AssetQueries, AssetView

from .test_job_engine import asset_status, make_asset, states

pytestmark = pytest.mark.anyio


async def run_until(
    worker: Worker, done: Callable[[], Awaitable[bool]], timeout: float = 20
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        with anyio.fail_after(timeout):
            while not await done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def setup(
    database: Database, tmp_path: Path, steps: dict[str, Step], graph: Graph, **kw: float
) -> tuple[JobEngine, Worker, str, InProcessDispatcher]:
    engine = JobEngine(
        database, lease_s=kw.get("lease_s", 30), backoff=Backoff(base_s=0.05, cap_s=0.1)
    )
    dispatcher = InProcessDispatcher()
    worker = Worker(
        engine,
        dispatcher,
        steps,
        worker_id="w1",
        queues=["default"],
        concurrency=2,
        workdir=tmp_path / "work",
        heartbeat_s=kw.get("beat", 5),
        progress_s=0.05,
        poll_s=0.1,
    )
    asset = make_asset(database)
    with database.transaction() as s:
        engine.enqueue_graph(s, asset, graph)
    return engine, worker, asset, dispatcher


def asset_view(database: Database, asset_id: str) -> AssetView:
    with database.transaction() as s:
        owner = s.get_one(Asset, asset_id).owner_id
    return AssetQueries(database).get(owner, asset_id)


async def settled(database: Database, asset: str) -> bool:
    status = await anyio.to_thread.run_sync(asset_status, database, asset)
    return status in ("ready", "failed")


async def test_progress_is_stored_while_a_step_runs(database: Database, tmp_path: Path) -> None:
    halfway = asyncio.Event()
    release = asyncio.Event()

    async def slow(ctx: StepContext) -> Outcome:
        assert ctx.workdir.is_dir()
        ctx.report(0.5, eta_s=12.0)
        halfway.set()
        await release.wait()
        return Outcome({"ok": True})

    _, worker, asset, _ = setup(
        database,
        tmp_path,
        {"a": Step(slow), "b": Step(slow)},
        Graph((StepSpec("a"), StepSpec("b", ("a",)))),
    )
    seen: list[float] = []

    async def check() -> bool:
        if halfway.is_set() and not release.is_set():
            view = await anyio.to_thread.run_sync(asset_view, database, asset)
            step = view.steps[0]
            if step.percent == 50.0:
                seen.append(view.percent)
                assert step.eta_s == 12.0 and step.state == "running"
                release.set()
        return await settled(database, asset)

    await run_until(worker, check)
    assert seen and 0 < seen[0] < 100
    assert asset_status(database, asset) == "ready"
    assert not list((tmp_path / "work").iterdir())  # step workdirs are cleaned up


async def test_crash_and_failure_retry_then_succeed(database: Database, tmp_path: Path) -> None:
    calls: list[int] = []

    async def flaky(ctx: StepContext) -> Outcome:
        calls.append(ctx.claim.attempt)
        if ctx.claim.attempt == 1:
            raise RuntimeError("a bug")
        if ctx.claim.attempt == 2:
            raise TranscodeFailed("ffmpeg exited 1")
        return Outcome({"attempt": ctx.claim.attempt})

    _, worker, asset, _ = setup(
        database, tmp_path, {"a": Step(flaky)}, Graph((StepSpec("a", max_attempts=3),))
    )
    await run_until(worker, lambda: settled(database, asset))
    assert calls == [1, 2, 3] and asset_status(database, asset) == "ready"


async def test_rejection_is_not_retried(database: Database, tmp_path: Path) -> None:
    calls: list[int] = []

    async def reject(ctx: StepContext) -> Outcome:
        calls.append(1)
        raise SourceRejected("not audio")

    _, worker, asset, _ = setup(
        database, tmp_path, {"a": Step(reject)}, Graph((StepSpec("a", max_attempts=3),))
    )
    await run_until(worker, lambda: settled(database, asset))
    assert calls == [1] and asset_status(database, asset) == "failed"


async def test_timeout_fails_the_step(database: Database, tmp_path: Path) -> None:
    async def forever(ctx: StepContext) -> Outcome:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    _, worker, asset, _ = setup(
        database,
        tmp_path,
        {"a": Step(forever, timeout_s=0.2)},
        Graph((StepSpec("a", max_attempts=1),)),
    )
    await run_until(worker, lambda: settled(database, asset))
    view = asset_view(database, asset)
    assert view.asset.status == "failed" and "ran over" in (view.asset.error or "")


async def test_cancelling_the_asset_stops_the_running_step(
    database: Database, tmp_path: Path
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def long(ctx: StepContext) -> Outcome:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()  # where ffmpeg would be killed
            raise
        raise AssertionError("unreachable")

    engine, worker, asset, _ = setup(
        database, tmp_path, {"a": Step(long)}, Graph((StepSpec("a"),)), beat=0.1
    )

    async def cancel_when_started() -> bool:
        if started.is_set() and not cancelled.is_set():

            def cancel() -> None:
                with database.transaction() as s:
                    engine.cancel_asset(s, asset)

            await anyio.to_thread.run_sync(cancel)
        return cancelled.is_set()

    await run_until(worker, cancel_when_started)
    assert states(database, asset) == {"a": "cancelled"}


async def test_unknown_step_fails_cleanly(database: Database, tmp_path: Path) -> None:
    _, worker, asset, _ = setup(database, tmp_path, {}, Graph((StepSpec("mystery"),)))
    await run_until(worker, lambda: settled(database, asset))
    assert asset_status(database, asset) == "failed"


async def test_stopping_the_worker_hands_running_orders_back(
    database: Database, tmp_path: Path
) -> None:
    started = asyncio.Event()

    async def long(ctx: StepContext) -> Outcome:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    engine, worker, asset, _ = setup(database, tmp_path, {"a": Step(long)}, Graph((StepSpec("a"),)))
    await run_until(worker, lambda: _is_set(started))
    assert states(database, asset) == {"a": "ready"}  # not stuck until the lease expires
    claim = engine.claim("w2", ["default"])
    assert claim is not None and claim.attempt == 1  # the interrupted run did not count


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()
