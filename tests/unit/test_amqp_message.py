"""parse_chunk: the AMQP chunk header contract, judged from the message alone."""

from __future__ import annotations

import hashlib

import pytest

from ingestd.uploads.amqp_message import (
    ChunkRejected,
    Reason,
    check_upload_shape,
    expected_length,
    parse_chunk,
)
from ingestd.uploads.blocks import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

CS = MIN_BLOCK_SIZE
TOTAL = 2 * CS + 100  # three chunks, the last of 100 bytes
MAX = 1 << 30


def headers(body: bytes, index: int = 0, /, **extra: object) -> dict[str, object]:
    h: dict[str, object] = {
        "x-upload-id": "gw-42",
        "x-chunk-index": index,
        "x-chunk-count": 3,
        "x-total-size": TOTAL,
        "x-chunk-size": CS,
        "x-chunk-sha256": hashlib.sha256(body).hexdigest(),
    }
    h.update(extra)
    return {k: v for k, v in h.items() if v is not None}


def rejected(h: dict[str, object], body: bytes, **kw: object) -> Reason:
    with pytest.raises(ChunkRejected) as info:
        parse_chunk(h, body, max_size=MAX, **kw)  # type: ignore[arg-type]
    assert info.value.code == info.value.reason.value
    return info.value.reason


def test_a_valid_middle_chunk_with_metadata() -> None:
    body = b"m" * CS
    chunk = parse_chunk(
        headers(
            body,
            1,
            **{
                "x-filename": b"clip.mov",  # long strings may arrive as bytes
                "x-content-type": "video/quicktime",
                "x-title": " A clip ",
                "x-profile": "default",
            },
        ),
        body,
        max_size=MAX,
        profiles={"default"},
    )
    assert (chunk.upload_id, chunk.index, chunk.count) == ("gw-42", 1, 3)
    assert (chunk.total_size, chunk.chunk_size, chunk.block_size) == (TOTAL, CS, CS)
    assert chunk.sha256 == hashlib.sha256(body).hexdigest()
    assert (chunk.filename, chunk.content_type, chunk.title, chunk.profile) == (
        "clip.mov",
        "video/quicktime",
        "A clip",
        "default",
    )


def test_the_last_chunk_is_the_rest_and_numbers_may_be_strings() -> None:
    body = b"z" * 100
    h = headers(body, 2)
    h["x-chunk-index"] = "2"
    h["x-total-size"] = str(TOTAL)
    h["x-chunk-sha256"] = str(h["x-chunk-sha256"]).upper()
    chunk = parse_chunk(h, body, max_size=MAX)
    assert chunk.index == 2
    assert chunk.sha256 == hashlib.sha256(body).hexdigest()
    assert chunk.filename is None
    assert expected_length(2, 3, TOTAL, CS) == 100


def test_a_small_file_in_one_chunk_gets_the_minimum_block() -> None:
    body = b"tiny"
    h = headers(body, **{"x-chunk-count": 1, "x-total-size": 4, "x-chunk-size": 4})
    chunk = parse_chunk(h, body, max_size=MAX)
    assert chunk.block_size == MIN_BLOCK_SIZE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"x-chunk-index": None}, Reason.MISSING_HEADER),
        ({"x-upload-id": None}, Reason.MISSING_HEADER),
        ({"x-upload-id": "  "}, Reason.MISSING_HEADER),
        ({"x-chunk-sha256": None}, Reason.MISSING_HEADER),
        ({"x-upload-id": "x" * 201}, Reason.INVALID_HEADER),
        ({"x-upload-id": "a\nb"}, Reason.INVALID_HEADER),
        ({"x-upload-id": 7}, Reason.INVALID_HEADER),
        ({"x-chunk-index": -1}, Reason.INVALID_HEADER),
        ({"x-chunk-index": True}, Reason.INVALID_HEADER),
        ({"x-chunk-index": 1.0}, Reason.INVALID_HEADER),
        ({"x-chunk-index": "one"}, Reason.INVALID_HEADER),
        ({"x-chunk-sha256": "abc"}, Reason.INVALID_HEADER),
        ({"x-total-size": 0}, Reason.INVALID_HEADER),
        ({"x-chunk-count": 0}, Reason.INVALID_HEADER),
        ({"x-content-type": "not a type"}, Reason.INVALID_HEADER),
        ({"x-profile": "../x"}, Reason.INVALID_HEADER),
        ({"x-filename": b"\xff\xfe"}, Reason.INVALID_HEADER),
        ({"x-owner": "someone-else"}, Reason.OWNER_NOT_ALLOWED),
        ({"x-chunk-index": 3}, Reason.INDEX_OUT_OF_RANGE),
        ({"x-chunk-count": 4}, Reason.INCONSISTENT_COUNT),
        ({"x-chunk-size": CS - 1, "x-chunk-count": 3}, Reason.INVALID_CHUNK_SIZE),
        ({"x-chunk-size": MAX_BLOCK_SIZE + 1}, Reason.INVALID_CHUNK_SIZE),
        ({"x-total-size": MAX + 1}, Reason.TOO_LARGE),
    ],
)
def test_bad_headers_are_rejected_with_their_reason(
    change: dict[str, object], reason: Reason
) -> None:
    body = b"a" * CS
    assert rejected(headers(body, **change), body) == reason


def test_a_body_of_the_wrong_length_is_rejected() -> None:
    body = b"a" * (CS - 1)
    assert rejected(headers(body, 0), body) == Reason.WRONG_LENGTH
    last = b"a" * 101
    assert rejected(headers(last, 2), last) == Reason.WRONG_LENGTH


def test_a_body_that_does_not_match_its_sha256_is_rejected() -> None:
    body = b"a" * CS
    h = headers(body)
    with pytest.raises(ChunkRejected) as info:
        parse_chunk(h, b"b" * CS, max_size=MAX)
    assert info.value.reason == Reason.CHECKSUM_MISMATCH
    assert info.value.details["expected"] == h["x-chunk-sha256"]


def test_an_unknown_profile_is_rejected_when_profiles_are_known() -> None:
    body = b"a" * CS
    h = headers(body, **{"x-profile": "huge"})
    assert rejected(h, body, profiles={"default"}) == Reason.UNKNOWN_PROFILE
    assert parse_chunk(h, body, max_size=MAX).profile == "huge"


def test_one_chunk_must_hold_the_whole_file() -> None:
    body = b"a" * 10
    h = headers(body, **{"x-chunk-count": 1, "x-total-size": 10, "x-chunk-size": 9})
    assert rejected(h, body) == Reason.INCONSISTENT_COUNT


def test_a_chunk_must_match_the_upload_it_belongs_to() -> None:
    body = b"a" * CS
    chunk = parse_chunk(headers(body), body, max_size=MAX)
    check_upload_shape(chunk, size=TOTAL, block_size=CS)
    for size, block_size in [(TOTAL + 1, CS), (TOTAL, 2 * CS)]:
        with pytest.raises(ChunkRejected) as info:
            check_upload_shape(chunk, size=size, block_size=block_size)
        assert info.value.reason == Reason.UPLOAD_MISMATCH
