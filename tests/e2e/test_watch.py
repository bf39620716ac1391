"""`ingestd watch` in its own process: a file written slowly is ingested once, after it has
stopped growing, and not again while it stays unchanged."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingestd.testing.media import make_tone

from .conftest import BIN, client_env

SETTLE_S = 1.5


def _orders(env: dict[str, str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(BIN), "orders", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def test_watch_ingests_a_slowly_written_file_once(tmp_path: Path, ffmpeg: str) -> None:
    data = tmp_path / "data"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = client_env(tmp_path, data, INGESTD_WATCH_SETTLE_S=str(SETTLE_S))
    payload = make_tone(ffmpeg, tmp_path / "take.wav", seconds=2).read_bytes()
    log = tmp_path / "watch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN), "watch", str(inbox), "--worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        time.sleep(1.0)
        target = inbox / "take.wav"
        pieces = [
            payload[i : i + len(payload) // 4 + 1]
            for i in range(0, len(payload), len(payload) // 4 + 1)
        ]
        with open(target, "wb") as f:
            for piece in pieces:  # each pause shorter than the settle time
                last_write = datetime.now(UTC)
                f.write(piece)
                f.flush()
                time.sleep(SETTLE_S / 2)
        assert target.stat().st_size == len(payload)

        deadline = time.monotonic() + 120
        while True:
            found = _orders(env)
            if found and found[0]["status"] in ("completed", "failed"):
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{found}\n{log.read_text()}"
            time.sleep(0.5)
        (order,) = found
        assert order["status"] == "completed", (order, log.read_text())
        assert order["path"] == str(target.resolve())
        assert order["content"]["size"] == len(payload)  # the whole file, not a piece of it
        assert datetime.fromisoformat(order["created_at"]) >= last_write

        time.sleep(3 * SETTLE_S)  # unchanged: not ordered again
        (still,) = _orders(env)
        assert still["status"] == "completed" and still["updated_at"] == order["updated_at"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, log.read_text()
