"""Coordination through a real Redis: upload locks between processes, the progress board, the
routing map. Each test works under its own random key prefix and deletes its keys."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as aioredis

from ingestd.coordination.redis import (
    CoordinationError,
    RedisCoordination,
    RedisLocker,
    RedisProgress,
    RedisRouting,
    connect,
)
from ingestd.errors import ConfigError, Locked
from ingestd.jobs.progress import LiveProgress

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("INGESTD_TEST_REDIS", "redis://127.0.0.1:6379")
TTL_S = 0.6  # short lock ttl: renewals every 0.2 s, a dead holder's lock gone in 0.6 s


@pytest.fixture
def prefix() -> str:
    return f"ingestd-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def clients(anyio_backend: str, prefix: str) -> AsyncIterator[list[aioredis.Redis]]:
    """Two clients, as two processes would have; the test's keys are deleted afterwards."""
    try:
        made = [await connect(REDIS_URL), await connect(REDIS_URL)]
    except CoordinationError as exc:
        pytest.fail(f"Redis is not answering at {REDIS_URL}: {exc}")
    yield made
    async for key in made[0].scan_iter(match=f"{prefix}*"):
        await made[0].delete(key)
    for client in made:
        await client.aclose()


@pytest.fixture
async def lockers(
    clients: list[aioredis.Redis], prefix: str
) -> AsyncIterator[tuple[RedisLocker, RedisLocker]]:
    one = RedisLocker(clients[0], f"{prefix}lock:", ttl_s=TTL_S)
    two = RedisLocker(clients[1], f"{prefix}lock:", ttl_s=TTL_S)
    yield one, two
    await one.close()
    await two.close()


async def until(condition: Callable[[], bool], what: str, within_s: float = 5) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# -- locks -----------------------------------------------------------------------------


async def test_one_holder_at_a_time_across_clients(
    lockers: tuple[RedisLocker, RedisLocker],
) -> None:
    one, two = lockers
    inside = 0
    most = 0
    entries = 0

    async def writer(locker: RedisLocker) -> None:
        nonlocal inside, most, entries
        for _ in range(5):
            async with locker.hold("u", wait_s=10):
                inside += 1
                entries += 1
                most = max(most, inside)
                await asyncio.sleep(0.005)
                inside -= 1

    await asyncio.gather(*(writer(locker) for locker in (one, two, one, two)))
    assert entries == 20
    assert most == 1


async def test_a_held_lock_is_refused_after_wait_s(
    lockers: tuple[RedisLocker, RedisLocker],
) -> None:
    one, two = lockers
    async with one.hold("u", wait_s=0):
        assert one.held("u") and not two.held("u")
        with pytest.raises(Locked) as refused:
            async with two.hold("u", wait_s=0):
                pytest.fail("took a lock held by another process")
        assert refused.value.details == {"retry_after_s": 1}
        started = time.monotonic()
        with pytest.raises(Locked):
            async with two.hold("u", wait_s=0.2):
                pytest.fail("took a lock held by another process")
        assert time.monotonic() - started >= 0.19
        async with two.hold("v", wait_s=0):  # other uploads are free
            pass
    async with two.hold("u", wait_s=0):  # released: taken at once
        assert two.held("u")
    assert not two.held("u")


async def test_a_release_request_reaches_the_holder_and_the_waiter_takes_over(
    lockers: tuple[RedisLocker, RedisLocker],
) -> None:
    one, two = lockers
    asked: list[float] = []
    stop = asyncio.Event()
    order: list[str] = []

    def on_release_request() -> None:  # a stalled PATCH told to end and keep what it has
        asked.append(time.monotonic())
        stop.set()

    async def stalled() -> None:
        async with one.hold("u", wait_s=0, on_release_request=on_release_request):
            order.append("stalled in")
            await stop.wait()
            await asyncio.sleep(0.1)  # a few more attempts of the waiter ask again
            order.append("stalled out")

    task = asyncio.create_task(stalled())
    await until(lambda: one.held("u"), "the stalled request to hold the lock")
    async with two.hold("u", wait_s=5):
        order.append("newer in")
    await task
    assert order == ["stalled in", "stalled out", "newer in"]
    assert len(asked) == 1  # asked once, though the waiter asked on every attempt


async def test_only_trying_does_not_disturb_the_holder(
    lockers: tuple[RedisLocker, RedisLocker],
) -> None:
    one, two = lockers
    asked: list[int] = []
    async with one.hold("u", wait_s=0, on_release_request=lambda: asked.append(1)):
        with pytest.raises(Locked):
            async with two.hold("u", wait_s=0):
                pass
        await asyncio.sleep(0.1)  # a request, had one been sent, would have arrived
    assert asked == []


async def test_the_lock_of_a_dead_holder_expires_and_its_late_release_frees_nothing(
    lockers: tuple[RedisLocker, RedisLocker], clients: list[aioredis.Redis], prefix: str
) -> None:
    one, two = lockers
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(one.hold("u", wait_s=0))
        # the holding process freezes: its renewals stop, its block never ends
        (holding,) = one._holdings.values()
        assert holding.renewal is not None
        holding.renewal.cancel()
        with pytest.raises(Locked):  # renewed until now, so still held
            async with two.hold("u", wait_s=0):
                pass
        async with two.hold("u", wait_s=5):  # it never releases: the lock expired
            await stack.aclose()  # the frozen process resumes and leaves its block
            assert two.held("u")
            with pytest.raises(Locked):  # two's lock survived one's release
                async with one.hold("u", wait_s=0):
                    pass
            assert await clients[0].exists(f"{prefix}lock:u") == 1
    assert await clients[0].exists(f"{prefix}lock:u") == 0


async def test_a_holder_that_lost_its_lock_is_told_to_stop(
    lockers: tuple[RedisLocker, RedisLocker], clients: list[aioredis.Redis], prefix: str
) -> None:
    one, _ = lockers
    told = asyncio.Event()
    key = f"{prefix}lock:u"
    async with one.hold("u", wait_s=0, on_release_request=told.set):
        assert one.held("u")
        # the lock expired while the process stalled, and another process took it
        await clients[1].set(key, "another-holder", px=5000)
        await asyncio.wait_for(told.wait(), timeout=2)
        assert not one.held("u")
    assert await clients[1].get(key) == b"another-holder"


async def test_a_lock_is_held_past_its_ttl_while_the_block_runs(
    lockers: tuple[RedisLocker, RedisLocker],
) -> None:
    one, two = lockers
    told: list[int] = []
    async with one.hold("u", wait_s=0, on_release_request=lambda: told.append(1)):
        await asyncio.sleep(1.5 * TTL_S)
        with pytest.raises(Locked):
            async with two.hold("u", wait_s=0):
                pass
        assert one.held("u")
    assert told == []


CHILD = """
import asyncio, sys
from ingestd.coordination.redis import RedisLocker, connect

async def main(url, prefix, ttl_s):
    client = await connect(url)
    locker = RedisLocker(client, prefix, ttl_s=float(ttl_s))
    asked = asyncio.Event()
    async with locker.hold("u", wait_s=0, on_release_request=asked.set):
        print("held", flush=True)
        await asked.wait()
        print("asked", flush=True)
    print("released", flush=True)
    await locker.close()
    await client.aclose()

asyncio.run(main(*sys.argv[1:]))
"""


class Child:
    """Another process holding upload "u" until it is asked to release it."""

    def __init__(self, prefix: str, ttl_s: float) -> None:
        self.args = (REDIS_URL, prefix, str(ttl_s))
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, *self.args, stdout=asyncio.subprocess.PIPE
        )
        assert await self.line() == "held"
        return self

    async def line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout=20)).decode().strip()

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.communicate()


async def test_a_release_request_crosses_processes(
    lockers: tuple[RedisLocker, RedisLocker], prefix: str
) -> None:
    _, two = lockers
    async with Child(f"{prefix}lock:", ttl_s=TTL_S) as child:
        with pytest.raises(Locked):
            async with two.hold("u", wait_s=0):
                pass
        async with two.hold("u", wait_s=10):
            assert await child.line() == "asked"
            assert await child.line() == "released"
        assert child.proc is not None
        assert await child.proc.wait() == 0


async def test_the_lock_of_a_killed_process_expires(
    lockers: tuple[RedisLocker, RedisLocker], prefix: str
) -> None:
    _, two = lockers
    async with Child(f"{prefix}lock:", ttl_s=TTL_S) as child:
        await asyncio.sleep(1.5 * TTL_S)  # renewed by the child meanwhile
        with pytest.raises(Locked):
            async with two.hold("u", wait_s=0):
                pass
        assert child.proc is not None
        child.proc.kill()
        await child.proc.wait()
        async with two.hold("u", wait_s=5):  # nobody asked it; the lock expired
            pass


# -- progress board --------------------------------------------------------------------


async def test_progress_is_shared_between_clients(
    clients: list[aioredis.Redis], prefix: str
) -> None:
    worker = RedisProgress(clients[0], f"{prefix}progress:", ttl_s=60)
    api = RedisProgress(clients[1], f"{prefix}progress:", ttl_s=60)
    assert await api.get("a1") == {}
    before = time.time()
    await worker.put("a1", "o1", 0.25, 30.0)
    await worker.put("a1", "o1", 0.5, 12.5)
    await worker.put("a1", "o2", 0.1, None)
    await worker.put("a2", "o3", 1.0, 0.0)
    seen = await api.get("a1")
    assert set(seen) == {"o1", "o2"}
    assert seen["o1"] == LiveProgress("o1", 0.5, 12.5, seen["o1"].at)
    assert seen["o2"] == LiveProgress("o2", 0.1, None, seen["o2"].at)
    assert before <= seen["o1"].at <= time.time()
    await worker.clear("a1", "o1")
    await worker.clear("a1", "o1")
    assert list(await api.get("a1")) == ["o2"]
    assert list(await api.get("a2")) == ["o3"]


async def test_progress_expires_unless_renewed(clients: list[aioredis.Redis], prefix: str) -> None:
    now = [time.time()]
    board = RedisProgress(clients[0], f"{prefix}progress:", ttl_s=0.3, clock=lambda: now[0])
    key = f"{prefix}progress:a1"
    await board.put("a1", "o1", 0.5, None)
    assert 0 < await clients[0].pttl(key) <= 300
    now[0] += 0.2
    await board.put("a1", "o2", 0.5, None)  # refreshes the asset's ttl, not o1's figure
    now[0] += 0.15
    assert list(await board.get("a1")) == ["o2"]  # o1's worker went quiet
    await asyncio.sleep(0.4)  # nobody puts any more: the whole hash goes
    assert await clients[0].exists(key) == 0
    assert await board.get("a1") == {}


async def test_a_malformed_figure_is_skipped(clients: list[aioredis.Redis], prefix: str) -> None:
    board = RedisProgress(clients[0], f"{prefix}progress:")
    await board.put("a1", "good", 0.5, None)
    await clients[0].hset(f"{prefix}progress:a1", "bad", "not json")
    assert list(await board.get("a1")) == ["good"]


# -- routing map -----------------------------------------------------------------------


async def test_routes_are_shared_and_expire(clients: list[aioredis.Redis], prefix: str) -> None:
    r1 = RedisRouting(clients[0], f"{prefix}route:")
    r2 = RedisRouting(clients[1], f"{prefix}route:")
    assert await r2.lookup("u") is None
    await r1.claim("u", "http://localhost:4050/r1/", 60)
    assert await r2.lookup("u") == "http://localhost:4050/r1/"
    await r2.claim("u", "http://localhost:4050/r2/", 60)
    assert await r1.lookup("u") == "http://localhost:4050/r2/"
    await r1.forget("u")
    await r1.forget("u")
    assert await r2.lookup("u") is None
    await r1.claim("v", "http://localhost:4050/r1/", 0.5)
    assert await r2.lookup("v") == "http://localhost:4050/r1/"
    await asyncio.sleep(0.7)
    assert await r2.lookup("v") is None


# -- connecting ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connect_to_a_silent_redis_says_so(anyio_backend: str) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{closed_port()}/0"
    started = time.monotonic()
    with pytest.raises(CoordinationError) as failed:
        await connect(url)
    assert time.monotonic() - started < 5
    assert failed.value.code == "coordination_error"
    assert failed.value.message.startswith(
        f"Redis at redis://127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]} does not answer"
    )
    assert "s3cret" not in failed.value.message
    with pytest.raises(ConfigError):
        await connect("http://127.0.0.1:6379")


async def test_coordination_connects_on_first_use(anyio_backend: str, prefix: str) -> None:
    silent = RedisCoordination.from_url(f"redis://127.0.0.1:{closed_port()}", prefix=prefix)
    with pytest.raises(CoordinationError):
        await silent.check()
    with pytest.raises(CoordinationError):
        async with silent.locker.hold("u", wait_s=0):
            pass
    with pytest.raises(CoordinationError):
        await silent.progress.get("a1")
    await silent.close()

    live = RedisCoordination.from_url(REDIS_URL, prefix=prefix)
    try:
        await live.check()
        async with live.locker.hold("u", wait_s=0):
            assert await live.client.exists(f"{prefix}lock:u") == 1
        await live.progress.put("a1", "o1", 0.5, None)
        assert list(await live.progress.get("a1")) == ["o1"]
        await live.routing.claim("u", "http://r1/", 60)
        assert await live.routing.lookup("u") == "http://r1/"
    finally:
        async for key in live.client.scan_iter(match=f"{prefix}*"):
            await live.client.delete(key)
        await live.close()
