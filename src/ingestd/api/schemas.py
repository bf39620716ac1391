"""Response shapes, for the OpenAPI document and for checking what the API answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in {
        400: "Invalid request or block index",
        401: "Missing, invalid or revoked API key",
        403: "The credentials do not allow this",
        404: "Unknown, or owned by someone else",
        409: "Blocks missing (details.missing) or wrong state",
        410: "Upload expired or cancelled",
        413: "Over a size limit",
        422: "Checksum mismatch",
    }.items()
}


class UploadOut(BaseModel):
    upload_id: str
    asset_id: str | None  # None only for a tus partial upload
    protocol: str  # blocks, tus, local
    status: str  # uploading, uploaded, validating, ingested, rejected, cancelled, expired
    session_status: str  # open, completed, cancelled, expired
    size: int | None  # None while a tus client defers the length
    offset: int  # tus: bytes made durable from the start
    bytes_received: int
    block_size: int
    block_count: int
    present: list[int]
    missing: list[int]
    expires_at: str
    reason: str | None


class UploadTokenOut(BaseModel):
    token: str  # shown once; send as Authorization: Bearer <token> to the tus endpoint
    id: str
    expires_at: str
    max_size: int
    kinds: list[str] | None
    upload_url: str  # the tus creation URL


class BlockOut(BaseModel):
    index: int
    size: int
    sha256: str


class StepOut(BaseModel):
    step: str
    state: str
    percent: float
    eta_s: float | None
    attempts: int
    error: str | None


class ProgressOut(BaseModel):
    percent: float
    eta_s: float | None
    steps: list[StepOut]


class SourceOut(BaseModel):
    id: str
    filename: str | None
    size: int | None  # None while a tus client defers the length
    sha256: str | None
    status: str
    reason: str | None


class RenditionOut(BaseModel):
    name: str
    kind: str
    profile: str | None  # the ladder profile (video) or rung (audio) it was made with
    url: str
    size: int | None
    codec: str | None
    bitrate: int | None
    width: int | None
    height: int | None
    duration_s: float | None
    info: dict[str, Any]


class AssetOut(BaseModel):
    id: str
    kind: str
    title: str | None
    description: str | None
    status: str  # created, ingesting, processing, ready, failed, abandoned
    error: str | None
    sha256: str | None
    created_at: str | None
    updated_at: str | None
    progress: ProgressOut
    metadata: dict[str, Any]
    loudness: dict[str, Any] | None
    lossless_archive: dict[str, Any] | None
    sources: list[SourceOut]
    master_url: str | None
    renditions: list[RenditionOut]


class AssetPage(BaseModel):
    items: list[AssetOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: int
    type: str
    created_at: str | None
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut]
