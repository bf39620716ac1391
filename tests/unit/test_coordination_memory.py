"""The single-process coordination: upload locks with release requests, the progress board,
the routing map."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from ingestd.errors import Locked
from ingestd.jobs.progress import InMemoryProgress, LiveProgress
from ingestd.uploads.locks import InProcessLocker
from ingestd.uploads.routing import InMemoryRouting

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# -- InProcessLocker -------------------------------------------------------------------


async def test_a_free_lock_is_taken_even_without_waiting() -> None:
    locker = InProcessLocker()
    assert not locker.held("u")
    async with locker.hold("u", wait_s=0):
        assert locker.held("u")
        assert not locker.held("v")
    assert not locker.held("u")


async def test_a_held_lock_refuses_after_wait_s() -> None:
    locker = InProcessLocker()
    async with locker.hold("u", wait_s=0):
        started = time.monotonic()
        with pytest.raises(Locked) as refused:
            async with locker.hold("u", wait_s=0.1):
                pytest.fail("took a held lock")
        assert time.monotonic() - started >= 0.09
        assert refused.value.code == "upload_locked"
        assert refused.value.details == {"retry_after_s": 1}
        async with locker.hold("v", wait_s=0):  # other uploads are not affected
            pass
    async with locker.hold("u", wait_s=0):  # and the refusal left nothing behind
        pass


async def test_a_waiter_asks_the_holder_once_and_takes_over() -> None:
    locker = InProcessLocker()
    asked: list[str] = []
    stop = asyncio.Event()
    order: list[str] = []

    def on_release_request() -> None:
        asked.append("asked")
        stop.set()

    async def stalled() -> None:
        async with locker.hold("u", wait_s=0, on_release_request=on_release_request):
            order.append("old in")
            await stop.wait()
            order.append("old out")

    async def newer(name: str) -> None:
        async with locker.hold("u", wait_s=5):
            order.append(f"{name} in")
            await asyncio.sleep(0)
            order.append(f"{name} out")

    old = asyncio.create_task(stalled())
    await until(lambda: locker.held("u"), "the stalled request to hold the lock")
    await asyncio.gather(newer("a"), newer("b"), old)
    assert asked == ["asked"]  # two waiters, one request: the holding is asked once
    assert order[:2] == ["old in", "old out"]
    assert sorted(order[2:]) == ["a in", "a out", "b in", "b out"]
    assert order[2][0] == order[3][0]  # never interleaved
    assert not locker.held("u")


async def test_only_trying_does_not_disturb_the_holder() -> None:
    locker = InProcessLocker()
    asked: list[int] = []
    async with locker.hold("u", wait_s=0, on_release_request=lambda: asked.append(1)):
        with pytest.raises(Locked):
            async with locker.hold("u", wait_s=0):
                pass
    assert asked == []


async def test_each_new_holder_is_asked_in_turn() -> None:
    """A waiter that loses the race for a released lock asks whoever took it."""
    locker = InProcessLocker()
    events = {name: asyncio.Event() for name in ("first", "second")}
    asked: list[str] = []

    def ask(name: str) -> None:
        asked.append(name)
        events[name].set()

    async def holder(name: str, wait_s: float) -> None:
        async with locker.hold("u", wait_s=wait_s, on_release_request=lambda: ask(name)):
            await events[name].wait()

    first = asyncio.create_task(holder("first", 0))
    await until(lambda: locker.held("u"), "the first holder")
    second = asyncio.create_task(holder("second", 5))  # asks the first, then holds
    await until(
        lambda: asked == ["first"] and first.done() and locker.held("u"),
        "the second to take over from the first",
    )
    async with locker.hold("u", wait_s=5):  # finds the second holding, asks it too
        assert asked == ["first", "second"]
    await asyncio.gather(first, second)


async def test_a_failing_release_callback_is_logged_and_the_waiter_still_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    locker = InProcessLocker()

    def broken() -> None:
        raise RuntimeError("holder bug")

    release = asyncio.Event()

    async def holder() -> None:
        async with locker.hold("u", wait_s=0, on_release_request=broken):
            await release.wait()

    task = asyncio.create_task(holder())
    await until(lambda: locker.held("u"), "the holder")
    asyncio.get_running_loop().call_later(0.05, release.set)
    async with locker.hold("u", wait_s=5):
        assert task.done()
    assert "release request for upload u failed" in caplog.text
    await task


async def test_a_cancelled_holder_frees_the_lock() -> None:
    locker = InProcessLocker()

    async def holder() -> None:
        async with locker.hold("u", wait_s=0):
            await asyncio.Event().wait()

    task = asyncio.create_task(holder())
    await until(lambda: locker.held("u"), "the holder")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not locker.held("u")
    async with locker.hold("u", wait_s=0):
        pass


# -- InMemoryProgress ------------------------------------------------------------------


async def test_progress_keeps_the_latest_figure_per_order_until_cleared() -> None:
    clock = Clock()
    board = InMemoryProgress(ttl_s=120, clock=clock)
    assert await board.get("a1") == {}
    await board.put("a1", "o1", 0.25, 30.0)
    clock.now += 1
    await board.put("a1", "o1", 0.5, 20.0)
    await board.put("a1", "o2", 0.1, None)
    await board.put("a2", "o3", 0.9, 1.0)
    assert await board.get("a1") == {
        "o1": LiveProgress("o1", 0.5, 20.0, clock.now),
        "o2": LiveProgress("o2", 0.1, None, clock.now),
    }
    await board.clear("a1", "o1")
    await board.clear("a1", "o1")  # twice is fine
    await board.clear("a9", "o9")  # and unknown ones
    assert list(await board.get("a1")) == ["o2"]
    assert list(await board.get("a2")) == ["o3"]


async def test_progress_not_renewed_within_the_ttl_is_dropped() -> None:
    clock = Clock()
    board = InMemoryProgress(ttl_s=10, clock=clock)
    await board.put("a1", "dead", 0.3, None)  # its worker dies without clearing
    clock.now += 5
    await board.put("a1", "live", 0.1, None)
    clock.now += 6
    assert list(await board.get("a1")) == ["live"]


# -- InMemoryRouting -------------------------------------------------------------------


async def test_routing_claim_lookup_forget() -> None:
    routing = InMemoryRouting(clock=Clock())
    assert await routing.lookup("u") is None
    await routing.claim("u", "http://r1/", 60)
    await routing.claim("v", "http://r2/", 60)
    assert await routing.lookup("u") == "http://r1/"
    await routing.claim("u", "http://r3/", 60)  # the replica that wrote last wins
    assert await routing.lookup("u") == "http://r3/"
    await routing.forget("u")
    await routing.forget("u")
    assert await routing.lookup("u") is None
    assert await routing.lookup("v") == "http://r2/"


async def test_a_route_expires_unless_claimed_again() -> None:
    clock = Clock()
    routing = InMemoryRouting(clock=clock)
    await routing.claim("u", "http://r1/", 10)
    await routing.claim("v", "http://r1/", 10)
    clock.now += 8
    await routing.claim("v", "http://r2/", 10)  # refreshed
    clock.now += 3
    assert await routing.lookup("u") is None
    assert await routing.lookup("v") == "http://r2/"
