"""Ingestion of files already on the server (``/v1/ingest``, ``/v1/ingest-orders``).

Only paths inside the configured ingest roots are taken; with none configured, path
ingestion is off.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from ingestd.api.deps import OwnerId, Svc
from ingestd.api.schemas import ERRORS
from ingestd.uploads.orders import OrderService

router = APIRouter(tags=["ingest"], responses=ERRORS)


def order_service(svc: Svc) -> OrderService:
    return svc.orders


Orders = Annotated[OrderService, Depends(order_service)]


class IngestRequest(BaseModel):
    path: str = Field(max_length=4096, description="absolute path inside an ingest root")
    force: bool = Field(default=False, description="re-run every step, changed or not")
    title: str | None = Field(default=None, max_length=500)


@router.post("/v1/ingest", status_code=202)
async def request_ingest(body: IngestRequest, owner: OwnerId, orders: Orders) -> dict[str, Any]:
    """Queue the file's work order, or update the one the path already has."""
    order = await orders.request(owner, body.path, force=body.force, title=body.title)
    return order.to_json()


@router.get("/v1/ingest-orders")
async def list_orders(
    owner: OwnerId,
    orders: Orders,
    status: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> dict[str, Any]:
    return {"items": [o.to_json() for o in await orders.query(owner, status, limit=limit)]}


@router.get("/v1/ingest-orders/{order_id}")
async def get_order(order_id: str, owner: OwnerId, orders: Orders) -> dict[str, Any]:
    return (await orders.get(owner, order_id)).to_json()
