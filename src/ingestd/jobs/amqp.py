"""RabbitMQ dispatch: the database stays the truth, messages only say "order X is ready".

Topology (declared by every process, idempotently):

- one durable quorum queue per ingestd queue, ``<prefix><queue>`` (``ingestd.default``,
  ``ingestd.encode``), bound to the direct exchange ``<prefix>work`` under the queue's name,
  so heavy (encode) and light steps get separate pools of workers;
- a dead-letter exchange and quorum queue ``<prefix>dead``: a message that is not an
  order message, or that was delivered ``delivery_limit`` times without being settled,
  ends there instead of going round forever.

Publishing goes through the outbox (:meth:`JobEngine.outbox_batch`): the transaction that
made an order ready wrote a row; :meth:`AmqpDispatcher.announce` publishes the waiting rows
with publisher confirms and deletes them after the broker confirmed. A row that a crash or
a broker outage left behind is published by the next announce or by the periodic relay.

Consuming: a worker holds at most ``limit`` unsettled deliveries, and none while it is
full (consumers are cancelled and what they held goes back), and it settles (acks) each
delivery right after its claim commits, so the broker's consumer timeout never meets a
multi-hour encode. A lost or duplicated message is harmless: workers also poll the
database, and a claim of an order that is no longer ready finds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError
from aiormq.exceptions import AMQPError as RawAMQPError
from aiormq.exceptions import ChannelInvalidStateError
from sqlalchemy.exc import SQLAlchemyError

from ingestd.errors import BrokerError, ConfigError
from ingestd.jobs.dispatch import Hint
from ingestd.jobs.engine import JobEngine, Ready

#: Errors of a broker that is away or refused something; the outbox keeps the messages.
#: (aio-pika reports a channel or connection closed under it as a RuntimeError.)
BROKER_ERRORS = (
    AMQPError,
    RawAMQPError,
    ChannelInvalidStateError,
    RuntimeError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class Topology:
    prefix: str = "ingestd."
    delivery_limit: int = 5

    @property
    def exchange(self) -> str:
        return f"{self.prefix}work"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    def queue(self, name: str) -> str:
        return f"{self.prefix}{name}"


def order_message(ready: Ready) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps({"order_id": ready.order_id, "queue": ready.queue}).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def parse_order_message(body: bytes) -> str | None:
    """The order id a message names, or None if it is not an order message (poison)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    order_id = data.get("order_id") if isinstance(data, dict) else None
    return order_id if isinstance(order_id, str) and 0 < len(order_id) <= 40 else None


def _retrieved(task: asyncio.Future[int]) -> None:
    if not task.cancelled():
        task.exception()


class _Delivery:
    """A delivery naming an order; settled once."""

    def __init__(self, message: AbstractIncomingMessage, order_id: str) -> None:
        self.message = message
        self._order_id = order_id
        self._settled = False

    @property
    def order_id(self) -> str:
        return self._order_id

    async def settle(self) -> None:
        await self._finish(requeue=None)

    async def retry(self) -> None:
        await self._finish(requeue=True)

    async def _finish(self, *, requeue: bool | None) -> None:
        if self._settled:
            return
        self._settled = True
        # the channel may have gone with the broker: the message then comes back by itself
        with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
            if requeue is None:
                await self.message.ack()
            else:
                await self.message.nack(requeue=requeue)


class AmqpDispatcher:
    def __init__(
        self,
        url: str,
        engine: JobEngine,
        *,
        topology: Topology | None = None,
        prefetch: int = 2,
        relay_interval_s: float = 5.0,
        announce_wait_s: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"INGESTD_BROKER_URL must be amqp:// or amqps://, not {url!r}")
        self.url = url
        self.engine = engine
        self.topology = topology or Topology()
        self.prefetch = max(1, prefetch)
        self.relay_interval_s = relay_interval_s
        self.announce_wait_s = announce_wait_s
        self.log = logger or logging.getLogger("ingestd.amqp")
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._consume_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queues: dict[str, AbstractQueue] = {}
        self._consumers: dict[str, tuple[AbstractQueue, str]] = {}  # name -> (queue, tag)
        self._buffer: list[_Delivery] = []
        self._arrived = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._relay_lock = asyncio.Lock()
        self._relay_again = False
        self._relay_task: asyncio.Task[None] | None = None

    # -- connection and topology --------------------------------------------------------

    async def _connect(self) -> AbstractRobustConnection:
        async with self._connect_lock:
            if self._connection is None:
                self._connection = await aio_pika.connect_robust(
                    self.url, client_properties={"connection_name": "ingestd"}
                )
                channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await self._declare(channel)
                self._publish_channel = channel
                self._relay_task = asyncio.create_task(self._relay_loop())
            return self._connection

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        t = self.topology
        dead = await channel.declare_exchange(t.dead, aio_pika.ExchangeType.FANOUT, durable=True)
        dead_queue = await channel.declare_queue(
            t.dead, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead)
        return await channel.declare_exchange(
            t.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )

    async def _queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        t = self.topology
        queue = await channel.declare_queue(
            t.queue(name),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": t.dead,
                "x-delivery-limit": t.delivery_limit,
            },
        )
        await queue.bind(t.exchange, routing_key=name)
        return queue

    # -- publishing (from the outbox) ---------------------------------------------------

    async def announce(self, ready: Sequence[Ready]) -> None:
        """Publish what the outbox holds (``ready`` is in it: written with the orders).

        Never fails and never holds the caller long: a broker that is away or slow leaves
        the messages to the relay loop (shielded, so a publish is never cut in half)."""
        task = asyncio.ensure_future(self.relay())
        task.add_done_callback(_retrieved)  # a relay that outlives the wait logs nothing
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.announce_wait_s)
        except (BrokerError, TimeoutError) as exc:
            self.log.warning(
                "broker unavailable, %d message(s) stay in the outbox: %s", len(ready), exc
            )

    async def relay(self) -> int:
        """Publish every waiting outbox message with confirms; returns how many.

        Raises :class:`BrokerError` when the broker is away (the messages stay)."""
        try:
            return await self._relay()
        except BROKER_ERRORS as exc:
            raise BrokerError(f"cannot publish to the broker: {exc}") from exc

    async def _relay(self) -> int:
        if self._relay_lock.locked():
            self._relay_again = True  # the running relay goes round once more
            return 0
        sent = 0
        async with self._relay_lock:
            await self._connect()
            assert self._publish_channel is not None and self._exchange is not None
            while True:
                self._relay_again = False
                batch = await asyncio.to_thread(self.engine.outbox_batch)
                if not batch:
                    break
                for _, ready in batch:
                    if ready.queue not in self._queues:
                        self._queues[ready.queue] = await self._queue(
                            self._publish_channel, ready.queue
                        )
                await asyncio.gather(
                    *(
                        self._exchange.publish(order_message(r), routing_key=r.queue)
                        for _, r in batch
                    )
                )
                await asyncio.to_thread(self.engine.outbox_done, [i for i, _ in batch])
                sent += len(batch)
                self.log.debug("published %s", [r.order_id for _, r in batch])
                if len(batch) < 200 and not self._relay_again:
                    break
        return sent

    async def _relay_loop(self) -> None:
        """Publish what a crash or a broker outage left in the outbox."""
        while True:
            await asyncio.sleep(self.relay_interval_s)
            try:
                await self.relay()
            except (BrokerError, SQLAlchemyError) as exc:
                self.log.warning("outbox relay: %s", exc)

    # -- consuming ----------------------------------------------------------------------

    async def wait(self, queues: Sequence[str], max_wait_s: float, limit: int) -> list[Hint]:
        if limit <= 0:
            await asyncio.shield(self._pause())
            await asyncio.sleep(max_wait_s)
            return []
        try:
            # shielded: a cancelled broker call would close the channel under the others
            await asyncio.shield(self._consume(queues))
        except BROKER_ERRORS as exc:  # the database is polled meanwhile
            self.log.warning("cannot consume from the broker: %s", exc)
            await asyncio.sleep(max_wait_s)
            return []
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=max_wait_s)
        # no await from here on: a cancelled wait never drops a delivery it took
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return list(taken)

    async def _consume(self, queues: Sequence[str]) -> None:
        await self._connect()
        assert self._connection is not None
        if self._consume_channel is None:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            self._consume_channel = channel
        for name in queues:
            if name in self._consumers:
                continue
            queue = await self._queue(self._consume_channel, name)
            self._consumers[name] = (queue, await queue.consume(self._on_message))

    async def _pause(self) -> None:
        """Full: stop taking messages and hand back the ones held."""
        for queue, tag in self._consumers.values():
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await queue.cancel(tag)
        self._consumers.clear()
        held, self._buffer = self._buffer, []
        for delivery in held:
            await delivery.retry()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        order_id = parse_order_message(message.body)
        if order_id is None:
            self.log.warning("not an order message; dead-lettered: %r", message.body[:200])
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await message.reject(requeue=False)
            return
        self.log.debug("delivered %s (redelivered: %s)", order_id, message.redelivered)
        self._buffer.append(_Delivery(message, order_id))
        self._arrived.set()

    async def close(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        held, self._buffer = self._buffer, []
        for delivery in held:
            await delivery.retry()
        if self._connection is not None:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await self._connection.close()
            self._connection = None
