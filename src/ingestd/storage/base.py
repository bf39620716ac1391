"""The storage seams, as small Protocols (tusd's DataStore/Upload shape).

Keys are ``/``-separated and chosen by ingestd, never by clients. Two areas share one
store: ``masters/...`` (private sources of truth) and ``renditions/...`` (outputs served
through signed URLs). Uploads in progress live in the staging area, addressed by upload id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from ingestd.errors import StorageError


class IncompleteWrite(StorageError):
    """The data stream ended early; what arrived before the cut is durable."""

    code = "incomplete_write"

    def __init__(self, written: int, message: str | None = None) -> None:
        super().__init__(message, written=written)
        self.written = written


class ObjectStore(Protocol):
    async def put_file(self, key: str, src: Path, *, move: bool = False) -> int:
        """Store ``src`` under ``key`` atomically (readers never see a partial object).

        With ``move`` the store may take the file over instead of copying it.
        Returns the size. Raises :class:`StorageError`.
        """
        ...

    async def put_bytes(self, key: str, data: bytes) -> int:
        """Store ``data`` under ``key`` atomically; returns the size."""
        ...

    async def size(self, key: str) -> int:
        """Size of the object; raises :class:`ingestd.errors.NotFound` if absent."""
        ...

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream an object's bytes (a range of them); raises NotFound if absent."""
        ...

    def local_path(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A local file holding the object, for tools that need a path (ffmpeg).

        Local stores yield the object itself (read-only by convention); remote stores
        download to a temporary file removed on exit.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove an object; absent objects are not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many."""
        ...


class StagingStore(Protocol):
    """Uploads in progress. One staging object per upload, written at offsets.

    ``readable_before_finalize`` says whether :meth:`read_staged` can read any range before
    :meth:`finalize` (a local file can; an S3 multipart upload cannot: its callers finalize
    first and read the object).
    """

    readable_before_finalize: bool

    async def create(self, upload_id: str, size: int, key: str | None = None) -> None:
        """Prepare an empty staging object of ``size`` bytes (0: not known yet). Idempotent.

        ``key`` is the object the upload will become, if known (an S3 multipart upload is
        started on it, so that :meth:`finalize` needs no copy).
        """
        ...

    async def write_at(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        limit: int,
        observe: Callable[[memoryview], object] | None = None,
    ) -> int:
        """Write the stream at ``offset``, durable (fsynced) before returning the count.

        ``observe`` sees every byte written, in order, before it is written (for hashing);
        it may run in a worker thread, off the event loop.
        Raises :class:`ingestd.errors.TooLarge` past ``limit`` bytes, and
        :class:`IncompleteWrite` (with the count made durable) if the stream breaks.
        Callers serialise writes to overlapping ranges; disjoint ranges may run at once.
        """
        ...

    async def copy_in(
        self, upload_id: str, offset: int, src_key: str, src_offset: int, size: int
    ) -> None:
        """Copy a range of a stored object into the staging object (deduplicated blocks)."""
        ...

    async def copy_staged(self, upload_id: str, offset: int, src_upload_id: str, size: int) -> None:
        """Copy another staging object's first ``size`` bytes in at ``offset`` (tus concatenation).

        Without a user-space copy where the store allows (reflinks, server-side copies).
        """
        ...

    def read_staged(
        self, upload_id: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream the staging object (a range of it), for hashing before finalising."""
        ...

    async def finalize(self, upload_id: str, key: str) -> None:
        """Turn the staging object into the object ``key``, without copying where possible."""
        ...

    async def discard(self, upload_id: str) -> None:
        """Remove the staging object; absent is not an error."""
        ...
