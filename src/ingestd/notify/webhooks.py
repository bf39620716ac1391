"""Webhooks: signed JSON bodies POSTed to an owner's URL.

Every request carries ``Ingestd-Signature: t=<unix seconds>,v1=<hex>`` where the hex is
HMAC-SHA256, keyed with the subscription's secret (the whole ``whsec_...`` string, UTF-8),
of ``f"{t}.{body}"``: the timestamp, a dot, and the exact bytes of the body.

A receiver verifies it so (what :func:`verify_signature` does):

1. split the header on ``,`` into ``t=`` and one or more ``v1=`` entries;
2. compute HMAC-SHA256(secret, ``t`` + ``.`` + the raw body, before any JSON parsing);
3. compare with each ``v1`` in constant time; one must match;
4. reject the request when ``t`` is more than a few minutes from its own clock (300 s is a
   good tolerance): a captured request cannot be replayed later. A retry is signed anew,
   with the time of that attempt.

``Ingestd-Delivery`` is the same on every attempt of a delivery: receivers deduplicate on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from ingestd import __version__
from ingestd.errors import IngestdError

#: How much of a response body is read and kept.
BODY_LIMIT = 2048
#: Redirects to the same scheme, host and port followed at most (307/308 only).
MAX_REDIRECTS = 3
SCHEMES = ("http", "https")


class DeliveryFailed(IngestdError):
    """The notification could not be delivered."""

    code = "delivery_failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        permanent: bool = False,
        status: int | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent  # retrying cannot help (e-mail not configured...)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Response:
    """What a receiver answered (2xx), for the delivery record."""

    status: int
    body: str


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Ingestd-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def _mac(secret: str, timestamp: int | str, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    header: str,
    body: bytes | str,
    tolerance_s: float = 300.0,
    *,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (``Ingestd-Signature``) signs ``body`` with ``secret`` and its
    timestamp is within ``tolerance_s`` of ``now``. ``body`` is the raw request body."""
    raw = body.encode() if isinstance(body, str) else body
    timestamp: str | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not timestamp.isdigit() or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, raw)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; else raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("a webhook URL must use http or https")
    if not parts.hostname:
        raise ValueError("a webhook URL needs a host")
    if parts.username or parts.password:
        raise ValueError("a webhook URL must not carry credentials")
    return url


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.hostname, parts.port


class WebhookSender:
    """POSTs signed bodies; one client, no cookies, no redirects to other origins."""

    def __init__(
        self,
        *,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: bool = False,
    ) -> None:
        """``allow_private``: deliver to hosts that resolve to loopback, private, link-local
        or other non-public addresses. Off by default: an owner's webhook URL must not make
        the server call its own network (the operator may allow it for internal hooks)."""
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            transport=transport,
            trust_env=False,  # a proxy from the environment is not the owner's choice
            headers={"User-Agent": f"ingestd/{__version__} (webhooks)"},
        )

    async def send(
        self,
        url: str,
        secret: str,
        body: bytes,
        *,
        event_type: str,
        delivery_id: str,
        now: float | None = None,
    ) -> Response:
        """One attempt; raises :class:`DeliveryFailed` (with the status and body excerpt
        when the receiver answered) unless it answers 2xx within ``timeout_s`` in all."""
        check = _checked(url)
        timestamp = int(time.time() if now is None else now)
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",  # the excerpt is read raw, never decompressed
            "Ingestd-Event": event_type,
            "Ingestd-Delivery": delivery_id,
            "Ingestd-Timestamp": str(timestamp),
            "Ingestd-Signature": sign(secret, body, timestamp),
        }
        try:
            async with asyncio.timeout(self.timeout_s):  # connect + send + read, in all
                return await self._post(check, headers, body)
        except TimeoutError as exc:
            raise DeliveryFailed(f"no answer within {self.timeout_s:g} s") from exc
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"timed out after {self.timeout_s:g} s: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"connection failed: {exc!r}") from exc

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        for _ in range(MAX_REDIRECTS + 1):
            if not self.allow_private:
                await _public_only(url)
            async with self._client.stream("POST", url, content=body, headers=headers) as resp:
                excerpt = await _excerpt(resp)
                if resp.status_code in (307, 308) and "location" in resp.headers:
                    target = urljoin(url, resp.headers["location"])
                    if _origin(target) != _origin(url):
                        raise DeliveryFailed(
                            f"HTTP {resp.status_code}: redirect to another origin not followed"
                            f" ({target})",
                            status=resp.status_code,
                            body=excerpt,
                        )
                    url = target
                    continue
                if 200 <= resp.status_code < 300:
                    return Response(resp.status_code, excerpt)
                raise DeliveryFailed(
                    f"HTTP {resp.status_code}", status=resp.status_code, body=excerpt
                )
        raise DeliveryFailed(f"more than {MAX_REDIRECTS} redirects")

    async def aclose(self) -> None:
        await self._client.aclose()


async def _public_only(url: str) -> None:
    """Refuse a URL whose host resolves to any address that is not public."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port)
    except OSError as exc:
        raise DeliveryFailed(f"cannot resolve {host}: {exc}") from exc
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not address.is_global:
            raise DeliveryFailed(
                f"{host} resolves to {address}, which is not a public address; webhooks to "
                "internal hosts need INGESTD_WEBHOOK_ALLOW_PRIVATE=1",
                permanent=True,
            )


def _checked(url: str) -> str:
    try:
        return check_url(url)
    except ValueError as exc:
        raise DeliveryFailed(str(exc), permanent=True) from exc


async def _excerpt(resp: httpx.Response) -> str:
    """The first :data:`BODY_LIMIT` bytes of the body, decoded leniently; the rest unread."""
    data = b""
    async for chunk in resp.aiter_raw():
        data += chunk
        if len(data) >= BODY_LIMIT:
            break
    return data[:BODY_LIMIT].decode(resp.encoding or "utf-8", errors="replace")
