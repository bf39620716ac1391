"""Run the full embedded service (API + worker + scheduler) on a real uvicorn in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from ingestd.api.app import create_app
from ingestd.api.stream import Server
from ingestd.bootstrap import Services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_server(services: Services, *, worker: bool = True) -> Iterator[str]:
    """Serve on 127.0.0.1 until the block exits; yields the base URL."""
    port = free_port()
    app = create_app(services)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=services.settings.trust_forwarded,
    )
    server = Server(config, app)
    errors: list[BaseException] = []

    async def main() -> None:
        await services.start()
        stop = asyncio.Event()
        tasks = []
        if worker:
            tasks.append(asyncio.create_task(services.worker().run(stop)))
            tasks.append(asyncio.create_task(services.run_scheduler(stop, interval_s=1.0)))
        try:
            await server.serve()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await services.aclose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="ingestd-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"test server did not start: {errors}")
        if time.monotonic() > deadline:
            raise TimeoutError("test server did not start in 15 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        if errors:
            raise errors[0]
