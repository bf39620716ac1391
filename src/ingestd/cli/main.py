"""The ``ingestd`` command: the composition root for every role and the client commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ingestd import __version__
from ingestd.cli import catalog as catalog_commands
from ingestd.cli import client_commands, orders, roles, subscriptions
from ingestd.cli import targets as targets_commands
from ingestd.defaults import LOCAL_OWNER
from ingestd.errors import IngestdError

if TYPE_CHECKING:  # the server side is imported lazily: client commands start fast
    from ingestd.bootstrap import Services

app = typer.Typer(
    help="ingestd: resumable ingestion and processing of media masters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
roles.register(app)
client_commands.register(app)
subscriptions.register(app)
catalog_commands.register(app)
targets_commands.register(app)
orders.register(app)

console = Console(stderr=True)

settings = roles.settings
_build = roles.build
_logging = roles.setup_logging
DataDir = roles.DataDir


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date."""
    s = settings(data_dir)
    from ingestd.db.migrate import upgrade

    upgrade(s.resolved_database_url)
    console.print("database is up to date")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files to ingest (any readable path)")],
    data_dir: DataDir = None,
    owner: Annotated[str, typer.Option(help="Owner of the new assets")] = LOCAL_OWNER,
    title: Annotated[str | None, typer.Option()] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run every step again, even for unchanged content")
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Only order; a running 'ingestd serve' or worker processes the orders",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ingest server-side files as work orders, one per path (a second request for a path
    updates its order; the same file again updates the same asset, skipping unchanged steps)."""
    s = settings(data_dir)
    _logging("WARNING")
    services = _build(s)
    try:
        results = asyncio.run(_ingest(services, owner, paths, title, force=force, wait=not no_wait))
    except IngestdError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        services.close()
    if as_json:
        typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        table = Table("asset", "file", "order", "status", "error")
        for r in results:
            table.add_row(
                r["id"] or "",
                r["file"],
                r.get("order_status") or "",
                r["status"] or "",
                r.get("error") or "",
            )
        Console().print(table)
    if any(r["status"] == "failed" or r.get("order_status") == "failed" for r in results):
        raise typer.Exit(1)


async def _ingest(
    services: Services,
    owner_name: str,
    paths: list[Path],
    title: str | None,
    *,
    force: bool,
    wait: bool,
) -> list[dict[str, Any]]:
    from ingestd.cli.orders import ingest_paths

    await services.start()
    try:
        owner_id = await asyncio.to_thread(_owner_id, services, owner_name)
        return await ingest_paths(services, owner_id, paths, title=title, force=force, wait=wait)
    finally:
        await services.aclose()  # the broker and Redis connections live in this loop


def _owner_id(services: Services, name: str) -> str:
    from ingestd.cli.owners import owner_id

    return owner_id(services, name)


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="Owner name; created if new")],
    label: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    services = _build(settings(data_dir))
    try:
        issued = services.keys.create(owner, label)
    finally:
        services.close()
    console.print(f"key for owner [bold]{issued.owner_name}[/] (prefix {issued.prefix}):")
    typer.echo(issued.key)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List API keys (prefixes only)."""
    services = _build(settings(data_dir))
    try:
        rows = services.keys.list()
    finally:
        services.close()
    table = Table("prefix", "owner", "label", "created", "revoked")
    for k in rows:
        table.add_row(
            k.prefix,
            k.owner_name,
            k.label or "",
            k.created_at.isoformat(),
            k.revoked_at.isoformat() if k.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: str, data_dir: DataDir = None) -> None:
    """Revoke an API key by its prefix."""
    services = _build(settings(data_dir))
    try:
        services.keys.revoke(prefix)
    except IngestdError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        services.close()
    console.print(f"revoked {prefix}")


def main() -> None:
    with contextlib.suppress(AttributeError):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()
