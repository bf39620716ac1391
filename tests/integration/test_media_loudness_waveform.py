"""Loudness of a calibrated tone and the waveform overview."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from ingestd.media import Toolchain, measure_loudness, waveform
from ingestd.testing.media import make_tone


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover()


def test_loudness_of_a_997hz_sine_at_minus_20_dbfs(tc: Toolchain, tmp_path: Path) -> None:
    """BS.1770 is calibrated so that a 997 Hz sine at 0 dBFS in one channel reads -3.01 LKFS
    (K-weighting is ~0 dB there). Two such channels add 3.01 dB, so a -20 dBFS stereo tone
    reads -20.0 LUFS; its true peak is -20 dBTP. 0.3 LU covers the filters' tolerance."""
    amplitude = 10 ** (-20 / 20)
    path = make_tone(
        tc.ffmpeg,
        tmp_path / "t.wav",
        seconds=5,
        amplitude=amplitude,
        frequencies=[997.0],
        codec="pcm_s24le",
    )
    loudness = asyncio.run(measure_loudness(tc, path, duration_s=5))
    assert loudness.integrated_lufs == pytest.approx(-20.0, abs=0.3)
    assert loudness.true_peak_dbtp == pytest.approx(-20.0, abs=0.3)
    # The relative gate sits 10 LU below the integrated loudness.
    assert loudness.threshold_lufs == pytest.approx(loudness.integrated_lufs - 10, abs=0.2)
    assert loudness.loudness_range_lu >= 0


def test_loudness_of_one_channel_is_3db_lower(tc: Toolchain, tmp_path: Path) -> None:
    amplitude = 10 ** (-20 / 20)
    path = make_tone(
        tc.ffmpeg,
        tmp_path / "m.wav",
        seconds=5,
        amplitude=amplitude,
        frequencies=[997.0],
        channels=1,
    )
    loudness = asyncio.run(measure_loudness(tc, path))
    assert loudness.integrated_lufs == pytest.approx(-23.0, abs=0.3)


def test_waveform_json_and_png(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "t.wav", seconds=3, amplitude=0.5, channels=6)
    out_json, out_png = tmp_path / "w.json", tmp_path / "w.png"
    wave = asyncio.run(waveform(tc, path, out_json, out_png, points=200, width=400, height=100))
    data = json.loads(out_json.read_text())
    assert data["version"] == 1
    assert data["points"] == 200 == len(data["peaks"]) == wave.points
    assert data["duration_s"] == pytest.approx(3.0, abs=0.01)
    for lo, hi in data["peaks"]:
        assert -1 <= lo <= hi <= 1
        # A 0.5-amplitude tone (>= 110 Hz) swings fully within every 15 ms bucket.
        assert lo == pytest.approx(-0.5, abs=0.01)
        assert hi == pytest.approx(0.5, abs=0.01)
    with Image.open(out_png) as image:
        assert image.size == (400, 100)
        alpha = image.getchannel("A")
        column = [alpha.getpixel((200, y)) for y in range(100)]
    drawn = [y for y, alpha in enumerate(column) if alpha]
    # Half amplitude fills the middle half of the height.
    assert min(drawn) == pytest.approx(25, abs=2)
    assert max(drawn) == pytest.approx(74, abs=2)


def test_waveform_of_silence_then_tone(tc: Toolchain, tmp_path: Path) -> None:
    path = make_tone(tc.ffmpeg, tmp_path / "t.wav", seconds=2, amplitude=0.8, channels=1)
    padded = tmp_path / "p.wav"
    import subprocess

    subprocess.run(
        [tc.ffmpeg, "-v", "error", "-i", str(path), "-af", "adelay=2s:all=1", str(padded)],
        check=True,
    )
    wave = asyncio.run(waveform(tc, padded, tmp_path / "w.json", tmp_path / "w.png", points=40))
    assert wave.duration_s == pytest.approx(4.0, abs=0.01)
    first, last = wave.peaks[:19], wave.peaks[21:]
    assert all(math.isclose(hi, 0.0, abs_tol=1e-4) for _, hi in first)
    assert all(hi == pytest.approx(0.8, abs=0.01) for _, hi in last)
