"""FITS files through the HTTP API and the in-process worker: ready with renditions and
searchable metadata, rejected with the failing HDU named, unchanged content skipped."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ingestd.bootstrap import Services, build
from ingestd.db.models import Asset, Source
from ingestd.db.types import new_id
from ingestd.domain.states import SourceStatus
from ingestd.pipeline.ingest import ingest_graph
from ingestd.testing.fits import (
    data_offset,
    flip_byte,
    header_card_offset,
    make_fits_cube,
    make_fits_image,
    truncate_to,
)
from ingestd.uploads.service import master_key

from .conftest import service_settings
from .test_music_pipeline import upload_and_wait, wait


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Services]:
    """The integration services; ``fits_require_checksums`` is the test's indirect
    parameter (default False)."""
    require = bool(getattr(request, "param", False))
    svc = build(service_settings(tmp_path, db_url, fits_require_checksums=require))
    yield svc
    svc.close()


def renditions(asset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in asset["renditions"]}


def steps(asset: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in asset["progress"]["steps"]}


def listed(api: httpx.Client, query: str) -> set[str]:
    answer = api.get(f"/v1/assets?{query}")
    answer.raise_for_status()
    return {a["id"] for a in answer.json()["items"]}


def test_an_image_and_a_cube_become_ready_and_searchable(api: httpx.Client, tmp_path: Path) -> None:
    image = upload_and_wait(api, make_fits_image(tmp_path / "image.fits"))
    cube = upload_and_wait(api, make_fits_cube(tmp_path / "cube.fits", header={"INSTRUME": "AIA"}))
    for asset in (image, cube):
        assert asset["status"] == "ready", asset["error"]
        assert asset["kind"] == "fits"
        assert asset["metadata"]["fits"]["checksums"] == "valid"
        assert set(steps(asset).values()) == {"succeeded"}
    assert set(renditions(image)) == {"fits_headers", "fits_preview", "fits_thumbnail"}
    assert set(renditions(cube)) == {
        "fits_headers",
        "fits_preview",
        "fits_thumbnail",
        "fits_movie",
    }
    fits_meta = cube["metadata"]["fits"]
    assert fits_meta["keywords"]["INSTRUME"] == "AIA"
    assert fits_meta["core"]["wavelength"]["unit"] == "Angstrom"
    assert fits_meta["core"]["shape"] == [12, 48, 64]
    assert [h["name"] for h in fits_meta["headers"]] == ["PRIMARY", "SCI", "EVENTS"]

    headers = httpx.get(renditions(cube)["fits_headers"]["url"], timeout=10).text
    assert "INSTRUME= 'AIA" in headers and "EXTNAME = 'EVENTS" in headers
    png = httpx.get(renditions(cube)["fits_preview"]["url"], timeout=10)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    movie = renditions(cube)["fits_movie"]
    assert movie["info"]["frames"] == 12 and movie["width"] % 2 == 0
    assert httpx.get(movie["url"], timeout=10).content[4:8] == b"ftyp"

    assert listed(api, "meta.INSTRUME=HMI") == {image["id"]}
    assert listed(api, "meta.INSTRUME=AIA") == {cube["id"]}
    assert listed(api, "meta.TELESCOP=SDO") == {image["id"], cube["id"]}
    assert listed(api, "meta.TELESCOP=SDO&meta.NAXIS=3") == {cube["id"]}
    assert listed(api, "meta.TELESCOP=SDO&meta.INSTRUME=EIT") == set()
    assert api.get("/v1/assets?meta.BAD'KEY=1").status_code == 400


def corrupt_data(path: Path) -> Path:
    return flip_byte(path, data_offset(path, 1) + 5)


def corrupt_header(path: Path) -> Path:
    return flip_byte(path, header_card_offset(path, 0, "OBJECT") + 11, mask=1)


def cut(path: Path) -> Path:
    return truncate_to(path, data_offset(path, 0) + 4000)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (cut, "the data of HDU 0 (PRIMARY) is truncated"),
        (corrupt_data, "DATASUM mismatch: the data of HDU 1 (SCI) is corrupt"),
        (corrupt_header, "CHECKSUM mismatch: the header of HDU 0 (PRIMARY) was altered"),
    ],
    ids=["truncated", "data-byte", "header-byte"],
)
def test_damaged_fits_is_rejected_naming_the_hdu(
    api: httpx.Client, tmp_path: Path, damage: Any, says: str
) -> None:
    path = damage(make_fits_cube(tmp_path / "cube.fits"))
    asset = upload_and_wait(api, path)
    assert asset["status"] == "failed"
    assert says in str(asset["error"])
    assert asset["sources"][0]["status"] == "rejected"
    assert says in asset["sources"][0]["reason"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_file_named_fits_that_is_not_fits_is_rejected(api: httpx.Client, tmp_path: Path) -> None:
    fake = tmp_path / "fake.fits"
    fake.write_bytes(b"SIMPLE = T but this is prose, not 80-column cards\n" * 100)
    asset = upload_and_wait(api, fake)
    assert asset["status"] == "failed" and asset["kind"] != "fits"
    assert asset["sources"][0]["status"] == "rejected"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_file_without_checksums_is_accepted_and_flagged(
    api: httpx.Client, tmp_path: Path
) -> None:
    asset = upload_and_wait(api, make_fits_image(tmp_path / "plain.fits", checksum=False))
    assert asset["status"] == "ready", asset["error"]
    assert asset["metadata"]["fits"]["checksums"] == "absent"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("services", [True], indirect=True)
def test_a_file_without_checksums_is_rejected_when_they_are_required(
    api: httpx.Client, tmp_path: Path
) -> None:
    asset = upload_and_wait(api, make_fits_image(tmp_path / "plain.fits", checksum=False))
    assert asset["status"] == "failed"
    assert "HDU 0 (PRIMARY) has no CHECKSUM/DATASUM cards" in str(asset["error"])


def new_master_version(svc: Services, asset_id: str, path: Path) -> None:
    """What re-ingesting a path does: a new source of the same asset, then validation."""
    source_id = new_id("src")
    key = master_key(asset_id, source_id)
    anyio.run(svc.store.put_file, key, path)
    data = path.read_bytes()
    with svc.db.transaction() as session:
        owner = session.get_one(Asset, asset_id).owner_id
        session.add(
            Source(
                id=source_id,
                asset_id=asset_id,
                owner_id=owner,
                filename=path.name,
                size=len(data),
                bytes_received=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                status=SourceStatus.UPLOADED.value,
                master_key=key,
            )
        )
        svc.engine.enqueue_graph(session, asset_id, ingest_graph())


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_reingesting_unchanged_content_skips_metadata_and_previews(
    api: httpx.Client, services: Services, tmp_path: Path
) -> None:
    path = make_fits_cube(tmp_path / "cube.fits")
    first = upload_and_wait(api, path)
    assert first["status"] == "ready", first["error"]
    movie_url = renditions(first)["fits_movie"]["url"]

    new_master_version(services, first["id"], path)  # the same bytes
    again = wait_for_second_validation(api, first["id"])
    assert again["status"] == "ready", again["error"]
    assert steps(again) == {
        "validate": "succeeded",
        "fits_metadata": "skipped",
        "fits_previews": "skipped",
    }
    assert renditions(again)["fits_movie"]["size"] == renditions(first)["fits_movie"]["size"]
    assert httpx.get(movie_url, timeout=10).status_code == 200

    time.sleep(1.1)  # a re-export: new CHECKSUM comment times, same headers and data
    make_fits_cube(path)
    new_master_version(services, first["id"], path)
    third = wait_for_second_validation(api, first["id"], validations=3)
    assert steps(third)["fits_metadata"] == "skipped"
    assert steps(third)["fits_previews"] == "skipped"


def wait_for_second_validation(
    api: httpx.Client, asset_id: str, validations: int = 2
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = api.get(f"/v1/assets/{asset_id}/events").json()["items"]
        if sum(e["type"] == "source.ingested" for e in events) >= validations:
            return wait(api, asset_id)
        time.sleep(0.1)
    raise AssertionError(f"asset {asset_id} was not validated {validations} times")
