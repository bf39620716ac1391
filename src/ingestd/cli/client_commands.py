"""Client commands of the ``ingestd`` CLI: ``upload``, ``assets``, ``status``.

``register(app)`` adds them to a typer app. This module is the client's composition root:
it alone reads the environment (server, key, state directory) and builds the client.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any, NoReturn, Self, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ingestd.client import (
    DEFAULT_BLOCK_SIZE,
    ClientError,
    IngestdClient,
    JSONObject,
    LocalFileError,
    Phase,
    Uploader,
    UploadOptions,
    UploadProgress,
    UploadStateStore,
    asset_error,
    default_state_dir,
    is_terminal,
    wait_for_assets,
)
from ingestd.client.errors import BAD_RESPONSE
from ingestd.client.events import stream_events
from ingestd.defaults import DATA_DIR, LOCAL_KEY_FILE, SERVER_URL

DEFAULT_SERVER = SERVER_URL
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

T = TypeVar("T")

Server = Annotated[
    str, typer.Option("--server", envvar="INGESTD_SERVER", help="Server URL.", show_envvar=True)
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="INGESTD_API_KEY",
        show_envvar=True,
        show_default=False,
        help="API key; default: the file <INGESTD_DATA_DIR or ./.ingestd>/local-key.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON only, no bars or tables.")]


def register(
    app: typer.Typer,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    poll_interval: float = 1.0,
) -> None:
    """Add ``upload``, ``assets`` and ``status`` to ``app``.

    ``transport`` and ``poll_interval`` exist for tests (an in-memory fake server).
    """
    commands = _ClientCommands(transport, poll_interval)
    app.command("upload")(commands.upload)
    app.command("assets")(commands.assets)
    app.command("status")(commands.status)


class _ClientCommands:
    def __init__(self, transport: httpx.AsyncBaseTransport | None, poll_interval: float) -> None:
        self._transport = transport
        self._poll_interval = poll_interval
        self._err = Console(stderr=True)
        self._out = Console()

    def upload(
        self,
        files: Annotated[
            list[Path],
            typer.Argument(exists=True, dir_okay=False, readable=True, resolve_path=True),
        ],
        server: Server = DEFAULT_SERVER,
        key: Key = None,
        parallel: Annotated[int, typer.Option(min=1, max=64, help="Blocks sent at once.")] = 4,
        block_size: Annotated[
            int, typer.Option("--block-size", min=1, help="Block size in bytes.")
        ] = DEFAULT_BLOCK_SIZE,
        title: Annotated[str | None, typer.Option(help="Asset title (default: file name).")] = None,
        no_wait: Annotated[
            bool, typer.Option("--no-wait", help="Return once uploaded; do not follow processing.")
        ] = False,
        as_json: AsJson = False,
    ) -> None:
        """Upload files (resumable: run the same command again after an interruption)."""
        api_key = self._api_key(key)
        options = UploadOptions(block_size=block_size, parallel=parallel, title=title)
        state = UploadStateStore(default_state_dir(os.environ))
        outcomes = self._run(self._upload(files, server, api_key, options, state, no_wait, as_json))
        failed = [o for o in outcomes if "id" not in o or _failed(o)]
        if as_json:
            typer.echo(json.dumps(outcomes[0] if len(outcomes) == 1 else outcomes, indent=2))
        else:
            for outcome in outcomes:
                self._print_outcome(outcome, waited=not no_wait)
        if failed:
            raise typer.Exit(EXIT_FAILED)

    def assets(
        self,
        server: Server = DEFAULT_SERVER,
        key: Key = None,
        limit: Annotated[int, typer.Option(min=1, max=1000, help="How many assets.")] = 50,
        as_json: AsJson = False,
    ) -> None:
        """List assets, newest first as the server orders them."""
        api_key = self._api_key(key)

        async def fetch(client: IngestdClient) -> JSONObject:
            return await client.list_assets(limit=limit)

        page = self._run(self._with_client(server, api_key, fetch))
        items: list[JSONObject] = page.get("items", [])
        if as_json:
            typer.echo(json.dumps(items, indent=2))
            return
        table = Table("id", "title", "kind", "status", "created")
        for item in items:
            table.add_row(
                str(item.get("id")),
                str(item.get("title") or ""),
                str(item.get("kind") or ""),
                _styled_status(str(item.get("status"))),
                str(item.get("created_at") or ""),
            )
        self._out.print(table)

    def status(
        self,
        asset: Annotated[str, typer.Argument(help="Asset id.")],
        server: Server = DEFAULT_SERVER,
        key: Key = None,
        follow: Annotated[bool, typer.Option("--follow", help="Follow until done.")] = False,
        as_json: AsJson = False,
    ) -> None:
        """Show an asset: status, progress per step, loudness, renditions."""
        api_key = self._api_key(key)

        async def fetch(client: IngestdClient) -> JSONObject:
            if not follow:
                return await client.get_asset(asset)
            return await self._follow(client, server, api_key, asset, show=not as_json)

        found = self._run(self._with_client(server, api_key, fetch))
        if as_json:
            typer.echo(json.dumps(found, indent=2))
        else:
            self._print_asset(found)
        if _failed(found):
            raise typer.Exit(EXIT_FAILED)

    # running

    async def _upload(
        self,
        files: list[Path],
        server: str,
        api_key: str,
        options: UploadOptions,
        state: UploadStateStore,
        no_wait: bool,
        as_json: bool,
    ) -> list[JSONObject]:
        outcomes: list[JSONObject] = []
        async with self._client(server, api_key, options.parallel + 1) as client:
            with _UploadBars(enabled=not as_json) as bars:
                uploader = Uploader(client, state, options, on_progress=bars.update)
                for path in files:
                    try:
                        result = await uploader.upload(path)
                    except (ClientError, LocalFileError) as exc:
                        outcomes.append(_error_outcome(path, exc))
                        continue
                    outcomes.append({"file": str(path), "asset_id": result.asset_id})
            ids = [str(o["asset_id"]) for o in outcomes if "asset_id" in o]
            if no_wait:
                assets = [await client.get_asset(asset_id) for asset_id in ids]
            else:
                with _ProcessingBars(enabled=not as_json) as processing:
                    assets = await wait_for_assets(
                        client, ids, on_update=processing.update, interval=self._poll_interval
                    )
        by_id = {str(a["id"]): a for a in assets}
        return [by_id.get(str(o.get("asset_id")), o) for o in outcomes]

    async def _follow(
        self, client: IngestdClient, server: str, api_key: str, asset_id: str, *, show: bool
    ) -> JSONObject:
        """Follow one asset over its event stream; poll if the server has no stream route."""
        with _StepBars(enabled=show) as bars:
            try:
                return await self._follow_stream(server, api_key, asset_id, bars)
            except ClientError as exc:
                # An older server (no route), or an unknown asset: polling tells them apart.
                if exc.status != 404:
                    raise
            found = await wait_for_assets(
                client, [asset_id], on_update=bars.update, interval=self._poll_interval
            )
            return found[0]

    async def _follow_stream(
        self, server: str, api_key: str, asset_id: str, bars: _StepBars
    ) -> JSONObject:
        url = f"/v1/assets/{asset_id}/events/stream"
        async with (
            httpx.AsyncClient(
                base_url=server.rstrip("/"),
                headers={"Authorization": f"Bearer {api_key}"},
                transport=self._transport,
            ) as http,
            aclosing(stream_events(http, url)) as messages,
        ):
            async for message in messages:
                try:
                    body = message.json()
                except ValueError as exc:
                    raise ClientError(
                        BAD_RESPONSE, f"GET {url}: a {message.event} message is not JSON"
                    ) from exc
                if message.event == "event":
                    bars.note(body)
                elif message.event == "progress":
                    bars.update(body)
                elif message.event == "done":
                    bars.update(body)
                    return dict(body)
        raise ClientError(BAD_RESPONSE, f"GET {url}: the stream ended before the asset was done")

    async def _with_client(
        self, server: str, api_key: str, call: Callable[[IngestdClient], Awaitable[T]]
    ) -> T:
        async with self._client(server, api_key, 2) as client:
            return await call(client)

    def _client(self, server: str, api_key: str, connections: int) -> IngestdClient:
        return IngestdClient(
            server, api_key, max_connections=connections, transport=self._transport
        )

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            return asyncio.run(work)
        except KeyboardInterrupt:
            self._err.print("[yellow]interrupted[/]: run the same command again to resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (ClientError, LocalFileError) as exc:
            self._fail(str(exc))

    def _api_key(self, key: str | None) -> str:
        if key:
            return key
        key_file = Path(os.environ.get("INGESTD_DATA_DIR") or DATA_DIR) / LOCAL_KEY_FILE
        try:
            text = key_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = ""
        if not text:
            self._fail(
                f"no API key: pass --key, set INGESTD_API_KEY, or start `ingestd serve` "
                f"once so it writes {key_file}"
            )
        return text

    def _fail(self, message: str) -> NoReturn:
        self._err.print(f"[red]error[/]: {message}", highlight=False)
        raise typer.Exit(EXIT_FAILED)

    # printing

    def _print_outcome(self, outcome: JSONObject, *, waited: bool) -> None:
        if "id" not in outcome:
            error = outcome["error"]
            self._err.print(
                f"[red]✗[/] {outcome['file']}: {error['message']} ({error['code']})",
                highlight=False,
            )
        elif _failed(outcome):
            self._err.print(
                f"[red]✗[/] {outcome.get('title')} ({outcome['id']}): {asset_error(outcome)}",
                highlight=False,
            )
        else:
            status = outcome.get("status") if waited or is_terminal(outcome) else "uploaded"
            self._out.print(
                f"[green]✓[/] {outcome.get('title')} → {outcome['id']} {status}", highlight=False
            )

    def _print_asset(self, asset: JSONObject) -> None:
        self._out.print(
            f"[bold]{asset.get('title')}[/] {asset.get('id')} ({asset.get('kind')}) "
            f"{_styled_status(str(asset.get('status')))}",
            highlight=False,
        )
        if _failed(asset):
            self._out.print(f"[red]error[/]: {asset_error(asset)}", highlight=False)
        progress = asset.get("progress") or {}
        steps = progress.get("steps") or []
        if steps:
            table = Table("step", "state", "percent", "eta", "attempts", "error", title="steps")
            for step in steps:
                table.add_row(
                    str(step.get("step")),
                    str(step.get("state")),
                    f"{float(step.get('percent') or 0):.0f}%",
                    _eta(step.get("eta_s")),
                    str(step.get("attempts", "")),
                    str(step.get("error") or ""),
                )
            self._out.print(table)
        loudness = asset.get("loudness")
        if loudness:
            values = ", ".join(f"{name}={value}" for name, value in loudness.items())
            self._out.print(f"loudness: {values}", highlight=False)
        renditions = asset.get("renditions") or []
        if renditions:
            self._out.print("renditions:")
        for rendition in renditions:
            # One line each, never wrapped, so the URL stays whole and copyable.
            fields = [str(rendition.get(n) or "-") for n in ("name", "kind", "codec")]
            fields += [_bitrate(rendition.get("bitrate")), _size(rendition.get("size"))]
            fields.append(str(rendition.get("url") or ""))
            self._out.print("  " + "  ".join(fields), soft_wrap=True, highlight=False)


class _UploadBars:
    """Rich bars for hashing and uploading; a no-op when disabled (``--json``)."""

    def __init__(self, *, enabled: bool) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._tasks: dict[tuple[Path, Phase], TaskID] = {}

    def __enter__(self) -> _UploadBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, event: UploadProgress) -> None:
        if event.phase is Phase.COMPLETING:
            task = self._tasks.get((event.path, Phase.UPLOADING))
            if task is not None:
                done = "uploaded" if event.completed == event.total else "completing"
                self._progress.update(task, description=f"{done} {event.path.name}")
            return
        task = self._tasks.get((event.path, event.phase))
        if task is None:
            if event.phase is Phase.UPLOADING:
                hashing = self._tasks.get((event.path, Phase.HASHING))
                if hashing is not None:
                    self._progress.update(hashing, visible=False)
            # Created with what is already done, so the rate counts only this run's bytes.
            self._tasks[(event.path, event.phase)] = self._progress.add_task(
                f"{event.phase} {event.path.name}", total=event.total, completed=event.completed
            )
        else:
            self._progress.update(task, completed=event.completed)


class _Bars:
    """Rich progress bars on stderr, one task per key, with a detail column."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


class _ProcessingBars(_Bars):
    """Rich bars for server-side processing, from polled assets."""

    def update(self, asset: JSONObject) -> None:
        asset_id = str(asset.get("id"))
        progress = asset.get("progress") or {}
        percent = 100.0 if asset.get("status") == "ready" else float(progress.get("percent") or 0)
        running = [
            str(s.get("step"))
            for s in progress.get("steps") or []
            if s.get("state") not in ("done", "pending", "skipped")
        ]
        detail = f"{asset.get('status')} {' '.join(running)} {_eta(progress.get('eta_s'))}"
        task = self._tasks.get(asset_id)
        if task is None:
            self._tasks[asset_id] = self._progress.add_task(
                f"processing {asset.get('title') or asset_id}", total=100.0, detail=detail
            )
            task = self._tasks[asset_id]
        self._progress.update(task, completed=percent, detail=detail.strip())


class _StepBars(_Bars):
    """Rich bars for one followed asset: the whole, then one per step, with percent and ETA.

    Fed the asset JSON (or a ``progress`` message, which has the same ``status`` and
    ``progress``); ``note`` prints a stored event above the bars.
    """

    _FINISHED_STEPS = ("succeeded", "skipped")

    def note(self, event: JSONObject) -> None:
        if self._enabled:
            self._progress.console.print(
                f"[dim]{event.get('created_at') or ''}[/] {event.get('type')}", highlight=False
            )

    def update(self, asset: JSONObject) -> None:
        status = str(asset.get("status"))
        progress = asset.get("progress") or {}
        percent = 100.0 if status == "ready" else float(progress.get("percent") or 0)
        detail = f"{status} {_eta(progress.get('eta_s'))}".strip()
        self._bar("", str(asset.get("title") or asset.get("id")), percent, detail)
        for step in progress.get("steps") or []:
            state = str(step.get("state"))
            done = state in self._FINISHED_STEPS
            step_percent = 100.0 if done else float(step.get("percent") or 0)
            step_eta = _eta(step.get("eta_s")) if state == "running" else ""
            name = str(step.get("step"))
            self._bar(name, f"  {name}", step_percent, f"{state} {step_eta}".strip())

    def _bar(self, key: str, description: str, percent: float, detail: str) -> None:
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = self._progress.add_task(
                description, total=100.0, detail=detail
            )
        self._progress.update(task, completed=percent, detail=detail)


def _error_outcome(path: Path, exc: ClientError | LocalFileError) -> JSONObject:
    return {"file": str(path), "error": {"code": exc.code, "message": exc.message}}


def _failed(outcome: JSONObject) -> bool:
    return outcome.get("status") in ("failed", "rejected")


def _eta(seconds: Any) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(float(seconds)), 60)
    return f"eta {minutes}:{secs:02d}"


def _styled_status(status: str) -> str:
    color = {"ready": "green", "failed": "red", "rejected": "red"}.get(status, "yellow")
    return f"[{color}]{status}[/]"


def _bitrate(value: Any) -> str:
    return f"{float(value) / 1e6:.2f} Mb/s" if value else "-"


def _size(value: Any) -> str:
    return f"{int(value):,} B" if value else "-"
