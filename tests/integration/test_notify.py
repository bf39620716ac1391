"""Notifications end to end: real HTTP receivers, a real SMTP server, real databases."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from ingestd.api.app import create_app
from ingestd.api.subscriptions import router as subscriptions_router
from ingestd.bootstrap import Services
from ingestd.db.models import Asset, Delivery, Event, Rendition
from ingestd.db.types import new_id
from ingestd.jobs.engine import Backoff, emit
from ingestd.notify import (
    BODY_LIMIT,
    DeliveryFailed,
    EmailSender,
    Notifier,
    SmtpConfig,
    Subscriptions,
    WebhookSender,
    verify_signature,
)
from ingestd.testing.server import running_server
from ingestd.testing.smtp import running_smtp

pytestmark = pytest.mark.anyio


# -- a webhook receiver: http.server in a thread, answering from a script ---------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Receiver:
    url: str
    script: list[Reply]
    hits: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, headers: dict[str, str], body: bytes) -> Reply:
        with self.lock:
            self.hits.append((headers, body))
            return self.script.pop(0) if self.script else Reply()


@contextmanager
def receiver(*script: Reply) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    rec = Receiver(f"http://127.0.0.1:{server.server_port}/hook", list(script))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reply = rec.take({k.lower(): v for k, v in self.headers.items()}, body)
            time.sleep(reply.delay_s)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:  # the sender gave up waiting
                pass

        def log_message(self, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


# -- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def notifier(
    services: Services,
    *,
    base_url: str = "http://media.test",
    timeout_s: float = 5.0,
    max_attempts: int = 3,
    smtp: SmtpConfig | None = None,
    batch: int = 200,
) -> AsyncIterator[Notifier]:
    n = Notifier(
        services.db,
        services.signer,
        webhooks=WebhookSender(timeout_s=timeout_s, allow_private=True),  # loopback receivers
        email=EmailSender(smtp),
        base_url=base_url,
        max_attempts=max_attempts,
        backoff=Backoff(base_s=0.02, cap_s=0.05),
        batch=batch,
        rng=random.Random(7),
    )
    try:
        yield n
    finally:
        await n.aclose()


def ready_asset(services: Services, owner_id: str, title: str = "Sunrise") -> str:
    """An asset that just became ready: its events as the job engine writes them."""
    asset_id = new_id("as")
    with services.db.transaction() as s:
        s.add(Asset(id=asset_id, owner_id=owner_id, kind="video", title=title, status="ready"))
        s.flush()
        emit(s, owner_id, asset_id, "step.succeeded", step="package")
        emit(s, owner_id, asset_id, "asset.ready")
    return asset_id


def deliveries(services: Services, sub_id: str) -> list[Delivery]:
    with services.db.transaction() as s:
        return list(s.scalars(select(Delivery).where(Delivery.subscription_id == sub_id)))


async def settle(n: Notifier, services: Services, within_s: float = 15.0) -> None:
    """Run rounds until no delivery is pending."""
    deadline = time.monotonic() + within_s
    while True:
        await n.run_once()
        with services.db.transaction() as s:
            pending = s.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == "pending")
            )
        if not pending:
            return
        assert time.monotonic() < deadline, f"{pending} deliveries still pending"
        await asyncio.sleep(0.02)


# -- webhooks --------------------------------------------------------------------------------


async def test_asset_ready_is_posted_once_signed(services: Services) -> None:
    owner = services.keys.create("alice").owner_id
    with receiver() as rec:
        sub, secret = Subscriptions(services.db).create(
            owner, "webhook", rec.url, ["asset.ready", "asset.failed"]
        )
        assert secret is not None and secret.startswith("whsec_")
        asset_id = ready_asset(services, owner)
        async with notifier(services) as n:
            await settle(n, services)
            await settle(n, services)  # a second round sends nothing again
    assert len(rec.hits) == 1
    headers, body = rec.hits[0]
    (delivery,) = deliveries(services, sub.id)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)
    assert headers["ingestd-event"] == "asset.ready"
    assert headers["ingestd-delivery"] == delivery.id
    assert headers["content-type"] == "application/json"
    stamp = int(headers["ingestd-timestamp"])
    signature = headers["ingestd-signature"]
    assert signature.startswith(f"t={stamp},v1=")
    assert verify_signature(secret, signature, body, tolerance_s=300)
    assert not verify_signature("whsec_other", signature, body, tolerance_s=300)
    assert not verify_signature(secret, signature, body + b" ", tolerance_s=300)
    assert not verify_signature(secret, signature, body, tolerance_s=300, now=stamp + 301)
    payload = json.loads(body)
    assert payload["type"] == "asset.ready" and payload["asset_id"] == asset_id
    assert isinstance(payload["id"], int) and payload["created_at"].endswith("Z")
    assert payload["asset"] == {
        "id": asset_id,
        "status": "ready",
        "title": "Sunrise",
        "kind": "video",
    }


async def test_a_500_is_retried_then_delivered_and_both_attempts_recorded(
    services: Services,
) -> None:
    owner = services.keys.create("alice").owner_id
    with receiver(Reply(500, b"x" * 5000), Reply(200, b"thanks")) as rec:
        sub, _ = Subscriptions(services.db).create(owner, "webhook", rec.url, ["asset.*"])
        ready_asset(services, owner)
        async with notifier(services) as n:
            assert await n.run_once() == 1
            (first,) = deliveries(services, sub.id)
            assert (first.status, first.attempts, first.response_status) == ("pending", 1, 500)
            assert first.response_body == "x" * BODY_LIMIT  # only the first 2 KiB is kept
            await settle(n, services)
    (delivery,) = deliveries(services, sub.id)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 2, 200)
    assert delivery.response_body == "thanks" and delivery.delivered_at is not None
    assert delivery.error is not None
    assert re.fullmatch(r"attempt 1 at \S+Z: HTTP 500", delivery.error)
    assert len(rec.hits) == 2
    assert {h["ingestd-delivery"] for h, _ in rec.hits} == {delivery.id}


async def test_a_receiver_that_hangs_times_out_and_fails_after_the_last_attempt(
    services: Services,
) -> None:
    owner = services.keys.create("alice").owner_id
    with receiver(*[Reply(delay_s=3.0)] * 4) as rec:
        sub, _ = Subscriptions(services.db).create(owner, "webhook", rec.url, ["*"])
        ready_asset(services, owner)
        started = time.monotonic()
        async with notifier(services, timeout_s=0.3, max_attempts=2) as n:
            await settle(n, services)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5  # each attempt gave up after 0.3 s, not after the receiver's 3 s
    rows = deliveries(services, sub.id)
    assert len(rows) == 2  # step.succeeded and asset.ready
    for d in rows:
        assert (d.status, d.attempts, d.response_status) == ("failed", 2, None)
        assert d.error is not None
        lines = d.error.splitlines()
        assert len(lines) == 2 and all("no answer within 0.3 s" in line for line in lines)
    assert len(rec.hits) == 4


async def test_redirects_to_another_origin_are_not_followed(services: Services) -> None:
    owner = services.keys.create("alice").owner_id
    with receiver() as elsewhere:
        target = elsewhere.url.replace("127.0.0.1", "localhost")
        with receiver(Reply(307, headers=(("Location", target),))) as rec:
            sub, _ = Subscriptions(services.db).create(owner, "webhook", rec.url, ["asset.ready"])
            ready_asset(services, owner)
            async with notifier(services, max_attempts=1) as n:
                await settle(n, services)
    (d,) = deliveries(services, sub.id)
    assert (d.status, d.response_status) == ("failed", 307)
    assert d.error is not None and "redirect to another origin not followed" in d.error
    assert len(rec.hits) == 1 and not elsewhere.hits


# -- e-mail ------------------------------------------------------------------------------------


async def test_ready_email_carries_a_signed_link_that_fetches_the_rendition(
    services: Services,
) -> None:
    owner = services.keys.create("alice").owner_id
    asset_id = ready_asset(services, owner, title="Night sky")
    key = f"renditions/{asset_id}/stream/master.m3u8"
    playlist = b"#EXTM3U\n#EXT-X-VERSION:7\n"
    await services.store.put_bytes(key, playlist)
    with services.db.transaction() as s:
        s.add(
            Rendition(id=new_id("rn"), asset_id=asset_id, name="hls", kind="hls", storage_key=key)
        )
    sub, secret = Subscriptions(services.db).create(
        owner, "email", "ops@example.org", ["asset.ready"]
    )
    assert secret is None
    with running_smtp() as sink, running_server(services, worker=False) as base:
        sink.refuse = 1  # the first try gets a temporary failure
        smtp = SmtpConfig(sink.host, sink.port, sender="media@example.org", timeout_s=5)
        async with notifier(services, base_url=base, smtp=smtp) as n:
            await settle(n, services)
        (mail,) = sink.wait_for(1)
        assert mail.recipients == ["ops@example.org"]
        assert mail.message["Subject"] == "Ready: Night sky"
        assert mail.message["From"] == "media@example.org"
        text = mail.text()
        match = re.search(r"(http://\S+/o/\d+/\S+)", text)
        assert match, text
        link = match.group(1)
        assert link.startswith(f"{base}/o/") and link.endswith(key)
        assert "HLS master playlist" in text and asset_id in text
        assert link in (mail.html() or "")
        async with httpx.AsyncClient() as client:
            fetched = await client.get(link)
            tampered = await client.get(link.replace(asset_id, new_id("as")))
        assert fetched.status_code == 200 and fetched.content == playlist
        assert tampered.status_code == 404
        expires = int(link.split("/o/", 1)[1].split("/", 1)[0])
        ttl = services.signer.ttl_s
        assert time.time() + ttl <= expires <= time.time() + ttl + 3600
    (d,) = deliveries(services, sub.id)
    assert (d.status, d.attempts, d.response_status) == ("delivered", 2, 250)
    assert d.error is not None and "SMTP 451" in d.error


async def test_email_without_smtp_fails_with_a_clear_error(services: Services) -> None:
    owner = services.keys.create("alice").owner_id
    sub, _ = Subscriptions(services.db).create(owner, "email", "a@b.c", ["asset.ready"])
    ready_asset(services, owner)
    async with notifier(services, smtp=None, max_attempts=5) as n:
        await settle(n, services)
    (d,) = deliveries(services, sub.id)
    assert (d.status, d.attempts) == ("failed", 1)  # retrying cannot help
    assert d.error is not None and "e-mail is not configured" in d.error


# -- fan-out -----------------------------------------------------------------------------------


async def test_fan_outs_at_once_make_one_delivery_per_subscription_and_event(
    services: Services,
) -> None:
    alice = services.keys.create("alice").owner_id
    bob = services.keys.create("bob").owner_id
    subs = Subscriptions(services.db)
    hook, _ = subs.create(alice, "webhook", "http://127.0.0.1:9/hook", ["asset.ready"])
    mail, _ = subs.create(alice, "email", "a@b.c", ["*"])
    bobs, _ = subs.create(bob, "webhook", "http://127.0.0.1:9/bob", ["*"])
    for i in range(25):
        ready_asset(services, alice, title=f"a{i}")  # 2 events each
    ready_asset(services, bob)

    async with notifier(services, batch=7) as first, notifier(services, batch=7) as second:

        def drain(n: Notifier) -> int:
            made = 0
            while True:
                made += n.fan_out()
                with services.db.transaction() as s:
                    left = s.scalar(
                        select(func.count()).select_from(Event).where(Event.published_at.is_(None))
                    )
                if not left:
                    return made

        made = await asyncio.gather(*(asyncio.to_thread(drain, n) for n in (first, second)))
        assert sum(made) == 25 + 50 + 2
        # events offered again (a crash after insert, before marking): no duplicates
        with services.db.transaction() as s:
            s.execute(update(Event).values(published_at=None))
        await asyncio.gather(*(asyncio.to_thread(drain, n) for n in (first, second)))

    counts = {sub.id: len(deliveries(services, sub.id)) for sub in (hook, mail, bobs)}
    assert counts == {hook.id: 25, mail.id: 50, bobs.id: 2}
    with services.db.transaction() as s:
        pairs = s.execute(select(Delivery.subscription_id, Delivery.event_id)).all()
    assert len(pairs) == len(set(pairs)) == 77


# -- the API -----------------------------------------------------------------------------------


@asynccontextmanager
async def api_clients(services: Services) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    app = create_app(services)
    if not any(getattr(r, "path", "") == "/v1/subscriptions" for r in app.routes):
        app.include_router(subscriptions_router)
    transport = httpx.ASGITransport(app=app)
    keys = [services.keys.create(name).key for name in ("alice", "mallory")]
    clients = [
        httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {k}"}
        )
        for k in keys
    ]
    try:
        yield tuple(clients)
    finally:
        for c in clients:
            await c.aclose()


def assert_error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    return str(error["message"])


async def test_api_subscriptions_are_validated_and_scoped_to_their_owner(
    services: Services,
) -> None:
    async with api_clients(services) as (alice, mallory):
        created = await alice.post(
            "/v1/subscriptions",
            json={
                "kind": "webhook",
                "url": "https://hooks.example.org/in",
                "events": ["asset.ready"],
            },
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        secret = hook["secret"]
        assert secret.startswith("whsec_") and len(secret) > 40
        mail = (
            await alice.post(
                "/v1/subscriptions",
                json={
                    "kind": "email",
                    "address": "a@b.c",
                    "events": ["asset.ready", "asset.failed"],
                },
            )
        ).json()
        assert mail["address"] == "a@b.c" and mail["secret"] is None

        listed = (await alice.get("/v1/subscriptions")).json()["items"]
        assert [s["id"] for s in listed] == [hook["id"], mail["id"]]
        assert listed[0]["secret"] != secret and secret not in json.dumps(listed)
        assert listed[0]["url"] == "https://hooks.example.org/in"

        assert (await mallory.get("/v1/subscriptions")).json()["items"] == []
        assert_error(await mallory.delete(f"/v1/subscriptions/{hook['id']}"), 404, "not_found")
        assert_error(
            await mallory.get(f"/v1/subscriptions/{hook['id']}/deliveries"), 404, "not_found"
        )

        for bad in (
            {"kind": "webhook", "url": "ftp://example.org/x", "events": ["asset.ready"]},
            {"kind": "webhook", "url": "javascript:alert(1)", "events": ["asset.ready"]},
            {"kind": "webhook", "url": "http://user:pw@example.org/", "events": ["asset.ready"]},
            {"kind": "webhook", "url": "https://example.org/", "events": ["asset.exploded"]},
            {"kind": "webhook", "url": "https://example.org/", "events": []},
            {"kind": "webhook", "address": "a@b.c", "events": ["asset.ready"]},
            {"kind": "email", "address": "not an address", "events": ["asset.ready"]},
            {"kind": "email", "address": "a@b.c\r\nBcc: x@y.z", "events": ["asset.ready"]},
            {"kind": "sms", "address": "+1555", "events": ["asset.ready"]},
        ):
            assert_error(await alice.post("/v1/subscriptions", json=bad), 400, "invalid_request")

        deleted = await alice.delete(f"/v1/subscriptions/{mail['id']}")
        assert deleted.status_code == 204
        assert_error(await alice.delete(f"/v1/subscriptions/{mail['id']}"), 404, "not_found")


async def test_api_lists_deliveries_with_their_attempts(services: Services) -> None:
    async with api_clients(services) as (alice, _):
        with receiver(Reply(503, b"busy"), Reply(202, b"queued")) as rec:
            hook = (
                await alice.post(
                    "/v1/subscriptions",
                    json={"kind": "webhook", "url": rec.url, "events": ["asset.ready"]},
                )
            ).json()
            owner = services.keys.authenticate(alice.headers["Authorization"].split(" ", 1)[1])
            ready_asset(services, owner)
            async with notifier(services) as n:
                await settle(n, services)
        items = (await alice.get(f"/v1/subscriptions/{hook['id']}/deliveries")).json()["items"]
    assert len(items) == 1
    (d,) = items
    assert d["event_type"] == "asset.ready" and d["status"] == "delivered"
    assert (d["attempts"], d["response_status"], d["response_body"]) == (2, 202, "queued")
    assert d["error"] is None and len(d["failures"]) == 1 and "HTTP 503" in d["failures"][0]
    assert d["delivered_at"] and d["created_at"] and d["next_attempt_at"] is None
    assert verify_signature(hook["secret"], rec.hits[-1][0]["ingestd-signature"], rec.hits[-1][1])


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_adds_lists_and_removes_subscriptions(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from ingestd.auth.keys import KeyService
    from ingestd.cli import subscriptions as cli
    from ingestd.db.engine import Database
    from ingestd.db.migrate import upgrade
    from ingestd.settings import Settings

    data = tmp_path / "data"
    url = Settings(data_dir=data).resolved_database_url
    upgrade(url)
    db = Database.from_url(url)
    KeyService(db).create("local")
    db.dispose()
    app = typer.Typer()
    cli.register(app)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "--data-dir", str(data)])
        assert result.exit_code == 0, result.output
        return result.output

    run("subscriptions", "add", "--url", "https://hooks.example.org/in", "-e", "asset.ready")
    added = json.loads(run("subscriptions", "add", "--email", "a@b.c", "-e", "*", "--json"))
    listed = json.loads(run("subscriptions", "list", "--json"))
    assert [s["kind"] for s in listed] == ["webhook", "email"]
    assert listed[0]["secret"].startswith("whsec_") and "…" in listed[0]["secret"]
    assert json.loads(run("deliveries", added["id"], "--json")) == []
    run("subscriptions", "remove", added["id"])
    gone = runner.invoke(app, ["deliveries", added["id"], "--data-dir", str(data)])
    assert gone.exit_code == 1 and "not found" in gone.output
    bad = runner.invoke(
        app, ["subscriptions", "add", "--email", "x", "-e", "*", "--data-dir", str(data)]
    )
    assert bad.exit_code == 1 and "not an e-mail address" in bad.output


async def test_webhooks_to_internal_addresses_are_refused_by_default() -> None:
    """An owner's URL must not make the server call its own network (SSRF): loopback,
    private and link-local addresses are refused unless the operator allows them."""
    sender = WebhookSender(timeout_s=2.0)
    try:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9/hook",
        ):
            with pytest.raises(DeliveryFailed) as caught:
                await sender.send(url, "whsec_x", b"{}", event_type="asset.ready", delivery_id="d")
            assert caught.value.permanent
            assert "not a public address" in caught.value.message, url
    finally:
        await sender.aclose()
