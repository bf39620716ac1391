"""Probing generated video sources: geometry, rotation, frame rate, depth, HDR, audio, refusals."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ingestd.errors import SourceRejected
from ingestd.media import Toolchain
from ingestd.media.ladder import DEFAULT_PROFILE, plan_ladder
from ingestd.media.video_probe import VideoProbe, VideoStreamInfo, probe_video
from ingestd.testing.media import make_text_file, make_video


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover(None, None, None)


def run(tc: Toolchain, path: Path, **limits: Any) -> VideoProbe:
    return asyncio.run(probe_video(tc, path, **limits))


def video_of(result: VideoProbe) -> VideoStreamInfo:
    assert result.video is not None
    return result.video


def test_landscape_16_9(tc: Toolchain, tmp_path: Path) -> None:
    result = run(tc, make_video(tc.ffmpeg, tmp_path / "a.mp4", seconds=1))
    video = video_of(result)
    assert (video.codec, video.width, video.height) == ("h264", 320, 180)
    assert (video.display_width, video.display_height, video.rotation) == (320, 180, 0)
    assert video.sample_aspect_ratio == 1
    assert (video.frame_rate, video.fps, video.frame_count) == (Fraction(25), 25.0, 25)
    assert not video.variable_frame_rate and not video.interlaced
    assert (video.pix_fmt, video.bit_depth, video.hdr) == ("yuv420p", 8, None)
    assert result.duration_s == pytest.approx(1.0, abs=0.05)
    assert "mp4" in result.format_name and result.size > 0
    assert result.has_video and result.has_audio
    (audio,) = result.audio
    assert (audio.codec, audio.channels, audio.channel_layout, audio.sample_rate) == (
        "aac",
        2,
        "stereo",
        48000,
    )
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["video"]["frame_rate"] == "25/1"
    assert summary["video"]["sample_aspect_ratio"] == "1:1"
    assert summary["has_audio"] is True


def test_portrait_9_16(tc: Toolchain, tmp_path: Path) -> None:
    path = make_video(tc.ffmpeg, tmp_path / "p.mkv", seconds=1, width=180, height=320)
    video = video_of(run(tc, path))
    assert (video.display_width, video.display_height) == (180, 320)
    assert video.frame_count is None  # Matroska does not count frames
    assert video.duration_s == pytest.approx(1.0, abs=0.05)


def test_rotation_90_is_planned_as_portrait(tc: Toolchain, tmp_path: Path) -> None:
    path = make_video(tc.ffmpeg, tmp_path / "r.mp4", seconds=1, width=640, height=360, rotate=90)
    video = video_of(run(tc, path))
    assert (video.width, video.height, video.rotation) == (640, 360, 90)
    assert (video.display_width, video.display_height) == (360, 640)
    planned = plan_ladder(
        DEFAULT_PROFILE,
        display_width=video.display_width,
        display_height=video.display_height,
        fps=video.fps,
    )
    assert [(r.width, r.height) for r in planned] == [(360, 640), (234, 416)]


def test_anamorphic_source_is_stretched_by_its_sample_aspect_ratio(
    tc: Toolchain, tmp_path: Path
) -> None:
    anamorphic = ["-aspect", "16:9"]
    path = make_video(tc.ffmpeg, tmp_path / "s.mp4", width=240, height=180, extra_args=anamorphic)
    video = video_of(run(tc, path))
    assert video.sample_aspect_ratio == Fraction(4, 3)
    assert (video.display_width, video.display_height) == (320, 180)


def test_odd_dimensions(tc: Toolchain, tmp_path: Path) -> None:
    path = make_video(
        tc.ffmpeg, tmp_path / "o.mkv", seconds=1, width=321, height=181, pix_fmt="yuv444p"
    )
    video = video_of(run(tc, path))
    assert (video.width, video.height) == (321, 181)
    (rung,) = plan_ladder(DEFAULT_PROFILE, display_width=321, display_height=181, fps=video.fps)
    assert (rung.width, rung.height) == (320, 180)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate(tc: Toolchain, tmp_path: Path, suffix: str) -> None:
    vfr = video_of(run(tc, make_video(tc.ffmpeg, tmp_path / f"v{suffix}", vfr=True)))
    assert vfr.variable_frame_rate
    ntsc = make_video(tc.ffmpeg, tmp_path / f"c{suffix}", seconds=1, fps="30000/1001")
    cfr = video_of(run(tc, ntsc))
    assert not cfr.variable_frame_rate
    assert cfr.frame_rate == Fraction(30000, 1001)


def test_10_bit(tc: Toolchain, tmp_path: Path) -> None:
    path = make_video(tc.ffmpeg, tmp_path / "d.mp4", seconds=1, pix_fmt="yuv420p10le")
    video = video_of(run(tc, path))
    assert (video.codec, video.pix_fmt, video.bit_depth, video.hdr) == (
        "h264",
        "yuv420p10le",
        10,
        None,
    )


@pytest.mark.parametrize(("hdr", "transfer"), [("pq", "smpte2084"), ("hlg", "arib-std-b67")])
def test_hdr_tags(tc: Toolchain, tmp_path: Path, hdr: str, transfer: str) -> None:
    path = make_video(tc.ffmpeg, tmp_path / "h.mp4", seconds=1, pix_fmt="yuv420p10le", hdr=hdr)
    video = video_of(run(tc, path))
    assert (video.hdr, video.color_transfer) == (hdr, transfer)
    assert (video.color_primaries, video.color_space) == ("bt2020", "bt2020nc")


def test_no_audio(tc: Toolchain, tmp_path: Path) -> None:
    result = run(tc, make_video(tc.ffmpeg, tmp_path / "n.mp4", seconds=1, audio_channels=None))
    assert result.has_video and not result.has_audio
    assert result.audio == ()


def test_5_1_audio(tc: Toolchain, tmp_path: Path) -> None:
    result = run(tc, make_video(tc.ffmpeg, tmp_path / "f.mkv", seconds=1, audio_channels=6))
    (audio,) = result.audio
    assert (audio.channels, audio.channel_layout) == (6, "5.1")


def test_interlaced(tc: Toolchain, tmp_path: Path) -> None:
    path = make_video(tc.ffmpeg, tmp_path / "i.mp4", seconds=1, interlaced=True)
    video = video_of(run(tc, path))
    assert (video.field_order, video.interlaced) == ("tt", True)


def test_zero_frame_video_stream_is_rejected(tc: Toolchain, tmp_path: Path) -> None:
    # The encoder's packets are all dropped: the stream is declared but holds no frames.
    path = make_video(
        tc.ffmpeg, tmp_path / "z.mkv", seconds=1, extra_args=["-bsf:v", "noise=drop=1"]
    )
    with pytest.raises(SourceRejected, match="video stream has no frames"):
        run(tc, path)


def test_text_file_is_rejected(tc: Toolchain, tmp_path: Path) -> None:
    with pytest.raises(SourceRejected, match="unreadable media"):
        run(tc, make_text_file(tmp_path / "t.mp4"))


@pytest.mark.parametrize("name", ["list.m3u8", "video.mp4"])
@pytest.mark.parametrize("target", ["file:///etc/passwd", "/etc/passwd", "LOCAL_VIDEO"])
def test_playlist_is_rejected_without_reading_its_segments(
    tc: Toolchain, tmp_path: Path, name: str, target: str
) -> None:
    if target == "LOCAL_VIDEO":
        # A segment the demuxer would happily read: only the format whitelist stops it.
        target = str(make_video(tc.ffmpeg, tmp_path / "inner.ts", seconds=1))
    playlist = tmp_path / name
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(SourceRejected, match="unreadable media") as caught:
        run(tc, playlist)
    assert "root:" not in caught.value.message
    assert "/bin/" not in caught.value.message


def test_limits(tc: Toolchain, tmp_path: Path) -> None:
    path = make_video(tc.ffmpeg, tmp_path / "l.mp4", seconds=2, width=320, height=180)
    assert run(tc, path, max_duration_s=3, max_width=320, max_height=180).has_video
    with pytest.raises(SourceRejected, match=r"2\.0 s long; the limit is 1\.5 s"):
        run(tc, path, max_duration_s=1.5)
    with pytest.raises(SourceRejected, match="320x180; the limit is 256x256"):
        run(tc, path, max_width=256, max_height=256)
    # A limit is a size in either orientation: a 180x320 limit takes a 320x180 picture.
    assert run(tc, path, max_width=180, max_height=320).has_video
