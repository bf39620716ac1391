"""Request dependencies: the services and the authenticated owner."""

from __future__ import annotations

import re
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request

from ingestd.bootstrap import Services
from ingestd.errors import Unauthorized


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def owner(request: Request) -> str:
    svc = services(request)
    return await anyio.to_thread.run_sync(svc.keys.authenticate, bearer(request))


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key: Authorization: Bearer <key>")
    return token.strip()


_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def _first(value: str | None) -> str | None:
    return value.split(",", 1)[0].strip() if value else None


def base_url(request: Request, svc: Services) -> str:
    """The URL clients reach this server at: the configured public URL, else the request's.

    With ``INGESTD_TRUST_FORWARDED`` the proxy's ``X-Forwarded-Proto``/``-Host`` (or
    ``Forwarded: proto=...;host=...``) are honoured; malformed values are ignored.
    """
    if svc.public_url:
        return svc.public_url.rstrip("/")
    scheme, host = request.url.scheme, request.headers.get("host") or request.url.netloc
    if svc.settings.trust_forwarded:
        forwarded = dict(
            (k.strip().lower(), v.strip().strip('"'))
            for k, _, v in (
                item.partition("=")
                for item in (_first(request.headers.get("forwarded")) or "").split(";")
            )
            if k.strip()
        )
        proto = _first(request.headers.get("x-forwarded-proto")) or forwarded.get("proto")
        fhost = _first(request.headers.get("x-forwarded-host")) or forwarded.get("host")
        if proto and proto.lower() in ("http", "https"):
            scheme = proto.lower()
        if fhost and _HOST.match(fhost):
            host = fhost
    return f"{scheme}://{host}"


OwnerId = Annotated[str, Depends(owner)]
Svc = Annotated[Services, Depends(services)]
