"""Notification subscriptions (``/v1/subscriptions``): webhooks and e-mail, per owner."""

from __future__ import annotations

from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from ingestd.api.deps import OwnerId, Svc
from ingestd.api.schemas import ERRORS
from ingestd.errors import InvalidRequest
from ingestd.notify.service import Subscriptions, delivery_view, subscription_view

router = APIRouter(prefix="/v1/subscriptions", tags=["notifications"], responses=ERRORS)


class CreateSubscription(BaseModel):
    kind: Literal["webhook", "email"]
    url: str | None = Field(default=None, max_length=1000, description="webhook: http(s) URL")
    address: str | None = Field(default=None, max_length=254, description="email: the address")
    events: list[str] = Field(
        min_length=1,
        max_length=50,
        description='event types, e.g. "asset.ready"; "asset.*" or "*" for more',
    )


def _subscriptions(svc: Svc) -> Subscriptions:
    return Subscriptions(svc.db)


@router.post("", status_code=201)
async def create_subscription(body: CreateSubscription, owner: OwnerId, svc: Svc) -> dict[str, Any]:
    """Subscribe a webhook URL or an e-mail address to event types. A webhook's signing
    secret is in this answer only; later answers mask it."""
    address = body.url if body.kind == "webhook" else body.address
    if not address:
        field = "url" if body.kind == "webhook" else "address"
        raise InvalidRequest(f"a {body.kind} subscription needs {field!r}")
    sub, secret = await anyio.to_thread.run_sync(
        _subscriptions(svc).create, owner, body.kind, address, body.events
    )
    return subscription_view(sub, secret=secret)


@router.get("")
async def list_subscriptions(owner: OwnerId, svc: Svc) -> dict[str, Any]:
    subs = await anyio.to_thread.run_sync(_subscriptions(svc).owned, owner)
    return {"items": [subscription_view(s) for s in subs]}


@router.delete("/{subscription_id}", status_code=204)
async def delete_subscription(subscription_id: str, owner: OwnerId, svc: Svc) -> Response:
    await anyio.to_thread.run_sync(_subscriptions(svc).remove, owner, subscription_id)
    return Response(status_code=204)


@router.get("/{subscription_id}/deliveries")
async def list_deliveries(
    subscription_id: str, owner: OwnerId, svc: Svc, limit: int = Query(50, ge=1, le=500)
) -> dict[str, Any]:
    """The newest deliveries: status, attempts, the last response (status and the first
    2 KiB of its body), the failed attempts, and times."""
    rows = await anyio.to_thread.run_sync(
        lambda: _subscriptions(svc).deliveries(owner, subscription_id, limit=limit)
    )
    return {"items": [delivery_view(d, t) for d, t in rows]}
