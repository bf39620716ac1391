"""The progress board: live figures of running steps, readable from any api replica.

A worker puts a running step's progress about once a second; api replicas read it for
status pages and event streams (which poll it twice a second), whichever replica serves
the request. The database keeps only the lease heartbeat (every 10 s); the board holds the
live figures and forgets them: a step that finished is cleared, and a figure nobody renewed
for ``ttl_s`` (its worker died) is no longer reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LiveProgress:
    """The latest figure of one work order."""

    order_id: str
    progress: float  # 0..1
    eta_s: float | None
    at: float  # unix time of the report


class ProgressBoard(Protocol):
    async def put(self, asset_id: str, order_id: str, progress: float, eta_s: float | None) -> None:
        """Record the order's latest figure (the worker running it calls this).

        The figure is dated now and kept for the board's ttl unless put again. A shared board
        whose store fails raises an ingestd error (a StorageError); a worker should log it
        and carry on, as progress is advisory.
        """
        ...

    async def get(self, asset_id: str) -> dict[str, LiveProgress]:
        """The latest figure of each of the asset's running orders, by order id.

        Orders never reported, cleared, or not renewed within the ttl are absent.
        """
        ...

    async def clear(self, asset_id: str, order_id: str) -> None:
        """Forget the order's figure: its step finished (or failed). Clearing twice is fine."""
        ...


class InMemoryProgress:
    """The board for one process (``ingestd serve``: the worker runs beside the api)."""

    def __init__(self, ttl_s: float = 120.0, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._boards: dict[str, dict[str, LiveProgress]] = {}
        self._swept = clock()

    async def put(self, asset_id: str, order_id: str, progress: float, eta_s: float | None) -> None:
        now = self._clock()
        board = self._boards.setdefault(asset_id, {})
        board[order_id] = LiveProgress(order_id, progress, eta_s, now)
        if now - self._swept >= self.ttl_s:
            self._sweep(now)

    async def get(self, asset_id: str) -> dict[str, LiveProgress]:
        now = self._clock()
        board = self._boards.get(asset_id, {})
        return {k: v for k, v in board.items() if now - v.at < self.ttl_s}

    async def clear(self, asset_id: str, order_id: str) -> None:
        board = self._boards.get(asset_id)
        if board is None:
            return
        board.pop(order_id, None)
        if not board:
            del self._boards[asset_id]

    def _sweep(self, now: float) -> None:
        """Drop figures left by steps that never cleared them, so memory stays bounded."""
        self._swept = now
        for asset_id in list(self._boards):
            board = self._boards[asset_id]
            for order_id in [k for k, v in board.items() if now - v.at >= self.ttl_s]:
                del board[order_id]
            if not board:
                del self._boards[asset_id]
