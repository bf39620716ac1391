"""``ingestd targets add/list/remove`` and ``ingestd publish ASSET TARGET [--remove]``,
acting for an owner directly on the database and stores (no HTTP)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ingestd.cli import roles
from ingestd.defaults import LOCAL_OWNER
from ingestd.errors import ConfigError, IngestdError

if TYPE_CHECKING:
    from ingestd.bootstrap import Services
    from ingestd.publish.service import PublicationService

console = Console(stderr=True)
Owner = Annotated[str, typer.Option(help="Owner name")]


def _publications(services: Services) -> PublicationService:
    from ingestd.publish.service import PublicationService

    found = getattr(services, "publications", None)
    if not isinstance(found, PublicationService):
        raise ConfigError("publishing is not configured (Services.publications)")
    return found


def _run(data_dir: Path | None, owner: str, action: Any) -> Any:
    """Build the services, run ``action(publications, owner_id)``, print errors nicely."""
    from ingestd.cli.owners import owner_id

    services = roles.build(roles.settings(data_dir))
    try:
        oid = owner_id(services, owner)
        return asyncio.run(action(_publications(services), oid))
    except IngestdError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        services.close()


def register(app: typer.Typer) -> None:
    targets = typer.Typer(help="Manage publication targets.", no_args_is_help=True)
    app.add_typer(targets, name="targets")

    @targets.command("add")
    def add(
        name: str,
        kind: Annotated[str, typer.Option(help="directory, s3, ftp or catalog")],
        config: Annotated[str | None, typer.Option(help="The config as JSON")] = None,
        config_file: Annotated[
            Path | None, typer.Option(exists=True, dir_okay=False, help="The config, a JSON file")
        ] = None,
        disabled: Annotated[bool, typer.Option("--disabled")] = False,
        owner: Owner = LOCAL_OWNER,
        data_dir: roles.DataDir = None,
    ) -> None:
        """Add a target (secrets in the config are never printed back)."""
        try:
            raw = config_file.read_text() if config_file else (config or "{}")
            values = json.loads(raw)
        except (OSError, ValueError) as exc:
            console.print(f"[red]error:[/] the config is not valid JSON: {exc}")
            raise typer.Exit(2) from exc
        if not isinstance(values, dict):
            console.print("[red]error:[/] the config must be a JSON object")
            raise typer.Exit(2)
        view = _run(
            data_dir,
            owner,
            lambda p, o: p.create_target(o, name, kind, values, enabled=not disabled),
        )
        typer.echo(json.dumps(view.to_dict(), indent=2))

    @targets.command("list")
    def list_(
        owner: Owner = LOCAL_OWNER,
        data_dir: roles.DataDir = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """List the owner's targets."""
        views = _run(data_dir, owner, lambda p, o: p.list_targets(o))
        if as_json:
            typer.echo(json.dumps([v.to_dict() for v in views], indent=2))
            return
        table = Table("name", "kind", "enabled", "config")
        for v in views:
            table.add_row(v.name, v.kind, "yes" if v.enabled else "no", json.dumps(v.config))
        Console().print(table)

    @targets.command("remove")
    def remove(name: str, owner: Owner = LOCAL_OWNER, data_dir: roles.DataDir = None) -> None:
        """Remove a target (what it holds stays there)."""
        _run(data_dir, owner, lambda p, o: p.delete_target(o, name))
        console.print(f"removed target {name}")

    @app.command()
    def publish(
        asset: str,
        target: str,
        remove_: Annotated[
            bool, typer.Option("--remove", help="Remove the asset's objects from the target")
        ] = False,
        owner: Owner = LOCAL_OWNER,
        data_dir: roles.DataDir = None,
    ) -> None:
        """Publish an asset's renditions to a target now (or remove them), and report."""
        if remove_:
            report = _run(data_dir, owner, lambda p, o: p.unpublish(o, asset, target))
        else:
            report = _run(data_dir, owner, lambda p, o: p.publish(o, asset, target))
        typer.echo(json.dumps(report.to_dict(), indent=2))
