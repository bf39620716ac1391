"""Direct-upload tokens (``/v1/upload-tokens``): a back end asks, a browser uploads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ingestd.api.deps import OwnerId, Svc, base_url
from ingestd.api.schemas import ERRORS, UploadTokenOut
from ingestd.api.tus import PREFIX

router = APIRouter(prefix="/v1/upload-tokens", tags=["uploads"], responses=ERRORS)


class CreateToken(BaseModel):
    max_size: int | None = Field(default=None, gt=0, description="bytes; default: server maximum")
    kinds: list[str] | None = Field(
        default=None, description="allowed kinds (audio, video, image, fits); default: any"
    )
    expires_in_s: int | None = Field(default=None, gt=0, description="default: 1 hour")
    label: str | None = Field(default=None, max_length=200)


@router.post("", status_code=201, response_model=UploadTokenOut)
async def create_token(
    body: CreateToken, request: Request, owner: OwnerId, svc: Svc
) -> dict[str, Any]:
    ttl = body.expires_in_s or svc.settings.upload_token_ttl_s
    issued = await svc.tokens.issue(
        owner,
        max_size=body.max_size,
        kinds=body.kinds,
        ttl=timedelta(seconds=ttl),
        label=body.label,
    )
    return {
        "token": issued.token,
        "id": issued.token_id,
        "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
        "max_size": issued.max_size,
        "kinds": issued.kinds,
        "upload_url": f"{base_url(request, svc)}{PREFIX}/",
    }
