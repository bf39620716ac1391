"""Pure parts of media/: playlists, MPD timelines, bitrates, ebur128 parsing, sniffing, progress."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ingestd.errors import TranscodeFailed
from ingestd.media.loudness import parse_ebur128_summary
from ingestd.media.playlists import (
    SegmentRef,
    Track,
    peak_segment_bitrate,
    write_master_playlist,
    write_media_playlist,
    write_mpd,
)
from ingestd.media.process import Progress, ProgressThrottle, make_progress
from ingestd.media.sniff import sniff_bytes

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}


def _track(name: str, codecs: str, durations: list[int], bandwidth: int = 200_000) -> Track:
    segments, start = [], 0
    for i, d in enumerate(durations, 1):
        segments.append(SegmentRef(f"{name}/seg_{i:05d}.m4s", start, d))
        start += d
    return Track(
        id=name,
        codecs=codecs,
        bandwidth=bandwidth,
        average_bandwidth=bandwidth - 1000,
        sample_rate=48000,
        channels=2,
        timescale=48000,
        init=f"{name}/init.mp4",
        playlist=f"{name}/playlist.m3u8",
        media_template=f"{name}/seg_$Number%05d$.m4s",
        segments=segments,
    )


def test_peak_ignores_a_tiny_last_segment_on_its_own() -> None:
    # 3 x 6 s at 200 kb/s, then 10 ms holding a 1 kB fragment header: 800 kb/s alone.
    sizes = [150_000, 150_000, 150_000, 1_000]
    seconds = [6.0, 6.0, 6.0, 0.01]
    assert peak_segment_bitrate(sizes, seconds) == pytest.approx(201_000, rel=0.01)


def test_peak_finds_the_loudest_segment() -> None:
    assert peak_segment_bitrate([100, 400, 100], [1.0, 1.0, 1.0]) == 3200
    assert peak_segment_bitrate([100], [0.2]) == 4000  # shorter than half a target: overall


def test_media_and_master_playlists(tmp_path: Path) -> None:
    track = _track("aac_128", "mp4a.40.2", [287744, 288768, 94720])
    (tmp_path / "aac_128").mkdir()
    write_media_playlist(track, tmp_path)
    media = (tmp_path / "aac_128/playlist.m3u8").read_text().splitlines()
    assert "#EXT-X-TARGETDURATION:6" in media
    assert '#EXT-X-MAP:URI="init.mp4"' in media
    assert media[-1] == "#EXT-X-ENDLIST"
    assert "#EXTINF:5.994667," in media and "seg_00001.m4s" in media
    write_master_playlist([track, _track("flac", "fLaC", [288000])], tmp_path / "master.m3u8")
    master = (tmp_path / "master.m3u8").read_text()
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in master
    assert 'BANDWIDTH=200000,AVERAGE-BANDWIDTH=199000,CODECS="fLaC"\nflac/playlist.m3u8' in master


def test_mpd_groups_switchable_tracks_and_compacts_the_timeline(tmp_path: Path) -> None:
    tracks = [
        _track("aac_256", "mp4a.40.2", [287744, 288768, 288768, 94720], 260_000),
        _track("aac_128", "mp4a.40.2", [287744, 288768, 288768, 94720], 130_000),
        _track("opus_160", "opus", [287688, 288000, 288000, 96312]),
    ]
    write_mpd(tracks, tmp_path / "manifest.mpd")
    root = ET.parse(tmp_path / "manifest.mpd").getroot()
    assert root.get("mediaPresentationDuration") == "PT20.000S"
    sets = root.findall(".//d:AdaptationSet", NS)
    assert [len(s.findall("d:Representation", NS)) for s in sets] == [2, 1]
    assert [s.get("codecs") for s in sets] == ["mp4a.40.2", "opus"]
    timeline = sets[0].find(".//d:SegmentTimeline", NS)
    assert timeline is not None
    entries = [(s.get("t"), s.get("d"), s.get("r")) for s in timeline]
    assert entries == [("0", "287744", None), ("287744", "288768", "1"), ("865280", "94720", None)]


SUMMARY = """[Parsed_ebur128_0 @ 0x7f] Summary:

  Integrated loudness:
    I:         -20.1 LUFS
    Threshold: -30.1 LUFS

  Loudness range:
    LRA:         1.5 LU
    Threshold: -40.2 LUFS
    LRA low:   -21.0 LUFS
    LRA high:  -19.5 LUFS

  True peak:
    Peak:       -0.4 dBFS
""".splitlines()


def test_ebur128_summary() -> None:
    loudness = parse_ebur128_summary(["noise", *SUMMARY])
    assert (loudness.integrated_lufs, loudness.threshold_lufs) == (-20.1, -30.1)
    assert (loudness.loudness_range_lu, loudness.true_peak_dbtp) == (1.5, -0.4)
    with pytest.raises(TranscodeFailed):
        parse_ebur128_summary(["no summary here"])


def test_ebur128_silence_is_minus_infinity() -> None:
    lines = [line.replace("-20.1", "-inf") for line in SUMMARY]
    loudness = parse_ebur128_summary(lines)
    assert loudness.integrated_lufs == float("-inf")
    assert loudness.to_dict()["integrated_lufs"] is None


@pytest.mark.parametrize(
    ("head", "container"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"FORM\x00\x00\x00\x00AIFFCOMM", "aiff"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64" + bytes(64), "mp3"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00fLaC" + bytes(64), "flac"),
        (b"\xff\xfb\x90\x64" + bytes(64), "mp3"),
        (b"OggS\x00\x02" + bytes(22) + b"OpusHead", "ogg"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "matroska"),
        # a FITS header: 80-character ASCII cards filling a 2880-byte block
        ((b"SIMPLE  =                    T" + b" " * 50 + b"END" + b" " * 77).ljust(2880), "fits"),
        (b"[build-system]\nrequires = []\n", "text"),
        (b'{"a": 1}', "json"),
        (b"", "empty"),
    ],
)
def test_sniff_bytes(head: bytes, container: str) -> None:
    assert sniff_bytes(head).container == container


def test_progress_math_and_throttle() -> None:
    progress = make_progress(5.0, 20.0, 2.0)
    assert (progress.fraction, progress.eta_s) == (0.25, 7.5)
    assert make_progress(30.0, 20.0, None).fraction == 1.0
    seen: list[Progress] = []
    throttle = ProgressThrottle(seen.append, interval_s=60.0)
    for i in range(10):
        throttle(make_progress(float(i), 10.0, 1.0))
    throttle(Progress(1.0, 10.0, 1.0, 0.0), final=True)
    assert [p.fraction for p in seen] == [0.0, 1.0]


def _video(name: str, width: int, height: int, bandwidth: int) -> Track:
    base = _track(name, "avc1.64001F", [90000 * 6, 90000 * 6, 90000 * 2], bandwidth)
    return Track(
        **{
            **base.__dict__,
            "timescale": 90000,
            "sample_rate": 0,
            "channels": 0,
            "width": width,
            "height": height,
            "frame_rate": 30000 / 1001,
        }
    )


def test_video_master_names_the_audio_group_and_adds_its_bandwidth(tmp_path: Path) -> None:
    v720 = _video("v720", 1280, 720, 3_000_000)
    v360 = Track(**{**_video("v360", 640, 360, 800_000).__dict__, "codecs": "avc1.64001E"})
    audio = _track("aac", "mp4a.40.2", [288000, 288000, 96000], 130_000)
    write_master_playlist([v720, v360, audio], tmp_path / "master.m3u8")
    text = (tmp_path / "master.m3u8").read_text()
    media = [line for line in text.splitlines() if line.startswith("#EXT-X-MEDIA:")]
    assert media == [
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="aac",DEFAULT=YES,AUTOSELECT=YES,'
        'CHANNELS="2",URI="aac/playlist.m3u8"'
    ]
    variants = [line for line in text.splitlines() if line.startswith("#EXT-X-STREAM-INF:")]
    assert variants[0] == (
        "#EXT-X-STREAM-INF:BANDWIDTH=3130000,AVERAGE-BANDWIDTH=3128000,"
        'CODECS="avc1.64001F,mp4a.40.2",RESOLUTION=1280x720,FRAME-RATE=29.970,AUDIO="audio"'
    )
    assert 'CODECS="avc1.64001E,mp4a.40.2",RESOLUTION=640x360' in variants[1]
    assert text.splitlines()[-1] == "v360/playlist.m3u8"


def test_video_mpd_keeps_every_rung_in_one_adaptation_set(tmp_path: Path) -> None:
    v720 = _video("v720", 1280, 720, 3_000_000)
    v360 = Track(**{**_video("v360", 640, 360, 800_000).__dict__, "codecs": "avc1.64001E"})
    audio = _track("aac", "mp4a.40.2", [288000, 288000, 96000], 130_000)
    write_mpd([v720, v360, audio], tmp_path / "manifest.mpd")
    root = ET.parse(tmp_path / "manifest.mpd").getroot()
    sets = root.findall("d:Period/d:AdaptationSet", NS)
    assert [s.get("contentType") for s in sets] == ["video", "audio"]
    video = sets[0]
    assert (video.get("maxWidth"), video.get("maxHeight")) == ("1280", "720")
    reps = video.findall("d:Representation", NS)
    assert [(r.get("id"), r.get("codecs"), r.get("width"), r.get("frameRate")) for r in reps] == [
        ("v720", "avc1.64001F", "1280", "30000/1001"),
        ("v360", "avc1.64001E", "640", "30000/1001"),
    ]
