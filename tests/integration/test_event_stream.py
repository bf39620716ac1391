"""The live event stream, ``GET /v1/assets/{id}/events/stream``, on a real uvicorn."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingestd.api.stream import StreamCloser, StreamTiming, asset_event_stream, progress_json
from ingestd.bootstrap import Services
from ingestd.client.events import ServerSentEvent, SSEParser
from ingestd.db.models import Asset
from ingestd.queries import AssetQueries, AssetView
from ingestd.testing.media import make_tone
from ingestd.uploads.blocks import MIN_BLOCK_SIZE, content_digest

BS = MIN_BLOCK_SIZE
DONE_WITHIN_S = 120


def create_upload(api: httpx.Client, data: bytes, filename: str) -> dict[str, Any]:
    blocks = [data[i : i + BS] for i in range(0, len(data), BS)]
    created = api.post(
        "/v1/uploads",
        json={
            "filename": filename,
            "size": len(data),
            "blocks": [hashlib.sha256(b).hexdigest() for b in blocks],
        },
    )
    created.raise_for_status()
    up: dict[str, Any] = created.json()
    up["blocks"] = blocks
    return up


def send_blocks(api: httpx.Client, up: dict[str, Any]) -> None:
    for i in up["missing"]:
        block = up["blocks"][i]
        api.put(
            f"/v1/uploads/{up['upload_id']}/blocks/{i}",
            content=block,
            headers={"Content-Digest": content_digest(hashlib.sha256(block).hexdigest())},
        ).raise_for_status()
    assert api.post(f"/v1/uploads/{up['upload_id']}/complete").status_code == 202


def read_stream(
    api: httpx.Client, asset_id: str, headers: dict[str, str] | None = None, **params: str
) -> tuple[httpx.Headers, list[ServerSentEvent]]:
    """Every message until ``done``, which must come within ``DONE_WITHIN_S``."""
    seen: list[ServerSentEvent] = []
    url = f"/v1/assets/{asset_id}/events/stream"
    deadline = time.monotonic() + DONE_WITHIN_S
    parser = SSEParser()
    with api.stream("GET", url, headers=headers, params=params, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():  # keep-alive comments come by too
            message = parser.feed(line)
            if message is not None:
                seen.append(message)
                if message.event == "done":
                    return response.headers, seen
            if time.monotonic() > deadline:
                break
    last = [m.data for m in seen if m.event == "progress"][-1:]
    raise AssertionError(f"no done after {[m.event for m in seen]}; last progress {last}")


def without_urls(asset: dict[str, Any]) -> dict[str, Any]:
    """Signed rendition URLs are minted per answer; the rest must be equal."""
    renditions = [{k: v for k, v in r.items() if k != "url"} for r in asset["renditions"]]
    return {**asset, "renditions": renditions}


def stored(messages: list[ServerSentEvent]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.event == "event"]


@pytest.fixture
def tone(ffmpeg: str, tmp_path: Path) -> bytes:
    return make_tone(ffmpeg, tmp_path / "tone.wav", seconds=3).read_bytes()


@pytest.fixture
def ready_asset(api: httpx.Client, tone: bytes) -> str:
    up = create_upload(api, tone, "tone.wav")
    send_blocks(api, up)
    asset_id: str = up["asset_id"]
    read_stream(api, asset_id)
    return asset_id


def test_the_stream_follows_an_upload_until_ready(api: httpx.Client, tone: bytes) -> None:
    up = create_upload(api, tone, "tone.wav")
    result: list[tuple[httpx.Headers, list[ServerSentEvent]]] = []
    reader = threading.Thread(target=lambda: result.append(read_stream(api, up["asset_id"])))
    reader.start()  # listening before the blocks arrive, so the whole run is seen live
    send_blocks(api, up)
    reader.join(timeout=180)
    assert result, "the stream reader did not finish"
    headers, messages = result[0]

    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"

    assert messages[-1].event == "done"
    final = messages[-1].json()
    assert final["status"] == "ready" and final["id"] == up["asset_id"]
    answer = api.get(f"/v1/assets/{up['asset_id']}").json()
    assert without_urls(final) == without_urls(answer)

    progress = [m.json() for m in messages if m.event == "progress"]
    assert len(progress) >= 2 and progress[-1]["status"] == "ready"
    percents = [p["progress"]["percent"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100
    assert {s["state"] for s in progress[-1]["progress"]["steps"]} == {"succeeded"}

    events = stored(messages)
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))  # once each, in order
    assert [m.id for m in messages if m.event == "event"] == [str(i) for i in ids]
    listed = api.get(f"/v1/assets/{up['asset_id']}/events").json()["items"]
    assert events == listed
    types = [e["type"] for e in events]
    assert types.index("upload.completed") < types.index("source.ingested")
    assert types[-1] == "asset.ready"


def test_a_reconnect_resumes_after_the_last_event_id(api: httpx.Client, ready_asset: str) -> None:
    _, first = read_stream(api, ready_asset)
    ids = [e["id"] for e in stored(first)]
    assert len(ids) >= 3
    middle = ids[len(ids) // 2]

    _, resumed = read_stream(api, ready_asset, headers={"Last-Event-ID": str(middle)})
    assert [e["id"] for e in stored(resumed)] == [i for i in ids if i > middle]
    assert resumed[-1].event == "done" and resumed[-1].json()["status"] == "ready"

    _, after = read_stream(api, ready_asset, after=str(ids[-1]))
    assert stored(after) == []
    assert [m.event for m in after] == ["progress", "done"]


def test_another_owner_gets_404_and_no_key_401(
    api: httpx.Client, other_api: httpx.Client, server: str, tone: bytes
) -> None:
    asset_id = create_upload(api, tone, "tone.wav")["asset_id"]
    url = f"/v1/assets/{asset_id}/events/stream"
    answer = other_api.get(url)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert httpx.get(server + url).status_code == 401
    assert other_api.get("/v1/assets/ast_nope/events/stream").status_code == 404


def test_clients_that_leave_early_do_not_hold_the_server(
    api: httpx.Client, tone: bytes, server: str
) -> None:
    # never sent: the asset waits for its blocks, so its stream would run forever
    asset_id = create_upload(api, tone, "tone.wav")["asset_id"]
    for _ in range(20):
        with api.stream("GET", f"/v1/assets/{asset_id}/events/stream") as response:
            assert response.status_code == 200
            messages = SSEParser().feed_all(response.iter_lines())
            first = next(m for m in messages if m.event == "progress")
            assert first.json()["status"] == "created"
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200
    assert api.get(f"/v1/assets/{asset_id}").json()["status"] == "created"
    # and the stream still works for the next client
    with api.stream("GET", f"/v1/assets/{asset_id}/events/stream") as response:
        messages = SSEParser().feed_all(response.iter_lines())
        assert next(m for m in messages if m.event == "progress").json()["id"] == asset_id


# The stream's own loop, with short timings: keep-alives, shutdown and disconnects.


async def _messages(chunks: AsyncIterator[bytes], until: int) -> list[bytes]:
    seen = []
    async for chunk in chunks:
        seen.append(chunk)
        if len(seen) >= until:
            break
    return seen


def _stream(
    services: Services,
    owner: str,
    asset_id: str,
    closer: StreamCloser,
    disconnected: list[bool],
) -> AsyncIterator[bytes]:
    async def is_disconnected() -> bool:
        return disconnected[0]

    def render(view: AssetView) -> dict[str, Any]:
        return {"id": view.asset.id, "status": view.asset.status, "error": None, "progress": {}}

    return asset_event_stream(
        AssetQueries(services.db),
        owner,
        asset_id,
        after=0,
        render=render,
        disconnected=is_disconnected,
        closer=closer,
        timing=StreamTiming(poll_s=0.01, keepalive_s=0.05),
    )


@pytest.fixture
def waiting_asset(api: httpx.Client, services: Services, tone: bytes) -> tuple[str, str]:
    asset_id: str = create_upload(api, tone, "tone.wav")["asset_id"]
    with services.db.transaction() as session:
        asset = session.get(Asset, asset_id)
        assert asset is not None and asset.status == "created"
        return asset.owner_id, asset_id


@pytest.mark.anyio
async def test_a_quiet_stream_sends_keep_alives_and_ends_on_shutdown(
    services: Services, waiting_asset: tuple[str, str]
) -> None:
    owner, asset_id = waiting_asset
    closer = StreamCloser()
    chunks = _stream(services, owner, asset_id, closer, [False])
    seen = await _messages(chunks, until=5)
    assert seen[0].startswith(b"retry: ")
    assert b"event: event" in b"".join(seen)  # upload.created and the like
    while b": keep-alive\n\n" not in seen:
        seen.append(await anext(chunks))
    closer.close()
    rest = [chunk async for chunk in chunks]
    assert all(b"event: done" not in chunk for chunk in rest)


@pytest.mark.anyio
async def test_a_stream_ends_when_its_client_disconnects(
    services: Services, waiting_asset: tuple[str, str]
) -> None:
    owner, asset_id = waiting_asset
    disconnected = [False]
    chunks = _stream(services, owner, asset_id, StreamCloser(), disconnected)
    assert (await anext(chunks)).startswith(b"retry: ")
    disconnected[0] = True
    assert [chunk async for chunk in chunks] == []  # checked before each round


def test_progress_json_is_the_asset_s_progress(api: httpx.Client, ready_asset: str) -> None:
    asset = api.get(f"/v1/assets/{ready_asset}").json()
    assert progress_json(asset) == {
        "id": ready_asset,
        "status": "ready",
        "error": None,
        "progress": asset["progress"],
    }
