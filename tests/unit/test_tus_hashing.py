"""SequentialHasher: the block, chunk and whole-file hashes of bytes written in order."""

from __future__ import annotations

import hashlib
import random

import pytest

from ingestd.uploads.tus import SequentialHasher

BS = 1000


def blocks_of(data: bytes, start: int = 0) -> list[tuple[int, int, str]]:
    out = []
    for i in range(start // BS, (len(data) + BS - 1) // BS):
        block = data[i * BS : (i + 1) * BS]
        out.append((i, len(block), hashlib.sha256(block).hexdigest()))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_give_the_same_hashes_as_one_pass(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(1, 10 * BS))
    hasher = SequentialHasher(
        offset=0,
        block_size=BS,
        block=hashlib.sha256(),
        whole=hashlib.sha256(),
        chunk=hashlib.md5(),
    )
    pos = 0
    while pos < len(data):
        n = rng.randrange(1, 2 * BS)
        hasher.update(memoryview(data[pos : pos + n]))
        pos += n
    hasher.finish()
    assert hasher.blocks == blocks_of(data)
    assert hasher.whole.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.chunk.digest() == hashlib.md5(data).digest()


def test_a_resumed_hasher_continues_the_current_block() -> None:
    data = random.Random(7).randbytes(3 * BS + 10)
    cut = BS + 250  # the second PATCH starts inside block 1
    seed = hashlib.sha256(data[BS:cut])
    hasher = SequentialHasher(offset=cut, block_size=BS, block=seed)
    hasher.update(memoryview(data[cut:]))
    hasher.finish()
    assert hasher.whole is None  # not seen from byte 0: completion re-reads the file
    assert hasher.blocks == blocks_of(data, start=BS)


def test_only_finish_closes_a_short_last_block() -> None:
    hasher = SequentialHasher(offset=0, block_size=BS, block=hashlib.sha256())
    hasher.update(memoryview(b"x" * (BS + 5)))
    assert [b[0] for b in hasher.blocks] == [0]  # block 1 may still grow
    hasher.finish()
    assert hasher.blocks[-1] == (1, 5, hashlib.sha256(b"x" * 5).hexdigest())
