"""The block upload API over HTTP: every bad input gets a precise status and code."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from ingestd.bootstrap import Services
from ingestd.testing.media import make_tone
from ingestd.uploads.blocks import MIN_BLOCK_SIZE, content_digest

from .test_music_pipeline import upload_and_wait

BS = MIN_BLOCK_SIZE


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(
    api: httpx.Client, upload_id: str, index: int, data: bytes, digest: str | None = None
) -> httpx.Response:
    return api.put(
        f"/v1/uploads/{upload_id}/blocks/{index}",
        content=data,
        headers={
            "Content-Digest": content_digest(digest or sha(data)),
            "Content-Type": "application/octet-stream",
        },
    )


def error(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code and body["message"]
    return body  # type: ignore[no-any-return]


def test_health_needs_no_key(server: str) -> None:
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_every_v1_call_needs_a_valid_key(server: str, services: Services) -> None:
    error(httpx.get(f"{server}/v1/assets"), 401, "unauthorized")
    error(
        httpx.get(f"{server}/v1/assets", headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    issued = services.keys.create("bob")
    services.keys.revoke(issued.prefix)
    error(
        httpx.get(f"{server}/v1/assets", headers={"Authorization": f"Bearer {issued.key}"}),
        401,
        "unauthorized",
    )


def test_resumable_upload_over_http(api: httpx.Client, services: Services) -> None:
    data = os.urandom(2 * BS + 7)
    blocks = [data[i : i + BS] for i in range(0, len(data), BS)]
    created = api.post(
        "/v1/uploads",
        json={
            "filename": "song.wav",
            "size": len(data),
            "sha256": sha(data),
            "asset": {"title": "Song"},
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["missing"] == [0, 1, 2] and body["block_size"] == BS
    assert body["expires_at"].endswith("Z")
    up = body["upload_id"]
    assert put(api, up, 1, blocks[1]).json() == {"index": 1, "size": BS, "sha256": sha(blocks[1])}
    status = api.get(f"/v1/uploads/{up}").json()
    assert status["present"] == [1] and status["missing"] == [0, 2]
    assert status["bytes_received"] == BS
    put(api, up, 0, blocks[0]).raise_for_status()
    put(api, up, 2, blocks[2]).raise_for_status()
    done = api.post(f"/v1/uploads/{up}/complete")
    assert done.status_code == 202 and done.json()["status"] == "uploaded"
    assert done.json()["session_status"] == "completed"
    asset = api.get(f"/v1/assets/{body['asset_id']}").json()
    assert asset["title"] == "Song" and asset["sha256"] == sha(data)
    assert asset["sources"][0]["filename"] == "song.wav"


def test_bad_blocks(api: httpx.Client) -> None:
    data = os.urandom(BS + 10)
    up = api.post("/v1/uploads", json={"filename": "x.wav", "size": len(data)}).json()
    upload_id = up["upload_id"]
    error(put(api, upload_id, 0, data[:BS], digest=sha(b"wrong")), 422, "checksum_mismatch")
    error(put(api, upload_id, -1, b"abc"), 400, "invalid_block")
    error(put(api, upload_id, 2, b"abc"), 400, "invalid_block")
    error(put(api, upload_id, 1, b"z" * (BS + 1)), 413, "too_large")
    error(
        api.put(
            f"/v1/uploads/{upload_id}/blocks/0",
            content=data[:BS],
            headers={"Content-Digest": "sha-256=nonsense"},
        ),
        400,
        "invalid_request",
    )
    assert api.get(f"/v1/uploads/{upload_id}").json()["missing"] == [0, 1]
    body = error(api.post(f"/v1/uploads/{upload_id}/complete"), 409, "upload_incomplete")
    assert body["details"] == {"missing": [0, 1]}


def test_bad_init(api: httpx.Client) -> None:
    error(api.post("/v1/uploads", json={"filename": "x", "size": 0}), 400, "invalid_request")
    error(api.post("/v1/uploads", json={"filename": "x", "size": -1}), 400, "invalid_request")
    error(api.post("/v1/uploads", json={"filename": "x", "size": 65 << 20}), 413, "too_large")
    error(api.post("/v1/uploads", json={"filename": "x"}), 400, "invalid_request")
    error(api.post("/v1/uploads", json={"size": 10, "block_size": 100}), 400, "invalid_request")
    error(api.post("/v1/uploads", json={"size": 10, "blocks": ["ab"]}), 400, "invalid_request")
    error(
        api.post("/v1/uploads", json={"size": 10, "blocks": [sha(b"a"), sha(b"b")]}),
        400,
        "invalid_request",
    )


def test_unknown_and_foreign_uploads_are_not_found(
    api: httpx.Client, other_api: httpx.Client
) -> None:
    error(api.get("/v1/uploads/up_missing"), 404, "not_found")
    mine = api.post("/v1/uploads", json={"filename": "x", "size": 10}).json()
    for call in (
        other_api.get(f"/v1/uploads/{mine['upload_id']}"),
        put(other_api, mine["upload_id"], 0, b"0123456789"),
        other_api.post(f"/v1/uploads/{mine['upload_id']}/complete"),
        other_api.delete(f"/v1/uploads/{mine['upload_id']}"),
        other_api.get(f"/v1/assets/{mine['asset_id']}"),
        other_api.get(f"/v1/assets/{mine['asset_id']}/master"),
    ):
        error(call, 404, "not_found")
    assert other_api.get("/v1/assets").json()["items"] == []


def test_size_mismatch_on_complete_is_impossible_to_fake(api: httpx.Client) -> None:
    # the last block must be exactly as long as the declared size says
    up = api.post("/v1/uploads", json={"filename": "x", "size": BS + 5}).json()
    put(api, up["upload_id"], 0, b"a" * BS).raise_for_status()
    error(put(api, up["upload_id"], 1, b"b" * 4), 400, "invalid_request")
    error(api.post(f"/v1/uploads/{up['upload_id']}/complete"), 409, "upload_incomplete")


def test_cancel(api: httpx.Client, services: Services) -> None:
    up = api.post("/v1/uploads", json={"filename": "x", "size": 10}).json()
    put(api, up["upload_id"], 0, b"0123456789").raise_for_status()
    assert api.delete(f"/v1/uploads/{up['upload_id']}").status_code == 204
    staged = services.store.staging / f"{up['upload_id']}.part"
    assert not staged.exists()
    error(put(api, up["upload_id"], 0, b"0123456789"), 410, "gone")
    assert api.get(f"/v1/assets/{up['asset_id']}").json()["status"] == "abandoned"


def test_assets_listing_pages(api: httpx.Client) -> None:
    ids = [
        api.post("/v1/uploads", json={"filename": f"{i}", "size": 10}).json()["asset_id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = api.get(
            "/v1/assets", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    error(api.get("/v1/assets", params={"cursor": "%%%"}), 400, "invalid_request")


@pytest.mark.parametrize("path", ["/v1/nothing", "/o/1/x/renditions/a/b"])
def test_unknown_routes_answer_json(api: httpx.Client, path: str) -> None:
    error(api.get(path), 404, "not_found")


def test_urls_use_the_public_url_behind_a_proxy(
    api: httpx.Client, services: Services, ffmpeg: str, tmp_path: Path
) -> None:
    services.public_url = "https://media.example.org/"
    asset = upload_and_wait(api, make_tone(ffmpeg, tmp_path / "a.wav", seconds=1))
    assert asset["status"] == "ready"
    base = "https://media.example.org/"
    assert asset["master_url"] == f"{base}v1/assets/{asset['id']}/master"
    assert all(r["url"].startswith(f"{base}o/") for r in asset["renditions"])


def test_openapi_documents_the_api(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json").json()
    put_block = spec["paths"]["/v1/uploads/{upload_id}/blocks/{index}"]["put"]
    assert {"200", "400", "404", "409", "413", "422"} <= set(put_block["responses"])
    asset = spec["components"]["schemas"]["AssetOut"]["properties"]
    assert {"progress", "renditions", "loudness", "master_url"} <= set(asset)


def test_a_connection_cut_mid_block_keeps_the_upload_consistent(
    api: httpx.Client, server: str, services: Services
) -> None:
    import socket
    from urllib.parse import urlparse

    data = os.urandom(BS)
    up = api.post("/v1/uploads", json={"filename": "x", "size": len(data)}).json()
    url = urlparse(server)
    key = api.headers["Authorization"]
    head = (
        f"PUT /v1/uploads/{up['upload_id']}/blocks/0 HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: {key}\r\nContent-Digest: {content_digest(sha(data))}\r\n"
        f"Content-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head + data[: len(data) // 2])  # half the block, then the line drops
    status = api.get(f"/v1/uploads/{up['upload_id']}").json()
    assert status["missing"] == [0] and status["bytes_received"] == 0
    put(api, up["upload_id"], 0, data).raise_for_status()  # the retry succeeds
    done = api.post(f"/v1/uploads/{up['upload_id']}/complete")
    assert done.status_code == 202
    asset = api.get(f"/v1/assets/{up['asset_id']}").json()
    assert asset["sha256"] == sha(data)
