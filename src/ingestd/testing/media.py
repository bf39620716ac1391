"""Small generated media files for tests: tones from ffmpeg's lavfi sources and ways to break them.

Synchronous on purpose (fixtures call them); every file is seconds long.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CHANNEL_LAYOUTS",
    "corrupt_bytes",
    "corrupt_flac_streaminfo",
    "make_noise_file",
    "make_text_file",
    "make_tone",
    "make_video",
    "truncate",
    "wav_data_offset",
]

CHANNEL_LAYOUTS = {1: "mono", 2: "stereo", 4: "quad", 6: "5.1", 8: "7.1"}
# One distinct frequency per channel so that mixing and channel order are visible in tests.
_FREQS = (440.0, 660.0, 550.0, 110.0, 330.0, 770.0, 880.0, 990.0)


def make_tone(
    ffmpeg: str,
    path: Path,
    *,
    seconds: float = 3.0,
    sample_rate: int = 48000,
    channels: int = 2,
    codec: str = "pcm_s16le",
    sample_fmt: str | None = None,
    amplitude: float = 0.5,
    frequencies: Sequence[float] | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Writes a sine tone, peak ``amplitude`` (linear, of full scale), by default one frequency
    per channel (``frequencies`` overrides, cycled over the channels).

    The container follows the extension of ``path`` (.wav, .flac, .aiff, .mp3, .ogg, .mka ...).
    e.g. 24-bit/96 kHz: ``codec="pcm_s24le", sample_rate=96000``; 8-bit mono:
    ``codec="pcm_u8", channels=1``; 5.1: ``channels=6``; FLAC: ``codec="flac"``.
    """
    layout = CHANNEL_LAYOUTS.get(channels, f"{channels}c")
    freqs = list(frequencies or _FREQS)
    exprs = "|".join(f"{amplitude}*sin(2*PI*{freqs[i % len(freqs)]}*t)" for i in range(channels))
    source = f"aevalsrc={exprs}:s={sample_rate}:d={seconds}:c={layout}"
    args = [ffmpeg, "-hide_banner", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", source]
    args += ["-c:a", codec]
    if sample_fmt:
        args += ["-sample_fmt", sample_fmt]
    if codec == "flac" and sample_fmt == "s32":
        args += ["-bits_per_raw_sample", "24"]
    args += [*extra_args, os.fspath(path)]
    subprocess.run(args, check=True, capture_output=True)
    return path


_HDR_TRANSFERS = {"pq": "smpte2084", "hlg": "arib-std-b67"}


def make_video(
    ffmpeg: str,
    path: Path,
    *,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 180,
    fps: float | str = 25,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    audio_channels: int | None = 2,
    rotate: int | None = None,
    vfr: bool = False,
    interlaced: bool = False,
    hdr: str | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Writes a ``testsrc2`` picture with a sine tone per channel (AAC; none when
    ``audio_channels`` is None). The container follows the extension of ``path``.

    ``rotate``: clockwise degrees a player turns the picture (a display matrix, added by a
    remux since ffmpeg autorotates encoded input); ``vfr``: every third frame dropped, the
    others keeping their times; ``interlaced``: top field first, interlaced x264 coding;
    ``hdr``: "pq" or "hlg" colour tags with BT.2020 primaries (combine with
    ``pix_fmt="yuv420p10le"``: the bundled x264 encodes 10-bit). Odd sizes need a pixel
    format without chroma subsampling (``pix_fmt="yuv444p"``).
    """
    args = [ffmpeg, "-hide_banner", "-v", "error", "-nostdin", "-y"]
    # testsrc2 only makes even sizes: an odd one is cropped from the next even size up.
    source_size = f"{width + width % 2}x{height + height % 2}"
    args += ["-f", "lavfi", "-i", f"testsrc2=s={source_size}:r={fps}:d={seconds}"]
    if audio_channels is not None:
        layout = CHANNEL_LAYOUTS.get(audio_channels, f"{audio_channels}c")
        exprs = "|".join(
            f"0.3*sin(2*PI*{_FREQS[i % len(_FREQS)]}*t)" for i in range(audio_channels)
        )
        args += ["-f", "lavfi", "-i", f"aevalsrc={exprs}:s=48000:d={seconds}:c={layout}"]
    filters = []
    if width % 2 or height % 2:
        filters.append(f"format={pix_fmt},crop={width}:{height}:0:0")
    if vfr:
        filters.append("select='mod(n\\,3)'")
    if hdr is not None:
        filters.append(
            f"setparams=color_trc={_HDR_TRANSFERS[hdr]}:color_primaries=bt2020:colorspace=bt2020nc"
        )
    if filters:
        args += ["-vf", ",".join(filters)]
    if vfr:
        args += ["-fps_mode", "vfr"]
    args += ["-c:v", codec, "-pix_fmt", pix_fmt]
    if codec in ("libx264", "libx265"):
        args += ["-preset", "ultrafast"]
    if interlaced:
        args += ["-flags", "+ilme+ildct", "-field_order", "tt"]
    if audio_channels is not None:
        args += ["-c:a", "aac", "-b:a", "96k"]
    args += list(extra_args)
    if rotate is None:
        subprocess.run([*args, os.fspath(path)], check=True, capture_output=True)
        return path
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / f"plain{path.suffix}"
        subprocess.run([*args, os.fspath(plain)], check=True, capture_output=True)
        # -display_rotation is counter-clockwise.
        remux = [ffmpeg, "-hide_banner", "-v", "error", "-nostdin", "-y"]
        remux += ["-display_rotation", str(-rotate), "-i", os.fspath(plain)]
        remux += ["-map", "0", "-c", "copy", os.fspath(path)]
        subprocess.run(remux, check=True, capture_output=True)
    return path


def truncate(path: Path, keep_fraction: float) -> Path:
    """Cuts the file to ``keep_fraction`` of its size, leaving its headers as they were."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep_fraction))
    return path


def corrupt_flac_streaminfo(path: Path) -> Path:
    """Breaks the STREAMINFO block: sample rate 0 and minimum block size above the maximum."""
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(42))
        if head[:4] != b"fLaC" or head[4] & 0x7F != 0:
            raise ValueError(f"{path} does not start with a FLAC STREAMINFO block")
        info = 8  # 'fLaC' + metadata block header
        head[info : info + 2] = (0xFFFF).to_bytes(2, "big")  # min block size 65535
        head[info + 2 : info + 4] = (16).to_bytes(2, "big")  # max block size 16
        # Sample rate: the first 20 bits of byte 10..12 of STREAMINFO.
        head[info + 10] = 0
        head[info + 11] = 0
        head[info + 12] &= 0x0F
        fh.seek(0)
        fh.write(head)
    return path


def corrupt_bytes(
    path: Path, at_fraction: float = 0.5, length: int = 2048, *, seed: int = 2
) -> Path:
    """Overwrites ``length`` bytes in the middle of the file with random bytes."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(int(size * at_fraction))
        fh.write(random.Random(seed).randbytes(length))
    return path


def make_noise_file(path: Path, size: int = 64 * 1024, *, seed: int = 1) -> Path:
    """Random bytes (typically given a media file name to look like one)."""
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def make_text_file(path: Path, text: str = "This is not audio.\n" * 100) -> Path:
    path.write_text(text)
    return path


def wav_data_offset(path: Path) -> int:
    """Byte offset of the ``data`` chunk payload of a RIFF/WAVE file."""
    with open(path, "rb") as fh:
        fh.seek(12)
        while header := fh.read(8):
            chunk_id, size = header[:4], int.from_bytes(header[4:], "little")
            if chunk_id == b"data":
                return fh.tell()
            fh.seek(size + (size & 1), os.SEEK_CUR)
    raise ValueError(f"{path} has no data chunk")
