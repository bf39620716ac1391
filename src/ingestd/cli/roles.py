"""The server roles as commands: ``serve`` (all in one), ``api``, ``worker``, ``scheduler``
and ``amqp-ingest``. Each builds the services from settings (the composition root), runs
its loops on uvloop until SIGINT/SIGTERM, and closes what it opened."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ingestd import __version__
from ingestd.defaults import LOCAL_OWNER
from ingestd.errors import IngestdError

if TYPE_CHECKING:
    from ingestd.bootstrap import Services
    from ingestd.settings import Settings

console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the database and stores live [env: INGESTD_DATA_DIR]",
        show_default=False,
    ),
]
Host = Annotated[str | None, typer.Option(help="[env: INGESTD_HOST]")]
Port = Annotated[int | None, typer.Option(help="[env: INGESTD_PORT]")]
Concurrency = Annotated[
    int | None, typer.Option(help="Steps run at once [env: INGESTD_WORKER_CONCURRENCY]")
]

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    from ingestd.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def build(s: Settings) -> Services:
    from ingestd.bootstrap import build as build_services

    try:
        return build_services(s)
    except IngestdError as exc:  # e.g. ffmpeg not found, or a bad storage URL
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from exc


def run_roles(
    services: Services, loops: list[Loop], *, http: bool = False, scheduler: bool = False
) -> None:
    """Run ``loops`` (and the HTTP API, and the scheduler) until a signal, on uvloop."""
    import uvloop  # libuv's event loop: markedly less CPU per received byte

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_run(services, loops, http=http, scheduler=scheduler))
    except IngestdError as exc:  # a backend that does not answer at start
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from exc
    finally:
        services.close()


async def _run(services: Services, loops: list[Loop], *, http: bool, scheduler: bool) -> None:
    await services.start()
    stop = asyncio.Event()
    if scheduler or services.settings.scheduler:
        loops = [*loops, services.run_scheduler]
    tasks = [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        if http:
            await _serve_http(services)  # uvicorn handles SIGINT/SIGTERM itself
        else:
            await _until_signal(stop, tasks)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await services.aclose()
        for result in results:
            if isinstance(result, IngestdError):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


async def _until_signal(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        waiter = asyncio.create_task(stop.wait())
        # a loop that ends by itself (a crash) ends the process too
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve_http(services: Services) -> None:
    import uvicorn

    from ingestd.api.app import create_app
    from ingestd.api.stream import Server

    s = services.settings
    app = create_app(services)
    config = uvicorn.Config(
        app,
        host=s.host,
        port=s.port,
        log_level=s.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
        # X-Forwarded-* only when the operator says a proxy sets them
        proxy_headers=s.trust_forwarded,
    )
    await Server(config, app).serve()


def _work(services: Services) -> list[Loop]:
    """A worker's loops: work orders, and ingestion orders for server paths."""
    return [services.worker().run, services.order_runner().run]


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        data_dir: DataDir = None,
        host: Host = None,
        port: Port = None,
        concurrency: Concurrency = None,
    ) -> None:
        """Run everything in one process: API, worker and scheduler (SQLite + local disk)."""
        s = settings(data_dir, host=host, port=port, worker_concurrency=concurrency)
        setup_logging(s.log_level)
        from ingestd.bootstrap import ensure_local_key

        services = build(s)
        path, issued = ensure_local_key(services)
        if issued is not None:
            console.print(f"[bold green]Created an API key for owner '{LOCAL_OWNER}'[/] in {path}")
        else:
            console.print(f"API key of owner '{LOCAL_OWNER}': {path}")
        console.print(f"ingestd {__version__} on http://{s.host}:{s.port}  (data in {s.data_dir})")
        run_roles(services, _work(services), http=True, scheduler=True)

    @app.command()
    def api(data_dir: DataDir = None, host: Host = None, port: Port = None) -> None:
        """Serve the HTTP API only (run workers and a scheduler beside it).

        With INGESTD_SCHEDULER=1 this replica also runs the scheduler loop."""
        s = settings(data_dir, host=host, port=port)
        setup_logging(s.log_level)
        services = build(s)
        console.print(f"ingestd {__version__} api on http://{s.host}:{s.port}")
        run_roles(services, [], http=True)

    @app.command()
    def worker(
        data_dir: DataDir = None,
        queues: Annotated[
            str | None,
            typer.Option(help="Comma-separated queues, e.g. 'encode' [env: INGESTD_QUEUES]"),
        ] = None,
        concurrency: Concurrency = None,
    ) -> None:
        """Claim and run work orders (ffmpeg and friends) until SIGTERM.

        A stopping worker hands its running orders back at once. With INGESTD_SCHEDULER=1
        it also runs the scheduler loop."""
        s = settings(data_dir, queues=queues, worker_concurrency=concurrency)
        setup_logging(s.log_level)
        services = build(s)
        console.print(
            f"ingestd {__version__} worker: queues {','.join(s.queue_list)}, "
            f"{s.worker_concurrency} at once"
        )
        run_roles(services, _work(services))

    @app.command()
    def scheduler(data_dir: DataDir = None) -> None:
        """Run the scheduler loop only (safe to run on several replicas)."""
        s = settings(data_dir)
        setup_logging(s.log_level)
        services = build(s)
        console.print(f"ingestd {__version__} scheduler, every {s.scheduler_interval_s} s")
        run_roles(services, [], scheduler=True)

    @app.command("amqp-ingest")
    def amqp_ingest(
        data_dir: DataDir = None,
        queue: Annotated[
            str | None, typer.Option(help="Queue to consume [env: INGESTD_AMQP_INGEST_QUEUE]")
        ] = None,
        owner: Annotated[
            str | None,
            typer.Option(help="Owner of the uploads [env: INGESTD_AMQP_INGEST_OWNER]"),
        ] = None,
    ) -> None:
        """Consume chunk messages from RabbitMQ into uploads (docs/amqp-ingest.md)."""
        s = settings(data_dir, amqp_ingest_queue=queue, amqp_ingest_owner=owner)
        setup_logging(s.log_level)
        if not s.broker_url:
            console.print("[red]error:[/] amqp-ingest needs INGESTD_BROKER_URL (amqp://...)")
            raise typer.Exit(2)
        services = build(s)
        from ingestd.cli.owners import owner_id
        from ingestd.uploads.amqp_ingest import AmqpChunkIngest

        ingest = AmqpChunkIngest(
            services.uploads,
            services.locker,
            owner_id(services, s.amqp_ingest_owner),
            s.broker_url,
            s.amqp_ingest_queue,
            dead_letter_queue=s.amqp_ingest_dead_letter_queue,
            prefetch=s.amqp_ingest_prefetch,
            max_deliveries=s.amqp_ingest_max_deliveries,
            profiles=set(services.profiles),
            logger=services.log.getChild("amqp_ingest"),
        )
        console.print(f"ingestd {__version__} amqp-ingest from {s.amqp_ingest_queue}")
        run_roles(services, [ingest.run])
