"""Live progress of an asset as Server-Sent Events: ``GET /v1/assets/{id}/events/stream``.

A stream sends, in this order within each round:

- ``event``: each stored event row, ``id:`` its id, so that a reconnect with
  ``Last-Event-ID`` (or ``?after=``) resumes after it;
- ``progress``: ``id``, ``status``, ``error`` and ``progress`` as in ``GET /v1/assets/{id}``,
  whenever they changed since the last one sent;
- ``done``: the whole asset, as ``GET /v1/assets/{id}`` answers it, once it is ready, failed
  or abandoned; the stream ends after it.

A ``: keep-alive`` comment goes out when nothing else was sent for a while, so that proxies
keep the connection open. Each round reads the database on a worker thread in short
transactions of its own; nothing is held across the pause between rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import uvicorn
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import State

from ingestd.api.assets import asset_json, live_progress
from ingestd.api.deps import OwnerId, Svc, base_url
from ingestd.api.schemas import ERRORS
from ingestd.db.models import Event
from ingestd.domain.states import AssetStatus
from ingestd.errors import NotFound
from ingestd.jobs.progress import LiveProgress
from ingestd.queries import AssetQueries, AssetView

router = APIRouter(tags=["assets"], responses=ERRORS)

#: Asset statuses after which a stream sends ``done`` and ends.
FINAL_STATUSES = frozenset({AssetStatus.READY, AssetStatus.FAILED, AssetStatus.ABANDONED})
#: How long a client should wait before reconnecting, sent once as ``retry:``.
RETRY_MS = 3000

HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class StreamTiming:
    """``poll_s`` between database reads; a keep-alive comment after ``keepalive_s`` of quiet."""

    poll_s: float = 0.5
    keepalive_s: float = 15.0


class StreamCloser:
    """Ends every open stream of an app at its next round: the server is shutting down.

    Uvicorn waits for open responses before it finishes a graceful shutdown, and an event
    stream does not end by itself, so whoever stops the server calls :func:`close_streams`
    first.
    """

    def __init__(self) -> None:
        self._closing = asyncio.Event()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        self._closing.set()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the streams are being closed meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)


def stream_closer(app: FastAPI) -> StreamCloser:
    state: State = app.state
    closer: StreamCloser | None = getattr(state, "stream_closer", None)
    if closer is None:
        closer = state.stream_closer = StreamCloser()
    return closer


def close_streams(app: FastAPI) -> None:
    """Ask every open event stream of ``app`` to end now; call as the server shuts down."""
    stream_closer(app).close()


class Server(uvicorn.Server):
    """uvicorn that ends the open event streams when it shuts down: a stream never ends by
    itself, and uvicorn waits for open responses before it stops."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        close_streams(self.app)
        await super().shutdown(sockets)


def stream_timing(app: FastAPI) -> StreamTiming:
    """``app.state.stream_timing`` if the composition root set one, else the defaults."""
    timing: StreamTiming | None = getattr(app.state, "stream_timing", None)
    return timing or StreamTiming()


def sse_message(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One Server-Sent Events message; a multi-line ``data`` becomes several ``data:`` lines."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def sse_retry(milliseconds: int) -> bytes:
    """Tells the client how long to wait before reconnecting; dispatches no event."""
    return f"retry: {milliseconds}\n\n".encode()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def event_json(event: Event) -> dict[str, Any]:
    created = event.created_at.isoformat().replace("+00:00", "Z") if event.created_at else None
    return {"id": event.id, "type": event.type, "created_at": created, "data": event.data}


def progress_json(asset: dict[str, Any]) -> dict[str, Any]:
    """The part of an asset's JSON that a ``progress`` message carries."""
    return {key: asset[key] for key in ("id", "status", "error", "progress")}


async def asset_event_stream(
    queries: AssetQueries,
    owner_id: str,
    asset_id: str,
    *,
    after: int,
    render: Callable[[AssetView], dict[str, Any]],
    disconnected: Callable[[], Awaitable[bool]],
    closer: StreamCloser,
    timing: StreamTiming = StreamTiming(),
    live: Callable[[], Awaitable[Mapping[str, LiveProgress]]] | None = None,
) -> AsyncIterator[bytes]:
    """The messages of one stream, until the asset is final, the client leaves or the server
    closes the streams. ``render`` turns a view into the asset's JSON; ``live`` reads the
    progress board (shared by every replica) for running steps' figures."""

    def read(
        last_id: int, figures: Mapping[str, LiveProgress] | None
    ) -> tuple[AssetView, list[Event]]:
        # The view first: events written with a final status are then in the second read,
        # so ``done`` never overtakes them.
        view = queries.get(owner_id, asset_id, figures)
        return view, queries.events(owner_id, asset_id, after=last_id)

    yield sse_retry(RETRY_MS)
    last_id = after
    last_progress: dict[str, Any] | None = None
    last_sent = time.monotonic()
    while not closer.closing and not await disconnected():
        try:
            figures = await live() if live is not None else None
            view, events = await anyio.to_thread.run_sync(read, last_id, figures)
        except NotFound:  # deleted meanwhile
            return
        sent = False
        for event in events:
            last_id = event.id
            yield sse_message(_json(event_json(event)), event="event", id=str(event.id))
            sent = True
        asset = render(view)
        progress = progress_json(asset)
        if progress != last_progress:
            last_progress = progress
            yield sse_message(_json(progress), event="progress")
            sent = True
        if view.asset.status in FINAL_STATUSES and not events:
            yield sse_message(_json(asset), event="done")
            return
        now = time.monotonic()
        if sent:
            last_sent = now
        elif now - last_sent >= timing.keepalive_s:
            yield sse_comment("keep-alive")
            last_sent = now
        if not events:  # a full page of events may be followed by more: read again at once
            await closer.pause(timing.poll_s)


def _resume_after(after: int, last_event_id: str | None) -> int:
    try:
        resumed = int(last_event_id or 0)
    except ValueError:  # not an id this server sent: start from ``after``
        resumed = 0
    return max(after, resumed)


@router.get(
    "/v1/assets/{asset_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream"}},
)
async def stream_asset_events(
    asset_id: str,
    request: Request,
    owner: OwnerId,
    svc: Svc,
    after: int = Query(0, ge=0, description="Send only stored events with a larger id."),
    last_event_id: str | None = Header(None, description="Set by reconnecting clients."),
) -> StreamingResponse:
    """Follow an asset live: its progress, its stored events, then ``done``."""
    queries = AssetQueries(svc.db)
    # Checked before the response starts, so that an unknown asset is a plain 404.
    await anyio.to_thread.run_sync(queries.get, owner, asset_id)
    base = base_url(request, svc)
    app: FastAPI = request.app
    messages = asset_event_stream(
        queries,
        owner,
        asset_id,
        after=_resume_after(after, last_event_id),
        render=lambda view: asset_json(view, svc.signer, base),
        disconnected=request.is_disconnected,
        closer=stream_closer(app),
        timing=stream_timing(app),
        live=lambda: live_progress(svc, asset_id),
    )
    return StreamingResponse(messages, media_type="text/event-stream", headers=HEADERS)
