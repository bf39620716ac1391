from __future__ import annotations

import base64
import hashlib

import pytest

from ingestd.errors import InvalidBlock, InvalidRequest
from ingestd.uploads.blocks import (
    MIB,
    block_count,
    block_span,
    check_block_size,
    content_digest,
    missing_blocks,
    parse_content_digest,
)


@pytest.mark.parametrize(
    ("size", "block", "count"),
    [(1, MIB, 1), (MIB, MIB, 1), (MIB + 1, MIB, 2), (10 * MIB, 4 * MIB, 3)],
)
def test_block_count(size: int, block: int, count: int) -> None:
    assert block_count(size, block) == count


def test_last_block_is_short() -> None:
    assert block_span(0, 10 * MIB, 4 * MIB) == (0, 4 * MIB)
    assert block_span(2, 10 * MIB, 4 * MIB) == (8 * MIB, 2 * MIB)


@pytest.mark.parametrize("index", [-1, 3, 1000])
def test_index_out_of_range(index: int) -> None:
    with pytest.raises(InvalidBlock):
        block_span(index, 10 * MIB, 4 * MIB)


def test_block_size_limits() -> None:
    assert check_block_size(8 * MIB) == 8 * MIB
    for bad in (0, 1024, 65 * MIB):
        with pytest.raises(InvalidRequest):
            check_block_size(bad)


def test_content_digest_roundtrip() -> None:
    digest = hashlib.sha256(b"abc").hexdigest()
    header = content_digest(digest)
    assert header == "sha-256=:" + base64.b64encode(hashlib.sha256(b"abc").digest()).decode() + ":"
    assert parse_content_digest(header) == digest
    assert parse_content_digest("md5=:AAAA:, " + header) == digest


@pytest.mark.parametrize("header", ["sha-256=abc", "sha-256=:!!!:", "sha-256=:AAAA:", "md5=:AAAA:"])
def test_bad_content_digest(header: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_content_digest(header)


def test_missing_blocks() -> None:
    assert missing_blocks({0, 2}, 4) == [1, 3]
    assert missing_blocks(set(), 0) == []
