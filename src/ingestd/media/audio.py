"""Audio renditions: one ffmpeg process encodes the whole ladder into fMP4 (CMAF) segments
that both HLS and DASH reference; playlists and manifests are then written from measurements.

ffmpeg's dash muxer is used as a segmenter only (``-dash_segment_type mp4``); its MPD is
discarded because it reports the configured, not the measured, bandwidth and ends FLAC
timelines one frame late.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.media.archive import LosslessProof, flac_encoder_args, pcm_md5
from ingestd.media.cmaf import encode_segments, measure_track
from ingestd.media.playlists import (
    Track,
    write_master_playlist,
    write_media_playlist,
    write_mpd,
)
from ingestd.media.probe import AudioStreamInfo, probe
from ingestd.media.process import ProgressCallback
from ingestd.media.toolchain import Toolchain

__all__ = [
    "DEFAULT_AUDIO_LADDER",
    "AudioRung",
    "PackageResult",
    "PackagedRendition",
    "package_audio",
]

MASTER_PLAYLIST = "master.m3u8"
DASH_MANIFEST = "manifest.mpd"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENCODERS = {"aac": "aac", "opus": "libopus", "flac": "flac"}
# When the source has no channel layout, assume the usual one for its channel count.
_DEFAULT_LAYOUTS = {3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# ITU-R BS.775 downmix: centre and surrounds at -3 dB, LFE dropped; swresample normalises the
# matrix so that the sum cannot clip.
_DOWNMIX = "aresample=out_chlayout=stereo:center_mix_level=0.7071:surround_mix_level=0.7071"
_FLAC_RUNG_COMPRESSION = 5  # streaming rung: level 8 costs CPU for ~1% of size


@dataclass(frozen=True)
class AudioRung:
    name: str  # also the rendition's directory name
    codec: str  # "aac" | "opus" | "flac"
    bitrate: int | None  # bits/s, None for flac


DEFAULT_AUDIO_LADDER = (
    AudioRung("aac_256", "aac", 256_000),
    AudioRung("aac_128", "aac", 128_000),
    AudioRung("opus_160", "opus", 160_000),
    AudioRung("flac", "flac", None),
)


@dataclass(frozen=True)
class PackagedRendition:
    name: str
    codec: str
    codecs: str  # RFC 6381, read from the init segment: "mp4a.40.2", "opus", "fLaC"
    bandwidth: int  # peak segment bitrate, measured on output
    average_bandwidth: int
    sample_rate: int
    channels: int
    playlist: str  # relative path of the HLS media playlist
    init: str
    segments: list[str]
    size: int  # bytes, init + segments
    duration_s: float = 0.0
    segment_durations: list[float] | None = None
    lossless: LosslessProof | None = None  # FLAC rung: decoded PCM checked against the source


@dataclass(frozen=True)
class PackageResult:
    hls_master: str
    dash_manifest: str
    renditions: list[PackagedRendition]
    files: list[str]  # every file written, relative to out_dir


def _lossy_rate(rung: AudioRung, source_rate: int) -> int:
    if rung.codec == "opus":
        return 48_000
    return source_rate if source_rate in (44_100, 48_000) else 48_000


def _stereo_chain(stream: AudioStreamInfo) -> str:
    if stream.channels == 1:
        return "pan=stereo|c0=c0|c1=c0"
    if stream.channels == 2:
        return "anull"
    layout = stream.channel_layout
    if not layout or layout.startswith(("unknown", f"{stream.channels} channels")):
        fallback = _DEFAULT_LAYOUTS.get(stream.channels)
        if fallback is None:
            raise SourceRejected(f"cannot downmix {stream.channels} channels without a layout")
        mapping = "|".join(str(i) for i in range(stream.channels))
        return f"channelmap=map={mapping}:channel_layout={fallback},{_DOWNMIX}"
    return _DOWNMIX


def _filtergraph(ladder: Sequence[AudioRung], stream: AudioStreamInfo) -> str:
    """``[0:a:0]`` split into one labelled output ``[oN]`` per rung, in ladder order."""
    lossy = [(i, r) for i, r in enumerate(ladder) if r.codec != "flac"]
    lossless = [i for i, r in enumerate(ladder) if r.codec == "flac"]
    branches = ([["lossy"]] if lossy else []) + [[f"o{i}"] for i in lossless]
    labels = "".join(f"[{b[0]}]" for b in branches)
    parts = [f"[0:a:0]asplit={len(branches)}{labels}" if len(branches) > 1 else ""]
    if len(branches) == 1:
        parts = [f"[0:a:0]anull[{branches[0][0]}]"]
    if lossy:
        by_rate: dict[int, list[int]] = {}
        for i, rung in lossy:
            by_rate.setdefault(_lossy_rate(rung, stream.sample_rate), []).append(i)
        rate_labels = "".join(f"[r{rate}]" for rate in by_rate)
        parts.append(f"[lossy]{_stereo_chain(stream)},asplit={len(by_rate)}{rate_labels}")
        for rate, indexes in by_rate.items():
            outs = "".join(f"[o{i}]" for i in indexes)
            parts.append(f"[r{rate}]aresample={rate},asplit={len(indexes)}{outs}")
    return ";".join(p for p in parts if p)


def _flac_frame_size(rate: int, segment_s: float) -> int | None:
    """A block size that divides the segment exactly and stays in FLAC's streamable subset."""
    frame = rate // 20
    if rate % 20 == 0 and abs(segment_s * 20 - round(segment_s * 20)) < 1e-9 and frame >= 16:
        return frame
    return None


def _encoder_args(
    ladder: Sequence[AudioRung], stream: AudioStreamInfo, segment_s: float
) -> list[str]:
    args: list[str] = []
    for i, rung in enumerate(ladder):
        args += ["-map", f"[o{i}]", f"-c:a:{i}", _ENCODERS[rung.codec]]
        if rung.codec == "flac":
            depth = 24 if (stream.bits_per_sample or 16) > 16 else 16
            args += [f"-compression_level:a:{i}", str(_FLAC_RUNG_COMPRESSION)]
            args += flac_encoder_args(depth, f"a:{i}")
            frame = _flac_frame_size(stream.sample_rate, segment_s)
            if frame:
                args += [f"-frame_size:a:{i}", str(frame)]
        else:
            args += [f"-b:a:{i}", str(rung.bitrate)]
    return args


def _check_ladder(ladder: Sequence[AudioRung]) -> None:
    if not ladder:
        raise ValueError("the audio ladder is empty")
    names = [rung.name for rung in ladder]
    if len(set(names)) != len(names):
        raise ValueError(f"rung names must be unique: {names}")
    for rung in ladder:
        if not _NAME.match(rung.name) or rung.codec not in _ENCODERS:
            raise ValueError(f"invalid rung {rung}")
        if (rung.codec == "flac") != (rung.bitrate is None):
            raise ValueError(f"{rung.name}: flac takes no bitrate, lossy codecs need one")


def _rendition(rung: AudioRung, track: Track, size: int) -> PackagedRendition:
    return PackagedRendition(
        name=rung.name,
        codec=rung.codec,
        codecs=track.codecs,
        bandwidth=track.bandwidth,
        average_bandwidth=track.average_bandwidth,
        sample_rate=track.sample_rate,
        channels=track.channels,
        playlist=track.playlist,
        init=track.init,
        segments=[s.uri for s in track.segments],
        size=size,
        duration_s=track.duration_s,
        segment_durations=[track.seconds(s.duration) for s in track.segments],
    )


def _publish(ladder: Sequence[AudioRung], staging: Path, out_dir: Path) -> list[PackagedRendition]:
    """Moves each rung's directory into place and writes every playlist (blocking)."""
    tracks: list[Track] = []
    renditions: list[PackagedRendition] = []
    for i, rung in enumerate(ladder):
        final = out_dir / rung.name
        if final.exists():
            shutil.rmtree(final)
        (staging / f"r{i}").rename(final)
        track, _, size = measure_track(rung.name, final)
        write_media_playlist(track, out_dir)
        tracks.append(track)
        renditions.append(_rendition(rung, track, size))
    write_master_playlist(tracks, out_dir / MASTER_PLAYLIST)
    write_mpd(tracks, out_dir / DASH_MANIFEST)
    return renditions


async def package_audio(
    tc: Toolchain,
    master: Path,
    out_dir: Path,
    ladder: Sequence[AudioRung] = DEFAULT_AUDIO_LADDER,
    *,
    segment_s: float = 6.0,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    logger: logging.Logger | None = None,
    timeout_s: float | None = None,
    verify_lossless: bool = True,
) -> PackageResult:
    """Encodes every rung of ``ladder`` in one ffmpeg process and packages HLS + DASH.

    Lossy rungs are stereo (ITU downmix of surround sources; Opus at 48 kHz); FLAC rungs keep
    the source's channels, rate and bit depth and, with ``verify_lossless``, are decoded through
    their HLS playlist and compared with the source PCM (``TranscodeFailed`` if they differ).
    """
    _check_ladder(ladder)
    source = await probe(tc, master)
    if not source.audio:
        raise SourceRejected("no audio stream found")
    stream = source.audio[0]
    duration_s = duration_s or source.duration_s
    renditions = await encode_segments(
        tc,
        master,
        out_dir,
        streams=len(ladder),
        encode=[
            *("-filter_complex", _filtergraph(ladder, stream)),
            *_encoder_args(ladder, stream, segment_s),
        ],
        adaptation_sets=" ".join(f"id={i},streams={i}" for i in range(len(ladder))),
        segment_s=segment_s,
        publish=lambda staging: _publish(ladder, staging, out_dir),
        duration_s=duration_s,
        on_progress=on_progress,
        timeout_s=timeout_s,
        logger=logger,
    )
    if verify_lossless:
        renditions = [await _verify(tc, master, out_dir, r, stream, logger) for r in renditions]
    files = [MASTER_PLAYLIST, DASH_MANIFEST]
    for r in renditions:
        files += [r.playlist, r.init, *r.segments]
    return PackageResult(MASTER_PLAYLIST, DASH_MANIFEST, renditions, files)


async def _verify(
    tc: Toolchain,
    master: Path,
    out_dir: Path,
    rendition: PackagedRendition,
    stream: AudioStreamInfo,
    logger: logging.Logger | None,
) -> PackagedRendition:
    """FLAC in fMP4 has a zero MD5 in its header: prove the rung lossless by decoding it."""
    if rendition.codec != "flac":
        return rendition
    codec = "pcm_s24le" if (stream.bits_per_sample or 16) > 16 else "pcm_s16le"
    source_md5, rung_md5 = await asyncio.gather(
        pcm_md5(tc, master, pcm_codec=codec, logger=logger),
        pcm_md5(tc, out_dir / rendition.playlist, pcm_codec=codec, trusted=True, logger=logger),
    )
    proof = LosslessProof(source_md5, rung_md5, None, source_md5 == rung_md5, codec)
    if not proof.lossless:
        raise TranscodeFailed(
            f"{rendition.name} rendition is not lossless: source PCM MD5 {source_md5}, "
            f"decoded rendition {rung_md5}",
            proof=proof,
        )
    return PackagedRendition(**{**rendition.__dict__, "lossless": proof})
