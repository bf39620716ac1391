"""tus 1.0 upload throughput: ingestd against the reference Node tus server.

What it measures, all in one run on one machine (loopback HTTP, one disk):

* servers: ``ingestd serve`` (its tus endpoint, ``POST/HEAD/PATCH <url>/files/``) and the
  reference Node server, ``@tus/server`` with a ``@tus/file-store`` (``bench/node/server.mjs``),
  each started here on a free loopback port; ingestd's ``--data-dir`` and the FileStore
  directory are in one temporary directory (under ``--work-dir``), so they share a disk;
* clients: ``tus-js-client`` in Node (``bench/node/upload.mjs``: a creation ``POST`` then one
  ``PATCH`` per ``--chunk-size``, default 8 MiB, read from disk as it goes), and curl: a
  creation ``POST``, then ONE ``PATCH`` of the whole file (``curl -T FILE -X PATCH``,
  ``Upload-Offset: 0``, ``Content-Type: application/offset+octet-stream``);
* for each server and client: the upload's seconds (from the creation request to the last
  response, as the client times it: tus-js-client's own clock, curl's ``time_total`` of both
  requests) → MB/s; the wall time including the client's start-up; the client's CPU-seconds;
  the server's CPU-seconds during the upload (psutil, user + system; for ingestd its child
  processes too); the server's peak RSS during the upload (sampled every 50 ms; for ingestd
  the sum over its process tree, for Node the node process) and its idle RSS before the
  first upload; and the ratio ingestd ÷ Node of MB/s per client, taken per repeat.

Every repeat and client gets a fresh random file, uploaded to each server (which goes first
alternates between repeats), so ingestd never sees the same bytes twice. After each upload
the stored bytes are checked: for Node, the SHA-256 of the file in the FileStore directory
(then deleted, to free the disk); for ingestd, a final ``HEAD`` must report
``Upload-Offset`` equal to the size, and the source row in ``<data-dir>/ingestd.db``
(``sources.sha256``, ``sources.size``) must match the file. ingestd runs with
``INGESTD_QUEUES=bench-idle`` so no worker competes with the measurement. Dirty pages are
written back (``sync``) between uploads, not inside them: a server that does not fsync is
not charged for its writeback. At the end it prints what ingestd's data dir holds on disk
(one copy per upload is expected). MB are 10^6 bytes.

Run (from the repository root)::

    .venv/bin/python bench/tus_throughput.py                          # 1 GiB, 3 repeats
    .venv/bin/python bench/tus_throughput.py --size 64M --repeat 1    # a quick run
    .venv/bin/python bench/tus_throughput.py --servers node --clients curl
    .venv/bin/python bench/tus_throughput.py --big    # 10 GiB, curl → ingestd: its peak RSS

``--big`` is ``--size 10G --servers ingestd --clients curl --repeat 1``. The Node packages
are pinned in ``bench/node/package-lock.json``; when ``bench/node/node_modules`` is missing
the script runs ``npm ci --prefix bench/node`` first. It prints a table (medians and every
sample) and a last line of JSON, ``{"figure": "tus_throughput", ...}``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    MB,
    MIB,
    PeakRss,
    Server,
    ServerProcess,
    add_ingestd_argument,
    children_cpu,
    clean_env,
    exit_cleanly_on_sigterm,
    filesystem_of,
    find_ingestd,
    free_loopback_port,
    http_ok,
    human_bytes,
    load_text,
    median,
    parse_size,
    process_cpu,
    process_rss,
    settle,
    sha256_of,
    temporary_root,
    write_random_file,
)

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_PACKAGES = ("@tus/server", "@tus/file-store", "tus-js-client")
NODE_MIN_VERSION = (20, 19)  # what @tus/server 2.x declares in "engines"
SERVERS = ("ingestd", "node")
CLIENTS = ("tus-js-client", "curl")
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
BIG_SIZE = 10 << 30
BIG_RSS_GOAL = 150 * MIB
SPARE_BYTES = 512 * MIB  # kept free beyond the file and the stored copies
SHA_WAIT_S = 30.0  # how long to wait for ingestd to record the source's SHA-256
SETTLE_S = 1.0  # after start-up, before the idle RSS is read


# -- the servers ------------------------------------------------------------------------------


class NodeTusServer(ServerProcess):
    """``node bench/node/server.mjs``: @tus/server with a FileStore in ``store``."""

    name = "node tus server"

    def __init__(self, node: str, store: Path, log_path: Path) -> None:
        self.port = free_loopback_port()
        self.store = store
        self.endpoint = f"http://127.0.0.1:{self.port}/files/"
        command = [node, str(NODE_DIR / "server.mjs"), "--port", str(self.port)]
        super().__init__([*command, "--dir", str(store)], log_path)

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self._launch(clean_env(), cwd=NODE_DIR)
        self._wait_until(lambda: http_ok(self.endpoint, "OPTIONS", TUS_HEADERS), "answer OPTIONS")


@dataclass
class Target:
    """One server under test, as the clients and the checks see it."""

    name: str
    endpoint: str  # the tus creation URL, ending in /files/
    headers: dict[str, str]  # sent with every request, besides Tus-Resumable
    server: ServerProcess
    include_children: bool  # count the server's child processes in CPU and RSS
    verify: Callable[[str, Path, str, int], str]  # (upload URL, file, sha256, size) -> note
    idle_rss: int = 0


def tus_request(
    url: str, method: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One bodyless request; answers (status, lower-cased headers, body) even on 4xx/5xx."""
    request = urllib.request.Request(url, method=method, headers={**TUS_HEADERS, **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, got, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        status, got, body = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in got.items()}, body


def verify_node(store: Path) -> Callable[[str, Path, str, int], str]:
    def verify(upload_url: str, path: Path, sha256: str, size: int) -> str:
        upload_id = upload_url.rstrip("/").rsplit("/", 1)[-1]
        stored = store / upload_id
        got_size = stored.stat().st_size
        got = sha256_of(stored)
        if got_size != size or got != sha256:
            raise RuntimeError(
                f"node stored {got_size} bytes with SHA-256 {got} for {upload_url}; "
                f"expected {size} bytes, {sha256}"
            )
        stored.unlink()
        stored.with_name(f"{upload_id}.json").unlink(missing_ok=True)
        return "FileStore file SHA-256 ok"

    return verify


_SOURCE_QUERIES = (
    # the tus upload id is an upload session's id ...
    (
        "upload session",
        "SELECT s.sha256, s.size FROM upload_sessions u"
        " JOIN sources s ON s.id = u.source_id WHERE u.id = ?",
    ),
    # ... or a source's id
    ("source id", "SELECT sha256, size FROM sources WHERE id = ?"),
)


def ingestd_source(database: Path, upload_id: str) -> tuple[str, str | None, int | None] | None:
    """(how it was found, sha256, size) of the source row behind a tus upload."""
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    ) as conn:
        for how, query in _SOURCE_QUERIES:
            row = conn.execute(query, (upload_id,)).fetchone()
            if row is not None:
                return how, row[0], row[1]
        # Nothing else uploads to this server, so the newest source is this upload's.
        row = conn.execute(
            "SELECT sha256, size FROM sources ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    return None if row is None else ("newest source row", row[0], row[1])


def verify_ingestd(server: Server, headers: dict[str, str]) -> Callable[[str, Path, str, int], str]:
    """A final HEAD must say ``Upload-Offset: <size>``, and the source row ingestd wrote must
    have the file's SHA-256 and size. A mismatch fails the run; a HEAD that does not answer as
    tus says, or a row without a hash yet, is reported in the note (a "PROBLEM" when it is one).
    """

    def verify(upload_url: str, path: Path, sha256: str, size: int) -> str:
        notes: list[str] = []
        status, got, body = tus_request(upload_url, "HEAD", headers)
        offset = got.get("upload-offset")
        head_ok = status in (200, 204) and offset == str(size)
        if head_ok:
            notes.append("HEAD Upload-Offset ok")
        elif offset is not None and offset != str(size):
            raise RuntimeError(
                f"HEAD {upload_url} after the upload: {status}, Upload-Offset {offset!r}, "
                f"expected {size}; headers {got}"
            )
        else:
            notes.append(
                f"PROBLEM: HEAD after the upload answered {status} without Upload-Offset "
                f"(body {body[:200]!r})"
            )
        upload_id = upload_url.rstrip("/").rsplit("/", 1)[-1]
        deadline = time.monotonic() + SHA_WAIT_S
        found = None
        while True:
            try:
                found = ingestd_source(server.database, upload_id)
            except sqlite3.Error as exc:
                print(f"warning: cannot read {server.database}: {exc}", file=sys.stderr)
            if (found is not None and found[1]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if found is None or not found[1]:
            where = "no source row" if found is None else f"source row ({found[0]}) has no sha256"
            if not head_ok:
                raise RuntimeError(f"cannot confirm {upload_url}: {'; '.join(notes)}; {where}")
            return "; ".join([*notes, f"{where} after {SHA_WAIT_S:.0f} s"])
        how, stored_sha, stored_size = found
        if stored_sha != sha256 or stored_size != size:
            raise RuntimeError(
                f"ingestd recorded {stored_size} bytes, SHA-256 {stored_sha} ({how}) for "
                f"{upload_url}; expected {size} bytes, {sha256}"
            )
        return "; ".join([*notes, f"sources.sha256 ok ({how})"])

    return verify


# -- the clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientRun:
    upload_url: str
    seconds: float  # creation request to last response, as the client timed it
    requests: dict[str, int]


def _run(command: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command[:2])} exited with {done.returncode}:\n"
            f"{done.stderr[-2000:]}{done.stdout[-2000:]}"
        )
    return done.stdout


def tus_js_command(node: str, endpoint: str, path: Path, chunk_size: int) -> list[str]:
    command = [node, str(NODE_DIR / "upload.mjs"), "--endpoint", endpoint]
    return [*command, "--file", str(path), "--chunk-size", str(chunk_size)]


def run_tus_js(
    target: Target, path: Path, *, node: str, chunk_size: int, timeout: float
) -> ClientRun:
    env = clean_env(TUS_HEADERS=json.dumps(target.headers))
    command = tus_js_command(node, target.endpoint, path, chunk_size)
    out = json.loads(_run(command, env, timeout).strip().splitlines()[-1])
    return ClientRun(str(out["url"]), float(out["seconds"]), dict(out["requests"]))


def _metadata(path: Path) -> str:
    pairs = {"filename": path.name, "filetype": "application/octet-stream"}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def curl_commands(
    endpoint: str, upload_url: str, path: Path, size: int, header_file: Path, scratch: Path
) -> tuple[list[str], list[str]]:
    """The creation POST and the one PATCH. Headers common to both (Tus-Resumable and, for
    ingestd, Authorization) come from ``header_file`` so that no key is on a command line;
    ``Expect:`` saves the ``100 Continue`` round trip (and curl's 1 s wait on a server that
    sends none)."""
    common = ["curl", "-sS", "-H", f"@{header_file}", "-o", str(scratch / "body")]
    common += ["-D", str(scratch / "headers"), "-w", "%{http_code} %{time_total}"]
    post = [*common, "-X", "POST", "-H", f"Upload-Length: {size}"]
    post += ["-H", f"Upload-Metadata: {_metadata(path)}", endpoint]
    patch = [*common, "-X", "PATCH", "-T", str(path), "-H", "Expect:", "-H", "Upload-Offset: 0"]
    patch += ["-H", "Content-Type: application/offset+octet-stream", upload_url]
    return post, patch


def _curl_answer(output: str, scratch: Path) -> tuple[int, float, dict[str, str], str]:
    status, seconds = output.split()
    headers: dict[str, str] = {}
    for line in (scratch / "headers").read_text(encoding="latin-1").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = (scratch / "body").read_text(encoding="utf-8", errors="replace")[:500]
    return int(status), float(seconds), headers, body


def run_curl(target: Target, path: Path, *, size: int, scratch: Path, timeout: float) -> ClientRun:
    scratch.mkdir(exist_ok=True)
    header_file = scratch / "request-headers"
    lines = [f"{k}: {v}" for k, v in {**TUS_HEADERS, **target.headers}.items()]
    header_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    header_file.chmod(0o600)
    env = clean_env()
    post, _ = curl_commands(target.endpoint, "", path, size, header_file, scratch)
    status, post_s, headers, body = _curl_answer(_run(post, env, 60), scratch)
    location = headers.get("location")
    if status != 201 or not location:
        raise RuntimeError(
            f"POST {target.endpoint} (Upload-Length {size}): {status}, Location {location!r}; "
            f"headers {headers}; body {body!r}"
        )
    upload_url = urllib.parse.urljoin(target.endpoint, location)
    _, patch = curl_commands(target.endpoint, upload_url, path, size, header_file, scratch)
    status, patch_s, headers, body = _curl_answer(_run(patch, env, timeout), scratch)
    offset = headers.get("upload-offset")
    if status != 204 or offset != str(size):
        raise RuntimeError(
            f"PATCH {upload_url} ({size} bytes from offset 0): {status}, Upload-Offset "
            f"{offset!r} (expected 204 and {size}); headers {headers}; body {body!r}"
        )
    return ClientRun(upload_url, post_s + patch_s, {"POST": 1, "PATCH": 1})


# -- one upload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    wall_s: float  # including the client's start-up
    client_cpu_s: float
    server_cpu_s: float
    server_peak_rss: int
    requests: dict[str, int]
    check: str

    def mb_s(self, size: int) -> float:
        return size / MB / self.seconds


def measure_upload(
    target: Target, client: Callable[[], ClientRun], path: Path, sha256: str, size: int
) -> Sample:
    process = target.server.process
    sampler = PeakRss(process, target.include_children)
    client_cpu_before = children_cpu()
    server_cpu_before = process_cpu(process, target.include_children)
    sampler.start()
    started = time.perf_counter()
    try:
        run = client()
    finally:
        wall = time.perf_counter() - started
        peak = sampler.finish()
    server_cpu = process_cpu(process, target.include_children) - server_cpu_before
    client_cpu = children_cpu() - client_cpu_before
    check = target.verify(run.upload_url, path, sha256, size)
    return Sample(run.seconds, wall, client_cpu, server_cpu, peak, run.requests, check)


# -- set-up -----------------------------------------------------------------------------------


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH; the Node server and tus-js-client need it")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    numbers = tuple(int(p) for p in version.stdout.strip().lstrip("v").split(".")[:2])
    if numbers < NODE_MIN_VERSION:
        wanted = ".".join(map(str, NODE_MIN_VERSION))
        raise SystemExit(f"node {version.stdout.strip()} is too old; @tus/server needs {wanted}")
    return node


def ensure_node_modules() -> None:
    if (NODE_DIR / "node_modules").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"{NODE_DIR / 'node_modules'} is missing and npm is not on PATH")
    command = [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"]
    print(f"installing the pinned Node packages: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def node_versions(node: str | None) -> dict[str, str]:
    versions: dict[str, str] = {}
    if node is not None:
        versions["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        for package in NODE_PACKAGES:
            manifest = NODE_DIR / "node_modules" / package / "package.json"
            with contextlib.suppress(OSError, ValueError, KeyError):
                versions[package] = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    curl = shutil.which("curl")
    if curl is not None:
        first = subprocess.run([curl, "--version"], capture_output=True, text=True, check=False)
        versions["curl"] = first.stdout.split(" ", 2)[1] if first.stdout else "unknown"
    return versions


def check_disk(root: Path, args: argparse.Namespace) -> None:
    """Refuse to start when the file and the copies the servers keep would not fit."""
    ingestd_uploads = args.repeat * len(args.clients) if "ingestd" in args.servers else 0
    # one source file at a time, every ingestd upload kept, one Node copy at a time
    copies = 1 + ingestd_uploads + (1 if "node" in args.servers else 0)
    need = args.size * copies + SPARE_BYTES
    free = shutil.disk_usage(root).free
    if free < need:
        raise SystemExit(
            f"not enough free disk in {root}: {human_bytes(free)} free, {human_bytes(need)} "
            f"needed ({copies} x {human_bytes(args.size)}: the source file plus the copies the "
            f"servers keep, and {human_bytes(SPARE_BYTES)} spare); use --work-dir on a bigger "
            f"disk, a smaller --size or fewer --repeat"
        )


def ingestd_has_tus(url: str, headers: dict[str, str]) -> str | None:
    """None when ``OPTIONS <url>/files/`` answers with ``Tus-Version``, else what it said."""
    try:
        status, got, body = tus_request(f"{url}/files/", "OPTIONS", headers)
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)
    if "tus-version" in got:
        return None
    return f"{status}, headers {got}, body {body[:200]!r}"


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    idle_rss: dict[str, int] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def start_targets(
    args: argparse.Namespace, root: Path, node: str | None, started: list[ServerProcess]
) -> list[Target]:
    """Start the chosen servers (each appended to ``started`` first, to be stopped)."""
    targets: list[Target] = []
    for name in args.servers:
        if name == "ingestd":
            ingestd = Server(find_ingestd(args.ingestd), root / "data", root / "ingestd.log")
            started.append(ingestd)
            ingestd.start()
            headers = {"Authorization": f"Bearer {ingestd.key}"}
            missing = ingestd_has_tus(ingestd.url, headers)
            if missing is not None:
                raise SystemExit(
                    f"ingestd has no tus endpoint yet: OPTIONS {ingestd.url}/files/ answered "
                    f"{missing}; run with --servers node"
                )
            print(f"ingestd: {shlex.join(ingestd.command)}  (INGESTD_QUEUES=bench-idle)")
            verify = verify_ingestd(ingestd, headers)
            targets.append(Target(name, f"{ingestd.url}/files/", headers, ingestd, True, verify))
        else:
            assert node is not None
            tus = NodeTusServer(node, root / "node-store", root / "node.log")
            started.append(tus)
            tus.start()
            print(f"node: {shlex.join(tus.command)}")
            targets.append(Target(name, tus.endpoint, {}, tus, False, verify_node(tus.store)))
    time.sleep(SETTLE_S)  # let start-up work finish before the idle RSS is read
    for target in targets:
        target.idle_rss = process_rss(target.server.process, target.include_children)
    return targets


def client_call(
    client: str, target: Target, path: Path, args: argparse.Namespace, root: Path
) -> Callable[[], ClientRun]:
    timeout = 120 + args.size / (2 * MB)  # a stuck server fails the run instead of hanging it
    if client == "curl":
        scratch = root / "curl"
        return functools.partial(
            run_curl, target, path, size=args.size, scratch=scratch, timeout=timeout
        )
    return functools.partial(
        run_tus_js, target, path, node=args.node, chunk_size=args.chunk_size, timeout=timeout
    )


def measure(args: argparse.Namespace, root: Path) -> Results:
    size: int = args.size
    results = Results(load_before=os.getloadavg())
    started: list[ServerProcess] = []
    try:
        targets = start_targets(args, root, args.node, started)
        results.idle_rss = {t.name: t.idle_rss for t in targets}
        for repeat in range(args.repeat):
            order = targets if repeat % 2 == 0 else targets[::-1]
            for client in args.clients:
                path = root / f"file-{repeat}-{client}.bin"
                sha256 = write_random_file(path, size)
                for target in order:
                    settle()
                    call = client_call(client, target, path, args, root)
                    sample = measure_upload(target, call, path, sha256, size)
                    results.samples.setdefault((target.name, client), []).append(sample)
                    print(
                        f"  repeat {repeat + 1}: {client:>13} → {target.name:<7} "
                        f"{sample.mb_s(size):7.1f} MB/s, server peak RSS "
                        f"{sample.server_peak_rss / MIB:.1f} MiB ({sample.check})",
                        flush=True,
                    )
                path.unlink()
        settle()
    except Exception:
        for server in started:
            tail = server.log_tail()
            if tail:
                print(f"--- {server.name} log tail ---\n{tail}\n---", file=sys.stderr)
        raise
    finally:
        for server in started:
            server.stop()
    results.load_after = os.getloadavg()
    return results


def disk_bytes(directory: Path) -> int:
    """Bytes allocated on disk to the files under ``directory``."""
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_blocks * 512
    return total


def _ratios(results: Results, client: str, size: int) -> list[float]:
    ours = results.samples.get(("ingestd", client), [])
    theirs = results.samples.get(("node", client), [])
    return [a.mb_s(size) / b.mb_s(size) for a, b in zip(ours, theirs, strict=True)]


def _row(label: str, unit: str, values: Sequence[float], spec: str) -> str:
    samples = ", ".join(format(v, spec) for v in values)
    return f"  {label:<34} {unit:>5} {format(median(values), spec):>10}  [{samples}]"


def report(args: argparse.Namespace, root: Path, results: Results, command: str) -> None:
    size: int = args.size
    print()
    print(
        f"tus_throughput: {human_bytes(size)} file, tus-js-client chunk "
        f"{human_bytes(args.chunk_size)}, curl one PATCH, {args.repeat} repeat(s); "
        f"{os.cpu_count()} CPUs; {filesystem_of(root)}"
    )
    versions = node_versions(args.node)
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        "server idle RSS before the uploads:",
        ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in results.idle_rss.items()),
    )
    print(
        "load average before/after:",
        load_text(results.load_before),
        "/",
        load_text(results.load_after),
    )
    print(f"  {'measure':<34} {'unit':>5} {'median':>10}  samples")
    figures: dict[str, Any] = {}
    for (server, client), samples in results.samples.items():
        print(f"{server} ← {client}")
        rows: list[tuple[str, str, list[float], str, str]] = [
            ("throughput", "MB/s", [s.mb_s(size) for s in samples], ".1f", "mb_s"),
            ("upload (client's clock)", "s", [s.seconds for s in samples], ".3f", "upload_s"),
            ("wall incl. client start-up", "s", [s.wall_s for s in samples], ".3f", "wall_s"),
            ("client CPU", "s", [s.client_cpu_s for s in samples], ".2f", "client_cpu_s"),
            ("server CPU", "s", [s.server_cpu_s for s in samples], ".2f", "server_cpu_s"),
            (
                "server peak RSS",
                "MiB",
                [s.server_peak_rss / MIB for s in samples],
                ".1f",
                "server_peak_rss_mib",
            ),
            (
                "server peak RSS - idle RSS",
                "MiB",
                [(s.server_peak_rss - results.idle_rss[server]) / MIB for s in samples],
                ".1f",
                "server_rss_growth_mib",
            ),
            (
                "PATCH requests",
                "",
                [float(s.requests.get("PATCH", 0)) for s in samples],
                ".0f",
                "patch_requests",
            ),
        ]
        entry: dict[str, Any] = {}
        for label, unit, values, spec, key in rows:
            print(_row(label, unit, values, spec))
            entry[key] = round(median(values), 3)
        entry["samples"] = {key: [round(v, 3) for v in values] for *_, values, _, key in rows}
        entry["checks"] = sorted({s.check for s in samples})
        figures[f"{server}/{client}"] = entry
    ratios: dict[str, Any] = {}
    if {"ingestd", "node"} <= set(args.servers):
        for client in args.clients:
            values = _ratios(results, client, size)
            print(_row(f"ingestd ÷ node MB/s, {client}", "ratio", values, ".2f"))
            ratios[client] = {
                "median": round(median(values), 3),
                "samples": [round(v, 3) for v in values],
            }
    ingestd_peaks = [
        s.server_peak_rss
        for (name, _), runs in results.samples.items()
        if name == "ingestd"
        for s in runs
    ]
    stored = disk_bytes(root / "data") if "ingestd" in args.servers else None
    if stored is not None:
        uploads = len(ingestd_peaks)
        print(
            f"ingestd data dir after {uploads} upload(s) of {human_bytes(size)}: "
            f"{human_bytes(stored)} on disk"
        )
    if ingestd_peaks:
        peak = max(ingestd_peaks)
        goal = f"goal for a {human_bytes(BIG_SIZE)} upload: < {BIG_RSS_GOAL / MIB:.0f} MiB"
        if size >= BIG_SIZE:
            goal += ", met" if peak < BIG_RSS_GOAL else ", NOT met"
        print(f"ingestd peak RSS over all uploads: {peak / MIB:.1f} MiB ({goal})")
    print(f"command: {command}")

    figure: dict[str, Any] = {
        "figure": "tus_throughput",
        "size_bytes": size,
        "chunk_size": args.chunk_size,
        "repeat": args.repeat,
        "servers": list(args.servers),
        "clients": list(args.clients),
        "cpus": os.cpu_count(),
        "filesystem": filesystem_of(root),
        "versions": versions,
        "idle_rss_mib": {k: round(v / MIB, 1) for k, v in results.idle_rss.items()},
        "results": figures,
        "ingestd_to_node_mb_s": ratios,
        "ingestd_data_dir_bytes": stored,
        "load_average_before": [round(v, 2) for v in results.load_before],
        "load_average_after": [round(v, 2) for v in results.load_after],
        "python": platform.python_version(),
        "command": command,
    }
    print(json.dumps(figure))


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return chosen

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=None, help="e.g. 64M, 1G (default 1G)")
    parser.add_argument("--repeat", type=int, default=None, help="samples per measurement (3)")
    parser.add_argument(
        "--servers", type=_choices(SERVERS), default=None, help="ingestd,node (both)"
    )
    parser.add_argument(
        "--clients", type=_choices(CLIENTS), default=None, help="tus-js-client,curl (both)"
    )
    parser.add_argument(
        "--chunk-size", type=parse_size, default=parse_size("8M"), help="tus-js-client chunkSize"
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help=f"--size {human_bytes(BIG_SIZE)} --servers ingestd --clients curl --repeat 1",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the temporary directory goes (file and both servers' storage share it)",
    )
    add_ingestd_argument(parser)
    args = parser.parse_args(argv)
    big = args.big
    args.servers = args.servers or (("ingestd",) if big else SERVERS)
    args.clients = args.clients or (("curl",) if big else CLIENTS)
    args.size = args.size or (BIG_SIZE if big else parse_size("1G"))
    if args.repeat is None:
        args.repeat = 1 if big else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    command = shlex.join([sys.executable, *sys.argv])
    args.node = None
    if "node" in args.servers or "tus-js-client" in args.clients:
        args.node = node_executable()
        ensure_node_modules()
    if "curl" in args.clients and shutil.which("curl") is None:
        raise SystemExit("curl is not on PATH; drop it with --clients tus-js-client")
    with temporary_root("ingestd-bench-tus-", args.work_dir) as root:
        check_disk(root, args)
        print(f"command: {command}")
        print(f"work dir: {root} ({filesystem_of(root)})")
        shown = tus_js_command("node", "ENDPOINT", root / "FILE", args.chunk_size)
        print(f"tus-js-client: {shlex.join(shown)}  (TUS_HEADERS in the environment)")
        scratch = root / "curl"
        post, patch = curl_commands(
            "ENDPOINT", "UPLOAD_URL", root / "FILE", args.size, scratch / "request-headers", scratch
        )
        print(f"curl: {shlex.join(post)}\ncurl: {shlex.join(patch)}")
        results = measure(args, root)
        report(args, root, results, command)


if __name__ == "__main__":
    main()
