"""The FTP publication target: the "holder" that stores and serves published files."""

from __future__ import annotations

import contextlib
import ftplib
import posixpath
from collections.abc import Callable, Iterator
from typing import TypeVar

import anyio
import anyio.to_thread

from ingestd.publish.targets import (
    CHUNK,
    FtpConfig,
    Hasher,
    Payload,
    PublishFailed,
    RemoteObject,
    Sent,
    check_path,
    open_payload,
)

__all__ = ["FtpTarget"]

T = TypeVar("T")


_FTP_ERRORS = (ftplib.Error, OSError, EOFError)


class FtpTarget:
    """An FTP server (the holder that serves the video files), through the stdlib's ftplib
    in worker threads, in passive mode, binary type, with a timeout on every operation.

    An object is stored under a temporary name (``.<name>.part``) and renamed once its size
    and hash are verified, so the server never serves a partial file. A transfer the server
    cuts is continued on a new connection from the size the server reports (``SIZE``, then
    ``REST`` + ``STOR``), at most ``retries`` times. The server keeps no hash we can ask
    for (no ``HASH``/``XCRC``), so :meth:`verify` reads the file back and hashes it.
    """

    def __init__(self, config: FtpConfig) -> None:
        self.config = config
        self._ftp: ftplib.FTP | None = None

    def remote(self, path: str) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ftp://{host}:{self.config.port}{self._abs(path)}"

    def _abs(self, path: str) -> str:
        return posixpath.join(self.config.path, *check_path(path))

    def _where(self) -> str:
        return f"ftp://{self.config.host}:{self.config.port}"

    # connection handling (all of it runs in worker threads)

    def _connect(self) -> ftplib.FTP:
        # plain FTP is what the holder speaks; it sits on the internal network
        ftp = ftplib.FTP(timeout=self.config.timeout_s)  # noqa: S321
        try:
            ftp.connect(self.config.host, self.config.port)
            ftp.login(self.config.user, self.config.password)
            ftp.set_pasv(True)
            ftp.voidcmd("TYPE I")
        except ftplib.error_perm as exc:
            ftp.close()
            raise PublishFailed(
                f"{self._where()}: login as {self.config.user!r} refused: {exc}"
            ) from exc
        except _FTP_ERRORS as exc:
            ftp.close()
            raise PublishFailed(f"{self._where()}: cannot connect: {_reason(exc)}") from exc
        return ftp

    def _conn(self) -> ftplib.FTP:
        if self._ftp is None:
            self._ftp = self._connect()
        return self._ftp

    def _drop(self) -> None:
        if self._ftp is not None:
            self._ftp.close()
            self._ftp = None

    async def _run(self, what: str, fn: Callable[[ftplib.FTP], T]) -> T:
        """``fn`` on the connection, in a thread; a broken connection is dropped (the next
        call reconnects) and every failure becomes :class:`PublishFailed`."""

        def call() -> T:
            try:
                return fn(self._conn())
            except ftplib.error_perm as exc:
                raise PublishFailed(f"{self._where()}: {what}: {exc}") from exc
            except _FTP_ERRORS as exc:
                self._drop()
                raise PublishFailed(f"{self._where()}: {what}: {_reason(exc)}") from exc

        return await anyio.to_thread.run_sync(call)

    @staticmethod
    def _size(ftp: ftplib.FTP, path: str) -> int | None:
        try:
            size = ftp.size(path)
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                return None
            raise
        return None if size is None else int(size)

    def _makedirs(self, ftp: ftplib.FTP, directory: str) -> None:
        done = "/"
        for part in [p for p in directory.split("/") if p]:
            done = posixpath.join(done, part)
            try:
                ftp.mkd(done)
            except ftplib.error_perm as exc:
                if not str(exc).startswith("550"):  # 550: it exists (or cannot be made)
                    raise
        ftp.cwd(directory)  # proves it exists; fails clearly if it could not be made

    async def put(self, path: str, payload: Payload, size: int, sha256: str) -> Sent:
        final = self._abs(path)
        directory, name = posixpath.split(final)
        part = posixpath.join(directory, f".{name}.part")
        await self._run(f"create {directory}", lambda ftp: self._makedirs(ftp, directory))
        offset, resumes = 0, 0
        sent = [0]  # over every attempt, cut ones included
        while True:
            try:
                await self._send(part, payload, offset, sent)
                break
            except PublishFailed as exc:
                if resumes >= self.config.retries or isinstance(exc.__cause__, ftplib.error_perm):
                    raise
                resumes += 1
                # the server cut us: continue from what it holds (a new connection)
                held = await self._run(f"size of {part}", lambda ftp: self._size(ftp, part))
                offset = held if held is not None and held <= size else 0
        await self.verify_as(part, size, sha256)

        def rename(ftp: ftplib.FTP) -> None:
            try:
                ftp.rename(part, final)
            except ftplib.error_perm:  # some servers will not rename over a file
                ftp.delete(final)
                ftp.rename(part, final)

        await self._run(f"rename to {final}", rename)
        return Sent(sent[0], resumes)

    async def _send(self, part: str, payload: Payload, offset: int, sent: list[int]) -> None:
        """One STOR (from ``offset`` with REST), adding the bytes sent to ``sent[0]``."""
        sock = await self._run(
            f"store {part}",
            lambda ftp: ftp.transfercmd(f"STOR {part}", rest=offset or None),
        )
        try:
            async for chunk in open_payload(payload, offset):
                await anyio.to_thread.run_sync(sock.sendall, chunk)
                sent[0] += len(chunk)
        except OSError as exc:
            self._drop()
            raise PublishFailed(f"{self._where()}: store {part}: {_reason(exc)}") from exc
        finally:
            sock.close()
        await self._run(f"store {part}", lambda ftp: ftp.voidresp())

    async def verify_as(self, remote_path: str, size: int, sha256: str) -> None:
        held = await self._run(f"size of {remote_path}", lambda ftp: self._size(ftp, remote_path))
        where = f"{self._where()}{remote_path}"
        if held != size:
            raise PublishFailed(f"{where}: holds {held} bytes, not {size}")
        hasher = Hasher()
        await self._run(
            f"read back {remote_path}",
            lambda ftp: ftp.retrbinary(f"RETR {remote_path}", hasher.update, blocksize=CHUNK),
        )
        hasher.check(f"{where} (read back)", size, sha256)

    async def stat(self, path: str) -> int | None:
        full = self._abs(path)
        return await self._run(f"size of {full}", lambda ftp: self._size(ftp, full))

    async def verify(self, path: str, size: int, sha256: str) -> None:
        await self.verify_as(self._abs(path), size, sha256)

    async def delete(self, path: str) -> None:
        full = self._abs(path)
        base = self.config.path.rstrip("/") or "/"

        def remove(ftp: ftplib.FTP) -> None:
            try:
                ftp.delete(full)
            except ftplib.error_perm as exc:
                if not str(exc).startswith("550"):
                    raise
            parent = posixpath.dirname(full)
            while parent not in (base, "/") and parent.startswith(base):
                try:
                    ftp.rmd(parent)  # only empty directories go
                except ftplib.error_perm:
                    break
                parent = posixpath.dirname(parent)

        await self._run(f"delete {full}", remove)

    async def list(self, prefix: str) -> list[RemoteObject]:
        top = self._abs(prefix) if prefix else self.config.path
        base = self.config.path.rstrip("/")

        def walk(ftp: ftplib.FTP, directory: str) -> Iterator[RemoteObject]:
            try:
                entries = list(ftp.mlsd(directory, facts=["type", "size"]))
            except ftplib.error_perm:
                return
            for name, facts in entries:
                full = posixpath.join(directory, name)
                if facts.get("type") == "dir":
                    yield from walk(ftp, full)
                elif facts.get("type") == "file" and not name.startswith("."):
                    yield RemoteObject(full[len(base) :].lstrip("/"), int(facts.get("size", 0)))

        return await self._run(f"list {top}", lambda ftp: sorted(walk(ftp, top), key=_by_path))

    async def aclose(self) -> None:
        def quit_() -> None:
            if self._ftp is not None:
                with contextlib.suppress(*_FTP_ERRORS):
                    self._ftp.quit()
                self._drop()

        await anyio.to_thread.run_sync(quit_)


def _by_path(o: RemoteObject) -> str:
    return o.path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
