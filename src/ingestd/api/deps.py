"""Request dependencies: the services and the authenticated owner."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request

from ingestd.bootstrap import Services
from ingestd.errors import Unauthorized


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def owner(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key: Authorization: Bearer <key>")
    svc = services(request)
    return await anyio.to_thread.run_sync(svc.keys.authenticate, token.strip())


OwnerId = Annotated[str, Depends(owner)]
Svc = Annotated[Services, Depends(services)]
