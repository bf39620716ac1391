"""A watched folder: files are ordered for ingestion once they stop growing.

The folder is polled (no new dependency, and it works on network mounts where inotify does
not): a file is ordered when its size and modification time have not changed for
``settle_s``. A file whose order already recorded that size and time is not ordered again.
Hidden files (a leading dot, as most tools name the partial file of a copy) and symlinks
are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from ingestd.domain.states import IngestOrderStatus
from ingestd.errors import IngestdError
from ingestd.uploads.orders import FileStamp, OrderService, OrderView

__all__ = ["FolderWatcher", "scan_folder"]


@dataclass
class _Seen:
    stamp: FileStamp
    since: float  # when the file last changed, by the watcher's clock


def scan_folder(directory: Path) -> dict[Path, FileStamp]:
    """Regular, non-hidden files under ``directory`` (symlinks not followed)."""
    found: dict[Path, FileStamp] = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root) / name
            try:
                st = path.lstat()
            except FileNotFoundError:  # gone between the listing and now
                continue
            if path.is_symlink() or not path.is_file():
                continue
            found[path] = FileStamp(st.st_size, st.st_mtime_ns)
    return found


class FolderWatcher:
    def __init__(
        self,
        orders: OrderService,
        owner_id: str,
        directory: Path,
        *,
        settle_s: float,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.orders = orders
        self.owner_id = owner_id
        self.directory = Path(os.path.realpath(directory))
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.clock = clock
        self.log = logger or logging.getLogger("ingestd.watch")
        self._seen: dict[Path, _Seen] = {}
        self._done: dict[Path, FileStamp] = {}  # ordered, or already ingested, as it is now

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``."""
        while not stop.is_set():
            try:
                await self.scan_once()
            except IngestdError as exc:  # e.g. the database away for a moment
                self.log.warning("watch %s: %s", self.directory, exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)

    async def scan_once(self) -> list[OrderView]:
        """Look once; order the files that have settled. Returns the orders made."""
        now = self.clock()
        found = await anyio.to_thread.run_sync(scan_folder, self.directory)
        for gone in set(self._seen) - set(found):
            del self._seen[gone]
            self._done.pop(gone, None)
        made: list[OrderView] = []
        for path, stamp in sorted(found.items()):
            seen = self._seen.get(path)
            if seen is None or seen.stamp != stamp:  # new, or still being written
                self._seen[path] = _Seen(stamp, now)
                continue
            if now - seen.since < self.settle_s or self._done.get(path) == stamp:
                continue
            order = await self._order(path, stamp)
            if order is not None:
                made.append(order)
        return made

    async def _order(self, path: Path, stamp: FileStamp) -> OrderView | None:
        existing = await self.orders.find(self.owner_id, path)
        if existing is not None:
            status = IngestOrderStatus(existing.status)
            if status in (IngestOrderStatus.QUEUED, IngestOrderStatus.STARTED):
                return None  # pending: it reads the file as it is when it runs; look again
            if stamp.matches(existing.content):  # ingested (or refused) as it is now
                self._done[path] = stamp
                return None
        try:
            order = await self.orders.request(self.owner_id, str(path), restricted=False)
        except IngestdError as exc:  # e.g. it went away meanwhile
            self.log.warning("watch: %s not ordered: %s", path, exc.message)
            return None
        self._done[path] = stamp
        self.log.info("watch: ordered %s (%s)", path, order.id)
        return order
