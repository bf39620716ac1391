"""Local-disk store: atomic writes (temp file, fsync, rename) under one root.

Layout: ``<root>/objects/<key>`` for masters and renditions, ``<root>/staging/<id>.part``
for uploads in progress. Both live on one filesystem, so finalising an upload is a rename.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import anyio
import anyio.to_thread

from ingestd.errors import InvalidRequest, NotFound, StorageError, TooLarge
from ingestd.storage.base import IncompleteWrite

_READ_CHUNK = 1 << 20
_WRITE_BUFFER = 1 << 20  # bytes handed to the writer thread at once
_MAX_IOV = 512  # chunks per pwritev (the kernel takes at most IOV_MAX, 1024 on Linux)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _read_range(
    path: Path, offset: int, length: int | None, chunk_size: int, missing: str
) -> AsyncIterator[bytes]:
    try:
        f = await anyio.open_file(path, "rb")
    except FileNotFoundError as exc:
        raise NotFound(missing) from exc
    async with f:
        await f.seek(offset)
        remaining = length
        while remaining is None or remaining > 0:
            chunk = await f.read(chunk_size if remaining is None else min(chunk_size, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_sync_file_range = _load_sync_file_range() if sys.platform.startswith("linux") else None
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, position: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting for it.

    The disk then works while the next bytes arrive, and the fdatasync that makes the
    request's bytes durable finds little left to do. Linux only; elsewhere a no-op.
    """
    if _sync_file_range is not None and length:
        _sync_file_range(fd, position, length, _SYNC_FILE_RANGE_WRITE)


def _pwrite_all(fd: int, chunks: list[bytes], position: int) -> int:
    """Write every chunk, in order, from ``position``; returns the byte count."""
    views = [memoryview(c) for c in chunks]
    total = 0
    while views:
        n = os.pwritev(fd, views, position + total)
        total += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]
    return total


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a task group, rather than the cancellations it caused."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


class LocalStore:
    """Implements :class:`ObjectStore` and :class:`StagingStore` on a local directory."""

    readable_before_finalize = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.staging = root / "staging"
        self.tmp = root / "tmp"
        for d in (self.objects, self.staging, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- keys -------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise InvalidRequest(f"invalid object key {key!r}")
        return self.objects.joinpath(*parts)

    def _staged(self, upload_id: str) -> Path:
        if not upload_id.replace("_", "").isalnum():
            raise InvalidRequest(f"invalid upload id {upload_id!r}")
        return self.staging / f"{upload_id}.part"

    # -- ObjectStore ------------------------------------------------------------------

    async def put_file(self, key: str, src: Path, *, move: bool = False) -> int:
        dest = self.path_for(key)
        return await anyio.to_thread.run_sync(self._put_file, src, dest, move)

    def _put_file(self, src: Path, dest: Path, move: bool) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if move:
                try:
                    with open(src, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(src, dest)
                    fsync_dir(dest.parent)
                    return dest.stat().st_size
                except OSError as exc:
                    if exc.errno != 18:  # EXDEV: other filesystem, fall back to a copy
                        raise
            tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
            with open(src, "rb") as r, open(tmp, "wb") as w:
                shutil.copyfileobj(r, w, _READ_CHUNK)
                w.flush()
                os.fsync(w.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            if move:
                src.unlink()
            return dest.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot store {dest.name}: {exc}") from exc

    async def put_bytes(self, key: str, data: bytes) -> int:
        dest = self.path_for(key)
        return await anyio.to_thread.run_sync(self._put_bytes, dest, data)

    def _put_bytes(self, dest: Path, data: bytes) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as w:
                w.write(data)
                w.flush()
                os.fsync(w.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise StorageError(f"cannot store {dest.name}: {exc}") from exc
        return len(data)

    async def size(self, key: str) -> int:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"object {key} not found") from exc

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in _read_range(
            self.path_for(key), offset, length, _READ_CHUNK, f"object {key} not found"
        ):
            yield chunk

    @asynccontextmanager
    async def local_path(self, key: str) -> AsyncIterator[Path]:
        path = self.path_for(key)
        if not path.is_file():
            raise NotFound(f"object {key} not found")
        yield path

    async def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    async def delete_prefix(self, prefix: str) -> int:
        base = self.path_for(prefix.rstrip("/"))
        if base.is_file():
            base.unlink()
            return 1
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        await anyio.to_thread.run_sync(shutil.rmtree, base)
        return count

    # -- StagingStore -----------------------------------------------------------------

    async def create(self, upload_id: str, size: int, key: str | None = None) -> None:
        await anyio.to_thread.run_sync(self._create, self._staged(upload_id), size)

    @staticmethod
    def _create(path: Path, size: int) -> None:
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size)  # sparse: no space used until blocks arrive

    async def write_at(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        limit: int,
        observe: Callable[[memoryview], object] | None = None,
    ) -> int:
        path = self._staged(upload_id)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError as exc:
            raise NotFound(f"upload {upload_id} has no staged data") from exc
        written = 0
        broke: Exception | None = None
        # One buffer is written (and hashed) in a thread while the next one is received:
        # the network and the disk work at once, and memory stays at a few buffers.
        # The received chunks themselves go to the kernel (pwritev), without a copy.
        full, ready = anyio.create_memory_object_stream[list[bytes]](1)

        def flush(batch: list[bytes]) -> None:
            nonlocal written
            if observe is not None:
                for chunk in batch:  # in this thread: hashing stays off the event loop
                    observe(memoryview(chunk))
            n = _pwrite_all(fd, batch, offset + written)
            _start_writeback(fd, offset + written, n)
            written += n

        async def writer() -> None:
            async with ready:
                async for buf in ready:
                    # not abandoned on cancellation: fd stays open until the write returns
                    await anyio.to_thread.run_sync(flush, buf)

        async def reader() -> None:
            nonlocal broke
            received = pending = 0
            batch: list[bytes] = []
            async with full:
                try:
                    async for chunk in chunks:
                        if not chunk:
                            continue
                        received += len(chunk)
                        if received > limit:
                            raise TooLarge(f"more than {limit} bytes sent")
                        batch.append(chunk)
                        pending += len(chunk)
                        if pending >= _WRITE_BUFFER or len(batch) >= _MAX_IOV:
                            await full.send(batch)
                            batch, pending = [], 0
                except (TooLarge, StorageError):
                    raise
                except Exception as exc:  # the stream broke: keep what arrived
                    broke = exc
                if batch:
                    await full.send(batch)

        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer)
                    await reader()
            except BaseExceptionGroup as group:
                raise _first(group) from None
            await anyio.to_thread.run_sync(os.fdatasync, fd)
        except OSError as exc:
            raise StorageError(f"cannot write staged data: {exc}") from exc
        finally:
            os.close(fd)
        if broke is not None:
            raise IncompleteWrite(written, f"stream broke after {written} bytes") from broke
        return written

    async def copy_in(
        self, upload_id: str, offset: int, src_key: str, src_offset: int, size: int
    ) -> None:
        src = self.path_for(src_key)
        dest = self._staged(upload_id)
        await anyio.to_thread.run_sync(self._copy_range, src, src_offset, dest, offset, size)

    @staticmethod
    def _copy_range(src: Path, src_offset: int, dest: Path, offset: int, size: int) -> None:
        try:
            with open(src, "rb") as r, open(dest, "r+b") as w:
                remaining = size
                s_off, d_off = src_offset, offset
                while remaining:
                    # in-kernel copy; a reflink where the filesystem supports it
                    n = os.copy_file_range(r.fileno(), w.fileno(), remaining, s_off, d_off)
                    if n == 0:
                        raise StorageError(f"source object {src.name} is shorter than expected")
                    remaining -= n
                    s_off += n
                    d_off += n
        except FileNotFoundError as exc:
            raise NotFound(f"{src.name} is gone") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy block: {exc}") from exc

    async def copy_staged(self, upload_id: str, offset: int, src_upload_id: str, size: int) -> None:
        src, dest = self._staged(src_upload_id), self._staged(upload_id)
        await anyio.to_thread.run_sync(self._copy_range, src, 0, dest, offset, size)
        await anyio.to_thread.run_sync(self._fsync, dest)

    @staticmethod
    def _fsync(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def read_staged(
        self, upload_id: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in _read_range(
            self._staged(upload_id),
            offset,
            length,
            _READ_CHUNK * 4,
            f"upload {upload_id} has no staged data",
        ):
            yield chunk

    async def finalize(self, upload_id: str, key: str) -> None:
        src = self._staged(upload_id)
        if not src.exists():
            raise NotFound(f"upload {upload_id} has no staged data")
        await self.put_file(key, src, move=True)

    async def discard(self, upload_id: str) -> None:
        self._staged(upload_id).unlink(missing_ok=True)
