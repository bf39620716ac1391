"""The tus service where a test needs control over time, concurrency and broken bodies:
expiry with a fake clock, the scheduler cleaning up, PATCHes racing for one upload, a body
that breaks off, a PATCH series spread over two processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd.bootstrap import Services
from ingestd.db.models import Asset, Block, Source, UploadSession
from ingestd.db.types import utcnow
from ingestd.errors import (
    ChunkChecksumMismatch,
    Gone,
    Locked,
    OffsetMismatch,
    StorageError,
)
from ingestd.storage.base import IncompleteWrite
from ingestd.uploads.blocks import MIN_BLOCK_SIZE
from ingestd.uploads.locks import InProcessLocker
from ingestd.uploads.tus import TusService, TusUpload
from ingestd.uploads.tus_protocol import Checksum, Metadata

from .test_tus_api import CountingLocker

pytestmark = pytest.mark.anyio
BS = MIN_BLOCK_SIZE
NO_META = Metadata()


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(services: Services) -> Clock:
    fake = Clock()
    services.uploads.clock = fake
    services.tus.clock = fake
    services.tokens.clock = fake
    return fake


@pytest.fixture
def owner(services: Services) -> str:
    return services.keys.create("alice").owner_id


async def stream(data: bytes, piece: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def broken(data: bytes, piece: int = 10_000) -> AsyncIterator[bytes]:
    """``data`` in pieces, then the connection drops."""
    async for chunk in stream(data, piece):
        yield chunk
    raise ConnectionResetError("the client went away")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def staged(services: Services, upload_id: str) -> Path:
    return services.store.staging / f"{upload_id}.part"


def staged_bytes(services: Services, upload_id: str, n: int) -> bytes:
    with open(staged(services, upload_id), "rb") as f:
        return f.read(n)


def row(services: Services, upload_id: str) -> tuple[str, str | None, str | None, str | None]:
    """The upload's status, its source's status and sha256, its asset's status."""
    with services.db.transaction() as s:
        up = s.get_one(UploadSession, upload_id)
        if up.source_id is None:
            return up.status, None, None, None
        src = s.get_one(Source, up.source_id)
        asset = s.get_one(Asset, src.asset_id)
        return up.status, src.status, src.sha256, asset.status


def blocks(services: Services, upload_id: str) -> list[tuple[int, int, str]]:
    with services.db.transaction() as s:
        up = s.get_one(UploadSession, upload_id)
        found = s.scalars(select(Block).where(Block.source_id == up.source_id))
        return sorted((b.offset, b.size, b.sha256) for b in found)


def expected_blocks(data: bytes) -> list[tuple[int, int, str]]:
    return [(i, len(data[i : i + BS]), sha(data[i : i + BS])) for i in range(0, len(data), BS)]


async def until(condition: Callable[[], Any], what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- expiry ------------------------------------------------------------------------------


async def test_expiry_slides_with_activity_and_expired_uploads_are_removed(
    services: Services, owner: str, clock: Clock
) -> None:
    tus, ttl = services.tus, services.uploads.limits.ttl
    data = os.urandom(3000)
    t0 = clock.now
    up = await tus.create(owner, size=len(data), metadata=NO_META)
    assert up.expires_at == t0 + ttl
    assert staged(services, up.upload_id).parent == (
        services.settings.data_dir.resolve() / "store" / "staging"
    )

    clock.advance(hours=1)
    state = await tus.append(owner, up.upload_id, 0, stream(data[:1000]))
    assert state.offset == 1000
    assert state.expires_at == t0 + timedelta(hours=1) + ttl  # slid forward
    expiry = state.expires_at

    # past the first expiry, before the new one: still open
    clock.now = t0 + ttl + timedelta(minutes=1)
    assert (await tus.state(owner, up.upload_id)).offset == 1000
    assert await services.uploads.expire_sessions() == 0

    clock.now = expiry - timedelta(microseconds=1)
    assert (await tus.state(owner, up.upload_id)).expires_at == expiry
    clock.now = expiry
    with pytest.raises(Gone):
        await tus.state(owner, up.upload_id)
    with pytest.raises(Gone):
        await tus.append(owner, up.upload_id, 1000, stream(data[1000:]))
    assert row(services, up.upload_id)[0] == "open"  # refused, but not yet swept
    assert staged(services, up.upload_id).exists()

    assert await services.uploads.expire_sessions() == 1
    assert not staged(services, up.upload_id).exists()
    assert row(services, up.upload_id) == ("expired", "expired", None, "abandoned")
    with pytest.raises(Gone):
        await tus.state(owner, up.upload_id)
    assert await services.uploads.expire_sessions() == 0


async def test_a_deferred_upload_expires_like_any_other(
    services: Services, owner: str, clock: Clock
) -> None:
    up = await services.tus.create(owner, size=None, metadata=NO_META)
    await services.tus.append(owner, up.upload_id, 0, stream(b"x" * 100))
    clock.advance(days=2)
    assert await services.uploads.expire_sessions() == 1
    assert not staged(services, up.upload_id).exists()
    assert row(services, up.upload_id)[0] == "expired"


async def test_unused_partials_expire_and_used_ones_stay(
    services: Services, owner: str, clock: Clock
) -> None:
    tus = services.tus
    unused = await tus.create(owner, size=10, metadata=NO_META, partial=True)
    await tus.append(owner, unused.upload_id, 0, stream(b"u" * 10))
    used = await tus.create(owner, size=10, metadata=NO_META, partial=True)
    await tus.append(owner, used.upload_id, 0, stream(b"p" * 10))
    final = await tus.create_final(owner, [used.upload_id], metadata=NO_META)
    assert final.status == "completed" and final.offset == 10
    assert row(services, unused.upload_id)[0] == "completed"
    assert staged(services, unused.upload_id).exists()

    clock.advance(days=2)
    assert await services.uploads.expire_sessions() == 1
    assert row(services, unused.upload_id)[0] == "expired"
    assert not staged(services, unused.upload_id).exists()
    assert row(services, used.upload_id)[0] == "completed"
    assert row(services, final.upload_id)[:2] == ("completed", "uploaded")
    with pytest.raises(Gone):
        await tus.create_final(owner, [unused.upload_id], metadata=NO_META)


@pytest.mark.parametrize("sweep", [True, False], ids=["swept", "not-swept"])
async def test_a_final_upload_lives_while_its_partials_are_being_written(
    services: Services, owner: str, clock: Clock, sweep: bool
) -> None:
    """concatenation-unfinished: the final cannot be patched, so the partials' activity is
    its activity; it must not be expired under a client that is still uploading."""
    tus, ttl = services.tus, services.uploads.limits.ttl
    data = os.urandom(4000)
    part = await tus.create(owner, size=len(data), metadata=NO_META, partial=True)
    final = await tus.create_final(owner, [part.upload_id], metadata=NO_META)
    assert final.offset is None
    offset = 0
    for _ in range(4):  # a slow client: one PATCH every half TTL
        clock.advance(seconds=ttl.total_seconds() / 2)
        await tus.append(owner, part.upload_id, offset, stream(data[offset : offset + 900]))
        offset += 900
        if sweep:
            await services.uploads.expire_sessions()
    # the last byte of the last partial lands: the final is assembled and completed
    last = await tus.append(owner, part.upload_id, offset, stream(data[offset:]))
    assert last.status == "completed" and last.offset == len(data)
    done = await tus.state(owner, final.upload_id)
    assert done.status == "completed" and done.offset == len(data)
    assert row(services, final.upload_id)[2] == sha(data)


async def test_the_scheduler_removes_expired_staged_data(
    services: Services, owner: str, clock: Clock
) -> None:
    up = await services.tus.create(owner, size=5000, metadata=NO_META)
    await services.tus.append(owner, up.upload_id, 0, stream(os.urandom(2000)))
    part = await services.tus.create(owner, size=50, metadata=NO_META, partial=True)
    await services.tus.append(owner, part.upload_id, 0, stream(b"z" * 20))
    assert staged(services, up.upload_id).exists() and staged(services, part.upload_id).exists()
    clock.advance(days=1, seconds=1)
    stop = asyncio.Event()
    task = asyncio.create_task(services.run_scheduler(stop, interval_s=0.05))
    try:
        await until(
            lambda: (
                not staged(services, up.upload_id).exists()
                and not staged(services, part.upload_id).exists()
            ),
            "the scheduler to sweep expired uploads",
        )
    finally:
        stop.set()
        await task
    assert row(services, up.upload_id) == ("expired", "expired", None, "abandoned")
    assert row(services, part.upload_id)[0] == "expired"


async def test_a_completion_cut_short_is_finished_by_the_scheduler(
    services: Services, owner: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(BS + 99)
    up = await services.tus.create(owner, size=len(data), metadata=NO_META)

    async def failing_complete(*args: Any, **kw: Any) -> Any:
        raise StorageError("the process stopped here")

    monkeypatch.setattr(services.uploads, "complete", failing_complete)
    with pytest.raises(StorageError):
        await services.tus.append(owner, up.upload_id, 0, stream(data))
    monkeypatch.undo()
    assert row(services, up.upload_id)[0] == "open"
    assert await services.tus.finish_stalled() == 0  # not idle long enough yet
    clock.advance(minutes=2)
    assert await services.tus.finish_stalled() == 1
    assert row(services, up.upload_id) == ("completed", "uploaded", sha(data), "ingesting")
    assert blocks(services, up.upload_id) == expected_blocks(data)


# -- a body that breaks off --------------------------------------------------------------


async def test_a_body_that_breaks_keeps_what_arrived(services: Services, owner: str) -> None:
    tus = services.tus
    data = os.urandom(3 * BS + 10)
    cut = BS + 123  # not on a block boundary
    up = await tus.create(owner, size=len(data), metadata=NO_META)
    with pytest.raises(IncompleteWrite) as exc:
        await tus.append(owner, up.upload_id, 0, broken(data[:cut]))
    assert exc.value.written == cut
    state = await tus.state(owner, up.upload_id)
    assert state.offset == cut and state.status == "open"
    assert staged_bytes(services, up.upload_id, cut) == data[:cut]

    # a checksummed chunk that breaks off cannot be verified: none of it counts
    chunk = data[cut : cut + 5000]
    digest = Checksum("sha256", hashlib.sha256(chunk).digest())
    with pytest.raises(IncompleteWrite):
        await tus.append(owner, up.upload_id, cut, broken(chunk[:3000]), checksum=digest)
    assert (await tus.state(owner, up.upload_id)).offset == cut
    # nor does one whose checksum is wrong
    with pytest.raises(ChunkChecksumMismatch):
        await tus.append(
            owner,
            up.upload_id,
            cut,
            stream(chunk),
            checksum=Checksum("sha256", hashlib.sha256(b"x").digest()),
        )
    assert (await tus.state(owner, up.upload_id)).offset == cut

    done = await tus.append(owner, up.upload_id, cut, stream(data[cut:]))
    assert done.status == "completed" and done.offset == len(data)
    assert row(services, up.upload_id) == ("completed", "uploaded", sha(data), "ingesting")
    assert blocks(services, up.upload_id) == expected_blocks(data)


async def test_a_series_of_patches_spread_over_two_processes(
    services: Services, owner: str
) -> None:
    """The second process has no running hashes: it re-reads what it needs and completion
    verifies the whole file."""
    data = os.urandom(2 * BS + 777)
    first = services.tus
    second = TusService(services.uploads, InProcessLocker())
    up = await first.create(owner, size=len(data), metadata=NO_META)
    await first.append(owner, up.upload_id, 0, stream(data[:500]))
    await second.append(owner, up.upload_id, 500, stream(data[500 : BS + 40]))
    await first.append(owner, up.upload_id, BS + 40, stream(data[BS + 40 : 2 * BS + 1]))
    done = await second.append(owner, up.upload_id, 2 * BS + 1, stream(data[2 * BS + 1 :]))
    assert done.status == "completed" and done.offset == len(data)
    assert row(services, up.upload_id) == ("completed", "uploaded", sha(data), "ingesting")
    assert blocks(services, up.upload_id) == expected_blocks(data)


async def test_a_stale_offset_in_one_process_is_caught_when_recording(
    services: Services, owner: str
) -> None:
    """Two processes without a shared lock: the database still refuses the second write."""
    data = os.urandom(1000)
    up = await services.tus.create(owner, size=len(data), metadata=NO_META)
    other = TusService(services.uploads, InProcessLocker())
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        started.set()
        yield data[:300]
        await release.wait()

    slow_task = asyncio.create_task(services.tus.append(owner, up.upload_id, 0, slow()))
    await started.wait()
    await other.append(owner, up.upload_id, 0, stream(data[:400]))
    release.set()
    with pytest.raises(OffsetMismatch) as exc:
        await slow_task
    assert exc.value.details == {"offset": 400}
    state = await services.tus.state(owner, up.upload_id)
    assert state.offset == 400
    done = await services.tus.append(owner, up.upload_id, 400, stream(data[400:]))
    assert done.status == "completed"
    assert row(services, up.upload_id)[2] == sha(data)


# -- PATCHes racing for one upload -------------------------------------------------------


async def test_a_patch_that_cannot_be_interrupted_makes_others_wait(
    services: Services, owner: str
) -> None:
    """A holder that cannot be asked to stop keeps the lock: a PATCH that waits gets it
    afterwards (and the new offset), one that waits less than lock_wait_s gets Locked."""
    assert services.tus.lock_wait_s == services.settings.tus_lock_wait_s
    locker = CountingLocker()
    tus = TusService(services.uploads, locker, lock_wait_s=30)
    impatient = TusService(services.uploads, locker, lock_wait_s=0.05)
    data = os.urandom(3 * BS)
    up = await tus.create(owner, size=len(data), metadata=NO_META)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:BS]
        await release.wait()
        yield data[BS : 2 * BS]

    first = asyncio.create_task(tus.append(owner, up.upload_id, 0, slow()))
    await until(lambda: locker.held(up.upload_id), "the first PATCH to take the lock")
    # one that will not wait long enough is refused at once
    with pytest.raises(Locked) as locked:
        await impatient.append(owner, up.upload_id, 0, stream(b"L" * 100))
    assert locked.value.code == "upload_locked"
    # one that waits gets the lock after the first, and the first's offset
    second = asyncio.create_task(tus.append(owner, up.upload_id, 0, stream(b"S" * 100)))
    await until(lambda: locker.arrived[up.upload_id] == 3, "the second PATCH to wait")
    assert not second.done() and locker.held(up.upload_id)
    release.set()
    first_state: TusUpload = await first
    assert first_state.offset == 2 * BS
    with pytest.raises(OffsetMismatch) as mismatch:
        await second
    assert mismatch.value.details == {"offset": 2 * BS}
    assert staged_bytes(services, up.upload_id, 2 * BS) == data[: 2 * BS]
    assert not locker.held(up.upload_id)
    done = await tus.append(owner, up.upload_id, 2 * BS, stream(data[2 * BS :]))
    assert done.status == "completed"
    assert row(services, up.upload_id)[2] == sha(data)


class Stalled:
    """A request body that stalls after ``data`` until it is interrupted."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.stop = asyncio.Event()

    def interrupt(self) -> None:
        self.stop.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.data
        await self.stop.wait()
        raise ConnectionAbortedError("a newer request took over")


async def test_a_newer_patch_interrupts_a_stalled_one(services: Services, owner: str) -> None:
    locker = CountingLocker()
    tus = TusService(services.uploads, locker, lock_wait_s=30)
    data = os.urandom(2 * BS)
    up = await tus.create(owner, size=len(data), metadata=NO_META)
    stalled = Stalled(data[:1000])
    old = asyncio.create_task(
        tus.append(owner, up.upload_id, 0, stalled.chunks(), interrupt=stalled.interrupt)
    )
    await until(lambda: locker.held(up.upload_id), "the first PATCH to take the lock")
    # a client reconnecting after the stall: it does not know what arrived, so it asks at 0
    with pytest.raises(OffsetMismatch) as mismatch:
        await tus.append(owner, up.upload_id, 0, stream(data))
    assert mismatch.value.details == {"offset": 1000}
    with pytest.raises(IncompleteWrite) as cut:
        await old
    assert cut.value.written == 1000
    assert staged_bytes(services, up.upload_id, 1000) == data[:1000]
    done = await tus.append(owner, up.upload_id, 1000, stream(data[1000:]))
    assert done.status == "completed"
    assert row(services, up.upload_id)[2] == sha(data)
