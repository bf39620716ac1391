"""Write HLS (media and master) playlists and a DASH MPD over one set of fMP4 segments.

Everything is written from measured values: exact segment durations from the fragments,
bitrates from file sizes, codecs strings from the sample entries. ffmpeg's own manifests get
BANDWIDTH and CODECS wrong for Opus and FLAC, so they are not used.
"""

from __future__ import annotations

import math
import os
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SegmentRef",
    "Track",
    "peak_segment_bitrate",
    "write_master_playlist",
    "write_media_playlist",
    "write_mpd",
]

HLS_VERSION = 7
_CHANNEL_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"


@dataclass(frozen=True)
class SegmentRef:
    uri: str  # relative to the output directory
    start: int  # presentation time, in the track's timescale
    duration: int


@dataclass(frozen=True)
class Track:
    id: str
    codecs: str
    bandwidth: int  # peak segment bitrate, bits/s
    average_bandwidth: int
    sample_rate: int
    channels: int
    timescale: int
    init: str  # relative to the output directory
    playlist: str  # where the HLS media playlist goes, relative to the output directory
    media_template: str  # DASH SegmentTemplate@media naming the segments, numbered from 1
    segments: list[SegmentRef]

    def seconds(self, ticks: int) -> float:
        return round(ticks / self.timescale, 6)

    @property
    def duration_s(self) -> float:
        return round(sum(self.seconds(s.duration) for s in self.segments), 6)


def peak_segment_bitrate(sizes: Sequence[int], seconds: Sequence[float]) -> int:
    """RFC 8216 peak segment bit rate: the highest bit rate of any run of contiguous segments
    lasting 0.5 to 1.5 target durations (so a few-millisecond last segment, whose moof header
    alone would read as megabits per second, is judged together with its neighbour)."""
    target = max(1, *(math.floor(d + 0.5) for d in seconds))
    peak = 0.0
    for first in range(len(sizes)):
        bits = duration = 0.0
        for size, length in zip(sizes[first:], seconds[first:], strict=True):
            bits, duration = bits + size * 8, duration + length
            if duration > 1.5 * target:
                break
            if duration >= 0.5 * target:
                peak = max(peak, bits / duration)
    if peak == 0.0:  # shorter than half a target duration in all
        peak = sum(sizes) * 8 / max(sum(seconds), 1e-9)
    return math.ceil(peak)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _relative(uri: str, playlist: str) -> str:
    return posixpath.relpath(uri, posixpath.dirname(playlist) or ".")


def write_media_playlist(track: Track, out_dir: Path) -> None:
    """A VOD media playlist with EXT-X-MAP and exact EXTINF durations."""
    durations = [track.seconds(s.duration) for s in track.segments]
    # EXTINF rounded to the nearest integer must not exceed the target duration (RFC 8216 4.3.3.1).
    target = max(1, *(math.floor(d + 0.5) for d in durations))
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{_relative(track.init, track.playlist)}"',
    ]
    for segment, duration in zip(track.segments, durations, strict=True):
        lines += [f"#EXTINF:{duration:.6f},", _relative(segment.uri, track.playlist)]
    lines.append("#EXT-X-ENDLIST")
    _write_text(out_dir / track.playlist, "\n".join(lines) + "\n")


def write_master_playlist(tracks: Sequence[Track], path: Path) -> None:
    """Audio-only master: one EXT-X-STREAM-INF variant per rendition, in ladder order.

    Audio-only variants carry CODECS and no RESOLUTION; players skip the codecs they lack.
    """
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for track in tracks:
        lines += [
            "",
            f"#EXT-X-STREAM-INF:BANDWIDTH={track.bandwidth},"
            f'AVERAGE-BANDWIDTH={track.average_bandwidth},CODECS="{track.codecs}"',
            _relative(track.playlist, path.name),
        ]
    _write_text(path, "\n".join(lines) + "\n")


def _duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def _timeline(parent: ET.Element, segments: Sequence[SegmentRef]) -> None:
    timeline = ET.SubElement(parent, "SegmentTimeline")
    expected: int | None = None
    last: ET.Element | None = None
    repeat = 0
    for segment in segments:
        same = last is not None and segment.duration == int(last.get("d", 0))
        if last is not None and same and segment.start == expected:
            repeat += 1
            last.set("r", str(repeat))
        else:
            attributes = {"t": str(segment.start), "d": str(segment.duration)}
            last = ET.SubElement(timeline, "S", attributes)
            repeat = 0
        expected = segment.start + segment.duration


def _group(tracks: Sequence[Track]) -> list[list[Track]]:
    """Switchable tracks (same codecs, rate and channels) share one AdaptationSet."""
    groups: dict[tuple[str, int, int], list[Track]] = {}
    for track in tracks:
        groups.setdefault((track.codecs, track.sample_rate, track.channels), []).append(track)
    return list(groups.values())


def write_mpd(tracks: Sequence[Track], path: Path) -> None:
    """A static isoff-live MPD: SegmentTemplate with SegmentTimeline per Representation."""
    duration = max(track.duration_s for track in tracks)
    longest = max(track.seconds(s.duration) for track in tracks for s in track.segments)
    mpd = ET.Element(
        "MPD",
        {
            "xmlns": "urn:mpeg:dash:schema:mpd:2011",
            "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
            "type": "static",
            "mediaPresentationDuration": _duration(duration),
            "maxSegmentDuration": _duration(longest),
            "minBufferTime": _duration(min(longest * 2, duration)),
        },
    )
    period = ET.SubElement(mpd, "Period", {"id": "0", "start": "PT0S"})
    for set_id, group in enumerate(_group(tracks)):
        first = group[0]
        adaptation = ET.SubElement(
            period,
            "AdaptationSet",
            {
                "id": str(set_id),
                "contentType": "audio",
                "mimeType": "audio/mp4",
                "codecs": first.codecs,
                "audioSamplingRate": str(first.sample_rate),
                "segmentAlignment": "true",
                "startWithSAP": "1",
            },
        )
        ET.SubElement(
            adaptation,
            "AudioChannelConfiguration",
            {"schemeIdUri": _CHANNEL_SCHEME, "value": str(first.channels)},
        )
        for track in sorted(group, key=lambda t: -t.bandwidth):
            representation = ET.SubElement(
                adaptation, "Representation", {"id": track.id, "bandwidth": str(track.bandwidth)}
            )
            template = ET.SubElement(
                representation,
                "SegmentTemplate",
                {
                    "timescale": str(track.timescale),
                    "initialization": track.init,
                    "media": track.media_template,
                    "startNumber": "1",
                },
            )
            _timeline(template, track.segments)
    ET.indent(mpd, space="  ")
    xml = ET.tostring(mpd, encoding="unicode", xml_declaration=False)
    _write_text(path, '<?xml version="1.0" encoding="utf-8"?>\n' + xml + "\n")
