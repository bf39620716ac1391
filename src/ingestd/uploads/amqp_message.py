"""Chunk messages of the AMQP ingest: the header contract, parsed and checked without I/O.

One message carries one chunk of a file; its headers say which upload, which chunk and how
the file is cut. Everything that can be judged from the message alone is judged here, so a
message that fails is dead-lettered before anything is written. docs/amqp-ingest.md is the
sender's side of this contract.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from ingestd.errors import InvalidRequest
from ingestd.uploads.blocks import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, block_count

H_UPLOAD_ID = "x-upload-id"
H_INDEX = "x-chunk-index"
H_COUNT = "x-chunk-count"
H_TOTAL_SIZE = "x-total-size"
H_CHUNK_SIZE = "x-chunk-size"
H_SHA256 = "x-chunk-sha256"
H_FILENAME = "x-filename"
H_CONTENT_TYPE = "x-content-type"
H_TITLE = "x-title"
H_PROFILE = "x-profile"
# refused: the owner is the consumer's, configured when it starts, never the message's
H_OWNER = "x-owner"

MAX_UPLOAD_ID = 200
MAX_FILENAME = 1000
MAX_TITLE = 500
MAX_CONTENT_TYPE = 200
MAX_PROFILE = 100

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$")
_PROFILE = re.compile(r"^[A-Za-z0-9_.-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Reason(StrEnum):
    """Why a chunk message was dead-lettered (its ``x-ingestd-error`` header)."""

    MISSING_HEADER = "missing_header"
    INVALID_HEADER = "invalid_header"
    OWNER_NOT_ALLOWED = "owner_not_allowed"
    INDEX_OUT_OF_RANGE = "index_out_of_range"
    INVALID_CHUNK_SIZE = "invalid_chunk_size"  # against ingestd's block-size rules
    INCONSISTENT_COUNT = "inconsistent_count"  # count != ceil(total / chunk size)
    WRONG_LENGTH = "wrong_length"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    TOO_LARGE = "too_large"
    UNKNOWN_PROFILE = "unknown_profile"
    UPLOAD_MISMATCH = "upload_mismatch"  # size or chunk size differ from the existing upload
    CHUNK_CONFLICT = "chunk_conflict"  # the chunk was recorded earlier with other bytes
    UPLOAD_GONE = "upload_gone"  # the upload expired or was cancelled
    REJECTED = "rejected"  # the upload service refused the chunk
    REDELIVERY_LIMIT = "redelivery_limit"  # failed transiently too often


class ChunkRejected(InvalidRequest):
    """The chunk message is not acceptable; sending it again unchanged cannot succeed."""

    code = "chunk_rejected"

    def __init__(self, reason: Reason, message: str, **details: object) -> None:
        super().__init__(message, **details)
        self.reason = reason
        self.code = reason.value


@dataclass(frozen=True)
class Chunk:
    upload_id: str
    index: int
    count: int
    total_size: int
    chunk_size: int
    sha256: str  # lower-case hex, verified against body
    body: bytes
    filename: str | None = None
    content_type: str | None = None
    title: str | None = None
    profile: str | None = None

    @property
    def has_metadata(self) -> bool:
        return any(
            v is not None for v in (self.filename, self.content_type, self.title, self.profile)
        )

    @property
    def block_size(self) -> int:
        """The upload's block size in ingestd: the chunk size, except for a file sent as
        one chunk smaller than the minimum block, whose block is the minimum."""
        if self.count == 1:
            return max(self.total_size, MIN_BLOCK_SIZE)
        return self.chunk_size


def expected_length(index: int, count: int, total_size: int, chunk_size: int) -> int:
    """Every chunk is ``chunk_size`` bytes but the last, which holds the rest."""
    if index < count - 1:
        return chunk_size
    return total_size - (count - 1) * chunk_size


def parse_chunk(
    headers: Mapping[str, object],
    body: bytes,
    *,
    max_size: int,
    profiles: Collection[str] | None = None,
) -> Chunk:
    """The chunk a message carries, checked as far as the message alone allows.

    ``max_size`` is the largest upload accepted; ``profiles``, when given, the known ladder
    profiles. Raises :class:`ChunkRejected` with the first problem found.
    """
    if H_OWNER in headers:
        raise ChunkRejected(
            Reason.OWNER_NOT_ALLOWED,
            f"{H_OWNER} is not accepted: this consumer ingests for the owner it was started for",
        )
    upload_id = _required_text(headers, H_UPLOAD_ID, MAX_UPLOAD_ID)
    index = _integer(headers, H_INDEX)
    count = _integer(headers, H_COUNT)
    total = _integer(headers, H_TOTAL_SIZE)
    chunk_size = _integer(headers, H_CHUNK_SIZE)
    digest = _required_text(headers, H_SHA256, 64)
    if not _HEX64.match(digest):
        raise ChunkRejected(
            Reason.INVALID_HEADER, f"{H_SHA256} must be 64 hexadecimal characters", header=H_SHA256
        )
    if total <= 0:
        raise ChunkRejected(
            Reason.INVALID_HEADER, f"{H_TOTAL_SIZE} must be positive", header=H_TOTAL_SIZE
        )
    if total > max_size:
        raise ChunkRejected(
            Reason.TOO_LARGE,
            f"{H_TOTAL_SIZE} {total} exceeds the maximum upload size of {max_size} bytes",
            max_size=max_size,
        )
    if count <= 0:
        raise ChunkRejected(Reason.INVALID_HEADER, f"{H_COUNT} must be positive", header=H_COUNT)
    if index >= count:
        raise ChunkRejected(
            Reason.INDEX_OUT_OF_RANGE,
            f"{H_INDEX} {index} is out of range: the upload has chunks 0..{count - 1}",
            index=index,
            count=count,
        )
    _check_chunk_size(count, total, chunk_size)
    length = expected_length(index, count, total, chunk_size)
    if len(body) != length:
        raise ChunkRejected(
            Reason.WRONG_LENGTH,
            f"chunk {index} must be {length} bytes; the body has {len(body)}",
            expected=length,
            received=len(body),
        )
    digest = digest.lower()
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise ChunkRejected(
            Reason.CHECKSUM_MISMATCH,
            f"chunk {index}: SHA-256 of the body is {actual}, {H_SHA256} says {digest}",
            expected=digest,
            actual=actual,
        )
    content_type = _text(headers, H_CONTENT_TYPE, MAX_CONTENT_TYPE)
    if content_type is not None and not _CONTENT_TYPE.match(content_type):
        raise ChunkRejected(
            Reason.INVALID_HEADER,
            f"{H_CONTENT_TYPE} must be a media type such as video/mp4",
            header=H_CONTENT_TYPE,
        )
    profile = _text(headers, H_PROFILE, MAX_PROFILE)
    if profile is not None and not _PROFILE.match(profile):
        raise ChunkRejected(
            Reason.INVALID_HEADER, f"{H_PROFILE} has invalid characters", header=H_PROFILE
        )
    if profile is not None and profiles is not None and profile not in profiles:
        raise ChunkRejected(
            Reason.UNKNOWN_PROFILE,
            f"unknown profile {profile!r}; known: {', '.join(sorted(profiles))}",
        )
    return Chunk(
        upload_id=upload_id,
        index=index,
        count=count,
        total_size=total,
        chunk_size=chunk_size,
        sha256=digest,
        body=body,
        filename=_text(headers, H_FILENAME, MAX_FILENAME),
        content_type=content_type,
        title=_text(headers, H_TITLE, MAX_TITLE),
        profile=profile,
    )


def check_upload_shape(chunk: Chunk, *, size: int | None, block_size: int) -> None:
    """A chunk of an existing upload must describe the file the upload was created for."""
    if size != chunk.total_size or block_size != chunk.block_size:
        raise ChunkRejected(
            Reason.UPLOAD_MISMATCH,
            f"upload {chunk.upload_id!r} was created with {size} bytes in chunks of "
            f"{block_size}; this chunk says {chunk.total_size} bytes in chunks of "
            f"{chunk.chunk_size}",
            size=size,
            block_size=block_size,
        )


def _check_chunk_size(count: int, total: int, chunk_size: int) -> None:
    if count == 1:
        # one chunk: the chunk size only has to hold the file; the block is the whole file
        if chunk_size < total:
            raise ChunkRejected(
                Reason.INCONSISTENT_COUNT,
                f"one chunk of {chunk_size} bytes cannot hold {total} bytes",
            )
        if total > MAX_BLOCK_SIZE:
            raise ChunkRejected(
                Reason.INVALID_CHUNK_SIZE,
                f"a chunk may hold at most {MAX_BLOCK_SIZE} bytes; this one holds {total}",
            )
        return
    if not MIN_BLOCK_SIZE <= chunk_size <= MAX_BLOCK_SIZE:
        raise ChunkRejected(
            Reason.INVALID_CHUNK_SIZE,
            f"{H_CHUNK_SIZE} must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes; "
            f"it is {chunk_size}",
            chunk_size=chunk_size,
        )
    expected = block_count(total, chunk_size)
    if count != expected:
        raise ChunkRejected(
            Reason.INCONSISTENT_COUNT,
            f"{total} bytes in chunks of {chunk_size} make {expected} chunks; "
            f"{H_COUNT} says {count}",
            expected=expected,
        )


def _raw(headers: Mapping[str, object], name: str) -> object:
    value = headers.get(name)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ChunkRejected(
                Reason.INVALID_HEADER, f"{name} is not UTF-8 text", header=name
            ) from exc
    return value


def _text(headers: Mapping[str, object], name: str, max_length: int) -> str | None:
    value = _raw(headers, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ChunkRejected(Reason.INVALID_HEADER, f"{name} must be a string", header=name)
    value = value.strip()
    if len(value) > max_length or _CONTROL.search(value):
        raise ChunkRejected(
            Reason.INVALID_HEADER,
            f"{name} must be at most {max_length} characters without control characters",
            header=name,
        )
    return value


def _required_text(headers: Mapping[str, object], name: str, max_length: int) -> str:
    value = _text(headers, name, max_length)
    if value is None:
        raise ChunkRejected(Reason.MISSING_HEADER, f"{name} is missing", header=name)
    return value


def _integer(headers: Mapping[str, object], name: str) -> int:
    value = _raw(headers, name)
    if value is None:
        raise ChunkRejected(Reason.MISSING_HEADER, f"{name} is missing", header=name)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.match(value.strip()):
        number = int(value.strip())
    else:
        raise ChunkRejected(
            Reason.INVALID_HEADER, f"{name} must be a whole number; got {value!r}", header=name
        )
    if number < 0:
        raise ChunkRejected(Reason.INVALID_HEADER, f"{name} must not be negative", header=name)
    return number
