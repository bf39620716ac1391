"""archive_flac keeps the bit depth and proves losslessness three ways."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingestd.errors import SourceRejected
from ingestd.media import Toolchain, archive_flac, pcm_md5, probe
from ingestd.media.headers import read_flac_streaminfo
from ingestd.testing.media import make_tone


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover()


@pytest.mark.parametrize(
    ("codec", "rate", "channels", "flac_bits"),
    [("pcm_s24le", 96000, 2, 24), ("pcm_s16le", 44100, 2, 16), ("pcm_u8", 22050, 1, 16)],
)
def test_archive_is_lossless(tc: Toolchain, tmp_path: Path, codec, rate, channels, flac_bits):
    master = make_tone(
        tc.ffmpeg, tmp_path / "m.wav", seconds=2, codec=codec, sample_rate=rate, channels=channels
    )
    out = tmp_path / "m.flac"
    proof = asyncio.run(archive_flac(tc, master, out))
    assert proof.lossless
    assert proof.source_pcm_md5 == proof.archive_pcm_md5 == proof.streaminfo_md5
    info = read_flac_streaminfo(out)
    assert (info.bits_per_sample, info.sample_rate, info.channels) == (flac_bits, rate, channels)
    assert info.total_samples == 2 * rate
    (audio,) = asyncio.run(probe(tc, out)).audio
    assert audio.bits_per_sample == flac_bits
    if codec != "pcm_u8":  # same depth: the native PCM MD5s agree too
        assert asyncio.run(pcm_md5(tc, master)) == asyncio.run(pcm_md5(tc, out))


def test_pcm_md5_sees_a_one_sample_difference(tc: Toolchain, tmp_path: Path) -> None:
    a = make_tone(tc.ffmpeg, tmp_path / "a.wav", seconds=1)
    b = tmp_path / "b.wav"
    data = bytearray(a.read_bytes())
    data[-1] ^= 0x01
    b.write_bytes(bytes(data))
    assert asyncio.run(pcm_md5(tc, a)) != asyncio.run(pcm_md5(tc, b))


def test_float_and_lossy_sources_are_refused(tc: Toolchain, tmp_path: Path) -> None:
    float_wav = make_tone(tc.ffmpeg, tmp_path / "f.wav", seconds=1, codec="pcm_f32le")
    with pytest.raises(SourceRejected, match="floating-point"):
        asyncio.run(archive_flac(tc, float_wav, tmp_path / "f.flac"))
    mp3 = make_tone(tc.ffmpeg, tmp_path / "a.mp3", seconds=1, codec="libmp3lame")
    with pytest.raises(SourceRejected, match="lossy"):
        asyncio.run(archive_flac(tc, mp3, tmp_path / "a.flac"))
    assert not (tmp_path / "f.flac").exists()
