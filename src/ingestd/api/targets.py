"""Publication targets (``/v1/targets``) and publishing assets to them. Owner-scoped: another
owner's asset or target is not found (404)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from ingestd.api.deps import OwnerId, Svc
from ingestd.api.schemas import ERRORS
from ingestd.publish.service import PublicationService

router = APIRouter(tags=["publishing"], responses=ERRORS)


def publications(svc: Svc) -> PublicationService:
    return svc.publications


Pubs = Annotated[PublicationService, Depends(publications)]


class CreateTarget(BaseModel):
    name: str = Field(min_length=1, max_length=63)
    kind: str = Field(description="directory, s3, ftp or catalog")
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class PublishRequest(BaseModel):
    target: str = Field(min_length=1, max_length=63)


@router.post("/v1/targets", status_code=201)
async def create_target(body: CreateTarget, owner: OwnerId, pubs: Pubs) -> dict[str, Any]:
    view = await pubs.create_target(owner, body.name, body.kind, body.config, enabled=body.enabled)
    return view.to_dict()


@router.get("/v1/targets")
async def list_targets(owner: OwnerId, pubs: Pubs) -> dict[str, Any]:
    return {"items": [t.to_dict() for t in await pubs.list_targets(owner)]}


@router.delete("/v1/targets/{name}", status_code=204)
async def delete_target(name: str, owner: OwnerId, pubs: Pubs) -> Response:
    await pubs.delete_target(owner, name)
    return Response(status_code=204)


@router.post("/v1/assets/{asset_id}/publish", status_code=202)
async def publish_asset(
    asset_id: str, body: PublishRequest, owner: OwnerId, pubs: Pubs, svc: Svc
) -> dict[str, Any]:
    """Enqueue a ``publish:<target>`` order for a ready asset (one waiting order at most)."""
    order_id, ready = await anyio.to_thread.run_sync(pubs.enqueue, owner, asset_id, body.target)
    await svc.dispatcher.announce(ready)
    return {"asset_id": asset_id, "target": body.target, "order_id": order_id}


@router.get("/v1/assets/{asset_id}/publications")
async def list_publications(asset_id: str, owner: OwnerId, pubs: Pubs) -> dict[str, Any]:
    return {"items": await pubs.publications(owner, asset_id)}


@router.delete("/v1/assets/{asset_id}/publications/{target}")
async def unpublish_asset(asset_id: str, target: str, owner: OwnerId, pubs: Pubs) -> dict[str, Any]:
    """Remove the asset's objects from the target now; the report says what went."""
    report = await pubs.unpublish(owner, asset_id, target)
    return report.to_dict()
