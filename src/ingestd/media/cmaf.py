"""One rendition's CMAF output, measured: what playlists and manifests are written from."""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ingestd.errors import TranscodeFailed
from ingestd.media.fmp4 import InitInfo, SegmentInfo, parse_init, parse_segment
from ingestd.media.playlists import SegmentRef, Track, peak_segment_bitrate
from ingestd.media.process import ProgressCallback, input_args, run_ffmpeg
from ingestd.media.toolchain import Toolchain

__all__ = ["SEGMENT_TEMPLATE", "encode_segments", "measure_track", "segmenter_args"]

T = TypeVar("T")

SEGMENT_TEMPLATE = "seg_$Number%05d$.m4s"


async def encode_segments(
    tc: Toolchain,
    master: Path,
    out_dir: Path,
    *,
    streams: int,
    encode: list[str],
    adaptation_sets: str,
    segment_s: float,
    publish: Callable[[Path], T],
    duration_s: float | None,
    on_progress: ProgressCallback | None,
    timeout_s: float | None,
    logger: logging.Logger | None,
) -> T:
    """One ffmpeg run from ``master`` (``encode`` maps and encodes ``streams`` outputs) cut
    into CMAF segments under a staging directory in ``out_dir``; ``publish(staging)`` then
    moves and measures them (in a thread). The staging directory is always removed."""
    staging = out_dir / f".staging-{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(_make_dirs, [staging / f"r{i}" for i in range(streams)])
    args = [
        *("-v", "error", *input_args(master)),
        *("-map_metadata", "-1", "-map_chapters", "-1"),
        *encode,
        *segmenter_args(segment_s, adaptation_sets, staging),
    ]
    try:
        await run_ffmpeg(
            tc,
            args,
            duration_s=duration_s,
            on_progress=on_progress,
            timeout_s=timeout_s,
            logger=logger,
        )
        return await asyncio.to_thread(publish, staging)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _make_dirs(paths: list[Path]) -> None:
    for path in paths:
        path.mkdir(parents=True)


def segmenter_args(segment_s: float, adaptation_sets: str, staging: Path) -> list[str]:
    """ffmpeg's dash muxer as a segmenter only: fMP4 segments of ``segment_s`` into
    ``staging/r<N>/`` (one directory per output stream); its own MPD is discarded."""
    return [
        *("-f", "dash", "-dash_segment_type", "mp4", "-seg_duration", f"{segment_s:g}"),
        *("-use_template", "1", "-use_timeline", "1", "-hls_playlist", "0"),
        *("-streaming", "0", "-write_prft", "0", "-adaptation_sets", adaptation_sets),
        *("-init_seg_name", "r$RepresentationID$/init.mp4"),
        *("-media_seg_name", f"r$RepresentationID$/{SEGMENT_TEMPLATE}"),
        str(staging / "ffmpeg.mpd"),
    ]


_SHORT_TAIL_S = 0.25


def _fold_short_tail(init: InitInfo, files: list[Path]) -> list[Path]:
    """Join a last segment that is empty or a sliver to the one before it.

    When a duration is a whole number of segments, the encoder's delay spills a few
    milliseconds of audio into one more segment (or, for FLAC, an empty one); players
    stall on it (hls.js waits for media that never buffers). A segment may hold several
    fragments, so the sliver's fragment is appended to the previous segment.
    """
    if len(files) < 2:
        return files
    last = parse_segment(files[-1], init)
    if last.samples and last.duration / init.timescale >= _SHORT_TAIL_S:
        return files
    if last.samples:
        data = files[-1].read_bytes()
        kind = data[4:8]
        size = int.from_bytes(data[:4], "big")
        body = data[size:] if kind == b"styp" else data  # one segment type box is enough
        with open(files[-2], "ab") as previous:
            previous.write(body)
    files[-1].unlink()
    return files[:-1]


def measure_track(
    name: str, directory: Path, *, frame_rate: float | None = None
) -> tuple[Track, InitInfo, int]:
    """Reads the init and media segments of one rendition and derives its Track.

    Returns the track, its init segment's description and the rendition's size in bytes.
    ``frame_rate`` is recorded for video tracks (the fragments do not carry it).
    """
    init = parse_init(directory / "init.mp4")
    files = _fold_short_tail(init, sorted(directory.glob("seg_*.m4s")))
    if not files:
        raise TranscodeFailed(f"{name}: ffmpeg wrote no segments")
    infos: list[SegmentInfo] = [parse_segment(f, init) for f in files]
    refs: list[SegmentRef] = []
    for path, info in zip(files, infos, strict=True):
        # Presentation time: the edit list hides the encoder's priming (or reordering) delay.
        start = max(0, info.base_decode_time - init.priming)
        end = info.base_decode_time + info.duration - init.priming
        refs.append(SegmentRef(f"{name}/{path.name}", start, end - start))
    sizes = [info.size for info in infos]
    seconds = [ref.duration / init.timescale for ref in refs]
    total_bytes, total_s = sum(sizes), max(sum(seconds), 1e-9)
    track = Track(
        id=name,
        codecs=init.codecs,
        bandwidth=peak_segment_bitrate(sizes, seconds),
        average_bandwidth=math.ceil(total_bytes * 8 / total_s),
        sample_rate=init.sample_rate,
        channels=init.channels,
        timescale=init.timescale,
        init=f"{name}/init.mp4",
        playlist=f"{name}/playlist.m3u8",
        media_template=f"{name}/{SEGMENT_TEMPLATE}",
        segments=refs,
        width=init.width,
        height=init.height,
        frame_rate=frame_rate if init.is_video else None,
    )
    size = sum(f.stat().st_size for f in [directory / "init.mp4", *files])
    return track, init, size
