"""Multipart upload throughput to S3: boto3 against obstore, on one SeaweedFS server.

What it measures, in one run on one machine: a random file (``--size``, 512 MiB by
default) uploaded as a multipart upload of ``--part-size`` parts (8 MiB), ``--concurrency``
parts at once (8), by

* boto3: ``client.upload_file`` with a ``TransferConfig`` of that part size and
  concurrency (the baseline; what ``S3Store.put_file`` does);
* obstore: ``obstore.put(store, key, path, use_multipart=True, chunk_size=…,
  max_concurrency=…)`` on an ``obstore.store.S3Store``.

Each run uploads to a new key; the runs alternate (the order reverses every other round).
Reported: wall seconds, MB/s (10^6 bytes), the ratio obstore ÷ boto3 of the MB/s medians,
and this process's peak RSS during each run (sampled every 50 ms; the server is a separate
process and is not counted). The server (``weed mini`` from the venv, loopback only) and the
file share the temporary directory under ``--work-dir``; the server's CPU competes with the
client's on the same machine.

Run (from the repository root)::

    .venv/bin/python bench/s3_multipart.py                  # 512 MiB, 3 repeats
    .venv/bin/python bench/s3_multipart.py --size 64M --repeat 1   # a quick run

The last line is JSON, ``{"figure": "s3_multipart", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import obstore
import psutil
from _common import (
    MB,
    MIB,
    PeakRss,
    add_work_dir_argument,
    exit_cleanly_on_sigterm,
    human_bytes,
    median,
    parse_size,
    print_table,
    ratios,
    run_rounds,
    temporary_root,
    write_random_file,
)
from boto3.s3.transfer import TransferConfig
from obstore.store import S3Store as ObS3Store

from ingestd.testing.seaweed import S3Endpoint, running_seaweed

BUCKET = "bench"


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float
    peak_rss: int


def boto3_upload(endpoint: S3Endpoint, part: int, concurrency: int) -> Callable[[Path], None]:
    client = endpoint.client()
    config = TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=concurrency,
        use_threads=True,
    )

    def upload(path: Path) -> None:
        client.upload_file(str(path), BUCKET, f"boto3/{uuid.uuid4().hex}", Config=config)

    return upload


def obstore_upload(endpoint: S3Endpoint, part: int, concurrency: int) -> Callable[[Path], None]:
    store = ObS3Store(
        BUCKET,
        endpoint=endpoint.endpoint_url,
        access_key_id=endpoint.access_key,
        secret_access_key=endpoint.secret_key,
        region=endpoint.region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def upload(path: Path) -> None:
        obstore.put(
            store,
            f"obstore/{uuid.uuid4().hex}",
            path,
            use_multipart=True,
            chunk_size=part,
            max_concurrency=concurrency,
        )

    return upload


def measured(upload: Callable[[Path], None], src: Path) -> Callable[[Path], Sample]:
    me = psutil.Process()

    def run(work: Path) -> Sample:
        sampler = PeakRss(me)
        sampler.start()
        cpu = time.process_time()
        start = time.perf_counter()
        try:
            upload(src)
        finally:
            wall = time.perf_counter() - start
            peak = sampler.finish()
        return Sample(wall, time.process_time() - cpu, peak)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"))
    parser.add_argument("--part-size", type=parse_size, default=parse_size("8M"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    add_work_dir_argument(parser, "the file and the server's data")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()

    with temporary_root("ingestd-bench-s3-", args.work_dir) as root:
        src = root / "source.bin"
        write_random_file(src, args.size)
        with running_seaweed(root / "server") as endpoint:
            endpoint.make_bucket(BUCKET)
            contenders = {
                "boto3": measured(boto3_upload(endpoint, args.part_size, args.concurrency), src),
                "obstore": measured(
                    obstore_upload(endpoint, args.part_size, args.concurrency), src
                ),
            }
            print(
                f"upload {human_bytes(args.size)} in {human_bytes(args.part_size)} parts, "
                f"{args.concurrency} at once, {args.repeat} rounds",
                flush=True,
            )
            rounds = run_rounds(args.repeat, root / "runs", contenders, quiet_s=0.5)

    rate = {
        name: [args.size / MB / s.wall_s for s in samples]
        for name, samples in rounds.samples.items()
    }
    rss = {name: [s.peak_rss / MIB for s in samples] for name, samples in rounds.samples.items()}
    cpu = {name: [s.cpu_s for s in samples] for name, samples in rounds.samples.items()}
    rows = []
    for name in ("boto3", "obstore"):
        rows += [
            (f"{name} throughput", "MB/s", rate[name], ".1f"),
            (f"{name} client CPU", "CPU-s", cpu[name], ".2f"),
            (f"{name} client peak RSS", "MiB", rss[name], ".0f"),
        ]
    per_round = ratios(rate["obstore"], rate["boto3"])
    rows.append(("obstore / boto3 (MB/s)", "x", per_round, ".2f"))
    print_table(rows)
    ratio = median(rate["obstore"]) / median(rate["boto3"])
    print(f"ratio of medians obstore/boto3: {ratio:.2f}")
    print(
        json.dumps(
            {
                "figure": "s3_multipart",
                "size": args.size,
                "part_size": args.part_size,
                "concurrency": args.concurrency,
                "repeat": args.repeat,
                "boto3_mb_s": round(median(rate["boto3"]), 1),
                "obstore_mb_s": round(median(rate["obstore"]), 1),
                "ratio_obstore_boto3": round(ratio, 3),
                "boto3_peak_rss_mib": round(median(rss["boto3"])),
                "obstore_peak_rss_mib": round(median(rss["obstore"])),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "boto3": boto3.__version__,
                "obstore": obstore.__version__,
                "load": [rounds.load_before, rounds.load_after],
                "orders": rounds.orders,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
