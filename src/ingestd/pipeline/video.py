"""The video graph: the adaptive ladder (HLS + DASH over one CMAF segment set) and previews
(poster, storyboard with its WebVTT index, a short MP4), each a work order of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from ingestd.db.models import Asset
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext
from ingestd.media.ladder import DEFAULT_PROFILE, Profile, plan_ladder, profile_key
from ingestd.media.previews import make_poster, make_preview_clip, make_storyboard
from ingestd.media.video import package_video
from ingestd.pipeline.context import (
    PipelineDeps,
    SourceRef,
    current_source,
    progress_to,
    rendition_key,
    replace_renditions,
    store_tree,
)

STEP_VERSION = "1"
LADDER, POSTER, STORYBOARD, PREVIEW = "video_ladder", "poster", "storyboard", "preview_clip"


def video_graph(sha256: str, profile: Profile = DEFAULT_PROFILE) -> Graph:
    def key(step: str) -> str:
        return f"{sha256}:{step}:{STEP_VERSION}"

    # the ladder re-runs when the asset's profile, or its definition, changes
    ladder_key = f"{key(LADDER)}:{profile.name}:{profile_key(profile)}"
    return Graph(
        (
            StepSpec(LADDER, queue="encode", weight=8.0, content_key=ladder_key),
            StepSpec(POSTER, queue="default", weight=1.0, content_key=key(POSTER)),
            StepSpec(STORYBOARD, queue="default", weight=1.0, content_key=key(STORYBOARD)),
            StepSpec(PREVIEW, queue="default", weight=1.0, content_key=key(PREVIEW)),
        )
    )


def asset_profile(session: Session, asset_id: str, profiles: Mapping[str, Profile]) -> Profile:
    """The profile the asset names (a profile since removed falls back to the default)."""
    name = session.get_one(Asset, asset_id).meta.get("profile")
    return profiles.get(name or DEFAULT_PROFILE.name) or profiles[DEFAULT_PROFILE.name]


def _video_meta(session: Session, asset_id: str) -> dict[str, Any]:
    meta: dict[str, Any] = session.get_one(Asset, asset_id).meta.get("video") or {}
    return meta


class VideoSteps:
    def __init__(self, deps: PipelineDeps, profiles: Mapping[str, Profile]) -> None:
        self.deps = deps
        self.profiles = profiles

    def steps(self) -> dict[str, Step]:
        timeout = self.deps.limits.step_timeout_s
        return {
            LADDER: Step(self.ladder, timeout_s=timeout),
            POSTER: Step(self.poster, timeout_s=timeout),
            STORYBOARD: Step(self.storyboard, timeout_s=timeout),
            PREVIEW: Step(self.preview, timeout_s=timeout),
        }

    async def _source(self, ctx: StepContext) -> tuple[SourceRef, dict[str, Any]]:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        probe = await ctx.read(lambda s: _video_meta(s, ref.asset_id))
        return ref, probe

    async def ladder(self, ctx: StepContext) -> Outcome:
        ref, probe = await self._source(ctx)
        profile = await ctx.read(lambda s: asset_profile(s, ref.asset_id, self.profiles))
        video = probe["video"]
        rungs = plan_ladder(
            profile,
            display_width=video["display_width"],
            display_height=video["display_height"],
            fps=video["fps"],
        )
        out = ctx.workdir / "stream"
        out.mkdir(parents=True, exist_ok=True)
        async with self.deps.store.local_path(ref.master_key) as path:
            packaged = await package_video(
                self.deps.toolchain,
                path,
                out,
                rungs,
                with_audio=probe["has_audio"],
                audio_bitrate=profile.audio_bitrate,
                segment_s=profile.segment_s,
                duration_s=probe["duration_s"],
                preset=self.deps.limits.video_preset,
                on_progress=progress_to(ctx),
                logger=ctx.logger,
            )
        prefix = rendition_key(ref.asset_id, "stream")
        total = await store_tree(self.deps.store, out, packaged.files, prefix)
        duration = probe["duration_s"]
        rows: list[dict[str, Any]] = [
            {
                "name": name,
                "kind": name,
                "profile": profile.name,
                "storage_key": f"{prefix}/{manifest}",
                "size": total,
                "duration_s": duration,
            }
            for name, manifest in (("hls", packaged.hls_master), ("dash", packaged.dash_manifest))
        ]
        for r in packaged.renditions:
            rows.append(
                {
                    "name": r.name,
                    "kind": r.kind,
                    "profile": profile.name,
                    "storage_key": f"{prefix}/{r.playlist}",
                    "size": r.size,
                    "codec": r.codecs,
                    "bitrate": r.average_bandwidth,
                    "width": r.width or None,
                    "height": r.height or None,
                    "duration_s": r.duration_s,
                    "info": {
                        "peak_bitrate": r.bandwidth,
                        "frame_rate": r.frame_rate,
                        "segments": len(r.segments),
                    },
                }
            )
        result = {"renditions": [r.name for r in packaged.renditions], "bytes": total}

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, rows)

        return Outcome(result, save)

    async def poster(self, ctx: StepContext) -> Outcome:
        ref, probe = await self._source(ctx)
        async with self.deps.store.local_path(ref.master_key) as path:
            poster = await make_poster(
                self.deps.toolchain, path, ctx.workdir, duration_s=probe["duration_s"]
            )
        key = rendition_key(ref.asset_id, "poster", "poster.jpg")
        size = await self.deps.store.put_file(key, poster.path, move=True)
        row = {
            "name": "poster",
            "kind": "poster",
            "storage_key": key,
            "size": size,
            "codec": "image/jpeg",
            "width": poster.width,
            "height": poster.height,
            "info": {"time_s": poster.time_s, "mean_luma": round(poster.mean_luma, 1)},
        }

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, [row])

        return Outcome({"time_s": poster.time_s}, save)

    async def storyboard(self, ctx: StepContext) -> Outcome:
        ref, probe = await self._source(ctx)
        out = ctx.workdir / "storyboard"
        out.mkdir(parents=True, exist_ok=True)
        async with self.deps.store.local_path(ref.master_key) as path:
            board = await make_storyboard(
                self.deps.toolchain, path, out, duration_s=probe["duration_s"]
            )
        prefix = rendition_key(ref.asset_id, "storyboard")
        files = [board.vtt.name, *(sheet.path.name for sheet in board.sheets)]
        total = await store_tree(self.deps.store, out, files, prefix)
        row = {
            "name": "storyboard",
            "kind": "storyboard",
            "storage_key": f"{prefix}/{board.vtt.name}",
            "size": total,
            "codec": "text/vtt",
            "width": board.tile_width,
            "height": board.tile_height,
            "info": {
                "interval_s": board.interval_s,
                "thumbnails": board.count,
                "sheets": [sheet.path.name for sheet in board.sheets],
                "columns": board.columns,
                "rows": board.rows,
            },
        }

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, [row])

        return Outcome({"thumbnails": board.count}, save)

    async def preview(self, ctx: StepContext) -> Outcome:
        ref, probe = await self._source(ctx)
        async with self.deps.store.local_path(ref.master_key) as path:
            clip = await make_preview_clip(
                self.deps.toolchain, path, ctx.workdir, duration_s=probe["duration_s"]
            )
        key = rendition_key(ref.asset_id, "preview", "preview.mp4")
        size = await self.deps.store.put_file(key, clip.path, move=True)
        row = {
            "name": "preview_clip",
            "kind": "preview",
            "storage_key": key,
            "size": size,
            "codec": "video/mp4",
            "width": clip.width,
            "height": clip.height,
            "duration_s": clip.duration_s,
            "info": {"start_s": clip.start_s, "has_audio": clip.has_audio},
        }

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, [row])

        return Outcome({"start_s": clip.start_s}, save)
