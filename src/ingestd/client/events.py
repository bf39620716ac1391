"""Reading Server-Sent Events: a line parser, and a stream that reconnects where it left off.

The parser follows the WHATWG event-stream rules: ``data`` lines join with newlines, a blank
line dispatches, ``:`` starts a comment, ``id`` persists until changed, ``retry`` sets the
reconnection delay, and an event without data is not dispatched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from typing import Any

import httpx

from ingestd.client.errors import NETWORK_ERROR, ClientError
from ingestd.client.http import _error_from_response

#: The read timeout must outlast the server's keep-alive comments (every 15 s).
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
DEFAULT_RETRY_S = 1.0
MAX_RETRY_S = 30.0


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the last event id in effect when it was dispatched."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEParser:
    """Feed it lines without their line ending; it returns an event at each blank line.

    ``last_event_id`` changes only when an event is dispatched, so after a broken
    connection it names the last event received whole: the one to resume after.
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None
        self._id = last_event_id
        self._data: list[str] = []
        self._event = ""

    def interrupt(self) -> None:
        """The connection ended: forget the half-received event."""
        self._id, self._data, self._event = self.last_event_id, [], ""

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value or None  # an empty id forgets the last one
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None  # unknown fields are ignored

    def feed_all(self, lines: Iterable[str]) -> Iterator[ServerSentEvent]:
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        self.last_event_id = self._id
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self.last_event_id)


async def parse_sse(lines: AsyncIterable[str], parser: SSEParser) -> AsyncIterator[ServerSentEvent]:
    """The events in ``lines``; a last event without its blank line is dropped, as the rules say."""
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def stream_events(
    http: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: str | None = None,
    params: dict[str, str] | None = None,
    max_failures: int = 10,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncGenerator[ServerSentEvent, None]:
    """Follow the event stream at ``url``, reconnecting with ``Last-Event-ID`` whenever the
    connection drops or the server ends the stream; it only ends when the caller stops.

    Network failures and retryable answers (5xx, 408, 429) are tolerated up to
    ``max_failures`` in a row, then raised; any other error answer (404 for a server
    without the route, or an unknown asset) is raised at once as a ``ClientError``.
    Close it with ``contextlib.aclosing`` to drop the connection as soon as you stop.
    """
    parser = SSEParser(last_event_id)
    failures = 0
    while True:
        parser.interrupt()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if parser.last_event_id is not None:
            headers["Last-Event-ID"] = parser.last_event_id
        try:
            async with http.stream(
                "GET", url, headers=headers, params=params, timeout=STREAM_TIMEOUT
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise _error_from_response("GET", url, response)
                async for event in parse_sse(response.aiter_lines(), parser):
                    failures = 0
                    yield event
        except httpx.TransportError as exc:
            failures += 1
            if failures > max_failures:
                raise ClientError(
                    NETWORK_ERROR, f"the event stream {url} broke: {exc or type(exc).__name__}"
                ) from exc
        except ClientError as exc:
            failures += 1
            if not exc.retryable or failures > max_failures:
                raise
        else:
            failures += 1  # ended without the caller stopping: the server went away
            if failures > max_failures:
                raise ClientError(NETWORK_ERROR, f"the event stream {url} keeps ending")
        retry_s = parser.retry_ms / 1000 if parser.retry_ms is not None else DEFAULT_RETRY_S
        await sleep(min(retry_s, MAX_RETRY_S))
