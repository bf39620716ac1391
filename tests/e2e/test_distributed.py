"""Distributed mode end to end: 2 api + 2 worker + 1 scheduler processes (and an amqp-ingest
consumer) on real PostgreSQL, RabbitMQ, Redis and SeaweedFS.

One cluster serves the whole module; the tests run in file order and leave it running.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import boto3
import httpx
import psycopg
import pytest
import redis

from ingestd.testing.cluster import Backends, Cluster, running_cluster
from ingestd.testing.media import make_tone, make_video
from ingestd.testing.seaweed import S3Endpoint
from ingestd.uploads.blocks import content_digest

from ..conftest import PG_ADMIN

pytestmark = pytest.mark.postgres

BROKER = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = "redis://127.0.0.1:6379/0"
PART = 8 << 20  # the S3 staging part size: blocks and chunks are whole parts
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def bucket(seaweed: S3Endpoint) -> str:
    return seaweed.make_bucket(f"e2e-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def cluster_db() -> Iterator[str]:
    """The cluster's own database: its processes migrate it, as a deployment's would."""
    name = f"ingestd_cluster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, cluster_db: str, seaweed: S3Endpoint, bucket: str
) -> Iterator[Cluster]:
    backends = Backends(
        database_url=cluster_db,
        broker_url=BROKER,
        redis_url=REDIS,
        storage_url=f"s3://{bucket}/ingestd?endpoint={seaweed.endpoint_url}&region=us-east-1",
        aws_access_key=seaweed.access_key,
        aws_secret_key=seaweed.secret_key,
    )
    with running_cluster(
        backends,
        tmp_path_factory.mktemp("cluster"),
        INGESTD_LEASE_S="4",
        INGESTD_HEARTBEAT_S="1",
        INGESTD_POLL_S="2",
        INGESTD_RETRY_BASE_S="0.5",
        INGESTD_SCHEDULER_INTERVAL_S="1",
        INGESTD_WORKER_CONCURRENCY="2",
        INGESTD_VIDEO_PRESET="ultrafast",
        INGESTD_SEGMENT_S="2",
        INGESTD_LOG_LEVEL="INFO",
    ) as c:
        c.start("api1", "api")
        c.start("api2", "api")
        c.start("worker1", "worker")
        c.start("worker2", "worker")
        c.start("scheduler", "scheduler")
        try:
            yield c
        except BaseException:
            print(c.tails())
            raise


@pytest.fixture(scope="module")
def key(cluster: Cluster) -> str:
    return cluster.create_key("alice")


@pytest.fixture(scope="module")
def apis(cluster: Cluster, key: str) -> Iterator[list[httpx.Client]]:
    clients = [
        httpx.Client(
            base_url=cluster.urls[name], headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        for name in ("api1", "api2")
    ]
    yield clients
    for c in clients:
        c.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db(cluster: Cluster) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.backends.database_url, autocommit=True)


def wait_for(what: str, check: Callable[[], bool], cluster: Cluster, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{cluster.tails()}")
        time.sleep(0.3)


def status(api: httpx.Client, asset_id: str) -> dict[str, Any]:
    resp = api.get(f"/v1/assets/{asset_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def ready(api: httpx.Client, asset_id: str, cluster: Cluster, timeout: float = 240) -> None:
    def check() -> bool:
        state = status(api, asset_id)["status"]
        assert state != "failed", status(api, asset_id)
        return bool(state == "ready")

    wait_for(f"asset {asset_id} ready", check, cluster, timeout)


def upload_blocks(apis: list[httpx.Client], path: Path) -> str:
    """The block API, each request on the other replica."""
    data = path.read_bytes()
    hashes = [hashlib.sha256(data[i : i + PART]).hexdigest() for i in range(0, len(data), PART)]
    created = apis[0].post(
        "/v1/uploads",
        json={"filename": path.name, "size": len(data), "block_size": PART, "blocks": hashes},
    )
    assert created.status_code == 201, created.text
    up = created.json()
    for index, digest in enumerate(hashes):
        api = apis[(index + 1) % 2]
        resp = api.put(
            f"/v1/uploads/{up['upload_id']}/blocks/{index}",
            content=data[index * PART : (index + 1) * PART],
            headers={"Content-Digest": content_digest(digest)},
        )
        assert resp.status_code in (200, 201), resp.text
    done = apis[len(hashes) % 2].post(f"/v1/uploads/{up['upload_id']}/complete")
    assert done.status_code == 202, done.text
    asset: str = up["asset_id"]
    return asset


def upload_tus(apis: list[httpx.Client], path: Path, chunk: int = 700_000) -> str:
    """tus, each PATCH on the other replica (the lock and the staged tail are shared)."""
    data = path.read_bytes()
    name = base64.b64encode(path.name.encode()).decode()
    created = apis[0].post(
        "/files/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": f"filename {name}"},
    )
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    offset = 0
    turn = 1
    while offset < len(data):
        piece = data[offset : offset + chunk]
        resp = apis[turn % 2].patch(
            url,
            content=piece,
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert resp.status_code == 204, resp.text
        offset = int(resp.headers["Upload-Offset"])
        turn += 1
    head = apis[0].head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == str(len(data))
    assert head.headers.get("Ingestd-Replica") in {str(a.base_url).rstrip("/") for a in apis}
    asset: str = created.headers["Ingestd-Asset-Id"]
    return asset


class ProgressWatcher:
    """Reads an asset's event stream from one replica in a thread; keeps the progress
    messages that show a running step part-way done."""

    def __init__(self, api: httpx.Client, asset_id: str) -> None:
        self.partial: list[dict[str, Any]] = []
        self.done = False
        self._thread = threading.Thread(target=self._run, args=(api, asset_id), daemon=True)
        self._thread.start()

    def _run(self, api: httpx.Client, asset_id: str) -> None:
        event = None
        with api.stream("GET", f"/v1/assets/{asset_id}/events/stream", timeout=300) as resp:
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "progress":
                    data = json.loads(line.split(":", 1)[1])
                    steps = data["progress"]["steps"]
                    if any(st["state"] == "running" and 0 < st["percent"] < 100 for st in steps):
                        self.partial.append(data)
                elif line.startswith("data:") and event == "done":
                    self.done = True
                    return

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)


def events(cluster: Cluster, asset_id: str, type_: str) -> list[dict[str, Any]]:
    with db(cluster) as conn:
        rows = conn.execute(
            "SELECT data FROM events WHERE asset_id = %s AND type = %s ORDER BY id",
            (asset_id, type_),
        ).fetchall()
    return [r[0] for r in rows]


def assert_ran_once(cluster: Cluster, asset_id: str) -> None:
    """Each step succeeded once, the asset became ready once, no rendition twice."""
    succeeded = [e["step"] for e in events(cluster, asset_id, "step.succeeded")]
    assert len(succeeded) == len(set(succeeded)), succeeded
    assert len(events(cluster, asset_id, "asset.ready")) == 1
    with db(cluster) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM renditions WHERE asset_id = %s", (asset_id,)
            ).fetchall()
        ]
    assert names and len(names) == len(set(names))


# -- the tests, in order --------------------------------------------------------------------


def test_music_and_video_through_two_api_replicas(
    cluster: Cluster, apis: list[httpx.Client], ffmpeg: str, tmp_path: Path
) -> None:
    song = make_tone(ffmpeg, tmp_path / "song.wav", seconds=50)  # 9.6 MB: two blocks
    film = make_video(ffmpeg, tmp_path / "film.mp4", seconds=16, width=640, height=360)
    music = upload_blocks(apis, song)
    video = upload_tus(apis, film)
    watcher = ProgressWatcher(apis[1], video)  # progress through the other replica
    board = redis.Redis.from_url(REDIS)
    live = f"{cluster.prefix}:progress:{video}"
    # the workers put live figures on the shared board, where every api replica reads them
    wait_for("live progress on the board", lambda: bool(board.hlen(live)), cluster)
    board.close()

    ready(apis[1], music, cluster)
    ready(apis[0], video, cluster)
    watcher.join()
    assert watcher.done
    assert watcher.partial, "no progress part-way was seen through the second replica"

    for asset, path in ((music, song), (video, film)):
        body = status(apis[0], asset)
        assert body["sources"][-1]["sha256"] == sha256(path)
        assert_ran_once(cluster, asset)
        # renditions come from S3 through either replica's signed URLs
        master = next(r for r in body["renditions"] if r["name"].endswith(("hls", "master")))
        for api in apis:
            got = httpx.get(master["url"].replace(str(apis[0].base_url), str(api.base_url)))
            assert got.status_code == 200 and got.content.startswith(b"#EXTM3U")


def test_a_killed_worker_s_encode_is_finished_by_another(
    cluster: Cluster, apis: list[httpx.Client], ffmpeg: str, tmp_path: Path
) -> None:
    film = make_video(ffmpeg, tmp_path / "long.mp4", seconds=40, width=1280, height=720)
    asset = upload_tus(apis, film, chunk=4 << 20)

    def encoding() -> str | None:
        with db(cluster) as conn:
            row = conn.execute(
                "SELECT lease_owner FROM work_orders WHERE asset_id = %s AND queue = 'encode'"
                " AND state = 'running'",
                (asset,),
            ).fetchone()
        return None if row is None else str(row[0])

    wait_for("an encode to start", lambda: encoding() is not None, cluster)
    owner = encoding()
    assert owner is not None
    pid = int(owner.rsplit(":", 1)[1])
    victim = next(n for n, p in cluster.processes.items() if p.pid == pid)
    time.sleep(1.0)  # well into the encode
    cluster.kill(victim)  # kill -9: no release, the lease runs out

    ready(apis[0], asset, cluster, timeout=300)
    rescued = events(cluster, asset, "step.rescued")
    assert rescued and rescued[0]["worker"] == owner
    assert_ran_once(cluster, asset)
    cluster.start(victim, "worker")  # back for the next tests


@pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl (the local broker)"
)
def test_a_rabbitmq_restart_loses_nothing_and_runs_nothing_twice(
    cluster: Cluster, apis: list[httpx.Client], ffmpeg: str, tmp_path: Path
) -> None:
    songs = [
        make_tone(ffmpeg, tmp_path / f"s{i}.wav", seconds=20, frequencies=[300 + 50 * i])
        for i in range(3)
    ]
    first = upload_blocks(apis, songs[0])
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    try:
        # published while the broker is down: kept in the outbox, found by polling
        during = [upload_blocks(apis, s) for s in songs[1:]]
        time.sleep(3)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True)
    for asset in [first, *during]:
        ready(apis[1], asset, cluster)
        assert_ran_once(cluster, asset)
    wait_for("the outbox to drain", lambda: _outbox(cluster) == 0, cluster, timeout=60)
    for name in ("api1", "api2", "worker1", "worker2", "scheduler"):
        assert cluster.processes[name].poll() is None, f"{name} died\n{cluster.tail(name)}"


def _outbox(cluster: Cluster) -> int:
    with db(cluster) as conn:
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
    return int(row[0]) if row else 0


def test_amqp_chunks_become_an_asset(
    cluster: Cluster, apis: list[httpx.Client], ffmpeg: str, tmp_path: Path
) -> None:
    queue = f"{cluster.prefix}.chunks"
    cluster.start("ingest", "amqp-ingest", "--queue", queue, "--owner", "alice")
    song = make_tone(ffmpeg, tmp_path / "chunks.wav", seconds=50)
    data = song.read_bytes()
    chunks = [data[i : i + PART] for i in range(0, len(data), PART)]
    upload = f"gw-{uuid.uuid4().hex[:8]}"

    async def publish() -> None:
        connection = await aio_pika.connect(BROKER)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, passive=True)
            order = [1, 0, 1, *range(len(chunks))]  # reordered, then duplicated
            for index in order:
                body = chunks[index]
                headers: dict[str, Any] = {
                    "x-upload-id": upload,
                    "x-chunk-index": index,
                    "x-chunk-count": len(chunks),
                    "x-total-size": len(data),
                    "x-chunk-size": PART,
                    "x-chunk-sha256": hashlib.sha256(body).hexdigest(),
                    "x-filename": "chunks.wav",
                    "x-title": "Sent in chunks",
                }
                await channel.default_exchange.publish(
                    aio_pika.Message(body, headers=headers), routing_key=queue
                )

    wait_for("the chunk queue", lambda: _queue_exists(queue), cluster, timeout=60)
    anyio.run(publish)

    def asset_of_upload() -> str | None:
        with db(cluster) as conn:
            row = conn.execute(
                "SELECT s.asset_id FROM upload_sessions u JOIN sources s ON s.id = u.source_id"
                " WHERE u.external_id = %s",
                (upload,),
            ).fetchone()
        return None if row is None else str(row[0])

    wait_for("the upload", lambda: asset_of_upload() is not None, cluster)
    asset = asset_of_upload()
    assert asset is not None
    ready(apis[0], asset, cluster)
    body = status(apis[1], asset)
    assert body["title"] == "Sent in chunks"
    assert body["sources"][-1]["sha256"] == sha256(song)
    assert len(events(cluster, asset, "upload.completed")) == 1
    cluster.stop("ingest")


def _queue_exists(name: str) -> bool:
    async def check() -> bool:
        connection = await aio_pika.connect(BROKER)
        async with connection:
            channel = await connection.channel()
            try:
                await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            return True

    return anyio.run(check)


def test_the_scheduler_expires_an_abandoned_upload_and_its_staged_parts(
    cluster: Cluster, apis: list[httpx.Client], seaweed: S3Endpoint, bucket: str
) -> None:
    data = bytes(range(256)) * (40_000)  # 10 MB: one whole part uploaded, a tail staged
    created = apis[0].post("/files/", headers={**TUS, "Upload-Length": str(len(data) * 2)})
    assert created.status_code == 201
    url = created.headers["Location"]
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    resp = apis[1].patch(
        url,
        content=data,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert resp.status_code == 204
    s3 = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
        region_name=seaweed.region,
    )

    def staged() -> tuple[int, int]:
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        mine = [u for u in uploads if created.headers["Ingestd-Asset-Id"] in u["Key"]]
        objects = s3.list_objects_v2(Bucket=bucket, Prefix=f"ingestd/staging/{upload_id}/")
        return len(mine), int(objects.get("KeyCount", 0))

    multipart, objects = staged()
    assert multipart == 1 and objects >= 1  # a part and the tail's object are staged
    with db(cluster) as conn:  # the client went away long ago
        conn.execute(
            "UPDATE upload_sessions SET expires_at = now() - interval '1 minute' WHERE id = %s",
            (upload_id,),
        )
    wait_for("the upload to expire", lambda: staged() == (0, 0), cluster, timeout=60)
    body = status(apis[0], created.headers["Ingestd-Asset-Id"])
    assert body["status"] == "abandoned"
    assert apis[1].head(url, headers=TUS).status_code in (404, 410)
