"""Video previews: a poster frame, storyboard sprite sheets indexed by WebVTT, a short clip.

Images show what a player displays: ffmpeg autorotates, and every size below is computed from
the display geometry (rotation and sample aspect ratio applied), so outputs have square pixels
and even dimensions. Every read of the source goes through ``input_args``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.media.process import input_args, run_ffmpeg, stream_ffmpeg
from ingestd.media.toolchain import Toolchain
from ingestd.media.video_probe import probe_video

__all__ = [
    "Poster",
    "PreviewClip",
    "Storyboard",
    "StoryboardSheet",
    "VideoGeometry",
    "default_interval",
    "make_poster",
    "make_preview_clip",
    "make_storyboard",
    "render_storyboard_vtt",
    "video_geometry",
]

POSTER_NAME = "poster.jpg"
STORYBOARD_VTT = "storyboard.vtt"
PREVIEW_NAME = "preview.mp4"
# Where the default poster is looked for, in order: the first frame that is not black wins.
POSTER_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# blackdetect's defaults: a picture is black when 98 % of its pixels are darker than 10 %.
DARK_PIXEL_LUMA = 25
BLACK_PIXEL_RATIO = 0.98
TARGET_THUMBNAILS = 100
_POSTER_QSCALE = "3"  # mjpeg: 2 (best) .. 31
_SHEET_QUALITY = 80  # Pillow JPEG quality
# A seek this close to the end may land after the last frame and decode nothing.
_END_MARGIN_S = 0.5

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoGeometry:
    """The first video stream that is not cover art, as a player would display it."""

    stream_index: int
    display_width: int  # sample aspect ratio and rotation applied
    display_height: int
    duration_s: float | None  # the stream's own duration, when the container states one
    has_audio: bool


@dataclass(frozen=True)
class Poster:
    path: Path
    time_s: float
    width: int
    height: int
    mean_luma: float  # 0..255 over the written image
    black: bool  # true only when every candidate was black (or ``at_s`` pointed at black)


@dataclass(frozen=True)
class StoryboardSheet:
    path: Path
    width: int
    height: int
    tiles: int


@dataclass(frozen=True)
class Storyboard:
    vtt: Path
    sheets: tuple[StoryboardSheet, ...]
    interval_s: float
    tile_width: int
    tile_height: int
    columns: int
    rows: int
    count: int  # thumbnails written, one WebVTT cue each


@dataclass(frozen=True)
class PreviewClip:
    path: Path
    start_s: float
    duration_s: float
    width: int
    height: int
    has_audio: bool


def _even(value: float) -> int:
    return max(2, int(value / 2 + 0.5) * 2)


def _fit(video: VideoGeometry, *, max_width: int | None = None) -> tuple[int, int]:
    """Square-pixel size with the display aspect ratio, at most ``max_width`` wide."""
    width = float(video.display_width)
    if max_width is not None:
        width = min(width, max_width)
    return _even(width), _even(width * video.display_height / video.display_width)


def _check_duration(duration_s: float) -> None:
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise SourceRejected("the video has no duration")


def _span(duration_s: float, video: VideoGeometry) -> float:
    # The video stream may end before the container (a longer audio track, say).
    if video.duration_s:
        return min(duration_s, video.duration_s)
    return duration_s


def _clamp(at_s: float, span_s: float) -> float:
    latest = max(0.0, span_s - min(_END_MARGIN_S, span_s / 2))
    return round(min(max(at_s, 0.0), latest), 3)


async def video_geometry(tc: Toolchain, src: Path) -> VideoGeometry:
    """What previews need of a source, from the video probe (``SourceRejected`` without a
    video stream that has frames)."""
    probed = await probe_video(tc, src)
    video = probed.video
    if video is None:
        raise SourceRejected("no video stream found")
    duration = video.duration_s or probed.duration_s
    return VideoGeometry(
        stream_index=video.index,
        display_width=video.display_width,
        display_height=video.display_height,
        duration_s=duration if duration and duration > 0 else None,
        has_audio=probed.has_audio,
    )


# --- poster -------------------------------------------------------------------------------


def _luma(path: Path) -> tuple[float, bool]:
    """Mean luma (0..255) and whether the picture is black by blackdetect's rule."""
    with Image.open(path) as image:
        histogram = image.convert("L").histogram()
    pixels = sum(histogram) or 1
    mean = sum(level * count for level, count in enumerate(histogram)) / pixels
    dark = sum(histogram[: DARK_PIXEL_LUMA + 1]) / pixels
    return mean, dark >= BLACK_PIXEL_RATIO


def _measure(paths: Sequence[Path]) -> list[tuple[float, bool] | None]:
    return [_luma(path) if path.is_file() else None for path in paths]


def _pick(measured: Sequence[tuple[float, bool] | None]) -> int:
    """The first candidate that is not black, else the brightest one."""
    found = [(i, m) for i, m in enumerate(measured) if m is not None]
    if not found:
        raise SourceRejected("no video frame could be decoded at the poster times")
    for i, (_, black) in found:
        if not black:
            return i
    return max(found, key=lambda item: item[1][0])[0]


def _poster_times(span_s: float) -> list[float]:
    times: list[float] = []
    for fraction in POSTER_FRACTIONS:
        time_s = _clamp(span_s * fraction, span_s)
        if time_s not in times:
            times.append(time_s)
    return times


def _seeking_graph(src: Path, stream: int, times: Sequence[float], scale: str) -> list[str]:
    """One input per time, each seeking on its own: a fast seek to the keyframe before, then
    decoding up to the exact time. Outputs ``[p0]``, ``[p1]`` ..."""
    args: list[str] = []
    for time_s in times:
        args += ["-ss", f"{time_s:.3f}", *input_args(src)]
    graph = ";".join(f"[{i}:{stream}]{scale}[p{i}]" for i in range(len(times)))
    return [*args, "-filter_complex", graph]


def _decoding_graph(src: Path, stream: int, times: Sequence[float], scale: str) -> list[str]:
    """One input decoded from the start up to the last time, each branch trimmed to its time."""
    branches = "".join(f"[s{i}]" for i in range(len(times)))
    trims = [f"[s{i}]trim=start={t:.3f},{scale}[p{i}]" for i, t in enumerate(times)]
    graph = ";".join([f"[0:{stream}]split={len(times)}{branches}", *trims])
    return [*input_args(src), "-filter_complex", graph]


def _why(exc: TranscodeFailed) -> str:
    return f"status {exc.details.get('returncode')}"


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def make_poster(
    tc: Toolchain,
    src: Path,
    out_dir: Path,
    *,
    duration_s: float,
    at_s: float | None = None,
    width: int | None = None,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> Poster:
    """Writes ``poster.jpg``: the frame at ``at_s`` (clamped inside the video) or, by default,
    the first frame that is not black among 10 %, 20 % ... 60 % of the duration, all candidates
    decoded in one ffmpeg run. ``width`` caps the width."""
    _check_duration(duration_s)
    if width is not None and width < 2:
        raise ValueError("width must be at least 2")
    video = await video_geometry(tc, src)
    span = _span(duration_s, video)
    times = [_clamp(at_s, span)] if at_s is not None else _poster_times(span)
    out_w, out_h = _fit(video, max_width=width)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    candidates = [out_dir / f".poster-{i}.jpg" for i in range(len(times))]
    scale = f"scale={out_w}:{out_h},setsar=1"
    outputs: list[str] = []
    for i, path in enumerate(candidates):
        outputs += ["-map", f"[p{i}]", "-frames:v", "1", "-q:v", _POSTER_QSCALE]
        outputs += ["-f", "image2", "-update", "1", os.fspath(path)]
    try:
        try:
            args = _seeking_graph(src, video.stream_index, times, scale)
            await run_ffmpeg(tc, [*args, *outputs], timeout_s=timeout_s, logger=logger)
        except TranscodeFailed as exc:
            # Without a usable index (MPEG-TS, a long GOP) a fast seek can land where nothing
            # decodes: decode from the start instead, exact but slower.
            (logger or _log).info(
                "poster: fast seek failed (%s), decoding from the start", _why(exc)
            )
            args = _decoding_graph(src, video.stream_index, times, scale)
            await run_ffmpeg(tc, [*args, *outputs], timeout_s=timeout_s, logger=logger)
        measured = await asyncio.to_thread(_measure, candidates)
        chosen = _pick(measured)
        path = out_dir / POSTER_NAME
        await asyncio.to_thread(os.replace, candidates[chosen], path)
    finally:
        await asyncio.to_thread(_remove, candidates)
    mean, black = measured[chosen] or (0.0, True)
    (logger or _log).debug("poster at %.3f s, mean luma %.1f", times[chosen], mean)
    return Poster(
        path=path,
        time_s=times[chosen],
        width=out_w,
        height=out_h,
        mean_luma=round(mean, 2),
        black=black,
    )


# --- storyboard ---------------------------------------------------------------------------


def default_interval(duration_s: float) -> float:
    """Whole seconds, at least 1, so that a video gets about ``TARGET_THUMBNAILS`` thumbnails."""
    return float(max(1, round(duration_s / TARGET_THUMBNAILS)))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _thumbnail_limit(duration_s: float, interval_s: float) -> int:
    """How many thumbnails start strictly inside the duration (cue starts in whole ms)."""
    limit = max(1, math.ceil(duration_s / interval_s))
    while limit > 1 and _ms((limit - 1) * interval_s) >= _ms(duration_s):
        limit -= 1
    return limit


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def render_storyboard_vtt(
    count: int,
    *,
    duration_s: float,
    interval_s: float,
    tile_width: int,
    tile_height: int,
    columns: int,
    rows: int,
    sheet_name: str = "sheet_{}.jpg",
) -> str:
    """One cue per thumbnail; the cues are contiguous and the last one ends at the duration."""
    per_sheet = columns * rows
    lines = ["WEBVTT", ""]
    for i in range(count):
        start = _ms(i * interval_s)
        end = _ms(duration_s) if i == count - 1 else _ms((i + 1) * interval_s)
        sheet, slot = divmod(i, per_sheet)
        row, column = divmod(slot, columns)
        x, y = column * tile_width, row * tile_height
        lines += [
            f"{_timestamp(start)} --> {_timestamp(end)}",
            f"{sheet_name.format(sheet + 1)}#xywh={x},{y},{tile_width},{tile_height}",
            "",
        ]
    return "\n".join(lines)


def _save_jpeg(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="JPEG", quality=_SHEET_QUALITY, optimize=True)
    os.replace(tmp, path)


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _SheetBuilder:
    """Pastes raw RGB thumbnails, fed chunk by chunk, into sheets; a full sheet is saved on a
    worker thread at once, so memory holds about one sheet whatever the length of the video."""

    def __init__(self, out_dir: Path, tile: tuple[int, int], grid: tuple[int, int], limit: int):
        self._out_dir = out_dir
        self._tile_w, self._tile_h = tile
        self._columns, self._rows = grid
        self._frame_bytes = self._tile_w * self._tile_h * 3
        self._limit = limit
        self._pending = bytearray()
        self._sheet: Image.Image | None = None
        self._in_sheet = 0
        self._saves: list[asyncio.Future[None]] = []
        self.count = 0
        self.sheets: list[StoryboardSheet] = []

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        while len(self._pending) >= self._frame_bytes:
            frame = bytes(self._pending[: self._frame_bytes])
            del self._pending[: self._frame_bytes]
            # The fps filter may emit one frame at the very end: it starts no cue, drop it.
            if self.count < self._limit:
                self._add(frame)

    def _add(self, frame: bytes) -> None:
        if self._sheet is None:
            size = (self._columns * self._tile_w, self._rows * self._tile_h)
            self._sheet = Image.new("RGB", size)
        row, column = divmod(self._in_sheet, self._columns)
        thumbnail = Image.frombytes("RGB", (self._tile_w, self._tile_h), frame)
        self._sheet.paste(thumbnail, (column * self._tile_w, row * self._tile_h))
        self._in_sheet += 1
        self.count += 1
        if self._in_sheet == self._columns * self._rows:
            self._flush()

    def _flush(self) -> None:
        if self._sheet is None:
            return
        used_rows = math.ceil(self._in_sheet / self._columns)
        sheet = self._sheet.crop((0, 0, self._sheet.width, used_rows * self._tile_h))
        path = self._out_dir / f"sheet_{len(self.sheets) + 1}.jpg"
        self.sheets.append(StoryboardSheet(path, sheet.width, sheet.height, self._in_sheet))
        loop = asyncio.get_running_loop()
        self._saves.append(loop.run_in_executor(None, _save_jpeg, sheet, path))
        self._sheet, self._in_sheet = None, 0

    async def finish(self) -> None:
        self._flush()
        await self.wait()

    async def wait(self) -> None:
        await asyncio.gather(*self._saves)


async def make_storyboard(
    tc: Toolchain,
    src: Path,
    out_dir: Path,
    *,
    duration_s: float,
    interval_s: float | None = None,
    tile_width: int = 160,
    columns: int = 10,
    rows: int = 10,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> Storyboard:
    """Writes ``sheet_1.jpg``, ``sheet_2.jpg`` ... (``columns`` x ``rows`` thumbnails each, the
    last one cut to the rows it uses) and ``storyboard.vtt`` pointing into them with relative
    ``#xywh`` URLs. One thumbnail every ``interval_s`` (default :func:`default_interval`),
    decoded in a single ffmpeg pass."""
    _check_duration(duration_s)
    if tile_width < 2 or columns < 1 or rows < 1:
        raise ValueError("tile_width must be at least 2, columns and rows at least 1")
    if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError("interval_s must be positive")
    interval = interval_s if interval_s is not None else default_interval(duration_s)
    video = await video_geometry(tc, src)
    # Always the requested width (a small source is upscaled) so that the grid stays regular.
    tile_w = _even(tile_width)
    tile_h = _even(tile_w * video.display_height / video.display_width)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    builder = _SheetBuilder(
        out_dir, (tile_w, tile_h), (columns, rows), _thumbnail_limit(duration_s, interval)
    )
    try:
        await stream_ffmpeg(
            tc,
            [
                *("-v", "error", *input_args(src), "-map", f"0:{video.stream_index}"),
                *("-vf", f"fps=1/{interval:.6g},scale={tile_w}:{tile_h},setsar=1"),
                *("-pix_fmt", "rgb24", "-f", "rawvideo", "-"),
            ],
            builder.feed,
            timeout_s=timeout_s,
            logger=logger,
        )
    finally:
        await builder.wait()
    await builder.finish()
    if builder.count == 0:
        raise SourceRejected("no video frame could be decoded for the storyboard")
    vtt = out_dir / STORYBOARD_VTT
    text = render_storyboard_vtt(
        builder.count,
        duration_s=duration_s,
        interval_s=interval,
        tile_width=tile_w,
        tile_height=tile_h,
        columns=columns,
        rows=rows,
    )
    await asyncio.to_thread(_write_text, text, vtt)
    return Storyboard(
        vtt=vtt,
        sheets=tuple(builder.sheets),
        interval_s=interval,
        tile_width=tile_w,
        tile_height=tile_h,
        columns=columns,
        rows=rows,
        count=builder.count,
    )


# --- preview clip -------------------------------------------------------------------------


async def make_preview_clip(
    tc: Toolchain,
    src: Path,
    out_dir: Path,
    *,
    duration_s: float,
    seconds: float = 6.0,
    height: int = 240,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> PreviewClip:
    """Writes ``preview.mp4``: ``seconds`` from the middle of the video, H.264 at most
    ``height`` lines (never upscaled), AAC stereo when the source has audio, faststart."""
    _check_duration(duration_s)
    if not seconds > 0 or height < 2:
        raise ValueError("seconds must be positive and height at least 2")
    video = await video_geometry(tc, src)
    span = _span(duration_s, video)
    length = round(min(seconds, span), 3)
    start = round(max(0.0, (span - length) / 2), 3)
    out_h = _even(min(height, video.display_height))
    out_w = _even(out_h * video.display_width / video.display_height)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    path = out_dir / PREVIEW_NAME
    tmp = out_dir / f".{PREVIEW_NAME}.tmp"
    encode = ["-map", f"0:{video.stream_index}", "-map_metadata", "-1", "-map_chapters", "-1"]
    encode += ["-vf", f"scale={out_w}:{out_h},setsar=1,format=yuv420p"]
    encode += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-g", "48"]
    if video.has_audio:
        encode += ["-map", "0:a:0", "-c:a", "aac", "-b:a", "96k", "-ac", "2"]
    encode += ["-t", f"{length:.3f}", "-movflags", "+faststart", "-f", "mp4", os.fspath(tmp)]
    seek = ["-ss", f"{start:.3f}"]
    try:
        try:
            args = [*seek, *input_args(src), *encode]
            await run_ffmpeg(tc, args, duration_s=length, timeout_s=timeout_s, logger=logger)
        except TranscodeFailed as exc:
            # As for the poster: when a fast seek finds nothing to decode, seek by decoding.
            (logger or _log).info(
                "preview: fast seek failed (%s), decoding from the start", _why(exc)
            )
            args = [*input_args(src), *seek, *encode]
            await run_ffmpeg(tc, args, duration_s=length, timeout_s=timeout_s, logger=logger)
        await asyncio.to_thread(os.replace, tmp, path)
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
    return PreviewClip(
        path=path,
        start_s=start,
        duration_s=length,
        width=out_w,
        height=out_h,
        has_audio=video.has_audio,
    )
