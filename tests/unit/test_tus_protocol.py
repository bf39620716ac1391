"""tus header parsing: every malformed value is refused with a precise error, nothing guessed."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingestd.errors import InvalidRequest
from ingestd.uploads.tus_protocol import (
    CHECKSUMS,
    EXTENSIONS,
    MAX_METADATA_BYTES,
    TUS_VERSION,
    Checksum,
    InvalidMetadata,
    Metadata,
    UnsupportedChecksum,
    http_date,
    kind_of_mime,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_number,
    upload_id_from_url,
)


def b64(value: bytes | str) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


# -- constants ---------------------------------------------------------------------------


def test_advertised_version_extensions_and_algorithms() -> None:
    assert TUS_VERSION == "1.0.0"
    assert set(EXTENSIONS) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
        "concatenation-unfinished",
    }
    assert len(EXTENSIONS) == 8
    assert set(CHECKSUMS) == {"sha1", "sha256", "md5"}


# -- Upload-Metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   ", "\t"])
def test_no_metadata(header: str | None) -> None:
    meta = parse_metadata(header)
    assert meta == Metadata()
    assert meta.raw is None and meta.values == {}
    assert meta.filename is None and meta.title is None and meta.filetype is None


def test_metadata_pairs_are_decoded_and_the_raw_header_kept() -> None:
    header = f" filename {b64('song.wav')},is_confidential, title {b64('Ünïcode title')} "
    meta = parse_metadata(header)
    assert meta.values == {
        "filename": b"song.wav",
        "is_confidential": None,  # a key without a value is allowed
        "title": "Ünïcode title".encode(),
    }
    assert meta.raw == header.strip()
    assert meta.filename == "song.wav"
    assert meta.title == "Ünïcode title"
    assert meta.filetype is None and meta.description is None


def test_metadata_aliases_used_by_common_clients() -> None:
    meta = parse_metadata(f"name {b64('a.flac')},type {b64('audio/flac')}")
    assert meta.filename == "a.flac" and meta.filetype == "audio/flac"
    meta = parse_metadata(f"contentType {b64('video/mp4')},description {b64('  d  ')}")
    assert meta.filetype == "video/mp4" and meta.description == "d"
    # the first listed alias wins when both are present
    meta = parse_metadata(f"name {b64('second')},filename {b64('first')}")
    assert meta.filename == "first"


def test_metadata_text_edge_cases() -> None:
    meta = parse_metadata(f"title {b64('   ')},filename ,filetype {b64(bytes([0xFF, 0x41]))}")
    assert meta.values["filename"] is None  # "key " is a key without a value
    assert meta.title is None  # blank after stripping
    assert meta.filename is None
    assert meta.filetype == "\ufffdA"  # undecodable bytes are replaced, not an error


def test_metadata_at_the_size_limit_is_accepted() -> None:
    half = MAX_METADATA_BYTES // 2
    meta = parse_metadata(f"a {b64(b'x' * half)},b {b64(b'y' * (MAX_METADATA_BYTES - half))}")
    assert len(meta.values["a"] or b"") + len(meta.values["b"] or b"") == MAX_METADATA_BYTES


@pytest.mark.parametrize(
    "header",
    [
        "filename !!notbase64!!",
        "filename d29ybGQ",  # missing padding
        f"filename {b64('a')},filename {b64('b')}",  # duplicate key
        f"filename {b64('a')}, ,title {b64('t')}",  # a space-only pair
        f"filename {b64('a')},,title {b64('t')}",  # an empty pair
        f"filename {b64('a')},",  # a trailing comma leaves an empty pair
        f"filename  {b64('a')}",  # two spaces: not 'key value'
        f"filename {b64('a')} extra",  # three items
        f"file name {b64('a')}",  # a space in the key
        f"ключ {b64('a')}",  # not a token
        f"key\x01 {b64('a')}",  # a control character
        f"{b64('a')}",  # only a value: '=' is not a token character
        f"big {b64(b'z' * (MAX_METADATA_BYTES + 1))}",
    ],
)
def test_bad_metadata_is_refused(header: str) -> None:
    with pytest.raises(InvalidMetadata) as exc:
        parse_metadata(header)
    assert exc.value.code == "invalid_metadata"
    assert isinstance(exc.value, InvalidRequest)  # so it maps to 400
    assert exc.value.message


# -- Upload-Checksum ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_checksums_parse(algorithm: str) -> None:
    digest = hashlib.new(algorithm, b"data").digest()
    parsed = parse_checksum(f"{algorithm} {b64(digest)}")
    assert parsed == Checksum(algorithm, digest)
    hasher = parsed.new()
    hasher.update(b"data")
    assert hasher.digest() == digest


def test_checksum_absent_and_case_insensitive_algorithm() -> None:
    assert parse_checksum(None) is None
    digest = hashlib.sha1(b"x").digest()
    assert parse_checksum(f"  SHA1 {b64(digest)}  ") == Checksum("sha1", digest)


@pytest.mark.parametrize("header", ["crc32 AAAAAA==", "sha512 " + b64(b"x" * 64), "", "   "])
def test_unsupported_checksum_algorithm(header: str) -> None:
    with pytest.raises(UnsupportedChecksum) as exc:
        parse_checksum(header)
    assert exc.value.code == "unsupported_checksum_algorithm"
    assert exc.value.details["supported"] == ["sha1", "sha256", "md5"]


@pytest.mark.parametrize(
    "header",
    [
        "sha1 !!!!",  # not base64
        "sha1",  # no digest
        "sha1 " + b64(hashlib.sha256(b"x").digest()),  # a sha256-sized digest
        "md5 " + b64(b"short"),
        "sha256 " + b64(hashlib.sha256(b"x").digest())[:-1],  # broken padding
    ],
)
def test_malformed_checksum(header: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_checksum(header)
    assert not isinstance(exc.value, UnsupportedChecksum)
    assert exc.value.code == "invalid_request"


# -- Upload-Concat -----------------------------------------------------------------------


def test_concat_values() -> None:
    assert parse_concat(None) is None
    assert parse_concat("") is None
    partial = parse_concat(" partial ")
    assert partial is not None and partial.partial and partial.parts == ()
    final = parse_concat("final;http://h/files/up_a /files/up_b  up_c")
    assert final is not None and not final.partial
    assert final.parts == ("http://h/files/up_a", "/files/up_b", "up_c")


@pytest.mark.parametrize(
    "header", ["final;", "final; ", "final", "partial;x", "parts", "final:/files/a", "Partial"]
)
def test_bad_concat(header: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_concat(header)
    assert exc.value.code == "invalid_request"


# -- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("0", 0), (" 42 ", 42), ("007", 7), ("9" * 19, int("9" * 19))],
)
def test_numbers(value: str | None, expected: int | None) -> None:
    assert parse_number(value, "Upload-Offset") == expected


@pytest.mark.parametrize(
    "value", ["", " ", "-1", "+1", "1.5", "1e3", "abc", "0x10", "1 2", "9" * 20, "١٢"]
)
def test_bad_numbers(value: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_number(value, "Upload-Length")
    assert exc.value.code == "invalid_request"
    assert exc.value.details == {"header": "Upload-Length"}
    assert "Upload-Length" in exc.value.message


# -- upload ids in URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/files/up_0123abc",
        "https://media.example.org/files/up_0123abc/",
        "/files/up_0123abc",
        "/files/up_0123abc?x=1",
        "/files/up_0123abc#frag",
        "up_0123abc",
    ],
)
def test_upload_id_from_url(url: str) -> None:
    assert upload_id_from_url(url) == "up_0123abc"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/",
        "http://h/files/..",
        "http://h/files/up%2Fx",
        "http://h/files/up-x",
        "http://h/files/up.x",
        "/files/" + "a" * 41,
    ],
)
def test_bad_upload_urls(url: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        upload_id_from_url(url)
    assert exc.value.code == "invalid_request"


# -- dates and kinds ---------------------------------------------------------------------


def test_http_date_is_imf_fixdate() -> None:
    assert http_date(datetime(2024, 1, 2, 3, 4, 5, 999, tzinfo=UTC)) == (
        "Tue, 02 Jan 2024 03:04:05 GMT"
    )
    assert http_date(datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)) == (
        "Tue, 31 Dec 2030 23:59:59 GMT"
    )


def test_http_date_refuses_a_local_time() -> None:
    # Upload-Expires is always GMT; a non-UTC time must not be printed with a GMT label
    with pytest.raises(ValueError):
        http_date(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))))


@pytest.mark.parametrize(
    ("mime", "kind"),
    [
        (None, None),
        ("", None),
        ("audio/wav", "audio"),
        (" Audio/X-WAV; codecs=1", "audio"),
        ("VIDEO/mp4", "video"),
        ("image/png", "image"),
        ("image/fits", "image"),
        ("application/fits", "fits"),
        ("application/x-FITS", "fits"),
        ("application/octet-stream", None),
        ("text/plain", None),
        ("audiox/foo", None),
        ("audio", "audio"),
    ],
)
def test_kind_of_mime(mime: str | None, kind: str | None) -> None:
    assert kind_of_mime(mime) == kind
