"""package_audio: one set of fMP4 segments behind HLS and DASH, manifests from measurements."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ingestd.media import (
    DEFAULT_AUDIO_LADDER,
    PackageResult,
    Toolchain,
    package_audio,
    pcm_md5,
    run_ffprobe_json,
)
from ingestd.testing.media import make_tone

SECONDS = 10.0
SEGMENT_S = 4.0
OWN_OUTPUT = ["-protocol_whitelist", "file,crypto,data,concat"]
FFPROBE_CODEC = {"mp4a.40.2": "aac", "opus": "opus", "fLaC": "flac"}
NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover()


@pytest.fixture(scope="module")
def packaged(tc: Toolchain, tmp_path_factory) -> tuple[Path, Path, PackageResult]:
    """A 10 s 24-bit 5.1 master, packaged with the default ladder in 4 s segments."""
    root = tmp_path_factory.mktemp("package")
    master = make_tone(
        tc.ffmpeg, root / "master.wav", seconds=SECONDS, channels=6, codec="pcm_s24le"
    )
    out = root / "out"
    result = asyncio.run(package_audio(tc, master, out, segment_s=SEGMENT_S))
    return master, out, result


def _probe(tc: Toolchain, target: str) -> dict[str, Any]:
    args = [*OWN_OUTPUT, "-show_format", "-show_streams", "-i", target]
    return asyncio.run(run_ffprobe_json(tc, args))


def _master_variants(path: Path) -> list[tuple[dict[str, str], str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in lines
    variants = []
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1]))
            variants.append(({k: v.strip('"') for k, v in attrs.items()}, lines[i + 1]))
    return variants


def _extinf(playlist: Path) -> list[tuple[float, str]]:
    lines = playlist.read_text().splitlines()
    return [
        (float(line[8:].rstrip(",")), lines[i + 1])
        for i, line in enumerate(lines)
        if line.startswith("#EXTINF:")
    ]


def test_layout_and_files(packaged) -> None:
    _, out, result = packaged
    assert [r.name for r in result.renditions] == [r.name for r in DEFAULT_AUDIO_LADDER]
    assert (result.hls_master, result.dash_manifest) == ("master.m3u8", "manifest.mpd")
    for name in result.files:
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # staging removed


def test_ffprobe_reads_master_playlist(tc: Toolchain, packaged) -> None:
    _, out, _ = packaged
    info = _probe(tc, str(out / "master.m3u8"))
    codecs = [s["codec_name"] for s in info["streams"]]
    assert codecs == ["aac", "aac", "opus", "flac"]
    assert float(info["format"]["duration"]) == pytest.approx(SECONDS, abs=0.05)


def test_master_codecs_and_bandwidth_match_the_segments(tc: Toolchain, packaged) -> None:
    _, out, result = packaged
    variants = _master_variants(out / "master.m3u8")
    assert len(variants) == len(result.renditions)
    for attrs, uri in variants:
        stream = _probe(tc, str(out / uri))["streams"][0]
        assert FFPROBE_CODEC[attrs["CODECS"]] == stream["codec_name"], uri
        if stream["codec_name"] == "aac":
            assert stream["profile"] == "LC"
        peak, average = int(attrs["BANDWIDTH"]), int(attrs["AVERAGE-BANDWIDTH"])
        assert peak >= average > 0
        segments = _extinf(out / uri)
        sizes = [(out / uri).parent.joinpath(name).stat().st_size for _, name in segments]
        durations = [d for d, _ in segments]
        target = int(_tag(out / uri, "#EXT-X-TARGETDURATION:"))
        # RFC 8216: the peak is over runs of segments lasting 0.5 to 1.5 target durations.
        windows = [
            sum(sizes[i:j]) * 8 / sum(durations[i:j])
            for i in range(len(sizes))
            for j in range(i + 1, len(sizes) + 1)
            if 0.5 * target <= sum(durations[i:j]) <= 1.5 * target
        ]
        assert peak == pytest.approx(max(windows), rel=0.001)
        assert average == pytest.approx(sum(sizes) * 8 / sum(durations), rel=0.001)


def _tag(playlist: Path, prefix: str) -> str:
    return next(line for line in playlist.read_text().splitlines() if line.startswith(prefix))[
        len(prefix) :
    ]


def test_rendition_formats(tc: Toolchain, packaged) -> None:
    _, out, result = packaged
    for rendition in result.renditions:
        stream = _probe(tc, str(out / rendition.playlist))["streams"][0]
        assert stream["channels"] == rendition.channels
        assert int(stream["sample_rate"]) == rendition.sample_rate
        if rendition.codec == "flac":  # keeps the source's channels, rate and depth
            assert (rendition.channels, rendition.sample_rate) == (6, 48000)
            assert stream["bits_per_raw_sample"] == "24"
        else:
            assert rendition.channels == 2
            assert rendition.sample_rate == 48000
    bitrates = {r.name: r.average_bandwidth for r in result.renditions}
    assert bitrates["aac_256"] > bitrates["aac_128"]


def test_segment_durations(packaged) -> None:
    _, out, result = packaged
    for rendition in result.renditions:
        durations = [d for d, _ in _extinf(out / rendition.playlist)]
        assert len(durations) == 3
        for d in durations[:-1]:
            assert d == pytest.approx(SEGMENT_S, abs=0.05)  # one AAC frame is 21 ms
        # Total within one audio frame of the source (AAC: 1024 samples = 21.3 ms).
        assert sum(durations) == pytest.approx(SECONDS, abs=0.022)


def _attr(element: ET.Element | None, name: str) -> str:
    assert element is not None
    value = element.get(name)
    assert value is not None, f"{element.tag} has no {name}"
    return value


def _resolve_representation(rep: ET.Element, template: ET.Element) -> tuple[str, list[str], int]:
    numbered = []
    number = int(template.get("startNumber", "1"))
    total = 0
    for s in template.findall("d:SegmentTimeline/d:S", NS):
        for _ in range(int(s.get("r", "0")) + 1):
            width = re.search(r"\$Number%0(\d+)d\$", _attr(template, "media"))
            assert width is not None
            media = _attr(template, "media").replace(width[0], f"{number:0{int(width[1])}d}")
            numbered.append(media.replace("$RepresentationID$", _attr(rep, "id")))
            total += int(_attr(s, "d"))
            number += 1
    return _attr(template, "initialization"), numbered, total


def test_mpd_resolves_to_playable_representations(tc: Toolchain, packaged) -> None:
    """The bundled ffprobe has no DASH demuxer (built without libxml2): resolve the MPD's
    SegmentTemplate/SegmentTimeline ourselves and probe what it points at."""
    _, out, result = packaged
    mpd = ET.parse(out / "manifest.mpd").getroot()
    assert mpd.get("type") == "static"
    reps = mpd.findall(".//d:Representation", NS)
    assert sorted(_attr(r, "id") for r in reps) == sorted(r.name for r in result.renditions)
    for rep in reps:
        adaptation = next(a for a in mpd.iter(f"{{{NS['d']}}}AdaptationSet") if rep in list(a))
        template = rep.find("d:SegmentTemplate", NS)
        assert template is not None
        init, segments, ticks = _resolve_representation(rep, template)
        assert all((out / s).is_file() for s in [init, *segments])
        assert ticks / int(_attr(template, "timescale")) == pytest.approx(SECONDS, abs=0.022)
        joined = "concat:" + "|".join(str(out / s) for s in [init, *segments])
        stream = _probe(tc, joined)["streams"][0]
        assert FFPROBE_CODEC[_attr(adaptation, "codecs")] == stream["codec_name"]
        channels = _attr(adaptation.find("d:AudioChannelConfiguration", NS), "value")
        assert int(channels) == stream["channels"]
        assert int(_attr(adaptation, "audioSamplingRate")) == int(stream["sample_rate"])
        assert int(_attr(rep, "bandwidth")) > 0


def _dash_capable_ffprobe() -> str | None:
    candidate = shutil.which("ffprobe")
    if candidate is None:
        return None
    demuxers = subprocess.run([candidate, "-hide_banner", "-demuxers"], capture_output=True)
    return candidate if re.search(rb"\sdash\s", demuxers.stdout) else None


@pytest.mark.skipif(_dash_capable_ffprobe() is None, reason="no ffprobe with a DASH demuxer")
def test_dash_demuxer_reads_manifest(packaged) -> None:
    _, out, _ = packaged
    ffprobe = _dash_capable_ffprobe()
    assert ffprobe is not None
    done = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            *OWN_OUTPUT,
            "-of",
            "csv=p=0",
            "-show_entries",
            "stream=codec_name",
            str(out / "manifest.mpd"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(set(done.stdout.split())) == ["aac", "flac", "opus"]


def test_flac_rendition_is_lossless(tc: Toolchain, packaged) -> None:
    master, out, result = packaged
    flac = next(r for r in result.renditions if r.codec == "flac")
    assert flac.lossless is not None and flac.lossless.lossless
    source = asyncio.run(pcm_md5(tc, master))
    decoded = asyncio.run(pcm_md5(tc, out / flac.playlist, pcm_codec="pcm_s24le", trusted=True))
    assert source == decoded == flac.lossless.source_pcm_md5


def test_centre_only_5_1_is_heard_on_both_stereo_channels(tc: Toolchain, tmp_path: Path) -> None:
    """A proper downmix folds the centre into L and R (a naive one drops it)."""
    master = tmp_path / "centre.wav"
    exprs = "|".join(["0", "0", "0.5*sin(2*PI*440*t)", "0", "0", "0"])
    subprocess.run(
        [
            tc.ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"aevalsrc={exprs}:s=48000:d=2:c=5.1",
            "-c:a",
            "pcm_s16le",
            str(master),
        ],
        check=True,
    )
    ladder = [DEFAULT_AUDIO_LADDER[0]]
    result = asyncio.run(package_audio(tc, master, tmp_path / "out", ladder))
    playlist = tmp_path / "out" / result.renditions[0].playlist
    stats = subprocess.run(
        [
            tc.ffmpeg,
            "-v",
            "info",
            *OWN_OUTPUT,
            "-i",
            str(playlist),
            "-af",
            "astats=measure_overall=none:measure_perchannel=RMS_level",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    levels = [float(v) for v in re.findall(r"RMS level dB: (-?[\d.]+)", stats)]
    assert len(levels) == 2
    assert levels[0] == pytest.approx(levels[1], abs=0.5)
    assert -30 < levels[0] < -6
