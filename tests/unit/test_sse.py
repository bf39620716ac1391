"""The Server-Sent Events parser and the reconnecting reader, against an in-memory server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import httpx
import pytest

from ingestd.api.stream import sse_comment, sse_message, sse_retry
from ingestd.client.errors import ClientError
from ingestd.client.events import ServerSentEvent, SSEParser, parse_sse, stream_events


def parse(text: str) -> list[ServerSentEvent]:
    return list(SSEParser().feed_all(text.splitlines()))


def test_fields_make_events_at_blank_lines() -> None:
    events = parse('event: progress\ndata: {"a": 1}\n\ndata: plain\n\n')
    assert events == [
        ServerSentEvent("progress", '{"a": 1}'),
        ServerSentEvent("message", "plain"),
    ]
    assert events[0].json() == {"a": 1}


def test_data_lines_join_with_newlines_and_one_leading_space_goes() -> None:
    (event,) = parse("data:first\ndata:  second\ndata\ndata: \n\n")
    assert event.data == "first\n second\n\n"


def test_comments_unknown_fields_and_events_without_data_dispatch_nothing() -> None:
    assert parse(": keep-alive\n\nevent: lonely\n\nfoo: bar\n\n") == []


def test_the_id_persists_until_changed_and_an_empty_id_forgets_it() -> None:
    parser = SSEParser()
    events = list(
        parser.feed_all(
            "id: 7\nevent: event\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 9\n\n".splitlines()
        )
    )
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", None)]
    assert parser.last_event_id == "9"  # set even though no event followed


def test_retry_takes_only_digits() -> None:
    parser = SSEParser()
    list(parser.feed_all(["retry: 2500", "", "retry: soon", ""]))
    assert parser.retry_ms == 2500


def test_what_the_server_writes_reads_back() -> None:
    body = sse_retry(3000) + sse_comment("keep-alive")
    body += sse_message(json.dumps({"x": "two\nlines"}, indent=1), event="event", id="12")
    body += sse_message("{}", event="done")
    parser = SSEParser()
    events = list(parser.feed_all(body.decode().splitlines()))
    assert [(e.event, e.id) for e in events] == [("event", "12"), ("done", "12")]
    assert events[0].json() == {"x": "two\nlines"}
    assert parser.retry_ms == 3000


@pytest.mark.anyio
async def test_an_unfinished_last_event_is_dropped() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in ["data: whole", "", "data: cut off"]:
            yield line

    assert [e.data async for e in parse_sse(lines(), SSEParser())] == ["whole"]


# The reconnecting reader.


class FlakyServer:
    """Answers each request with the next scripted reply; records the Last-Event-ID sent."""

    def __init__(self, replies: list[Callable[[httpx.Request], httpx.Response]]) -> None:
        self.replies = replies
        self.last_event_ids: list[str | None] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.last_event_ids.append(request.headers.get("last-event-id"))
        return self.replies.pop(0)(request)


def events_body(text: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, content=text.encode()
    )


def error(status: int, code: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json={"error": {"code": code, "message": code}})


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def follow(
    server: FlakyServer, *, last_event_id: str | None = None, max_failures: int = 10
) -> list[ServerSentEvent]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    seen = []
    transport = httpx.MockTransport(server.handle)
    async with httpx.AsyncClient(base_url="http://test", transport=transport) as http:
        stream = stream_events(
            http, "/stream", last_event_id=last_event_id, max_failures=max_failures, sleep=sleep
        )
        async with aclosing(stream) as events:
            async for event in events:
                seen.append(event)
                if event.event == "done":
                    break
    return seen


@pytest.mark.anyio
async def test_a_dropped_stream_resumes_after_the_last_event_id() -> None:
    server = FlakyServer(
        [
            events_body("retry: 10\n\nid: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: cut"),
            unreachable,
            error(503, "unavailable"),
            events_body("id: 3\ndata: c\n\nevent: done\ndata: {}\n\n"),
        ]
    )
    seen = await follow(server)
    assert [e.data for e in seen] == ["a", "b", "c", "{}"]
    assert server.last_event_ids == [None, "2", "2", "2"]


@pytest.mark.anyio
async def test_a_given_last_event_id_is_sent_on_the_first_request() -> None:
    server = FlakyServer([events_body("event: done\ndata: {}\n\n")])
    assert [e.event for e in await follow(server, last_event_id="41")] == ["done"]
    assert server.last_event_ids == ["41"]


@pytest.mark.anyio
async def test_a_404_is_raised_at_once() -> None:
    server = FlakyServer([error(404, "not_found")])
    with pytest.raises(ClientError) as caught:
        await follow(server)
    assert caught.value.status == 404 and caught.value.code == "not_found"


@pytest.mark.anyio
async def test_it_gives_up_after_too_many_failures_in_a_row() -> None:
    server = FlakyServer([unreachable] * 4)
    with pytest.raises(ClientError) as caught:
        await follow(server, max_failures=3)
    assert caught.value.code == "network_error" and server.replies == []
