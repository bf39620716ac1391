"""The block upload API (``/v1/uploads``): a Dropbox-style resumable upload."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from ingestd.api.deps import OwnerId, Svc
from ingestd.api.schemas import ERRORS, BlockOut, UploadOut
from ingestd.errors import InvalidRequest
from ingestd.uploads.blocks import parse_content_digest
from ingestd.uploads.service import NewUpload, UploadInfo

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=ERRORS)


class AssetFields(BaseModel):
    title: str | None = Field(default=None, max_length=500)
    description: str | None = Field(default=None, max_length=20000)
    profile: str | None = Field(default=None, max_length=100, description="a ladder profile")


class CreateUpload(BaseModel):
    filename: str | None = Field(default=None, max_length=4096)
    size: int
    block_size: int | None = None
    blocks: list[str] | None = None
    sha256: str | None = None
    content_type: str | None = Field(default=None, max_length=200)
    asset: AssetFields | None = None


def known_profile(svc: Svc, name: str | None) -> str | None:
    if name is not None and name not in svc.profiles:
        raise InvalidRequest(
            f"unknown profile {name!r}; known: {', '.join(sorted(svc.profiles))}",
            profiles=sorted(svc.profiles),
        )
    return name


def upload_json(info: UploadInfo) -> dict[str, Any]:
    return {
        "upload_id": info.upload_id,
        "asset_id": info.asset_id,
        # one status for clients: the source's, or the session's when it ended unfinished
        "status": info.status
        if info.status in ("expired", "cancelled") or info.source_status is None
        else info.source_status,
        "session_status": info.status,
        "protocol": info.protocol,
        "size": info.size,
        "offset": info.offset,
        "bytes_received": info.bytes_received,
        "block_size": info.block_size,
        "block_count": info.block_count,
        "present": info.present,
        "missing": info.missing,
        "expires_at": _iso(info.expires_at),
        "reason": info.reason,
    }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@router.post("", status_code=201, response_model=UploadOut)
async def create_upload(body: CreateUpload, owner: OwnerId, svc: Svc) -> dict[str, Any]:
    info = await svc.uploads.create(
        owner,
        NewUpload(
            filename=body.filename,
            size=body.size,
            block_size=body.block_size,
            blocks=body.blocks,
            sha256=body.sha256,
            title=body.asset.title if body.asset else None,
            description=body.asset.description if body.asset else None,
            content_type=body.content_type,
            profile=known_profile(svc, body.asset.profile if body.asset else None),
        ),
    )
    return upload_json(info)


@router.get("/{upload_id}", response_model=UploadOut)
async def get_upload(upload_id: str, owner: OwnerId, svc: Svc) -> dict[str, Any]:
    return upload_json(await svc.uploads.status(owner, upload_id))


@router.put("/{upload_id}/blocks/{index}", response_model=BlockOut)
async def put_block(
    upload_id: str, index: int, request: Request, owner: OwnerId, svc: Svc
) -> dict[str, Any]:
    digest = request.headers.get("content-digest")
    length = request.headers.get("content-length")
    try:
        announced = int(length) if length is not None else None
    except ValueError as exc:
        raise InvalidRequest("Content-Length is not a number") from exc
    part = await svc.uploads.put_block(
        owner,
        upload_id,
        index,
        request.stream(),
        sha256=parse_content_digest(digest) if digest else None,
        content_length=announced,
    )
    return {"index": part.index, "size": part.size, "sha256": part.sha256}


@router.post("/{upload_id}/complete", status_code=202, response_model=UploadOut)
async def complete_upload(upload_id: str, owner: OwnerId, svc: Svc) -> dict[str, Any]:
    return upload_json(await svc.uploads.complete(owner, upload_id))


@router.delete("/{upload_id}", status_code=204)
async def cancel_upload(upload_id: str, owner: OwnerId, svc: Svc) -> Response:
    await svc.uploads.cancel(owner, upload_id)
    return Response(status_code=204)
