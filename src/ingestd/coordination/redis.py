"""Coordination of several api and worker replicas through Redis.

Three shared things, each the Redis implementation of a small Protocol whose in-process
twin serves a single process:

- :class:`RedisLocker` (:class:`ingestd.uploads.locks.UploadLocker`): upload locks with
  lock release requests carried across processes over pub/sub;
- :class:`RedisProgress` (:class:`ingestd.jobs.progress.ProgressBoard`): live progress of
  running steps;
- :class:`RedisRouting` (:class:`ingestd.uploads.routing.RoutingMap`): which replica last
  wrote an upload.

Every Redis failure is raised as :class:`CoordinationError` (a StorageError, so the api
answers 503), except where noted: a release that cannot reach Redis is logged, and the lock
then expires on its own. Objects here belong to one event loop, the one that first uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ingestd.errors import ConfigError, Locked, StorageError
from ingestd.jobs.progress import LiveProgress
from ingestd.uploads.locks import ReleaseRequest, locked

__all__ = [
    "CoordinationError",
    "RedisCoordination",
    "RedisLocker",
    "RedisProgress",
    "RedisRouting",
    "connect",
]

log = logging.getLogger("ingestd.coordination")

_CONNECT_TIMEOUT_S = 5.0
_IO_TIMEOUT_S = 10.0
_FIRST_PAUSE_S = 0.02  # a waiter's first pause between attempts; it doubles up to the last
_LAST_PAUSE_S = 0.25
_RELISTEN_S = 1.0

# A taken lock answers "", a held one its holder's token, which is asked to release when
# ARGV[3] names the request channel. Atomic, so the GET always finds the key SET NX saw.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '' end
local holder = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], holder) end
return holder
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class CoordinationError(StorageError):
    """The coordination store (Redis) failed or did not answer."""

    code = "coordination_error"


def _where(url: str) -> str:
    """The url without credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _client(url: str) -> aioredis.Redis:
    """A client that connects on first use, failing fast rather than retrying for long."""
    try:
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_IO_TIMEOUT_S,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=3),
        )
    except ValueError as exc:
        raise ConfigError(f"the Redis url {_where(url)} is not valid: {exc}") from exc


async def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` that has answered a PING.

    Raises ConfigError for a url that is not a Redis url, and CoordinationError when Redis
    does not answer (refused, timed out, wrong password).
    """
    client = _client(url)
    try:
        await client.ping()
    except RedisError as exc:
        await client.aclose()
        raise CoordinationError(f"Redis at {_where(url)} does not answer: {exc}") from exc
    return client


@contextlib.contextmanager
def _mapped(doing: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise CoordinationError(f"Redis failed to {doing}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


# -- upload locks ----------------------------------------------------------------------


@dataclass(eq=False)
class _Holding:
    upload_id: str
    token: str
    release: ReleaseRequest
    taken: bool = False
    lost: bool = False
    renewal: asyncio.Task[None] | None = field(default=None, repr=False)


class RedisLocker:
    """Upload locks shared by every process using the same Redis and ``prefix``.

    The lock of an upload is the key ``{prefix}{upload_id}``, holding a random token of its
    holder and expiring after ``ttl_s``; the holder renews it every ``ttl_s / 3`` while its
    block runs, so the lock of a process that died frees itself after at most ``ttl_s``.
    Release deletes the key only if it still holds the holder's token.

    Waiters retry with a short backoff, woken early when a lock is released (channel
    ``{prefix}released``, the upload id as message). Each attempt of a waiter (``wait_s >
    0``) publishes the holder's token on ``{prefix}release-requests``; the process holding
    that token calls its ``on_release_request``. Every locker subscribes to both channels
    from its first ``hold`` until :meth:`close`.

    A holder whose renewal finds its token gone, or that cannot reach Redis for two thirds
    of ``ttl_s``, has lost the lock: its ``on_release_request`` is called (once per
    holding, like a waiter's request) and it must stop.
    """

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: float = 30.0) -> None:
        if ttl_s <= 0:
            raise ConfigError(f"the lock ttl must be positive, not {ttl_s}")
        self.ttl_s = ttl_s
        self._client = client
        self._prefix = prefix
        self._requests = f"{prefix}release-requests"
        self._released = f"{prefix}released"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew_script = client.register_script(_RENEW)
        self._release_script = client.register_script(_RELEASE)
        self._holdings: dict[str, _Holding] = {}  # by token
        self._waiters: dict[str, set[asyncio.Event]] = {}  # by upload id
        self._subscribing = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def hold(
        self,
        upload_id: str,
        *,
        wait_s: float,
        on_release_request: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        """See :meth:`ingestd.uploads.locks.UploadLocker.hold`.

        Raises Locked after ``wait_s``, CoordinationError when Redis fails while taking the
        lock. A failed release is logged, not raised: the lock then expires after ``ttl_s``.
        """
        await self._listen()  # before taking: a release request must find the holding
        holding = _Holding(
            upload_id, uuid.uuid4().hex, ReleaseRequest(upload_id, on_release_request)
        )
        self._holdings[holding.token] = holding
        refused = False
        try:
            await self._take(holding, wait_s)
            holding.taken = True
        except Locked:
            refused = True
            raise
        finally:
            if not holding.taken:
                del self._holdings[holding.token]
                if not refused:  # cancelled or failed after Redis may have applied the SET
                    holding.lost = True
                    await asyncio.shield(self._release(holding))
        holding.renewal = asyncio.create_task(self._renew(holding))
        try:
            yield
        finally:
            holding.renewal.cancel()
            await asyncio.wait([holding.renewal])
            del self._holdings[holding.token]
            # the release runs to its end even if this task is being cancelled
            await asyncio.shield(self._release(holding))

    def held(self, upload_id: str) -> bool:
        """Whether a block of this process holds the upload's lock (and has not lost it)."""
        return any(
            h.upload_id == upload_id and h.taken and not h.lost for h in self._holdings.values()
        )

    async def close(self) -> None:
        """Stop listening for release requests (blocks still holding locks keep them)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])

    def _key(self, upload_id: str) -> str:
        return f"{self._prefix}{upload_id}"

    async def _take(self, holding: _Holding, wait_s: float) -> None:
        upload_id = holding.upload_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait_s, 0.0)
        ask = self._requests if wait_s > 0 else ""  # wait_s=0 only tries
        wake = asyncio.Event()
        self._waiters.setdefault(upload_id, set()).add(wake)
        pause = _FIRST_PAUSE_S
        try:
            while True:
                wake.clear()
                with _mapped(f"lock upload {upload_id}"):
                    holder = await self._acquire(
                        keys=[self._key(upload_id)], args=[holding.token, self._ttl_ms, ask]
                    )
                if holder is not None and _text(holder) == "":
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise locked(upload_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=min(pause, remaining))
                pause = min(pause * 2, _LAST_PAUSE_S)
        finally:
            waiters = self._waiters[upload_id]
            waiters.discard(wake)
            if not waiters:
                del self._waiters[upload_id]

    @property
    def _ttl_ms(self) -> int:
        return _ms(self.ttl_s)

    async def _renew(self, holding: _Holding) -> None:
        loop = asyncio.get_running_loop()
        every = self.ttl_s / 3
        renewed = loop.time()
        while True:
            await asyncio.sleep(every)
            started = loop.time()
            try:
                kept = await self._renew_script(
                    keys=[self._key(holding.upload_id)], args=[holding.token, self._ttl_ms]
                )
            except RedisError as exc:
                if loop.time() - renewed < self.ttl_s * 2 / 3:
                    log.warning("cannot renew the lock of upload %s: %s", holding.upload_id, exc)
                    continue
                why = f"Redis has not answered for {loop.time() - renewed:.1f} s ({exc})"
            else:
                if kept:
                    renewed = started
                    continue
                why = "it expired or was taken"
            holding.lost = True
            log.warning("lost the lock of upload %s: %s", holding.upload_id, why)
            holding.release.ask()
            return

    async def _release(self, holding: _Holding) -> None:
        try:
            freed = await self._release_script(
                keys=[self._key(holding.upload_id)],
                args=[holding.token, self._released, holding.upload_id],
            )
        except RedisError as exc:
            log.warning(
                "cannot release the lock of upload %s (%s); it expires within %.0f s",
                holding.upload_id,
                exc,
                self.ttl_s,
            )
            return
        if not freed and not holding.lost:
            log.warning("the lock of upload %s expired while held", holding.upload_id)

    async def _listen(self) -> None:
        """Subscribe to the lock channels once, confirmed before the first lock is taken."""
        if self._listener is not None and not self._listener.done():
            return
        async with self._subscribing:
            if self._listener is not None and not self._listener.done():
                return
            pubsub = self._client.pubsub()
            try:
                with _mapped("subscribe to lock release requests"):
                    await pubsub.subscribe(self._requests, self._released)
                    await self._confirmed(pubsub, 2)
                self._listener = asyncio.create_task(self._read(pubsub))
            finally:
                if self._listener is None or self._listener.done():
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _confirmed(self, pubsub: PubSub, channels: int) -> None:
        deadline = time.monotonic() + _IO_TIMEOUT_S
        while channels:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CoordinationError("Redis did not confirm the lock channel subscription")
            message = await pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message["type"] == "subscribe":
                channels -= 1
            else:
                self._dispatch(message)

    async def _read(self, pubsub: PubSub) -> None:
        failing = False
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                except RedisError as exc:
                    # the next read reconnects and subscribes again; meanwhile waiters keep
                    # asking on every attempt, so a lost request is repeated
                    if not failing:
                        log.warning("lock release channel lost (%s); reconnecting", exc)
                    failing = True
                    await asyncio.sleep(_RELISTEN_S)
                    continue
                failing = False
                if message is not None:
                    self._dispatch(message)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel, data = _text(message["channel"]), _text(message["data"])
        if channel == self._requests:
            holding = self._holdings.get(data)
            if holding is not None and holding.taken:
                holding.release.ask()
        elif channel == self._released:
            for wake in self._waiters.get(data, ()):
                wake.set()


# -- progress board --------------------------------------------------------------------


class RedisProgress:
    """The progress board shared by every replica: a hash per asset, ``{prefix}{asset_id}``,
    with a field per running order holding its latest figure as JSON.

    Each call is one round trip. A put refreshes the hash's ttl; a figure older than
    ``ttl_s`` (its worker stopped putting without clearing) is left out by ``get``.
    Raises CoordinationError when Redis fails.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        ttl_s: float = 120.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self._client = client
        self._prefix = prefix
        self._clock = clock

    async def put(self, asset_id: str, order_id: str, progress: float, eta_s: float | None) -> None:
        key = f"{self._prefix}{asset_id}"
        figure = json.dumps({"progress": progress, "eta_s": eta_s, "at": self._clock()})
        with _mapped(f"record the progress of asset {asset_id}"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, order_id, figure)
                pipe.pexpire(key, _ms(self.ttl_s))
                await pipe.execute()

    async def get(self, asset_id: str) -> dict[str, LiveProgress]:
        with _mapped(f"read the progress of asset {asset_id}"):
            fields = await self._client.hgetall(f"{self._prefix}{asset_id}")
        now = self._clock()
        out: dict[str, LiveProgress] = {}
        for raw_order, raw_figure in fields.items():
            order_id = _text(raw_order)
            try:
                figure = json.loads(raw_figure)
                live = LiveProgress(
                    order_id, float(figure["progress"]), figure["eta_s"], float(figure["at"])
                )
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed progress figure of %s/%s", asset_id, order_id)
                continue
            if now - live.at < self.ttl_s:
                out[order_id] = live
        return out

    async def clear(self, asset_id: str, order_id: str) -> None:
        with _mapped(f"clear the progress of asset {asset_id}"):
            await self._client.hdel(f"{self._prefix}{asset_id}", order_id)


# -- routing map -----------------------------------------------------------------------


class RedisRouting:
    """The upload routing map shared by every replica: ``{prefix}{upload_id}`` holds the
    replica, expiring after the claim's ttl. Raises CoordinationError when Redis fails."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def claim(self, upload_id: str, replica: str, ttl_s: float) -> None:
        with _mapped(f"route upload {upload_id}"):
            await self._client.set(f"{self._prefix}{upload_id}", replica, px=_ms(ttl_s))

    async def lookup(self, upload_id: str) -> str | None:
        with _mapped(f"look up the route of upload {upload_id}"):
            replica = await self._client.get(f"{self._prefix}{upload_id}")
        return None if replica is None else _text(replica)

    async def forget(self, upload_id: str) -> None:
        with _mapped(f"forget the route of upload {upload_id}"):
            await self._client.delete(f"{self._prefix}{upload_id}")


# -- composition -----------------------------------------------------------------------


class RedisCoordination:
    """The three shared services on one client, under one key prefix.

    Keys: ``{prefix}lock:{upload_id}``, ``{prefix}progress:{asset_id}``,
    ``{prefix}route:{upload_id}``; channels ``{prefix}lock:release-requests`` and
    ``{prefix}lock:released``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "ingestd:",
        *,
        lock_ttl_s: float = 30.0,
        progress_ttl_s: float = 120.0,
    ) -> None:
        self.client = client
        self.locker = RedisLocker(client, f"{prefix}lock:", ttl_s=lock_ttl_s)
        self.progress = RedisProgress(client, f"{prefix}progress:", ttl_s=progress_ttl_s)
        self.routing = RedisRouting(client, f"{prefix}route:")

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "ingestd:",
        *,
        lock_ttl_s: float = 30.0,
        progress_ttl_s: float = 120.0,
    ) -> RedisCoordination:
        """Built synchronously, connecting on first use (raises ConfigError for a bad url).

        Call :meth:`check` at startup to fail early when Redis does not answer.
        """
        return cls(_client(url), prefix, lock_ttl_s=lock_ttl_s, progress_ttl_s=progress_ttl_s)

    async def check(self) -> None:
        """Raise CoordinationError unless Redis answers a PING."""
        with _mapped("answer a PING"):
            await self.client.ping()

    async def close(self) -> None:
        await self.locker.close()
        await self.client.aclose()
