"""The e2e tier: `ingestd serve` in a subprocess, the CLI in other subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingestd.testing.server import free_port

BIN = Path(sys.executable).parent / "ingestd"


@dataclass
class Served:
    url: str
    data_dir: Path
    key: str
    env: dict[str, str]
    log: Path

    def cli(
        self, *args: str, timeout: float = 600, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,  # type: ignore[call-overload]
        )


def start_server(data: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`ingestd serve` in its own process group; returns once /health answers."""
    port = free_port()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"ingestd serve did not start:\n{log.read_text()}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def client_env(tmp_path: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "INGESTD_DATA_DIR": str(data),
        "INGESTD_CLIENT_STATE_DIR": str(tmp_path / "client-state"),
        "INGESTD_POLL_S": "0.2",
        "NO_COLOR": "1",
        **extra,
    }
    env.pop("INGESTD_API_KEY", None)
    return env


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    data = tmp_path / "data"
    env = client_env(tmp_path, data)
    log = tmp_path / "serve.log"
    proc, url = start_server(data, env, log)
    env["INGESTD_SERVER"] = url
    try:
        yield Served(url, data, (data / "local-key").read_text().strip(), env, log)
    finally:
        stop_server(proc)
