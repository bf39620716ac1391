"""Identify a file's container from its first bytes, never from its name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SNIFF_BYTES", "Sniffed", "sniff", "sniff_bytes"]

SNIFF_BYTES = 4096

_MP4_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A "}
_MPEG_AUDIO_LAYERS = {0b01: "mp3", 0b10: "mp2", 0b11: "mp1"}


@dataclass(frozen=True)
class Sniffed:
    """``kind`` is "audio", "video", "fits" or "unknown"; ``container`` names the format."""

    kind: str
    container: str
    mime: str

    @property
    def description(self) -> str:
        if self.container == "unknown":
            return "unknown data" if self.kind == "unknown" else self.mime
        return f"{self.container} {self.kind}" if self.kind != "unknown" else self.container


_UNKNOWN = Sniffed("unknown", "unknown", "application/octet-stream")


def _mpeg_audio_frame(head: bytes) -> bool:
    """A plausible MPEG-1/2/2.5 audio frame header at the start of ``head``."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0b11
    return version != 0b01 and layer != 0 and bitrate not in (0, 0xF) and rate != 0b11


def _adts(head: bytes) -> bool:
    return len(head) >= 7 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def _fits(head: bytes) -> bool:
    """A FITS primary header: ``SIMPLE  =`` then 80-character ASCII cards filling a
    2880-byte block (36 cards), as far as ``head`` reaches."""
    if head[:9] != b"SIMPLE  =" or len(head) < 80:
        return False
    block = head[:2880]
    return all(32 <= b < 127 for b in block) and (len(block) == 2880 or b"END" in block)


def _text_kind(head: bytes) -> Sniffed:
    if not head:
        return Sniffed("unknown", "empty", "application/x-empty")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a multi-byte sequence cut at the end
            return _UNKNOWN
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if printable < 0.95 * len(text):
        return _UNKNOWN
    stripped = text.lstrip()
    if stripped.startswith("#EXTM3U"):
        return Sniffed("unknown", "m3u8", "application/vnd.apple.mpegurl")
    if stripped.startswith("<"):
        return Sniffed("unknown", "xml", "application/xml")
    if stripped.startswith("{") or (
        stripped.startswith("[") and stripped[1:].lstrip()[:1] in set('{["-0123456789tfn]')
    ):
        return Sniffed("unknown", "json", "application/json")
    return Sniffed("unknown", "text", "text/plain")


def _iso_bmff(head: bytes) -> Sniffed:
    brand = head[8:12]
    if brand in _MP4_AUDIO_BRANDS:
        return Sniffed("audio", "mp4", "audio/mp4")
    if brand.startswith(b"qt"):
        return Sniffed("video", "mov", "video/quicktime")
    if brand.startswith(b"3g"):
        return Sniffed("video", "3gp", "video/3gpp")
    # Could be audio-only; probing decides. The container is what matters for routing.
    return Sniffed("video", "mp4", "video/mp4")


def sniff_bytes(head: bytes) -> Sniffed:
    """Classifies the first bytes of a file (``SNIFF_BYTES`` are enough)."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return Sniffed("audio", "wav", "audio/wav")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", "avi", "video/x-msvideo")
    if head[:4] == b"fLaC":
        return Sniffed("audio", "flac", "audio/flac")
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return Sniffed("audio", "aiff", "audio/aiff")
    if head[:4] == b"OggS":
        if b"OpusHead" in head[:128]:
            return Sniffed("audio", "ogg", "audio/ogg; codecs=opus")
        if b"\x01vorbis" in head[:128] or b"\x7fFLAC" in head[:128]:
            return Sniffed("audio", "ogg", "audio/ogg")
        if b"theora" in head[:128]:
            return Sniffed("video", "ogg", "video/ogg")
        return Sniffed("audio", "ogg", "audio/ogg")
    if head[:3] == b"ID3" and len(head) >= 10:
        # An ID3v2 tag may precede MP3, AAC or FLAC data: look past it when we have the bytes.
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        after = head[10 + size :]
        inner = sniff_bytes(after) if len(after) >= 12 else _UNKNOWN
        return inner if inner.kind == "audio" else Sniffed("audio", "mp3", "audio/mpeg")
    if _mpeg_audio_frame(head):
        return Sniffed("audio", "mp3", "audio/mpeg")
    if _adts(head):
        return Sniffed("audio", "aac", "audio/aac")
    if head[4:8] == b"ftyp":
        return _iso_bmff(head)
    if head[:4] == b"\x1a\x45\xdf\xa3":
        if b"webm" in head[:64]:
            return Sniffed("video", "webm", "video/webm")
        return Sniffed("video", "matroska", "video/x-matroska")
    if _fits(head):
        return Sniffed("fits", "fits", "application/fits")
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return Sniffed("video", "mpegts", "video/mp2t")
    if head[:4] == b"\x00\x00\x01\xba":
        return Sniffed("video", "mpegps", "video/mpeg")
    return _text_kind(head)


def sniff(path: Path) -> Sniffed:
    """Reads the first ``SNIFF_BYTES`` of ``path``; the file name plays no part."""
    with open(path, "rb") as fh:
        return sniff_bytes(fh.read(SNIFF_BYTES))
