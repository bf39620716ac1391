"""Dispatchers tell workers that work may be waiting. The database stays the truth.

A lost announcement only costs a poll interval; a duplicate costs one empty claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from ingestd.jobs.engine import Ready


class Hint(Protocol):
    """A message naming one order that may be claimed now."""

    @property
    def order_id(self) -> str: ...

    async def settle(self) -> None:
        """The claim was tried and its transaction committed (or found nothing to take):
        the message is done. Errors of a broker that went away are swallowed: the message
        comes back and its claim finds nothing."""
        ...

    async def retry(self) -> None:
        """The claim could not be tried (the database failed): deliver the message again."""
        ...


class Dispatcher(Protocol):
    async def announce(self, ready: Sequence[Ready]) -> None:
        """Say that these orders may be claimed now. Called after their transaction commits."""
        ...

    async def wait(self, queues: Sequence[str], max_wait_s: float, limit: int) -> list[Hint]:
        """Return when work may be waiting on one of ``queues``, or after ``max_wait_s``.

        Returns at most ``limit`` hints naming orders (a broker's messages) the caller must
        settle after claiming; an empty list means "look in the database". With ``limit``
        0 the caller is full: no message may be held for it meanwhile.
        """
        ...

    async def close(self) -> None: ...


class InProcessDispatcher:
    """One process: an event per queue wakes the workers of that process."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, queue: str) -> asyncio.Event:
        return self._events.setdefault(queue, asyncio.Event())

    async def announce(self, ready: Sequence[Ready]) -> None:
        for queue in {r.queue for r in ready}:
            self._event(queue).set()

    async def wait(self, queues: Sequence[str], max_wait_s: float, limit: int) -> list[Hint]:
        events = [self._event(q) for q in queues]
        if not any(e.is_set() for e in events):
            waiters = [asyncio.create_task(e.wait()) for e in events]
            try:
                await asyncio.wait(waiters, timeout=max_wait_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        for e in events:
            e.clear()
        return []

    async def close(self) -> None:
        return None
