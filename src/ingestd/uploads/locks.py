"""Upload locks: one writer per upload at a time.

Two PATCHes on one tus upload must never interleave. The lock is a Protocol so that several
api processes can share one (Redis or PostgreSQL); the in-process lock serves a single
process, which is what ``ingestd serve`` is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from ingestd.errors import Locked

_MIN_WAIT_S = 0.05


class UploadLocker(Protocol):
    def hold(self, upload_id: str, *, wait_s: float) -> AbstractAsyncContextManager[None]:
        """Hold the upload's lock for the block; wait up to ``wait_s``, then raise Locked."""
        ...


class InProcessLocker:
    """asyncio locks keyed by upload id, dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, upload_id: str, *, wait_s: float) -> AsyncIterator[None]:
        lock = self._locks.setdefault(upload_id, asyncio.Lock())
        self._users[upload_id] = self._users.get(upload_id, 0) + 1
        try:
            try:
                # a free lock is taken at its first step, so even wait_s=0 can succeed
                await asyncio.wait_for(lock.acquire(), timeout=max(wait_s, _MIN_WAIT_S))
            except TimeoutError:
                raise Locked(
                    f"upload {upload_id} is being written by another request; "
                    "retry once it has finished",
                    retry_after_s=1,
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._users[upload_id] -= 1
            if not self._users[upload_id]:
                del self._users[upload_id]
                del self._locks[upload_id]

    def held(self, upload_id: str) -> bool:
        lock = self._locks.get(upload_id)
        return lock is not None and lock.locked()
