"""Run ffmpeg and ffprobe as asyncio subprocesses: progress, timeouts, cancellation, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestd.errors import StepTimeout, TranscodeFailed
from ingestd.media.toolchain import Toolchain

__all__ = [
    "USER_INPUT_FORMATS",
    "USER_INPUT_PROTOCOLS",
    "Progress",
    "ProgressCallback",
    "input_args",
    "run_ffmpeg",
    "run_ffmpeg_log",
    "run_ffprobe_json",
    "stream_ffmpeg",
]

# Inputs that came from users may only be read from local files or pipes: a crafted playlist or
# concat list must not reach the network or other local files through another protocol.
USER_INPUT_PROTOCOLS = "file,pipe"
# ... and only through the container demuxers of media masters: the file protocol alone would
# let an HLS playlist or a concat list uploaded as a master read other local files.
USER_INPUT_FORMATS = (
    "wav,w64,flac,aiff,mp3,ogg,aac,ac3,eac3,dts,truehd,caf,"
    "mov,matroska,mpegts,avi,mxf,flv,mpeg,asf,ivf"
)
STDERR_TAIL_LINES = 20
PROGRESS_INTERVAL_S = 0.25
_READ_CHUNK = 1 << 16

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """``fraction`` in [0, 1]; ``speed`` is media seconds per wall second; ``eta_s`` in seconds."""

    fraction: float
    out_time_s: float
    speed: float | None
    eta_s: float | None


ProgressCallback = Callable[[Progress], None]


def input_args(
    path: str | os.PathLike[str],
    *,
    protocols: str = USER_INPUT_PROTOCOLS,
    formats: str | None = USER_INPUT_FORMATS,
) -> list[str]:
    """``-protocol_whitelist file,pipe -format_whitelist <demuxers> -i PATH``: put before
    every input that came from a user. ``formats=None`` is for ingestd's own outputs only
    (an HLS playlist it wrote)."""
    whitelist = ["-format_whitelist", formats] if formats else []
    return ["-protocol_whitelist", protocols, *whitelist, "-i", os.fspath(path)]


def make_progress(out_time_s: float, duration_s: float | None, speed: float | None) -> Progress:
    fraction = 0.0
    eta: float | None = None
    if duration_s and duration_s > 0:
        fraction = min(1.0, max(0.0, out_time_s / duration_s))
        if speed and speed > 0:
            eta = max(0.0, (duration_s - out_time_s) / speed)
    return Progress(fraction=fraction, out_time_s=out_time_s, speed=speed, eta_s=eta)


class ProgressThrottle:
    """Forwards at most one update per interval; the final update is always forwarded."""

    def __init__(self, callback: ProgressCallback | None, interval_s: float = PROGRESS_INTERVAL_S):
        self._callback = callback
        self._interval = interval_s
        self._last = float("-inf")
        self._last_fraction = -1.0

    def __call__(self, progress: Progress, *, final: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if not final and now - self._last < self._interval:
            return
        if progress.fraction < self._last_fraction:  # never report going backwards
            progress = Progress(self._last_fraction, progress.out_time_s, progress.speed, None)
        self._last = now
        self._last_fraction = progress.fraction
        self._callback(progress)


def _parse_float(value: str) -> float | None:
    try:
        return float(value.rstrip("x").strip())
    except ValueError:
        return None


async def _read_progress(
    stream: asyncio.StreamReader, duration_s: float | None, throttle: ProgressThrottle
) -> None:
    block: dict[str, str] = {}
    while line := await stream.readline():
        key, _, value = line.decode("utf-8", "replace").strip().partition("=")
        if key != "progress":
            block[key] = value
            continue
        out_us = _parse_float(block.get("out_time_us", "N/A"))
        out_time = max(0.0, out_us / 1e6) if out_us is not None else 0.0
        speed = _parse_float(block.get("speed", "N/A"))
        if value == "end":
            # The whole input was read: report completion even if the duration was approximate.
            throttle(Progress(1.0 if duration_s else 0.0, out_time, speed, 0.0), final=True)
        else:
            throttle(make_progress(out_time, duration_s, speed))
        block = {}


async def _read_tail(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode("utf-8", "replace").rstrip())


async def _execute(
    argv: list[str],
    *,
    stdout_reader: Callable[[asyncio.StreamReader], Awaitable[None]],
    timeout_s: float | None,
    tail_lines: int,
    logger: logging.Logger,
) -> tuple[int, list[str]]:
    """Runs ``argv``; kills (and reaps) the process on timeout, cancellation or any error."""
    logger.debug("running %s", " ".join(argv))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=tail_lines)
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(stdout_reader(proc.stdout), _read_tail(proc.stderr, tail))
            returncode = await proc.wait()
    except TimeoutError as exc:
        await _kill(proc)
        raise StepTimeout(
            f"{Path(argv[0]).name} exceeded its time limit of {timeout_s:g} s", timeout_s=timeout_s
        ) from exc
    finally:
        # Cancellation, a failing progress callback or a timeout: never leave the process behind.
        if proc.returncode is None:
            await asyncio.shield(_kill(proc))
    return returncode, list(tail)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


def _failure(tool: str, returncode: int, tail: list[str]) -> TranscodeFailed:
    text = "\n".join(tail[-STDERR_TAIL_LINES:]) or "(no error output)"
    return TranscodeFailed(
        f"{tool} exited with status {returncode}:\n{text}", returncode=returncode, stderr=text
    )


async def run_ffmpeg_log(
    tc: Toolchain,
    args: Sequence[str],
    *,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
    keep_lines: int = STDERR_TAIL_LINES,
) -> list[str]:
    """Like :func:`run_ffmpeg` and returns the last ``keep_lines`` lines of stderr."""
    argv = [tc.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-progress", "pipe:1", "-y"]
    argv += args
    throttle = ProgressThrottle(on_progress)

    async def reader(stream: asyncio.StreamReader) -> None:
        await _read_progress(stream, duration_s, throttle)

    returncode, tail = await _execute(
        argv,
        stdout_reader=reader,
        timeout_s=timeout_s,
        tail_lines=max(keep_lines, STDERR_TAIL_LINES),
        logger=logger or _log,
    )
    if returncode != 0:
        raise _failure("ffmpeg", returncode, tail)
    return tail[-keep_lines:]


async def run_ffmpeg(
    tc: Toolchain,
    args: Sequence[str],
    *,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Runs ffmpeg with ``-progress pipe:1``; ``args`` are everything after the global options.

    Raises ``TranscodeFailed`` (with the stderr tail) on a non-zero exit and ``StepTimeout``
    after ``timeout_s``; on cancellation the process is killed and reaped first.
    """
    await run_ffmpeg_log(
        tc, args, duration_s=duration_s, on_progress=on_progress, timeout_s=timeout_s, logger=logger
    )


async def stream_ffmpeg(
    tc: Toolchain,
    args: Sequence[str],
    on_chunk: Callable[[bytes], None],
    *,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Runs ffmpeg writing its output to ``pipe:1`` and hands each chunk to ``on_chunk``.

    Memory stays bounded by the chunk size whatever the length of the input.
    """
    argv = [tc.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-y", *args]
    await _stream("ffmpeg", argv, on_chunk, timeout_s=timeout_s, logger=logger)


async def _stream(
    tool: str,
    argv: list[str],
    on_chunk: Callable[[bytes], None],
    *,
    timeout_s: float | None,
    logger: logging.Logger | None,
) -> None:
    async def reader(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            on_chunk(chunk)

    returncode, tail = await _execute(
        argv,
        stdout_reader=reader,
        timeout_s=timeout_s,
        tail_lines=STDERR_TAIL_LINES,
        logger=logger or _log,
    )
    if returncode != 0:
        raise _failure(tool, returncode, tail)


async def run_ffprobe_json(
    tc: Toolchain,
    args: Sequence[str],
    *,
    timeout_s: float | None = 120.0,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """Runs ``ffprobe -v error -of json ARGS`` and returns the parsed JSON."""
    argv = [tc.ffprobe, "-hide_banner", "-v", "error", "-of", "json", *args]
    chunks: list[bytes] = []
    await _stream("ffprobe", argv, chunks.append, timeout_s=timeout_s, logger=logger)
    try:
        parsed = json.loads(b"".join(chunks) or b"{}")
    except ValueError as exc:
        raise TranscodeFailed(f"ffprobe printed invalid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise TranscodeFailed("ffprobe printed JSON that is not an object")
    return parsed
