"""The first step of every asset: validate the master, then enqueue the graph of its kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ingestd.db.models import Asset, Block, Source, UploadSession
from ingestd.domain.states import AssetStatus, SourceStatus, check_transition
from ingestd.errors import SourceRejected
from ingestd.jobs.engine import JobEngine, emit, set_asset_status
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, StepContext
from ingestd.media import sniff, validate_audio
from ingestd.media.fits import FitsValidation
from ingestd.media.ladder import Profile, plan_ladder
from ingestd.media.sniff import Sniffed
from ingestd.media.validate import NoVideoStream, validate_video
from ingestd.media.video_probe import VideoProbe
from ingestd.pipeline.context import PipelineDeps, current_source, progress_to
from ingestd.pipeline.fits import check_fits, fits_graph, fits_keys
from ingestd.pipeline.music import music_graph
from ingestd.pipeline.video import asset_profile, video_graph
from ingestd.publish.catalog import catalog_step_specs
from ingestd.publish.steps import auto_targets, with_publish

VALIDATE = "validate"


def ingest_graph() -> Graph:
    """What completing an upload enqueues; the kind's own graph follows validation."""
    return Graph((StepSpec(VALIDATE, queue="default", max_attempts=3, weight=1.0),))


def allowed_kinds(source_id: str) -> Callable[[Session], list[str] | None]:
    """The kinds the upload token that created the source allows; None: any."""

    def read(session: Session) -> list[str] | None:
        upload = session.scalars(
            select(UploadSession).where(UploadSession.source_id == source_id)
        ).first()
        kinds: list[str] | None = upload.info.get("allowed_kinds") if upload else None
        return kinds

    return read


def force_requested(source_id: str) -> Callable[[Session], bool]:
    """Whether the upload that created the source asked to re-run every step (``info.force``,
    set by ``ingest_file(force=True)``): content keys are then not compared."""

    def read(session: Session) -> bool:
        upload = session.scalars(
            select(UploadSession).where(UploadSession.source_id == source_id)
        ).first()
        return bool(upload and upload.info.get("force"))

    return read


class ValidateStep:
    def __init__(
        self, deps: PipelineDeps, engine: JobEngine, profiles: Mapping[str, Profile]
    ) -> None:
        self.deps = deps
        self.engine = engine
        self.profiles = profiles

    async def __call__(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))

        def start(session: Session) -> None:
            source = session.get_one(Source, ref.source_id)
            if source.status == SourceStatus.UPLOADED.value:
                source.status = check_transition(
                    SourceStatus.UPLOADED, SourceStatus.VALIDATING
                ).value

        await ctx.write(start)
        allowed = await ctx.read(allowed_kinds(ref.source_id))
        force = await ctx.read(force_requested(ref.source_id))
        limits = self.deps.limits
        try:
            async with self.deps.store.local_path(ref.master_key) as path:
                sniffed = sniff(path)
                video: VideoProbe | None = None
                checked: FitsValidation | None = None
                if sniffed.kind == "fits":
                    self._check_allowed(allowed, "fits", sniffed)
                    checked = await check_fits(path, limits)
                elif sniffed.kind == "video":
                    try:
                        video = await validate_video(
                            self.deps.toolchain,
                            path,
                            on_progress=progress_to(ctx),
                            max_duration_s=limits.max_duration_s,
                            max_width=limits.max_width,
                            max_height=limits.max_height,
                        )
                    except NoVideoStream:
                        video = None  # an MP4 or Matroska file holding only audio
                if checked is None:
                    kind = "video" if video is not None else sniffed.kind
                    self._check_allowed(allowed, kind, sniffed)
                if checked is None and video is None:
                    # validate_audio refuses anything that is not audio, saying what it looks like
                    probe = await validate_audio(
                        self.deps.toolchain,
                        path,
                        on_progress=progress_to(ctx),
                        max_duration_s=limits.max_duration_s,
                    )
        except SourceRejected as exc:
            await self._reject(ctx, ref.source_id, ref.master_key, exc.message)
            raise

        if checked is not None:
            kind, summary = "fits", checked.to_dict()
            graph = fits_graph(fits_keys(ref.sha256, checked))
        elif video is not None:
            profile = await ctx.read(lambda s: asset_profile(s, ref.asset_id, self.profiles))
            rungs = None
            if limits.per_rung and video.video is not None:
                planned = plan_ladder(
                    profile,
                    display_width=video.video.display_width,
                    display_height=video.video.display_height,
                    fps=video.video.fps,
                )
                rungs = [r.name for r in planned]
            graph = video_graph(ref.sha256, profile, rungs=rungs, has_audio=video.has_audio)
            kind, summary = "video", video.to_dict()
        else:
            kind, summary = "audio", probe.to_dict()
            graph = music_graph(ref.sha256, sniffed.container)

        def finish(session: Session) -> None:
            source = session.get_one(Source, ref.source_id)
            source.status = check_transition(
                SourceStatus(source.status), SourceStatus.INGESTED
            ).value
            asset = session.get_one(Asset, ref.asset_id)
            asset.kind = kind
            extra: dict[str, Any]
            if kind == "fits":  # the metadata step adds keywords and headers beside these
                extra = {"fits": {**(asset.meta.get("fits") or {}), **summary}}
            else:
                extra = {"probe": summary, **({"video": summary} if kind == "video" else {})}
            asset.meta = {
                **asset.meta,
                **extra,
                "container": sniffed.container,
                "mime": sniffed.mime,
            }
            set_asset_status(session, asset, AssetStatus.PROCESSING)
            emit(
                session,
                asset.owner_id,
                asset.id,
                "source.ingested",
                source_id=source.id,
                container=sniffed.container,
            )
            # the owner's automatic publication and catalog targets, after the media steps
            media = [spec.name for spec in graph.steps]
            full = with_publish(graph, auto_targets(session, asset.owner_id))
            full = Graph(
                (
                    *full.steps,
                    *catalog_step_specs(session, asset.owner_id, kind, after=media),
                )
            )
            self.engine.enqueue_graph(session, asset.id, full, force=force)

        return Outcome({"container": sniffed.container, "probe": summary}, finish)

    @staticmethod
    def _check_allowed(allowed: list[str] | None, kind: str, sniffed: Sniffed) -> None:
        if allowed is not None and kind not in allowed:
            raise SourceRejected(
                f"the file is {sniffed.description}; the upload token that created "
                f"this upload allows only {', '.join(allowed)}"
            )

    async def _reject(self, ctx: StepContext, source_id: str, key: str, reason: str) -> None:
        await self.deps.store.delete(key)  # a rejected master is not kept

        def mark(session: Session) -> None:
            source = session.get_one(Source, source_id)
            source.status = check_transition(
                SourceStatus(source.status), SourceStatus.REJECTED
            ).value
            source.reason = reason
            source.master_key = None
            session.execute(delete(Block).where(Block.source_id == source_id))
            emit(session, source.owner_id, source.asset_id, "source.rejected", reason=reason)

        await ctx.write(mark)
