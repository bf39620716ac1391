"""The music graph: loudness, streaming renditions (HLS + DASH), waveform, lossless archive."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext
from ingestd.media import (
    DEFAULT_AUDIO_LADDER,
    archive_flac,
    measure_loudness,
    package_audio,
    waveform,
)
from ingestd.pipeline.context import (
    PipelineDeps,
    current_source,
    merge_meta,
    progress_to,
    rendition_key,
    replace_renditions,
    store_tree,
)

# Sources stored as PCM get a FLAC archive copy, proven lossless.
PCM_CONTAINERS = frozenset({"wav", "aiff", "w64", "rf64"})
STEP_VERSION = "1"


def music_graph(sha256: str, container: str) -> Graph:
    def key(step: str) -> str:
        return f"{sha256}:{step}:{STEP_VERSION}"

    steps = [
        StepSpec("loudness", queue="default", weight=1.0, content_key=key("loudness")),
        StepSpec("package_audio", queue="encode", weight=4.0, content_key=key("package_audio")),
        StepSpec("waveform", queue="default", weight=1.0, content_key=key("waveform")),
    ]
    if container in PCM_CONTAINERS:
        steps.append(
            StepSpec("archive_flac", queue="encode", weight=2.0, content_key=key("archive_flac"))
        )
    return Graph(tuple(steps))


class MusicSteps:
    def __init__(self, deps: PipelineDeps) -> None:
        self.deps = deps

    def steps(self) -> dict[str, Step]:
        timeout = self.deps.limits.step_timeout_s
        return {
            "loudness": Step(self.loudness, timeout_s=timeout),
            "package_audio": Step(self.package, timeout_s=timeout),
            "waveform": Step(self.waveform, timeout_s=timeout),
            "archive_flac": Step(self.archive, timeout_s=timeout),
        }

    async def loudness(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        async with self.deps.store.local_path(ref.master_key) as path:
            result = await measure_loudness(
                self.deps.toolchain, path, duration_s=ref.duration_s, on_progress=progress_to(ctx)
            )
        figures = result.to_dict()  # silence measures -inf, which JSON cannot hold

        def save(session: Session) -> None:
            merge_meta(session, ref.asset_id, loudness=figures)

        return Outcome(figures, save)

    async def package(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        out = ctx.workdir / "stream"
        async with self.deps.store.local_path(ref.master_key) as path:
            packaged = await package_audio(
                self.deps.toolchain,
                path,
                out,
                DEFAULT_AUDIO_LADDER,
                segment_s=self.deps.limits.segment_s,
                duration_s=ref.duration_s,
                on_progress=progress_to(ctx),
                logger=ctx.logger,
            )
        prefix = rendition_key(ref.asset_id, "stream")
        total = await store_tree(self.deps.store, out, packaged.files, prefix)
        rows: list[dict[str, Any]] = [
            {
                "name": "hls",
                "kind": "hls",
                "storage_key": f"{prefix}/{packaged.hls_master}",
                "size": total,
                "duration_s": ref.duration_s,
            },
            {
                "name": "dash",
                "kind": "dash",
                "storage_key": f"{prefix}/{packaged.dash_manifest}",
                "size": total,
                "duration_s": ref.duration_s,
            },
        ]
        for r in packaged.renditions:
            rows.append(
                {
                    "name": r.name,
                    "kind": "audio",
                    "profile": r.name,
                    "storage_key": f"{prefix}/{r.playlist}",
                    "size": r.size,
                    "codec": r.codecs,
                    "bitrate": r.average_bandwidth,
                    "duration_s": ref.duration_s,
                    "info": {
                        "peak_bitrate": r.bandwidth,
                        "sample_rate": r.sample_rate,
                        "channels": r.channels,
                        "segments": len(r.segments),
                    },
                }
            )
        result = {"renditions": [r.name for r in packaged.renditions], "bytes": total}

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, rows)

        return Outcome(result, save)

    async def waveform(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        out_json = ctx.workdir / "waveform.json"
        out_png = ctx.workdir / "waveform.png"
        async with self.deps.store.local_path(ref.master_key) as path:
            wave = await waveform(
                self.deps.toolchain,
                path,
                out_json,
                out_png,
                points=self.deps.limits.waveform_points,
            )
        ctx.report(0.9)
        base = rendition_key(ref.asset_id, "waveform")
        json_size = await self.deps.store.put_file(f"{base}/waveform.json", out_json, move=True)
        png_size = await self.deps.store.put_file(f"{base}/waveform.png", out_png, move=True)
        rows: list[dict[str, Any]] = [
            {
                "name": "waveform",
                "kind": "waveform",
                "storage_key": f"{base}/waveform.json",
                "size": json_size,
                "codec": "application/json",
                "info": {"points": wave.points},
            },
            {
                "name": "waveform_png",
                "kind": "waveform_image",
                "storage_key": f"{base}/waveform.png",
                "size": png_size,
                "codec": "image/png",
            },
        ]

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, rows)

        return Outcome({"points": wave.points}, save)

    async def archive(self, ctx: StepContext) -> Outcome:
        ref = await ctx.read(current_source(ctx.claim.asset_id))
        out = ctx.workdir / "archive.flac"
        async with self.deps.store.local_path(ref.master_key) as path:
            proof = await archive_flac(
                self.deps.toolchain,
                path,
                out,
                duration_s=ref.duration_s,
                on_progress=progress_to(ctx),
            )
        key = rendition_key(ref.asset_id, "archive", "master.flac")
        size = await self.deps.store.put_file(key, out, move=True)
        figures = asdict(proof)
        rows: list[dict[str, Any]] = [
            {
                "name": "archive_flac",
                "kind": "archive",
                "storage_key": key,
                "size": size,
                "codec": "flac",
                "duration_s": ref.duration_s,
                "info": {"lossless": figures},
            }
        ]

        def save(session: Session) -> None:
            replace_renditions(session, ref.asset_id, ctx.claim.order_id, rows)
            merge_meta(session, ref.asset_id, lossless_archive=figures)

        return Outcome(figures, save)
