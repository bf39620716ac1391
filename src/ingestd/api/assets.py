"""The assets API: status, progress, metadata, renditions with signed URLs, events."""

from __future__ import annotations

import mimetypes
from datetime import datetime
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.api.deps import OwnerId, Svc, base_url
from ingestd.api.schemas import ERRORS, AssetOut, AssetPage, EventPage
from ingestd.auth.signing import UrlSigner
from ingestd.bootstrap import Services
from ingestd.db.models import Rendition, WorkOrder
from ingestd.errors import IngestdError, NotFound
from ingestd.jobs.progress import LiveProgress
from ingestd.queries import AssetQueries, AssetView

router = APIRouter(tags=["assets"], responses=ERRORS)

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".flac": "audio/flac",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".vtt": "text/vtt",
}


def content_type(key: str) -> str:
    dot = key.rfind(".")
    ext = key[dot:] if dot >= 0 else ""
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def asset_json(view: AssetView, signer: UrlSigner, base: str) -> dict[str, Any]:
    a = view.asset
    meta = dict(a.meta)
    return {
        "id": a.id,
        "kind": a.kind,
        "title": a.title,
        "description": a.description,
        "status": a.status,
        "error": a.error,
        "sha256": a.sha256,
        "created_at": _iso(a.created_at),
        "updated_at": _iso(a.updated_at),
        "progress": {
            "percent": view.percent,
            "eta_s": view.eta_s,
            "steps": [
                {
                    "step": s.step,
                    "state": s.state,
                    "percent": s.percent,
                    "eta_s": s.eta_s,
                    "attempts": s.attempts,
                    "error": s.error,
                }
                for s in view.steps
            ],
        },
        "metadata": meta,
        "loudness": meta.get("loudness"),
        "lossless_archive": meta.get("lossless_archive"),
        "sources": [
            {
                "id": s.id,
                "filename": s.filename,
                "size": s.size,
                "sha256": s.sha256,
                "status": s.status,
                "reason": s.reason,
            }
            for s in view.sources
        ],
        "master_url": f"{base}/v1/assets/{a.id}/master"
        if any(s.master_key for s in view.sources)
        else None,
        "renditions": [
            {
                "name": r.name,
                "kind": r.kind,
                "profile": r.profile,
                "url": base + signer.sign(r.storage_key),
                "size": r.size,
                "codec": r.codec,
                "bitrate": r.bitrate,
                "width": r.width,
                "height": r.height,
                "duration_s": r.duration_s,
                "info": r.info,
            }
            for r in view.renditions
        ],
    }


def _queries(svc: Services) -> AssetQueries:
    return AssetQueries(svc.db)


async def live_progress(svc: Services, asset_id: str) -> dict[str, LiveProgress]:
    """The progress board's figures for the asset's running steps (advisory: a board that
    fails leaves the database's figures)."""
    try:
        return await svc.progress.get(asset_id)
    except IngestdError:
        return {}


async def asset_view(svc: Services, owner: str, asset_id: str) -> AssetView:
    live = await live_progress(svc, asset_id)
    return await anyio.to_thread.run_sync(_queries(svc).get, owner, asset_id, live)


@router.get("/v1/assets", response_model=AssetPage)
async def list_assets(
    request: Request,
    owner: OwnerId,
    svc: Svc,
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """``meta.<KEYWORD>=<value>`` parameters (several: all must hold) keep the assets whose
    FITS primary header has that keyword with exactly that value, e.g. ``meta.INSTRUME=HMI``."""
    keywords = [(k[5:], v) for k, v in request.query_params.multi_items() if k.startswith("meta.")]
    views, next_cursor = await anyio.to_thread.run_sync(
        lambda: _queries(svc).page(
            owner, limit=limit, cursor=cursor, status=status, keywords=keywords
        )
    )
    base = base_url(request, svc)
    return {"items": [asset_json(v, svc.signer, base) for v in views], "next_cursor": next_cursor}


@router.get("/v1/assets/{asset_id}", response_model=AssetOut)
async def get_asset(asset_id: str, request: Request, owner: OwnerId, svc: Svc) -> dict[str, Any]:
    view = await asset_view(svc, owner, asset_id)
    return asset_json(view, svc.signer, base_url(request, svc))


@router.get("/v1/assets/{asset_id}/events", response_model=EventPage)
async def list_events(
    asset_id: str, owner: OwnerId, svc: Svc, after: int = Query(0, ge=0)
) -> dict[str, Any]:
    events = await anyio.to_thread.run_sync(
        lambda: _queries(svc).events(owner, asset_id, after=after)
    )
    return {
        "items": [
            {"id": e.id, "type": e.type, "created_at": _iso(e.created_at), "data": e.data}
            for e in events
        ]
    }


@router.get("/v1/profiles")
async def list_profiles(owner: OwnerId, svc: Svc) -> dict[str, Any]:
    """The ladder profiles an asset may name (``asset.profile``, or tus metadata ``profile``)."""
    return {"items": [p.to_dict() for p in svc.profiles.values()]}


@router.post("/v1/assets/{asset_id}/cancel", response_model=AssetOut)
async def cancel_processing(
    asset_id: str, request: Request, owner: OwnerId, svc: Svc
) -> dict[str, Any]:
    """Stop an asset's processing: its running ffmpeg stops within a heartbeat."""
    await anyio.to_thread.run_sync(svc.engine.cancel_processing, owner, asset_id)
    view = await anyio.to_thread.run_sync(_queries(svc).get, owner, asset_id)
    return asset_json(view, svc.signer, base_url(request, svc))


@router.post(
    "/v1/assets/{asset_id}/renditions/{name}/retry", status_code=202, response_model=AssetOut
)
async def retry_rendition(
    asset_id: str, name: str, request: Request, owner: OwnerId, svc: Svc
) -> dict[str, Any]:
    """Make a rendition again: its own work order when rungs are separate orders
    (``rung:<name>``), else the order that made it; with every unfinished order of the asset
    and what depends on them."""

    def steps(session: Session) -> list[str]:
        made_by = session.scalars(
            select(WorkOrder.step)
            .join(Rendition, Rendition.work_order_id == WorkOrder.id)
            .where(Rendition.asset_id == asset_id, Rendition.name == name)
        ).first()
        return [f"rung:{name}", name, *([made_by] if made_by else [])]

    candidates = await svc.db.run(steps)
    ready = await anyio.to_thread.run_sync(svc.engine.retry, owner, asset_id, candidates)
    await svc.dispatcher.announce(ready)
    view = await anyio.to_thread.run_sync(_queries(svc).get, owner, asset_id)
    return asset_json(view, svc.signer, base_url(request, svc))


@router.get("/v1/assets/{asset_id}/master")
async def get_master(asset_id: str, owner: OwnerId, svc: Svc) -> StreamingResponse:
    source = await anyio.to_thread.run_sync(_queries(svc).master, owner, asset_id)
    assert source.master_key is not None
    size = await svc.store.size(source.master_key)
    return StreamingResponse(
        svc.store.read(source.master_key),
        media_type=source.content_type or "application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{asset_id}"',
        },
    )


@router.get("/o/{expires}/{sig}/{key:path}", include_in_schema=False)
async def signed_object(expires: int, sig: str, key: str, svc: Svc) -> StreamingResponse:
    if not svc.signer.verify(expires, sig, key):
        raise NotFound("this link is invalid or has expired")
    size = await svc.store.size(key)
    return StreamingResponse(
        svc.store.read(key),
        media_type=content_type(key),
        headers={
            "Content-Length": str(size),
            "Access-Control-Allow-Origin": "*",
            "Cache-Control": "private, max-age=3600",
        },
    )
