"""Masters through the HTTP API and the in-process worker: processed, or rejected cleanly."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingestd.bootstrap import Services
from ingestd.testing.media import (
    corrupt_flac_streaminfo,
    make_noise_file,
    make_text_file,
    make_tone,
    truncate,
)
from ingestd.uploads.blocks import MIN_BLOCK_SIZE, content_digest

BS = MIN_BLOCK_SIZE


def upload_and_wait(api: httpx.Client, path: Path, filename: str | None = None) -> dict[str, Any]:
    data = path.read_bytes()
    blocks = [data[i : i + BS] for i in range(0, len(data), BS)]
    created = api.post(
        "/v1/uploads",
        json={
            "filename": filename or path.name,
            "size": len(data),
            "blocks": [hashlib.sha256(b).hexdigest() for b in blocks],
        },
    )
    created.raise_for_status()
    up = created.json()
    for i in up["missing"]:
        api.put(
            f"/v1/uploads/{up['upload_id']}/blocks/{i}",
            content=blocks[i],
            headers={"Content-Digest": content_digest(hashlib.sha256(blocks[i]).hexdigest())},
        ).raise_for_status()
    assert api.post(f"/v1/uploads/{up['upload_id']}/complete").status_code == 202
    return wait(api, up["asset_id"])


def wait(api: httpx.Client, asset_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asset: dict[str, Any] = api.get(f"/v1/assets/{asset_id}").json()
        if asset["status"] in ("ready", "failed"):
            return asset
        time.sleep(0.1)
    raise AssertionError(f"asset {asset_id} still {asset['status']}: {asset['progress']}")


def events(api: httpx.Client, asset_id: str) -> list[str]:
    return [e["type"] for e in api.get(f"/v1/assets/{asset_id}/events").json()["items"]]


MASTERS = {
    "24bit-96k.wav": {"codec": "pcm_s24le", "sample_rate": 96000},
    "8bit-mono.wav": {"codec": "pcm_u8", "channels": 1, "sample_rate": 22050},
    "surround-5.1.wav": {"codec": "pcm_s16le", "channels": 6},
    "master.flac": {"codec": "flac"},
}


def matrix(names: list[str], on_postgres: str) -> pytest.MarkDecorator:
    """Every case on SQLite; one of them on PostgreSQL too."""
    cases = [pytest.param("sqlite", n, id=f"sqlite-{n}") for n in names]
    cases.append(
        pytest.param(
            "postgres", on_postgres, id=f"postgres-{on_postgres}", marks=pytest.mark.postgres
        )
    )
    return pytest.mark.parametrize(("db_url", "name"), cases, indirect=["db_url"])


@matrix(sorted(MASTERS), on_postgres="24bit-96k.wav")
def test_masters_become_ready(name: str, api: httpx.Client, ffmpeg: str, tmp_path: Path) -> None:
    master = make_tone(ffmpeg, tmp_path / name, seconds=4, **MASTERS[name])  # type: ignore[arg-type]
    asset = upload_and_wait(api, master)
    assert asset["status"] == "ready", asset["error"]
    assert asset["kind"] == "audio" and asset["progress"]["percent"] == 100
    assert {s["state"] for s in asset["progress"]["steps"]} == {"succeeded"}
    assert asset["sources"][0]["status"] == "ingested"
    assert asset["metadata"]["probe"]["duration_s"] == pytest.approx(4, abs=0.01)
    assert asset["loudness"]["integrated_lufs"] < 0
    names = {r["name"] for r in asset["renditions"]}
    assert {
        "hls",
        "dash",
        "aac_256",
        "aac_128",
        "opus_160",
        "flac",
        "waveform",
        "waveform_png",
    } <= names
    is_pcm = name.endswith(".wav")
    assert ("archive_flac" in names) is is_pcm  # a FLAC master needs no archive copy
    if is_pcm:
        proof = asset["lossless_archive"]
        assert proof["lossless"] and proof["source_pcm_md5"] == proof["archive_pcm_md5"]
    flac = next(r for r in asset["renditions"] if r["name"] == "flac")
    assert flac["info"]["channels"] == MASTERS[name].get("channels", 2)
    playlist = httpx.get(next(r["url"] for r in asset["renditions"] if r["name"] == "hls"))
    assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
    seen = events(api, asset["id"])
    assert (
        seen.index("upload.completed") < seen.index("source.ingested") < seen.index("asset.ready")
    )
    master_copy = api.get(f"/v1/assets/{asset['id']}/master")
    assert hashlib.sha256(master_copy.content).hexdigest() == asset["sha256"]


def test_a_silent_master_is_processed(api: httpx.Client, ffmpeg: str, tmp_path: Path) -> None:
    silent = make_tone(ffmpeg, tmp_path / "silence.wav", seconds=3, amplitude=0.0)
    asset = upload_and_wait(api, silent)
    assert asset["status"] == "ready", asset["error"]
    loudness = asset["loudness"]
    assert loudness["integrated_lufs"] <= -70  # ebur128's absolute gate
    assert loudness["true_peak_dbtp"] is None  # -inf dBTP, stored as null
    assert asset["lossless_archive"]["lossless"] is True


def _text(path: Path, ffmpeg: str) -> Path:
    return make_text_file(path)


def _noise(path: Path, ffmpeg: str) -> Path:
    return make_noise_file(path, 200_000)


def _truncated(path: Path, ffmpeg: str) -> Path:
    return truncate(make_tone(ffmpeg, path, seconds=4, codec="pcm_s24le"), 0.5)


def _broken_flac(path: Path, ffmpeg: str) -> Path:
    return corrupt_flac_streaminfo(make_tone(ffmpeg, path, seconds=3, codec="flac"))


BAD = {
    "text-named.wav": (_text, "not an audio file"),
    "noise-named.wav": (_noise, "not an audio file"),
    "truncated.wav": (_truncated, "truncated"),
    "broken-streaminfo.flac": (_broken_flac, "streaminfo"),
}


@matrix(sorted(BAD), on_postgres="truncated.wav")
def test_bad_masters_are_rejected_and_not_kept(
    name: str, api: httpx.Client, ffmpeg: str, tmp_path: Path, services: Services
) -> None:
    make, phrase = BAD[name]
    asset = upload_and_wait(api, make(tmp_path / name, ffmpeg))
    assert asset["status"] == "failed"
    source = asset["sources"][0]
    assert source["status"] == "rejected"
    assert source["reason"] and phrase in source["reason"].lower(), source["reason"]
    assert asset["error"].startswith("validate: ")
    assert asset["renditions"] == [] and asset["master_url"] is None
    steps = asset["progress"]["steps"]
    assert [(s["step"], s["state"], s["attempts"]) for s in steps] == [("validate", "failed", 1)]
    assert not list((services.store.objects / "masters").rglob("original"))
    assert api.get(f"/v1/assets/{asset['id']}/master").status_code == 404
    assert "source.rejected" in events(api, asset["id"])
