"""Poster, storyboard and preview clip of small generated videos, as a player shows them."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from ingestd.errors import SourceRejected
from ingestd.media import Toolchain
from ingestd.media.previews import (
    make_poster,
    make_preview_clip,
    make_storyboard,
)

BLACK_S = 2.0
PICTURE_S = 3.0


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover(None, None, None)


def _ffmpeg(ffmpeg: str, *args: str) -> None:
    subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-nostdin", "-y", *args], check=True)


def _x264(path: Path) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]


@dataclass(frozen=True)
class Sources:
    black_opening: Path  # 2 s black, then 3 s of testsrc2, 320x180, with a tone
    portrait: Path  # 180x320
    rotated: Path  # 320x180 stored, displayed rotated by 90 degrees
    anamorphic: Path  # 160x180 with 2:1 pixels, displayed 320x180
    long_gop_ts: Path  # MPEG-TS, one keyframe, B-frames: a fast seek finds nothing to decode
    audio_only: Path
    empty_video: Path  # a video track with no packets next to a 3 s tone


@pytest.fixture(scope="module")
def sources(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("video")
    src = Sources(
        black_opening=root / "black_opening.mp4",
        portrait=root / "portrait.mp4",
        rotated=root / "rotated.mp4",
        anamorphic=root / "anamorphic.mp4",
        long_gop_ts=root / "long_gop.ts",
        audio_only=root / "audio.m4a",
        empty_video=root / "empty_video.mkv",
    )
    _ffmpeg(
        ffmpeg,
        *("-f", "lavfi", "-i", f"color=black:s=320x180:r=25:d={BLACK_S}"),
        *("-f", "lavfi", "-i", f"testsrc2=s=320x180:r=25:d={PICTURE_S}"),
        *("-f", "lavfi", "-i", f"sine=frequency=440:d={BLACK_S + PICTURE_S}"),
        *("-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a"),
        *("-c:a", "aac", "-g", "25"),
        *_x264(src.black_opening),
    )
    _ffmpeg(ffmpeg, "-f", "lavfi", "-i", "testsrc2=s=180x320:r=25:d=2", *_x264(src.portrait))
    plain = root / "plain.mp4"
    _ffmpeg(ffmpeg, "-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=2", *_x264(plain))
    # The display matrix is an input option; stream copy carries it into the new file.
    _ffmpeg(ffmpeg, "-display_rotation", "90", "-i", str(plain), "-c", "copy", str(src.rotated))
    _ffmpeg(
        ffmpeg, "-f", "lavfi", "-i", "testsrc2=s=160x180:r=25:d=2,setsar=2", *_x264(src.anamorphic)
    )
    _ffmpeg(
        ffmpeg,
        *("-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=5"),
        *("-c:v", "libx264", "-preset", "veryfast", "-g", "250", "-bf", "3", "-f", "mpegts"),
        str(src.long_gop_ts),
    )
    _ffmpeg(ffmpeg, "-f", "lavfi", "-i", "sine=d=3", "-c:a", "aac", str(src.audio_only))
    _ffmpeg(
        ffmpeg,
        *("-i", str(plain), "-f", "lavfi", "-i", "sine=d=3", "-map", "0:v", "-map", "1:a"),
        *("-c:v", "copy", "-bsf:v", "noise=drop=1", "-c:a", "aac", str(src.empty_video)),
    )
    return src


def _luma(path: Path) -> float:
    with Image.open(path) as image:
        return float(ImageStat.Stat(image.convert("L")).mean[0])


# --- poster -------------------------------------------------------------------------------


def test_default_poster_skips_the_black_opening(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    poster = asyncio.run(
        make_poster(tc, sources.black_opening, tmp_path, duration_s=BLACK_S + PICTURE_S)
    )
    assert poster.path == tmp_path / "poster.jpg"
    assert poster.time_s >= BLACK_S
    assert not poster.black
    assert poster.mean_luma > 60
    assert _luma(poster.path) == pytest.approx(poster.mean_luma, abs=0.5)
    with Image.open(poster.path) as image:
        assert image.format == "JPEG"
        assert image.size == (poster.width, poster.height) == (320, 180)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poster.jpg"]  # candidates removed


def test_explicit_time_is_used_even_when_black(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    duration = BLACK_S + PICTURE_S
    dark = asyncio.run(
        make_poster(tc, sources.black_opening, tmp_path / "a", duration_s=duration, at_s=1.0)
    )
    assert dark.time_s == 1.0
    assert dark.black
    assert _luma(dark.path) < 5
    bright = asyncio.run(
        make_poster(tc, sources.black_opening, tmp_path / "b", duration_s=duration, at_s=3.5)
    )
    assert bright.time_s == 3.5
    assert _luma(bright.path) > 60
    late = asyncio.run(
        make_poster(tc, sources.black_opening, tmp_path / "c", duration_s=duration, at_s=99.0)
    )
    assert BLACK_S < late.time_s < duration
    assert late.path.is_file()


def test_portrait_poster_and_width_cap(tc: Toolchain, sources: Sources, tmp_path: Path) -> None:
    full = asyncio.run(make_poster(tc, sources.portrait, tmp_path / "a", duration_s=2))
    assert (full.width, full.height) == (180, 320)
    small = asyncio.run(make_poster(tc, sources.portrait, tmp_path / "b", duration_s=2, width=90))
    with Image.open(small.path) as image:
        assert image.size == (small.width, small.height) == (90, 160)


def test_rotated_source_gives_a_rotated_poster(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    poster = asyncio.run(make_poster(tc, sources.rotated, tmp_path, duration_s=2))
    with Image.open(poster.path) as image:
        assert image.size == (180, 320)


def test_anamorphic_source_gives_square_pixels(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    poster = asyncio.run(make_poster(tc, sources.anamorphic, tmp_path, duration_s=2))
    with Image.open(poster.path) as image:
        assert image.size == (320, 180)


def test_poster_when_a_fast_seek_finds_no_keyframe(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    poster = asyncio.run(make_poster(tc, sources.long_gop_ts, tmp_path / "a", duration_s=5))
    assert poster.time_s == 0.5
    assert _luma(poster.path) > 60
    late = asyncio.run(make_poster(tc, sources.long_gop_ts, tmp_path / "b", duration_s=5, at_s=4.0))
    assert late.time_s == 4.0
    assert _luma(late.path) > 60
    # testsrc2 moves: frames 3.5 s apart differ.
    with Image.open(poster.path) as a, Image.open(late.path) as b:
        difference = ImageStat.Stat(ImageChops.difference(a, b)).mean
    assert max(difference) > 5


# --- storyboard ---------------------------------------------------------------------------

_CUE = re.compile(
    r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n"
    r"(\S+?)#xywh=(\d+),(\d+),(\d+),(\d+)\n"
)


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    sheet: str
    box: tuple[int, int, int, int]


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _parse_vtt(text: str) -> list[Cue]:
    assert text.startswith("WEBVTT\n\n")
    cues = []
    for match in _CUE.finditer(text):
        g = match.groups()
        box = (int(g[9]), int(g[10]), int(g[11]), int(g[12]))
        cues.append(Cue(_seconds(*g[0:4]), _seconds(*g[4:8]), g[8], box))
    assert len(cues) == text.count("-->")
    return cues


def _check_vtt(vtt: Path, duration_s: float, count: int) -> list[Cue]:
    cues = _parse_vtt(vtt.read_text(encoding="utf-8"))
    assert len(cues) == count
    assert cues[0].start_s == 0
    assert cues[-1].end_s == pytest.approx(duration_s, abs=0.001)
    for before, after in itertools.pairwise(cues):
        assert before.end_s == after.start_s
    for cue in cues:
        assert cue.start_s < cue.end_s
        sheet = vtt.parent / cue.sheet
        assert "/" not in cue.sheet and sheet.is_file()
        x, y, w, h = cue.box
        with Image.open(sheet) as image:
            assert x >= 0 and x + w <= image.width
            assert y >= 0 and y + h <= image.height
    return cues


def test_storyboard_grid_and_vtt(tc: Toolchain, sources: Sources, tmp_path: Path) -> None:
    duration = BLACK_S + PICTURE_S
    board = asyncio.run(
        make_storyboard(
            tc,
            sources.black_opening,
            tmp_path,
            duration_s=duration,
            tile_width=80,
            columns=2,
            rows=2,
        )
    )
    # Default interval: 1 s for anything up to ~150 s, so one thumbnail per second here.
    assert board.interval_s == 1.0
    assert board.count == 5
    assert (board.tile_width, board.tile_height) == (80, 46)
    assert [s.tiles for s in board.sheets] == [4, 1]
    with Image.open(board.sheets[0].path) as image:
        assert image.size == (2 * 80, 2 * 46)
    with Image.open(board.sheets[1].path) as image:
        assert image.size == (2 * 80, 46)  # the last sheet keeps only the rows it uses
    cues = _check_vtt(board.vtt, duration, board.count)
    assert [c.sheet for c in cues] == ["sheet_1.jpg"] * 4 + ["sheet_2.jpg"]
    # The thumbnails are the frames their cues start at: black first, the picture after 2 s.
    with Image.open(board.sheets[0].path) as image:
        lumas = [ImageStat.Stat(image.crop(_corners(c.box)).convert("L")).mean[0] for c in cues[:4]]
    assert lumas[0] < 5 and lumas[1] < 5
    assert lumas[2] > 40 and lumas[3] > 40


def _corners(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    return x, y, x + w, y + h


def test_storyboard_interval_not_dividing_the_duration(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    duration = BLACK_S + PICTURE_S
    board = asyncio.run(
        make_storyboard(tc, sources.black_opening, tmp_path, duration_s=duration, interval_s=0.7)
    )
    assert board.interval_s == 0.7
    assert 1 <= board.count <= 8  # 0, 0.7, ... 4.9
    assert len(board.sheets) == 1
    with Image.open(board.sheets[0].path) as image:
        assert image.size == (10 * 160, 90)  # one row of a 10-column grid
    cues = _check_vtt(board.vtt, duration, board.count)
    assert cues[1].start_s == pytest.approx(0.7)


def test_storyboard_stops_at_the_stated_duration(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    """The container may say the video is shorter than the frames it holds (a longer video
    track): no cue may start after the stated duration."""
    board = asyncio.run(
        make_storyboard(tc, sources.black_opening, tmp_path, duration_s=3.5, interval_s=1)
    )
    assert board.count == 4  # 0, 1, 2, 3
    _check_vtt(board.vtt, 3.5, board.count)


def test_storyboard_tiles_follow_the_display_aspect(
    tc: Toolchain, sources: Sources, tmp_path: Path
) -> None:
    wide = asyncio.run(make_storyboard(tc, sources.anamorphic, tmp_path / "a", duration_s=2))
    assert (wide.tile_width, wide.tile_height) == (160, 90)
    tall = asyncio.run(make_storyboard(tc, sources.rotated, tmp_path / "b", duration_s=2))
    assert (tall.tile_width, tall.tile_height) == (160, 284)
    _check_vtt(tall.vtt, 2, tall.count)


# --- preview clip -------------------------------------------------------------------------


def test_preview_clip_from_the_middle(tc: Toolchain, sources: Sources, tmp_path: Path) -> None:
    clip = asyncio.run(
        make_preview_clip(tc, sources.black_opening, tmp_path, duration_s=5, seconds=2, height=120)
    )
    assert clip.start_s == pytest.approx(1.5)
    assert clip.has_audio
    assert (clip.width, clip.height) == (214, 120)
    probed = json.loads(
        subprocess.run(
            [tc.ffprobe, "-v", "error", "-of", "json", "-show_streams", "-show_format", clip.path],
            check=True,
            capture_output=True,
        ).stdout
    )
    codecs = {s["codec_type"]: s for s in probed["streams"]}
    assert codecs["video"]["codec_name"] == "h264"
    assert (codecs["video"]["width"], codecs["video"]["height"]) == (214, 120)
    assert codecs["audio"]["codec_name"] == "aac"
    assert float(probed["format"]["duration"]) == pytest.approx(2.0, abs=0.1)
    data = clip.path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart


def test_preview_clip_without_audio(tc: Toolchain, sources: Sources, tmp_path: Path) -> None:
    clip = asyncio.run(make_preview_clip(tc, sources.portrait, tmp_path, duration_s=2, height=480))
    assert not clip.has_audio
    assert clip.duration_s == 2
    assert (clip.width, clip.height) == (180, 320)  # never upscaled past the source


# --- rejected sources ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["audio_only", "empty_video"])
def test_no_video_frames_are_rejected(
    tc: Toolchain, sources: Sources, tmp_path: Path, name: str
) -> None:
    path: Path = getattr(sources, name)
    with pytest.raises(SourceRejected, match="video"):
        asyncio.run(make_poster(tc, path, tmp_path, duration_s=3))
    with pytest.raises(SourceRejected, match="video"):
        asyncio.run(make_storyboard(tc, path, tmp_path, duration_s=3))
    assert not any(tmp_path.iterdir())


def test_zero_duration_is_rejected(tc: Toolchain, sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(SourceRejected, match="duration"):
        asyncio.run(make_poster(tc, sources.portrait, tmp_path, duration_s=0))
    with pytest.raises(SourceRejected, match="duration"):
        asyncio.run(make_storyboard(tc, sources.portrait, tmp_path, duration_s=0.0))
