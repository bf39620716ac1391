"""Small generated media files for tests: tones from ffmpeg's lavfi sources and ways to break them.

Synchronous on purpose (fixtures call them); every file is seconds long.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CHANNEL_LAYOUTS",
    "corrupt_bytes",
    "corrupt_flac_streaminfo",
    "make_noise_file",
    "make_text_file",
    "make_tone",
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
