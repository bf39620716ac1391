"""The CLI commands that work on a data dir directly: migrate, keys, ingest."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ingestd.testing.media import make_text_file, make_tone
from tests.e2e.conftest import BIN


def run(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INGESTD_DATA_DIR": str(data), "NO_COLOR": "1"}
    return subprocess.run(
        [str(BIN), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_keys_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("migrate", data=data).returncode == 0
    created = run("keys", "create", "--owner", "studio", "--label", "ci", data=data)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("ik_") and len(key) > 40
    prefix = key.split("_")[1]
    listed = run("keys", "list", data=data).stdout
    assert prefix in listed and "studio" in listed and key not in listed  # never shown again
    assert run("keys", "revoke", prefix, data=data).returncode == 0
    assert run("keys", "revoke", "nope", data=data).returncode == 1


def test_ingest_local_files_without_http(tmp_path: Path, ffmpeg: str) -> None:
    data = tmp_path / "data"
    good = make_tone(ffmpeg, tmp_path / "take.flac", seconds=3, codec="flac")
    bad = make_text_file(tmp_path / "notes.wav")
    result = run("ingest", str(good), str(bad), "--json", data=data)
    assert result.returncode == 1  # one of them failed
    first, second = json.loads(result.stdout)
    assert first["status"] == "ready" and first["metadata"]["loudness"]
    assert second["status"] == "failed" and "not an audio file" in second["error"]
