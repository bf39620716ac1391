"""validate_audio accepts real audio and rejects fakes, truncations and corruption, saying why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingestd.errors import SourceRejected
from ingestd.media import Toolchain, validate_audio
from ingestd.testing.media import (
    corrupt_bytes,
    corrupt_flac_streaminfo,
    make_noise_file,
    make_text_file,
    make_tone,
    truncate,
)


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover()


def _reject(tc: Toolchain, path: Path, **kwargs) -> str:
    with pytest.raises(SourceRejected) as info:
        asyncio.run(validate_audio(tc, path, **kwargs))
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "codec", "sample_fmt"),
    [("a.wav", "pcm_s24le", None), ("a.flac", "flac", "s16"), ("a.aiff", "pcm_s16be", None)],
)
def test_accepts_valid_audio(tc: Toolchain, tmp_path: Path, name, codec, sample_fmt) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / name, seconds=2, codec=codec, sample_fmt=sample_fmt)
    fractions: list[float] = []
    result = asyncio.run(
        validate_audio(tc, path, on_progress=lambda p: fractions.append(p.fraction))
    )
    assert result.duration_s == pytest.approx(2.0, abs=0.01)
    assert fractions[-1] == 1.0


def test_rejects_random_bytes_named_wav(tc: Toolchain, tmp_path: Path) -> None:
    reason = _reject(tc, make_noise_file(tmp_path / "song.wav"))
    assert reason == "not an audio file (looks like unknown data)"


def test_rejects_text_named_wav(tc: Toolchain, tmp_path: Path) -> None:
    reason = _reject(tc, make_text_file(tmp_path / "song.wav"))
    assert reason == "not an audio file (looks like text)"


def test_rejects_truncated_wav(tc: Toolchain, tmp_path: Path) -> None:
    path = truncate(make_tone(tc.ffmpeg, tmp_path / "a.wav", seconds=2), 0.6)
    reason = _reject(tc, path)
    assert reason.startswith("truncated file: the header declares 384000 bytes of audio data")


def test_rejects_broken_flac_streaminfo(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.flac", codec="flac", sample_fmt="s16")
    reason = _reject(tc, corrupt_flac_streaminfo(path))
    assert reason.startswith("corrupt FLAC: invalid STREAMINFO")
    assert "sample rate 0" in reason


def test_rejects_flac_with_corrupt_frames(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.flac", codec="flac", sample_fmt="s16")
    reason = _reject(tc, corrupt_bytes(path, 0.5))
    assert reason.startswith("corrupt audio: ")


def test_rejects_over_max_duration(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "a.wav", seconds=2)
    assert _reject(tc, path, max_duration_s=1.5).startswith("too long: 2.0 s")
