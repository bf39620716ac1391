"""The video ladder in one ffmpeg process: aligned CMAF segments, measured manifests."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingestd.media import Toolchain
from ingestd.media.fmp4 import parse_init, parse_segment
from ingestd.media.video import package_video

pytestmark = pytest.mark.anyio
NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    video_bitrate: int
    fps: float
    gop_frames: int


def make_source(ffmpeg: str, path: Path, size: str, *, audio: bool, seconds: int = 5) -> Path:
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
        inputs += ["-af", "aformat=channel_layouts=5.1"]  # surround, to be downmixed
    subprocess.run(
        [ffmpeg, "-v", "error", *inputs, "-c:v", "libx264", "-preset", "ultrafast", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def tc() -> Toolchain:
    return Toolchain.discover(None, None, None)


async def test_two_rungs_and_audio_share_aligned_segments(
    tc: Toolchain, ffmpeg: str, tmp_path: Path
) -> None:
    src = make_source(ffmpeg, tmp_path / "src.mp4", "320x180", audio=True)
    rungs = [Rung("v180", 320, 180, 300_000, 25.0, 50), Rung("v90", 160, 90, 100_000, 25.0, 50)]
    out = tmp_path / "out"
    out.mkdir()
    result = await package_video(
        tc, src, out, rungs, with_audio=True, segment_s=2.0, preset="ultrafast"
    )
    video = [r for r in result.renditions if r.kind == "video"]
    (audio,) = [r for r in result.renditions if r.kind == "audio"]
    assert [(r.width, r.height) for r in video] == [(320, 180), (160, 90)]
    assert video[0].segment_starts == video[1].segment_starts == [0.0, 2.0, 4.0]
    for r in video:
        assert abs(r.duration_s - 5.0) <= 1 / 25  # within one frame of the source
        init = parse_init(out / r.init)
        assert r.codecs == init.codecs and r.codecs.startswith("avc1.")
        assert all(parse_segment(out / s, init).starts_with_sync for s in r.segments)
    assert audio.codecs == "mp4a.40.2"
    assert parse_init(out / audio.init).channels == 2  # 5.1 downmixed once for every variant

    master = (out / "master.m3u8").read_text()
    assert f'CODECS="{video[0].codecs},mp4a.40.2",RESOLUTION=320x180,FRAME-RATE=25.000' in master
    assert f"BANDWIDTH={video[1].bandwidth + audio.bandwidth}," in master
    media = (out / "v90" / "playlist.m3u8").read_text()
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in media and "#EXT-X-PLAYLIST-TYPE:VOD" in media
    root = ET.parse(out / "manifest.mpd").getroot()
    reps = root.findall("d:Period/d:AdaptationSet[@contentType='video']/d:Representation", NS)
    assert [(r.get("width"), r.get("frameRate")) for r in reps] == [("320", "25"), ("160", "25")]
    assert set(result.files) == {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
    }  # nothing left behind, nothing missing


async def test_a_portrait_video_without_audio_still_packages(
    tc: Toolchain, ffmpeg: str, tmp_path: Path
) -> None:
    src = make_source(ffmpeg, tmp_path / "src.mp4", "180x320", audio=False, seconds=3)
    out = tmp_path / "out"
    out.mkdir()
    result = await package_video(
        tc,
        src,
        out,
        [Rung("v180", 180, 320, 200_000, 25.0, 25)],
        with_audio=False,
        segment_s=1.0,
        preset="ultrafast",
    )
    (only,) = result.renditions
    assert (only.kind, only.width, only.height) == ("video", 180, 320)
    assert "EXT-X-MEDIA" not in (out / "master.m3u8").read_text()


async def test_segments_must_be_whole_gops(tc: Toolchain, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole GOPs"):
        await package_video(
            tc,
            tmp_path / "missing.mp4",
            tmp_path,
            [Rung("v", 160, 90, 100_000, 25.0, 50)],
            with_audio=False,
            segment_s=3.0,
        )
