"""Structural checks of WAV, AIFF and FLAC headers that ffmpeg is lenient about.

ffmpeg decodes a WAV whose header promises more data than the file holds without complaint,
so a truncated upload must be caught here by comparing declared chunk sizes with the file size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ingestd.errors import SourceRejected

__all__ = ["FlacStreamInfo", "check_headers", "read_flac_streaminfo"]

_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the size unset


@dataclass(frozen=True)
class FlacStreamInfo:
    min_block: int
    max_block: int
    sample_rate: int
    channels: int
    bits_per_sample: int
    total_samples: int
    md5: str  # hex; all zeros when the encoder did not compute it


def parse_flac_streaminfo(head: bytes) -> FlacStreamInfo:
    """Parses the mandatory first metadata block (``head`` = the first 42 bytes of the file)."""
    if len(head) < 42 or head[:4] != b"fLaC":
        raise SourceRejected("corrupt FLAC: no FLAC signature")
    block_type, length = head[4] & 0x7F, int.from_bytes(head[5:8], "big")
    if block_type != 0 or length != 34:
        raise SourceRejected("corrupt FLAC: the first metadata block is not STREAMINFO")
    info = head[8:42]
    packed = int.from_bytes(info[10:18], "big")  # 20 bits rate, 3 channels-1, 5 bps-1, 36 total
    return FlacStreamInfo(
        min_block=int.from_bytes(info[0:2], "big"),
        max_block=int.from_bytes(info[2:4], "big"),
        sample_rate=packed >> 44,
        channels=((packed >> 41) & 0x7) + 1,
        bits_per_sample=((packed >> 36) & 0x1F) + 1,
        total_samples=packed & 0xFFFFFFFFF,
        md5=info[18:34].hex(),
    )


def read_flac_streaminfo(path: Path) -> FlacStreamInfo:
    with open(path, "rb") as fh:
        return parse_flac_streaminfo(fh.read(42))


def _check_flac(path: Path) -> None:
    info = read_flac_streaminfo(path)
    problems = []
    if info.min_block < 16 or info.max_block < info.min_block:
        problems.append(f"block sizes {info.min_block}..{info.max_block}")
    if not 1 <= info.sample_rate <= 655_350:
        problems.append(f"sample rate {info.sample_rate}")
    if info.bits_per_sample < 4:
        problems.append(f"{info.bits_per_sample} bits per sample")
    if problems:
        raise SourceRejected(f"corrupt FLAC: invalid STREAMINFO ({', '.join(problems)})")


def _truncated(declared: int, present: int) -> SourceRejected:
    return SourceRejected(
        f"truncated file: the header declares {declared} bytes of audio data, "
        f"only {present} are present",
        declared=declared,
        present=present,
    )


def _check_riff(path: Path, size: int) -> None:
    with open(path, "rb") as fh:
        head = fh.read(12)
        ds64_data_size: int | None = None
        while header := fh.read(8):
            if len(header) < 8:
                break
            chunk_id, chunk_size = header[:4], int.from_bytes(header[4:], "little")
            if chunk_id == b"ds64":  # RF64/BW64: the 64-bit data size lives here
                ds64_data_size = int.from_bytes(fh.read(16)[8:16], "little")
                chunk_size -= 16
            if chunk_id == b"data":
                if head[:4] != b"RIFF" and ds64_data_size is not None:
                    chunk_size = ds64_data_size
                elif chunk_size in _UNKNOWN_SIZES:
                    return
                present = size - fh.tell()
                if chunk_size > present:
                    raise _truncated(chunk_size, present)
                return
            fh.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)
    raise SourceRejected("corrupt WAV: no data chunk")


def _check_aiff(path: Path, size: int) -> None:
    with open(path, "rb") as fh:
        fh.seek(12)
        while header := fh.read(8):
            if len(header) < 8:
                break
            chunk_id, chunk_size = header[:4], int.from_bytes(header[4:], "big")
            if chunk_id == b"SSND":
                present = size - fh.tell()
                if chunk_size > present:
                    raise _truncated(chunk_size - 8, max(0, present - 8))
                return
            fh.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)
    raise SourceRejected("corrupt AIFF: no SSND chunk")


def check_headers(path: Path, container: str) -> None:
    """Raises ``SourceRejected`` if the header of a WAV, AIFF or FLAC file is inconsistent."""
    size = os.path.getsize(path)
    if container == "wav":
        _check_riff(path, size)
    elif container == "aiff":
        _check_aiff(path, size)
    elif container == "flac":
        _check_flac(path)
