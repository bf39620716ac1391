"""Splitting a file into fixed blocks: one streaming hashing pass, then reading blocks back.

Memory stays bounded by one read buffer while hashing and by one block per reader while
uploading, whatever the file size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingestd.client.errors import EmptyFile, FileChanged

# Block arithmetic and the Content-Digest format are the server's own (pure functions),
# re-exported so the client and the block API cannot disagree about them.
from ingestd.uploads.blocks import (
    DEFAULT_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    block_count,
    content_digest,
    parse_content_digest,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "BlockPlan",
    "block_count",
    "content_digest",
    "hash_file",
    "parse_content_digest",
    "read_block",
]

# Hashing reads in slices of this size so a large block never sits in memory while hashing.
_READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class BlockPlan:
    """A file cut into ``block_size`` blocks: the SHA-256 (hex) of each block and of the whole."""

    size: int
    block_size: int
    block_hashes: tuple[str, ...]
    sha256: str

    @property
    def block_count(self) -> int:
        return len(self.block_hashes)

    def block_length(self, index: int) -> int:
        """The length of block ``index``; only the last block may be shorter."""
        if not 0 <= index < self.block_count:
            raise IndexError(f"block {index} is out of range 0..{self.block_count - 1}")
        return min(self.block_size, self.size - index * self.block_size)


def hash_file(
    path: Path,
    block_size: int,
    on_bytes: Callable[[int], None] | None = None,
) -> BlockPlan:
    """Hash ``path`` block by block and as a whole in one pass.

    ``on_bytes`` is called with the number of bytes just hashed (for progress).
    Raises ``EmptyFile`` for an empty file and ``FileChanged`` if the size changes while
    it is being read.
    """
    if block_size < 1:
        raise ValueError("block_size must be positive")
    size = path.stat().st_size
    if size == 0:
        raise EmptyFile(f"{path} is empty; there is nothing to upload")
    whole = hashlib.sha256()
    hashes: list[str] = []
    buffer = bytearray(min(_READ_SIZE, block_size))
    view = memoryview(buffer)
    read_total = 0
    with path.open("rb") as stream:
        while read_total < size:
            block = hashlib.sha256()
            remaining = min(block_size, size - read_total)
            while remaining:
                got = stream.readinto(view[: min(len(buffer), remaining)])
                if not got:
                    raise FileChanged(f"{path} became shorter while it was being read")
                chunk = view[:got]
                block.update(chunk)
                whole.update(chunk)
                remaining -= got
                read_total += got
                if on_bytes is not None:
                    on_bytes(got)
            hashes.append(block.hexdigest())
        if stream.read(1):
            raise FileChanged(f"{path} grew while it was being read")
    return BlockPlan(
        size=size, block_size=block_size, block_hashes=tuple(hashes), sha256=whole.hexdigest()
    )


def read_block(path: Path, plan: BlockPlan, index: int) -> bytes:
    """Read block ``index`` of ``path`` and check it still has the hash in ``plan``.

    Raises ``FileChanged`` when the bytes on disk no longer match the plan.
    """
    length = plan.block_length(index)
    with path.open("rb") as stream:
        stream.seek(index * plan.block_size, os.SEEK_SET)
        data = stream.read(length)
    if len(data) != length or hashlib.sha256(data).hexdigest() != plan.block_hashes[index]:
        raise FileChanged(f"{path} changed while it was being uploaded (block {index} differs)")
    return data
