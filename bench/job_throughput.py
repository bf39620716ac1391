"""Work orders claimed and completed per second with no-op steps, by worker processes.

What it measures, all in one run on one machine:

* setup, untimed, before every run: a fresh state (PostgreSQL: one database made for this
  run of the script, migrated once, every table truncated before each run, then ``ANALYZE``;
  SQLite: a new migrated file in WAL mode), one owner and ``--orders`` assets in state
  ``processing``, each with a one-step graph (``noop`` on queue ``default``) added with
  ``JobEngine.enqueue_graph`` inside transactions, as the engine's tests do;
* the run: P worker processes (``multiprocessing`` with ``spawn``) each open their database
  connections, then wait at a barrier; the clock starts when the barrier opens and stops at
  the last completion (the one that makes the count of completions reach ``--orders``). Then
  every order must be ``succeeded`` after exactly one attempt and every asset ``ready``.

Two ways of driving the engine, each on PostgreSQL (``--pg-processes``, default 1, 2, 4) and
on SQLite (one file, WAL; ``--sqlite-processes``, default 1, 2):

* ``Worker``: the real ``ingestd.jobs.worker.Worker`` (``--concurrency`` steps at once per
  process, ``--poll-s``) with an ``InProcessDispatcher`` and a no-op ``Step``. Its loop claims
  one order at a time on a thread, runs each step as a task (a work directory made and removed,
  a heartbeat task started and cancelled) and completes it on a thread. Completions are counted
  in the dispatcher's ``announce``, which the worker calls after each committed completion.
* ``bare``: ``engine.claim`` then ``engine.complete`` in a plain loop per process, one
  connection, until a claim finds nothing: the engine's own cost with no event loop, threads
  or polling. Its figure is the ceiling the ``Worker`` figure can approach.

Per run: orders/s (``--orders`` ÷ wall seconds); the mean time inside ``engine.claim`` (of
the claims that got an order) and inside ``engine.complete``, measured around the calls in the
worker processes; claims that found nothing (the ``Worker`` retries after a step finishes or
``--poll-s``; SKIP LOCKED makes a claim skip rows other processes hold); CPU per order of the
worker processes (their own ``process_time`` from the barrier to the end), of the PostgreSQL
server (every process named ``postgres``, read from ``/proc`` just before the start and just
after the end; a backend that exits in between is missed, and none should) and of the whole
machine (``psutil.cpu_times``, all cores). PostgreSQL runs on this machine, so the workers
and the server share its cores.

Each of ``--repeat`` rounds runs every configuration once, in an order that reverses every
other round. The baseline is ``Worker`` with one process on PostgreSQL; every configuration's
ratio to it is taken per round, and medians are reported with every sample.

Run (from the repository root)::

    .venv/bin/python bench/job_throughput.py                          # 1000 orders, 3 rounds
    .venv/bin/python bench/job_throughput.py --orders 200 --repeat 1  # a quick run

It prints a table (medians and every sample) and a last line of JSON,
``{"figure": "job_throughput", ...}``. ``--pg`` names the PostgreSQL server (a database is
created there and dropped at the end); the SQLite files go under ``--work-dir``.
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
import shlex
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _common import (
    Row,
    add_work_dir_argument,
    exit_cleanly_on_sigterm,
    load_text,
    median,
    print_table,
    ratios,
    temporary_root,
)
from sqlalchemy import func, select, text

from ingestd.db.engine import Database
from ingestd.db.migrate import upgrade
from ingestd.db.models import Asset, Base, Owner, WorkOrder
from ingestd.db.types import new_id
from ingestd.domain.states import AssetStatus, OrderState
from ingestd.jobs.dispatch import InProcessDispatcher
from ingestd.jobs.engine import Claim, Hook, JobEngine, Ready
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext, Worker

PG_ADMIN = "postgresql://root@127.0.0.1:5432/test"
QUEUE = "default"
STEP = "noop"
GRAPH = Graph((StepSpec(STEP, queue=QUEUE, max_attempts=1),))
SEED_BATCH = 500  # assets per seeding transaction
START_TIMEOUT_S = 120.0  # for every process to import, connect and reach the barrier
RUN_TIMEOUT_S = 600.0
SETTLE_S = 1.0
MODES = ("worker", "bare")
BACKENDS = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


# -- the worker processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    url: str
    mode: str  # "worker" or "bare"
    index: int
    orders: int
    concurrency: int
    poll_s: float
    workdir: str


@dataclass
class ChildReport:
    index: int
    completed: int
    cpu_s: float  # this process, all its threads, from the barrier to its end
    end: float  # time.monotonic() of its last completion (bare) or when told to stop
    claim_s: list[float]  # inside engine.claim, claims that got an order
    empty_claims: int
    empty_claim_s: float  # inside engine.claim, claims that found nothing, in total
    complete_s: list[float]  # inside engine.complete


class TimedEngine(JobEngine):
    """The engine with the time spent inside ``claim`` and ``complete`` recorded (the calls
    run on several threads; ``list.append`` is atomic)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.claim_s: list[float] = []
        self.empty_claim_s: list[float] = []
        self.complete_s: list[float] = []

    def claim(self, worker_id: str, queues: Sequence[str]) -> Claim | None:
        started = time.perf_counter()
        claim = super().claim(worker_id, queues)
        (self.claim_s if claim else self.empty_claim_s).append(time.perf_counter() - started)
        return claim

    def complete(
        self, claim: Claim, result: dict[str, Any], hook: Hook | None = None
    ) -> list[Ready]:
        started = time.perf_counter()
        ready = super().complete(claim, result, hook)
        self.complete_s.append(time.perf_counter() - started)
        return ready

    def forget(self) -> None:
        self.claim_s.clear()
        self.empty_claim_s.clear()
        self.complete_s.clear()


class CountingDispatcher(InProcessDispatcher):
    """The worker announces after every committed completion: count them across processes;
    the process whose completion is the last one records the time and says so."""

    def __init__(
        self, total: int, counter: Synchronized[int], finished: Synchronized[float], done: Event
    ) -> None:
        super().__init__()
        self.total = total
        self.counter = counter
        self.finished = finished
        self.done = done
        self.completed = 0

    async def announce(self, ready: Sequence[Ready]) -> None:
        now = time.monotonic()
        await super().announce(ready)
        self.completed += 1
        with self.counter.get_lock():
            self.counter.value += 1
            last = self.counter.value == self.total
        if last:
            self.finished.value = now
            self.done.set()


async def noop(ctx: StepContext) -> Outcome:
    return Outcome()


def _warm_up(db: Database, engine: TimedEngine, connections: int) -> None:
    """Open the pool's connections and compile the claim query before the clock starts."""
    held = [db.engine.connect() for _ in range(connections)]
    for connection in held:
        connection.close()
    engine.claim("warm-up", ["bench-nothing-here"])
    engine.forget()


async def _run_worker(
    spec: ChildSpec, engine: TimedEngine, dispatcher: CountingDispatcher, stop: Event
) -> float:
    worker = Worker(
        engine,
        dispatcher,
        {STEP: Step(noop)},
        worker_id=f"bench-{spec.index}",
        queues=[QUEUE],
        concurrency=spec.concurrency,
        workdir=Path(spec.workdir),
        poll_s=spec.poll_s,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    await asyncio.to_thread(stop.wait)
    cpu = time.process_time()
    stopping.set()
    await task
    return cpu


def child_main(
    spec: ChildSpec,
    barrier: Barrier,
    stop: Event,
    done: Event,
    counter: Synchronized[int],
    finished: Synchronized[float],
    reports: Queue[ChildReport],
) -> None:
    logging.basicConfig(level=logging.WARNING)
    db = Database.from_url(spec.url)
    engine = TimedEngine(db)
    _warm_up(db, engine, spec.concurrency + 1 if spec.mode == "worker" else 1)
    dispatcher = CountingDispatcher(spec.orders, counter, finished, done)
    barrier.wait(START_TIMEOUT_S)
    cpu_before = time.process_time()
    if spec.mode == "worker":
        cpu_after = asyncio.run(_run_worker(spec, engine, dispatcher, stop))
        completed, end = dispatcher.completed, time.monotonic()
    else:
        completed = 0
        while (claim := engine.claim(f"bench-{spec.index}", [QUEUE])) is not None:
            engine.complete(claim, {})
            completed += 1
        end = time.monotonic()
        cpu_after = time.process_time()
    reports.put(
        ChildReport(
            index=spec.index,
            completed=completed,
            cpu_s=cpu_after - cpu_before,
            end=end,
            claim_s=engine.claim_s,
            empty_claims=len(engine.empty_claim_s),
            empty_claim_s=sum(engine.empty_claim_s),
            complete_s=engine.complete_s,
        )
    )
    # keep the connections (their server processes) until the parent has read their CPU
    stop.wait(RUN_TIMEOUT_S)
    db.dispose()


# -- databases --------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped at the end."""
    name = f"ingestd_bench_jobs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
            upgrade(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_postgres(url: str) -> None:
    db = Database.from_url(url)
    names = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
    try:
        with db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
    finally:
        db.dispose()


def fresh_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


def seed(url: str, orders: int) -> None:
    """One owner, ``orders`` processing assets, one ready ``noop`` order each."""
    db = Database.from_url(url)
    engine = JobEngine(db)
    try:
        with db.transaction() as session:
            owner = Owner(id=new_id("own"), name="bench")
            session.add(owner)
            owner_id = owner.id
        for first in range(0, orders, SEED_BATCH):
            with db.transaction() as session:
                assets = [
                    Asset(
                        id=new_id("as"),
                        owner_id=owner_id,
                        status=AssetStatus.PROCESSING.value,
                        meta={},
                    )
                    for _ in range(min(SEED_BATCH, orders - first))
                ]
                session.add_all(assets)
                session.flush()
                for asset in assets:
                    engine.enqueue_graph(session, asset.id, GRAPH)
        if db.dialect == "postgresql":
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    finally:
        db.dispose()


def check_all_done(url: str, orders: int) -> None:
    db = Database.from_url(url)
    try:
        with db.transaction() as session:
            succeeded = session.scalar(
                select(func.count())
                .select_from(WorkOrder)
                .where(WorkOrder.state == OrderState.SUCCEEDED.value, WorkOrder.attempts == 1)
            )
            ready = session.scalar(
                select(func.count())
                .select_from(Asset)
                .where(Asset.status == AssetStatus.READY.value)
            )
    finally:
        db.dispose()
    if succeeded != orders or ready != orders:
        raise RuntimeError(
            f"expected {orders} orders succeeded at the first attempt and {orders} assets "
            f"ready; found {succeeded} and {ready}"
        )


def postgres_cpu() -> dict[int, float]:
    """CPU-seconds so far of every process named ``postgres`` (server and backends)."""
    seen: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seen[process.pid] = float(times.user + times.system)
    return seen


def machine_busy() -> float:
    """CPU-seconds all cores have spent busy since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


# -- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    mode: str
    backend: str
    processes: int

    @property
    def name(self) -> str:
        what = "Worker" if self.mode == "worker" else "bare"
        plural = "es" if self.processes > 1 else ""
        return f"{what}, {BACKENDS[self.backend]}, {self.processes} process{plural}"


@dataclass
class Sample:
    wall_s: float
    orders_per_s: float
    claim_ms: float
    complete_ms: float
    empty_claims: int
    worker_cpu_ms: float  # per order
    postgres_cpu_ms: float | None  # per order
    machine_cpu_ms: float  # per order
    per_process: list[int] = field(default_factory=list)  # orders completed by each


def run_once(
    mp: SpawnContext, config: Config, url: str, args: argparse.Namespace, work: Path
) -> Sample:
    barrier = mp.Barrier(config.processes + 1)
    stop, done = mp.Event(), mp.Event()
    counter = mp.Value("q", 0)
    finished = mp.Value("d", 0.0)
    reports: Queue[ChildReport] = mp.Queue()
    processes: list[SpawnProcess] = []
    for index in range(config.processes):
        spec = ChildSpec(
            url=url,
            mode=config.mode,
            index=index,
            orders=args.orders,
            concurrency=args.concurrency,
            poll_s=args.poll_s,
            workdir=str(work / f"worker-{index}"),
        )
        process = mp.Process(
            target=child_main,
            args=(spec, barrier, stop, done, counter, finished, reports),
            daemon=True,
        )
        process.start()
        processes.append(process)
    collected: list[ChildReport] = []
    try:
        pg_before = postgres_cpu() if config.backend == "postgresql" else {}
        busy_before = machine_busy()
        barrier.wait(START_TIMEOUT_S)
        started = time.monotonic()
        if config.mode == "worker":
            while not done.wait(0.5):
                check_alive(processes, started)
            ended = finished.value
            busy_after = machine_busy()
            pg_after = postgres_cpu() if config.backend == "postgresql" else {}
            stop.set()
        while len(collected) < config.processes:
            with contextlib.suppress(Exception):
                collected.append(reports.get(timeout=0.5))
                continue
            check_alive(processes, started)
        if config.mode == "bare":
            ended = max(r.end for r in collected)
            busy_after = machine_busy()
            pg_after = postgres_cpu() if config.backend == "postgresql" else {}
            stop.set()
        for process in processes:
            process.join(30)
    finally:
        stop.set()
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    check_all_done(url, args.orders)
    wall = ended - started
    orders = args.orders
    claims = [s for r in collected for s in r.claim_s]
    completes = [s for r in collected for s in r.complete_s]
    pg_cpu = sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items())
    return Sample(
        wall_s=wall,
        orders_per_s=orders / wall,
        claim_ms=1000 * sum(claims) / max(1, len(claims)),
        complete_ms=1000 * sum(completes) / max(1, len(completes)),
        empty_claims=sum(r.empty_claims for r in collected),
        worker_cpu_ms=1000 * sum(r.cpu_s for r in collected) / orders,
        postgres_cpu_ms=1000 * pg_cpu / orders if config.backend == "postgresql" else None,
        machine_cpu_ms=1000 * (busy_after - busy_before) / orders,
        per_process=[r.completed for r in sorted(collected, key=lambda r: r.index)],
    )


def check_alive(
    processes: Sequence[SpawnProcess], started: float, timeout_s: float = RUN_TIMEOUT_S
) -> None:
    """Raise if a worker process died or the run is over its time."""
    for process in processes:
        if process.exitcode not in (None, 0):
            raise RuntimeError(f"worker process {process.name} exited with {process.exitcode}")
    if time.monotonic() - started > timeout_s:
        raise RuntimeError(f"the run did not finish within {timeout_s:.0f} s")


# -- the rounds -------------------------------------------------------------------------------


@dataclass
class Results:
    configs: list[Config]
    samples: dict[Config, list[Sample]]
    orders: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def configurations(args: argparse.Namespace) -> list[Config]:
    configs = []
    for mode in MODES:
        configs += [Config(mode, "postgresql", p) for p in args.pg_processes]
        configs += [Config(mode, "sqlite", p) for p in args.sqlite_processes]
    return configs


def measure(args: argparse.Namespace, root: Path, pg_url: str) -> Results:
    mp = multiprocessing.get_context("spawn")
    configs = configurations(args)
    results = Results(configs, {c: [] for c in configs}, load_before=os.getloadavg())
    width = max(len(c.name) for c in configs)
    for round_ in range(args.repeat):
        order = configs if round_ % 2 == 0 else configs[::-1]
        results.orders.append("forward" if round_ % 2 == 0 else "reversed")
        for config in order:
            work = root / f"run-{round_}-{config.mode}-{config.backend}-{config.processes}"
            work.mkdir()
            if config.backend == "postgresql":
                url = pg_url
                reset_postgres(url)
            else:
                url = fresh_sqlite(work / "ingestd.db")
            seed(url, args.orders)
            time.sleep(SETTLE_S)
            sample = run_once(mp, config, url, args, work)
            results.samples[config].append(sample)
            print(
                f"  round {round_ + 1}: {config.name:<{width}} {sample.orders_per_s:8.1f} "
                f"orders/s  {sample.wall_s:6.2f} s  per process {sample.per_process}",
                flush=True,
            )
    results.load_after = os.getloadavg()
    return results


# -- the report -------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: Results, command: str) -> None:
    baseline = Config("worker", "postgresql", 1)
    if baseline not in results.samples:
        raise SystemExit("the baseline (Worker, PostgreSQL, 1 process) was not measured")
    base = [s.orders_per_s for s in results.samples[baseline]]
    main: list[Row] = []
    detail: list[Row] = []
    figures: dict[str, Any] = {}
    for config in results.configs:
        samples = results.samples[config]
        rate = [s.orders_per_s for s in samples]
        against = ratios(rate, base)
        main.append((config.name, "ord/s", rate, ".1f"))
        main.append(("  ÷ baseline (Worker, PostgreSQL, 1)", "ratio", against, ".2f"))
        detail.append((config.name, "", [], ""))
        detail.append(
            ("  claim, mean (claims that got one)", "ms", [s.claim_ms for s in samples], ".2f")
        )
        detail.append(("  complete, mean", "ms", [s.complete_ms for s in samples], ".2f"))
        detail.append(
            ("  claims that found nothing", "count", [s.empty_claims for s in samples], ".0f")
        )
        detail.append(
            ("  worker processes CPU per order", "ms", [s.worker_cpu_ms for s in samples], ".2f")
        )
        pg = [s.postgres_cpu_ms for s in samples if s.postgres_cpu_ms is not None]
        if pg:
            detail.append(("  PostgreSQL server CPU per order", "ms", pg, ".2f"))
        detail.append(
            (
                "  machine CPU per order (every process)",
                "ms",
                [s.machine_cpu_ms for s in samples],
                ".2f",
            )
        )
        figures[f"{config.mode}/{config.backend}/{config.processes}"] = {
            "orders_per_s": round(median(rate), 1),
            "ratio": round(median(against), 3),
            "claim_ms": round(median([s.claim_ms for s in samples]), 3),
            "complete_ms": round(median([s.complete_ms for s in samples]), 3),
            "empty_claims": median([s.empty_claims for s in samples]),
            "worker_cpu_ms_per_order": round(median([s.worker_cpu_ms for s in samples]), 3),
            "postgres_cpu_ms_per_order": round(median(pg), 3) if pg else None,
            "machine_cpu_ms_per_order": round(median([s.machine_cpu_ms for s in samples]), 3),
            "samples": {
                "orders_per_s": [round(v, 1) for v in rate],
                "ratio": [round(v, 3) for v in against],
                "per_process": [s.per_process for s in samples],
            },
        }

    print()
    print(
        f"job_throughput: {args.orders} one-step no-op orders, {args.repeat} round(s) "
        f"({', '.join(results.orders)}); {os.cpu_count()} CPUs; Worker concurrency "
        f"{args.concurrency}, poll {args.poll_s:g} s; {server_version(args.pg)}"
    )
    print(
        "load average before/after:",
        load_text(results.load_before),
        "/",
        load_text(results.load_after),
    )
    print_table(main, label_width=44)
    print()
    print("where the time goes (inside engine calls, measured in the worker processes):")
    print_table(detail, label_width=44)
    print(
        "Worker: the real worker loop (claims on a thread, one at a time, steps as tasks). "
        "bare: claim + complete in a plain loop. PostgreSQL runs on this machine."
    )
    print(f"command: {command}")
    figure: dict[str, Any] = {
        "figure": "job_throughput",
        "orders": args.orders,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "poll_s": args.poll_s,
        "postgresql": server_version(args.pg),
        "baseline": "worker/postgresql/1",
        "configurations": figures,
        "load_average_before": [round(v, 2) for v in results.load_before],
        "load_average_after": [round(v, 2) for v in results.load_after],
        "python": platform.python_version(),
        "command": command,
    }
    print(json.dumps(figure))


def server_version(admin_url: str) -> str:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else 'unknown'}"


# -- main -------------------------------------------------------------------------------------


def _counts(text_: str) -> list[int]:
    try:
        counts = [int(part) for part in text_.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of process counts: {text_!r}") from exc
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"process counts must be at least 1: {text_!r}")
    return counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=1000, help="work orders per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (every configuration)")
    parser.add_argument(
        "--pg-processes", type=_counts, default=[1, 2, 4], help="PostgreSQL: processes, e.g. 1,2,4"
    )
    parser.add_argument(
        "--sqlite-processes", type=_counts, default=[1, 2], help="SQLite: processes, e.g. 1,2"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="Worker: steps at once")
    parser.add_argument("--poll-s", type=float, default=0.05, help="Worker: poll interval (s)")
    parser.add_argument(
        "--pg",
        default=os.environ.get("INGESTD_TEST_PG", PG_ADMIN),
        help="PostgreSQL server to create the benchmark's database on (default: %(default)s)",
    )
    add_work_dir_argument(parser, "SQLite files, worker directories")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.orders < 1 or args.concurrency < 1 or args.poll_s <= 0:
        parser.error("--repeat, --orders and --concurrency must be at least 1, --poll-s positive")
    if 1 not in args.pg_processes:
        parser.error("--pg-processes must include 1 (the baseline)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}", flush=True)
    with (
        temporary_root("ingestd-bench-jobs-", args.work_dir) as root,
        postgres_database(args.pg) as pg_url,
    ):
        print(f"work dir: {root}", flush=True)
        results = measure(args, root, pg_url)
        report(args, results, command)
        idle_polls(pg_url)


def idle_polls(url: str, claims: int = 2000) -> None:
    """What an idle worker's poll costs the server: claims on an empty queue, timed in one
    process, with the PostgreSQL server's CPU for them (the figure docs/scaling.md scales
    to a thousand workers)."""
    reset_postgres(url)
    db = Database.from_url(url)
    engine = JobEngine(db)
    try:
        engine.claim("idle", ["default", "encode"])  # connect first
        before = postgres_cpu()
        start = time.perf_counter()
        for _ in range(claims):
            if engine.claim("idle", ["default", "encode"]) is not None:
                raise SystemExit("the queue was not empty")
        wall = time.perf_counter() - start
        after = postgres_cpu()
    finally:
        db.dispose()
    server = sum(after[p] - before.get(p, 0.0) for p in after)
    print(
        f"\nidle polling, PostgreSQL: {claims} empty claims, {1000 * wall / claims:.2f} ms each"
        f" (one client), server CPU {1000 * server / claims:.3f} ms per empty claim",
        flush=True,
    )


if __name__ == "__main__":
    main()
