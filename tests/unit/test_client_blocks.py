from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import pytest

from ingestd.client import (
    EmptyFile,
    FileChanged,
    content_digest,
    hash_file,
    parse_content_digest,
    read_block,
)
from ingestd.errors import InvalidRequest

BLOCK = 4096


def _write(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def _expected(data: bytes, block_size: int) -> list[str]:
    return [
        hashlib.sha256(data[i : i + block_size]).hexdigest()
        for i in range(0, len(data), block_size)
    ]


@pytest.mark.parametrize(
    ("size", "count", "last"),
    [
        (3 * BLOCK, 3, BLOCK),  # exact multiple: no empty trailing block
        (3 * BLOCK + 1, 4, 1),  # one byte over: a last block of one byte
        (BLOCK - 1, 1, BLOCK - 1),  # smaller than one block
        (1, 1, 1),
    ],
)
def test_hash_file_splits_into_fixed_blocks(
    tmp_path: Path, size: int, count: int, last: int
) -> None:
    path = tmp_path / "f.bin"
    data = _write(path, size)
    plan = hash_file(path, BLOCK)
    assert plan.block_count == count
    assert plan.block_length(count - 1) == last
    assert list(plan.block_hashes) == _expected(data, BLOCK)
    assert plan.sha256 == hashlib.sha256(data).hexdigest()
    assert plan.size == size


def test_hash_file_reports_every_byte_and_reads_in_bounded_slices(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    _write(path, 5 * 1024 * 1024 + 17)
    seen: list[int] = []
    plan = hash_file(path, 2 * 1024 * 1024, seen.append)
    assert sum(seen) == plan.size
    assert max(seen) <= 1024 * 1024  # never a whole block at once


def test_empty_file_is_rejected_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(EmptyFile, match="empty"):
        hash_file(path, BLOCK)


def test_read_block_returns_the_block_and_detects_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = _write(path, 2 * BLOCK + 10)
    plan = hash_file(path, BLOCK)
    assert read_block(path, plan, 2) == data[2 * BLOCK :]
    assert read_block(path, plan, 0) == data[:BLOCK]
    changed = bytearray(data)
    changed[BLOCK + 5] ^= 0xFF
    path.write_bytes(bytes(changed))
    assert read_block(path, plan, 0) == data[:BLOCK]
    with pytest.raises(FileChanged, match="block 1"):
        read_block(path, plan, 1)


def test_content_digest_is_rfc9530_sha256_of_the_raw_digest() -> None:
    # The client's names are the block API's own: what the client sends, the server parses.
    empty = hashlib.sha256(b"").hexdigest()
    assert content_digest(empty) == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    digest = hashlib.sha256(b"block").digest()
    header = content_digest(digest.hex())
    assert header == f"sha-256=:{base64.b64encode(digest).decode()}:"
    assert parse_content_digest(header) == digest.hex()
    assert parse_content_digest(f"md5=:AAAA:, {header}") == digest.hex()


@pytest.mark.parametrize(
    "header", ["", "sha-256=abc", "sha-256=:not base64!:", "sha-256=:AAAA:", "sha-512=:AAAA:"]
)
def test_parse_content_digest_rejects_malformed_headers(header: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_content_digest(header)
