"""A real FTP server for tests (pyftpdlib), on loopback, in a thread, with one throwaway
user; it can cut a STOR after some bytes, to test that transfers resume."""

from __future__ import annotations

import logging
import secrets
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # pyftpdlib is built on asyncore/asynchat, deprecated in 3.11 (its problem, not ours)
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
    from pyftpdlib.handlers import DTPHandler, FTPHandler  # type: ignore[import-untyped]
    from pyftpdlib.ioloop import IOLoop  # type: ignore[import-untyped]
    from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

__all__ = ["FtpEndpoint", "running_ftp"]


@dataclass
class FtpEndpoint:
    """Where the server answers, its user, and what it saw."""

    host: str
    port: int
    user: str
    password: str
    root: Path
    stores: int = 0  # STOR commands received
    cuts: int = 0  # transfers cut so far
    _cut_after: int | None = None
    _cuts_left: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cut_stores(self, after_bytes: int, times: int = 1) -> None:
        """Cut the next ``times`` STOR transfers (data and control connection) once
        ``after_bytes`` bytes of each have arrived; those bytes stay in the file."""
        with self._lock:
            self._cut_after, self._cuts_left = after_bytes, times

    def config(self, path: str = "/", **extra: Any) -> dict[str, Any]:
        """A target config for this server."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "path": path,
            "timeout_s": 10,
            **extra,
        }

    def _take_cut(self) -> int | None:
        with self._lock:
            self.stores += 1
            if self._cuts_left <= 0 or self._cut_after is None:
                return None
            self._cuts_left -= 1
            self.cuts += 1
            return self._cut_after


class _CuttingDTP(DTPHandler):  # type: ignore[misc]
    endpoint: FtpEndpoint
    _cut_at: int | None = None

    def enable_receiving(self, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)
        if cmd == "STOR":
            self._cut_at = self.endpoint._take_cut()

    def handle_read(self) -> None:
        if self._cut_at is None:
            super().handle_read()
            return
        try:
            chunk = self.recv(self.ac_in_buffer_size)
        except OSError:
            self.handle_error()
            return
        if not chunk:
            self.transfer_finished = True
            return
        room = self._cut_at - self.tot_bytes_received
        if len(chunk) < room:
            self.tot_bytes_received += len(chunk)
            self.file_obj.write(chunk)
            return
        self.file_obj.write(chunk[:room])
        self.tot_bytes_received += room
        self.file_obj.flush()
        control = self.cmd_channel
        self.close()  # no reply: the connection just goes, as when a server dies
        control.close()

    handle_read_event = handle_read  # pyftpdlib's loop calls this alias


@contextmanager
def running_ftp(root: Path, *, user: str = "ingestd-test") -> Iterator[FtpEndpoint]:
    """Serve ``root`` on 127.0.0.1 (a free port) until the block exits."""
    root.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("pyftpdlib")
    if not quiet.handlers:  # else pyftpdlib configures logging to stderr itself
        quiet.addHandler(logging.NullHandler())
    password = secrets.token_hex(12)
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmwMT")
    endpoint = FtpEndpoint("127.0.0.1", 0, user, password, root)
    dtp = type("TestDTP", (_CuttingDTP,), {"endpoint": endpoint})
    handler = type(
        "TestFTPHandler",
        (FTPHandler,),
        {
            "authorizer": authorizer,
            "dtp_handler": dtp,
            "auth_failed_timeout": 0.05,
            "banner": "ingestd test ftp",
            "timeout": 60,
        },
    )
    server = FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
    endpoint.port = server.address[1]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.ioloop.loop(0.05, blocking=False)

    thread = threading.Thread(target=loop, name="test-ftp", daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        stop.set()
        thread.join(5)
        server.close_all()
