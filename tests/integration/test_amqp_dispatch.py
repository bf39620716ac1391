"""RabbitMQ dispatch with a real broker: the outbox, acks after the claim, the dead-letter
queue, a full worker holding no messages, and a broker that is away."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import anyio.to_thread
import pytest
from sqlalchemy import func, select

from ingestd.db.engine import Database
from ingestd.db.models import OutboxMessage
from ingestd.jobs.amqp import AmqpDispatcher, Topology, parse_order_message
from ingestd.jobs.engine import Backoff, JobEngine
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext, Worker

from .test_job_engine import asset_status, make_asset, states

pytestmark = pytest.mark.anyio

BROKER = "amqp://guest:guest@127.0.0.1:5672/"
ONE = Graph((StepSpec("a", queue="light"),))


@pytest.fixture
async def topology() -> AsyncIterator[Topology]:
    """Exchanges and queues of this test only, deleted afterwards."""
    t = Topology(prefix=f"t{uuid.uuid4().hex[:8]}.", delivery_limit=2)
    yield t
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        for name in ("light", "heavy"):
            await channel.queue_delete(t.queue(name))
        await channel.queue_delete(t.dead)
        await channel.exchange_delete(t.exchange)
        await channel.exchange_delete(t.dead)


def outbox_orders(db: Database) -> list[str]:
    with db.transaction() as s:
        return list(s.scalars(select(OutboxMessage.order_id)))


def outbox_size(db: Database) -> int:
    with db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(OutboxMessage)) or 0)


async def queue_depth(name: str) -> int:
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await asyncio.sleep(0.05)
    assert await check(), what


def engine_for(database: Database) -> JobEngine:
    return JobEngine(database, lease_s=30, backoff=Backoff(base_s=0.05, cap_s=0.1), outbox=True)


def make_worker(
    engine: JobEngine,
    dispatcher: AmqpDispatcher,
    tmp_path: Path,
    steps: dict[str, Step],
    *,
    poll_s: float = 30.0,
    concurrency: int = 2,
    queues: tuple[str, ...] = ("light",),
) -> Worker:
    # a long poll: the work must come through the broker, not the database fallback
    return Worker(
        engine,
        dispatcher,
        steps,
        worker_id=f"w-{uuid.uuid4().hex[:4]}",
        queues=list(queues),
        concurrency=concurrency,
        workdir=tmp_path / "work",
        heartbeat_s=5,
        progress_s=0.05,
        poll_s=poll_s,
    )


async def noop(ctx: StepContext) -> Outcome:
    return Outcome({"ran": ctx.claim.step})


async def test_orders_go_out_through_the_outbox_and_come_back_to_a_worker(
    database: Database, tmp_path: Path, topology: Topology
) -> None:
    engine = engine_for(database)
    graph = Graph((StepSpec("a", queue="light"), StepSpec("b", queue="light", depends_on=("a",))))
    asset = make_asset(database)
    with database.transaction() as s:
        ready = engine.enqueue_graph(s, asset, graph)
    assert outbox_size(database) == 1  # written with the order, before anything is published

    publisher = AmqpDispatcher(BROKER, engine, topology=topology)
    consumer = AmqpDispatcher(BROKER, engine, topology=topology)
    worker = make_worker(engine, consumer, tmp_path, {"a": Step(noop), "b": Step(noop)})
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await publisher.announce(ready)

        async def published() -> bool:  # confirmed by the broker, then forgotten
            return ready[0].order_id not in outbox_orders(database)

        await eventually(published, "the message left the outbox")

        async def ready_now() -> bool:
            return await anyio.to_thread.run_sync(asset_status, database, asset) == "ready"

        # "b" became ready when "a" finished: its message came from the worker's own relay
        await eventually(ready_now, "both steps ran through the broker", timeout=15)
        # every delivery is acked (one naming an order already done finds nothing to claim)
        await eventually(lambda: _zero(queue_depth(topology.queue("light"))), "queue drained")
    finally:
        stop.set()
        await task
        await publisher.close()
        await consumer.close()
    assert states(database, asset) == {"a": "succeeded", "b": "succeeded"}
    assert outbox_size(database) == 0


async def test_a_message_is_acked_when_its_claim_commits_not_when_the_step_ends(
    database: Database, tmp_path: Path, topology: Topology
) -> None:
    engine = engine_for(database)
    started, release = asyncio.Event(), asyncio.Event()

    async def long_step(ctx: StepContext) -> Outcome:
        started.set()
        await release.wait()
        return Outcome()

    asset = make_asset(database)
    with database.transaction() as s:
        ready = engine.enqueue_graph(s, asset, ONE)
    dispatcher = AmqpDispatcher(BROKER, engine, topology=topology)
    worker = make_worker(engine, dispatcher, tmp_path, {"a": Step(long_step)})
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await dispatcher.announce(ready)
        with anyio.fail_after(15):
            await started.wait()
        # the step runs; its message is settled already (nothing unacked, nothing queued)
        connection = await aio_pika.connect(BROKER)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(topology.queue("light"), passive=True)
            assert queue.declaration_result.message_count == 0
            # a redelivery of the same message finds nothing to claim and is acked too
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"order_id": ready[0].order_id}).encode()),
                routing_key=topology.queue("light"),
            )
        await eventually(
            lambda: _zero(queue_depth(topology.queue("light"))), "the duplicate was settled"
        )
        release.set()

        async def done() -> bool:
            return await anyio.to_thread.run_sync(asset_status, database, asset) == "ready"

        await eventually(done, "the step finished once")
    finally:
        release.set()
        stop.set()
        await task
        await dispatcher.close()
    with database.transaction() as s:
        from ingestd.db.models import WorkOrder

        attempts = s.scalars(select(WorkOrder.attempts).where(WorkOrder.asset_id == asset)).all()
    assert attempts == [1]


async def _zero(depth: Awaitable[int]) -> bool:
    return await depth == 0


async def test_a_poison_message_is_dead_lettered(
    database: Database, tmp_path: Path, topology: Topology
) -> None:
    engine = engine_for(database)
    dispatcher = AmqpDispatcher(BROKER, engine, topology=topology)
    worker = make_worker(engine, dispatcher, tmp_path, {"a": Step(noop)})
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await dispatcher.relay()  # declares the topology
        await eventually(
            lambda: _declared(topology.queue("light")), "the worker consumes", timeout=10
        )
        connection = await aio_pika.connect(BROKER)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(b"\x00not json"), routing_key=topology.queue("light")
            )
        await eventually(lambda: _one(queue_depth(topology.dead)), "dead-lettered")
    finally:
        stop.set()
        await task
        await dispatcher.close()
    assert parse_order_message(b"\x00not json") is None
    assert parse_order_message(b'{"order_id": "wo_1"}') == "wo_1"


async def _declared(name: str) -> bool:
    try:
        await queue_depth(name)
    except aio_pika.exceptions.ChannelClosed:
        return False
    return True


async def _one(depth: Awaitable[int]) -> bool:
    return await depth == 1


async def test_a_full_worker_holds_no_messages(
    database: Database, tmp_path: Path, topology: Topology
) -> None:
    """At capacity a worker cancels its consumers, so waiting messages stay in the queue
    for other workers instead of waiting unacked behind a long step."""
    engine = engine_for(database)
    release = asyncio.Event()
    running = 0

    async def blocking(ctx: StepContext) -> Outcome:
        nonlocal running
        running += 1
        await release.wait()
        return Outcome()

    assets = [make_asset(database) for _ in range(3)]
    ready = []
    with database.transaction() as s:
        for a in assets:
            ready += engine.enqueue_graph(s, a, ONE)
    busy = AmqpDispatcher(BROKER, engine, topology=topology)
    worker = make_worker(engine, busy, tmp_path, {"a": Step(blocking)}, concurrency=1)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    other: asyncio.Task[None] | None = None
    spare = AmqpDispatcher(BROKER, engine, topology=topology)
    try:
        await busy.announce(ready)
        await eventually(lambda: _true(running == 1), "one step runs")
        # the full worker holds none of the messages: they wait in the queue (the one naming
        # the running order too; whoever receives it finds nothing to claim)
        await asyncio.sleep(1.0)
        assert await queue_depth(topology.queue("light")) == 3
        second = make_worker(engine, spare, tmp_path, {"a": Step(blocking)}, concurrency=2)
        other = asyncio.create_task(second.run(stop))
        await eventually(lambda: _true(running == 3), "a second worker took them")
        release.set()

        async def all_ready() -> bool:
            found = [await anyio.to_thread.run_sync(asset_status, database, a) for a in assets]
            return found == ["ready"] * len(assets)

        await eventually(all_ready, "every step finished")
    finally:
        release.set()
        stop.set()
        await task
        if other is not None:
            await other
        await busy.close()
        await spare.close()
    for a in assets:
        assert asset_status(database, a) == "ready"


async def _true(value: bool) -> bool:
    return value


async def _count(depth: Awaitable[int], n: int) -> bool:
    return await depth == n


async def test_without_a_broker_messages_wait_in_the_outbox_and_work_goes_on(
    database: Database, tmp_path: Path, topology: Topology
) -> None:
    """A broker that is away loses nothing: the outbox keeps the messages, workers poll
    the database, and the messages go out once it is back."""
    engine = engine_for(database)
    asset = make_asset(database)
    with database.transaction() as s:
        ready = engine.enqueue_graph(s, asset, ONE)
    away = AmqpDispatcher("amqp://guest:guest@127.0.0.1:1/", engine, topology=topology)
    await away.announce(ready)  # logged, not raised
    assert outbox_size(database) == 1
    worker = make_worker(engine, away, tmp_path, {"a": Step(noop)}, poll_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def done() -> bool:
            return await anyio.to_thread.run_sync(asset_status, database, asset) == "ready"

        await eventually(done, "the worker found the order in the database", timeout=30)
    finally:
        stop.set()
        await task
        await away.close()
    back = AmqpDispatcher(BROKER, engine, topology=topology)
    try:
        assert await back.relay() == 1  # the broker is back: the message goes out
    finally:
        await back.close()
    assert outbox_size(database) == 0
