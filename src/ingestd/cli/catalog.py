"""``ingestd catalog``: keep external HTTP catalogs in step (``sync``) and submit one asset
(``push``). Exit codes: 0 done, 1 an error or items the catalog rejected, 2 a bad
setting, 3 refused by ``--max-deletes``."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ingestd.cli.roles import DataDir, build, settings, setup_logging
from ingestd.defaults import LOCAL_OWNER
from ingestd.errors import IngestdError

if TYPE_CHECKING:
    from ingestd.publish.catalog import SyncReport

console = Console(stderr=True)

EXIT_REFUSED = 3


def register(app: typer.Typer) -> None:
    catalog_app = typer.Typer(
        help="Keep external HTTP catalogs in step with ingestd.", no_args_is_help=True
    )
    app.add_typer(catalog_app, name="catalog")

    @catalog_app.command("sync")
    def sync(
        target: Annotated[str, typer.Argument(help="Name of the owner's catalog target")],
        owner: Annotated[str, typer.Option(help="Owner of the target")] = LOCAL_OWNER,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print the plan; change nothing")
        ] = False,
        update_existing: Annotated[
            bool,
            typer.Option("--update-existing", help="Also rewrite items whose fields differ"),
        ] = False,
        max_deletes: Annotated[
            int | None,
            typer.Option(
                "--max-deletes",
                min=0,
                help="Refuse (exit 3, nothing changed) if more items would be deleted",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        data_dir: DataDir = None,
    ) -> None:
        """Make the catalog hold exactly the owner's ready assets: add what is missing,
        delete what is not local, and with --update-existing rewrite what differs."""
        from ingestd.publish.catalog import CatalogSync, SyncRefused

        setup_logging("WARNING")
        services = build(settings(data_dir))
        try:
            report = asyncio.run(
                CatalogSync(services.db).sync(
                    owner,
                    target,
                    dry_run=dry_run,
                    update_existing=update_existing,
                    max_deletes=max_deletes,
                )
            )
        except SyncRefused as exc:
            _print(exc.report, as_json=as_json, error=exc.message)
            console.print(f"[red]refused:[/] {exc.message}")
            raise typer.Exit(EXIT_REFUSED) from exc
        except IngestdError as exc:
            if as_json:
                typer.echo(json.dumps({"target": target, "error": exc.message}, indent=2))
            console.print(f"[red]error:[/] {exc.message}")
            raise typer.Exit(1) from exc
        finally:
            services.close()
        _print(report, as_json=as_json)
        if report.refusal is not None:
            console.print(f"[yellow]a real run would refuse:[/] {report.refusal}")
            raise typer.Exit(EXIT_REFUSED)
        if report.failed:
            raise typer.Exit(1)

    @catalog_app.command("push")
    def push(
        asset: Annotated[str, typer.Argument(help="Asset id (a ready asset)")],
        target: Annotated[str, typer.Argument(help="Name of a catalog target of its owner")],
        as_json: Annotated[bool, typer.Option("--json")] = False,
        data_dir: DataDir = None,
    ) -> None:
        """Send one asset's item to a catalog now (add or replace)."""
        from ingestd.publish.catalog import CatalogSync

        setup_logging("WARNING")
        services = build(settings(data_dir))
        try:
            item = asyncio.run(CatalogSync(services.db).push(asset, target))
        except IngestdError as exc:
            console.print(f"[red]error:[/] {exc.message}")
            raise typer.Exit(1) from exc
        finally:
            services.close()
        if as_json:
            typer.echo(json.dumps({"asset": asset, "id": item.external_id, "fields": item.fields}))
        else:
            typer.echo(f"pushed {asset} to {target} as {item.external_id}")


def _print(report: SyncReport, *, as_json: bool, error: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "error": error}, indent=2))
        return
    plan = report.plan
    if report.dry_run or error is not None:
        for item in plan.add:
            typer.echo(f"+ {item.external_id}  (asset {item.asset_id})")
        for item in plan.update:
            typer.echo(f"~ {item.external_id}  (asset {item.asset_id})")
        for external_id in plan.delete:
            typer.echo(f"- {external_id}")
    for asset_id, why in plan.skipped:
        typer.echo(f"skipped {asset_id}: {why}")
    for failure in report.failed:
        typer.echo(f"failed {failure['op']} {failure['id']}: {failure['error']}")
    verb = "would be " if report.dry_run or error is not None else ""
    summary = (
        f"{report.target}: {verb}added {len(plan.add) if error else report.added}, "
        f"{verb}updated {len(plan.update) if error else report.updated}, "
        f"{verb}deleted {len(plan.delete) if error else report.deleted}, "
        f"unchanged {len(plan.unchanged)}"
    )
    if plan.stale:
        summary += f", {len(plan.stale)} differ (--update-existing rewrites them)"
    typer.echo(summary)
