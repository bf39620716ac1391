"""The FITS archive flow end to end in one service: a cube ingested from a path as a work
order, its previews and metadata, automatic publication to a directory and a push to a
catalog; the same file again skips the unchanged steps, `force` runs them again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd.bootstrap import Services, build
from ingestd.cli.orders import ingest_paths
from ingestd.db.models import Publication, WorkOrder
from ingestd.testing.catalog_server import CatalogServer, running_catalog
from ingestd.testing.fits import make_fits_cube

from .conftest import service_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def archive(tmp_path: Path, db_url: str) -> Iterator[Services]:
    services = build(service_settings(tmp_path, db_url, ingest_roots=str(tmp_path / "incoming")))
    yield services
    services.close()


@pytest.fixture
def catalog() -> Iterator[CatalogServer]:
    with running_catalog() as server:
        yield server


def steps(services: Services, asset_id: str) -> dict[str, str]:
    """The newest order of each step of the asset, by step name."""
    with services.db.transaction() as s:
        orders = s.scalars(
            select(WorkOrder)
            .where(WorkOrder.asset_id == asset_id)
            .order_by(WorkOrder.created_at, WorkOrder.id)
        ).all()
        return {o.step: o.state for o in orders}


async def test_a_cube_from_a_path_is_published_and_catalogued_then_reingested(
    archive: Services, catalog: CatalogServer, tmp_path: Path
) -> None:
    owner = archive.keys.create("observatory").owner_id
    shelf = archive.settings.data_dir / "published" / "shelf"
    await archive.publications.create_target(
        owner, "shelf", "directory", {"path": str(shelf), "auto": True}
    )
    await archive.publications.create_target(
        owner,
        "svo",
        "catalog",
        {"url": catalog.url, "api_key": catalog.api_key, "auto": True},
    )
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cube = make_fits_cube(incoming / "cube.fits", header={"INSTRUME": "CRISP"})

    [first] = await _ingest(archive, owner, cube)
    assert (first["order_status"], first["status"]) == ("completed", "ready"), first.get("error")
    asset = first["id"]
    ran = steps(archive, asset)
    assert ran["fits_metadata"] == ran["fits_previews"] == "succeeded"
    assert ran["publish:shelf"] == ran["catalog:svo"] == "succeeded"

    # published: the previews and headers on the shelf, never the master
    published = sorted(p.name for p in (shelf / asset).rglob("*") if p.is_file())
    assert any(name.endswith(".png") for name in published)
    assert any(name.endswith(".mp4") for name in published)  # the cube's movie
    assert not any("original" in name for name in published)
    # catalogued: one item, with the mapped FITS keyword
    assert set(catalog.items) == {asset}
    assert "CRISP" in str(catalog.items[asset])
    with archive.db.transaction() as s:
        rows = s.scalars(select(Publication).where(Publication.asset_id == asset)).all()
        assert {r.status for r in rows} == {"published"}

    # the same file again: the same asset, only validation runs again
    [again] = await _ingest(archive, owner, cube)
    assert again["id"] == asset and again["status"] == "ready"
    ran = steps(archive, asset)
    assert ran["fits_metadata"] == ran["fits_previews"] == "skipped"

    # --force runs every step again
    [forced] = await _ingest(archive, owner, cube, force=True)
    assert forced["id"] == asset and forced["status"] == "ready"
    ran = steps(archive, asset)
    assert ran["fits_metadata"] == ran["fits_previews"] == "succeeded"


async def _ingest(
    services: Services, owner: str, path: Path, *, force: bool = False
) -> list[dict[str, Any]]:
    return await asyncio.wait_for(
        ingest_paths(services, owner, [path], force=force, wait=True), timeout=180
    )
