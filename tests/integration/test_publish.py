"""Publishing renditions to real targets: a directory, SeaweedFS (S3) and a pyftpdlib server."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

import ingestd.testing.server as server_module
from ingestd.api import app as app_module
from ingestd.api import targets as targets_api
from ingestd.bootstrap import Services
from ingestd.db.models import Asset, Publication, Rendition
from ingestd.db.types import new_id
from ingestd.errors import InvalidRequest, NotFound
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.publish import (
    PathEscapes,
    PublicationService,
    PublishFailed,
    PublishSteps,
    TargetPolicy,
    with_publish,
)
from ingestd.testing.ftp import FtpEndpoint, running_ftp
from ingestd.testing.seaweed import S3Endpoint
from ingestd.testing.server import running_server

pytestmark = pytest.mark.anyio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pub_root(tmp_path: Path) -> Path:
    root = tmp_path / "published"
    root.mkdir()
    return root


@pytest.fixture
def pubs(services: Services, pub_root: Path) -> PublicationService:
    return PublicationService(
        services.db,
        services.store,
        policy=TargetPolicy(directory_roots=(pub_root,)),
        engine=services.engine,
    )


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[FtpEndpoint]:
    with running_ftp(tmp_path / "ftp-root") as endpoint:
        yield endpoint


def owner_of(services: Services, name: str = "alice") -> str:
    return services.keys.create(name).owner_id


async def make_asset(
    services: Services, owner_id: str, files: dict[str, bytes] | None = None
) -> tuple[str, dict[str, bytes]]:
    """A ready asset with a private master and rendition objects (relative path -> bytes)."""
    asset_id = new_id("as")
    files = files or {
        "stream/master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv/index.m3u8\n",
        "stream/v/index.m3u8": b"#EXTM3U\nseg0.m4s\n",
        "stream/v/seg0.m4s": os.urandom(70_000),
        "poster/poster.jpg": os.urandom(5_000),
    }

    def add(session: Any) -> None:
        session.add(Asset(id=asset_id, owner_id=owner_id, status="ready", kind="video"))
        session.flush()
        session.add(
            Rendition(
                id=new_id("rn"),
                asset_id=asset_id,
                name="hls",
                kind="hls",
                storage_key=f"renditions/{asset_id}/stream/master.m3u8",
            )
        )

    await services.db.run(add)
    await services.store.put_bytes(f"masters/{asset_id}/master.mov", b"private master")
    for rel, data in files.items():
        await services.store.put_bytes(f"renditions/{asset_id}/{rel}", data)
    return asset_id, dict(files)


async def rows(services: Services, asset_id: str) -> dict[str, Publication]:
    found = await services.db.run(
        lambda s: list(s.scalars(select(Publication).where(Publication.asset_id == asset_id)))
    )
    return {p.key.split("/", 2)[2]: p for p in found}


async def check_cycle(
    services: Services,
    pubs: PublicationService,
    owner_id: str,
    target: str,
    read_remote: Any,
    exists_remote: Any,
) -> None:
    """Publish, republish (nothing sent), change one rendition (replaced), unpublish."""
    asset_id, files = await make_asset(services, owner_id)
    report = await pubs.publish(owner_id, asset_id, target)
    assert report.count("sent") == len(files) and report.count("unchanged") == 0
    for rel, data in files.items():
        assert sha(read_remote(f"{asset_id}/{rel}")) == sha(data)
    assert not exists_remote(f"{asset_id}/master.mov")  # the master is never published
    published = await rows(services, asset_id)
    assert set(published) == set(files)
    for rel, p in published.items():
        assert p.status == "published" and p.size == len(files[rel]) and p.sha256 == sha(files[rel])
        assert p.remote.endswith(f"{asset_id}/{rel}") and p.published_at is not None

    again = await pubs.publish(owner_id, asset_id, target)
    assert again.count("unchanged") == len(files)
    assert again.count("sent") == again.count("replaced") == 0
    assert sum(o.bytes_sent for o in again.objects) == 0

    changed = os.urandom(9_000)
    await services.store.put_bytes(f"renditions/{asset_id}/poster/poster.jpg", changed)
    third = await pubs.publish(owner_id, asset_id, target)
    assert [o.key.rsplit("/", 2)[-2:] for o in third.objects if o.action == "replaced"] == [
        ["poster", "poster.jpg"]
    ]
    assert third.count("unchanged") == len(files) - 1
    assert read_remote(f"{asset_id}/poster/poster.jpg") == changed
    assert (await rows(services, asset_id))["poster/poster.jpg"].sha256 == sha(changed)

    gone = await pubs.unpublish(owner_id, asset_id, target)
    assert gone.count("removed") == len(files)
    for rel in files:
        assert not exists_remote(f"{asset_id}/{rel}")
    assert {p.status for p in (await rows(services, asset_id)).values()} == {"removed"}


async def test_directory_target(
    services: Services, pubs: PublicationService, pub_root: Path
) -> None:
    owner = owner_of(services)
    await pubs.create_target(owner, "disk", "directory", {"path": str(pub_root), "prefix": "site"})
    base = pub_root / "site"
    await check_cycle(
        services,
        pubs,
        owner,
        "disk",
        lambda p: (base / p).read_bytes(),
        lambda p: (base / p).exists(),
    )
    assert not any(p.name.endswith(".part") for p in pub_root.rglob("*"))  # noqa: ASYNC240


async def test_s3_target(services: Services, pubs: PublicationService, seaweed: S3Endpoint) -> None:
    bucket = seaweed.make_bucket(f"pub-{uuid.uuid4().hex[:12]}")
    owner = owner_of(services)
    view = await pubs.create_target(
        owner,
        "bucket",
        "s3",
        {
            "bucket": bucket,
            "prefix": "media",
            "endpoint_url": seaweed.endpoint_url,
            "region": seaweed.region,
            "access_key_id": seaweed.access_key,
            "secret_access_key": seaweed.secret_key,
            "part_size_mib": 5,
        },
    )
    assert view.config["secret_access_key"] == "***"
    client = seaweed.client()

    def read(path: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=f"media/{path}")["Body"].read()

    def exists(path: str) -> bool:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"media/{path}")
        return bool(listed.get("Contents"))

    await check_cycle(services, pubs, owner, "bucket", read, exists)

    # an object over one part goes up as a multipart upload
    big = os.urandom(11 << 20)
    asset_id, _ = await make_asset(services, owner, {"archive/master.flac": big})
    report = await pubs.publish(owner, asset_id, "bucket")
    assert report.count("sent") == 1
    assert sha(read(f"{asset_id}/archive/master.flac")) == sha(big)


async def test_ftp_target(services: Services, pubs: PublicationService, ftp: FtpEndpoint) -> None:
    owner = owner_of(services)
    await pubs.create_target(owner, "holder", "ftp", ftp.config("/videos"))
    base = ftp.root / "videos"
    stores: list[int] = []

    def read(path: str) -> bytes:
        stores.append(ftp.stores)
        return (base / path).read_bytes()

    await check_cycle(services, pubs, owner, "holder", read, lambda p: (base / p).exists())
    # 4 objects sent, nothing on the republish, 1 replaced: 5 STOR commands in all
    assert ftp.stores == 5
    assert not any(p.name.endswith(".part") for p in ftp.root.rglob("*"))


async def test_ftp_transfer_cut_midway_resumes(
    services: Services, pubs: PublicationService, ftp: FtpEndpoint
) -> None:
    owner = owner_of(services)
    await pubs.create_target(owner, "holder", "ftp", ftp.config("/videos"))
    big = os.urandom(3 << 20)
    asset_id, _ = await make_asset(services, owner, {"stream/v/seg0.m4s": big})
    ftp.cut_stores(after_bytes=1 << 20, times=2)
    report = await pubs.publish(owner, asset_id, "holder")
    (obj,) = report.objects
    assert obj.action == "sent" and obj.resumes == 2 and ftp.cuts == 2
    # each resumed transfer sent only what the server lacked (what a cut one pushed into
    # socket buffers past the cut counts as sent: at least the 2 MiB the server kept)
    assert 3 << 20 <= obj.bytes_sent <= 2 * len(big)
    assert sha((ftp.root / "videos" / asset_id / "stream/v/seg0.m4s").read_bytes()) == sha(big)
    row = (await rows(services, asset_id))["stream/v/seg0.m4s"]
    assert row.status == "published" and row.sha256 == sha(big)


async def test_ftp_wrong_credentials(
    services: Services, pubs: PublicationService, ftp: FtpEndpoint
) -> None:
    owner = owner_of(services)
    await pubs.create_target(owner, "holder", "ftp", {**ftp.config(), "password": "wrong"})
    asset_id, _ = await make_asset(services, owner)
    with pytest.raises(PublishFailed) as caught:
        await pubs.publish(owner, asset_id, "holder")
    assert caught.value.code == "publish_failed"
    assert "target holder" in caught.value.message and "login" in caught.value.message
    assert "530" in caught.value.message
    failed = await rows(services, asset_id)
    assert [p.status for p in failed.values()] == ["failed"]
    assert "login" in (next(iter(failed.values())).error or "")


async def test_directory_paths_cannot_escape(
    services: Services, pubs: PublicationService, pub_root: Path, tmp_path: Path
) -> None:
    owner = owner_of(services)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(PathEscapes):
        await pubs.create_target(owner, "a", "directory", {"path": str(outside)})
    with pytest.raises(PathEscapes):
        await pubs.create_target(owner, "b", "directory", {"path": f"{pub_root}/../elsewhere"})
    with pytest.raises(InvalidRequest, match="prefix"):
        await pubs.create_target(owner, "c", "directory", {"path": str(pub_root), "prefix": "../x"})
    # a symbolic link planted inside the root does not lead writes out of it
    await pubs.create_target(owner, "d", "directory", {"path": str(pub_root)})
    asset_id, _ = await make_asset(services, owner, {"stream/a.m4s": b"data"})
    (pub_root / asset_id).symlink_to(outside)
    with pytest.raises(PublishFailed, match="out of the target's root"):
        await pubs.publish(owner, asset_id, "d")
    assert list(outside.iterdir()) == []


async def test_unknown_and_foreign_targets(services: Services, pubs: PublicationService) -> None:
    alice, mallory = owner_of(services, "alice"), owner_of(services, "mallory")
    await pubs.create_target(mallory, "theirs", "catalog", {"url": "http://x", "token": "t0k"})
    asset_id, _ = await make_asset(services, alice)
    with pytest.raises(NotFound, match="target 'nope'"):
        await pubs.publish(alice, asset_id, "nope")
    with pytest.raises(NotFound, match="target 'theirs'"):
        await pubs.publish(alice, asset_id, "theirs")
    with pytest.raises(NotFound, match="asset"):
        await pubs.publish(mallory, asset_id, "theirs")
    (view,) = await pubs.list_targets(mallory)
    assert view.config == {"url": "http://x", "token": "***"}  # catalog config kept as given
    assert await pubs.list_targets(alice) == []


def test_publish_steps_follow_the_graph() -> None:
    graph = Graph((StepSpec("a"), StepSpec("b", depends_on=("a",))))
    extended = with_publish(graph, ["holder", "disk"])
    assert [s.name for s in extended.steps][-2:] == ["publish:holder", "publish:disk"]
    assert all(s.depends_on == ("a", "b") for s in extended.steps[-2:])
    assert extended.topological_order()[-2:] == ["publish:disk", "publish:holder"]


# -- over HTTP, with the worker running the publish step ---------------------------------------


@pytest.fixture
def http(
    services: Services, pubs: PublicationService, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, httpx.Client]]:
    # the wiring bootstrap and the app will do: the service, its step, its router
    services.publications = pubs  # type: ignore[attr-defined]
    services.steps.update(PublishSteps(pubs).steps())

    def create_app(svc: Services) -> FastAPI:
        app = app_module.create_app(svc)
        app.include_router(targets_api.router)
        return app

    monkeypatch.setattr(server_module, "create_app", create_app)
    with running_server(services) as url:
        clients = {
            name: httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {services.keys.create(name).key}"},
                timeout=30,
            )
            for name in ("alice", "mallory")
        }
        yield clients
        for c in clients.values():
            c.close()


def wait_published(api: httpx.Client, asset_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        items: list[dict[str, Any]] = api.get(f"/v1/assets/{asset_id}/publications").json()["items"]
        if len(items) == count and all(i["status"] == "published" for i in items):
            return items
        time.sleep(0.1)
    raise AssertionError(f"not published: {items}")


async def test_publishing_over_http(
    services: Services, http: dict[str, httpx.Client], ftp: FtpEndpoint
) -> None:
    api, other = http["alice"], http["mallory"]
    created = api.post(
        "/v1/targets", json={"name": "holder", "kind": "ftp", "config": ftp.config()}
    )
    assert created.status_code == 201, created.text
    assert created.json()["config"]["password"] == "***"
    assert ftp.password not in api.get("/v1/targets").text
    bad = api.post("/v1/targets", json={"name": "x", "kind": "ftp", "config": {"port": 21}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    dup = api.post("/v1/targets", json={"name": "holder", "kind": "ftp", "config": ftp.config()})
    assert dup.status_code == 409

    owner = services.keys.authenticate(api.headers["Authorization"].split()[1])
    asset_id, files = await make_asset(services, owner)

    unknown = api.post(f"/v1/assets/{asset_id}/publish", json={"target": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    theirs = other.post(
        "/v1/targets", json={"name": "theirs", "kind": "ftp", "config": ftp.config()}
    )
    assert theirs.status_code == 201
    assert api.post(f"/v1/assets/{asset_id}/publish", json={"target": "theirs"}).status_code == 404
    assert (
        other.post(f"/v1/assets/{asset_id}/publish", json={"target": "theirs"}).status_code == 404
    )
    assert other.get(f"/v1/assets/{asset_id}/publications").status_code == 404
    assert other.delete("/v1/targets/holder").status_code == 404

    accepted = api.post(f"/v1/assets/{asset_id}/publish", json={"target": "holder"})
    assert accepted.status_code == 202, accepted.text
    items = wait_published(api, asset_id, len(files))
    assert {i["key"].split("/", 2)[2] for i in items} == set(files)
    for i in items:
        rel = i["key"].split("/", 2)[2]
        assert i["sha256"] == sha(files[rel]) and i["target"] == "holder"
        assert (ftp.root / asset_id / rel).read_bytes() == files[rel]

    removed = api.delete(f"/v1/assets/{asset_id}/publications/holder")
    assert removed.status_code == 200 and removed.json()["removed"] == len(files)
    assert not (ftp.root / asset_id).exists()
    statuses = {i["status"] for i in api.get(f"/v1/assets/{asset_id}/publications").json()["items"]}
    assert statuses == {"removed"}

    assert api.delete("/v1/targets/holder").status_code == 204
    assert api.delete("/v1/targets/holder").status_code == 404
    assert [t["name"] for t in api.get("/v1/targets").json()["items"]] == []
