"""What pipeline steps share: the stores, the toolchain, limits, and small helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from ingestd.db.models import Asset, Rendition
from ingestd.db.types import new_id
from ingestd.errors import NotFound
from ingestd.jobs.worker import StepContext
from ingestd.media import Progress, Toolchain
from ingestd.queries import latest_master
from ingestd.storage.base import ObjectStore


@dataclass(frozen=True)
class PipelineLimits:
    max_duration_s: float | None = 24 * 3600
    step_timeout_s: float | None = 6 * 3600
    segment_s: float = 6.0
    waveform_points: int = 1000
    max_width: int | None = 7680  # video display size, either orientation
    max_height: int | None = 4320
    video_preset: str = "veryfast"  # x264 preset of the ladder
    per_rung: bool = False  # one work order per rung instead of one process for the ladder
    fits_require_checksums: bool = False  # reject FITS files without CHECKSUM/DATASUM cards


@dataclass(frozen=True)
class PipelineDeps:
    store: ObjectStore
    toolchain: Toolchain
    limits: PipelineLimits


@dataclass(frozen=True)
class SourceRef:
    source_id: str
    asset_id: str
    owner_id: str
    master_key: str
    sha256: str
    duration_s: float | None
    container: str | None


def current_source(asset_id: str) -> Callable[[Session], SourceRef]:
    def find(session: Session) -> SourceRef:
        source = latest_master(session, asset_id)
        if source is None or source.master_key is None or source.sha256 is None:
            raise NotFound(f"asset {asset_id} has no stored master")
        asset = session.get_one(Asset, asset_id)
        probe = asset.meta.get("probe") or {}
        return SourceRef(
            source_id=source.id,
            asset_id=asset_id,
            owner_id=asset.owner_id,
            master_key=source.master_key,
            sha256=source.sha256,
            duration_s=probe.get("duration_s"),
            container=asset.meta.get("container"),
        )

    return find


def progress_to(ctx: StepContext) -> Callable[[Progress], None]:
    return lambda p: ctx.report(p.fraction, p.eta_s)


def rendition_key(asset_id: str, *parts: str) -> str:
    return "/".join(("renditions", asset_id, *parts))


async def store_tree(store: ObjectStore, root: Path, files: list[str], prefix: str) -> int:
    """Move ``files`` (relative to ``root``) into the store under ``prefix``; total bytes."""
    total = 0
    for rel in files:
        total += await store.put_file(f"{prefix}/{rel}", root / rel, move=True)
    return total


def replace_renditions(
    session: Session, asset_id: str, order_id: str, rows: list[dict[str, Any]]
) -> None:
    """Upsert an asset's renditions by name: a re-run replaces, never duplicates."""
    names = [r["name"] for r in rows]
    session.execute(
        delete(Rendition).where(Rendition.asset_id == asset_id, Rendition.name.in_(names))
    )
    for r in rows:
        session.add(Rendition(id=new_id("rn"), asset_id=asset_id, work_order_id=order_id, **r))


def merge_meta(session: Session, asset_id: str, **values: Any) -> None:
    asset = session.get_one(Asset, asset_id)
    asset.meta = {**asset.meta, **values}
