"""The job engine on real SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Event, Owner, Rendition, WorkOrder
from ingestd.db.types import new_id, utcnow
from ingestd.domain.states import AssetStatus
from ingestd.errors import LeaseLost
from ingestd.jobs.engine import Backoff, JobEngine
from ingestd.jobs.graph import Graph, StepSpec

GRAPH = Graph(
    (
        StepSpec("probe"),
        StepSpec("encode", ("probe",), queue="encode"),
        StepSpec("thumbs", ("probe",)),
        StepSpec("package", ("encode", "thumbs")),
    )
)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_asset(db: Database, status: AssetStatus = AssetStatus.PROCESSING) -> str:
    with db.transaction() as s:
        owner = Owner(id=new_id("own"), name=new_id("o"))
        s.add(owner)
        s.flush()
        asset = Asset(id=new_id("as"), owner_id=owner.id, status=status.value, meta={})
        s.add(asset)
        return asset.id


def states(db: Database, asset_id: str) -> dict[str, str]:
    with db.transaction() as s:
        return {
            o.step: o.state
            for o in s.scalars(select(WorkOrder).where(WorkOrder.asset_id == asset_id))
        }


def asset_status(db: Database, asset_id: str) -> str:
    with db.transaction() as s:
        return s.get_one(Asset, asset_id).status


def enqueue(engine: JobEngine, asset_id: str, graph: Graph = GRAPH) -> None:
    with engine.db.transaction() as s:
        engine.enqueue_graph(s, asset_id, graph)


def test_dag_runs_in_dependency_order_and_settles_the_asset(database: Database) -> None:
    engine = JobEngine(database)
    asset = make_asset(database)
    enqueue(engine, asset)
    assert states(database, asset) == {
        "probe": "ready",
        "encode": "blocked",
        "thumbs": "blocked",
        "package": "blocked",
    }
    assert engine.claim("w", ["encode"]) is None  # encode is not ready yet

    probe = engine.claim("w", ["default", "encode"])
    assert probe is not None and probe.step == "probe" and probe.attempt == 1
    ready = engine.complete(probe, {"duration": 3.0})
    assert {r.queue for r in ready} == {"default", "encode"}

    encode = engine.claim("w", ["encode"])
    assert encode is not None and encode.inputs == {"probe": {"duration": 3.0}}
    thumbs = engine.claim("w", ["default"])
    assert thumbs is not None and thumbs.step == "thumbs"
    engine.complete(thumbs, {})
    assert states(database, asset)["package"] == "blocked"  # still waits for encode
    engine.complete(encode, {})
    package = engine.claim("w", ["default"])
    assert package is not None and package.step == "package"
    assert asset_status(database, asset) == "processing"
    engine.complete(package, {})
    assert asset_status(database, asset) == "ready"
    with database.transaction() as s:
        types = [
            e.type
            for e in s.scalars(select(Event).where(Event.asset_id == asset).order_by(Event.id))
        ]
    assert types[-1] == "asset.ready" and types.count("step.succeeded") == 4


def test_only_the_lease_holder_writes(database: Database) -> None:
    clock = Clock()
    engine = JobEngine(database, lease_s=30, clock=clock)
    asset = make_asset(database)
    enqueue(engine, asset)
    first = engine.claim("w1", ["default"])
    assert first is not None
    engine.heartbeat(first, progress=0.5, eta_s=10)
    clock.advance(31)
    assert len(engine.rescue_expired()) == 1
    second = engine.claim("w2", ["default"])
    assert second is not None and second.order_id == first.order_id
    assert second.attempt == 2 and second.token != first.token

    def write_rendition(session: object) -> None:  # pragma: no cover - must not run
        raise AssertionError("a stale worker's hook ran")

    with pytest.raises(LeaseLost):
        engine.complete(first, {"stale": True}, hook=write_rendition)  # type: ignore[arg-type]
    with pytest.raises(LeaseLost):
        engine.heartbeat(first)
    with pytest.raises(LeaseLost):
        engine.fail(first, "boom")
    engine.complete(second, {"fresh": True})
    with database.transaction() as s:
        order = s.get_one(WorkOrder, first.order_id)
        assert order.result == {"fresh": True} and order.state == "succeeded"


def test_retries_back_off_then_fail_the_asset(database: Database) -> None:
    clock = Clock()
    engine = JobEngine(
        database, clock=clock, backoff=Backoff(base_s=10, cap_s=100), rng=random.Random(1)
    )
    asset = make_asset(database)
    enqueue(engine, asset, Graph((StepSpec("a", max_attempts=2), StepSpec("b", ("a",)))))
    claim = engine.claim("w", ["default"])
    assert claim is not None
    assert engine.fail(claim, "ffmpeg exited 1") is True
    assert engine.claim("w", ["default"]) is None  # backing off
    clock.advance(16)  # at most 1.5 x 10 s
    claim = engine.claim("w", ["default"])
    assert claim is not None and claim.attempt == 2
    assert engine.fail(claim, "ffmpeg exited 1 again") is False
    assert states(database, asset) == {"a": "failed", "b": "cancelled"}
    with database.transaction() as s:
        a = s.get_one(Asset, asset)
        assert a.status == "failed" and a.error == "a: ffmpeg exited 1 again"


def test_non_retryable_failure_fails_at_once(database: Database) -> None:
    engine = JobEngine(database)
    asset = make_asset(database)
    enqueue(engine, asset)
    claim = engine.claim("w", ["default"])
    assert claim is not None
    assert engine.fail(claim, "not audio", retryable=False) is False
    assert asset_status(database, asset) == "failed"


def test_expired_lease_out_of_attempts_fails(database: Database) -> None:
    clock = Clock()
    engine = JobEngine(database, lease_s=5, clock=clock)
    asset = make_asset(database)
    enqueue(engine, asset, Graph((StepSpec("a", max_attempts=1),)))
    assert engine.claim("w", ["default"]) is not None
    clock.advance(6)
    assert engine.rescue_expired() == []
    assert asset_status(database, asset) == "failed"


def test_one_active_order_per_asset_and_step(database: Database) -> None:
    engine = JobEngine(database)
    asset = make_asset(database)
    enqueue(engine, asset)
    with pytest.raises(IntegrityError):
        enqueue(engine, asset)
    claim = engine.claim("w", ["default"])
    assert claim is not None
    engine.complete(claim, {})
    # a finished order does not block a new one for the same step
    enqueue(engine, asset, Graph((StepSpec("probe"),)))


def test_unchanged_content_key_skips_the_step(database: Database) -> None:
    engine = JobEngine(database)
    asset = make_asset(database)
    graph = Graph((StepSpec("meta", content_key="sha:1"), StepSpec("after", ("meta",))))
    enqueue(engine, asset, graph)
    for _ in range(2):
        claim = engine.claim("w", ["default"])
        assert claim is not None
        engine.complete(claim, {"n": 1})
    with database.transaction() as s:
        s.get_one(Asset, asset).status = "processing"
    enqueue(engine, asset, graph)
    latest = engine.claim("w", ["default"])
    assert latest is not None and latest.step == "after"  # meta skipped, result kept
    assert latest.inputs == {"meta": {"n": 1}}
    with database.transaction() as s:
        engine.enqueue_graph(s, make_asset(database), graph, force=True)


def test_hook_runs_in_the_completion_transaction(database: Database) -> None:
    engine = JobEngine(database)
    asset = make_asset(database)
    enqueue(engine, asset, Graph((StepSpec("a"),)))
    claim = engine.claim("w", ["default"])
    assert claim is not None

    def broken(session: object) -> None:
        session.add(
            Rendition(
                id="r1",
                asset_id=asset,
                name="x",
                kind="k",  # type: ignore[attr-defined]
                storage_key="k",
            )
        )
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        engine.complete(claim, {}, hook=broken)  # type: ignore[arg-type]
    with database.transaction() as s:
        assert s.get(Rendition, "r1") is None  # nothing half-written
        assert s.get_one(WorkOrder, claim.order_id).state == "running"
    engine.complete(claim, {})
    assert asset_status(database, asset) == "ready"


def test_concurrent_claims_never_hand_out_one_order_twice(database: Database) -> None:
    engine = JobEngine(database)
    for _ in range(6):
        asset = make_asset(database)
        enqueue(engine, asset, Graph((StepSpec("only"),)))
    claimed: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (c := engine.claim(name, ["default"])) is not None:
            with lock:
                claimed.append(c.order_id)
            engine.complete(c, {})

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 6 and len(set(claimed)) == 6


def test_heavier_ready_steps_are_claimed_first(database: Database) -> None:
    engine = JobEngine(database)
    asset = make_asset(database)
    graph = Graph((StepSpec("light"), StepSpec("heavy", weight=4.0), StepSpec("mid", weight=2.0)))
    enqueue(engine, asset, graph)
    order = []
    while (claim := engine.claim("w", ["default"])) is not None:
        order.append(claim.step)
    assert order == ["heavy", "mid", "light"]
