"""One large FITS cube through the service, then the same bytes again.

What it measures, in one process (SQLite, the local store, one in-process worker running one
step at a time), on a float32 cube written once by astropy with CHECKSUM/DATASUM
(``--shape``, default 100x800x1000, about 320 MB):

* first ingest: a path ingest order (the file copied into the store, hashed) up to the
  asset being ready; the
  seconds of each work order (``started_at`` to ``finished_at``): ``validate`` (headers,
  checksums verified over every data unit, content keys), ``fits_metadata``,
  ``fits_previews`` (PNG, thumbnail, the movie of every plane through ffmpeg);
* re-ingest of the unchanged file through path ingestion (``ingestd ingest`` does the same):
  the order, the copy of the file into the store with its SHA-256, validation; the goal:
  only that checksum work runs, the metadata and preview steps are ``skipped``. The
  baseline printed beside it is the first ingest's total, so the ratio is the share of the
  work that re-ingesting still does.

Run (from the repository root)::

    .venv/bin/python bench/fits_ingest.py
    .venv/bin/python bench/fits_ingest.py --shape 20x400x500    # a quick run

Temporary files go under ``--work-dir`` (default: the system temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_work_dir_argument, exit_cleanly_on_sigterm, human_bytes, temporary_root
from astropy.io import fits
from sqlalchemy import select

from ingestd.bootstrap import Services, build
from ingestd.cli.orders import ingest_paths
from ingestd.db.models import WorkOrder
from ingestd.settings import Settings


def write_cube(path: Path, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(7)
    planes, rows, columns = shape
    base = np.linspace(0, 1000, rows * columns, dtype=np.float32).reshape(rows, columns)
    cube = np.empty(shape, dtype=np.float32)
    for k in range(planes):
        cube[k] = base * (1 + k / planes) + rng.normal(0, 5, (rows, columns)).astype(np.float32)
    header = fits.Header()
    header.update({"INSTRUME": "BENCH", "CTYPE3": "WAVE", "CUNIT3": "Angstrom", "CRVAL3": 6173.0})
    fits.PrimaryHDU(cube, header=header).writeto(path, overwrite=True, checksum=True)


def orders(svc: Services, asset_id: str, after: float) -> dict[str, dict[str, Any]]:
    with svc.db.transaction() as session:
        rows = session.scalars(
            select(WorkOrder).where(WorkOrder.asset_id == asset_id).order_by(WorkOrder.created_at)
        ).all()
        out: dict[str, dict[str, Any]] = {}
        for o in rows:
            if o.created_at.timestamp() < after:
                continue
            seconds = None
            if o.started_at and o.finished_at:
                seconds = (o.finished_at - o.started_at).total_seconds()
            out[o.step] = {"state": o.state, "seconds": seconds}
        return out


async def run(work: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    cube = work / "cube.fits"
    start = time.perf_counter()
    write_cube(cube, shape)
    print(
        f"cube {shape} written: {human_bytes(cube.stat().st_size)} "
        f"in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    settings = Settings(data_dir=work / "data", worker_concurrency=1, poll_s=0.05)
    svc = build(settings)
    await svc.start()
    try:
        owner = svc.keys.create("bench").owner_id
        # path ingestion, as `ingestd ingest cube.fits` does it: an order, a copy of the file
        # into the store (hashed), validation, then the FITS steps; and the same path again
        t0 = time.perf_counter()
        [first_run] = await ingest_paths(svc, owner, [cube], wait=True)
        first_total = time.perf_counter() - t0
        asset_id = first_run["id"]
        if first_run["status"] != "ready":
            raise RuntimeError(f"first ingest: {first_run}")
        first = orders(svc, asset_id, 0)
        marker = time.time()
        t1 = time.perf_counter()
        [second_run] = await ingest_paths(svc, owner, [cube], wait=True)
        second_total = time.perf_counter() - t1
        if second_run["id"] != asset_id or second_run["status"] != "ready":
            raise RuntimeError(f"re-ingest: {second_run}")
        second = orders(svc, asset_id, marker - 1)
        # the floor: copying the file once and hashing it, in the same run
        t2 = time.perf_counter()
        await asyncio.to_thread(copy_and_hash, cube, work / "copy.fits")
        floor = time.perf_counter() - t2
    finally:
        await svc.aclose()
        svc.close()
    return {
        "bytes": cube.stat().st_size,
        "first": first,
        "first_total_s": first_total,
        "second": second,
        "second_total_s": second_total,
        "copy_and_hash_s": floor,
    }


def copy_and_hash(src: Path, dst: Path) -> str:
    """What re-ingesting cannot avoid: read the file, store a copy, hash it."""
    digest = hashlib.sha256()
    with src.open("rb") as r, dst.open("wb") as w:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            w.write(chunk)
        w.flush()
        os.fsync(w.fileno())
    dst.unlink()
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="100x800x1000", help="planes x rows x columns")
    add_work_dir_argument(parser, "the cube, the database and the store")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    assert len(shape) == 3
    exit_cleanly_on_sigterm()
    with temporary_root("fits-bench-", args.work_dir) as root:
        figures = asyncio.run(run(root, shape))  # type: ignore[arg-type]
    print(f"{'step':<16} {'first ingest':>14} {'re-ingest':>22}")
    for step in ("validate", "fits_metadata", "fits_previews"):
        a, b = figures["first"].get(step, {}), figures["second"].get(step, {})
        first = f"{a.get('seconds') or 0:.2f} s"
        again = b.get("state", "-") if b.get("state") != "succeeded" else f"{b['seconds']:.2f} s"
        print(f"{step:<16} {first:>14} {again:>22}")
    ratio = figures["second_total_s"] / figures["first_total_s"]
    print(f"{'whole':<16} {figures['first_total_s']:>12.2f} s {figures['second_total_s']:>20.2f} s")
    print(f"re-ingest / first ingest: {ratio:.3f}")
    floor = figures["copy_and_hash_s"]
    print(
        f"baseline, one copy + SHA-256 of the file: {floor:.2f} s; "
        f"re-ingest / baseline: {figures['second_total_s'] / floor:.2f}"
    )
    print(json.dumps({"figure": "fits_ingest", **figures}, default=str))


if __name__ == "__main__":
    main()
