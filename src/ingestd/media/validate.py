"""Decide whether an uploaded file is acceptable audio: type, headers, duration, full decode."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.media.headers import check_headers
from ingestd.media.probe import ProbeResult, probe
from ingestd.media.process import ProgressCallback, input_args, run_ffmpeg
from ingestd.media.sniff import sniff
from ingestd.media.toolchain import Toolchain
from ingestd.media.video_probe import VIDEO_DEMUXERS, VideoProbe, probe_video

__all__ = ["NoVideoStream", "validate_audio", "validate_video"]

# "[flac @ 0x55d0c0a0] blocksize 4608 > 16" -> "flac: blocksize 4608 > 16"
_CONTEXT = re.compile(r"^\[(?P<ctx>[^\]]*?)\s*@\s*0x[0-9a-f]+\]\s*(?P<msg>.*)$")


def _first_error(lines: list[str]) -> str:
    for line in lines:
        match = _CONTEXT.match(line.strip())
        if match:
            context = match["ctx"].split("/")[-1].split(":")[-1]
            return f"{context}: {match['msg']}" if context else match["msg"]
        if line.strip() and not line.startswith("ffmpeg exited"):
            return line.strip()
    return "decoding failed"


async def validate_audio(
    tc: Toolchain,
    path: Path,
    *,
    on_progress: ProgressCallback | None = None,
    max_duration_s: float | None = None,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> ProbeResult:
    """Returns the probe of an acceptable audio file; raises ``SourceRejected`` with the reason.

    Checks, cheapest first: the first bytes say audio (never the file name), the WAV/AIFF/FLAC
    header agrees with the file, ffprobe reads an audio stream with a positive duration not over
    ``max_duration_s``, and every packet decodes without error.
    """
    sniffed = await asyncio.to_thread(sniff, path)
    if sniffed.kind not in ("audio", "video"):
        raise SourceRejected(
            f"not an audio file (looks like {sniffed.description})", container=sniffed.container
        )
    await asyncio.to_thread(check_headers, path, sniffed.container)
    result = await probe(tc, path)
    if not result.audio:
        raise SourceRejected("no audio stream found")
    if sniffed.kind == "video" and result.video_streams:
        raise SourceRejected(f"not an audio file ({sniffed.container} with video)")
    if result.duration_s <= 0:
        raise SourceRejected("duration is unreadable or zero")
    if max_duration_s is not None and result.duration_s > max_duration_s:
        raise SourceRejected(
            f"too long: {result.duration_s:.1f} s is over the limit of {max_duration_s:g} s",
            duration_s=result.duration_s,
            max_duration_s=max_duration_s,
        )
    decode_flags = ["-err_detect", "crccheck"] if sniffed.container == "flac" else []
    await _decode(
        tc,
        [*decode_flags, *input_args(path), "-map", "0:a"],
        "audio",
        duration_s=result.duration_s,
        on_progress=on_progress,
        timeout_s=timeout_s,
        logger=logger,
    )
    return result


class NoVideoStream(SourceRejected):
    """A video container that holds no video stream (audio in MP4 or Matroska)."""


async def validate_video(
    tc: Toolchain,
    path: Path,
    *,
    on_progress: ProgressCallback | None = None,
    max_duration_s: float | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> VideoProbe:
    """Returns the probe of an acceptable video; raises ``SourceRejected`` with the reason.

    The bytes must say video, ffprobe must find a video stream with frames, a frame rate and
    a size within the limits (only video container demuxers are opened: a playlist pointing
    elsewhere is refused unread), and every video and audio packet must decode.
    """
    sniffed = await asyncio.to_thread(sniff, path)
    if sniffed.kind != "video":
        raise SourceRejected(f"not a video file (looks like {sniffed.description})")
    result = await probe_video(
        tc, path, max_duration_s=max_duration_s, max_width=max_width, max_height=max_height
    )
    if result.video is None:
        raise NoVideoStream("no video stream found")
    audio = ["-map", "0:a:0"] if result.has_audio else []
    await _decode(
        tc,
        [*input_args(path, formats=VIDEO_DEMUXERS), "-map", "0:v:0", *audio],
        "video",
        duration_s=result.duration_s,
        on_progress=on_progress,
        timeout_s=timeout_s,
        logger=logger,
    )
    return result


async def _decode(
    tc: Toolchain,
    args: list[str],
    what: str,
    *,
    duration_s: float,
    on_progress: ProgressCallback | None,
    timeout_s: float | None,
    logger: logging.Logger | None,
) -> None:
    """A full decode that stops at the first error: ``SourceRejected("corrupt <what>: ...")``."""
    try:
        await run_ffmpeg(
            tc,
            ["-v", "error", "-xerror", *args, "-f", "null", "-"],
            duration_s=duration_s,
            on_progress=on_progress,
            timeout_s=timeout_s,
            logger=logger,
        )
    except TranscodeFailed as exc:
        tail = str(exc.details.get("stderr", "")).splitlines()
        raise SourceRejected(f"corrupt {what}: {_first_error(tail)}") from exc
