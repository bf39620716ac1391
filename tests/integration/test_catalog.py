"""Catalog targets against a real (in-memory) catalog over HTTP: push, sync, the push step
through the real worker and job engine, errors, and the ``ingestd catalog`` command."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from ingestd.cli.catalog import EXIT_REFUSED, register
from ingestd.db.engine import Database
from ingestd.db.models import Asset, Event, Owner, Publication, Target, WorkOrder
from ingestd.db.types import new_id
from ingestd.errors import InvalidState, NotFound
from ingestd.jobs.dispatch import InProcessDispatcher
from ingestd.jobs.engine import Backoff, JobEngine
from ingestd.jobs.graph import Graph
from ingestd.jobs.worker import Worker
from ingestd.publish.catalog import (
    CatalogClient,
    CatalogConfig,
    CatalogSteps,
    CatalogSync,
    CatalogUnauthorized,
    CatalogUnavailable,
    LocalItem,
    SyncRefused,
    catalog_step_specs,
)
from ingestd.testing.catalog_server import CatalogServer, free_port, running_catalog

MAPPING = {
    "title": "title",
    "instrument": "meta.fits.INSTRUME",
    "checksum": "sha256",
    "created": "created_at",
}


@pytest.fixture
def catalog() -> Iterator[CatalogServer]:
    with running_catalog() as server:
        yield server


def make_owner(db: Database, name: str = "alice") -> str:
    with db.transaction() as s:
        owner = Owner(id=new_id("own"), name=name)
        s.add(owner)
        return owner.id


def make_target(db: Database, owner_id: str, catalog: CatalogServer, **config: Any) -> str:
    with db.transaction() as s:
        target = Target(
            id=new_id("tgt"),
            owner_id=owner_id,
            name="archive",
            kind="catalog",
            config={
                "url": catalog.url,
                "api_key": catalog.api_key,
                "mapping": MAPPING,
                "backoff_s": 0.01,
                **config,
            },
        )
        s.add(target)
        return target.id


def make_asset(
    db: Database,
    owner_id: str,
    title: str,
    *,
    instrument: str = "HARPS",
    kind: str = "fits",
    status: str = "ready",
) -> str:
    with db.transaction() as s:
        asset = Asset(
            id=new_id("as"),
            owner_id=owner_id,
            kind=kind,
            title=title,
            status=status,
            sha256=new_id("sha")[4:],
            meta={"fits": {"INSTRUME": instrument, "TELESCOP": "ESO-3.6"}},
        )
        s.add(asset)
        return asset.id


def publications(db: Database) -> dict[str, Publication]:
    with db.transaction() as s:
        return {p.asset_id: p for p in s.scalars(select(Publication))}


def set_title(db: Database, asset_id: str, title: str) -> None:
    with db.transaction() as s:
        s.get_one(Asset, asset_id).title = title


# -- push and sync ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_push_sends_the_mapped_fields(database: Database, catalog: CatalogServer) -> None:
    owner = make_owner(database)
    target = make_target(database, owner, catalog)
    asset = make_asset(database, owner, "NGC 1300", instrument="HARPS")

    item = await CatalogSync(database).push(asset, "archive")

    with database.transaction() as s:
        row = s.get_one(Asset, asset)
        created, sha = row.created_at.isoformat(), row.sha256
    assert item.external_id == asset
    assert catalog.items == {
        asset: {"title": "NGC 1300", "instrument": "HARPS", "checksum": sha, "created": created}
    }
    assert catalog.requests == [("PUT", f"/items/{asset}")]
    pub = publications(database)[asset]
    assert (pub.target_id, pub.key, pub.remote, pub.status) == (
        target,
        "catalog",
        asset,
        "published",
    )
    assert pub.sha256 == sha and pub.published_at is not None and pub.error is None


@pytest.mark.anyio
async def test_sync_adds_missing_and_deletes_extras(
    database: Database, catalog: CatalogServer
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog, kinds=["fits"], page_size=2)
    kept = make_asset(database, owner, "kept")
    new = [make_asset(database, owner, f"new {i}") for i in range(3)]
    make_asset(database, owner, "still processing", status="processing")
    make_asset(database, owner, "a video", kind="video")
    other = make_owner(database, "bob")
    make_asset(database, other, "bob's")
    sync = CatalogSync(database)
    await sync.push(kept, "archive")
    catalog.state.items["gone-1"] = {"title": "removed locally"}
    catalog.state.items["gone-2"] = {"title": "never ours"}

    report = await sync.sync("alice", "archive")

    assert (report.added, report.updated, report.deleted) == (3, 0, 2)
    assert [i.asset_id for i in report.plan.unchanged] == [kept]
    assert set(catalog.items) == {kept, *new}
    assert catalog.items[new[0]]["title"] == "new 0"
    pubs = publications(database)
    assert {a for a, p in pubs.items() if p.status == "published"} == {kept, *new}
    # paging: the 3 items it held, in pages of 2
    assert catalog.requests.count(("GET", "/items")) == 2

    again = await sync.sync("alice", "archive")
    assert (again.added, again.updated, again.deleted, len(again.plan.unchanged)) == (0, 0, 0, 4)


@pytest.mark.anyio
async def test_sync_records_removal_of_an_asset_no_longer_ready(
    database: Database, catalog: CatalogServer
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog)
    asset = make_asset(database, owner, "soon failed")
    sync = CatalogSync(database)
    await sync.push(asset, "archive")
    with database.transaction() as s:
        s.get_one(Asset, asset).status = "failed"

    report = await sync.sync("alice", "archive")

    assert report.deleted == 1 and catalog.items == {}
    assert publications(database)[asset].status == "removed"


@pytest.mark.anyio
async def test_update_existing_rewrites_only_changed_items(
    database: Database, catalog: CatalogServer
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog)
    assets = [make_asset(database, owner, f"cube {i}") for i in range(3)]
    sync = CatalogSync(database)
    await sync.sync("alice", "archive")
    set_title(database, assets[1], "cube 1, reprocessed")
    catalog.state.items[assets[2]]["note"] = "the catalog's own field"  # not mapped: ignored
    catalog.state.requests.clear()

    plain = await sync.sync("alice", "archive")
    assert plain.updated == 0 and [i.asset_id for i in plain.plan.stale] == [assets[1]]
    assert catalog.writes() == []
    assert catalog.items[assets[1]]["title"] == "cube 1"

    updating = await sync.sync("alice", "archive", update_existing=True)
    assert (updating.added, updating.updated, updating.deleted) == (0, 1, 0)
    assert len(updating.plan.unchanged) == 2
    assert catalog.writes() == [("PUT", f"/items/{assets[1]}")]
    assert catalog.items[assets[1]]["title"] == "cube 1, reprocessed"


@pytest.mark.anyio
async def test_dry_run_changes_nothing(database: Database, catalog: CatalogServer) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog)
    asset = make_asset(database, owner, "local only")
    catalog.state.items["remote-only"] = {"title": "x"}

    report = await CatalogSync(database).sync(
        "alice", "archive", dry_run=True, update_existing=True
    )

    assert [i.asset_id for i in report.plan.add] == [asset]
    assert report.plan.delete == ["remote-only"]
    assert (report.added, report.deleted) == (1, 1)  # what would happen
    assert catalog.writes() == []
    assert set(catalog.items) == {"remote-only"}
    assert publications(database) == {}


@pytest.mark.anyio
async def test_max_deletes_refuses_before_any_change(
    database: Database, catalog: CatalogServer
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog)
    make_asset(database, owner, "local")
    for i in range(3):
        catalog.state.items[f"remote-{i}"] = {"title": str(i)}

    with pytest.raises(SyncRefused, match="would delete 3 items, more than --max-deletes 2"):
        await CatalogSync(database).sync("alice", "archive", max_deletes=2)

    assert catalog.writes() == []  # not even the add
    assert len(catalog.items) == 3
    with pytest.raises(SyncRefused) as refused:
        await CatalogSync(database).sync("alice", "archive", max_deletes=0)
    assert sorted(refused.value.report.plan.delete) == [f"remote-{i}" for i in range(3)]
    ok = await CatalogSync(database).sync("alice", "archive", max_deletes=3)
    assert ok.deleted == 3 and ok.added == 1


@pytest.mark.anyio
async def test_an_unknown_owner_or_a_disabled_target_is_an_error(
    database: Database, catalog: CatalogServer
) -> None:
    owner = make_owner(database)
    target = make_target(database, owner, catalog)
    catalog.state.items["precious"] = {"title": "x"}
    with pytest.raises(NotFound, match="no owner named 'alcie'"):  # not an empty set of assets
        await CatalogSync(database).sync("alcie", "archive")
    with database.transaction() as s:
        s.get_one(Target, target).enabled = False
    with pytest.raises(InvalidState, match="target 'archive' is disabled"):
        await CatalogSync(database).sync("alice", "archive")
    assert set(catalog.items) == {"precious"}
    assert catalog.writes() == []


# -- catalog errors ----------------------------------------------------------------------


def config(catalog: CatalogServer, **kw: Any) -> CatalogConfig:
    return CatalogConfig.parse("t", {"url": catalog.url, "api_key": catalog.api_key, **kw})


ITEM = LocalItem("as_1", "as_1", {"title": "x"})


@pytest.mark.anyio
async def test_a_few_5xx_are_retried_within_one_call(catalog: CatalogServer) -> None:
    catalog.fail_next(2)
    async with CatalogClient(config(catalog, retries=2, backoff_s=0.01)) as client:
        await client.put(ITEM)
    assert catalog.items == {"as_1": {"title": "x"}}
    assert len(catalog.requests) == 3


@pytest.mark.anyio
async def test_a_failing_catalog_fails_with_its_reason(catalog: CatalogServer) -> None:
    catalog.fail_next(-1, status=503)
    async with CatalogClient(config(catalog, retries=1, backoff_s=0.01)) as client:
        with pytest.raises(CatalogUnavailable, match="answered 503: catalog database is down"):
            await client.put(ITEM)
    assert len(catalog.requests) == 2


@pytest.mark.anyio
async def test_a_wrong_key_is_a_clear_error_and_not_retried(catalog: CatalogServer) -> None:
    cfg = CatalogConfig.parse("t", {"url": catalog.url, "api_key": "wrong", "retries": 3})
    async with CatalogClient(cfg) as client:
        with pytest.raises(CatalogUnauthorized, match=r"refused the API key.*invalid API key"):
            await client.put(ITEM)
    assert len(catalog.requests) == 1


@pytest.mark.anyio
async def test_an_unreachable_or_slow_catalog_is_a_clear_error(catalog: CatalogServer) -> None:
    away = CatalogConfig.parse(
        "t", {"url": f"http://127.0.0.1:{free_port()}", "api_key": "k", "retries": 0}
    )
    async with CatalogClient(away) as client:
        with pytest.raises(CatalogUnavailable, match="catalog unreachable"):
            await client.put(ITEM)
    catalog.delay_s = 1.0
    async with CatalogClient(config(catalog, timeout_s=0.2, retries=0)) as client:
        with pytest.raises(CatalogUnavailable, match=r"no answer within 0\.2 s"):
            await client.put(ITEM)


# -- the push step through the worker --------------------------------------------------


async def run_worker(database: Database, tmp_path: Path, asset: str) -> None:
    engine = JobEngine(database, lease_s=30, backoff=Backoff(base_s=0.05, cap_s=0.1))
    worker = Worker(
        engine,
        InProcessDispatcher(),
        CatalogSteps().steps(),
        worker_id="w1",
        queues=["default"],
        workdir=tmp_path / "work",
        progress_s=0.05,
        poll_s=0.05,
    )
    with database.transaction() as s:
        owner = s.get_one(Asset, asset).owner_id
        specs = catalog_step_specs(s, owner, "fits", after=())
        assert [spec.name for spec in specs] == ["catalog:archive"]
        engine.enqueue_graph(s, asset, Graph(specs))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        with anyio.fail_after(20):
            while await anyio.to_thread.run_sync(status_of, database, asset) == "processing":
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def status_of(database: Database, asset: str) -> str:
    with database.transaction() as s:
        return s.get_one(Asset, asset).status


def order_of(database: Database, asset: str) -> WorkOrder:
    with database.transaction() as s:
        return s.scalars(select(WorkOrder).where(WorkOrder.asset_id == asset)).one()


@pytest.mark.anyio
async def test_push_step_is_retried_by_the_engine_then_succeeds(
    database: Database, catalog: CatalogServer, tmp_path: Path
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog, auto=True, retries=0, max_attempts=3)
    asset = make_asset(database, owner, "flaky catalog", status="processing")
    catalog.fail_next(2)

    await run_worker(database, tmp_path, asset)

    order = order_of(database, asset)
    assert (order.state, order.attempts) == ("succeeded", 3)
    assert order.result == {"published": True, "remote": asset}
    assert status_of(database, asset) == "ready"
    assert catalog.items[asset]["title"] == "flaky catalog"
    assert publications(database)[asset].status == "published"


@pytest.mark.anyio
async def test_push_step_out_of_attempts_records_the_reason_and_keeps_the_asset(
    database: Database, catalog: CatalogServer, tmp_path: Path
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog, auto=True, retries=0, max_attempts=2)
    asset = make_asset(database, owner, "down catalog", status="processing")
    catalog.fail_next(-1)

    await run_worker(database, tmp_path, asset)

    reason = f"PUT {catalog.url}/items/{asset}: catalog answered 500: catalog database is down"
    order = order_of(database, asset)
    assert (order.state, order.attempts, order.error) == ("succeeded", 2, reason)
    assert order.result == {"published": False, "error": reason}
    pub = publications(database)[asset]
    assert (pub.status, pub.error, pub.published_at) == ("failed", reason, None)
    assert status_of(database, asset) == "ready"  # its outputs are fine; sync adds it later
    with database.transaction() as s:
        events = [e.type for e in s.scalars(select(Event).where(Event.asset_id == asset))]
    assert events.count("step.retrying") == 1 and "publication.failed" in events


@pytest.mark.anyio
async def test_a_required_catalog_fails_the_asset(
    database: Database, catalog: CatalogServer, tmp_path: Path
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog, auto=True, retries=0, max_attempts=2, required=True)
    asset = make_asset(database, owner, "must be listed", status="processing")
    catalog.fail_next(-1)

    await run_worker(database, tmp_path, asset)

    order = order_of(database, asset)
    assert (order.state, order.attempts) == ("failed", 2)
    assert "catalog answered 500" in (order.error or "")
    assert status_of(database, asset) == "failed"
    with database.transaction() as s:
        assert "catalog answered 500" in (s.get_one(Asset, asset).error or "")
    assert publications(database)[asset].status == "failed"


@pytest.mark.anyio
async def test_push_step_gives_up_at_once_on_a_wrong_key(
    database: Database, catalog: CatalogServer, tmp_path: Path
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog, auto=True, api_key="stale-key", max_attempts=3)
    asset = make_asset(database, owner, "wrong key", status="processing")

    await run_worker(database, tmp_path, asset)

    order = order_of(database, asset)
    assert (order.state, order.attempts) == ("succeeded", 1)  # retrying cannot cure a 401
    assert "refused the API key (401: invalid API key)" in (order.error or "")
    pub = publications(database)[asset]
    assert pub.status == "failed" and pub.error == order.error
    assert status_of(database, asset) == "ready"


def test_step_specs_only_for_auto_targets_of_the_kind(
    database: Database, catalog: CatalogServer
) -> None:
    owner = make_owner(database)
    make_target(database, owner, catalog, auto=True, kinds=["fits"])
    with database.transaction() as s:
        s.add(Target(id=new_id("t"), owner_id=owner, name="manual", kind="catalog", config={}))
        assert catalog_step_specs(s, owner, "video") == ()
        (spec,) = catalog_step_specs(s, owner, "fits", after=("validate", "headers"))
    assert spec.name == "catalog:archive" and spec.depends_on == ("validate", "headers")
    assert spec.max_attempts == 5


# -- the command -----------------------------------------------------------------------


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Iterator[tuple[typer.Typer, dict[str, str]]]:
    app = typer.Typer()
    register(app)
    yield app, {"INGESTD_DATABASE_URL": db_url, "INGESTD_DATA_DIR": str(tmp_path / "data")}


def flat(text: str) -> str:
    """Undo the console's line wrapping."""
    return " ".join(text.split())


def test_catalog_command(
    cli: tuple[typer.Typer, dict[str, str]], database: Database, catalog: CatalogServer
) -> None:
    app, env = cli
    runner = CliRunner()
    owner = make_owner(database)
    make_target(database, owner, catalog)
    assets = [make_asset(database, owner, f"cube {i}") for i in range(2)]
    catalog.state.items["extra"] = {"title": "x"}

    dry = runner.invoke(
        app, ["catalog", "sync", "archive", "--owner", "alice", "--dry-run"], env=env
    )
    assert dry.exit_code == 0, dry.output
    assert f"+ {assets[0]}" in dry.stdout and "- extra" in dry.stdout
    assert catalog.writes() == []

    refused = runner.invoke(
        app, ["catalog", "sync", "archive", "--owner", "alice", "--max-deletes", "0"], env=env
    )
    assert refused.exit_code == EXIT_REFUSED
    assert "would delete 1 item, more than --max-deletes 0" in flat(refused.stderr)
    assert catalog.writes() == []

    done = runner.invoke(app, ["catalog", "sync", "archive", "--owner", "alice", "--json"], env=env)
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["added"], summary["deleted"], summary["unchanged"]) == (2, 1, 0)
    assert set(catalog.items) == set(assets)

    set_title(database, assets[0], "renamed")
    pushed = runner.invoke(app, ["catalog", "push", assets[0], "archive"], env=env)
    assert pushed.exit_code == 0, pushed.output
    assert catalog.items[assets[0]]["title"] == "renamed"

    catalog.fail_next(-1)
    failing = runner.invoke(app, ["catalog", "push", assets[1], "archive"], env=env)
    assert failing.exit_code == 1
    assert "catalog answered 500: catalog database is down" in flat(failing.stderr)
    assert publications(database)[assets[1]].status == "failed"
