"""A small in-memory catalog that speaks the catalog HTTP API of
:mod:`ingestd.publish.catalog`, on a real uvicorn in a thread, for tests.

    with running_catalog() as catalog:
        config = {"url": catalog.url, "api_key": catalog.api_key}
        catalog.fail_next(2)        # the next 2 requests answer 500
        catalog.delay_s = 1.5       # every request waits first (a slow catalog)
        catalog.items               # what it holds: {external_id: fields}
        catalog.requests            # [(method, path)] it was sent, in order
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class CatalogState:
    api_key: str = "catalog-test-key"
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0
    failures_left: int = 0
    failure_status: int = 500
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` (-1: every request)."""
        with self.lock:
            self.failures_left, self.failure_status = count, status

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]


def create_catalog_app(state: CatalogState) -> Starlette:
    async def guard(request: Request) -> Response | None:
        with state.lock:
            state.requests.append((request.method, request.url.path))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": "invalid API key"}, status_code=401)
        with state.lock:
            if state.failures_left:
                if state.failures_left > 0:
                    state.failures_left -= 1
                return JSONResponse(
                    {"error": "catalog database is down"}, status_code=state.failure_status
                )
        return None

    async def item(request: Request) -> Response:
        refused = await guard(request)
        if refused is not None:
            return refused
        external_id = request.path_params["external_id"]
        if request.method == "DELETE":
            with state.lock:
                gone = state.items.pop(external_id, None)
            return Response(status_code=204 if gone is not None else 404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "id" in body:
            return JSONResponse({"error": "a JSON object of fields, without id"}, 422)
        with state.lock:
            created = external_id not in state.items
            state.items[external_id] = body
        return JSONResponse({"id": external_id, **body}, status_code=201 if created else 200)

    async def listing(request: Request) -> Response:
        refused = await guard(request)
        if refused is not None:
            return refused
        try:
            page = int(request.query_params.get("page", "1"))
            size = int(request.query_params.get("page_size", "100"))
        except ValueError:
            return JSONResponse({"error": "page and page_size are numbers"}, 400)
        if page < 1 or size < 1:
            return JSONResponse({"error": "page and page_size start at 1"}, 400)
        with state.lock:
            ids = sorted(state.items)
            chunk = [{"id": i, **state.items[i]} for i in ids[(page - 1) * size : page * size]]
        following = page + 1 if page * size < len(ids) else None
        return JSONResponse({"items": chunk, "next_page": following})

    return Starlette(
        routes=[
            Route("/items", listing, methods=["GET"]),
            Route("/items/{external_id:path}", item, methods=["PUT", "DELETE"]),
        ]
    )


@dataclass
class CatalogServer:
    url: str
    state: CatalogState

    @property
    def api_key(self) -> str:
        return self.state.api_key

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            return {k: dict(v) for k, v in self.state.items.items()}

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def delay_s(self) -> float:
        return self.state.delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self.state.delay_s = value

    def fail_next(self, count: int, status: int = 500) -> None:
        self.state.fail_next(count, status)

    def writes(self) -> list[tuple[str, str]]:
        with self.state.lock:
            return self.state.writes()


@contextmanager
def running_catalog(state: CatalogState | None = None) -> Iterator[CatalogServer]:
    """Serve a catalog on 127.0.0.1 until the block exits."""
    state = state or CatalogState()
    port = free_port()
    config = uvicorn.Config(
        create_catalog_app(state),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, name="catalog-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"catalog test server did not start: {errors}")
        if time.monotonic() > deadline:
            raise TimeoutError("catalog test server did not start in 10 s")
        time.sleep(0.01)
    try:
        yield CatalogServer(f"http://127.0.0.1:{port}", state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if errors:
            raise errors[0]
