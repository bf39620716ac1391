"""A video master through the service: ladder, previews, renditions; bad videos refused."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import select

from ingestd.bootstrap import Services, build
from ingestd.db.models import WorkOrder
from ingestd.errors import TranscodeFailed
from ingestd.pipeline import video as video_pipeline
from ingestd.testing.media import corrupt_bytes, make_video
from ingestd.uploads.blocks import content_digest

from .conftest import service_settings
from .test_music_pipeline import upload_and_wait

TINY = {"name": "tiny", "rungs": [{"name": "144p", "height": 144, "video_bitrate": 120_000}]}


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Services]:
    """The integration services, with one more ladder profile defined in a file; the ladder
    mode is the test's indirect parameter (default "single")."""
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({"profiles": [TINY]}))
    settings = service_settings(
        tmp_path,
        db_url,
        profiles_file=profiles,
        video_ladder_mode=getattr(request, "param", "single"),
    )
    svc = build(settings)
    yield svc
    svc.close()


def upload(api: httpx.Client, path: Path) -> str:
    """Upload ``path`` in one block and complete it; returns the asset id (not waiting)."""
    data = path.read_bytes()
    created = api.post(
        "/v1/uploads", json={"filename": path.name, "size": len(data), "block_size": len(data)}
    )
    created.raise_for_status()
    up = created.json()
    api.put(
        f"/v1/uploads/{up['upload_id']}/blocks/0",
        content=data,
        headers={"Content-Digest": content_digest(hashlib.sha256(data).hexdigest())},
    ).raise_for_status()
    assert api.post(f"/v1/uploads/{up['upload_id']}/complete").status_code == 202
    return str(up["asset_id"])


def rendition(asset: dict[str, object], name: str) -> dict[str, object]:
    by_name = {r["name"]: r for r in asset["renditions"]}  # type: ignore[attr-defined]
    return by_name[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_video_becomes_a_ladder_with_previews(
    api: httpx.Client, ffmpeg: str, tmp_path: Path
) -> None:
    src = make_video(ffmpeg, tmp_path / "clip.mp4", seconds=4, width=640, height=360, fps=25)
    asset = upload_and_wait(api, src)
    assert asset["status"] == "ready", asset.get("error")
    assert asset["kind"] == "video"
    assert asset["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    video = asset["metadata"]["video"]["video"]
    assert (video["display_width"], video["display_height"], video["fps"]) == (640, 360, 25.0)

    names = {r["name"] for r in asset["renditions"]}
    # never upscaled: 360p is the top rung; 234p below it; audio once
    assert {"hls", "dash", "360p", "234p", "audio", "poster", "storyboard"} <= names
    top, low = rendition(asset, "360p"), rendition(asset, "234p")
    assert (top["width"], top["height"]) == (640, 360)
    assert low["height"] == 234 and low["width"] % 2 == 0
    assert str(top["codec"]).startswith("avc1.64")  # H.264 High

    master = httpx.get(str(rendition(asset, "hls")["url"]), timeout=10)
    assert master.status_code == 200
    assert "RESOLUTION=640x360" in master.text and 'AUDIO="audio"' in master.text
    mpd = httpx.get(str(rendition(asset, "dash")["url"]), timeout=10)
    assert mpd.status_code == 200 and 'contentType="video"' in mpd.text
    poster = httpx.get(str(rendition(asset, "poster")["url"]), timeout=10)
    assert poster.headers["content-type"] == "image/jpeg"
    vtt = httpx.get(str(rendition(asset, "storyboard")["url"]), timeout=10).text
    assert vtt.startswith("WEBVTT") and "#xywh=" in vtt


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_video_without_audio_and_in_portrait_still_packages(
    api: httpx.Client, ffmpeg: str, tmp_path: Path
) -> None:
    src = make_video(
        ffmpeg, tmp_path / "tall.mp4", seconds=3, width=180, height=320, audio_channels=None
    )
    asset = upload_and_wait(api, src)
    assert asset["status"] == "ready", asset.get("error")
    names = {r["name"] for r in asset["renditions"]}
    assert "audio" not in names
    rungs = [r for r in asset["renditions"] if r["kind"] == "video"]
    assert [(r["width"], r["height"]) for r in rungs] == [(180, 320)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_video_with_a_corrupted_middle_is_rejected(
    api: httpx.Client, ffmpeg: str, tmp_path: Path
) -> None:
    src = make_video(ffmpeg, tmp_path / "broken.mkv", seconds=4, width=320, height=180)
    corrupt_bytes(src, 0.5, 8192)
    asset = upload_and_wait(api, src)
    assert asset["status"] == "failed"
    assert "corrupt video" in str(asset["error"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("target", ["file:///etc/passwd", "http://127.0.0.1:9/x.ts"])
def test_a_playlist_uploaded_as_a_master_is_refused_unread(
    api: httpx.Client, tmp_path: Path, target: str
) -> None:
    playlist = tmp_path / "master.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n")
    asset = upload_and_wait(api, playlist)
    assert asset["status"] == "failed"
    assert "root:" not in str(asset["error"])


def ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cancelling_an_asset_stops_its_ffmpeg(
    api: httpx.Client, ffmpeg: str, tmp_path: Path
) -> None:
    # long enough that the ladder would still be encoding well after the deadline below
    src = make_video(ffmpeg, tmp_path / "long.mp4", seconds=30, width=1280, height=720)
    asset_id = upload(api, src)
    deadline = time.monotonic() + 60
    while True:  # until the ladder's ffmpeg is running
        steps = {
            s["step"]: s for s in api.get(f"/v1/assets/{asset_id}").json()["progress"]["steps"]
        }
        ladder = steps.get("video_ladder", {})
        if ladder.get("state") == "running" and ffmpeg_children():
            break
        assert time.monotonic() < deadline, steps
        time.sleep(0.1)
    cancelled = api.post(f"/v1/assets/{asset_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "failed"
    assert "cancelled" in cancelled.json()["error"]
    deadline = time.monotonic() + 10
    while ffmpeg_children():  # the lease is lost at the next heartbeat; ffmpeg is killed
        assert time.monotonic() < deadline, "ffmpeg still running after the cancel"
        time.sleep(0.2)
    final = api.get(f"/v1/assets/{asset_id}").json()
    assert final["status"] == "failed"
    assert "video_ladder" not in {r["name"] for r in final["renditions"]}
    again = api.post(f"/v1/assets/{asset_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_asset_names_its_ladder_profile(api: httpx.Client, ffmpeg: str, tmp_path: Path) -> None:
    assert {p["name"] for p in api.get("/v1/profiles").json()["items"]} == {"default", "tiny"}
    src = make_video(ffmpeg, tmp_path / "clip.mp4", seconds=2, width=640, height=360)
    data = src.read_bytes()
    unknown = api.post("/v1/uploads", json={"size": len(data), "asset": {"profile": "huge"}})
    assert unknown.status_code == 400 and "unknown profile" in unknown.text
    created = api.post(
        "/v1/uploads",
        json={"size": len(data), "block_size": len(data), "asset": {"profile": "tiny"}},
    ).json()
    api.put(
        f"/v1/uploads/{created['upload_id']}/blocks/0",
        content=data,
        headers={"Content-Digest": content_digest(hashlib.sha256(data).hexdigest())},
    ).raise_for_status()
    api.post(f"/v1/uploads/{created['upload_id']}/complete").raise_for_status()
    deadline = time.monotonic() + 60
    while (asset := api.get(f"/v1/assets/{created['asset_id']}").json())["status"] not in (
        "ready",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert asset["status"] == "ready", asset["error"]
    rungs = [r for r in asset["renditions"] if r["kind"] == "video"]
    assert [(r["name"], r["height"], r["profile"]) for r in rungs] == [("144p", 144, "tiny")]


def steps_run(services: Services, asset_id: str) -> list[str]:
    with services.db.transaction() as session:
        return list(
            session.scalars(
                select(WorkOrder.step)
                .where(WorkOrder.asset_id == asset_id, WorkOrder.state == "succeeded")
                .order_by(WorkOrder.step)
            )
        )


def wait_settled(api: httpx.Client, asset_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while (asset := api.get(f"/v1/assets/{asset_id}").json())["status"] not in (
        "ready",
        "failed",
    ):
        assert time.monotonic() < deadline, asset["progress"]
        time.sleep(0.1)
    return asset  # type: ignore[no-any-return]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("services", ["per_rung"], indirect=True)
def test_per_rung_orders_make_one_segment_set_and_a_rung_can_be_redone(
    api: httpx.Client, services: Services, ffmpeg: str, tmp_path: Path
) -> None:
    src = make_video(ffmpeg, tmp_path / "clip.mp4", seconds=4, width=640, height=360)
    asset = wait_settled(api, upload(api, src))
    assert asset["status"] == "ready", asset["error"]
    ran = steps_run(services, asset["id"])
    assert {"rung:360p", "rung:234p", "rung:audio", "video_manifests"} <= set(ran)
    assert "video_ladder" not in ran
    master = httpx.get(str(rendition(asset, "hls")["url"]), timeout=10).text
    assert "RESOLUTION=640x360" in master and 'URI="audio/playlist.m3u8"' in master
    assert master.count("#EXT-X-STREAM-INF") == 2

    retried = api.post(f"/v1/assets/{asset['id']}/renditions/234p/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "processing"
    again = wait_settled(api, asset["id"])
    assert again["status"] == "ready", again["error"]
    ran = steps_run(services, asset["id"])
    assert ran.count("rung:234p") == 2 and ran.count("video_manifests") == 2
    assert ran.count("rung:360p") == 1  # the other rungs were not encoded again
    assert api.post(f"/v1/assets/{asset['id']}/renditions/nope/retry").status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("services", ["per_rung"], indirect=True)
def test_a_failed_rung_fails_the_asset_and_a_retry_completes_it(
    api: httpx.Client, ffmpeg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = video_pipeline.package_video
    broken = {"234p"}

    async def flaky(tc: Any, master: Path, out: Path, rungs: Any, **kw: Any) -> Any:
        if {r.name for r in rungs} & broken:
            raise TranscodeFailed("the encoder crashed (injected)")
        return await real(tc, master, out, rungs, **kw)

    monkeypatch.setattr(video_pipeline, "package_video", flaky)
    src = make_video(ffmpeg, tmp_path / "clip.mp4", seconds=3, width=640, height=360)
    asset = wait_settled(api, upload(api, src))
    assert asset["status"] == "failed" and "rung:234p" in asset["error"]
    assert "hls" not in {r["name"] for r in asset["renditions"]}

    broken.clear()  # the cause is fixed: redo the failed rung
    assert api.post(f"/v1/assets/{asset['id']}/renditions/234p/retry").status_code == 202
    done = wait_settled(api, asset["id"])
    assert done["status"] == "ready", done["error"]
    assert {"hls", "dash", "360p", "234p", "audio"} <= {r["name"] for r in done["renditions"]}
