"""The FITS graph: metadata (headers, keywords, typed core) and previews (PNG, thumbnail,
movie of a cube), each keyed on the part of the file it reads.

Validation computes the keys (see :mod:`ingestd.media.fits`); re-ingesting a file whose
headers (CHECKSUM/DATASUM cards aside) and data are unchanged skips both steps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ingestd.db.models import Asset
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext
from ingestd.media.fits import FitsKeys, FitsValidation, read_fits_metadata, validate_fits
from ingestd.media.fits_previews import make_fits_previews
from ingestd.pipeline.context import (
    PipelineDeps,
    PipelineLimits,
    current_source,
    rendition_key,
    replace_renditions,
)

STEP_VERSION = "1"
METADATA, PREVIEWS = "fits_metadata", "fits_previews"
HEADERS_NAME = "headers.txt"

__all__ = ["METADATA", "PREVIEWS", "FitsSteps", "check_fits", "fits_graph", "fits_keys"]


def fits_keys(sha256: str, checked: FitsValidation) -> FitsKeys:
    return FitsKeys(storage=sha256, header=checked.header_key, data=checked.data_key)


def fits_graph(keys: FitsKeys) -> Graph:
    """Metadata keyed on the headers, previews on the data; both after validation, which
    the master's storage (content-addressed by its SHA-256) already passed."""
    return Graph(
        (
            StepSpec(
                METADATA,
                queue="default",
                weight=1.0,
                content_key=f"{METADATA}:{keys.header}:{STEP_VERSION}",
            ),
            StepSpec(
                PREVIEWS,
                queue="encode",
                weight=3.0,
                content_key=f"{PREVIEWS}:{keys.data}:{STEP_VERSION}",
            ),
        )
    )


async def check_fits(path: Path, limits: PipelineLimits) -> FitsValidation:
    """Validate in a worker thread (astropy blocks); raises ``SourceRejected``."""
    return await asyncio.to_thread(
        validate_fits, path, require_checksums=limits.fits_require_checksums
    )


def _fits_meta(session: Session, asset_id: str) -> dict[str, Any]:
    meta = session.get_one(Asset, asset_id).meta
    return {"fits": meta.get("fits") or {}, "origin_path": meta.get("origin_path")}


def _beside(origin: object) -> Path | None:
    """``<name>.png`` next to the original file, for path ingestion that recorded it."""
    if not isinstance(origin, str) or not origin:
        return None
    candidate = Path(origin).with_suffix(".png")
    return candidate if candidate.is_file() else None


class FitsSteps:
    def __init__(self, deps: PipelineDeps) -> None:
        self.deps = deps

    def steps(self) -> dict[str, Step]:
        timeout = self.deps.limits.step_timeout_s
        return {
            METADATA: Step(self.metadata, timeout_s=timeout),
            PREVIEWS: Step(self.previews, timeout_s=timeout),
        }

    async def metadata(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        async with self.deps.store.local_path(ref.master_key) as path:
            meta = await asyncio.to_thread(read_fits_metadata, path)
        out = ctx.workdir / HEADERS_NAME
        await asyncio.to_thread(out.write_text, meta.headers_text, encoding="utf-8")
        key = rendition_key(ref.asset_id, "fits", HEADERS_NAME)
        size = await self.deps.store.put_file(key, out, move=True)
        row = {
            "name": "fits_headers",
            "kind": "fits_headers",
            "storage_key": key,
            "size": size,
            "codec": "text/plain",
            "info": {"hdus": len(meta.hdus), "cards": sum(h["cards"] for h in meta.hdus)},
        }
        headers = [
            {k: h[k] for k in ("index", "name", "type", "shape", "cards", "keywords")}
            for h in meta.hdus
        ]

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, [row])
            asset = session.get_one(Asset, ref.asset_id)
            previous = asset.meta.get("fits") or {}
            asset.meta = {
                **asset.meta,
                "fits": {
                    **previous,
                    "keywords": meta.keywords,
                    "core": meta.core,
                    "headers": headers,
                    "header_warnings": meta.warnings,
                },
            }

        return Outcome({"hdus": len(meta.hdus), "core": meta.core}, save)

    async def previews(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        known = await ctx.read(lambda s: _fits_meta(s, ref.asset_id))
        hdu = known["fits"].get("image_hdu")
        if hdu is None:
            return Outcome({"image": False})  # tables only: nothing to picture
        beside = await asyncio.to_thread(_beside, known["origin_path"])
        out = ctx.workdir / "fits"
        async with self.deps.store.local_path(ref.master_key) as path:
            made = await make_fits_previews(
                self.deps.toolchain,
                path,
                out,
                hdu=int(hdu),
                beside=beside,
                timeout_s=self.deps.limits.step_timeout_s,
                logger=ctx.logger,
            )
        ctx.report(0.9)
        base = rendition_key(ref.asset_id, "fits")
        scaling = {"interval": "zscale", "low": made.scaling.low, "high": made.scaling.high}
        rows: list[dict[str, Any]] = []
        for name, file, width, height, info in (
            (
                "fits_preview",
                made.preview,
                made.width,
                made.height,
                {"hdu": made.hdu, "plane": made.plane, "source": made.source, **scaling},
            ),
            (
                "fits_thumbnail",
                made.thumbnail,
                made.thumbnail_width,
                made.thumbnail_height,
                {"source": made.source},
            ),
        ):
            key = f"{base}/{file.name}"
            size = await self.deps.store.put_file(key, file, move=True)
            rows.append(
                {
                    "name": name,
                    "kind": "image",
                    "storage_key": key,
                    "size": size,
                    "codec": "image/png",
                    "width": width,
                    "height": height,
                    "info": info,
                }
            )
        if made.movie is not None:
            key = f"{base}/{made.movie.name}"
            size = await self.deps.store.put_file(key, made.movie, move=True)
            rows.append(
                {
                    "name": "fits_movie",
                    "kind": "preview",
                    "storage_key": key,
                    "size": size,
                    "codec": "video/mp4",
                    "width": made.movie_width,
                    "height": made.movie_height,
                    "info": {"frames": made.frames, "hdu": made.hdu, **scaling},
                }
            )
        result = {"renditions": [r["name"] for r in rows], "frames": made.frames}

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, rows)

        return Outcome(result, save)
