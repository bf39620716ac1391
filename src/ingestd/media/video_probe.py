"""Read what the video pipeline needs to know about a source, with one ffprobe run.

Variable frame rate is detected from packet timestamps, not from ``r_frame_rate`` versus
``avg_frame_rate``: Matroska reports both as the nominal rate for a clip with dropped frames.
The same run lists the video packets of the first ``SCAN_S`` seconds (demuxing only, no
decoding: tens of milliseconds for a 1080p file); a clip is VFR when a frame interval differs
from the median interval by more than a tenth of it (and more than the timestamp rounding of
the container).

Only video container demuxers are allowed (``VIDEO_DEMUXERS``): the protocol whitelist of
:func:`~ingestd.media.process.input_args` still lets an HLS playlist or a concat list open other
local files through ``file``, so playlists must not be demuxed at all.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import statistics
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.media.ladder import display_size
from ingestd.media.probe import AudioStreamInfo, as_float, as_int
from ingestd.media.process import input_args, run_ffprobe_json
from ingestd.media.toolchain import Toolchain

__all__ = [
    "SCAN_S",
    "VIDEO_DEMUXERS",
    "VideoProbe",
    "VideoStreamInfo",
    "bit_depth",
    "probe_video",
]

SCAN_S = 10
# Demuxers of real video containers: MP4/MOV/3GP, Matroska/WebM, MPEG-TS, AVI, MXF, FLV,
# MPEG-PS, ASF/WMV, Ogg, IVF. No playlists (hls, concat), image sequences or raw devices.
VIDEO_DEMUXERS = "mov,matroska,mpegts,avi,mxf,flv,mpeg,asf,ogg,ivf"
_INTERLACED = {"tt", "bb", "tb", "bt"}
_VFR_RELATIVE_TOLERANCE = 0.1
_REORDER_DEPTH = 16  # frames that may still follow in decode order when dts is unknown

Hdr = Literal["pq", "hlg"]
_HDR: dict[str, Hdr] = {"smpte2084": "pq", "arib-std-b67": "hlg"}


@dataclass(frozen=True)
class VideoStreamInfo:
    """The first video stream. ``rotation`` is the clockwise turn, in degrees, that a player
    applies to the coded picture (the legacy ``rotate`` tag's sense; a display matrix
    "rotation of -90 degrees" is 90). ``display_*`` are after sample aspect ratio and rotation.
    """

    index: int
    codec: str
    width: int
    height: int
    sample_aspect_ratio: Fraction
    display_width: int
    display_height: int
    rotation: int
    frame_rate: Fraction
    fps: float
    variable_frame_rate: bool
    pix_fmt: str | None
    bit_depth: int | None
    color_transfer: str | None
    color_primaries: str | None
    color_space: str | None
    hdr: Hdr | None
    field_order: str | None
    interlaced: bool
    frame_count: int | None
    duration_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "sample_aspect_ratio": f"{self.sample_aspect_ratio.numerator}:"
            f"{self.sample_aspect_ratio.denominator}",
            "display_width": self.display_width,
            "display_height": self.display_height,
            "rotation": self.rotation,
            "frame_rate": f"{self.frame_rate.numerator}/{self.frame_rate.denominator}",
            "fps": self.fps,
            "variable_frame_rate": self.variable_frame_rate,
            "pix_fmt": self.pix_fmt,
            "bit_depth": self.bit_depth,
            "color_transfer": self.color_transfer,
            "color_primaries": self.color_primaries,
            "color_space": self.color_space,
            "hdr": self.hdr,
            "field_order": self.field_order,
            "interlaced": self.interlaced,
            "frame_count": self.frame_count,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class VideoProbe:
    format_name: str
    duration_s: float
    size: int
    bit_rate: int | None
    video: VideoStreamInfo | None
    audio: tuple[AudioStreamInfo, ...]

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_name": self.format_name,
            "duration_s": self.duration_s,
            "size": self.size,
            "bit_rate": self.bit_rate,
            "has_video": self.has_video,
            "has_audio": self.has_audio,
            "video": self.video.to_dict() if self.video else None,
            "audio": [
                {
                    "index": a.index,
                    "codec": a.codec,
                    "channels": a.channels,
                    "channel_layout": a.channel_layout,
                    "sample_rate": a.sample_rate,
                }
                for a in self.audio
            ],
        }


def _ratio(value: Any) -> Fraction | None:
    """ "30000/1001" or "16:9" → Fraction; "0/0", "0:1" and garbage → None."""
    if not isinstance(value, str):
        return None
    num, _, den = value.replace(":", "/").partition("/")
    try:
        numerator, denominator = int(num), int(den or "1")
    except ValueError:
        return None
    if numerator <= 0 or denominator <= 0:
        return None
    return Fraction(numerator, denominator)


def _clock(value: Any) -> float | None:
    """Matroska's per-stream ``DURATION`` tag, "HH:MM:SS.fffffffff"."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", value.strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if side.get("side_data_type") == "Display Matrix" and "rotation" in side:
            try:
                counter_clockwise = float(side["rotation"])
            except (TypeError, ValueError):
                break
            return (-round(counter_clockwise / 90) * 90) % 360
    try:
        return (round(float(stream["tags"]["rotate"]) / 90) * 90) % 360
    except (KeyError, TypeError, ValueError):
        return 0


def bit_depth(pix_fmt: str | None, bits_per_raw_sample: int | None = None) -> int | None:
    """Bits per component: yuv420p → 8, yuv420p10le → 10, p010le → 10, gray12le → 12."""
    if not pix_fmt:
        return bits_per_raw_sample
    for pattern in (r"p(\d{1,2})(?:le|be)", r"gray(\d{1,2})(?:le|be)", r"p0(\d{2})(?:le|be)"):
        match = re.search(pattern + "$", pix_fmt)
        if match:
            return int(match.group(1))
    if re.search(r"(?:48|64)(?:le|be)$", pix_fmt):
        return 16  # rgb48, rgba64, bgra64
    if re.search(r"(?:x2rgb10|x2bgr10|y210|v210)", pix_fmt):
        return 10
    return 8


def _is_vfr(timestamps: list[int], decode_limit: int | None) -> bool:
    """``timestamps``: presentation times (stream time base) of the video packets read.

    Only times up to the last decode timestamp read are complete: a packet not read yet may
    still be presented before a frame that was.
    """
    ordered = sorted(set(timestamps))
    if decode_limit is not None:
        ordered = [pts for pts in ordered if pts <= decode_limit]
    elif len(ordered) > 2 * _REORDER_DEPTH:
        ordered = ordered[:-_REORDER_DEPTH]
    intervals = [b - a for a, b in itertools.pairwise(ordered)]
    if len(intervals) < 2:
        return False
    typical = statistics.median(intervals)
    # Millisecond time bases round 29.97 fps to 33 and 34: allow more than one tick.
    tolerance = max(typical * _VFR_RELATIVE_TOLERANCE, 1.5)
    return any(abs(interval - typical) > tolerance for interval in intervals)


def _video_stream(
    stream: dict[str, Any], packets: list[dict[str, Any]], format_duration: float | None
) -> VideoStreamInfo:
    index = as_int(stream.get("index")) or 0
    width, height = as_int(stream.get("width")) or 0, as_int(stream.get("height")) or 0
    if width <= 0 or height <= 0:
        raise SourceRejected(f"the video stream has no picture size ({width}x{height})")
    own = [p for p in packets if as_int(p.get("stream_index")) == index]
    pts = [v for v in (as_int(p.get("pts")) for p in own) if v is not None]
    dts = [v for v in (as_int(p.get("dts")) for p in own) if v is not None]
    frame_count = as_int(stream.get("nb_frames"))
    if not own or frame_count == 0:
        raise SourceRejected(f"the video stream has no frames in its first {SCAN_S} s")
    duration = as_float(stream.get("duration"))
    if duration is None:
        duration = _clock((stream.get("tags") or {}).get("DURATION"))
    if duration is None:
        duration = format_duration
    if not duration:
        raise SourceRejected("the video stream has no duration")
    frame_rate = _ratio(stream.get("avg_frame_rate")) or _ratio(stream.get("r_frame_rate"))
    if frame_rate is None:
        raise SourceRejected("the video stream has no frame rate")
    sar = _ratio(stream.get("sample_aspect_ratio")) or Fraction(1)
    rotation = _rotation(stream)
    display_width, display_height = display_size(width, height, sar, rotation)
    pix_fmt = stream.get("pix_fmt") or None
    transfer = stream.get("color_transfer") or None
    field_order = stream.get("field_order") or None
    return VideoStreamInfo(
        index=index,
        codec=str(stream.get("codec_name", "unknown")),
        width=width,
        height=height,
        sample_aspect_ratio=sar,
        display_width=display_width,
        display_height=display_height,
        rotation=rotation,
        frame_rate=frame_rate,
        fps=float(frame_rate),
        variable_frame_rate=_is_vfr(pts, max(dts) if dts else None),
        pix_fmt=pix_fmt,
        bit_depth=bit_depth(pix_fmt, as_int(stream.get("bits_per_raw_sample"))),
        color_transfer=transfer,
        color_primaries=stream.get("color_primaries") or None,
        color_space=stream.get("color_space") or None,
        hdr=_hdr(transfer),
        field_order=field_order,
        interlaced=field_order in _INTERLACED,
        frame_count=frame_count,
        duration_s=duration,
    )


def _hdr(transfer: str | None) -> Hdr | None:
    return _HDR.get(transfer or "")


def _audio_stream(stream: dict[str, Any]) -> AudioStreamInfo:
    return AudioStreamInfo(
        index=as_int(stream.get("index")) or 0,
        codec=str(stream.get("codec_name", "unknown")),
        sample_rate=as_int(stream.get("sample_rate")) or 0,
        channels=as_int(stream.get("channels")) or 0,
        channel_layout=stream.get("channel_layout") or None,
        bits_per_sample=None,
        duration_s=as_float(stream.get("duration")),
        sample_fmt=stream.get("sample_fmt") or None,
    )


def _reason(message: str) -> str:
    lines = [line.strip() for line in message.splitlines()[1:] if line.strip()]
    if any("not on whitelist" in line for line in lines):
        return "not a video container (playlists and image sequences are not accepted)"
    text = lines[0] if lines else message
    return re.sub(r"^\[[^]]*\]\s*", "", text)  # drop ffmpeg's "[demuxer @ 0x…]" prefix


def _fits(width: int, height: int, max_width: int | None, max_height: int | None) -> bool:
    """Either orientation: a 2160x3840 portrait clip fits a 3840x2160 limit."""
    limit_w = max_width if max_width is not None else float("inf")
    limit_h = max_height if max_height is not None else float("inf")
    return (width <= limit_w and height <= limit_h) or (height <= limit_w and width <= limit_h)


async def probe_video(
    tc: Toolchain,
    path: Path,
    *,
    max_duration_s: float | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    timeout_s: float | None = 120.0,
) -> VideoProbe:
    """Probes a video master. Raises ``SourceRejected`` with a readable reason when the file
    is not a readable video container, has no streams, a video stream without frames,
    duration or size, or is longer or larger than the limits (which apply to the display
    size, in either orientation)."""
    args = [
        "-show_format",
        "-show_streams",
        "-show_entries",
        "packet=stream_index,pts,dts",
        "-read_intervals",
        f"%+{SCAN_S}",
        *input_args(path, formats=VIDEO_DEMUXERS),
    ]
    try:
        raw = await run_ffprobe_json(tc, args, timeout_s=timeout_s)
    except TranscodeFailed as exc:
        raise SourceRejected(f"unreadable media: {_reason(exc.message)}") from exc
    fmt = raw.get("format") or {}
    if not fmt:
        raise SourceRejected("unreadable media: ffprobe found no container")
    streams = raw.get("streams") or []
    if not streams:
        raise SourceRejected("the file has no audio or video streams")
    format_duration = as_float(fmt.get("duration"))
    video_streams = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    packets = raw.get("packets") or []
    video = _video_stream(video_streams[0], packets, format_duration) if video_streams else None
    audio = tuple(_audio_stream(s) for s in streams if s.get("codec_type") == "audio")
    if video is None and not audio:
        raise SourceRejected("the file has no audio or video streams")
    durations = [a.duration_s for a in audio if a.duration_s]
    if video and video.duration_s:
        durations.append(video.duration_s)
    duration = format_duration or (max(durations) if durations else 0.0)
    if max_duration_s is not None and duration > max_duration_s:
        raise SourceRejected(
            f"the source is {duration:.1f} s long; the limit is {max_duration_s:g} s"
        )
    if video and not _fits(video.display_width, video.display_height, max_width, max_height):
        raise SourceRejected(
            f"the picture is {video.display_width}x{video.display_height}; the limit is "
            f"{max_width or 'any'}x{max_height or 'any'}"
        )
    size = as_int(fmt.get("size")) or await asyncio.to_thread(os.path.getsize, path) or 0
    return VideoProbe(
        format_name=str(fmt.get("format_name", "unknown")),
        duration_s=duration,
        size=size,
        bit_rate=as_int(fmt.get("bit_rate")),
        video=video,
        audio=audio,
    )
