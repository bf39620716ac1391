"""Ingest orders on the command line: ``orders`` lists them, ``watch`` orders the files of a
folder as they settle; :func:`ingest_paths` is what ``ingestd ingest`` runs. The factories
come from the composition root (``Services.orders``, ``Services.order_runner``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ingestd.cli.roles import DataDir, build, settings, setup_logging
from ingestd.defaults import LOCAL_OWNER
from ingestd.errors import IngestdError

if TYPE_CHECKING:
    from ingestd.bootstrap import Services
    from ingestd.uploads.orders import OrderView

console = Console(stderr=True)

FINISHED = ("completed", "failed")


async def ingest_paths(
    services: Services,
    owner_id: str,
    paths: list[Path],
    *,
    title: str | None = None,
    force: bool = False,
    wait: bool = True,
) -> list[dict[str, Any]]:
    """Order each path (the operator's command: any readable path) and, with ``wait``, run
    the orders and a worker here until all have finished. One result per path, in order."""
    from ingestd.queries import AssetQueries

    orders = services.orders
    absolute = await asyncio.to_thread(lambda: [os.path.abspath(p) for p in paths])
    views = [
        await orders.request(owner_id, a, force=force, restricted=False, title=title)
        for a in absolute
    ]
    if wait:
        stop = asyncio.Event()
        loops = [
            asyncio.create_task(services.worker().run(stop)),
            asyncio.create_task(services.order_runner().run(stop)),
        ]
        try:
            while True:
                views = [await orders.get(owner_id, v.id) for v in views]
                if all(v.status in FINISHED for v in views):
                    break
                await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*loops)
    queries = AssetQueries(services.db)
    results = []
    for p, v in zip(paths, views, strict=True):
        asset = (
            (await asyncio.to_thread(queries.get, owner_id, v.asset_id)).asset
            if v.asset_id
            else None
        )
        results.append(
            {
                "id": v.asset_id,
                "order_id": v.id,
                "order_status": v.status,
                "file": str(p),
                "path": v.path,
                # the asset's status once its order completed, else the order's
                "status": asset.status
                if asset is not None and v.status == "completed"
                else v.status,
                "error": v.error or (asset.error if asset is not None else None),
                "sha256": asset.sha256 if asset is not None else None,
                "metadata": asset.meta if asset is not None else {},
            }
        )
    return results


def _owner(services: Services, name: str) -> str:
    from ingestd.cli.owners import owner_id

    return owner_id(services, name)


def _fail(exc: IngestdError) -> typer.Exit:
    console.print(f"[red]error:[/] {exc.message}")
    return typer.Exit(1)


def register(app: typer.Typer) -> None:
    @app.command("orders")
    def list_orders(
        data_dir: DataDir = None,
        owner: Annotated[str, typer.Option(help="Whose orders")] = LOCAL_OWNER,
        status: Annotated[
            str | None, typer.Option(help="queued, started, completed or failed")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """List ingest orders (paths ordered by 'ingest', 'watch' or POST /v1/ingest)."""
        services = build(settings(data_dir))
        try:
            views = asyncio.run(_list(services, owner, status))
        except IngestdError as exc:
            raise _fail(exc) from exc
        finally:
            services.close()
        if as_json:
            typer.echo(json.dumps([v.to_json() for v in views], indent=2))
            return
        table = Table("order", "path", "status", "asset", "updated", "error")
        for v in views:
            table.add_row(
                v.id, v.path, v.status, v.asset_id or "", v.updated_at.isoformat(), v.error or ""
            )
        Console().print(table)

    @app.command()
    def watch(
        directory: Annotated[Path, typer.Argument(exists=True, file_okay=False)],
        data_dir: DataDir = None,
        owner: Annotated[str, typer.Option(help="Owner of the new assets")] = LOCAL_OWNER,
        worker: Annotated[
            bool,
            typer.Option(
                "--worker",
                help="Also run the orders and a worker here (when no 'ingestd serve' or "
                "'ingestd worker' runs on this data dir)",
            ),
        ] = False,
    ) -> None:
        """Order the files of DIRECTORY for ingestion as they appear, once they stop growing
        (INGESTD_WATCH_SETTLE_S). Runs until SIGINT/SIGTERM."""
        s = settings(data_dir)
        setup_logging(s.log_level)
        services = build(s)
        console.print(f"watching {directory} (settled after {s.watch_settle_s} s)")
        try:
            asyncio.run(_watch(services, owner, directory, worker=worker))
        except IngestdError as exc:
            raise _fail(exc) from exc
        finally:
            services.close()


async def _list(services: Services, owner_name: str, status: str | None) -> list[OrderView]:
    owner_id = await asyncio.to_thread(_owner, services, owner_name)
    return await services.orders.query(owner_id, status)


async def _watch(services: Services, owner_name: str, directory: Path, *, worker: bool) -> None:
    from ingestd.uploads.watch import FolderWatcher

    await services.start()
    try:
        owner_id = await asyncio.to_thread(_owner, services, owner_name)
        watcher = FolderWatcher(
            services.orders,
            owner_id,
            directory,
            settle_s=services.settings.watch_settle_s,
            logger=services.log.getChild("watch"),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(watcher.run(stop))]
        if worker:
            tasks.append(asyncio.create_task(services.worker().run(stop)))
            tasks.append(asyncio.create_task(services.order_runner().run(stop)))
        await asyncio.gather(*tasks)
    finally:
        await services.aclose()
