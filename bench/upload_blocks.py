"""Block upload throughput against a plain disk write, and what deduplication saves.

What it measures, all in one run on one machine (loopback HTTP, one disk):

* baseline: copying a random file to a new file on the same filesystem (read, write,
  fsync) → MB/s;
* upload 1: ``ingestd upload FILE --no-wait --json --parallel N`` of a fresh random file
  to an ``ingestd serve`` started here → wall seconds, MB/s, the ratio upload ÷ disk write,
  client CPU-seconds, server CPU-seconds and server peak RSS (sampled every 50 ms);
* upload 2: the same file again; the client declares its block hashes and the server
  should request none → seconds and the block bytes sent.

Bytes sent are counted twice: the loopback interface's received bytes during the upload
(all traffic, headers included; other loopback traffic on the machine adds to it) and the
block bytes the server recorded as received (``upload_parts`` with origin ``upload``, read
from the server's SQLite database; deduplicated blocks have origin ``dedup``).

The file, the copy and the server's ``--data-dir`` live in one temporary directory (under
``--work-dir``), so they share a disk. The server runs with ``INGESTD_QUEUES=bench-idle``:
no worker claims the processing work, so nothing competes with the measurement and the
uploaded blocks stay recorded for dedup. The client's wall time includes its start-up and
its hashing pass over the file, as a user would see it. MB are 10^6 bytes.

Run (from the repository root)::

    .venv/bin/python bench/upload_blocks.py                 # 1 GiB, --parallel 4, 3 repeats
    .venv/bin/python bench/upload_blocks.py --size 64M --repeat 1   # a quick run

It prints a table (medians and every sample) and a last line of JSON,
``{"figure": "upload_blocks", ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from _common import (
    COPY_BUFFER,
    MB,
    MIB,
    PeakRss,
    Server,
    add_ingestd_argument,
    children_cpu,
    clean_env,
    exit_cleanly_on_sigterm,
    filesystem_of,
    find_ingestd,
    human_bytes,
    load_text,
    median,
    parse_size,
    process_cpu,
    settle,
    temporary_root,
    write_random_file,
)

# -- files and the disk baseline -------------------------------------------------------------


def disk_write_seconds(src: Path, dest: Path) -> float:
    """Copy ``src`` to a new file ``dest`` (read, write, fsync): the plain-disk baseline."""
    buffer = bytearray(COPY_BUFFER)
    view = memoryview(buffer)
    started = time.perf_counter()
    with src.open("rb", buffering=0) as reader, dest.open("wb") as writer:
        while got := reader.readinto(buffer):
            writer.write(view[:got])
        writer.flush()
        os.fsync(writer.fileno())
    return time.perf_counter() - started


# -- one upload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadRun:
    seconds: float
    client_cpu_s: float
    server_cpu_s: float
    server_peak_rss: int
    loopback_bytes: int
    block_bytes_expected: int
    block_bytes_received: int | None  # recorded by the server as sent by the client
    block_bytes_deduplicated: int | None
    asset_id: str

    def mb_s(self, size: int) -> float:
        return size / MB / self.seconds


def _loopback_received() -> int:
    counters = psutil.net_io_counters(pernic=True)
    return int(counters["lo"].bytes_recv) if "lo" in counters else 0


def client_command(
    ingestd: Path, path: Path, url: str, key: str, parallel: int, block_size: int | None
) -> list[str]:
    command = [str(ingestd), "upload", str(path), "--server", url, "--key", key]
    command += ["--no-wait", "--json", "--parallel", str(parallel)]
    if block_size is not None:
        command += ["--block-size", str(block_size)]
    return command


def block_bytes_by_origin(database: Path, asset_id: str) -> dict[str, int] | None:
    """What the server recorded for the asset's upload: block bytes per origin."""
    query = (
        "SELECT p.origin, SUM(p.size) FROM upload_parts p"
        " JOIN upload_sessions u ON u.id = p.session_id"
        " JOIN sources s ON s.id = u.source_id"
        " WHERE s.asset_id = ? GROUP BY p.origin"
    )
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        ) as conn:
            rows = conn.execute(query, (asset_id,)).fetchall()
    except sqlite3.Error as exc:
        print(f"warning: cannot read block accounting from {database}: {exc}", file=sys.stderr)
        return None
    return {str(origin): int(total) for origin, total in rows}


def run_upload(
    ingestd: Path,
    path: Path,
    server: Server,
    *,
    parallel: int,
    block_size: int | None,
    expected_block_bytes: int,
    env: dict[str, str],
) -> UploadRun:
    command = client_command(ingestd, path, server.url, server.key, parallel, block_size)
    process = server.process
    sampler = PeakRss(process)
    cpu_before, server_cpu_before = children_cpu(), process_cpu(process)
    lo_before = _loopback_received()
    sampler.start()
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    finally:
        seconds = time.perf_counter() - started
        peak = sampler.finish()
    lo_after = _loopback_received()
    server_cpu = process_cpu(process) - server_cpu_before
    client_cpu = children_cpu() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(
            f"ingestd upload exited with {done.returncode}:\n{done.stderr[-2000:]}{done.stdout}"
        )
    asset = json.loads(done.stdout)
    asset_id = str(asset["id"])
    origins = block_bytes_by_origin(server.database, asset_id)
    return UploadRun(
        seconds=seconds,
        client_cpu_s=client_cpu,
        server_cpu_s=server_cpu,
        server_peak_rss=peak,
        loopback_bytes=lo_after - lo_before,
        block_bytes_expected=expected_block_bytes,
        block_bytes_received=None if origins is None else origins.get("upload", 0),
        block_bytes_deduplicated=None if origins is None else origins.get("dedup", 0),
        asset_id=asset_id,
    )


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Results:
    disk_write_s: list[float]
    first: list[UploadRun]
    second: list[UploadRun]
    server_idle_rss: int
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def measure(args: argparse.Namespace, root: Path, ingestd: Path) -> Results:
    size: int = args.size
    server = Server(ingestd, root / "data", root / "server.log")
    env = clean_env(INGESTD_CLIENT_STATE_DIR=str(root / "client-state"))
    results = Results([], [], [], 0, load_before=os.getloadavg())
    try:
        server.start()
        time.sleep(1.0)  # let start-up work (migrations, first scheduler tick) finish
        results.server_idle_rss = server.process.memory_info().rss
        print(f"server: {shlex.join(server.command)}  (INGESTD_QUEUES=bench-idle)")
        kept = root / "file-0.bin"
        for repeat in range(args.repeat):
            path = root / f"file-{repeat}.bin"
            write_random_file(path, size)
            settle()
            copy = root / "copy.bin"
            results.disk_write_s.append(disk_write_seconds(path, copy))
            copy.unlink()
            settle()
            run = run_upload(
                ingestd,
                path,
                server,
                parallel=args.parallel,
                block_size=args.block_size,
                expected_block_bytes=size,
                env=env,
            )
            results.first.append(run)
            settle()
            print(
                f"  repeat {repeat + 1}: disk write {size / MB / results.disk_write_s[-1]:.1f} "
                f"MB/s, upload 1 {run.mb_s(size):.1f} MB/s",
                flush=True,
            )
            if path != kept:
                path.unlink()
        for repeat in range(args.repeat):
            run = run_upload(
                ingestd,
                kept,
                server,
                parallel=args.parallel,
                block_size=args.block_size,
                expected_block_bytes=0,
                env=env,
            )
            results.second.append(run)
            settle()
            print(f"  repeat {repeat + 1}: upload 2 (same file) {run.seconds:.2f} s", flush=True)
    except Exception:
        tail = server.log_tail()
        if tail:
            print(f"--- server log tail ---\n{tail}\n---", file=sys.stderr)
        raise
    finally:
        server.stop()
    results.load_after = os.getloadavg()
    return results


def _optional(values: Sequence[int | None]) -> list[int] | None:
    present = [v for v in values if v is not None]
    return present if len(present) == len(values) else None


def report(args: argparse.Namespace, root: Path, results: Results, command: str) -> None:
    size: int = args.size
    disk = [size / MB / s for s in results.disk_write_s]
    up1 = [r.mb_s(size) for r in results.first]
    ratios = [u / d for u, d in zip(up1, disk, strict=True)]
    first, second = results.first, results.second
    rows: list[tuple[str, str, Sequence[float], str]] = [
        ("disk write (copy + fsync)", "MB/s", disk, ".1f"),
        ("upload 1 (new blocks)", "MB/s", up1, ".1f"),
        ("upload 1", "s", [r.seconds for r in first], ".2f"),
        ("upload 1 ÷ disk write", "ratio", ratios, ".2f"),
        ("upload 1 client CPU", "s", [r.client_cpu_s for r in first], ".2f"),
        ("upload 1 server CPU", "s", [r.server_cpu_s for r in first], ".2f"),
        ("upload 1 server peak RSS", "MiB", [r.server_peak_rss / MIB for r in first], ".1f"),
        ("upload 1 loopback bytes", "MiB", [r.loopback_bytes / MIB for r in first], ".1f"),
        ("upload 2 (same file)", "s", [r.seconds for r in second], ".2f"),
        ("upload 2 client CPU", "s", [r.client_cpu_s for r in second], ".2f"),
        ("upload 2 server CPU", "s", [r.server_cpu_s for r in second], ".2f"),
        ("upload 2 server peak RSS", "MiB", [r.server_peak_rss / MIB for r in second], ".1f"),
        ("upload 2 loopback bytes", "KiB", [r.loopback_bytes / 1024 for r in second], ".1f"),
    ]
    received1 = _optional([r.block_bytes_received for r in first])
    received2 = _optional([r.block_bytes_received for r in second])
    dedup2 = _optional([r.block_bytes_deduplicated for r in second])
    if received1 is not None:
        rows.append(("upload 1 block bytes received", "MiB", [b / MIB for b in received1], ".1f"))
    if received2 is not None:
        rows.append(("upload 2 block bytes received", "B", [float(b) for b in received2], ".0f"))
    if dedup2 is not None:
        rows.append(("upload 2 block bytes deduplicated", "MiB", [b / MIB for b in dedup2], ".1f"))

    print()
    print(
        f"upload_blocks: {human_bytes(size)} file, --parallel {args.parallel}, "
        f"block size {human_bytes(args.block_size or 8 * MIB)}, {args.repeat} repeat(s); "
        f"{os.cpu_count()} CPUs; {filesystem_of(root)}"
    )
    print(f"server idle RSS before the uploads: {results.server_idle_rss / MIB:.1f} MiB")
    # Other work on the machine competes for CPU and adds to the loopback counters.
    print(
        "load average before/after:",
        load_text(results.load_before),
        "/",
        load_text(results.load_after),
    )
    print(f"{'measure':<34} {'unit':>5} {'median':>10}  samples")
    for label, unit, values, spec in rows:
        samples = ", ".join(format(v, spec) for v in values)
        print(f"{label:<34} {unit:>5} {format(median(values), spec):>10}  [{samples}]")
    print(f"expected block bytes: upload 1 {size} (all new), upload 2 0 (all deduplicated)")
    if received2 is not None and any(received2):
        print("WARNING: the server received block bytes on upload 2: dedup did not apply")
    print(f"command: {command}")

    figure: dict[str, Any] = {
        "figure": "upload_blocks",
        "size_bytes": size,
        "block_size": args.block_size or 8 * MIB,
        "parallel": args.parallel,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "filesystem": filesystem_of(root),
        "disk_write_mb_s": round(median(disk), 1),
        "upload1_mb_s": round(median(up1), 1),
        "upload1_s": round(median([r.seconds for r in first]), 3),
        "upload1_to_disk_ratio": round(median(ratios), 3),
        "upload1_client_cpu_s": round(median([r.client_cpu_s for r in first]), 2),
        "upload1_server_cpu_s": round(median([r.server_cpu_s for r in first]), 2),
        "upload1_server_peak_rss_mib": round(median([r.server_peak_rss / MIB for r in first]), 1),
        "server_idle_rss_mib": round(results.server_idle_rss / MIB, 1),
        "upload1_loopback_bytes": int(median([r.loopback_bytes for r in first])),
        "upload1_block_bytes_expected": size,
        "upload1_block_bytes_received": None if received1 is None else int(median(received1)),
        "upload2_s": round(median([r.seconds for r in second]), 3),
        "upload2_client_cpu_s": round(median([r.client_cpu_s for r in second]), 2),
        "upload2_server_cpu_s": round(median([r.server_cpu_s for r in second]), 2),
        "upload2_loopback_bytes": int(median([r.loopback_bytes for r in second])),
        "upload2_block_bytes_expected": 0,
        "upload2_block_bytes_received": None if received2 is None else int(median(received2)),
        "samples": {
            "disk_write_mb_s": [round(v, 1) for v in disk],
            "upload1_mb_s": [round(v, 1) for v in up1],
            "upload1_s": [round(r.seconds, 3) for r in first],
            "upload1_server_peak_rss_mib": [round(r.server_peak_rss / MIB, 1) for r in first],
            "upload1_loopback_bytes": [r.loopback_bytes for r in first],
            "upload2_s": [round(r.seconds, 3) for r in second],
            "upload2_loopback_bytes": [r.loopback_bytes for r in second],
            "upload2_block_bytes_received": received2,
        },
        "load_average_before": [round(v, 2) for v in results.load_before],
        "load_average_after": [round(v, 2) for v in results.load_after],
        "python": platform.python_version(),
        "command": command,
    }
    print(json.dumps(figure))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="e.g. 64M, 1G")
    parser.add_argument("--parallel", type=int, default=4, help="ingestd upload --parallel")
    parser.add_argument("--block-size", type=parse_size, default=None, help="default: 8M")
    parser.add_argument("--repeat", type=int, default=3, help="samples per measurement")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the temporary directory goes (file, copy and server data share it)",
    )
    add_ingestd_argument(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.parallel < 1:
        parser.error("--repeat and --parallel must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    command = shlex.join([sys.executable, *sys.argv])
    ingestd = find_ingestd(args.ingestd)
    with temporary_root("ingestd-bench-", args.work_dir) as root:
        print(f"command: {command}")
        print(f"work dir: {root} ({filesystem_of(root)})")
        shown = client_command(
            ingestd,
            root / "file-N.bin",
            "http://127.0.0.1:PORT",
            "KEY",
            args.parallel,
            args.block_size,
        )
        print(f"client: {shlex.join(shown)}  (KEY from <data-dir>/local-key)")
        results = measure(args, root, ingestd)
        report(args, root, results, command)


if __name__ == "__main__":
    main()
