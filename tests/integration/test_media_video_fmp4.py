"""fMP4 parsing of real H.264 CMAF output: codecs, picture size, keyframe-aligned segments."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from ingestd.media.cmaf import measure_track
from ingestd.media.fmp4 import parse_init, parse_segment
from ingestd.media.playlists import write_master_playlist, write_mpd


def encode_two_rungs(ffmpeg: str, out: Path) -> None:
    """2 video rungs and one audio track, 2 s GOPs and segments, like the video ladder."""
    for i in range(3):
        (out / f"r{i}").mkdir(parents=True)
    graph = "[0:v]split=2[a][b];[a]scale=320:180[v0];[b]scale=160:90[v1]"
    subprocess.run(
        [
            *(ffmpeg, "-v", "error", "-f", "lavfi", "-i"),
            "testsrc2=size=320x180:rate=25:duration=5",
            *("-f", "lavfi", "-i", "sine=frequency=440:duration=5"),
            *("-filter_complex", graph, "-map", "[v0]", "-map", "[v1]", "-map", "1:a"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-b:v:0", "400k", "-b:v:1", "150k"),
            *("-g", "50", "-keyint_min", "50", "-sc_threshold", "0"),
            *("-x264-params", "open-gop=0", "-c:a", "aac", "-b:a", "64k"),
            *("-f", "dash", "-dash_segment_type", "mp4", "-seg_duration", "2"),
            *("-use_template", "1", "-use_timeline", "1"),
            *("-adaptation_sets", "id=0,streams=v id=1,streams=a"),
            *("-init_seg_name", "r$RepresentationID$/init.mp4"),
            *("-media_seg_name", "r$RepresentationID$/seg_$Number%05d$.m4s"),
            str(out / "ffmpeg.mpd"),
        ],
        check=True,
        capture_output=True,
    )


def test_video_init_and_segments_are_described_exactly(tmp_path: Path, ffmpeg: str) -> None:
    encode_two_rungs(ffmpeg, tmp_path)
    big, small, audio = (parse_init(tmp_path / f"r{i}" / "init.mp4") for i in range(3))
    assert big.is_video and small.is_video and not audio.is_video
    assert (big.width, big.height, small.width, small.height) == (320, 180, 160, 90)
    # avc1.PPCCLL: x264 ultrafast is Constrained Baseline (0x42 with constraint flags)
    assert big.codecs.startswith("avc1.42") and len(big.codecs) == len("avc1.42C00D")
    assert audio.codecs == "mp4a.40.2"

    starts = []
    for i, init in ((0, big), (1, small)):
        segments = [parse_segment(p, init) for p in sorted((tmp_path / f"r{i}").glob("seg_*"))]
        assert len(segments) == 3  # 2 + 2 + 1 seconds
        assert all(s.starts_with_sync for s in segments)  # every segment opens on a keyframe
        starts.append([s.base_decode_time / init.timescale for s in segments])
        total = sum(s.duration for s in segments) / init.timescale
        assert abs(total - 5.0) <= 1 / 25
    assert starts[0] == starts[1]  # rungs cut at the same times: players can switch


def test_manifests_from_measured_video_tracks(tmp_path: Path, ffmpeg: str) -> None:
    encode_two_rungs(ffmpeg, tmp_path)
    tracks = [measure_track(f"r{i}", tmp_path / f"r{i}", frame_rate=25.0)[0] for i in range(3)]
    write_master_playlist(tracks, tmp_path / "master.m3u8")
    write_mpd(tracks, tmp_path / "manifest.mpd")
    master = (tmp_path / "master.m3u8").read_text()
    assert f'CODECS="{tracks[0].codecs},mp4a.40.2",RESOLUTION=320x180' in master
    assert "RESOLUTION=160x90" in master and 'URI="r2/playlist.m3u8"' in master
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.parse(tmp_path / "manifest.mpd").getroot()
    video = root.find("d:Period/d:AdaptationSet[@contentType='video']", ns)
    assert video is not None
    assert [r.get("height") for r in video.findall("d:Representation", ns)] == ["180", "90"]
