"""Sniffing from bytes and probing generated files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingestd.errors import SourceRejected
from ingestd.media import Toolchain, probe, sniff
from ingestd.testing.media import make_noise_file, make_text_file, make_tone


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover()


@pytest.mark.parametrize(
    ("name", "codec", "kind", "container"),
    [
        ("a.wav", "pcm_s16le", "audio", "wav"),
        ("a.flac", "flac", "audio", "flac"),
        ("a.aiff", "pcm_s16be", "audio", "aiff"),
        ("a.mp3", "libmp3lame", "audio", "mp3"),
        ("a.ogg", "libopus", "audio", "ogg"),
        ("a.m4a", "aac", "audio", "mp4"),
        ("a.mp4", "aac", "video", "mp4"),
        ("a.mka", "flac", "video", "matroska"),
    ],
)
def test_sniff_containers(tc: Toolchain, tmp_path: Path, name, codec, kind, container) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / name, seconds=0.5, codec=codec)
    renamed = path.rename(tmp_path / "upload.bin")  # the name must play no part
    sniffed = sniff(renamed)
    assert (sniffed.kind, sniffed.container) == (kind, container)


def test_sniff_fits_text_and_noise(tmp_path: Path) -> None:
    fits = tmp_path / "x.wav"
    fits.write_bytes(b"SIMPLE  =                    T".ljust(2880, b" "))
    assert sniff(fits).kind == "fits"
    assert sniff(make_text_file(tmp_path / "t.wav")).container == "text"
    noise = sniff(make_noise_file(tmp_path / "n.wav"))
    assert (noise.kind, noise.container) == ("unknown", "unknown")


def test_probe_24bit_96k(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.wav", codec="pcm_s24le", sample_rate=96000)
    result = asyncio.run(probe(tc, path))
    (audio,) = result.audio
    assert (audio.codec, audio.sample_rate, audio.channels, audio.bits_per_sample) == (
        "pcm_s24le",
        96000,
        2,
        24,
    )
    assert result.duration_s == pytest.approx(3.0, abs=0.01)
    assert result.video_streams == 0
    assert result.to_dict()["audio"][0]["sample_rate"] == 96000


def test_probe_8bit_mono(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.wav", codec="pcm_u8", channels=1, sample_rate=8000)
    (audio,) = asyncio.run(probe(tc, path)).audio
    assert (audio.codec, audio.channels, audio.bits_per_sample) == ("pcm_u8", 1, 8)


def test_probe_5_1(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.wav", channels=6)
    (audio,) = asyncio.run(probe(tc, path)).audio
    assert (audio.channels, audio.channel_layout) == (6, "5.1")


def test_probe_flac(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.flac", codec="flac", sample_fmt="s16")
    result = asyncio.run(probe(tc, path))
    assert result.format_name == "flac"
    assert (result.audio[0].codec, result.audio[0].bits_per_sample) == ("flac", 16)


def test_probe_rejects_garbage(tc: Toolchain, tmp_path: Path) -> None:
    with pytest.raises(SourceRejected, match="unreadable media"):
        asyncio.run(probe(tc, make_noise_file(tmp_path / "n.wav")))


@pytest.mark.parametrize("name", ["list.m3u8", "list.wav"])
def test_a_playlist_pointing_at_another_local_file_is_not_followed(
    tc: Toolchain, tmp_path: Path, name: str
) -> None:
    # A real, readable audio file elsewhere on the disk: only the demuxer whitelist stops it.
    target = make_tone(tc.ffmpeg, tmp_path / "elsewhere.ts", seconds=1, codec="aac")
    playlist = tmp_path / name
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n" + str(target) + "\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(SourceRejected, match="unreadable media"):
        asyncio.run(probe(tc, playlist))
    assert asyncio.run(probe(tc, target)).audio  # the file itself is fine
