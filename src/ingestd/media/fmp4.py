"""Just enough ISO BMFF parsing to describe fragmented MP4 (CMAF) output exactly.

The init segment gives the timescale, the sample entry (hence the RFC 6381 codecs string),
channels, rate and the edit list's priming offset for audio, or the picture size and the
decoder configuration's profile and level for video; each media segment's ``trun`` boxes
give its exact duration. Playlists and bitrates are written from these, not from encoder
settings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ingestd.media.headers import parse_flac_streaminfo

__all__ = ["InitInfo", "SegmentInfo", "parse_init", "parse_segment"]

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"mvex", b"moof", b"traf"}


@dataclass(frozen=True)
class InitInfo:
    timescale: int
    sample_entry: str  # "mp4a", "Opus", "fLaC", ...
    codecs: str  # RFC 6381 / the codecs parameter players expect
    channels: int
    sample_rate: int
    default_sample_duration: int
    priming: int  # media samples the edit list skips at the start (AAC priming, Opus pre-skip)
    bits_per_sample: int | None = None  # FLAC only
    width: int = 0  # video sample entries only
    height: int = 0
    default_sample_flags: int = 0  # trex: for fragments that carry no flags of their own

    @property
    def is_video(self) -> bool:
        return self.sample_entry in _VIDEO_ENTRIES


@dataclass(frozen=True)
class SegmentInfo:
    base_decode_time: int
    duration: int  # in the timescale of the init segment
    samples: int
    size: int  # bytes of the segment file
    starts_with_sync: bool = True  # the first sample is a sync sample (a keyframe for video)


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Yields (type, payload start, box end) for the boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"malformed box {kind!r} at offset {pos}")
        yield kind, pos + header, pos + size
        pos += size


def _find(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> list[int]:
    """Payload offsets of every box at ``path`` (descending through container boxes)."""
    found: list[int] = []
    for kind, payload, box_end in _boxes(data, start, end):
        if kind != path[0]:
            continue
        if len(path) == 1:
            found.append(payload)
        elif kind in _CONTAINERS:
            found += _find(data, path[1:], payload, box_end)
        elif kind == b"stsd":  # full box + entry count, then sample entries
            found += _find(data, path[1:], payload + 8, box_end)
    return found


def _box_end(data: bytes, payload: int) -> int:
    (size,) = struct.unpack_from(">I", data, payload - 8)
    return payload - 8 + int(size)


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """MPEG-4 descriptor at ``pos``: (tag, payload start, length)."""
    tag, length, pos = data[pos], 0, pos + 1
    for _ in range(4):
        byte = data[pos]
        pos += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, pos, length


def _mp4a_codecs(data: bytes, entry: int, entry_end: int) -> str:
    for kind, payload, _ in _boxes(data, entry + 28, entry_end):
        if kind != b"esds":
            continue
        tag, pos, _ = _descriptor(data, payload + 4)  # ES_Descriptor after version/flags
        if tag != 0x03:
            break
        flags = data[pos + 2]
        pos += 3 + (2 if flags & 0x80 else 0)
        if flags & 0x40:
            pos += 1 + data[pos]
        pos += 2 if flags & 0x20 else 0
        tag, pos, _ = _descriptor(data, pos)  # DecoderConfigDescriptor
        object_type = data[pos]
        if object_type != 0x40:
            return f"mp4a.{object_type:02X}"
        tag, pos, _ = _descriptor(data, pos + 13)  # DecoderSpecificInfo: AudioSpecificConfig
        audio_object_type = data[pos] >> 3
        if audio_object_type == 31:
            audio_object_type = 32 + (((data[pos] & 0x07) << 3) | (data[pos + 1] >> 5))
        return f"mp4a.40.{audio_object_type}"
    return "mp4a.40.2"


_CODECS = {"Opus": "opus", "fLaC": "fLaC", "ac-3": "ac-3", "ec-3": "ec-3", "alac": "alac"}
_VIDEO_ENTRIES = {"avc1", "avc3", "hvc1", "hev1", "av01", "vp09"}
_VISUAL_HEADER = 78  # VisualSampleEntry fields before its child boxes


def _video_codecs(data: bytes, entry: int, entry_end: int, sample_entry: str) -> str:
    """avc1.PPCCLL from avcC (profile, constraint flags, level); other codecs by name."""
    for kind, payload, _ in _boxes(data, entry + _VISUAL_HEADER, entry_end):
        if kind == b"avcC":
            profile, constraints, level = data[payload + 1 : payload + 4]
            return f"{sample_entry}.{profile:02X}{constraints:02X}{level:02X}"
    return sample_entry


def parse_init(path: Path) -> InitInfo:
    """Describes the (single) track of a fragmented MP4 init segment, audio or video."""
    data = path.read_bytes()
    mdhd = _find(data, [b"moov", b"trak", b"mdia", b"mdhd"])[0]
    version = data[mdhd]
    timescale_at = mdhd + (20 if version == 1 else 12)
    (timescale,) = struct.unpack_from(">I", data, timescale_at)
    stsd = _find(data, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"])[0]
    (_, entry_type) = struct.unpack_from(">I4s", data, stsd + 8)
    entry = stsd + 16  # payload of the first sample entry
    entry_end = _box_end(data, entry)
    sample_entry = entry_type.decode("latin-1")
    if sample_entry in _VIDEO_ENTRIES:
        width, height = struct.unpack_from(">HH", data, entry + 24)
        return InitInfo(
            timescale=timescale,
            sample_entry=sample_entry,
            codecs=_video_codecs(data, entry, entry_end, sample_entry),
            channels=0,
            sample_rate=0,
            default_sample_duration=_default_duration(data),
            priming=_priming(data),
            width=width,
            height=height,
            default_sample_flags=_trex(data, 20),
        )
    channels, _bits = struct.unpack_from(">HH", data, entry + 16)
    (rate_fixed,) = struct.unpack_from(">I", data, entry + 24)
    codecs = (
        _mp4a_codecs(data, entry, entry_end)
        if sample_entry == "mp4a"
        else _CODECS.get(sample_entry, sample_entry)
    )
    sample_rate, bits = rate_fixed >> 16 or timescale, None
    if sample_entry == "fLaC":
        # The 16.16 rate field cannot hold 88.2/96/192 kHz; dfLa carries the real STREAMINFO.
        for kind, payload, _ in _boxes(data, entry + 28, entry_end):
            if kind == b"dfLa":
                info = parse_flac_streaminfo(b"fLaC" + data[payload + 4 : payload + 42])
                sample_rate, channels, bits = info.sample_rate, info.channels, info.bits_per_sample
    return InitInfo(
        timescale=timescale,
        sample_entry=sample_entry,
        codecs=codecs,
        channels=channels,
        sample_rate=sample_rate,
        default_sample_duration=_default_duration(data),
        priming=_priming(data),
        bits_per_sample=bits,
    )


def _priming(data: bytes) -> int:
    """Media time the edit list skips at the start (encoder delay, B-frame reordering)."""
    priming = 0
    for elst in _find(data, [b"moov", b"trak", b"edts", b"elst"]):
        version, count = data[elst], struct.unpack_from(">I", data, elst + 4)[0]
        if count:
            fmt = ">Qq" if version == 1 else ">Ii"
            _, media_time = struct.unpack_from(fmt, data, elst + 8)
            priming = max(0, media_time)
    return priming


def _default_duration(data: bytes) -> int:
    return _trex(data, 12)


def _trex(data: bytes, field: int) -> int:
    """A field of the track extends box: 12 default sample duration, 20 default flags."""
    value = 0
    for trex in _find(data, [b"moov", b"mvex", b"trex"]):
        value = int(struct.unpack_from(">I", data, trex + field)[0])
    return value


def parse_segment(path: Path, init: InitInfo) -> SegmentInfo:
    """Sums the sample durations of every ``moof`` in a media segment."""
    data = path.read_bytes()
    duration = samples = 0
    base: int | None = None
    first_flags: int | None = None
    for traf in _find(data, [b"moof", b"traf"]):
        traf_end = _box_end(data, traf)
        default_duration = init.default_sample_duration
        default_flags = init.default_sample_flags
        for kind, payload, _ in _boxes(data, traf, traf_end):
            flags = int.from_bytes(data[payload + 1 : payload + 4], "big")
            if kind == b"tfhd":
                pos = payload + 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                if flags & 0x08:
                    default_duration = struct.unpack_from(">I", data, pos)[0]
                pos += (4 if flags & 0x08 else 0) + (4 if flags & 0x10 else 0)
                if flags & 0x20:
                    default_flags = struct.unpack_from(">I", data, pos)[0]
            elif kind == b"tfdt" and base is None:
                fmt = ">Q" if data[payload] == 1 else ">I"
                base = struct.unpack_from(fmt, data, payload + 4)[0]
            elif kind == b"trun":
                (count,) = struct.unpack_from(">I", data, payload + 4)
                pos = payload + 8 + (4 if flags & 0x01 else 0)
                if first_flags is None and count:
                    first_flags = default_flags
                    if flags & 0x04:
                        first_flags = struct.unpack_from(">I", data, pos)[0]
                    elif flags & 0x400:  # per-sample flags, after duration and size if present
                        at = pos + (4 if flags & 0x100 else 0) + (4 if flags & 0x200 else 0)
                        first_flags = struct.unpack_from(">I", data, at)[0]
                pos += 4 if flags & 0x04 else 0
                fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit]
                samples += count
                if not flags & 0x100:
                    duration += count * default_duration
                    continue
                for _ in range(count):
                    duration += struct.unpack_from(">I", data, pos)[0]
                    pos += 4 * len(fields)
    return SegmentInfo(
        base_decode_time=base or 0,
        duration=duration,
        samples=samples,
        size=len(data),
        # sample_is_non_sync_sample is bit 16 of the sample flags
        starts_with_sync=not (first_flags or 0) & 0x10000,
    )
