"""Video renditions: every rung of a ladder encoded by one ffmpeg process into one set of
fMP4 (CMAF) segments that an HLS master playlist and a DASH MPD both reference.

One process decodes the master once and splits the picture to each rung (DESIGN.md measured
one process 21% cheaper than one per rung). Every rung gets closed GOPs of the same length
in seconds with scene-cut keyframes off, so segments start on a keyframe at the same times on
every rung and players can switch between them. Audio is encoded once (AAC, stereo: a
surround source is downmixed) and shared by every variant. As for audio-only masters,
ffmpeg's dash muxer only cuts segments; playlists and the MPD are written from the bitrates,
durations, sizes and codecs measured on the output.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ingestd.errors import TranscodeFailed
from ingestd.media.cmaf import encode_segments, measure_track
from ingestd.media.playlists import (
    Track,
    write_master_playlist,
    write_media_playlist,
    write_mpd,
)
from ingestd.media.process import ProgressCallback
from ingestd.media.toolchain import Toolchain

__all__ = [
    "EncodeRung",
    "PackagedVideo",
    "VideoPackage",
    "check_aligned",
    "package_video",
    "write_manifests",
]

MASTER_PLAYLIST = "master.m3u8"
DASH_MANIFEST = "manifest.mpd"
AUDIO_NAME = "audio"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class EncodeRung(Protocol):
    """One rung as planned from a profile and the source (see media/ladder.py)."""

    @property
    def name(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def video_bitrate(self) -> int: ...
    @property
    def fps(self) -> float: ...
    @property
    def gop_frames(self) -> int: ...


@dataclass(frozen=True)
class PackagedVideo:
    name: str
    kind: str  # "video" or "audio"
    codecs: str  # RFC 6381, read from the init segment
    bandwidth: int  # peak segment bitrate, measured
    average_bandwidth: int
    width: int
    height: int
    frame_rate: float | None
    playlist: str
    init: str
    segments: list[str]
    size: int
    duration_s: float
    segment_starts: list[float]  # presentation times, seconds: equal on every video rung


@dataclass(frozen=True)
class VideoPackage:
    hls_master: str
    dash_manifest: str
    renditions: list[PackagedVideo]
    files: list[str]  # every file written, relative to the output directory


def _check(rungs: Sequence[EncodeRung], segment_s: float, with_audio: bool) -> None:
    if not rungs and not with_audio:
        raise ValueError("the video ladder is empty")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names) or AUDIO_NAME in names:
        raise ValueError(f"rung names must be unique and not {AUDIO_NAME!r}: {names}")
    for rung in rungs:
        if not _NAME.match(rung.name) or rung.width % 2 or rung.height % 2:
            raise ValueError(f"invalid rung {rung.name}: names are [a-z0-9_-], sizes even")
        gop_s = rung.gop_frames / rung.fps
        if abs(segment_s / gop_s - round(segment_s / gop_s)) > 1e-6:
            raise ValueError(f"{rung.name}: segments of {segment_s} s are not whole GOPs")


def _filtergraph(rungs: Sequence[EncodeRung]) -> str:
    """``[0:v:0]`` split to one ``[vN]`` per rung: scaled, square pixels, 8-bit 4:2:0.

    ffmpeg applies the source's rotation before the filters, so sizes are display sizes.
    """
    labels = "".join(f"[s{i}]" for i in range(len(rungs)))
    parts = [f"[0:v:0]split={len(rungs)}{labels}"]
    for i, rung in enumerate(rungs):
        parts.append(
            f"[s{i}]fps={rung.fps:.6g},scale={rung.width}:{rung.height}:flags=bicubic,"
            f"setsar=1,format=yuv420p[v{i}]"
        )
    return ";".join(parts)


def _video_args(rungs: Sequence[EncodeRung], preset: str) -> list[str]:
    args: list[str] = []
    for i, rung in enumerate(rungs):
        args += ["-map", f"[v{i}]", f"-c:v:{i}", "libx264", f"-profile:v:{i}", "high"]
        args += [f"-preset:v:{i}", preset, f"-b:v:{i}", str(rung.video_bitrate)]
        args += [f"-maxrate:v:{i}", str(rung.video_bitrate * 3 // 2)]
        args += [f"-bufsize:v:{i}", str(rung.video_bitrate * 2)]
        args += [f"-g:v:{i}", str(rung.gop_frames), f"-keyint_min:v:{i}", str(rung.gop_frames)]
        args += [f"-sc_threshold:v:{i}", "0", f"-x264-params:v:{i}", "open-gop=0"]
    return args


def _publish(
    rungs: Sequence[EncodeRung], with_audio: bool, staging: Path, out_dir: Path
) -> list[PackagedVideo]:
    """Moves each rendition into place and writes every playlist (blocking)."""
    names = [(r.name, r.fps) for r in rungs] + ([(AUDIO_NAME, None)] if with_audio else [])
    for i, (name, _) in enumerate(names):
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        (staging / f"r{i}").rename(final)
    return write_manifests(out_dir, names)


def write_manifests(
    out_dir: Path, names: Sequence[tuple[str, float | None]]
) -> list[PackagedVideo]:
    """Measures renditions already in ``out_dir/<name>/`` and writes every playlist and the
    MPD over them (blocking). ``names`` pairs each rendition with its frame rate (None for
    audio). Also how rungs encoded by separate work orders are brought together."""
    tracks: list[Track] = []
    out: list[PackagedVideo] = []
    for name, fps in names:
        track, init, size = measure_track(name, out_dir / name, frame_rate=fps)
        write_media_playlist(track, out_dir)
        tracks.append(track)
        out.append(
            PackagedVideo(
                name=name,
                kind="video" if init.is_video else "audio",
                codecs=track.codecs,
                bandwidth=track.bandwidth,
                average_bandwidth=track.average_bandwidth,
                width=track.width,
                height=track.height,
                frame_rate=track.frame_rate,
                playlist=track.playlist,
                init=track.init,
                segments=[s.uri for s in track.segments],
                size=size,
                duration_s=track.duration_s,
                segment_starts=[track.seconds(s.start) for s in track.segments],
            )
        )
    write_master_playlist(tracks, out_dir / MASTER_PLAYLIST)
    write_mpd(tracks, out_dir / DASH_MANIFEST)
    return out


def check_aligned(videos: Sequence[PackagedVideo], tolerance_s: float = 0.002) -> None:
    """Every video rung must cut its segments at the same times, or players cannot switch."""
    if not videos:
        return
    first = videos[0].segment_starts
    for rung in videos[1:]:
        starts = rung.segment_starts
        if len(starts) != len(first) or any(
            abs(a - b) > tolerance_s for a, b in zip(starts, first, strict=True)
        ):
            raise TranscodeFailed(
                f"rungs {videos[0].name} and {rung.name} cut their segments at different times"
            )


async def package_video(
    tc: Toolchain,
    master: Path,
    out_dir: Path,
    rungs: Sequence[EncodeRung],
    *,
    with_audio: bool,
    audio_bitrate: int = 128_000,
    segment_s: float = 6.0,
    duration_s: float | None = None,
    preset: str = "medium",
    on_progress: ProgressCallback | None = None,
    logger: logging.Logger | None = None,
    timeout_s: float | None = None,
) -> VideoPackage:
    """Encodes every rung in one ffmpeg process and packages HLS + DASH over one segment set.

    ``with_audio`` maps the first audio stream (AAC stereo at ``audio_bitrate``, 48 kHz); a
    video without audio packages without it.
    """
    _check(rungs, segment_s, with_audio)
    audio = ["-map", "0:a:0", "-c:a", "aac", "-b:a", str(audio_bitrate)] if with_audio else []
    audio += ["-ac", "2", "-ar", "48000"] if with_audio else []
    kinds = [*(["v"] if rungs else []), *(["a"] if with_audio else [])]
    sets = " ".join(f"id={i},streams={kind}" for i, kind in enumerate(kinds))
    graph = ["-filter_complex", _filtergraph(rungs)] if rungs else []
    renditions = await encode_segments(
        tc,
        master,
        out_dir,
        streams=len(rungs) + (1 if with_audio else 0),
        encode=[*graph, *_video_args(rungs, preset), *audio],
        adaptation_sets=sets,
        segment_s=segment_s,
        publish=lambda staging: _publish(rungs, with_audio, staging, out_dir),
        duration_s=duration_s,
        on_progress=on_progress,
        timeout_s=timeout_s,
        logger=logger,
    )
    check_aligned([r for r in renditions if r.kind == "video"])
    files = [MASTER_PLAYLIST, DASH_MANIFEST]
    for r in renditions:
        files += [r.playlist, r.init, *r.segments]
    return VideoPackage(MASTER_PLAYLIST, DASH_MANIFEST, renditions, files)
