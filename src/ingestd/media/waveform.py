"""Waveform overview: (min, max) peaks per point as JSON, and a PNG drawn from them.

The decode is streamed: samples are reduced to small blocks as they arrive, so memory stays
bounded whatever the length of the file; the blocks are regrouped into exactly ``points``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from ingestd.errors import SourceRejected
from ingestd.media.probe import probe
from ingestd.media.process import input_args, stream_ffmpeg
from ingestd.media.toolchain import Toolchain

__all__ = ["Waveform", "render_waveform_png", "waveform"]

WAVEFORM_VERSION = 1
_BLOCKS_PER_POINT = 8
_BACKGROUND = (0, 0, 0, 0)
_FOREGROUND = (37, 99, 235, 255)


@dataclass(frozen=True)
class Waveform:
    points: int
    duration_s: float
    peaks: list[tuple[float, float]]  # (min, max) per point, in [-1, 1]

    def to_json(self) -> dict[str, object]:
        return {
            "version": WAVEFORM_VERSION,
            "points": self.points,
            "duration_s": self.duration_s,
            "peaks": [[lo, hi] for lo, hi in self.peaks],
        }


class _BlockReducer:
    """Min/max over fixed-size blocks of interleaved float32 samples, fed chunk by chunk."""

    def __init__(self, channels: int, block_frames: int):
        self._block = block_frames * channels  # samples per block, all channels together
        self._pending = b""
        self.mins: list[npt.NDArray[np.float32]] = []
        self.maxs: list[npt.NDArray[np.float32]] = []

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        usable = len(data) // (4 * self._block) * (4 * self._block)
        self._pending = data[usable:]
        if usable:
            blocks = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, self._block)
            self.mins.append(blocks.min(axis=1))
            self.maxs.append(blocks.max(axis=1))

    def finish(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        tail = self._pending[: len(self._pending) // 4 * 4]
        if tail:
            rest = np.frombuffer(tail, dtype="<f4")
            self.mins.append(np.array([rest.min()], dtype=np.float32))
            self.maxs.append(np.array([rest.max()], dtype=np.float32))
        if not self.mins:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(self.mins), np.concatenate(self.maxs)


def _regroup(
    mins: npt.NDArray[np.float32], maxs: npt.NDArray[np.float32], points: int
) -> list[tuple[float, float]]:
    if len(mins) == 0:
        return [(0.0, 0.0)] * points
    edges = np.linspace(0, len(mins), points + 1)
    starts = np.minimum(np.floor(edges[:-1]).astype(int), len(mins) - 1)
    ends = np.maximum(np.ceil(edges[1:]).astype(int), starts + 1)
    peaks = []
    for start, end in zip(starts, ends, strict=True):
        lo = float(np.clip(mins[start:end].min(), -1.0, 1.0))
        hi = float(np.clip(maxs[start:end].max(), -1.0, 1.0))
        peaks.append((round(lo, 4), round(hi, 4)))
    return peaks


def render_waveform_png(
    peaks: list[tuple[float, float]], path: Path, width: int, height: int
) -> None:
    """Draws one vertical line per pixel column from the peaks covering it."""
    image = Image.new("RGBA", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    lows = np.array([p[0] for p in peaks] or [0.0])
    highs = np.array([p[1] for p in peaks] or [0.0])
    edges = np.linspace(0, len(lows), width + 1)
    middle = (height - 1) / 2
    for x in range(width):
        start = min(int(edges[x]), len(lows) - 1)
        end = max(int(np.ceil(edges[x + 1])), start + 1)
        lo, hi = float(lows[start:end].min()), float(highs[start:end].max())
        top, bottom = middle - hi * middle, middle - lo * middle
        draw.line([(x, round(top)), (x, max(round(top), round(bottom)))], fill=_FOREGROUND)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)


def _write_json(waveform: Waveform, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(waveform.to_json(), separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


async def waveform(
    tc: Toolchain,
    path: Path,
    out_json: Path,
    out_png: Path,
    *,
    points: int = 1000,
    width: int = 1800,
    height: int = 280,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> Waveform:
    """Peaks over all channels (a downmix would hide out-of-phase content and lower peaks)."""
    if points < 1 or width < 1 or height < 2:
        raise ValueError("points, width and height must be positive")
    result = await probe(tc, path)
    if not result.audio:
        raise SourceRejected("no audio stream found")
    stream = result.audio[0]
    channels = max(1, stream.channels)
    total_frames = max(1.0, result.duration_s * max(1, stream.sample_rate))
    block_frames = max(1, int(total_frames // (points * _BLOCKS_PER_POINT)))
    reducer = _BlockReducer(channels, block_frames)
    await stream_ffmpeg(
        tc,
        [
            *("-v", "error", *input_args(path), "-map", "0:a:0"),
            "-f",
            "f32le",
            "-c:a",
            "pcm_f32le",
            "-",
        ],
        reducer.feed,
        timeout_s=timeout_s,
        logger=logger,
    )
    mins, maxs = reducer.finish()
    wave = Waveform(points=points, duration_s=result.duration_s, peaks=_regroup(mins, maxs, points))
    await asyncio.to_thread(_write_json, wave, out_json)
    await asyncio.to_thread(render_waveform_png, wave.peaks, out_png, width, height)
    return wave
