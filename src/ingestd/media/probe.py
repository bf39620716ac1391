"""Read a media file's format and audio streams with ffprobe."""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.media.process import input_args, run_ffprobe_json
from ingestd.media.toolchain import Toolchain

__all__ = ["AudioStreamInfo", "ProbeResult", "as_float", "as_int", "probe"]


@dataclass(frozen=True)
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    channel_layout: str | None
    bits_per_sample: int | None  # the source's bit depth (PCM or lossless), None for lossy
    duration_s: float | None
    sample_fmt: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    format_name: str
    duration_s: float
    size: int
    bit_rate: int | None
    audio: list[AudioStreamInfo]
    video_streams: int
    raw: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary for the asset's metadata (``raw`` left out)."""
        return {
            "format_name": self.format_name,
            "duration_s": self.duration_s,
            "size": self.size,
            "bit_rate": self.bit_rate,
            "audio": [asdict(stream) for stream in self.audio],
            "video_streams": self.video_streams,
        }


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number >= 0 else None  # drop NaN


def _bit_depth(stream: dict[str, Any]) -> int | None:
    # PCM reports bits_per_sample; FLAC/ALAC report bits_per_raw_sample. Lossy codecs have none.
    for key in ("bits_per_raw_sample", "bits_per_sample"):
        value = as_int(stream.get(key))
        if value:
            return value
    return None


def _audio_stream(stream: dict[str, Any]) -> AudioStreamInfo:
    return AudioStreamInfo(
        index=as_int(stream.get("index")) or 0,
        codec=str(stream.get("codec_name", "unknown")),
        sample_rate=as_int(stream.get("sample_rate")) or 0,
        channels=as_int(stream.get("channels")) or 0,
        channel_layout=stream.get("channel_layout") or None,
        bits_per_sample=_bit_depth(stream),
        duration_s=as_float(stream.get("duration")),
        sample_fmt=stream.get("sample_fmt") or None,
    )


def _first_line(message: str) -> str:
    lines = [line for line in message.splitlines()[1:] if line.strip()]
    return lines[0].strip() if lines else message


async def probe(tc: Toolchain, path: Path) -> ProbeResult:
    """Raises ``SourceRejected`` with ffprobe's reason if the file cannot be read."""
    try:
        raw = await run_ffprobe_json(tc, ["-show_format", "-show_streams", *input_args(path)])
    except TranscodeFailed as exc:
        raise SourceRejected(f"unreadable media: {_first_line(exc.message)}") from exc
    fmt = raw.get("format") or {}
    streams = raw.get("streams") or []
    if not fmt:
        raise SourceRejected("unreadable media: ffprobe found no container")
    audio = [_audio_stream(s) for s in streams if s.get("codec_type") == "audio"]
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    durations = [a.duration_s for a in audio if a.duration_s]
    duration = as_float(fmt.get("duration")) or (max(durations) if durations else 0.0)
    return ProbeResult(
        format_name=str(fmt.get("format_name", "unknown")),
        duration_s=duration,
        size=as_int(fmt.get("size")) or await asyncio.to_thread(os.path.getsize, path) or 0,
        bit_rate=as_int(fmt.get("bit_rate")),
        audio=audio,
        video_streams=len(video),
        raw=raw,
    )
