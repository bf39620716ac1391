"""Ingest orders for server paths: requests, the runner on the real pipeline, re-ingestion
onto the same asset, bad paths, and the owner-scoped API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ingestd.api import ingest
from ingestd.api.app import create_app
from ingestd.bootstrap import Services, build
from ingestd.db.models import Asset, IngestOrder, Source, WorkOrder
from ingestd.errors import IngestdError
from ingestd.testing.media import make_text_file, make_tone
from ingestd.uploads.orders import IdentityRule, OrderService, OrderView

from .conftest import service_settings

pytestmark = pytest.mark.anyio

MUSIC_STEPS = {"loudness", "package_audio", "waveform", "archive_flac"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def svc(tmp_path: Path, db_url: str, root: Path) -> Iterator[Services]:
    services = build(
        service_settings(tmp_path, db_url, ingest_roots=f"{root},{tmp_path / 'second-root'}")
    )
    yield services
    services.close()


@pytest.fixture
def alice(svc: Services) -> str:
    return svc.keys.create("alice").owner_id


async def run_order(svc: Services, order_id: str, timeout: float = 120) -> OrderView:
    """Run a worker and the order loop until the order has finished."""
    orders = svc.orders
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(svc.worker().run(stop)),
        asyncio.create_task(svc.order_runner().run(stop)),
    ]
    try:
        async with asyncio.timeout(timeout):
            while True:
                view = await orders.get(_owner_of(svc, order_id), order_id)
                if view.status in ("completed", "failed"):
                    return view
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*loops)


def _owner_of(svc: Services, order_id: str) -> str:
    with svc.db.transaction() as session:
        return session.get_one(IngestOrder, order_id).owner_id


def step_states(svc: Services, asset_id: str) -> dict[str, str]:
    """The newest work order of each music step."""
    with svc.db.transaction() as session:
        rows = session.scalars(
            select(WorkOrder)
            .where(WorkOrder.asset_id == asset_id)
            .order_by(WorkOrder.created_at, WorkOrder.id)
        ).all()
        return {o.step: o.state for o in rows if o.step in MUSIC_STEPS}


def asset_row(svc: Services, asset_id: str) -> tuple[Asset, list[Source]]:
    with svc.db.transaction() as session:
        asset = session.get_one(Asset, asset_id)
        sources = session.scalars(select(Source).where(Source.asset_id == asset_id)).all()
        return asset, list(sources)


async def test_one_order_per_path_updated_while_queued(
    svc: Services, alice: str, root: Path
) -> None:
    orders = svc.orders
    target = make_text_file(root / "a.txt")
    (root / "alias.txt").symlink_to(target)
    first = await orders.request(alice, str(target))
    assert first.status == "queued" and first.force is False and first.path == str(target)
    again = await orders.request(alice, str(root / "alias.txt"), force=True)
    assert again.id == first.id and again.force is True
    assert again.updated_at >= first.updated_at and again.created_at == first.created_at
    later = await orders.request(alice, str(target))  # a pending forced run stays forced
    assert later.id == first.id and later.force is True
    assert [o.id for o in await orders.query(alice)] == [first.id]
    assert [o.id for o in await orders.query(alice, "queued")] == [first.id]
    assert await orders.query(alice, "completed") == []
    with pytest.raises(IngestdError) as info:
        await orders.query(alice, "bogus")
    assert info.value.code == "invalid_request"


async def test_music_file_completes_and_reingests_onto_the_same_asset(
    svc: Services, alice: str, root: Path, ffmpeg: str
) -> None:
    orders = svc.orders
    tone = make_tone(ffmpeg, root / "take.wav", seconds=2)
    order = await orders.request(alice, str(tone))
    assert order.status == "queued"

    # started: claimed and the file handed to the upload service
    runner = svc.order_runner()
    assert await runner.run_once()
    started = await orders.get(alice, order.id)
    assert started.status == "started" and started.started_at is not None
    assert started.asset_id is not None and started.content["size"] == tone.stat().st_size

    done = await run_order(svc, order.id)
    assert done.status == "completed" and done.error is None and done.finished_at is not None
    asset, sources = asset_row(svc, done.asset_id or "")
    assert asset.status == "ready" and asset.identity == f"path:{tone}"
    assert asset.meta["origin_path"] == str(tone) and asset.meta["loudness"]
    assert done.content["sha256"] == asset.sha256 and len(sources) == 1
    first_steps = step_states(svc, asset.id)
    assert first_steps and set(first_steps.values()) == {"succeeded"}

    # the same file again: a second source on the same asset, every music step skipped
    again = await orders.request(alice, str(tone))
    assert again.id == order.id and again.status == "queued" and again.finished_at is None
    redone = await run_order(svc, order.id)
    assert redone.status == "completed" and redone.asset_id == asset.id
    asset2, sources = asset_row(svc, asset.id)
    assert asset2.status == "ready" and len(sources) == 2
    assert step_states(svc, asset.id) == dict.fromkeys(first_steps, "skipped")

    # forced: every step runs again
    forced = await orders.request(alice, str(tone), force=True)
    assert forced.force is True
    final = await run_order(svc, order.id)
    assert final.status == "completed" and final.asset_id == asset.id and final.force is False
    assert step_states(svc, asset.id) == dict.fromkeys(first_steps, "succeeded")
    assert len(asset_row(svc, asset.id)[1]) == 3
    assert [o.id for o in await orders.query(alice)] == [order.id]

    # requested again while its asset is still being processed: the order waits its turn
    with svc.db.transaction() as s:
        s.get_one(Asset, asset.id).status = "processing"
    await orders.request(alice, str(tone))
    assert await orders.claim() is None
    assert (await orders.get(alice, order.id)).status == "queued"
    with svc.db.transaction() as s:
        s.get_one(Asset, asset.id).status = "ready"
    assert (await run_order(svc, order.id)).status == "completed"


async def test_text_file_fails_with_the_reason(svc: Services, alice: str, root: Path) -> None:
    orders = svc.orders
    notes = make_text_file(root / "notes.wav")
    order = await orders.request(alice, str(notes))
    failed = await run_order(svc, order.id)
    assert failed.status == "failed" and failed.error and "not an audio file" in failed.error
    assert [o.id for o in await orders.query(alice, "failed")] == [order.id]
    # requested again: queued anew, the old reason cleared
    requeued = await orders.request(alice, str(notes))
    assert requeued.status == "queued" and requeued.error is None


async def test_file_that_vanishes_before_its_turn_fails(
    svc: Services, alice: str, root: Path
) -> None:
    orders = svc.orders
    notes = make_text_file(root / "gone.txt")
    order = await orders.request(alice, str(notes))
    notes.unlink()
    assert await svc.order_runner().run_once()
    failed = await orders.get(alice, order.id)
    assert failed.status == "failed" and "no such file" in (failed.error or "")


def _bad_paths(tmp_path: Path, root: Path) -> dict[str, tuple[str, str]]:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (root / "escape.txt").symlink_to(outside)
    (root / "sub").mkdir()
    make_text_file(root / "sub" / "ok.txt")
    return {
        "outside the roots": (str(outside), "path_outside_roots"),
        "missing outside the roots": (str(tmp_path / "nope.txt"), "path_outside_roots"),
        "dot-dot": (f"{root}/sub/../sub/ok.txt", "invalid_path"),
        "relative": ("sub/ok.txt", "invalid_path"),
        "symlink escaping the root": (str(root / "escape.txt"), "path_outside_roots"),
        "missing": (str(root / "missing.wav"), "path_not_found"),
        "directory": (str(root / "sub"), "not_a_file"),
        "sibling prefix": (f"{root}-other/x.txt", "path_outside_roots"),
    }


async def test_bad_paths_are_refused(svc: Services, alice: str, root: Path, tmp_path: Path) -> None:
    orders = svc.orders
    for case, (path, code) in _bad_paths(tmp_path, root).items():
        with pytest.raises(IngestdError) as info:
            await orders.request(alice, path)
        assert info.value.code == code, case
    assert await orders.query(alice) == []
    # the operator's own commands may name any readable file, still not a directory
    outside = await orders.request(alice, str(tmp_path / "outside.txt"), restricted=False)
    assert outside.path == str(tmp_path / "outside.txt")
    with pytest.raises(IngestdError) as info:
        await orders.request(alice, str(root / "sub"), restricted=False)
    assert info.value.code == "not_a_file"


async def test_no_roots_means_path_ingestion_is_off(svc: Services, alice: str, root: Path) -> None:
    orders = OrderService(svc.db, roots=[])
    with pytest.raises(IngestdError) as info:
        await orders.request(alice, str(make_text_file(root / "a.txt")))
    assert info.value.code == "path_ingestion_disabled"


@pytest.fixture
async def clients(svc: Services) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    app = create_app(svc)
    app.include_router(ingest.router)
    transport = httpx.ASGITransport(app=app)
    keys = [svc.keys.create(name).key for name in ("alice", "mallory")]
    async with (
        httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {keys[0]}"},
        ) as alice_api,
        httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {keys[1]}"},
        ) as mallory_api,
    ):
        yield alice_api, mallory_api


async def test_api_orders_are_scoped_to_their_owner(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], root: Path, tmp_path: Path
) -> None:
    alice_api, mallory_api = clients
    target = make_text_file(root / "a.txt")
    created = await alice_api.post("/v1/ingest", json={"path": str(target)})
    assert created.status_code == 202, created.text
    order: dict[str, Any] = created.json()
    assert order["status"] == "queued" and order["path"] == str(target)
    again = await alice_api.post("/v1/ingest", json={"path": str(target), "force": True})
    assert again.json()["id"] == order["id"] and again.json()["force"] is True

    got = await alice_api.get(f"/v1/ingest-orders/{order['id']}")
    assert got.status_code == 200 and got.json()["id"] == order["id"]
    listed = await alice_api.get("/v1/ingest-orders", params={"status": "queued"})
    assert [o["id"] for o in listed.json()["items"]] == [order["id"]]

    other = await mallory_api.get(f"/v1/ingest-orders/{order['id']}")
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert (await mallory_api.get("/v1/ingest-orders")).json()["items"] == []
    # the same path is mallory's own order, not alice's
    mine = await mallory_api.post("/v1/ingest", json={"path": str(target)})
    assert mine.status_code == 202 and mine.json()["id"] != order["id"]
    unauthenticated = await alice_api.get("/v1/ingest-orders", headers={"Authorization": ""})
    assert unauthenticated.status_code == 401


async def test_api_answers_bad_paths_with_codes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], root: Path, tmp_path: Path
) -> None:
    alice_api, _ = clients
    statuses = {
        "path_outside_roots": 403,
        "invalid_path": 400,
        "path_not_found": 404,
        "not_a_file": 400,
    }
    for case, (path, code) in _bad_paths(tmp_path, root).items():
        answer = await alice_api.post("/v1/ingest", json={"path": path})
        assert answer.status_code == statuses[code], case
        assert answer.json()["error"]["code"] == code, case
    bad_status = await alice_api.get("/v1/ingest-orders", params={"status": "nope"})
    assert bad_status.status_code == 400


async def test_fits_identity_comes_from_the_header(tmp_path: Path) -> None:
    from astropy.io import fits

    def write(name: str, obj: str) -> Path:
        header = fits.Header()
        header["TELESCOP"] = "VLT"
        header["OBJECT"] = obj
        path = tmp_path / name
        fits.PrimaryHDU(header=header).writeto(path)
        return path

    rule = IdentityRule.parse("header:TELESCOP, OBJECT")
    a, b = write("a.fits", "M31"), write("b.fits", "M31")
    assert await rule.identity(a) == await rule.identity(b) == "header:TELESCOP=VLT;OBJECT=M31"
    assert await rule.identity(write("c.fits", "M33")) != await rule.identity(a)
    notes = make_text_file(tmp_path / "n.txt")
    assert await rule.identity(notes) == f"path:{notes}"  # not FITS: its path
    assert await IdentityRule.parse("path").identity(a) == f"path:{a}"
    with pytest.raises(IngestdError) as info:
        await IdentityRule.parse("header:TELESCOP,EXPTIME").identity(a)
    assert "EXPTIME" in info.value.message
    with pytest.raises(IngestdError):
        IdentityRule.parse("checksum")
