"""The upload routing map: which replica last wrote an upload.

The replica that last wrote an upload keeps in-process state for it (the running whole-file
hash, see :mod:`ingestd.uploads.tus`). A load balancer or client that sends the upload's
next PATCH to that replica spares a full re-read of the file at completion. The map is only
a hint: a missing or stale entry costs that re-read, never correctness, since the upload
lock and the recorded offset keep writes safe on any replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

_SWEEP_S = 60.0


class RoutingMap(Protocol):
    async def claim(self, upload_id: str, replica: str, ttl_s: float) -> None:
        """Record ``replica`` (its address, unique among replicas) as the upload's, for
        ``ttl_s`` seconds; claiming again replaces the replica and restarts the ttl.

        The replica that has just written the upload calls this. A shared map whose store
        fails raises an ingestd error (a StorageError).
        """
        ...

    async def lookup(self, upload_id: str) -> str | None:
        """The replica last claiming the upload, or None if none did within its ttl."""
        ...

    async def forget(self, upload_id: str) -> None:
        """Drop the entry (the upload completed or was terminated). Forgetting twice is fine."""
        ...


class InMemoryRouting:
    """The map for one process, for tests and single-replica runs."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._routes: dict[str, tuple[str, float]] = {}  # upload id -> (replica, expires)
        self._swept = clock()

    async def claim(self, upload_id: str, replica: str, ttl_s: float) -> None:
        now = self._clock()
        self._routes[upload_id] = (replica, now + ttl_s)
        if now - self._swept >= _SWEEP_S:  # entries nobody looks up again
            self._swept = now
            for stale in [k for k, (_, expires) in self._routes.items() if expires <= now]:
                del self._routes[stale]

    async def lookup(self, upload_id: str) -> str | None:
        route = self._routes.get(upload_id)
        if route is None:
            return None
        replica, expires = route
        if expires <= self._clock():
            del self._routes[upload_id]
            return None
        return replica

    async def forget(self, upload_id: str) -> None:
        self._routes.pop(upload_id, None)
