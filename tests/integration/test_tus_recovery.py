"""tus uploads whose completion was cut short are finished later, not lost."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from ingestd.bootstrap import build
from ingestd.db.engine import Database
from ingestd.db.models import Owner, Source, UploadSession
from ingestd.db.types import new_id, utcnow
from ingestd.errors import StorageError
from ingestd.jobs.dispatch import InProcessDispatcher
from ingestd.jobs.engine import JobEngine
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.settings import Settings
from ingestd.storage.local import LocalStore
from ingestd.testing.server import running_server
from ingestd.uploads.blocks import MIN_BLOCK_SIZE
from ingestd.uploads.locks import InProcessLocker
from ingestd.uploads.service import UploadLimits, UploadService
from ingestd.uploads.tus import TusService
from ingestd.uploads.tus_protocol import Metadata

BS = MIN_BLOCK_SIZE


async def stream(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 10_000):
        yield data[i : i + 10_000]


@pytest.fixture
def tus(database: Database, tmp_path: Path) -> TusService:
    store = LocalStore(tmp_path / "store")
    uploads = UploadService(
        database,
        store,
        store,
        JobEngine(database),
        InProcessDispatcher(),
        lambda: Graph((StepSpec("validate"),)),
        limits=UploadLimits(max_upload_size=10 * BS, ttl=timedelta(hours=1), default_block_size=BS),
    )
    return TusService(uploads, InProcessLocker(), lock_wait_s=1)


def new_owner(db: Database) -> str:
    with db.transaction() as s:
        o = Owner(id=new_id("own"), name=new_id("n"))
        s.add(o)
        return o.id


@pytest.mark.anyio
async def test_a_completion_cut_short_is_finished_by_the_scheduler(
    tus: TusService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = new_owner(database)
    data = os.urandom(2 * BS + 123)
    up = await tus.create(who, size=len(data), metadata=Metadata())

    real_complete = tus.uploads.complete

    async def crash(*args: object, **kw: object) -> object:
        raise StorageError("the process stopped here")

    monkeypatch.setattr(tus.uploads, "complete", crash)
    with pytest.raises(StorageError):
        await tus.append(who, up.upload_id, 0, stream(data), content_length=len(data))
    monkeypatch.setattr(tus.uploads, "complete", real_complete)

    state = await tus.state(who, up.upload_id)
    assert (state.status, state.offset) == ("open", len(data))  # every byte is kept
    assert await tus.finish_stalled() == 0  # too recent: a request may still be finishing

    tus.clock = lambda: utcnow() + timedelta(minutes=2)
    assert await tus.finish_stalled() == 1
    with database.transaction() as s:
        row = s.get_one(UploadSession, up.upload_id)
        source = s.get_one(Source, row.source_id)
        assert row.status == "completed"
        assert source.sha256 == hashlib.sha256(data).hexdigest()
    assert await tus.finish_stalled() == 0  # nothing left


@pytest.mark.anyio
async def test_an_empty_patch_at_the_end_of_a_completed_upload_is_a_no_op(
    tus: TusService, database: Database
) -> None:
    who = new_owner(database)
    data = os.urandom(BS + 1)
    up = await tus.create(who, size=len(data), metadata=Metadata())
    await tus.append(who, up.upload_id, 0, stream(data), content_length=len(data))
    again = await tus.append(who, up.upload_id, len(data), stream(b""), content_length=0)
    assert (again.status, again.offset) == ("completed", len(data))


# -- a stalled PATCH does not hold the upload -----------------------------------------


@pytest.fixture
def stall_server(tmp_path: Path, db_url: str) -> Iterator[tuple[str, str]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        block_size=BS,
        tus_idle_timeout_s=3.0,
        tus_lock_wait_s=5.0,
        queues="none",  # nothing processes the uploads here
    )
    services = build(settings)
    key = services.keys.create("alice").key
    try:
        with running_server(services) as url:
            yield url, key
    finally:
        services.close()


def tus_headers(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0", **extra}


def start_stalled_patch(url: str, key: str, location: str, sent: bytes, size: int) -> socket.socket:
    """A PATCH announcing ``size`` bytes that sends only ``sent`` and then goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def create(url: str, key: str, size: int) -> str:
    r = httpx.post(f"{url}/files/", headers=tus_headers(key, **{"Upload-Length": str(size)}))
    assert r.status_code == 201, r.text
    return str(r.headers["location"]).removeprefix(url)


def offset_of(url: str, key: str, location: str) -> int:
    r = httpx.head(f"{url}{location}", headers=tus_headers(key))
    assert r.status_code == 200
    return int(r.headers["upload-offset"])


def test_a_newer_patch_takes_over_from_a_stalled_one(stall_server: tuple[str, str]) -> None:
    url, key = stall_server
    data = os.urandom(3000)
    location = create(url, key, len(data))
    stalled = start_stalled_patch(url, key, location, data[:1000], len(data))
    try:
        takeovers = 0
        deadline = time.monotonic() + 10
        while offset_of(url, key, location) == 0 and time.monotonic() < deadline:
            takeovers += 1
            # the stalled request has not committed: its client believes 0 is the offset
            again = httpx.patch(
                f"{url}{location}",
                content=data,
                headers=tus_headers(
                    key,
                    **{"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                ),
            )
            # the stalled request was told to stop and kept its 1000 bytes
            assert again.status_code == 409, again.text
            assert again.json()["error"]["code"] == "offset_mismatch"
        assert takeovers >= 1  # well before the 3 s idle timeout
        assert offset_of(url, key, location) == 1000
        done = httpx.patch(
            f"{url}{location}",
            content=data[1000:],
            headers=tus_headers(
                key, **{"Upload-Offset": "1000", "Content-Type": "application/offset+octet-stream"}
            ),
        )
        assert done.status_code == 204, done.text
        assert done.headers["upload-offset"] == str(len(data))
    finally:
        stalled.close()


def test_a_silent_patch_body_ends_after_the_idle_timeout(stall_server: tuple[str, str]) -> None:
    url, key = stall_server
    location = create(url, key, 5000)
    stalled = start_stalled_patch(url, key, location, os.urandom(700), 5000)
    try:
        deadline = time.monotonic() + 15
        while offset_of(url, key, location) != 700:
            assert time.monotonic() < deadline, "the stalled body was never given up"
            time.sleep(0.2)
    finally:
        stalled.close()
