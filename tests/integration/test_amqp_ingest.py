"""AMQP chunk ingest against the real RabbitMQ, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import func, select

from ingestd.bootstrap import Services, build
from ingestd.db.models import Asset, Event, Source, UploadSession, WorkOrder
from ingestd.errors import StorageError
from ingestd.uploads.amqp_ingest import AmqpChunkIngest, queue_arguments
from ingestd.uploads.blocks import MIN_BLOCK_SIZE
from ingestd.uploads.locks import InProcessLocker, UploadLocker
from ingestd.uploads.service import PartInfo, UploadInfo

pytestmark = pytest.mark.anyio
AMQP_URL = os.environ.get("INGESTD_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
CS = MIN_BLOCK_SIZE
Headers = dict[str, Any]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks_of(data: bytes, upload_id: str, **meta: str) -> list[tuple[Headers, bytes]]:
    count = -(-len(data) // CS)
    out = []
    for i in range(count):
        body = data[i * CS : (i + 1) * CS]
        headers: Headers = {
            "x-upload-id": upload_id,
            "x-chunk-index": i,
            "x-chunk-count": count,
            "x-total-size": len(data),
            "x-chunk-size": CS,
            "x-chunk-sha256": sha(body),
        }
        if i == 0:
            headers.update({f"x-{k.replace('_', '-')}": v for k, v in meta.items()})
        out.append((headers, body))
    return out


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"test.amqp-ingest.{uuid.uuid4().hex}"
    yield name

    async def delete() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for q in (name, f"{name}.dead"):
                await channel.queue_delete(q, if_unused=False, if_empty=False)

    asyncio.run(delete())


@pytest.fixture
def owner(services: Services) -> str:
    return services.keys.create("gateway").owner_id


async def publish(queue: str, messages: list[tuple[Headers, bytes]]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for q in (queue, f"{queue}.dead"):
            await channel.declare_queue(q, durable=True, arguments=queue_arguments())
        for headers, body in messages:
            await channel.default_exchange.publish(
                aio_pika.Message(body, headers=headers, delivery_mode=2), routing_key=queue
            )


async def dead_letters(queue: str, expected: int, timeout: float = 15) -> list[Any]:
    """Wait until the dead-letter queue has ``expected`` messages; take them."""
    got: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + timeout
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(
            f"{queue}.dead", durable=True, arguments=queue_arguments()
        )
        while len(got) < expected and time.monotonic() < deadline:
            message = await dlq.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                got.append(message)
        await asyncio.sleep(0.3)  # nothing more arrives
        extra = await dlq.get(no_ack=True, fail=False)
    assert extra is None, f"unexpected dead letter {extra.headers}"
    assert len(got) == expected, [m.headers for m in got]
    return got


def consumer(
    services: Services, owner: str, queue: str, locker: UploadLocker | None = None, **kw: Any
) -> AmqpChunkIngest:
    kw.setdefault("retry_delay_s", 0.1)
    return AmqpChunkIngest(
        services.uploads, locker or InProcessLocker(), owner, AMQP_URL, queue, **kw
    )


@asynccontextmanager
async def running(*consumers: AmqpChunkIngest) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)


async def upload_of(services: Services, owner: str, upload_id: str) -> UploadInfo | None:
    return await services.uploads.find_external(owner, upload_id)


async def until(
    services: Services,
    owner: str,
    upload_id: str,
    check: Callable[[UploadInfo], bool],
    timeout: float = 20,
) -> UploadInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = await upload_of(services, owner, upload_id)
        if info is not None and check(info):
            return info
        assert time.monotonic() < deadline, f"timed out; upload is {info}"
        await asyncio.sleep(0.05)


def completed(info: UploadInfo) -> bool:
    return info.status == "completed"


async def assert_stored_once(services: Services, info: UploadInfo, data: bytes) -> None:
    """One upload, completed once, whose master holds exactly ``data``."""
    with services.db.transaction() as s:
        source = s.get_one(Source, info.source_id)
        assert source.sha256 == sha(data)
        assert s.get_one(Asset, source.asset_id).status in ("ingesting", "ready", "failed")
        master_key = source.master_key
        sessions = s.scalar(select(func.count()).select_from(UploadSession))
        done = s.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.asset_id == source.asset_id, Event.type == "upload.completed")
        )
        orders = s.scalar(
            select(func.count()).select_from(WorkOrder).where(WorkOrder.asset_id == source.asset_id)
        )
    assert (sessions, done, orders) == (1, 1, 1)
    assert master_key is not None
    stored = b"".join([c async for c in services.store.read(master_key)])
    assert sha(stored) == sha(data)


async def test_a_file_in_random_order_with_duplicates_completes_once(
    services: Services, owner: str, queue: str
) -> None:
    data = os.urandom(6 * CS + 1234)
    messages = chunks_of(data, "gw-1", filename="clip.mov", content_type="video/quicktime")
    sent = messages + random.sample(messages, 4)
    random.shuffle(sent)
    await publish(queue, sent)
    async with running(consumer(services, owner, queue)):
        info = await until(services, owner, "gw-1", completed)
        # a late duplicate of a completed upload is acked and ignored
        await publish(queue, [messages[2]])
        await dead_letters(queue, 0)
    assert info.protocol == "amqp"
    await assert_stored_once(services, info, data)
    with services.db.transaction() as s:
        source = s.get_one(Source, info.source_id)
        assert (source.filename, source.content_type) == ("clip.mov", "video/quicktime")
    # nothing is left in the queue: every message, duplicates too, was acked
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, durable=True, arguments=queue_arguments())
        assert q.declaration_result.message_count == 0


async def test_a_bad_checksum_is_dead_lettered_and_the_resent_chunk_completes(
    services: Services, owner: str, queue: str
) -> None:
    data = os.urandom(3 * CS + 10)
    messages = chunks_of(data, "gw-2")
    bad_headers, good_body = messages[1]
    corrupt = b"\x00" + good_body[1:]
    await publish(queue, [messages[0], (bad_headers, corrupt), messages[2], messages[3]])
    async with running(consumer(services, owner, queue)):
        (dead,) = await dead_letters(queue, 1)
        assert dead.headers["x-ingestd-error"] == "checksum_mismatch"
        assert "SHA-256" in dead.headers["x-ingestd-reason"]
        assert dead.headers["x-upload-id"] == "gw-2"  # the original headers are kept
        assert dead.headers["x-chunk-index"] == 1
        assert dead.body == corrupt
        info = await until(services, owner, "gw-2", lambda i: i.present == [0, 2, 3])
        assert info.status == "open"
        assert info.missing == [1]

        await publish(queue, [messages[1]])
        info = await until(services, owner, "gw-2", completed)
    await assert_stored_once(services, info, data)


async def test_bad_headers_are_dead_lettered_with_distinct_codes(
    services: Services, owner: str, queue: str
) -> None:
    data = os.urandom(2 * CS + 5)
    messages = chunks_of(data, "gw-3")
    no_index = {k: v for k, v in messages[0][0].items() if k != "x-chunk-index"}
    beyond = {**messages[1][0], "x-chunk-index": 3}
    short = messages[1][1][:-1]
    small = chunks_of(os.urandom(3 * 1000), "gw-small")[0][0]
    small.update({"x-chunk-size": 1000, "x-chunk-count": 3, "x-total-size": 3000})
    owned = {**messages[0][0], "x-owner": "someone"}
    await publish(
        queue,
        [
            (no_index, messages[0][1]),
            (beyond, messages[1][1]),
            ({**messages[1][0], "x-chunk-sha256": sha(short)}, short),
            (small, b"s" * 1000),
            (owned, messages[0][1]),
        ],
    )
    async with running(consumer(services, owner, queue)):
        dead = await dead_letters(queue, 5)
    codes = sorted(m.headers["x-ingestd-error"] for m in dead)
    assert codes == sorted(
        [
            "missing_header",
            "index_out_of_range",
            "wrong_length",
            "invalid_chunk_size",
            "owner_not_allowed",
        ]
    )
    assert all(m.headers["x-ingestd-queue"] == queue for m in dead)
    # nothing judged invalid from its headers creates an upload
    assert await upload_of(services, owner, "gw-3") is None
    assert await upload_of(services, owner, "gw-small") is None


async def test_two_consumers_on_one_queue_complete_the_upload_once(
    services: Services, owner: str, queue: str
) -> None:
    data = os.urandom(12 * CS + 7)
    messages = chunks_of(data, "gw-4")
    sent = messages + messages  # every chunk twice
    random.shuffle(sent)
    await publish(queue, sent)
    # a second process: its own services on the same database and store; the lock is
    # shared, as a distributed locker would be between processes
    other = build(services.settings, migrate=False)
    locker = InProcessLocker()
    handled = {"a": 0, "b": 0}

    def counted(name: str, c: AmqpChunkIngest) -> AmqpChunkIngest:
        handle = c.handle

        async def count(message: AbstractIncomingMessage) -> None:
            handled[name] += 1
            await handle(message)

        c.handle = count  # type: ignore[method-assign]
        return c

    try:
        async with running(
            counted("a", consumer(services, owner, queue, locker, prefetch=2)),
            counted("b", consumer(other, owner, queue, locker, prefetch=2)),
        ):
            info = await until(services, owner, "gw-4", completed)
            await dead_letters(queue, 0)
    finally:
        other.close()
    assert handled["a"] and handled["b"]
    await assert_stored_once(services, info, data)


async def test_a_consumer_stopped_midway_and_restarted_completes(
    services: Services, owner: str, queue: str
) -> None:
    data = os.urandom(6 * CS + 99)
    messages = chunks_of(data, "gw-5")
    await publish(queue, messages[:4])
    async with running(consumer(services, owner, queue)):
        await until(services, owner, "gw-5", lambda i: len(i.present) == 4)
    await publish(queue, messages[4:])
    await asyncio.sleep(0.3)
    info = await upload_of(services, owner, "gw-5")
    assert info is not None and info.status == "open"  # nobody consumes while stopped
    async with running(consumer(services, owner, queue)):
        info = await until(services, owner, "gw-5", completed)
    await assert_stored_once(services, info, data)


async def test_transient_failures_are_retried_then_dead_lettered(
    services: Services, owner: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * CS)
    messages = chunks_of(data, "gw-6")
    put_block = services.uploads.put_block
    failures = {0: 1, 1: 100}  # chunk 0 fails once, chunk 1 always

    async def flaky(owner_id: str, upload_id: str, index: int, *a: Any, **kw: Any) -> PartInfo:
        if failures[index]:
            failures[index] -= 1
            raise StorageError("the disk is away")
        return await put_block(owner_id, upload_id, index, *a, **kw)

    monkeypatch.setattr(services.uploads, "put_block", flaky)
    await publish(queue, messages)
    async with running(consumer(services, owner, queue, max_deliveries=3)):
        (dead,) = await dead_letters(queue, 1)
        assert dead.headers["x-ingestd-error"] == "redelivery_limit"
        assert "the disk is away" in dead.headers["x-ingestd-reason"]
        assert dead.headers["x-ingestd-deliveries"] == 3
        assert dead.headers["x-chunk-index"] == 1
        info = await until(services, owner, "gw-6", lambda i: i.present == [0])
        assert info.status == "open"
        # the broker is back: the dead letter, sent again, completes the upload
        monkeypatch.setattr(services.uploads, "put_block", put_block)
        await publish(queue, [messages[1]])
        info = await until(services, owner, "gw-6", completed)
    await assert_stored_once(services, info, data)
