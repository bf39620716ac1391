"""The local staging store's streamed writes: batching, breaks, limits, ranges, copies."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from ingestd.errors import TooLarge
from ingestd.storage.base import IncompleteWrite
from ingestd.storage.local import LocalStore

pytestmark = pytest.mark.anyio


async def stream(parts: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("client went away")
        await anyio.lowlevel.checkpoint()
        yield part


def staged(store: LocalStore, upload_id: str) -> bytes:
    return (store.staging / f"{upload_id}.part").read_bytes()


async def test_many_tiny_chunks_are_written_in_order_and_observed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    # more chunks than one pwritev takes, and an empty one, at an offset
    parts = [os.urandom(n % 7 + 1) for n in range(3000)] + [b""]
    data = b"".join(parts)
    await store.create("up_a", 10 + len(data))
    seen = hashlib.sha256()
    n = await store.write_at("up_a", 10, stream(parts), limit=len(data), observe=seen.update)
    assert n == len(data)
    assert staged(store, "up_a")[10:] == data
    assert seen.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_broken_stream_keeps_every_byte_that_arrived(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    parts = [os.urandom(3 << 20) for _ in range(4)]  # past one 4 MiB batch
    await store.create("up_b", 12 << 20)
    with pytest.raises(IncompleteWrite) as caught:
        await store.write_at("up_b", 0, stream(parts, fail_after=3), limit=12 << 20)
    kept = b"".join(parts[:3])
    assert caught.value.written == len(kept)
    assert staged(store, "up_b")[: len(kept)] == kept


async def test_more_than_the_limit_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.create("up_c", 100)
    with pytest.raises(TooLarge):
        await store.write_at("up_c", 0, stream([b"x" * 60, b"y" * 60]), limit=100)


async def test_ranges_read_back_and_staged_objects_concatenate(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    a, b = os.urandom(5000), os.urandom(7000)
    for upload_id, data in (("up_p1", a), ("up_p2", b)):
        await store.create(upload_id, len(data))
        await store.write_at(upload_id, 0, stream([data]), limit=len(data))
    await store.create("up_f", len(a) + len(b))
    await store.copy_staged("up_f", 0, "up_p1", len(a))
    await store.copy_staged("up_f", len(a), "up_p2", len(b))
    assert staged(store, "up_f") == a + b
    got = b"".join([c async for c in store.read_staged("up_f", 4000, 2000)])
    assert got == (a + b)[4000:6000]
