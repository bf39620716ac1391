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
    width: int = 0  # video tracks only
    height: int = 0
    frame_rate: float | None = None

    @property
    def is_video(self) -> bool:
        return self.width > 0

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
    """The master playlist, in ladder order.

    Audio only: one EXT-X-STREAM-INF variant per rendition, with CODECS and no RESOLUTION;
    players skip the codecs they lack. With video: one variant per video rendition with
    RESOLUTION and FRAME-RATE, the audio renditions in one EXT-X-MEDIA group that every
    variant names; BANDWIDTH adds the largest audio peak to the video's, AVERAGE-BANDWIDTH
    the largest audio average, and CODECS lists both.
    """
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    videos = [t for t in tracks if t.is_video]
    if videos:
        lines += _video_variants(videos, [t for t in tracks if not t.is_video], path)
        _write_text(path, "\n".join(lines) + "\n")
        return
    for track in tracks:
        lines += [
            "",
            f"#EXT-X-STREAM-INF:BANDWIDTH={track.bandwidth},"
            f'AVERAGE-BANDWIDTH={track.average_bandwidth},CODECS="{track.codecs}"',
            _relative(track.playlist, path.name),
        ]
    _write_text(path, "\n".join(lines) + "\n")


def _video_variants(videos: Sequence[Track], audios: Sequence[Track], path: Path) -> list[str]:
    lines: list[str] = []
    group = ',AUDIO="audio"' if audios else ""
    for i, audio in enumerate(audios):
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="{audio.id}",'
            f"DEFAULT={'YES' if i == 0 else 'NO'},AUTOSELECT=YES,"
            f'CHANNELS="{audio.channels}",URI="{_relative(audio.playlist, path.name)}"'
        )
    audio_peak = max((a.bandwidth for a in audios), default=0)
    audio_average = max((a.average_bandwidth for a in audios), default=0)
    audio_codecs = sorted({a.codecs for a in audios})
    for video in videos:
        codecs = ",".join([video.codecs, *audio_codecs])
        attributes = [
            f"BANDWIDTH={video.bandwidth + audio_peak}",
            f"AVERAGE-BANDWIDTH={video.average_bandwidth + audio_average}",
            f'CODECS="{codecs}"',
            f"RESOLUTION={video.width}x{video.height}",
        ]
        if video.frame_rate:
            attributes.append(f"FRAME-RATE={video.frame_rate:.3f}")
        lines += ["", "#EXT-X-STREAM-INF:" + ",".join(attributes) + group]
        lines.append(_relative(video.playlist, path.name))
    return lines


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
    """Switchable tracks share one AdaptationSet: every video rung (same codec family; the
    profile and level differ by rung), audio of the same codecs, rate and channels."""
    groups: dict[tuple[str, int, int], list[Track]] = {}
    for track in tracks:
        if track.is_video:
            key = ("video:" + track.codecs.split(".", 1)[0], 0, 0)
        else:
            key = (track.codecs, track.sample_rate, track.channels)
        groups.setdefault(key, []).append(track)
    return list(groups.values())


def _frame_rate(rate: float) -> str:
    """A DASH frameRate: an integer, or a ratio for NTSC rates (30000/1001)."""
    if abs(rate - round(rate)) < 1e-3:
        return str(round(rate))
    for base in (24, 30, 60, 120):
        if abs(rate - base * 1000 / 1001) < 1e-3:
            return f"{base * 1000}/1001"
    return f"{round(rate * 1000)}/1000"


def _video_set(period: ET.Element, set_id: int, group: Sequence[Track]) -> ET.Element:
    adaptation = ET.SubElement(
        period,
        "AdaptationSet",
        {
            "id": str(set_id),
            "contentType": "video",
            "mimeType": "video/mp4",
            "maxWidth": str(max(t.width for t in group)),
            "maxHeight": str(max(t.height for t in group)),
            "segmentAlignment": "true",
            "startWithSAP": "1",
        },
    )
    return adaptation


def _representation(adaptation: ET.Element, track: Track, attributes: dict[str, str]) -> None:
    representation = ET.SubElement(adaptation, "Representation", attributes)
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
        if first.is_video:
            adaptation = _video_set(period, set_id, group)
            for track in sorted(group, key=lambda t: -t.bandwidth):
                attributes = {
                    "id": track.id,
                    "bandwidth": str(track.bandwidth),
                    "codecs": track.codecs,
                    "width": str(track.width),
                    "height": str(track.height),
                }
                if track.frame_rate:
                    attributes["frameRate"] = _frame_rate(track.frame_rate)
                _representation(adaptation, track, attributes)
            continue
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
            _representation(adaptation, track, {"id": track.id, "bandwidth": str(track.bandwidth)})
    ET.indent(mpd, space="  ")
    xml = ET.tostring(mpd, encoding="unicode", xml_declaration=False)
    _write_text(path, '<?xml version="1.0" encoding="utf-8"?>\n' + xml + "\n")
