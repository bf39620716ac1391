"""tus 1.0.0 at /files/ over real HTTP: the core protocol, its eight extensions, bad input,
direct-upload tokens, CORS and proxies. Every answer is checked for its exact status, its tus
headers and the error code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import func, select

from ingestd.bootstrap import Services, build
from ingestd.db.models import UploadSession
from ingestd.db.types import utcnow
from ingestd.errors import Locked
from ingestd.settings import Settings
from ingestd.testing.media import make_tone
from ingestd.testing.server import running_server
from ingestd.uploads.blocks import MIN_BLOCK_SIZE, content_digest
from ingestd.uploads.locks import InProcessLocker

from .test_api_uploads import error
from .test_music_pipeline import wait

BS = MIN_BLOCK_SIZE
MAX = 64 << 20  # max_upload_size of the integration fixtures
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
}
HTTP_DATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$"
)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# -- helpers -----------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(value: bytes | str) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def metadata(**values: str | None) -> str:
    return ",".join(k if v is None else f"{k} {b64(v)}" for k, v in values.items())


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {b64(hashlib.new(algorithm, data).digest())}"


def post(
    client: httpx.Client,
    *,
    length: int | None = None,
    defer: bool = False,
    meta: str | None = None,
    concat: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    path: str = "/files/",
) -> httpx.Response:
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    if defer:
        h["Upload-Defer-Length"] = "1"
    if meta is not None:
        h["Upload-Metadata"] = meta
    if concat is not None:
        h["Upload-Concat"] = concat
    if body is not None:
        h["Content-Type"] = OCTET
    h.update(headers or {})
    return client.post(path, headers=h, content=body)


def create(client: httpx.Client, **kw: Any) -> str:
    """A new upload's URL."""
    resp = post(client, **kw)
    assert resp.status_code == 201, resp.text
    location: str = resp.headers["Location"]
    return location


def head(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.head(url, headers={**TUS, **(headers or {})})


def patch(
    client: httpx.Client,
    url: str,
    offset: int | str,
    data: Any,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = {**TUS, "Content-Type": OCTET, "Upload-Offset": str(offset)}
    h.update(headers or {})
    return client.patch(url, content=data, headers=h)


def offset_of(client: httpx.Client, url: str) -> int:
    resp = head(client, url)
    assert resp.status_code == 200, resp.status_code
    return int(resp.headers["Upload-Offset"])


def tus_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.headers.get("Tus-Resumable") == "1.0.0", resp.headers
    return error(resp, status, code)


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def staged(services: Services, url: str) -> Path:
    return services.store.staging / f"{upload_id(url)}.part"


def staged_bytes(services: Services, url: str, n: int) -> bytes:
    with open(staged(services, url), "rb") as f:
        return f.read(n)


def sessions(services: Services) -> int:
    with services.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(UploadSession)) or 0)


def assert_expires(value: str) -> None:
    assert HTTP_DATE.match(value), value
    assert parsedate_to_datetime(value) > utcnow()


def client_for(server: str, credential: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    return httpx.Client(base_url=server, headers=headers, timeout=30)


@contextmanager
def custom_server(tmp_path: Path, db_url: str, **settings: Any) -> Iterator[tuple[Services, str]]:
    svc = build(
        Settings(
            data_dir=tmp_path / "custom",
            database_url=db_url,
            block_size=BS,
            max_upload_size=MAX,
            poll_s=0.2,
            heartbeat_s=1.0,
            retry_base_s=0.1,
            **settings,
        )
    )
    try:
        with running_server(svc) as url:
            yield svc, url
    finally:
        svc.close()


# -- OPTIONS, Tus-Resumable --------------------------------------------------------------


def test_options_advertises_the_server(server: str) -> None:
    for path in ("/files/", "/files", "/files/up_anything"):
        resp = httpx.options(f"{server}{path}")  # no key, no Tus-Resumable: both optional
        assert resp.status_code == 204, (path, resp.text)
        assert resp.headers["Tus-Resumable"] == "1.0.0"
        assert resp.headers["Tus-Version"] == "1.0.0"
        assert set(resp.headers["Tus-Extension"].split(",")) == EXTENSIONS
        assert resp.headers["Tus-Max-Size"] == str(MAX)
        assert set(resp.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}
        assert resp.content == b""


def test_every_answer_under_files_carries_tus_resumable(
    api: httpx.Client, server: str, services: Services
) -> None:
    url = create(api, length=10)
    answers = [
        head(api, url),  # 200
        patch(api, url, 0, b"01234"),  # 204
        patch(api, url, 0, b"01234"),  # 409
        patch(api, url, "x", b"5"),  # 400
        head(api, f"{server}/files/up_unknown"),  # 404
        httpx.post(f"{server}/files/", headers={**TUS, "Upload-Length": "5"}),  # 401
        api.get(url, headers=TUS),  # 405
        api.delete(url, headers=TUS),  # 204
        head(api, url),  # 410
        api.post("/files/", headers={"Upload-Length": "5"}),  # 412
    ]
    assert [r.status_code for r in answers] == [200, 204, 409, 400, 404, 401, 405, 204, 410, 412]
    for resp in answers:
        assert resp.headers.get("Tus-Resumable") == "1.0.0", (resp.status_code, resp.headers)
    tus_error(answers[5], 401, "unauthorized")
    assert answers[5].headers["WWW-Authenticate"] == "Bearer"
    tus_error(answers[6], 405, "method_not_allowed")
    # the rest of the API is not tus and says nothing about it
    assert "Tus-Resumable" not in api.get("/v1/assets").headers
    assert sessions(services) == 1


def test_tus_resumable_is_required(api: httpx.Client, services: Services) -> None:
    url = create(api, length=10)
    answers = []
    for version in (None, "0.2.2", "1.0", "1.0.0, 0.2.2", ""):
        bad = {} if version is None else {"Tus-Resumable": version}
        plain = {"Upload-Length": "10", **bad}
        answers += [
            api.post("/files/", headers=plain),
            api.post("/files/", headers={**plain, "Content-Type": OCTET}, content=b"0123456789"),
            api.head(url, headers=bad),
            api.patch(
                url, headers={"Content-Type": OCTET, "Upload-Offset": "0", **bad}, content=b"0123"
            ),
            api.delete(url, headers=bad),
        ]
    for resp in answers:
        assert resp.status_code == 412, resp.text
        assert resp.headers["Tus-Version"] == "1.0.0"
        assert resp.headers["Tus-Resumable"] == "1.0.0"
    for resp in answers:
        if resp.request.method != "HEAD":
            tus_error(resp, 412, "unsupported_version")
    assert sessions(services) == 1  # nothing created
    assert offset_of(api, url) == 0  # nothing written, nothing terminated


# -- creation ----------------------------------------------------------------------------


def test_creation(api: httpx.Client, server: str) -> None:
    meta = metadata(filename="song.wav", title="Song", is_draft=None)
    resp = post(api, length=1234, meta=meta)
    assert resp.status_code == 201, resp.text
    url = resp.headers["Location"]
    assert re.fullmatch(rf"{re.escape(server)}/files/[A-Za-z0-9_]{{1,40}}", url), url
    assert_expires(resp.headers["Upload-Expires"])
    asset_id = resp.headers["Ingestd-Asset-Id"]
    asset = api.get(f"/v1/assets/{asset_id}").json()
    assert asset["title"] == "Song" and asset["status"] == "created"
    assert [(s["filename"], s["size"]) for s in asset["sources"]] == [("song.wav", 1234)]

    h = head(api, url)
    assert h.status_code == 200
    assert h.headers["Cache-Control"] == "no-store"
    assert h.headers["Upload-Metadata"] == meta
    assert h.headers["Upload-Offset"] == "0" and h.headers["Upload-Length"] == "1234"
    assert h.headers["Ingestd-Asset-Id"] == asset_id
    assert "Upload-Defer-Length" not in h.headers and "Upload-Concat" not in h.headers
    assert_expires(h.headers["Upload-Expires"])

    # POST /files (no slash) creates too; without a title the filename names the asset
    bare = post(api, length=5, meta=metadata(name="other.flac"), path="/files")
    assert bare.status_code == 201, bare.text
    assert bare.headers["Location"].startswith(f"{server}/files/")
    other = api.get(f"/v1/assets/{bare.headers['Ingestd-Asset-Id']}").json()
    assert other["title"] == "other.flac" and other["sources"][0]["filename"] == "other.flac"
    assert "Upload-Metadata" in head(api, bare.headers["Location"]).headers
    # no metadata: no Upload-Metadata on HEAD
    assert "Upload-Metadata" not in head(api, create(api, length=5)).headers


def test_forwarded_headers_are_ignored_by_default(api: httpx.Client, server: str) -> None:
    # trust_forwarded is off: a client cannot choose the URLs the server hands out
    for headers in (
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
        {"X-Forwarded-Proto": "https"},
        {"Forwarded": "proto=https;host=evil.example"},
    ):
        resp = post(api, length=10, headers=headers)
        assert resp.status_code == 201, resp.text
        assert resp.headers["Location"].startswith(f"{server}/files/"), (headers, resp.headers)


def test_bad_creation(api: httpx.Client, server: str, services: Services) -> None:
    for meta in (
        "filename !!notbase64!!",
        f"filename {b64('a')},filename {b64('b')}",
        f"filename {b64('a')}, ,title {b64('t')}",
        f"filename  {b64('a')}",
        f"filename {b64('a')} trailing",
        f"ke y {b64('a')}",
    ):
        tus_error(post(api, length=10, meta=meta), 400, "invalid_metadata")
    for kw in (
        {},  # neither Upload-Length nor Upload-Defer-Length
        {"length": 10, "defer": True},  # both
        {"length": 0},
        {"headers": {"Upload-Length": "-5"}},
        {"headers": {"Upload-Length": "ten"}},
        {"headers": {"Upload-Defer-Length": "0"}},
        {"headers": {"Upload-Defer-Length": "2"}},
        {"length": 10, "concat": "partly"},
        {"length": 10, "concat": "final;"},
    ):
        tus_error(post(api, **kw), 400, "invalid_request")
    body = tus_error(post(api, length=MAX + 1), 413, "too_large")
    assert body["details"] == {"max_upload_size": MAX}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer ut_nope"}):
        resp = httpx.post(f"{server}/files/", headers={**TUS, "Upload-Length": "10", **headers})
        tus_error(resp, 401, "unauthorized")
    assert sessions(services) == 0
    assert api.get("/v1/assets").json()["items"] == []
    # exactly the maximum is allowed
    assert post(api, length=MAX).status_code == 201


def test_method_override(api: httpx.Client) -> None:
    url = create(api, length=10)
    over = {**TUS, "Content-Type": OCTET, "Upload-Offset": "0"}
    resp = api.post(url, headers={**over, "X-HTTP-Method-Override": "PATCH"}, content=b"01234")
    assert resp.status_code == 204, resp.text
    assert resp.headers["Upload-Offset"] == "5"
    resp = api.post(url, headers={**TUS, "X-HTTP-Method-Override": "head"})
    assert resp.status_code == 200
    assert resp.headers["Upload-Offset"] == "5" and resp.headers["Upload-Length"] == "10"
    assert resp.headers["Cache-Control"] == "no-store"
    # the override does not skip the version check
    resp = api.post(url, headers={"X-HTTP-Method-Override": "PATCH"}, content=b"56789")
    tus_error(resp, 412, "unsupported_version")
    resp = api.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert resp.status_code == 204, resp.text
    assert head(api, url).status_code == 410
    # an override is only honoured on POST
    resp = api.get(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert resp.status_code == 405


# -- creation-with-upload ----------------------------------------------------------------


def test_creation_with_upload(api: httpx.Client, services: Services) -> None:
    data = os.urandom(3000)
    # the whole file in the creating request: complete at once
    resp = post(api, length=len(data), body=data, meta=metadata(filename="one.bin"))
    assert resp.status_code == 201, resp.text
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert "Upload-Expires" not in resp.headers  # a complete upload no longer expires
    asset = api.get(f"/v1/assets/{resp.headers['Ingestd-Asset-Id']}").json()
    assert asset["sha256"] == sha(data)

    # the first part, then PATCH the rest
    resp = post(
        api,
        length=len(data),
        body=data[:1000],
        headers={"Upload-Checksum": checksum("sha1", data[:1000])},
    )
    assert resp.status_code == 201, resp.text
    url = resp.headers["Location"]
    assert resp.headers["Upload-Offset"] == "1000"
    assert offset_of(api, url) == 1000
    assert patch(api, url, 1000, data[1000:]).headers["Upload-Offset"] == str(len(data))

    # a chunked body counts as a body
    resp = post(api, length=len(data), body=iter([data[:10], data[10:20]]))
    assert resp.status_code == 201, resp.text
    assert resp.headers["Upload-Offset"] == "20"

    # an empty body is a plain creation
    resp = post(api, length=len(data), body=b"")
    assert resp.status_code == 201 and resp.headers["Upload-Offset"] == "0"

    # a wrong checksum: nothing kept, but the upload exists and says where to resume
    resp = post(
        api,
        length=len(data),
        body=data[:1000],
        headers={"Upload-Checksum": checksum("md5", b"other")},
    )
    tus_error(resp, 460, "checksum_mismatch")
    url = resp.headers["Location"]
    assert resp.headers["Upload-Offset"] == "0"
    assert offset_of(api, url) == 0
    resp = patch(api, url, 0, data, headers={"Upload-Checksum": checksum("md5", data)})
    assert resp.status_code == 204 and resp.headers["Upload-Offset"] == str(len(data))
    asset_id = head(api, url).headers["Ingestd-Asset-Id"]
    assert api.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha(data)


def test_a_refused_creation_with_upload_leaves_nothing_unreachable(
    api: httpx.Client, services: Services
) -> None:
    cases = {
        "content-type": (
            {"Content-Type": "application/octet-stream"},
            415,
            "unsupported_media_type",
        ),
        "checksum-algorithm": (
            {"Upload-Checksum": "crc32 AAAAAA=="},
            400,
            "unsupported_checksum_algorithm",
        ),
        "malformed-checksum": ({"Upload-Checksum": "sha1 !!"}, 400, "invalid_request"),
        "body-too-long": ({"Upload-Length": "10"}, 413, "too_large"),  # 20 bytes for 10
    }
    problems = []
    for name, (headers, status, code) in cases.items():
        before = sessions(services)
        resp = post(api, length=20, body=os.urandom(20), headers=headers)
        tus_error(resp, status, code)
        if "Location" in resp.headers:  # the client was told where the upload is
            assert offset_of(api, resp.headers["Location"]) == 0
        elif sessions(services) != before:  # else nothing may have been created
            problems.append(f"{name}: {status} without a Location, yet an upload was created")
    assert not problems, problems
    assert [a["id"] for a in api.get("/v1/assets").json()["items"]] == [], "orphaned assets"


# -- HEAD --------------------------------------------------------------------------------


def test_head_and_foreign_or_unknown_uploads(
    api: httpx.Client, other_api: httpx.Client, server: str
) -> None:
    url = create(api, length=100)
    assert patch(api, url, 0, b"x" * 40).status_code == 204
    h = head(api, url)
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Cache-Control"] == "no-store"
    assert h.headers["Upload-Offset"] == "40" and h.headers["Upload-Length"] == "100"

    deferred = create(api, defer=True)
    h = head(api, deferred)
    assert h.status_code == 200
    assert h.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in h.headers
    assert h.headers["Upload-Offset"] == "0"

    for client, target in ((other_api, url), (api, f"{server}/files/up_unknown")):
        h = head(client, target)
        assert h.status_code == 404 and h.headers["Tus-Resumable"] == "1.0.0"
        resp = client.post(target, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
        tus_error(resp, 404, "not_found")  # the same answer, with a body to read
        tus_error(patch(client, target, 40, b"y"), 404, "not_found")
        tus_error(client.delete(target, headers=TUS), 404, "not_found")
    assert offset_of(api, url) == 40  # untouched by the other owner


# -- PATCH -------------------------------------------------------------------------------


def test_patch(api: httpx.Client, services: Services) -> None:
    data = os.urandom(2 * BS + 100)
    url = create(api, length=len(data))
    resp = patch(api, url, 0, data[:1000])
    assert resp.status_code == 204 and resp.content == b""
    assert resp.headers["Upload-Offset"] == "1000"
    assert_expires(resp.headers["Upload-Expires"])

    for ctype in ("application/octet-stream", "text/plain", ""):
        resp = patch(api, url, 1000, b"z", headers={"Content-Type": ctype})
        tus_error(resp, 415, "unsupported_media_type")
    for bad in ("abc", "-1", "1.0", ""):
        tus_error(patch(api, url, bad, b"z"), 400, "invalid_request")
    resp = api.patch(url, headers={**TUS, "Content-Type": OCTET}, content=b"z")  # no offset
    tus_error(resp, 400, "invalid_request")
    for wrong in (0, 999, 1001, len(data)):
        body = tus_error(patch(api, url, wrong, data[wrong : wrong + 10]), 409, "offset_mismatch")
        assert body["details"]["offset"] == 1000
    resp = patch(api, url, 1000, b"z", headers={"Upload-Checksum": "crc32 AAAAAA=="})
    tus_error(resp, 400, "unsupported_checksum_algorithm")
    resp = patch(api, url, 1000, b"z", headers={"Upload-Checksum": "sha1 !!"})
    tus_error(resp, 400, "invalid_request")

    remaining = len(data) - 1000
    # announced too long (Content-Length) and streamed too long (chunked)
    tus_error(patch(api, url, 1000, os.urandom(remaining + 1)), 413, "too_large")
    too_long = os.urandom(remaining + 1)
    chunks = iter([too_long[:BS], too_long[BS:]])
    tus_error(patch(api, url, 1000, chunks), 413, "too_large")
    assert offset_of(api, url) == 1000

    resp = patch(api, url, 1000, data[1000:])
    assert resp.status_code == 204
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert "Upload-Expires" not in resp.headers
    h = head(api, url)
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(data))
    tus_error(patch(api, url, len(data), b"more"), 409, "invalid_state")
    tus_error(patch(api, url, 1000, b""), 409, "invalid_state")
    # an empty PATCH at the end (a client retrying after a lost answer) changes nothing
    resp = patch(api, url, len(data), b"")
    assert resp.status_code == 204, resp.text
    assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"] == str(len(data))
    asset = api.get(f"/v1/assets/{h.headers['Ingestd-Asset-Id']}").json()
    assert asset["sha256"] == sha(data)
    assert not staged(services, url).exists()  # moved into place as the master


def test_checksums(api: httpx.Client) -> None:
    data = os.urandom(6000)
    url = create(api, length=len(data))
    pos = 0
    for algorithm in ("sha1", "sha256", "md5"):
        piece = data[pos : pos + 2000]
        resp = patch(api, url, pos, piece, headers={"Upload-Checksum": checksum(algorithm, b"?")})
        body = tus_error(resp, 460, "checksum_mismatch")
        assert body["details"]["algorithm"] == algorithm
        assert offset_of(api, url) == pos  # the chunk was discarded
        good = checksum(algorithm, piece)
        resp = patch(api, url, pos, piece, headers={"Upload-Checksum": good})
        assert resp.status_code == 204, resp.text
        pos += len(piece)
        assert resp.headers["Upload-Offset"] == str(pos)
    asset_id = head(api, url).headers["Ingestd-Asset-Id"]
    assert api.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha(data)


# -- creation-defer-length ---------------------------------------------------------------


def test_defer_length(api: httpx.Client) -> None:
    data = os.urandom(3000)
    resp = post(api, defer=True, meta=metadata(filename="later.bin"))
    assert resp.status_code == 201, resp.text
    assert resp.headers["Upload-Defer-Length"] == "1"
    url = resp.headers["Location"]
    resp = patch(api, url, 0, data[:1000])
    assert resp.status_code == 204 and resp.headers["Upload-Offset"] == "1000"
    assert "Upload-Length" not in resp.headers

    for shorter in ("999", "0"):
        tus_error(
            patch(api, url, 1000, b"", headers={"Upload-Length": shorter}), 400, "invalid_request"
        )
    resp = patch(api, url, 1000, b"", headers={"Upload-Length": str(MAX + 1)})
    tus_error(resp, 413, "too_large")
    tus_error(patch(api, url, 1000, b"", headers={"Upload-Length": "x"}), 400, "invalid_request")
    h = head(api, url)
    assert h.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in h.headers

    resp = patch(api, url, 1000, data[1000:2000], headers={"Upload-Length": str(len(data))})
    assert resp.status_code == 204, resp.text
    assert resp.headers["Upload-Offset"] == "2000"
    assert resp.headers["Upload-Length"] == str(len(data))
    h = head(api, url)
    assert h.headers["Upload-Length"] == "3000" and "Upload-Defer-Length" not in h.headers

    # a declared length cannot change
    resp = patch(api, url, 2000, data[2000:], headers={"Upload-Length": "4000"})
    body = tus_error(resp, 400, "invalid_request")
    assert body["details"] == {"size": 3000}
    assert offset_of(api, url) == 2000
    # repeating it is fine
    resp = patch(api, url, 2000, data[2000:], headers={"Upload-Length": "3000"})
    assert resp.status_code == 204 and resp.headers["Upload-Offset"] == "3000"
    asset = api.get(f"/v1/assets/{h.headers['Ingestd-Asset-Id']}").json()
    assert asset["sha256"] == sha(data) and asset["sources"][0]["size"] == 3000


def test_an_asset_whose_length_is_deferred_can_be_read(api: httpx.Client) -> None:
    resp = post(api, defer=True, meta=metadata(filename="later.bin"))
    assert resp.status_code == 201, resp.text
    asset_id = resp.headers["Ingestd-Asset-Id"]
    got = api.get(f"/v1/assets/{asset_id}")
    assert got.status_code == 200, got.text
    [source] = got.json()["sources"]
    assert source["filename"] == "later.bin" and source["size"] is None
    listed = api.get("/v1/assets")
    assert listed.status_code == 200, listed.text
    assert [a["id"] for a in listed.json()["items"]] == [asset_id]


# -- expiration --------------------------------------------------------------------------


def test_expiration(api: httpx.Client, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    url = create(api, length=100)
    created = parsedate_to_datetime(head(api, url).headers["Upload-Expires"])
    # an hour later, a PATCH slides the expiry forward
    monkeypatch.setattr(services.tus, "clock", lambda: utcnow() + timedelta(hours=1))
    resp = patch(api, url, 0, b"x" * 10)
    assert resp.status_code == 204
    slid = parsedate_to_datetime(resp.headers["Upload-Expires"])
    assert slid >= created + timedelta(hours=1) - timedelta(seconds=1)
    assert parsedate_to_datetime(head(api, url).headers["Upload-Expires"]) == slid
    # past it: gone, for reading and for writing
    monkeypatch.setattr(services.tus, "clock", lambda: slid + timedelta(seconds=1))
    assert head(api, url).status_code == 410
    assert head(api, url).headers["Tus-Resumable"] == "1.0.0"
    resp = api.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    tus_error(resp, 410, "gone")
    tus_error(patch(api, url, 10, b"y" * 10), 410, "gone")


# -- termination -------------------------------------------------------------------------


def test_termination(api: httpx.Client, services: Services) -> None:
    url = create(api, length=5000)
    assert patch(api, url, 0, os.urandom(1000)).status_code == 204
    assert staged(services, url).exists()
    asset_id = head(api, url).headers["Ingestd-Asset-Id"]
    resp = api.delete(url, headers=TUS)
    assert resp.status_code == 204 and resp.content == b""
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert not staged(services, url).exists()
    assert head(api, url).status_code in (404, 410)
    assert patch(api, url, 1000, b"x").status_code in (404, 410)
    assert api.get(f"/v1/assets/{asset_id}").json()["status"] == "abandoned"

    # a partial upload is terminated the same way
    part = create(api, length=10, concat="partial")
    assert patch(api, part, 0, b"0123").status_code == 204
    assert api.delete(part, headers=TUS).status_code == 204
    assert not staged(services, part).exists()
    assert head(api, part).status_code in (404, 410)

    # a completed upload belongs to its asset now
    done = create(api, length=10, body=b"0123456789")
    tus_error(api.delete(done, headers=TUS), 409, "invalid_state")
    assert offset_of(api, done) == 10

    # a terminated URL stays dead: terminating it again is not a conflict with some state
    for dead in (url, part):
        again = api.delete(dead, headers=TUS)
        assert again.status_code in (404, 410), again.text
        assert again.headers["Tus-Resumable"] == "1.0.0"


# -- concatenation -----------------------------------------------------------------------


def test_concatenation(api: httpx.Client, services: Services) -> None:
    pieces = [os.urandom(1000), os.urandom(BS + 7), os.urandom(500)]
    parts = []
    for i, piece in enumerate(pieces):
        if i == 0:  # creation-with-upload works for partials too
            resp = post(api, length=len(piece), concat="partial", body=piece)
            assert resp.status_code == 201, resp.text
            assert resp.headers["Upload-Offset"] == str(len(piece))
            parts.append(resp.headers["Location"])
            continue
        resp = post(api, length=len(piece), concat="partial")
        assert resp.status_code == 201, resp.text
        assert "Ingestd-Asset-Id" not in resp.headers
        parts.append(resp.headers["Location"])
        assert patch(api, parts[-1], 0, piece).status_code == 204
    h = head(api, parts[1])
    assert h.status_code == 200
    assert h.headers["Upload-Concat"] == "partial"
    assert "Ingestd-Asset-Id" not in h.headers
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(pieces[1]))

    whole = b"".join(pieces)
    resp = post(
        api, concat="final;" + " ".join(parts), meta=metadata(filename="joined.bin", title="J")
    )
    assert resp.status_code == 201, resp.text
    final = resp.headers["Location"]
    assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"] == str(len(whole))
    asset_id = resp.headers["Ingestd-Asset-Id"]
    h = head(api, final)
    assert h.headers["Upload-Concat"] == "final;" + " ".join(parts)
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(whole))
    assert h.headers["Ingestd-Asset-Id"] == asset_id
    assert "Upload-Defer-Length" not in h.headers
    asset = api.get(f"/v1/assets/{asset_id}").json()
    assert asset["sha256"] == sha(whole) and asset["title"] == "J"
    assert [(s["filename"], s["size"], s["sha256"]) for s in asset["sources"]] == [
        ("joined.bin", len(whole), sha(whole))
    ]
    assert not any(staged(services, p).exists() for p in parts)
    assert not staged(services, final).exists()

    tus_error(patch(api, final, len(whole), b"x"), 403, "forbidden")
    tus_error(post(api, concat=f"final;{parts[0]}"), 409, "invalid_state")  # already taken
    # a partial that belongs to a final upload cannot be terminated under it
    tus_error(api.delete(parts[2], headers=TUS), 409, "invalid_state")
    # a final takes no length of its own
    fresh = create(api, length=5, concat="partial")
    tus_error(post(api, concat=f"final;{fresh}", length=5), 400, "invalid_request")
    tus_error(post(api, concat=f"final;{fresh}", defer=True), 400, "invalid_request")


def test_concatenation_unfinished(api: httpx.Client, services: Services) -> None:
    a, b = os.urandom(BS + 1), os.urandom(3000)
    part_a = create(api, length=len(a), concat="partial")
    part_b = create(api, defer=True, concat="partial")
    assert patch(api, part_a, 0, a[:100]).status_code == 204
    assert patch(api, part_b, 0, b[:1000]).status_code == 204
    # paths work as well as absolute URLs
    paths = [urlparse(u).path for u in (part_a, part_b)]
    resp = post(api, concat=f"final;{paths[0]} {paths[1]}")
    assert resp.status_code == 201, resp.text
    final = resp.headers["Location"]
    assert "Upload-Offset" not in resp.headers
    asset_id = resp.headers["Ingestd-Asset-Id"]
    h = head(api, final)
    assert h.status_code == 200
    assert "Upload-Offset" not in h.headers
    assert "Upload-Length" not in h.headers  # part b's length is still unknown
    assert h.headers["Upload-Concat"] == f"final;{part_a} {part_b}"

    assert patch(api, part_a, 100, a[100:]).status_code == 204
    assert "Upload-Offset" not in head(api, final).headers  # b is still open
    resp = patch(api, part_b, 1000, b[1000:2000], headers={"Upload-Length": str(len(b))})
    assert resp.status_code == 204
    h = head(api, final)
    assert "Upload-Offset" not in h.headers
    assert h.headers["Upload-Length"] == str(len(a) + len(b))  # now known
    tus_error(patch(api, final, 0, b"x"), 403, "forbidden")

    assert patch(api, part_b, 2000, b[2000:]).status_code == 204  # the last byte lands
    h = head(api, final)
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(a) + len(b))
    assert api.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha(a + b)
    assert not staged(services, part_a).exists() and not staged(services, part_b).exists()


def test_concatenation_refusals(
    api: httpx.Client, other_api: httpx.Client, server: str, services: Services
) -> None:
    mine = create(api, length=4, concat="partial", body=b"mine")
    theirs = create(other_api, length=6, concat="partial", body=b"theirs")
    regular = create(api, length=5)
    gone = create(api, length=4, concat="partial")
    assert api.delete(gone, headers=TUS).status_code == 204
    before = sessions(services)
    tus_error(post(api, concat=f"final;{mine} {theirs}"), 404, "not_found")
    tus_error(post(api, concat=f"final;{mine} {server}/files/up_unknown"), 404, "not_found")
    tus_error(post(api, concat=f"final;{mine} {regular}"), 400, "invalid_request")
    tus_error(post(api, concat=f"final;{mine} {mine}"), 400, "invalid_request")
    tus_error(post(api, concat=f"final;{mine} {server}/files/.."), 400, "invalid_request")
    tus_error(post(api, concat=f"final;{mine} {server}/files/up.x"), 400, "invalid_request")
    tus_error(post(api, concat=f"final;{mine} {gone}"), 410, "gone")
    assert sessions(services) == before  # no final was created
    # and the partial is still free to use
    resp = post(api, concat=f"final;{mine}")
    assert resp.status_code == 201, resp.text
    asset_id = resp.headers["Ingestd-Asset-Id"]
    assert api.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha(b"mine")


def test_block_api_refuses_a_tus_upload(api: httpx.Client) -> None:
    url = create(api, length=BS + 10)
    resp = api.put(
        f"/v1/uploads/{upload_id(url)}/blocks/0",
        content=b"a" * BS,
        headers={"Content-Digest": content_digest(sha(b"a" * BS))},
    )
    error(resp, 409, "invalid_state")
    status = api.get(f"/v1/uploads/{upload_id(url)}").json()
    assert status["protocol"] == "tus" and status["offset"] == 0
    assert status["bytes_received"] == 0


# -- a connection cut mid-PATCH ----------------------------------------------------------


def test_a_connection_cut_mid_patch_keeps_what_arrived(
    api: httpx.Client, server: str, services: Services
) -> None:
    data = os.urandom(8 << 20)
    url = create(api, length=len(data))
    sent = 6 << 20
    target = urlparse(url)
    request = (
        f"PATCH {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
        f"Authorization: {api.headers['Authorization']}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: {OCTET}\r\nUpload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((target.hostname, target.port)) as sock:
        sock.sendall(request + data[:sent])  # then the line drops
    locker = services.tus.locker
    assert isinstance(locker, InProcessLocker)
    deadline = time.monotonic() + 30
    while True:  # the server notices the cut, keeps what arrived and lets go of the upload
        offset = offset_of(api, url)
        if offset > 0 and not locker.held(upload_id(url)):
            break
        assert time.monotonic() < deadline, f"offset still {offset}"
        time.sleep(0.05)
    assert offset == offset_of(api, url)
    assert 0 < offset <= sent
    assert staged_bytes(services, url, offset) == data[:offset]  # every byte counted is on disk
    resp = patch(api, url, offset, data[offset:])
    assert resp.status_code == 204, resp.text
    assert resp.headers["Upload-Offset"] == str(len(data))
    asset_id = head(api, url).headers["Ingestd-Asset-Id"]
    assert api.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha(data)


# -- locking -----------------------------------------------------------------------------


class CountingLocker(InProcessLocker):
    """The in-process lock, counting the requests that have come for each upload."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(
        self,
        upload_id: str,
        *,
        wait_s: float,
        on_release_request: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        self.arrived[upload_id] += 1
        async with super().hold(upload_id, wait_s=wait_s, on_release_request=on_release_request):
            yield


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class HeldElsewhere(InProcessLocker):
    """A shared lock as several api processes would use it, with some uploads held by a
    request in another process (which this one cannot interrupt)."""

    def __init__(self) -> None:
        super().__init__()
        self.busy: set[str] = set()

    @asynccontextmanager
    async def hold(
        self,
        upload_id: str,
        *,
        wait_s: float,
        on_release_request: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        if upload_id in self.busy:
            raise Locked(f"upload {upload_id} is being written by another request")
        async with super().hold(upload_id, wait_s=wait_s, on_release_request=on_release_request):
            yield


@sqlite_only
def test_an_upload_held_by_another_process_is_locked(api: httpx.Client, services: Services) -> None:
    locker = HeldElsewhere()
    services.tus.locker = locker
    url = create(api, length=100)
    locker.busy.add(upload_id(url))
    for resp in (patch(api, url, 0, b"x" * 10), api.delete(url, headers=TUS)):
        tus_error(resp, 423, "upload_locked")
        assert resp.headers["Retry-After"] == "1"
    assert offset_of(api, url) == 0  # reading needs no lock
    locker.busy.clear()
    assert patch(api, url, 0, b"x" * 10).headers["Upload-Offset"] == "10"


@pytest.mark.anyio
async def test_a_newer_patch_takes_over_from_a_stalled_one(server: str, services: Services) -> None:
    """Two PATCHes never write at once. A client that reconnects while its old request
    stalls takes over: the old one stops and keeps what it received, the new one is told
    that offset."""
    key = services.keys.create("alice").key
    locker = CountingLocker()
    services.tus.locker = locker
    first = os.urandom((8 << 20) + BS)
    sent = 8 << 20
    release = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        for i in range(0, sent, BS):
            yield first[i : i + BS]
        await release.wait()
        yield first[sent:]

    async with httpx.AsyncClient(
        base_url=server, headers={"Authorization": f"Bearer {key}", **TUS}, timeout=30
    ) as client:
        resp = await client.post("/files/", headers={"Upload-Length": str(len(first))})
        url = resp.headers["Location"]
        up = upload_id(url)
        headers = {"Content-Type": OCTET, "Upload-Offset": "0"}
        one = asyncio.create_task(client.patch(url, headers=headers, content=stalling()))
        # the server holds the upload and has started writing the first body to disk
        await until(
            lambda: locker.held(up) and staged_bytes(services, url, 16) == first[:16],
            "the first PATCH to write",
        )
        two = await client.patch(url, headers=headers, content=b"second" * 100)
        body = tus_error(two, 409, "offset_mismatch")
        kept = body["details"]["offset"]
        assert 0 < kept <= sent
        assert locker.arrived[up] == 2
        resp = await client.head(url)
        assert resp.status_code == 200 and resp.headers["Upload-Offset"] == str(kept)
        release.set()
        try:
            old = await one
        except httpx.TransportError:
            pass  # the server may close a connection whose body it stopped reading
        else:
            body = tus_error(old, 400, "invalid_request")
            assert body["details"]["offset"] == kept
        # never interleaved: the first body's bytes, none of the second's
        assert staged_bytes(services, url, kept) == first[:kept]
        resp = await client.patch(
            url, headers={**headers, "Upload-Offset": str(kept)}, content=first[kept:]
        )
        assert resp.status_code == 204, resp.text
        assert resp.headers["Upload-Offset"] == str(len(first))
        asset_id = (await client.head(url)).headers["Ingestd-Asset-Id"]
        asset = (await client.get(f"/v1/assets/{asset_id}")).json()
        assert asset["sha256"] == sha(first)


@sqlite_only
@pytest.mark.anyio
async def test_a_silent_patch_body_ends_after_the_idle_timeout(tmp_path: Path, db_url: str) -> None:
    with custom_server(tmp_path, db_url, tus_idle_timeout_s=0.5) as (svc, server):
        key = svc.keys.create("alice").key
        locker = svc.tus.locker
        assert isinstance(locker, InProcessLocker)
        data = os.urandom(5000)
        release = asyncio.Event()

        async def silent() -> AsyncIterator[bytes]:
            yield data[:1000]
            await release.wait()

        async with httpx.AsyncClient(
            base_url=server, headers={"Authorization": f"Bearer {key}", **TUS}, timeout=30
        ) as client:
            url = (await client.post("/files/", headers={"Upload-Length": "5000"})).headers[
                "Location"
            ]
            headers = {"Content-Type": OCTET, "Upload-Offset": "0"}
            stuck = asyncio.create_task(client.patch(url, headers=headers, content=silent()))

            async def offset() -> int:
                return int((await client.head(url)).headers["Upload-Offset"])

            deadline = time.monotonic() + 20
            while await offset() != 1000 or locker.held(upload_id(url)):
                assert time.monotonic() < deadline, "the silent body was never ended"
                await asyncio.sleep(0.05)
            release.set()
            try:
                resp = await stuck
            except httpx.TransportError:
                pass
            else:
                body = tus_error(resp, 400, "invalid_request")
                assert body["details"]["offset"] == 1000
            resp = await client.patch(
                url, headers={**headers, "Upload-Offset": "1000"}, content=data[1000:]
            )
            assert resp.status_code == 204 and resp.headers["Upload-Offset"] == "5000"


# -- direct-upload tokens ----------------------------------------------------------------


def issue(api: httpx.Client, **body: Any) -> str:
    resp = api.post("/v1/upload-tokens", json=body)
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


def test_upload_tokens(
    api: httpx.Client, server: str, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    resp = api.post("/v1/upload-tokens", json={"max_size": 5000, "kinds": ["audio"]})
    assert resp.status_code == 201, resp.text
    issued = resp.json()
    assert issued["token"].startswith("ut_")
    assert issued["upload_url"] == f"{server}/files/"
    assert issued["max_size"] == 5000 and issued["kinds"] == ["audio"]
    token = issued["token"]
    error(httpx.post(f"{server}/v1/upload-tokens", json={}), 401, "unauthorized")
    with client_for(server, token) as browser:
        # a token is not an API key
        error(browser.post("/v1/upload-tokens", json={}), 401, "unauthorized")
        error(browser.get("/v1/assets"), 401, "unauthorized")

        data = os.urandom(3000)
        resp = post(browser, length=len(data), meta=metadata(filetype="audio/wav"))
        assert resp.status_code == 201, resp.text
        mine, asset_id = resp.headers["Location"], resp.headers["Ingestd-Asset-Id"]
        tus_error(post(browser, length=10), 403, "forbidden")  # one upload per token
        assert head(browser, mine).status_code == 200
        assert patch(browser, mine, 0, data[:1000]).status_code == 204

        # the owner's other uploads are out of its reach
        others = create(api, length=10)
        assert head(browser, others).status_code == 404
        tus_error(patch(browser, others, 0, b"0123456789"), 404, "not_found")
        tus_error(browser.delete(others, headers=TUS), 404, "not_found")
        assert patch(browser, mine, 1000, data[1000:]).status_code == 204
        # the asset is the key owner's
        assert api.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha(data)

        # expired: nothing works any more
        monkeypatch.setattr(services.tokens, "clock", lambda: utcnow() + timedelta(hours=2))
        assert head(browser, mine).status_code == 401
        tus_error(post(browser, length=10), 401, "unauthorized")
        monkeypatch.undo()

    with client_for(server, issue(api, max_size=5000, kinds=["audio"])) as browser:
        tus_error(post(browser, length=5001), 413, "too_large")
        tus_error(post(browser, length=100, meta=metadata(filetype="video/mp4")), 403, "forbidden")
        tus_error(post(browser, length=100, meta=metadata(type="image/png")), 403, "forbidden")
        deferred = create(browser, defer=True, meta=metadata(filetype="application/octet-stream"))
        resp = patch(browser, deferred, 0, b"x", headers={"Upload-Length": "5001"})
        tus_error(resp, 413, "too_large")
        resp = patch(browser, deferred, 0, b"x" * 5001)  # more than the token allows
        tus_error(resp, 413, "too_large")
        assert offset_of(browser, deferred) == 0

    # parallel uploads: partials, then the one final, all reachable with the token
    with client_for(server, issue(api, max_size=100)) as browser:
        p1 = create(browser, length=40, concat="partial", body=b"a" * 40)
        p2 = create(browser, length=40, concat="partial", body=b"b" * 40)
        tus_error(post(browser, length=21, concat="partial"), 413, "too_large")  # 101 bytes
        p3 = create(browser, length=20, concat="partial")  # 100 bytes in all: fine
        resp = post(browser, concat=f"final;{p1} {p2}")
        assert resp.status_code == 201, resp.text
        assert head(browser, resp.headers["Location"]).headers["Upload-Offset"] == "80"
        assert head(browser, p1).status_code == 200
        # its one upload is made: no other final, and no more partials
        tus_error(post(browser, concat=f"final;{p3}"), 403, "forbidden")
        tus_error(post(browser, length=1, concat="partial"), 403, "forbidden")
        tus_error(post(browser, concat=f"final;{p2}"), 409, "invalid_state")  # p2 is taken


def test_an_upload_token_cannot_reach_another_tokens_upload(api: httpx.Client, server: str) -> None:
    with client_for(server, issue(api)) as one, client_for(server, issue(api)) as two:
        part = create(one, length=10, concat="partial")
        url = create(one, length=10)
        assert head(two, url).status_code == 404
        tus_error(patch(two, url, 0, b"0123456789"), 404, "not_found")
        tus_error(post(two, concat=f"final;{part}"), 404, "not_found")
        assert head(one, url).status_code == 200


@sqlite_only
def test_tus_uploads_are_validated(
    api: httpx.Client, server: str, ffmpeg: str, tmp_path: Path
) -> None:
    tone = make_tone(ffmpeg, tmp_path / "tone.wav", seconds=1).read_bytes()
    # with an API key: processed to the end
    resp = post(api, length=len(tone), body=tone, meta=metadata(filename="tone.wav"))
    assert resp.status_code == 201, resp.text
    asset = wait(api, resp.headers["Ingestd-Asset-Id"])
    assert asset["status"] == "ready", asset
    assert asset["kind"] == "audio" and asset["sha256"] == sha(tone)
    # with a token for video only, that sends no filetype: the sniffed kind decides
    with client_for(server, issue(api, kinds=["video"])) as browser:
        resp = post(browser, length=len(tone), body=tone, meta=metadata(filename="tone.wav"))
        assert resp.status_code == 201, resp.text
    asset = wait(api, resp.headers["Ingestd-Asset-Id"])
    assert asset["status"] == "failed"
    [source] = asset["sources"]
    assert source["status"] == "rejected"
    assert "upload token" in source["reason"] and "video" in source["reason"]


# -- browsers and proxies ----------------------------------------------------------------


@sqlite_only
def test_cors(tmp_path: Path, db_url: str) -> None:
    app = "https://app.example"
    asked = [
        "tus-resumable",
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-checksum",
        "upload-concat",
        "upload-defer-length",
        "content-type",
        "authorization",
        "x-http-method-override",
    ]
    with custom_server(tmp_path, db_url, cors_origins=f"{app}, https://other.example") as (
        svc,
        server,
    ):
        key = svc.keys.create("alice").key
        for path in ("/files/", "/files/up_x"):
            resp = httpx.options(
                f"{server}{path}",
                headers={
                    "Origin": app,
                    "Access-Control-Request-Method": "PATCH",
                    "Access-Control-Request-Headers": ", ".join(asked),
                },
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers["Access-Control-Allow-Origin"] == app
            assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
            allowed = {
                h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")
            }
            assert set(asked) <= allowed

        with client_for(server, key) as client:
            resp = post(client, length=10, headers={"Origin": app})
            assert resp.status_code == 201
            assert resp.headers["Access-Control-Allow-Origin"] == app
            exposed = {
                h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")
            }
            assert {
                "location",
                "upload-offset",
                "upload-length",
                "upload-expires",
                "tus-resumable",
                "ingestd-asset-id",
            } <= exposed
            url = resp.headers["Location"]
            resp = patch(client, url, 0, b"01234", headers={"Origin": app})
            assert resp.status_code == 204
            assert resp.headers["Access-Control-Allow-Origin"] == app
            # errors too, or a browser could not read them
            resp = client.post("/files/", headers={"Origin": app, "Upload-Length": "5"})
            assert resp.status_code == 412
            assert resp.headers["Access-Control-Allow-Origin"] == app
            resp = httpx.post(f"{server}/files/", headers={**TUS, "Origin": app})
            assert resp.status_code == 401
            assert resp.headers["Access-Control-Allow-Origin"] == app

            # another origin gets nothing that lets a browser read the answer
            evil = "https://evil.example"
            resp = httpx.options(
                f"{server}/files/",
                headers={"Origin": evil, "Access-Control-Request-Method": "PATCH"},
            )
            assert resp.status_code == 400
            assert "Access-Control-Allow-Origin" not in resp.headers
            resp = post(client, length=10, headers={"Origin": evil})
            assert resp.status_code == 201
            assert "Access-Control-Allow-Origin" not in resp.headers


@sqlite_only
def test_locations_behind_a_trusted_proxy(tmp_path: Path, db_url: str) -> None:
    with custom_server(tmp_path, db_url, trust_forwarded=True) as (svc, server):
        key = svc.keys.create("alice").key
        with client_for(server, key) as client:

            def location(headers: dict[str, str]) -> str:
                resp = post(client, length=10, headers=headers)
                assert resp.status_code == 201, resp.text
                url: str = resp.headers["Location"]
                return url.rsplit("/", 1)[0] + "/"

            forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "media.example.org"}
            assert location(forwarded) == "https://media.example.org/files/"
            assert location({"Forwarded": 'proto=https;host="fwd.example:8443"'}) == (
                "https://fwd.example:8443/files/"
            )
            assert location(
                {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "a.example, b.example"}
            ) == ("https://a.example/files/")
            # nonsense is ignored, not echoed
            own = f"{server}/files/"
            assert location({"X-Forwarded-Host": "evil.example/path"}) == own
            assert location({"X-Forwarded-Proto": "javascript"}) == own
            assert location({}) == own
            # the HEAD of a final lists its partials at the same base
            part = post(client, length=1, concat="partial", body=b"x", headers=forwarded)
            final = post(
                client, concat=f"final;{part.headers['Location']}", headers=forwarded
            ).headers["Location"]
            h = client.head(urlparse(final).path, headers={**TUS, **forwarded})
            assert h.headers["Upload-Concat"] == f"final;{part.headers['Location']}"
            # a configured public URL wins over everything
            svc.public_url = "https://public.example/"
            assert location(forwarded) == "https://public.example/files/"
            resp = client.post("/v1/upload-tokens", json={}, headers=forwarded)
            assert resp.json()["upload_url"] == "https://public.example/files/"
