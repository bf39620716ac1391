"""The video graph: the adaptive ladder (HLS + DASH over one CMAF segment set) and previews
(poster, storyboard with its WebVTT index, a short MP4), each a work order of its own."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.db.models import Asset, Rendition
from ingestd.errors import TranscodeFailed
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext
from ingestd.media.ladder import DEFAULT_PROFILE, Profile, plan_ladder, profile_key
from ingestd.media.previews import make_poster, make_preview_clip, make_storyboard
from ingestd.media.video import (
    AUDIO_NAME,
    DASH_MANIFEST,
    MASTER_PLAYLIST,
    PackagedVideo,
    VideoPackage,
    check_aligned,
    package_video,
    write_manifests,
)
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
RUNG, MANIFESTS = "rung:", "video_manifests"  # per-rung mode: "rung:720p", "rung:audio"


def video_graph(
    sha256: str,
    profile: Profile = DEFAULT_PROFILE,
    *,
    rungs: Sequence[str] | None = None,
    has_audio: bool = True,
) -> Graph:
    """The previews and the ladder: one ``video_ladder`` order encoding every rung in one
    process, or, given the planned ``rungs``, one ``rung:<name>`` order per rung (and
    ``rung:audio``) that workers may share out, joined by ``video_manifests``."""

    def key(step: str) -> str:
        return f"{sha256}:{step}:{STEP_VERSION}"

    # the ladder re-runs when the asset's profile, or its definition, changes
    ladder_key = f"{key(LADDER)}:{profile.name}:{profile_key(profile)}"
    steps = [
        StepSpec(POSTER, queue="default", weight=1.0, content_key=key(POSTER)),
        StepSpec(STORYBOARD, queue="default", weight=1.0, content_key=key(STORYBOARD)),
        StepSpec(PREVIEW, queue="default", weight=1.0, content_key=key(PREVIEW)),
    ]
    if rungs is None:
        steps.insert(0, StepSpec(LADDER, queue="encode", weight=8.0, content_key=ladder_key))
        return Graph(tuple(steps))
    parts = [f"{RUNG}{name}" for name in [*rungs, *([AUDIO_NAME] if has_audio else [])]]
    for i, part in enumerate(parts):  # the tallest rungs first: they take longest
        weight = max(1.0, 8.0 - i)
        steps.append(
            StepSpec(part, queue="encode", weight=weight, content_key=f"{ladder_key}:{part}")
        )
    steps.append(
        StepSpec(
            MANIFESTS,
            depends_on=tuple(parts),
            queue="default",
            weight=1.0,
            content_key=f"{ladder_key}:{MANIFESTS}",
        )
    )
    return Graph(tuple(steps))


def asset_profile(session: Session, asset_id: str, profiles: Mapping[str, Profile]) -> Profile:
    """The profile the asset names (a profile since removed falls back to the default)."""
    name = session.get_one(Asset, asset_id).meta.get("profile")
    return profiles.get(name or DEFAULT_PROFILE.name) or profiles[DEFAULT_PROFILE.name]


def _video_meta(session: Session, asset_id: str) -> dict[str, Any]:
    meta: dict[str, Any] = session.get_one(Asset, asset_id).meta.get("video") or {}
    return meta


def _renditions(session: Session, asset_id: str, names: Sequence[str]) -> dict[str, Rendition]:
    rows = session.scalars(
        select(Rendition).where(Rendition.asset_id == asset_id, Rendition.name.in_(list(names)))
    )
    found = {r.name: r for r in rows}
    missing = [n for n in names if n not in found]
    if missing:
        raise TranscodeFailed(f"renditions {missing} are missing; their orders did not finish")
    return found


def _manifest_rows(
    packaged: VideoPackage, prefix: str, profile: Profile, total: int, duration: float
) -> list[dict[str, Any]]:
    return [
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


def _rung_row(r: PackagedVideo, prefix: str, profile: Profile) -> dict[str, Any]:
    return {
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


class VideoSteps:
    def __init__(self, deps: PipelineDeps, profiles: Mapping[str, Profile]) -> None:
        self.deps = deps
        self.profiles = profiles

    def steps(self) -> dict[str, Step]:
        timeout = self.deps.limits.step_timeout_s
        return {
            LADDER: Step(self.ladder, timeout_s=timeout),
            RUNG: Step(self.rung, timeout_s=timeout),
            MANIFESTS: Step(self.manifests, timeout_s=timeout),
            POSTER: Step(self.poster, timeout_s=timeout),
            STORYBOARD: Step(self.storyboard, timeout_s=timeout),
            PREVIEW: Step(self.preview, timeout_s=timeout),
        }

    async def _source(self, ctx: StepContext) -> tuple[SourceRef, dict[str, Any]]:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        probe = await ctx.read(lambda s: _video_meta(s, ref.asset_id))
        return ref, probe

    async def _plan(self, ctx: StepContext) -> tuple[SourceRef, dict[str, Any], Profile, list[Any]]:
        ref, probe = await self._source(ctx)
        profile = await ctx.read(lambda s: asset_profile(s, ref.asset_id, self.profiles))
        video = probe["video"]
        rungs = plan_ladder(
            profile,
            display_width=video["display_width"],
            display_height=video["display_height"],
            fps=video["fps"],
        )
        return ref, probe, profile, rungs

    async def _encode(
        self,
        ctx: StepContext,
        ref: SourceRef,
        probe: dict[str, Any],
        profile: Profile,
        rungs: Sequence[Any],
        with_audio: bool,
    ) -> tuple[VideoPackage, Path]:
        out = ctx.workdir / "stream"
        out.mkdir(parents=True, exist_ok=True)
        async with self.deps.store.local_path(ref.master_key) as path:
            packaged = await package_video(
                self.deps.toolchain,
                path,
                out,
                rungs,
                with_audio=with_audio,
                audio_bitrate=profile.audio_bitrate,
                segment_s=profile.segment_s,
                duration_s=probe["duration_s"],
                preset=self.deps.limits.video_preset,
                on_progress=progress_to(ctx),
                logger=ctx.logger,
            )
        return packaged, out

    async def ladder(self, ctx: StepContext) -> Outcome:
        ref, probe, profile, rungs = await self._plan(ctx)
        packaged, out = await self._encode(ctx, ref, probe, profile, rungs, probe["has_audio"])
        prefix = rendition_key(ref.asset_id, "stream")
        total = await store_tree(self.deps.store, out, packaged.files, prefix)
        rows = _manifest_rows(packaged, prefix, profile, total, probe["duration_s"])
        rows += [_rung_row(r, prefix, profile) for r in packaged.renditions]
        result = {"renditions": [r.name for r in packaged.renditions], "bytes": total}

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, rows)

        return Outcome(result, save)

    async def rung(self, ctx: StepContext) -> Outcome:
        """One rung (or the audio) of a per-rung ladder, into the shared segment set."""
        name = ctx.claim.step.removeprefix(RUNG)
        ref, probe, profile, planned = await self._plan(ctx)
        rungs = [r for r in planned if r.name == name]
        if name != AUDIO_NAME and not rungs:
            raise TranscodeFailed(f"the ladder of profile {profile.name} has no rung {name}")
        packaged, out = await self._encode(ctx, ref, probe, profile, rungs, name == AUDIO_NAME)
        (rendition,) = packaged.renditions
        files = [rendition.playlist, rendition.init, *rendition.segments]
        prefix = rendition_key(ref.asset_id, "stream")
        size = await store_tree(self.deps.store, out, files, prefix)
        row = _rung_row(rendition, prefix, profile)
        row["info"]["files"] = [f.removeprefix(f"{name}/") for f in files]

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, [row])

        return Outcome({"rendition": name, "bytes": size}, save)

    async def manifests(self, ctx: StepContext) -> Outcome:
        """The HLS master and DASH MPD over rungs that separate orders encoded."""
        ref, probe, profile, planned = await self._plan(ctx)
        names = [r.name for r in planned] + ([AUDIO_NAME] if probe["has_audio"] else [])
        rows = await ctx.read(lambda s: _renditions(s, ref.asset_id, names))
        out = ctx.workdir / "stream"
        prefix = rendition_key(ref.asset_id, "stream")
        for name in names:
            (out / name).mkdir(parents=True, exist_ok=True)
            for file in rows[name].info["files"]:
                async with self.deps.store.local_path(f"{prefix}/{name}/{file}") as src:
                    await asyncio.to_thread(shutil.copyfile, src, out / name / file)
        fps = {r.name: r.fps for r in planned}
        measured = await asyncio.to_thread(write_manifests, out, [(n, fps.get(n)) for n in names])
        check_aligned([r for r in measured if r.kind == "video"])
        files = [MASTER_PLAYLIST, DASH_MANIFEST, *(r.playlist for r in measured)]
        total = await store_tree(self.deps.store, out, files, prefix)
        total += sum(r.size for r in measured)
        packaged = VideoPackage(MASTER_PLAYLIST, DASH_MANIFEST, measured, files)
        manifest_rows = _manifest_rows(packaged, prefix, profile, total, probe["duration_s"])

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, manifest_rows)

        return Outcome({"renditions": names}, save)

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
