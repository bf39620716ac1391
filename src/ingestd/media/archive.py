"""Archive a PCM master as FLAC and prove, by MD5 of the decoded samples, that it is lossless."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingestd.errors import SourceRejected, TranscodeFailed
from ingestd.media.headers import read_flac_streaminfo
from ingestd.media.probe import AudioStreamInfo, probe
from ingestd.media.process import USER_INPUT_FORMATS, ProgressCallback, input_args, run_ffmpeg
from ingestd.media.toolchain import Toolchain

__all__ = [
    "FLAC_COMPRESSION_LEVEL",
    "LosslessProof",
    "archive_flac",
    "flac_encoder_args",
    "native_pcm_codec",
    "pcm_md5",
]

FLAC_COMPRESSION_LEVEL = 8
_ZERO_MD5 = "0" * 32
_NATIVE = {"u8": "pcm_u8", "s16": "pcm_s16le", "flt": "pcm_f32le", "dbl": "pcm_f64le"}
_LOSSY = {"mp3", "mp2", "aac", "opus", "vorbis", "ac3", "eac3", "wmav2", "mp1"}


@dataclass(frozen=True)
class LosslessProof:
    source_pcm_md5: str
    archive_pcm_md5: str
    streaminfo_md5: str | None  # None when the FLAC header carries no MD5 (fMP4 FLAC)
    lossless: bool
    pcm_codec: str = "pcm_s16le"  # the sample format both MD5s were computed in


def native_pcm_codec(stream: AudioStreamInfo) -> str:
    """The raw PCM codec that writes this stream's samples in their native format and depth."""
    fmt = (stream.sample_fmt or "").rstrip("p")
    if fmt in _NATIVE:
        return _NATIVE[fmt]
    if fmt == "s32":
        return "pcm_s24le" if stream.bits_per_sample == 24 else "pcm_s32le"
    if fmt == "s64":
        return "pcm_s64le"
    raise SourceRejected(f"unsupported sample format {stream.sample_fmt!r}")


def _flac_depth(stream: AudioStreamInfo) -> int:
    """FLAC bit depth that holds the stream exactly; rejects what FLAC cannot hold."""
    fmt = (stream.sample_fmt or "").rstrip("p")
    if stream.codec in _LOSSY:
        raise SourceRejected(f"the source is lossy ({stream.codec}): nothing to archive losslessly")
    if fmt in ("flt", "dbl"):
        raise SourceRejected("floating-point PCM cannot be archived losslessly as FLAC")
    depth = stream.bits_per_sample or (16 if fmt in ("u8", "s16") else 24)
    if depth > 24:
        raise SourceRejected(f"{depth}-bit PCM is beyond the 24 bits this FLAC archive keeps")
    # ffmpeg's FLAC encoder writes 16 or 24 bits: 8-bit sources are stored as 16-bit, exactly.
    return 24 if depth > 16 else 16


def flac_encoder_args(depth: int, stream: str = "a") -> list[str]:
    """Encoder options that keep ``depth`` (16 or 24) bits per sample."""
    if depth > 16:
        return [f"-sample_fmt:{stream}", "s32", f"-bits_per_raw_sample:{stream}", "24"]
    return [f"-sample_fmt:{stream}", "s16"]


async def pcm_md5(
    tc: Toolchain,
    path: Path,
    *,
    pcm_codec: str | None = None,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    trusted: bool = False,
    logger: logging.Logger | None = None,
) -> str:
    """MD5 (hex) of the first audio stream's decoded samples, interleaved little-endian.

    In the source's native format and bit depth unless ``pcm_codec`` (e.g. "pcm_s24le") says
    otherwise. This is what FLAC's STREAMINFO MD5 covers. ``trusted`` lets ``path`` be one of
    our own playlists (HLS), read with the extra protocols the HLS demuxer needs.
    """
    if pcm_codec is None:
        result = await probe(tc, path)
        if not result.audio:
            raise SourceRejected("no audio stream found")
        pcm_codec = native_pcm_codec(result.audio[0])
        duration_s = duration_s or result.duration_s
    protocols = "file,crypto,data" if trusted else "file,pipe"
    formats = None if trusted else USER_INPUT_FORMATS
    with tempfile.TemporaryDirectory(prefix="ingestd-md5-") as tmp:
        out = Path(tmp) / "pcm.md5"
        await run_ffmpeg(
            tc,
            [
                *("-v", "error", *input_args(path, protocols=protocols, formats=formats)),
                *("-map", "0:a:0"),
                *("-c:a", pcm_codec, "-f", "hash", "-hash", "md5", str(out)),
            ],
            duration_s=duration_s,
            on_progress=on_progress,
            logger=logger,
        )
        text = await asyncio.to_thread(out.read_text)
    return text.strip().partition("=")[2].lower()


async def archive_flac(
    tc: Toolchain,
    master: Path,
    out_path: Path,
    *,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    compression_level: int = FLAC_COMPRESSION_LEVEL,
    logger: logging.Logger | None = None,
) -> LosslessProof:
    """Encodes ``master`` (WAV, AIFF, FLAC...) to FLAC at ``out_path`` keeping its bit depth,
    then proves STREAMINFO MD5 == MD5 of the source PCM == MD5 of the decoded FLAC.

    Raises ``TranscodeFailed`` (and leaves nothing at ``out_path``) if they differ.
    """
    result = await probe(tc, master)
    if not result.audio:
        raise SourceRejected("no audio stream found")
    depth = _flac_depth(result.audio[0])
    duration_s = duration_s or result.duration_s
    pcm_codec = "pcm_s24le" if depth == 24 else "pcm_s16le"
    partial = out_path.with_name(f".{out_path.name}.partial")
    try:
        await run_ffmpeg(
            tc,
            [
                *("-v", "error", *input_args(master), "-map", "0:a:0", "-map_metadata", "0"),
                *("-c:a", "flac", "-compression_level", str(compression_level)),
                *flac_encoder_args(depth),
                *("-f", "flac", str(partial)),
            ],
            duration_s=duration_s,
            on_progress=on_progress,
            logger=logger,
        )
        info = await asyncio.to_thread(read_flac_streaminfo, partial)
        source_md5, archive_md5 = await asyncio.gather(
            pcm_md5(tc, master, pcm_codec=pcm_codec, duration_s=duration_s, logger=logger),
            pcm_md5(tc, partial, pcm_codec=pcm_codec, duration_s=duration_s, logger=logger),
        )
        streaminfo = None if info.md5 == _ZERO_MD5 else info.md5
        proof = LosslessProof(
            source_pcm_md5=source_md5,
            archive_pcm_md5=archive_md5,
            streaminfo_md5=streaminfo,
            lossless=source_md5 == archive_md5 and streaminfo in (None, source_md5),
            pcm_codec=pcm_codec,
        )
        if not proof.lossless:
            raise TranscodeFailed(
                f"archive is not lossless: source PCM MD5 {source_md5}, decoded FLAC "
                f"{archive_md5}, STREAMINFO {streaminfo}",
                proof=proof,
            )
        await asyncio.to_thread(os.replace, partial, out_path)
        return proof
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, partial)
