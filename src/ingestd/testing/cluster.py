"""A distributed ingestd on one machine, for tests and benches: api, worker, scheduler and
amqp-ingest processes sharing PostgreSQL, RabbitMQ, Redis and an S3 server.

Every process runs the real ``ingestd`` command with ``INGESTD_*`` variables, as
``deploy/compose.yaml`` runs them; each gets its own data dir (scratch space only: with an S3
store nothing durable lives there). Broker and Redis names carry a prefix of the cluster's
own, so that clusters, tests and a deployment on the same servers never meet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ingestd.testing.server import free_port

BIN = Path(sys.executable).parent / "ingestd"


@dataclass
class Backends:
    database_url: str
    broker_url: str
    redis_url: str
    storage_url: str
    aws_access_key: str
    aws_secret_key: str
    aws_region: str = "us-east-1"


@dataclass
class Cluster:
    backends: Backends
    root: Path
    settings: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:8]}")
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        b = self.backends
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTD_", "AWS_"))}
        env.update(
            {
                "INGESTD_DATA_DIR": str(self.root / name),
                "INGESTD_DATABASE_URL": b.database_url,
                "INGESTD_BROKER_URL": b.broker_url,
                "INGESTD_BROKER_PREFIX": f"{self.prefix}.",
                "INGESTD_REDIS_URL": b.redis_url,
                "INGESTD_REDIS_PREFIX": f"{self.prefix}:",
                "INGESTD_STORAGE_URL": b.storage_url,
                "INGESTD_SECRET": f"{self.prefix}-signing-secret",
                "AWS_ACCESS_KEY_ID": b.aws_access_key,
                "AWS_SECRET_ACCESS_KEY": b.aws_secret_key,
                "AWS_DEFAULT_REGION": b.aws_region,
                **self.settings,
                **extra,
            }
        )
        return env

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, role: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start ``ingestd <role> <args>`` as ``name``; an api waits until /health answers."""
        command = [str(BIN), role, *args]
        if role == "api":
            port = free_port()
            command += ["--host", "127.0.0.1", "--port", str(port)]
            extra.setdefault("INGESTD_REPLICA_URL", f"http://127.0.0.1:{port}")
        with open(self.log(name), "ab") as out:
            process = subprocess.Popen(
                command,
                env=self.env(name, **extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        if role == "api":
            url = f"http://127.0.0.1:{port}"
            self._wait_healthy(name, url)
            self.urls[name] = url
        return process

    def _wait_healthy(self, name: str, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.tail(name)}")
            time.sleep(0.1)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args],
            env=self.env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def create_key(self, owner: str) -> str:
        done = self.cli("keys", "create", "--owner", owner)
        if done.returncode != 0:
            raise RuntimeError(f"keys create failed: {done.stderr}")
        return done.stdout.strip().splitlines()[-1]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def stop(self, name: str, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process = self.processes.pop(name)
        self.urls.pop(name, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log(name)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.tail(name)}" for name in sorted(self.processes))


@contextlib.contextmanager
def running_cluster(backends: Backends, root: Path, **settings: str) -> Iterator[Cluster]:
    """A cluster whose processes are stopped on exit (started by the caller)."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(backends, root, dict(settings))
    try:
        yield cluster
    finally:
        cluster.stop_all()
