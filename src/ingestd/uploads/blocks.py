"""Block arithmetic and digests, shared by the block API and its clients."""

from __future__ import annotations

import base64
import binascii
import re

from ingestd.errors import InvalidBlock, InvalidRequest

KIB = 1 << 10
MIB = 1 << 20
DEFAULT_BLOCK_SIZE = 8 * MIB
MAX_BLOCK_SIZE = 64 * MIB
MIN_BLOCK_SIZE = 64 * KIB

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_ITEM = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_span(index: int, size: int, block_size: int) -> tuple[int, int]:
    """(offset, length) of block ``index``; the last block may be short."""
    count = block_count(size, block_size)
    if index < 0 or index >= count:
        raise InvalidBlock(
            f"block index {index} is out of range: this upload has blocks 0..{count - 1}",
            index=index,
            block_count=count,
        )
    offset = index * block_size
    return offset, min(block_size, size - offset)


def check_block_size(block_size: int) -> int:
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise InvalidRequest(
            f"block_size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes",
            block_size=block_size,
        )
    return block_size


def normalise_sha256(value: str, what: str = "sha256") -> str:
    value = value.strip().lower()
    if not _HEX64.match(value):
        raise InvalidRequest(f"{what} must be 64 hexadecimal characters")
    return value


def parse_content_digest(header: str) -> str:
    """The SHA-256 (hex) from an RFC 9530 ``Content-Digest`` header."""
    for item in header.split(","):
        match = _DIGEST_ITEM.match(item)
        if match is None:
            raise InvalidRequest(f"malformed Content-Digest header: {header!r}")
        algorithm, value = match.groups()
        if algorithm.lower() != "sha-256":
            continue
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise InvalidRequest("Content-Digest sha-256 value is not base64") from exc
        if len(raw) != 32:
            raise InvalidRequest("Content-Digest sha-256 value must be 32 bytes")
        return raw.hex()
    raise InvalidRequest("Content-Digest must include sha-256")


def content_digest(sha256_hex: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def missing_blocks(present: set[int], count: int) -> list[int]:
    return [i for i in range(count) if i not in present]
