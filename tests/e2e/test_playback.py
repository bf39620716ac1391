"""Playback in a real browser: ingestd's CMAF packages played to the end by hls.js (the HLS
master playlist) and dash.js (the DASH MPD) in headless Chromium, driven by playwright-core.

What a player proves that the packaging tests cannot: the browser's MediaSource accepts the
CODECS strings and the init segments, the player parses the playlists and the MPD, the
segments append where the manifests say they are, switching rungs mid-stream works, and the
stream ends at the source's duration: the media element fires ``ended``, or (``nativeEnded``
false, a Chromium quirk seen with dash.js on audio-only streams) its playhead rests at the
duration after the player called ``MediaSource.endOfStream()``. A playhead that stops short
of the duration, or a player that never ends the stream, fails.

Most media are packaged here with ``package_video`` / ``package_audio`` (so that the
ladder, the durations and the segment length can be chosen) and served, with the player page
and its node_modules, by a loopback static server. The rest go the whole way: uploaded with
the CLI to ``ingestd serve``, played from the signed URLs of their ``hls`` and ``dash``
renditions (another origin than the page's: those answer with
``Access-Control-Allow-Origin: *``).

The module's playbacks run together, PARALLEL pages at a time, each in its own browser
context of one Chromium (``play.mjs --jobs``), and the tests read their results.

Needs Debian's ``chromium`` at /usr/bin/chromium and Node.js 20 (skipped, saying so, without
either) and ``npm ci --prefix tests/e2e/player`` (fails, not skips, when ``node`` is there but
the packages are not installed).
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from ingestd.media import Toolchain
from ingestd.media.audio import DEFAULT_AUDIO_LADDER, package_audio
from ingestd.media.ladder import Profile, Rung, plan_ladder
from ingestd.media.video import package_video
from ingestd.testing.media import make_tone, make_video
from tests.e2e.conftest import Served, client_env, start_server, stop_server

PLAYER_DIR = Path(__file__).parent / "player"
PLAY_MJS = PLAYER_DIR / "play.mjs"
CHROMIUM = Path("/usr/bin/chromium")
PINNED = {"dashjs": "5.2.1", "hls.js": "1.7.4", "playwright-core": "1.65.1"}
LIBS = ("hls", "dash")
MANIFESTS = {"hls": "master.m3u8", "dash": "manifest.mpd"}
SEGMENT_S = 2.0
# Two rungs, GOPs of 2 s, segments of 2 s (the default profile's segments are 6 s long).
PROFILE = Profile(
    name="playback",
    rungs=(Rung("180p", 180, 300_000), Rung("90p", 90, 100_000)),
    gop_s=2.0,
    segment_s=SEGMENT_S,
)
AUDIO_RUNGS = [r.name for r in DEFAULT_AUDIO_LADDER]  # aac_256, aac_128, opus_160, flac
WHOLE_AUDIO_RUNGS = ["aac_256", "opus_160", "flac"]  # one of each codec
VIDEO_S = 5.0  # not a whole number of segments: the last one is shorter
AUDIO_S = 3.0
WHOLE_S = 4.0  # exactly two segments (one alone is never cut: no tail to spill into)
TOLERANCE_S = 0.1  # duration and end position, against the source's duration
PLAY_TIMEOUT_S = 60  # per page; player.html gives up by itself after 8 s without progress
PARALLEL = 8  # pages at once: Chromium starts many more media pipelines slowly or not at all
SERVED = {"video": 5.0, "audio": 3.0}  # uploaded to `ingestd serve`: seconds

# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js with the pinned player packages; skips without Chromium or Node.js."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed: the playback tests need Debian's chromium")
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed: the playback tests drive Chromium from Node.js 20")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"the playback tests need Node.js 20 or later, not {version.stdout}"
    for name, pinned in PINNED.items():
        installed = PLAYER_DIR / "node_modules" / name / "package.json"
        if not installed.is_file():
            pytest.fail(
                f"{installed.parent} is missing: run `npm ci --prefix tests/e2e/player` first"
            )
        got = json.loads(installed.read_text())["version"]
        assert got == pinned, f"{name} {got} installed, {pinned} pinned: run npm ci again"
    return path


def play(node: str, page: str, jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plays the jobs, PARALLEL at a time (one browser, a context each); results by job id.

    A job: ``{"id", "lib": "hls"|"dash", "src": manifest URL, "switch": bool, "only": name}``
    (see player.html). ``page`` is player.html's URL on a server that also serves its
    node_modules.
    """
    proc = subprocess.run(
        [
            *(node, str(PLAY_MJS), "--page", page, "--jobs", json.dumps(jobs)),
            *("--parallel", str(PARALLEL), "--timeout-ms", str(PLAY_TIMEOUT_S * 1000)),
            *("--chromium", str(CHROMIUM)),
        ],
        capture_output=True,
        text=True,
        timeout=PLAY_TIMEOUT_S * -(-len(jobs) // PARALLEL) + 60,
        cwd=PLAYER_DIR,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"play.mjs exited {proc.returncode} without a report:\n{proc.stderr[-3000:]}")
    if report["launchError"]:
        pytest.fail(f"Chromium did not start: {report['launchError']}")
    return {r["id"]: r for r in report["results"]}


def explain(result: dict[str, Any]) -> str:
    """What a failed assertion shows: the page's record and what the browser logged."""
    shown = {k: result.get(k) for k in ("id", "src", "timedOut", "pageErrors", "httpErrors")}
    shown["console"] = result.get("console", [])[-20:]
    shown["playback"] = result.get("playback")
    return json.dumps(shown, indent=1)


def assert_played_to_the_end(result: dict[str, Any], source_s: float) -> None:
    p = result["playback"]
    why = explain(result)
    assert p is not None and not result["timedOut"], why
    assert [e for e in p["errors"] if e["fatal"]] == [], why
    assert p["state"] == "ended" and p["ended"], why
    assert p["duration"] is not None and abs(p["duration"] - source_s) <= TOLERANCE_S, why
    assert abs(p["currentTime"] - source_s) <= TOLERANCE_S, why
    assert result["httpErrors"] == [], why  # every URI in the manifests exists


# -- a loopback static server ---------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a page opens several connections at once, every page at once

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots = roots
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a player aborting a request it no longer needs
        super().handle_error(request, client_address)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """``/<root>/<path>``: a file under one of the server's roots."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: a player fetches one segment after another
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".m3u8": "application/vnd.apple.mpegurl",
        ".mpd": "application/dash+xml",
        ".m4s": "video/iso.segment",
        ".mp4": "video/mp4",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
    }

    def translate_path(self, path: str) -> str:
        prefix, _, rest = urllib.parse.urlsplit(path).path.lstrip("/").partition("/")
        root = self.server.roots.get(prefix)
        if root is None:
            return str(PLAYER_DIR / "no such root")
        self.directory = str(root)
        return super().translate_path("/" + rest)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("playback")


@pytest.fixture(scope="module")
def server(media_dir: Path) -> Iterator[str]:
    """Base URL: ``/player/`` is tests/e2e/player, ``/media/`` the packages."""
    srv = _Server({"player": PLAYER_DIR, "media": media_dir})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


# -- the packages ---------------------------------------------------------------------------


async def _package(ffmpeg: str, media_dir: Path) -> None:
    tc = Toolchain.discover(None, None, None)
    sources = media_dir / "sources"
    sources.mkdir()
    rungs = plan_ladder(PROFILE, display_width=320, display_height=180, fps=25)
    for name, seconds in (("video", VIDEO_S), ("video-whole", WHOLE_S)):
        src = make_video(ffmpeg, sources / f"{name}.mp4", seconds=seconds, width=320, height=180)
        out = media_dir / name
        out.mkdir()
        await package_video(
            tc, src, out, rungs, with_audio=True, segment_s=SEGMENT_S, preset="ultrafast"
        )
    for name, seconds in (("audio", AUDIO_S), ("audio-whole", WHOLE_S)):
        tone = make_tone(ffmpeg, sources / f"{name}.wav", seconds=seconds)
        out = media_dir / name
        out.mkdir()
        await package_audio(tc, tone, out, segment_s=SEGMENT_S)


@dataclass(frozen=True)
class Job:
    lib: str
    package: str
    switch: bool = False
    only: str | None = None


def _jobs() -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    for lib in LIBS:
        jobs[f"{lib} video"] = Job(lib, "video", switch=True)
        jobs[f"{lib} audio"] = Job(lib, "audio")
        for name in AUDIO_RUNGS:
            jobs[f"{lib} audio {name}"] = Job(lib, "audio", only=name)
        jobs[f"{lib} video-whole"] = Job(lib, "video-whole")
        for name in WHOLE_AUDIO_RUNGS:
            jobs[f"{lib} audio-whole {name}"] = Job(lib, "audio-whole", only=name)
    return jobs


# -- the service ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_assets(
    node: str, ffmpeg: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`ingestd serve` with a video and a tone uploaded by the CLI: each asset's JSON once
    ready, by SERVED name, or a string saying what went wrong (the tests that play them fail
    with it; the others do not depend on the service). After ``node``: skips come first."""
    tmp = tmp_path_factory.mktemp("served")
    data, log = tmp / "data", tmp / "serve.log"
    env = client_env(tmp, data)
    try:
        proc, url = start_server(data, env, log)
    except pytest.fail.Exception as exc:
        yield dict.fromkeys(SERVED, f"ingestd serve did not start: {exc}")
        return
    try:
        env["INGESTD_SERVER"] = url
        served = Served(url, data, (data / "local-key").read_text().strip(), env, log)
        sources = {
            "video": make_video(ffmpeg, tmp / "clip.mp4", seconds=SERVED["video"]),
            "audio": make_tone(ffmpeg, tmp / "tone.wav", seconds=SERVED["audio"]),
        }
        assets: dict[str, Any] = {}
        for name, path in sources.items():
            try:
                done = served.cli("upload", str(path), "--json", timeout=120)
                asset = json.loads(done.stdout) if done.returncode == 0 else {}
                said = f"{done.stdout[-2000:]} {done.stderr[-2000:]}"
            except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                asset, said = {}, str(exc)
            if asset.get("status") == "ready":
                assets[name] = asset
            else:
                assets[name] = f"upload of the {name}: {said}\n{log.read_text()[-3000:]}"
        yield assets
    finally:
        stop_server(proc)


def rendition(asset: dict[str, Any] | str, name: str) -> dict[str, Any]:
    if isinstance(asset, str):
        pytest.fail(asset)
    found = [r for r in asset["renditions"] if r["name"] == name]
    assert found, (name, asset["renditions"])
    return found[0]


@pytest.fixture(scope="module")
def playbacks(
    node: str, server: str, ffmpeg: str, media_dir: Path, served_assets: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every playback of this module, played together: results by job id (see _jobs)."""
    anyio.run(partial(_package, ffmpeg, media_dir))
    jobs = [
        {
            "id": job_id,
            "lib": job.lib,
            "src": f"{server}/media/{job.package}/{MANIFESTS[job.lib]}",
            "switch": job.switch,
            "only": job.only,
        }
        for job_id, job in _jobs().items()
    ]
    for name, asset in served_assets.items():
        if not isinstance(asset, str):
            for lib in LIBS:
                src = rendition(asset, lib)["url"]
                jobs.append({"id": f"{lib} served {name}", "lib": lib, "src": src})
    return play(node, f"{server}/player/player.html", jobs)


def names(levels: list[dict[str, Any]]) -> list[str]:
    return sorted(level["name"] for level in levels)


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
def test_video_plays_to_the_end_switching_rungs(
    lib: str, playbacks: dict[str, dict[str, Any]]
) -> None:
    """5 s of 320x180 with audio, 2 rungs of 2 s segments: the player keeps both rungs (their
    CODECS are playable), starts on the lower one, switches to the higher one at 1 s
    (dropping what it had buffered) and plays to the end, audio included."""
    result = playbacks[f"{lib} video"]
    assert_played_to_the_end(result, VIDEO_S)
    p = result["playback"]
    why = explain(result)
    assert names(p["levels"]) == ["180p", "90p"], why
    assert all(level["codecs"].startswith("avc1.") for level in p["levels"]), why
    assert p["switched"] and p["levelsSeen"] == ["90p", "180p"], why
    assert p["sizes"] == ["160x90", "320x180"], why  # both rungs' pictures were displayed
    assert names(p["audioTracks"]) == ["audio"], why


@pytest.mark.parametrize("lib", LIBS)
def test_audio_package_plays_to_the_end(lib: str, playbacks: dict[str, dict[str, Any]]) -> None:
    """A 3 s tone packaged with the default audio ladder: the whole master (or MPD) plays to
    the end with the player's own choice of rung, and so does every rung on its own: AAC,
    Opus and FLAC in fMP4 all decode in Chromium through MediaSource."""
    result = playbacks[f"{lib} audio"]
    assert_played_to_the_end(result, AUDIO_S)
    assert names(result["playback"]["levels"]) == sorted(AUDIO_RUNGS), explain(result)
    for name in AUDIO_RUNGS:
        result = playbacks[f"{lib} audio {name}"]
        assert_played_to_the_end(result, AUDIO_S)
        assert result["playback"]["levelsSeen"] == [name], explain(result)


@pytest.mark.parametrize("lib", LIBS)
def test_a_video_of_whole_segments_plays_to_the_end(
    lib: str, playbacks: dict[str, dict[str, Any]]
) -> None:
    """4 s of video in 2 s segments: the video ends on a segment boundary and its AAC track,
    delayed by the encoder's 1024 priming samples, spills 21 ms past it. Left as a third
    segment, that sliver never buffers in hls.js (it places fragments by decode time, the
    browser by presentation time) and playback stalls 40 ms before the end; packaging folds
    it into the segment before."""
    assert_played_to_the_end(playbacks[f"{lib} video-whole"], WHOLE_S)


@pytest.mark.parametrize("lib", LIBS)
def test_audio_of_whole_segments_plays_to_the_end(
    lib: str, playbacks: dict[str, dict[str, Any]]
) -> None:
    """A 4 s tone in 2 s segments: AAC and Opus spill their encoder delay (10.7 and 6.5 ms)
    past the last boundary and FLAC leaves an empty third segment, which hls.js cannot parse
    ("Found no media"); either way it would never end the stream, unless packaging folds the
    tail into the segment before."""
    failures = []
    for name in WHOLE_AUDIO_RUNGS:
        try:
            assert_played_to_the_end(playbacks[f"{lib} audio-whole {name}"], WHOLE_S)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("name", list(SERVED))
def test_a_served_asset_plays_to_the_end(
    name: str, lib: str, served_assets: dict[str, Any], playbacks: dict[str, dict[str, Any]]
) -> None:
    """A video (5 s, 320x180, with audio) and a tone (3 s) uploaded with the CLI to
    `ingestd serve`: the signed URL of the asset's ``hls`` or ``dash`` rendition plays to the
    end, every rung of the service's ladder kept by the player."""
    asset = served_assets[name]
    rendition(asset, lib)  # fails with what went wrong when the asset is not ready
    result = playbacks[f"{lib} served {name}"]
    assert_played_to_the_end(result, SERVED[name])
    rungs = [r["name"] for r in asset["renditions"] if r["kind"] == name]
    assert rungs and names(result["playback"]["levels"]) == sorted(rungs), explain(result)


def test_the_player_packages_are_pinned() -> None:
    """package.json pins exact versions and package-lock.json resolves them (npm ci installs
    exactly what was tested); the page loads the players from node_modules, no CDN."""
    manifest = json.loads((PLAYER_DIR / "package.json").read_text())
    assert manifest["dependencies"] == PINNED
    lock = json.loads((PLAYER_DIR / "package-lock.json").read_text())
    assert lock["lockfileVersion"] >= 2
    for name, version in PINNED.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    for path, entry in lock["packages"].items():
        if path:  # every installed package is checked against its registry checksum
            assert entry.get("integrity", "").startswith("sha512-"), path
    page = (PLAYER_DIR / "player.html").read_text()
    assert "node_modules/hls.js/dist/" in page and "node_modules/dashjs/dist/" in page
    assert "https://" not in page
