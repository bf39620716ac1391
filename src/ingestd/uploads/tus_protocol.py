"""tus 1.0.0 header values: parsing and formatting, with precise errors for bad input.

Pure functions, no I/O: the HTTP layer hands header strings in, the tus service gets
typed values out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from ingestd.errors import InvalidRequest

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"

CHECKSUMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
}

MAX_METADATA_BYTES = 8192  # the decoded values together

_KEY = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a token: no spaces, commas or controls
_NUMBER = re.compile(r"^[0-9]{1,19}$")
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_]{1,40}$")


class InvalidMetadata(InvalidRequest):
    """Upload-Metadata is not a list of ``key base64value`` pairs."""

    code = "invalid_metadata"


class UnsupportedChecksum(InvalidRequest):
    """The checksum algorithm is not one this server supports."""

    code = "unsupported_checksum_algorithm"


@dataclass(frozen=True)
class Metadata:
    """Upload-Metadata: the header as sent (echoed on HEAD) and its decoded values."""

    raw: str | None = None
    values: dict[str, bytes | None] = field(default_factory=dict)

    def text(self, *keys: str) -> str | None:
        """The first of ``keys`` present, as text; undecodable bytes are replaced."""
        for key in keys:
            value = self.values.get(key)
            if value is not None:
                return value.decode("utf-8", "replace").strip() or None
        return None

    @property
    def filename(self) -> str | None:
        return self.text("filename", "name")  # tus-js-client examples and Uppy use both

    @property
    def filetype(self) -> str | None:
        return self.text("filetype", "type", "contentType")

    @property
    def title(self) -> str | None:
        return self.text("title")

    @property
    def description(self) -> str | None:
        return self.text("description")


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def new(self) -> Any:
        return CHECKSUMS[self.algorithm]()


def parse_number(value: str | None, header: str) -> int | None:
    """A non-negative integer header, or None when absent."""
    if value is None:
        return None
    value = value.strip()
    if not _NUMBER.match(value):
        raise InvalidRequest(f"{header} must be a non-negative integer", header=header)
    return int(value)


def parse_metadata(header: str | None) -> Metadata:
    if header is None or not header.strip():
        return Metadata()
    values: dict[str, bytes | None] = {}
    total = 0
    for pair in header.split(","):
        items = pair.strip().split(" ")
        if not items[0] or len(items) > 2 or not _KEY.match(items[0]):
            raise InvalidMetadata(
                f"Upload-Metadata: {pair.strip()[:60]!r} is not 'key base64value'",
                header="Upload-Metadata",
            )
        key = items[0]
        if key in values:
            raise InvalidMetadata(f"Upload-Metadata: key {key!r} is given twice", key=key)
        value: bytes | None = None
        if len(items) == 2:
            try:
                value = base64.b64decode(items[1], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidMetadata(
                    f"Upload-Metadata: the value of {key!r} is not valid base64", key=key
                ) from None
            total += len(value)
        values[key] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadata(
            f"Upload-Metadata holds {total} bytes; at most {MAX_METADATA_BYTES} are accepted",
            limit=MAX_METADATA_BYTES,
        )
    return Metadata(raw=header.strip(), values=values)


def parse_checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUMS:
        raise UnsupportedChecksum(
            f"checksum algorithm {algorithm!r} is not supported; use one of "
            + ", ".join(CHECKSUMS),
            supported=list(CHECKSUMS),
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("Upload-Checksum: the checksum is not valid base64") from None
    if len(digest) != CHECKSUMS[algorithm]().digest_size:
        raise InvalidRequest(
            f"Upload-Checksum: a {algorithm} checksum has "
            f"{CHECKSUMS[algorithm]().digest_size} bytes, not {len(digest)}"
        )
    return Checksum(algorithm, digest)


@dataclass(frozen=True)
class Concat:
    partial: bool
    parts: tuple[str, ...] = ()  # the partial uploads' URLs, in order (final only)


def parse_concat(header: str | None) -> Concat | None:
    if header is None or not header.strip():
        return None
    value = header.strip()
    if value == "partial":
        return Concat(partial=True)
    if value.startswith("final;"):
        parts = tuple(p for p in value.removeprefix("final;").split(" ") if p)
        if not parts:
            raise InvalidRequest("Upload-Concat: final lists no partial uploads")
        return Concat(partial=False, parts=parts)
    raise InvalidRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")


def upload_id_from_url(url: str) -> str:
    """The upload id at the end of a partial upload's URL (absolute or a path)."""
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    upload_id = path.rsplit("/", 1)[-1]
    if not _UPLOAD_ID.match(upload_id):
        raise InvalidRequest(f"Upload-Concat: {url[:200]!r} is not an upload URL of this server")
    return upload_id


def http_date(value: datetime) -> str:
    """RFC 9110 IMF-fixdate, as Upload-Expires wants."""
    return format_datetime(value, usegmt=True)


def kind_of_mime(mime: str | None) -> str | None:
    """The asset kind a declared MIME type stands for, if it names one."""
    if not mime:
        return None
    top = mime.split("/", 1)[0].strip().lower()
    if top in ("audio", "video", "image"):
        return top
    if "fits" in mime.lower():
        return "fits"
    return None
