from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from ingestd.client import (
    ClientError,
    FileChanged,
    FileKey,
    IngestdClient,
    Phase,
    RetryPolicy,
    Uploader,
    UploadOptions,
    UploadProgress,
    UploadResult,
    UploadStateStore,
)
from ingestd.testing.fake_block_server import FakeBlockServer

BLOCK = 64 * 1024  # the smallest block the server accepts
URL = "http://fake"
NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)
T = TypeVar("T")


def _write(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def _run(
    server: FakeBlockServer,
    state: UploadStateStore,
    path: Path,
    *,
    parallel: int = 4,
    block_size: int = BLOCK,
    on_progress: Callable[[UploadProgress], None] | None = None,
) -> UploadResult:
    async def main() -> UploadResult:
        async with IngestdClient(URL, FakeBlockServer.API_KEY, transport=server.transport()) as c:
            options = UploadOptions(block_size=block_size, parallel=parallel, retry=NO_WAIT)
            return await Uploader(c, state, options, on_progress=on_progress).upload(path)

    return asyncio.run(main())


def _with_client(server: FakeBlockServer, call: Callable[[IngestdClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with IngestdClient(URL, FakeBlockServer.API_KEY, transport=server.transport()) as c:
            return await call(c)

    return asyncio.run(main())


@pytest.fixture
def state(tmp_path: Path) -> UploadStateStore:
    return UploadStateStore(tmp_path / "state")


def _saved_files(state: UploadStateStore) -> list[Path]:
    return sorted(state.directory.glob("*.json")) if state.directory.exists() else []


def test_upload_sends_every_block_once_and_completes(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "master.wav"
    data = _write(path, 10 * BLOCK + 7)
    events: list[UploadProgress] = []
    result = _run(server, state, path, on_progress=events.append)

    assert sorted(server.block_puts) == list(range(11))
    assert server.bytes_received == len(data)
    assert result.status == "uploaded"
    assert (result.blocks_sent, result.bytes_sent, result.resumed) == (11, len(data), False)
    upload = server.uploads[result.upload_id]
    assert upload.status == "uploaded"
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert _saved_files(state) == []  # state removed after complete
    uploading = [e.completed for e in events if e.phase is Phase.UPLOADING]
    assert uploading[0] == 0 and uploading[-1] == len(data)
    assert uploading == sorted(uploading)


def test_only_missing_blocks_are_sent(tmp_path: Path, state: UploadStateStore) -> None:
    server = FakeBlockServer()
    first = tmp_path / "take1.wav"
    data = _write(first, 8 * BLOCK)
    _run(server, state, first)
    # Same first 5 blocks, different last 3: the server already stores the first 5.
    second = tmp_path / "take2.wav"
    second.write_bytes(data[: 5 * BLOCK] + random.Random(2).randbytes(3 * BLOCK))
    server.block_puts.clear()
    server.bytes_received = 0
    events: list[UploadProgress] = []

    result = _run(server, state, second, on_progress=events.append)

    assert sorted(server.block_puts) == [5, 6, 7]
    assert server.bytes_received == 3 * BLOCK
    assert result.blocks_sent == 3
    assert server.uploads[result.upload_id].status == "uploaded"
    first_upload_event = next(e for e in events if e.phase is Phase.UPLOADING)
    assert first_upload_event.completed == 5 * BLOCK  # dedup counted as already there


def test_identical_file_needs_no_block_at_all(tmp_path: Path, state: UploadStateStore) -> None:
    server = FakeBlockServer()
    original = tmp_path / "a.flac"
    data = _write(original, 4 * BLOCK + 3)
    _run(server, state, original)
    copy = tmp_path / "b.flac"
    copy.write_bytes(data)
    puts_before = len(server.block_puts)
    result = _run(server, state, copy)
    assert len(server.block_puts) == puts_before
    assert result.blocks_sent == 0 and result.status == "uploaded"


def test_parallel_bounds_the_blocks_in_flight(tmp_path: Path, state: UploadStateStore) -> None:
    server = FakeBlockServer(latency_s=0.005)
    path = tmp_path / "f.bin"
    _write(path, 12 * BLOCK)
    _run(server, state, path, parallel=3)
    assert 1 < server.max_in_flight <= 3
    assert len(server.block_puts) == 12


def _cut_after(server: FakeBlockServer, puts: int) -> None:
    """From the ``puts``-th accepted block on, every block PUT loses its connection."""

    def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT" and len(server.block_puts) >= puts:
            raise httpx.ReadError("connection reset by peer", request=request)
        return None

    server.intercept = intercept


def test_resume_after_a_cut_connection_sends_only_the_rest(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    data = _write(path, 10 * BLOCK + 1)
    _cut_after(server, 4)
    with pytest.raises(ClientError) as failure:
        _run(server, state, path, parallel=2)
    assert failure.value.code == "network_error"
    assert len(_saved_files(state)) == 1
    first_run = set(server.block_puts)
    assert len(first_run) == 4

    server.intercept = None
    server.block_puts.clear()
    result = _run(server, state, path, parallel=2)

    assert set(server.block_puts) == set(range(11)) - first_run
    assert len(server.block_puts) == 7  # nothing sent twice
    assert result.resumed and result.status == "uploaded"
    assert len(server.uploads) == 1  # the same session, not a new one
    assert server.uploads[result.upload_id].sha256 == hashlib.sha256(data).hexdigest()
    assert _saved_files(state) == []


def test_resume_after_cancellation(tmp_path: Path, state: UploadStateStore) -> None:
    server = FakeBlockServer(latency_s=0.001)
    path = tmp_path / "f.bin"
    _write(path, 9 * BLOCK)

    async def interrupted() -> None:
        async with IngestdClient(URL, FakeBlockServer.API_KEY, transport=server.transport()) as c:
            task: asyncio.Task[UploadResult] | None = None

            def on_progress(event: UploadProgress) -> None:
                if event.phase is Phase.UPLOADING and len(server.block_puts) >= 3 and task:
                    task.cancel()  # what Ctrl-C does to asyncio.run's main task

            uploader = Uploader(c, state, UploadOptions(block_size=BLOCK, parallel=2), on_progress)
            task = asyncio.create_task(uploader.upload(path))
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(interrupted())
    first_run = set(server.block_puts)
    assert 3 <= len(first_run) < 9
    server.block_puts.clear()

    result = _run(server, state, path)

    assert set(server.block_puts) == set(range(9)) - first_run
    assert result.resumed and result.status == "uploaded"


def test_resume_starts_over_when_the_server_forgot_the_upload(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 6 * BLOCK)
    _cut_after(server, 2)
    with pytest.raises(ClientError):
        _run(server, state, path, parallel=1)
    (old_id,) = server.uploads
    server.forget(old_id)  # GET answers 404
    server.blobs.clear()  # and the staged blocks are gone too
    server.intercept = None
    server.block_puts.clear()

    result = _run(server, state, path)

    assert result.upload_id != old_id and not result.resumed
    assert sorted(server.block_puts) == list(range(6))
    assert server.uploads[result.upload_id].status == "uploaded"


def test_resume_starts_over_when_the_session_expired(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 6 * BLOCK)
    _cut_after(server, 2)
    with pytest.raises(ClientError):
        _run(server, state, path, parallel=1)
    (old_id,) = server.uploads
    server.expire(old_id)
    server.intercept = None

    result = _run(server, state, path)

    assert result.upload_id != old_id and not result.resumed
    assert server.uploads[result.upload_id].status == "uploaded"
    assert server.uploads[old_id].status == "expired"


def test_changed_file_gets_a_new_upload_not_the_stale_state(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 4 * BLOCK)
    _cut_after(server, 1)
    with pytest.raises(ClientError):
        _run(server, state, path, parallel=1)
    server.intercept = None
    _write(path, 5 * BLOCK, seed=9)  # new size and mtime: a different file key

    result = _run(server, state, path)

    assert not result.resumed and len(server.uploads) == 2
    assert server.uploads[result.upload_id].status == "uploaded"


def test_server_422_on_a_block_aborts_with_its_message(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 3 * BLOCK)

    def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT":
            error = {"code": "checksum_mismatch", "message": "Block 0 does not match its digest."}
            return httpx.Response(422, json={"error": error})
        return None

    server.intercept = intercept
    with pytest.raises(ClientError) as failure:
        _run(server, state, path, parallel=1)
    assert (failure.value.code, failure.value.status) == ("checksum_mismatch", 422)
    assert "does not match its digest" in str(failure.value)
    puts = [r for r in server.requests if r[0] == "PUT"]
    assert len(puts) == 1  # a 4xx is not retried, and stops the other blocks


def test_wrong_digest_is_refused_by_the_fake_server(tmp_path: Path) -> None:
    server = FakeBlockServer()

    async def call(client: IngestdClient) -> None:
        session = await client.create_upload(filename="x", size=3, block_size=BLOCK)
        await client.put_block(session.upload_id, 0, b"abc", hashlib.sha256(b"abd").hexdigest())

    with pytest.raises(ClientError) as failure:
        _with_client(server, call)
    assert (failure.value.code, failure.value.status) == ("checksum_mismatch", 422)
    assert server.block_puts == []


def test_5xx_and_network_errors_are_retried(tmp_path: Path, state: UploadStateStore) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 2 * BLOCK)
    failures = {"503": 0, "reset": 0}

    def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PUT" or not request.url.path.endswith("/blocks/1"):
            return None
        if failures["503"] < 1:
            failures["503"] += 1
            return httpx.Response(503, text="busy")
        if failures["reset"] < 1:
            failures["reset"] += 1
            raise httpx.WriteError("broken pipe", request=request)
        return None

    server.intercept = intercept
    result = _run(server, state, path)
    assert failures == {"503": 1, "reset": 1}
    assert result.status == "uploaded" and sorted(server.block_puts) == [0, 1]


def test_blocks_the_server_lost_before_complete_are_sent_again(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 4 * BLOCK)
    lost = {"done": False}

    def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/complete") and not lost["done"]:
            lost["done"] = True
            (upload,) = server.uploads.values()
            del upload.received[2]  # complete now answers 409 upload_incomplete, missing [2]
        return None

    server.intercept = intercept
    result = _run(server, state, path)
    assert result.status == "uploaded"
    assert sorted(server.block_puts) == [0, 1, 2, 2, 3]


def test_block_size_refused_by_the_server_is_a_clear_error(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 5 * BLOCK)
    with pytest.raises(ClientError, match=r"block_size must be 65536\.\.67108864 bytes"):
        _run(server, state, path, block_size=1024)
    assert _saved_files(state) == []


def test_file_modified_during_upload_fails_clearly(tmp_path: Path, state: UploadStateStore) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 4 * BLOCK)

    def on_progress(event: UploadProgress) -> None:
        if event.phase is Phase.UPLOADING and event.completed == 0:
            _write(path, 4 * BLOCK, seed=5)  # same size, other bytes

    with pytest.raises(FileChanged):
        _run(server, state, path, parallel=1, on_progress=on_progress)
    assert server.block_puts == []


def test_state_is_keyed_by_server_path_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    _write(path, 10)
    key = FileKey.for_file("http://a/", path)
    assert key == FileKey.for_file("http://a", path)
    assert key.digest != FileKey.for_file("http://b", path).digest
    store = UploadStateStore(tmp_path / "state")
    assert store.load(key) is None
    store.path_for(key).parent.mkdir(parents=True)
    store.path_for(key).write_text("{not json")
    assert store.load(key) is None  # a corrupt state file means a new upload, not a crash


def test_cancelling_during_hashing_stops_the_hashing_thread(
    tmp_path: Path, state: UploadStateStore
) -> None:
    server = FakeBlockServer()
    path = tmp_path / "f.bin"
    _write(path, 64 * BLOCK)
    hashed: list[int] = []

    async def interrupted() -> None:
        loop = asyncio.get_running_loop()
        async with IngestdClient(URL, FakeBlockServer.API_KEY, transport=server.transport()) as c:
            task: asyncio.Task[UploadResult] | None = None

            def on_progress(event: UploadProgress) -> None:  # runs in the hashing thread
                hashed.append(event.completed)
                if event.completed > 0 and task is not None and len(hashed) == 2:
                    loop.call_soon_threadsafe(task.cancel)
                    time.sleep(0.05)  # let the loop deliver the cancellation

            uploader = Uploader(c, state, UploadOptions(block_size=BLOCK), on_progress)
            task = asyncio.create_task(uploader.upload(path))
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(interrupted())
    assert max(hashed) <= 2 * BLOCK  # stopped at once, not after the whole file
    assert server.requests == []
