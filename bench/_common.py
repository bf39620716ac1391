"""What the bench scripts share.

Finding ingestd, temporary roots, sizes, random files, medians, clean exits, an
``ingestd serve`` subprocess with its CPU and peak-RSS sampling, commands timed with the
CPU of their whole process tree, a per-process CPU sampler read from ``/proc``, and the
printing of a table of medians and samples.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Generic, Protocol, TypeVar

import psutil

MB = 1_000_000
MIB = 1 << 20
COPY_BUFFER = 8 * MIB
RSS_SAMPLE_S = 0.05
HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def find_ingestd(explicit: Path | None) -> Path:
    """The ingestd executable: as given, else beside this Python, else on PATH."""
    if explicit is not None:
        return explicit
    beside = Path(sys.executable).with_name("ingestd")
    if beside.exists():
        return beside
    found = shutil.which("ingestd")
    if found is None:
        raise SystemExit("cannot find the ingestd executable; pass --ingestd")
    return Path(found)


@contextmanager
def temporary_root(prefix: str, parent: Path | None) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so finally blocks stop servers and remove files."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def load_text(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def parse_size(text: str) -> int:
    """``1G``, ``64M``, ``512K``, ``1GiB`` or a plain number of bytes (binary multiples)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _SUFFIXES else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * _SUFFIXES[unit])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from exc
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def write_random_file(path: Path, size: int) -> str:
    """Fresh random bytes (no block repeats, so nothing deduplicates), flushed to disk.

    Returns the file's SHA-256 (hex), computed while writing.
    """
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(COPY_BUFFER, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of a file, read ``COPY_BUFFER`` bytes at a time."""
    digest = hashlib.sha256()
    buffer = bytearray(COPY_BUFFER)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as reader:
        while got := reader.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()


def settle(quiet_s: float = 0.0) -> None:
    """Write back dirty pages between phases so one phase's writeback does not slow the next,
    then wait ``quiet_s`` seconds for the machine to go quiet."""
    os.sync()
    if quiet_s > 0:
        time.sleep(quiet_s)


def filesystem_of(path: Path) -> str:
    best: Any = None
    resolved = str(path.resolve())
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > len(best.mountpoint)):
            best = part
    return "unknown" if best is None else f"{best.device} ({best.fstype}) on {best.mountpoint}"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any ``INGESTD_*`` (no stray database or data dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(extra)
    return env


class ServerProcess:
    """A server in a subprocess, its output in a log file: start, wait until ready, stop."""

    name = "server"

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> psutil.Process:
        assert self._popen is not None
        return psutil.Process(self._popen.pid)

    def _launch(self, env: dict[str, str], *, cwd: Path | None = None) -> None:
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                self.command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll ``ready`` every 0.1 s for ``HEALTH_TIMEOUT_S``; fail early if the server exits."""
        assert self._popen is not None
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._popen.returncode}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not {what} within {HEALTH_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
        if self._popen is None or self._popen.poll() is not None:
            return
        self._popen.send_signal(signal.SIGTERM)
        try:
            self._popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def http_ok(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> bool:
    """Whether ``url`` answers 2xx within 2 s."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return bool(200 <= answer.status < 300)
    except (urllib.error.URLError, OSError):
        return False


class Server(ServerProcess):
    """``ingestd serve`` in a subprocess on a free loopback port, with its own data dir.

    It runs with ``INGESTD_QUEUES=bench-idle``: no worker claims the processing work, so
    nothing competes with the measurement. Its API key is read from ``<data-dir>/local-key``.
    """

    name = "ingestd serve"

    def __init__(self, ingestd: Path, data_dir: Path, log_path: Path) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        command = [str(ingestd), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__([*command, "--data-dir", str(data_dir)], log_path)
        self.key = ""

    @property
    def database(self) -> Path:
        return self.data_dir / "ingestd.db"

    def start(self) -> None:
        self._launch(clean_env(INGESTD_QUEUES="bench-idle"))
        key_file = self.data_dir / "local-key"
        self._wait_until(
            lambda: http_ok(f"{self.url}/health") and key_file.exists(), "answer /health"
        )
        self.key = key_file.read_text(encoding="utf-8").strip()


def children_cpu() -> float:
    """User + system CPU-seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree(process: psutil.Process, include_children: bool) -> list[psutil.Process]:
    if not include_children:
        return [process]
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return [process]


def process_rss(process: psutil.Process, include_children: bool = False) -> int:
    """RSS of the process, plus that of its live descendants if asked."""
    total = 0
    for member in _tree(process, include_children):
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def process_cpu(process: psutil.Process, include_children: bool = False) -> float:
    """User + system CPU-seconds of the process; with children: its waited-for children's
    and its live descendants' too (a descendant that exits unwaited between two readings is
    missed)."""
    times = process.cpu_times()
    total = float(times.user + times.system)
    if include_children:
        total += float(times.children_user + times.children_system)
        for member in _tree(process, True)[1:]:
            with contextlib.suppress(psutil.Error):
                child = member.cpu_times()
                total += float(child.user + child.system)
    return total


class PeakRss(threading.Thread):
    """Samples a process's RSS every ``RSS_SAMPLE_S`` until stopped; keeps the peak.

    With ``include_children`` each sample is the sum over the process and its descendants.
    """

    def __init__(self, process: psutil.Process, include_children: bool = False) -> None:
        super().__init__(daemon=True)
        self._process = process
        self._include_children = include_children
        self._stop_event = threading.Event()
        self.peak = 0
        self.samples = 0

    def _sample(self) -> None:
        rss = process_rss(self._process, self._include_children)
        if rss:
            self.peak = max(self.peak, rss)
            self.samples += 1

    def run(self) -> None:
        self._sample()
        while not self._stop_event.wait(RSS_SAMPLE_S):
            self._sample()

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        self._sample()
        return self.peak


def add_ingestd_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ingestd",
        type=Path,
        default=None,
        help="the ingestd executable (default: next to this Python, else on PATH)",
    )


def add_work_dir_argument(parser: argparse.ArgumentParser, holds: str) -> None:
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help=f"where the temporary directory goes ({holds})",
    )


# -- commands timed with their process tree --------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One command run to its end: wall seconds, CPU-seconds (user + system) and the
    system part, of the command and every descendant that was waited for; its output."""

    wall_s: float
    cpu_s: float
    sys_s: float
    stdout: str
    stderr: str


def run_measured(
    command: Sequence[str],
    env: dict[str, str],
    *,
    watch: Callable[[int], AbstractContextManager[Any]] | None = None,
) -> Measured:
    """Runs ``command`` with its output captured; CPU is the ``RUSAGE_CHILDREN`` difference
    around it, so nothing else in this process may reap children meanwhile. ``watch(pid)``,
    if given, is entered while the command runs (a sampler, say).

    Raises ``RuntimeError`` with the tails of its output when it exits non-zero.
    """
    start_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with subprocess.Popen(
        list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        with watch(child.pid) if watch is not None else contextlib.nullcontext():
            out, err = child.communicate()
        code = child.returncode
    elapsed = time.perf_counter() - start
    end_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        name = Path(command[0]).name
        raise RuntimeError(f"{name} exited with {code}:\n{err[-3000:]}{out[-2000:]}")
    system = end_usage.ru_stime - start_usage.ru_stime
    user = end_usage.ru_utime - start_usage.ru_utime
    return Measured(elapsed, user + system, system, out, err)


def tool_version(binary: str) -> str:
    """``ffmpeg 7.1`` from the first line of ``binary -version``."""
    done = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False)
    words = (done.stdout.splitlines() or [""])[0].split()
    if len(words) >= 3 and words[1] == "version":
        return f"{words[0]} {words[2]}"
    return f"{Path(binary).name} (unknown version)"


def stored_utc(text: str) -> datetime:
    """A timestamp read back from ingestd's SQLite database (UTC; the offset is dropped)."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# -- per-process CPU of a process tree, from /proc -------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class SampledProcess:
    """A process seen by :class:`ProcessTree`: its command line (as last read), when it was
    first and last seen (``time.perf_counter``) and its own CPU-seconds at the last reading."""

    pid: int
    argv: list[str]
    first_seen: float
    last_seen: float
    cpu_s: float = 0.0


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """Parent pid and own CPU-seconds (user + system, all threads) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _proc_argv(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class ProcessTree:
    """Every ``interval_s``, reads ``/proc`` for a process and all its descendants: the CPU
    each has used so far and its command line. Cheap (a directory listing and two small reads
    per live process per tick), so it can watch a benchmarked command without competing with it.

    A process's CPU after its last reading is missed: at most ``interval_s`` times its threads
    busy, so a process shorter than ``interval_s`` may be missed entirely. Linux only.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.processes: dict[int, SampledProcess] = {}
        self.ticks = 0
        self.sampler_cpu_s = 0.0  # the sampling thread's own CPU
        self._root = 0
        self._others: set[int] = set()  # pids known not to be in the tree
        self._stop = threading.Event()

    @contextmanager
    def watching(self, pid: int) -> Iterator[ProcessTree]:
        self._root = pid
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        while True:
            self._tick()
            if self._stop.wait(self.interval_s):
                break
        self.sampler_cpu_s = time.thread_time()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.ticks += 1
        listed = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        self._others &= listed
        parents: dict[int, int] = {}
        for pid in listed - self._others - self.processes.keys():
            stat = _proc_stat(pid)
            if stat is not None:
                parents[pid] = stat[0]
        added = True
        while added:  # a grandchild may be listed before its parent joins the tree
            added = False
            for pid, parent in list(parents.items()):
                if pid == self._root or parent in self.processes:
                    self.processes[pid] = SampledProcess(pid, [], now, now)
                    del parents[pid]
                    added = True
        self._others |= parents.keys()
        for pid in listed & self.processes.keys():
            stat, argv = _proc_stat(pid), _proc_argv(pid)
            if stat is None or argv is None:
                continue
            record = self.processes[pid]
            record.last_seen = now
            record.cpu_s = max(record.cpu_s, stat[1])
            if argv:  # a zombie (exited, not yet reaped) reads as an empty command line
                record.argv = argv


# -- rounds of competing runs -----------------------------------------------------------------


class TimedSample(Protocol):
    @property
    def wall_s(self) -> float: ...
    @property
    def cpu_s(self) -> float: ...


SampleT = TypeVar("SampleT", bound=TimedSample)


@dataclass
class Rounds(Generic[SampleT]):
    """Samples per contender (in round order), which ran first in each round, and the load
    average around all of it."""

    samples: dict[str, list[SampleT]] = field(default_factory=dict)
    orders: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def run_rounds(
    repeat: int,
    root: Path,
    contenders: Mapping[str, Callable[[Path], SampleT]],
    quiet_s: float = 1.0,
) -> Rounds[SampleT]:
    """``repeat`` rounds in which every contender runs once, in turn; the order reverses
    every other round so that neither always goes first. Each run gets a fresh work
    directory under ``root``, removed after it; before each, :func:`settle` (``quiet_s``)."""
    rounds: Rounds[SampleT] = Rounds({name: [] for name in contenders})
    rounds.load_before = os.getloadavg()
    names = list(contenders)
    width = max(map(len, names))
    for index in range(repeat):
        order = names if index % 2 == 0 else names[::-1]
        rounds.orders.append(" then ".join(order))
        for name in order:
            work = root / f"{name}-{index}"
            settle(quiet_s)
            try:
                sample = contenders[name](work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            rounds.samples[name].append(sample)
            print(
                f"  round {index + 1}: {name:<{width}} {sample.wall_s:8.2f} s wall "
                f"{sample.cpu_s:8.2f} CPU-s",
                flush=True,
            )
    rounds.load_after = os.getloadavg()
    return rounds


def ordered(seen: set[str], first: Sequence[str]) -> list[str]:
    """``first`` (those seen), then the rest of ``seen`` sorted."""
    return [*(name for name in first if name in seen), *sorted(seen - set(first))]


# -- reporting --------------------------------------------------------------------------------


def ratios(top: Sequence[float], bottom: Sequence[float]) -> list[float]:
    """Element-wise ``top / bottom`` (one ratio per round)."""
    return [t / b for t, b in zip(top, bottom, strict=True)]


Row = tuple[str, str, Sequence[float], str]  # label, unit, samples, format


def print_table(rows: Sequence[Row], label_width: int = 40) -> None:
    """One line per measure: its median, then every sample; a row without samples is a
    heading."""
    print(f"{'measure':<{label_width}} {'unit':>6} {'median':>8}  samples")
    for label, unit, values, spec in rows:
        if not values:
            print(label)
            continue
        listed = ", ".join(format(v, spec) for v in values)
        middle = format(median(values), spec)
        print(f"{label:<{label_width}} {unit:>6} {middle:>8}  [{listed}]")
