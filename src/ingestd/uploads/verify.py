"""Verifying assembled data in one sequential pass."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping


async def hash_blocks(
    chunks: AsyncIterator[bytes], block_size: int, expected: Mapping[int, str]
) -> tuple[str, list[int]]:
    """The SHA-256 of the whole stream and the indexes of blocks whose hash is not expected.

    One read serves both: the file hash the asset records, and a last check that every
    block still holds the bytes that were verified when it arrived.
    """
    whole = hashlib.sha256()
    block = hashlib.sha256()
    bad: list[int] = []
    index = filled = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = view[: block_size - filled]
            whole.update(take)
            block.update(take)
            filled += len(take)
            view = view[len(take) :]
            if filled == block_size:
                if expected.get(index) != block.hexdigest():
                    bad.append(index)
                index, filled, block = index + 1, 0, hashlib.sha256()
    if filled and expected.get(index) != block.hexdigest():
        bad.append(index)
    return whole.hexdigest(), bad
