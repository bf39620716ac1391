"""``ingestd subscriptions add/list/remove`` and ``ingestd deliveries``: an owner's
notification endpoints, managed on the server's database (like ``ingestd keys``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ingestd.cli.roles import DataDir, settings
from ingestd.defaults import LOCAL_OWNER
from ingestd.errors import IngestdError

if TYPE_CHECKING:
    from ingestd.db.engine import Database

T = TypeVar("T")

OwnerName = Annotated[str, typer.Option("--owner", help="Owner name")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

_err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``subscriptions`` (add, list, remove) and ``deliveries`` to ``app``."""
    subs = typer.Typer(help="Manage notification subscriptions.", no_args_is_help=True)
    subs.command("add")(add)
    subs.command("list")(list_subscriptions)
    subs.command("remove")(remove)
    app.add_typer(subs, name="subscriptions")
    app.command("deliveries")(deliveries)


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


@contextmanager
def _database(data_dir: Any) -> Iterator[Database]:
    from ingestd.db.engine import Database
    from ingestd.db.migrate import upgrade

    url = settings(data_dir).resolved_database_url
    upgrade(url)
    db = Database.from_url(url, pool_size=1)
    try:
        yield db
    finally:
        db.dispose()


def _run(data_dir: Any, owner: str, action: Callable[[Database, str], T]) -> T:
    from sqlalchemy import select

    from ingestd.db.models import Owner

    with _database(data_dir) as db:
        with db.transaction() as session:
            owner_id = session.scalars(select(Owner.id).where(Owner.name == owner)).first()
        if owner_id is None:
            _fail(f"no owner named {owner!r} (an owner exists once it has an API key)")
        try:
            return action(db, owner_id)
        except IngestdError as exc:
            _fail(exc.message)


def add(
    events: Annotated[
        list[str],
        typer.Option("--event", "-e", help='Event type (repeat), e.g. asset.ready, asset.*, "*"'),
    ],
    url: Annotated[str | None, typer.Option("--url", help="Webhook URL (http or https)")] = None,
    email: Annotated[str | None, typer.Option("--email", help="E-mail address")] = None,
    owner: OwnerName = LOCAL_OWNER,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Subscribe a webhook URL or an e-mail address; a webhook's secret is printed once."""
    if (url is None) == (email is None):
        _fail("give either --url or --email")
    from ingestd.notify.service import Subscriptions, subscription_view

    kind, address = ("webhook", url) if url is not None else ("email", email)
    assert address is not None
    sub, secret = _run(
        data_dir, owner, lambda db, oid: Subscriptions(db).create(oid, kind, address, events)
    )
    view = subscription_view(sub, secret=secret)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    _err.print(f"subscription [bold]{sub.id}[/] ({kind} {address}) for {', '.join(sub.events)}")
    if secret:
        _err.print("signing secret (shown only this once):")
        typer.echo(secret)


def list_subscriptions(
    owner: OwnerName = LOCAL_OWNER, data_dir: DataDir = None, as_json: AsJson = False
) -> None:
    """List the owner's subscriptions (secrets masked)."""
    from ingestd.notify.service import Subscriptions, subscription_view

    subs = _run(data_dir, owner, lambda db, oid: Subscriptions(db).owned(oid))
    views = [subscription_view(s) for s in subs]
    if as_json:
        typer.echo(json.dumps(views, indent=2))
        return
    table = Table("id", "kind", "address", "events", "enabled", "created")
    for s in subs:
        table.add_row(
            s.id, s.kind, s.address, ", ".join(s.events), str(s.enabled), s.created_at.isoformat()
        )
    Console().print(table)


def remove(subscription: str, owner: OwnerName = LOCAL_OWNER, data_dir: DataDir = None) -> None:
    """Remove a subscription and its deliveries."""
    from ingestd.notify.service import Subscriptions

    _run(data_dir, owner, lambda db, oid: Subscriptions(db).remove(oid, subscription))
    _err.print(f"removed {subscription}")


def deliveries(
    subscription: str,
    owner: OwnerName = LOCAL_OWNER,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """The newest deliveries of a subscription, with their attempts and last answer."""
    from ingestd.notify.service import Subscriptions, delivery_view

    rows = _run(
        data_dir,
        owner,
        lambda db, oid: Subscriptions(db).deliveries(oid, subscription, limit=limit),
    )
    views = [delivery_view(d, t) for d, t in rows]
    if as_json:
        typer.echo(json.dumps(views, indent=2))
        return
    table = Table("delivery", "event", "status", "attempts", "answer", "error", "created")
    for v in views:
        table.add_row(
            v["id"],
            f"{v['event_type']} #{v['event_id']}",
            v["status"],
            str(v["attempts"]),
            str(v["response_status"] or ""),
            v["error"] or "",
            v["created_at"] or "",
        )
    Console().print(table)
