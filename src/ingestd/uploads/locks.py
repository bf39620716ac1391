"""Upload locks: one writer per upload at a time, and lock release requests.

Two PATCHes on one tus upload must never interleave. The lock is a Protocol so that several
api processes can share one (:class:`ingestd.coordination.redis.RedisLocker`); the
in-process lock serves a single process, which is what ``ingestd serve`` is.

A request that waits for an upload asks the one holding it to let go, as tusd's lock
release requests do: a client that reconnects after a stall takes over at once, and the
stalled PATCH ends and keeps what it had received.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from ingestd.errors import Locked

log = logging.getLogger("ingestd.locks")


class UploadLocker(Protocol):
    def hold(
        self,
        upload_id: str,
        *,
        wait_s: float,
        on_release_request: Callable[[], None] | None = None,
    ) -> AbstractAsyncContextManager[None]:
        """Hold the upload's lock for the block.

        A free lock is taken at once (even with ``wait_s=0``). A held one is waited for up
        to ``wait_s`` seconds, then Locked is raised (``retry_after_s=1``). While a caller
        waits (``wait_s > 0``; ``wait_s=0`` only tries, and disturbs nobody), the current
        holder's ``on_release_request`` is called, at most once per holding, in the
        holder's process and event loop, so that a stalled PATCH ends and keeps what it
        has; the waiter then gets the lock. The callback must not block; an exception it
        raises is logged and ignored.

        A shared lock can be lost while held (its process stalled past the lock's expiry):
        the holder's ``on_release_request`` is then called too, and it must stop writing.
        Leaving the block always releases what is still this holder's, never another's.
        A shared lock whose store fails raises an ingestd error (a StorageError).
        """
        ...


def locked(upload_id: str) -> Locked:
    """The error a locker raises when ``upload_id`` stays held past the caller's wait."""
    return Locked(
        f"upload {upload_id} is being written by another request; retry once it has finished",
        retry_after_s=1,
    )


class ReleaseRequest:
    """A holder's ``on_release_request``, called at most once (errors logged, not raised)."""

    def __init__(self, upload_id: str, callback: Callable[[], None] | None) -> None:
        self.upload_id = upload_id
        self._callback = callback
        self.asked = False

    def ask(self) -> None:
        if self.asked:
            return
        self.asked = True
        if self._callback is None:
            return
        try:
            self._callback()
        except Exception:  # the holder's bug must not break the waiter
            log.exception("release request for upload %s failed", self.upload_id)


class _Holding:
    def __init__(self, upload_id: str, on_release_request: Callable[[], None] | None) -> None:
        self.release = ReleaseRequest(upload_id, on_release_request)
        self.released = asyncio.Event()


class InProcessLocker:
    """Locks for one process, keyed by upload id, dropped once released.

    Waiters are not queued in order: when the lock is released every waiter wakes, one takes
    it, and the others ask the new holder to release in turn (as tusd's memory locker does).
    """

    def __init__(self) -> None:
        self._holdings: dict[str, _Holding] = {}

    @asynccontextmanager
    async def hold(
        self,
        upload_id: str,
        *,
        wait_s: float,
        on_release_request: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait_s, 0.0)
        while (current := self._holdings.get(upload_id)) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise locked(upload_id)
            current.release.ask()
            try:
                await asyncio.wait_for(current.released.wait(), timeout=remaining)
            except TimeoutError:
                raise locked(upload_id) from None
        mine = _Holding(upload_id, on_release_request)
        self._holdings[upload_id] = mine
        try:
            yield
        finally:
            del self._holdings[upload_id]
            mine.released.set()

    def held(self, upload_id: str) -> bool:
        return upload_id in self._holdings
