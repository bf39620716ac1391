"""FITS previews: a PNG of a representative plane, a thumbnail, and a movie of a cube.

Scaling is ZScale (astropy.visualization) over finite values: min/max would give black
frames on data with hot pixels. A movie uses ONE scaling for every frame, computed once
over a sample of frames, so that brightness changes between frames stay visible. FITS
puts the origin at the bottom left; images put it at the top left, so rows are flipped.

Data is memory-mapped and read a plane at a time; the astropy work runs in worker threads
and ffmpeg (the pinned one, from the toolchain) reads raw grey frames from a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits  # type: ignore[import-untyped]
from astropy.visualization import ZScaleInterval  # type: ignore[import-untyped]
from PIL import Image

from ingestd.errors import SourceRejected, StepTimeout, TranscodeFailed
from ingestd.media.toolchain import Toolchain

__all__ = [
    "FitsPreviews",
    "Scaling",
    "make_fits_previews",
    "scaling_for",
    "to_image",
]

PREVIEW_NAME = "preview.png"
THUMBNAIL_NAME = "thumbnail.png"
MOVIE_NAME = "movie.mp4"
MAX_PREVIEW = 2048  # longest side of the preview PNG
THUMBNAIL = 256
MAX_MOVIE = 1024  # longest side of the movie
MAX_FRAMES = 600
SCALING_FRAMES = 16  # frames sampled for the movie's one scaling
MAX_BESIDE_BYTES = 64 << 20
_TAIL = 20

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scaling:
    low: float
    high: float

    def apply(self, plane: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """0..255, NaN black; rows flipped: FITS row 0 is the bottom, an image's the top."""
        span = self.high - self.low
        values = np.asarray(plane, dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            scaled = (values - self.low) / span if span > 0 else np.zeros_like(values)
            scaled = np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)
        return np.ascontiguousarray(np.flipud((scaled * 255.0 + 0.5).astype(np.uint8)))


@dataclass(frozen=True)
class FitsPreviews:
    preview: Path
    thumbnail: Path
    movie: Path | None
    width: int  # of the preview
    height: int
    thumbnail_width: int
    thumbnail_height: int
    movie_width: int | None
    movie_height: int | None
    frames: int  # in the movie; 0 without one
    hdu: int  # the HDU shown
    plane: int | None  # the cube plane shown (numpy index of the slowest axis)
    scaling: Scaling
    source: str  # "generated", or "beside" when the producer's PNG was used


def scaling_for(samples: np.ndarray[Any, Any]) -> Scaling:
    """ZScale limits of the finite values of ``samples`` (any shape)."""
    values = np.asarray(samples, dtype=np.float32).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Scaling(0.0, 0.0)
    with warnings.catch_warnings():
        # ZScale fits a line to the sorted sample; a flat sample makes numpy warn about it,
        # and its limits (equal) already say what to show: one grey
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = ZScaleInterval().get_limits(finite)
    return Scaling(float(low), float(high))


def to_image(plane: np.ndarray[Any, Any], scaling: Scaling | None = None) -> Image.Image:
    """A greyscale image of a 2-D plane, scaled with ZScale unless given, origin bottom left."""
    return Image.fromarray((scaling or scaling_for(plane)).apply(plane))  # 2-D uint8: mode L


def _image_hdu(hdul: Any, index: int) -> Any:
    hdu = hdul[index]
    data = hdu.data
    if data is None or data.ndim < 2:
        raise SourceRejected(f"HDU {index} holds no image")
    return data


def _plane_of(data: np.ndarray[Any, Any], frame: int) -> np.ndarray[Any, Any]:
    """Plane ``frame`` along the third FITS axis (NAXIS3); any higher axis at its middle."""
    if data.ndim == 2:
        return data
    lead = tuple(n // 2 for n in data.shape[: data.ndim - 3])
    return np.asarray(data[(*lead, frame)])


def _frames(data: np.ndarray[Any, Any]) -> int:
    return int(data.shape[-3]) if data.ndim >= 3 else 1


def _even_fit(width: int, height: int, longest: int) -> tuple[int, int]:
    factor = min(1.0, longest / max(width, height))
    return max(2, int(width * factor / 2) * 2), max(2, int(height * factor / 2) * 2)


def _save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", optimize=False)
    os.replace(tmp, path)


def _fit(image: Image.Image, longest: int) -> Image.Image:
    if max(image.size) <= longest:
        return image
    factor = longest / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _beside_image(beside: Path | None) -> Image.Image | None:
    """The producer's own preview, when it is a readable PNG of sensible size."""
    if beside is None or not beside.is_file() or beside.stat().st_size > MAX_BESIDE_BYTES:
        return None
    try:
        with Image.open(beside) as image:
            if image.format != "PNG" or max(image.size) > 16384:
                return None
            image.load()
            return image.copy()
    except (OSError, Image.DecompressionBombError) as exc:
        _log.info("ignoring the preview beside the file (%s): %s", beside, exc)
        return None


@dataclass(frozen=True)
class _Stills:
    width: int
    height: int
    thumb: tuple[int, int]
    rows: int  # of a plane of the data
    columns: int
    plane: int | None
    frames: int
    scaling: Scaling
    source: str


def _stills(src: Path, hdu: int, out_dir: Path, beside: Path | None) -> _Stills:
    out_dir.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fh, fits.open(fh, memmap=True, lazy_load_hdus=True) as hdul:
        data = _image_hdu(hdul, hdu)
        frames = _frames(data)
        middle = frames // 2 if data.ndim >= 3 else None
        plane = _plane_of(data, middle or 0)
        scaling = scaling_for(plane)
        producer = _beside_image(beside)
        image = producer if producer is not None else to_image(plane, scaling)
    preview = _fit(image, MAX_PREVIEW)
    _save_png(preview, out_dir / PREVIEW_NAME)
    thumb = _fit(preview, THUMBNAIL)
    _save_png(thumb, out_dir / THUMBNAIL_NAME)
    return _Stills(
        width=preview.width,
        height=preview.height,
        thumb=thumb.size,
        rows=int(plane.shape[0]),
        columns=int(plane.shape[1]),
        plane=middle,
        frames=frames,
        scaling=scaling,
        source="beside" if producer is not None else "generated",
    )


class _FrameReader:
    """Opens the cube once (memory-mapped) and renders scaled frames at one size."""

    def __init__(self, src: Path, hdu: int, frames: list[int], size: tuple[int, int]) -> None:
        self._fh = src.open("rb")
        try:
            self._hdul = fits.open(self._fh, memmap=True, lazy_load_hdus=True)
            self._data = _image_hdu(self._hdul, hdu)
        except BaseException:
            self._fh.close()
            raise
        self.frames = frames
        self.size = size
        picks = np.linspace(0, len(frames) - 1, min(SCALING_FRAMES, len(frames))).astype(int)
        sample = [self._thin(_plane_of(self._data, frames[i])) for i in sorted(set(picks))]
        self.scaling = scaling_for(np.concatenate([s.ravel() for s in sample]))

    @staticmethod
    def _thin(plane: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        step = max(1, int(np.sqrt(plane.size / 250_000)))  # ~250k values per sampled frame
        return np.asarray(plane[::step, ::step])

    def render(self, k: int) -> bytes:
        image = to_image(_plane_of(self._data, self.frames[k]), self.scaling)
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        return image.tobytes()

    def close(self) -> None:
        self._data = None
        self._hdul.close()
        self._fh.close()


async def _drain_tail(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode("utf-8", "replace").rstrip())


async def _encode(
    tc: Toolchain,
    reader: _FrameReader,
    out: Path,
    *,
    fps: float,
    timeout_s: float | None,
    logger: logging.Logger,
) -> None:
    """Pipe raw grey frames into ffmpeg: H.264 (libx264), yuv420p, even dimensions."""
    width, height = reader.size
    argv = [tc.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y"]
    argv += ["-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{width}x{height}"]
    argv += ["-framerate", f"{fps:g}", "-i", "pipe:0"]
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"]
    argv += ["-movflags", "+faststart", "-f", "mp4", os.fspath(out)]
    logger.debug("running %s", " ".join(argv))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=_TAIL)

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            for k in range(len(reader.frames)):
                proc.stdin.write(await asyncio.to_thread(reader.render, k))
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return  # ffmpeg stopped reading: its exit status and stderr say why
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
                await proc.stdin.wait_closed()

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(feed(), _drain_tail(proc.stderr, tail))
            code = await proc.wait()
    except TimeoutError as exc:
        raise StepTimeout(f"ffmpeg exceeded its time limit of {timeout_s:g} s") from exc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    if code != 0:
        text = "\n".join(tail) or "(no error output)"
        raise TranscodeFailed(f"ffmpeg exited with status {code}:\n{text}", returncode=code)


async def make_fits_previews(
    tc: Toolchain,
    src: Path,
    out_dir: Path,
    *,
    hdu: int,
    beside: Path | None = None,
    movie: bool = True,
    fps: float = 10.0,
    timeout_s: float | None = None,
    logger: logging.Logger | None = None,
) -> FitsPreviews:
    """Writes ``preview.png`` (the middle plane of a cube), ``thumbnail.png`` and, for data
    with more than one plane, ``movie.mp4`` into ``out_dir``.

    ``beside`` names a PNG the producer left beside the FITS file: when it is readable it is
    the preview (and the thumbnail's source) instead of the generated one.
    """
    log = logger or _log
    stills = await asyncio.to_thread(_stills, src, hdu, out_dir, beside)
    movie_path: Path | None = None
    size: tuple[int, int] | None = None
    frames = 0
    if movie and stills.frames > 1:
        count = stills.frames
        picks = sorted({int(i) for i in np.linspace(0, count - 1, min(count, MAX_FRAMES))})
        size = _even_fit(stills.columns, stills.rows, MAX_MOVIE)
        reader = await asyncio.to_thread(_FrameReader, src, hdu, picks, size)
        movie_path = out_dir / MOVIE_NAME
        tmp = out_dir / f".{MOVIE_NAME}.tmp.mp4"
        try:
            await _encode(tc, reader, tmp, fps=fps, timeout_s=timeout_s, logger=log)
            await asyncio.to_thread(os.replace, tmp, movie_path)
        finally:
            await asyncio.to_thread(reader.close)
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        frames = len(picks)
    return FitsPreviews(
        preview=out_dir / PREVIEW_NAME,
        thumbnail=out_dir / THUMBNAIL_NAME,
        movie=movie_path,
        width=stills.width,
        height=stills.height,
        thumbnail_width=stills.thumb[0],
        thumbnail_height=stills.thumb[1],
        movie_width=size[0] if size else None,
        movie_height=size[1] if size else None,
        frames=frames,
        hdu=hdu,
        plane=stills.plane,
        scaling=stills.scaling,
        source=stills.source,
    )
