"""Chunk uploads consumed from a RabbitMQ queue (``ingestd amqp-ingest``).

A gateway publishes a file as one message per chunk (the contract is in
:mod:`ingestd.uploads.amqp_message` and docs/amqp-ingest.md). Each chunk becomes a verified
block of the upload the sender named; a message is acked only once its block is recorded,
so every outcome survives a crash by redelivery, and redelivery is harmless:

- an invalid message is published to the dead-letter queue with the reason in its headers,
  then acked; nothing of it is written;
- a transient failure (database, storage, lock) is requeued after a short delay, and
  dead-lettered once it has been delivered ``max_deliveries`` times;
- the chunk that makes the upload whole completes it, under the upload's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Collection
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.exceptions import AMQPError, ChannelPreconditionFailed
from sqlalchemy.exc import SQLAlchemyError

from ingestd.domain.states import UploadStatus
from ingestd.errors import (
    ConfigError,
    Gone,
    IngestdError,
    InvalidRequest,
    InvalidState,
    UploadIncomplete,
)
from ingestd.uploads.amqp_message import (
    Chunk,
    ChunkRejected,
    Reason,
    check_upload_shape,
    parse_chunk,
)
from ingestd.uploads.locks import UploadLocker
from ingestd.uploads.service import NewUpload, UploadInfo, UploadService

__all__ = ["H_ERROR", "H_REASON", "AmqpChunkIngest", "queue_arguments"]

H_ERROR = "x-ingestd-error"  # a Reason value
H_REASON = "x-ingestd-reason"  # the reason as text
H_QUEUE = "x-ingestd-queue"  # the queue the message came from
H_DELIVERIES = "x-ingestd-deliveries"  # how often it had been delivered
H_DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues: earlier deliveries

PROTOCOL = "amqp"
# failures that explain themselves; anything else is logged with its traceback
_EXPECTED = (IngestdError, SQLAlchemyError, OSError, AMQPError, TimeoutError)


def queue_arguments() -> dict[str, Any]:
    """Both queues are durable quorum queues: replicated, and they count redeliveries."""
    return {"x-queue-type": "quorum"}


class AmqpChunkIngest:
    """Consumes chunk messages for one owner, fixed when it starts (never by a message)."""

    def __init__(
        self,
        uploads: UploadService,
        locker: UploadLocker,
        owner_id: str,
        url: str,
        queue: str,
        *,
        dead_letter_queue: str | None = None,
        prefetch: int = 4,
        max_deliveries: int = 5,
        retry_delay_s: float = 1.0,
        lock_wait_s: float = 60.0,
        connect_retry_s: float = 5.0,
        profiles: Collection[str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if prefetch < 1 or max_deliveries < 1:
            raise ValueError("prefetch and max_deliveries must be at least 1")
        self.uploads = uploads
        self.locker = locker
        self.owner_id = owner_id
        self.url = url
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue or f"{queue}.dead"
        self.prefetch = prefetch
        self.max_deliveries = max_deliveries
        self.retry_delay_s = retry_delay_s
        self.lock_wait_s = lock_wait_s
        self.connect_retry_s = connect_retry_s
        self.profiles = profiles
        self.log = logger or logging.getLogger("ingestd.amqp_ingest")
        self._channel: AbstractChannel | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    # -- the consumer loop ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish the messages in hand and return.

        The connection is robust: a broker restart is survived by reconnecting and
        consuming again; messages that were in hand are redelivered by the broker.
        """
        connection = await self._connect(stop)
        if connection is None:
            return
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.prefetch)
            try:
                await channel.declare_queue(
                    self.dead_letter_queue, durable=True, arguments=queue_arguments()
                )
                queue = await channel.declare_queue(
                    self.queue, durable=True, arguments=queue_arguments()
                )
            except ChannelPreconditionFailed as exc:
                raise ConfigError(
                    f"queue {self.queue} or {self.dead_letter_queue} exists with other "
                    f"arguments than a durable quorum queue: {exc}"
                ) from exc
            tag = await queue.consume(self._on_message)
            self.log.info(
                "consuming %s (dead letters: %s, prefetch %d)",
                self.queue,
                self.dead_letter_queue,
                self.prefetch,
            )
            await stop.wait()
            with contextlib.suppress(AMQPError, RuntimeError, TimeoutError):
                await asyncio.wait_for(queue.cancel(tag), timeout=10)
            while self._inflight:  # their acks need the channel that delivered them
                await asyncio.gather(*self._inflight, return_exceptions=True)
        finally:
            self._channel = None
            await connection.close()

    async def _connect(self, stop: asyncio.Event) -> AbstractRobustConnection | None:
        """The first connection, retried until it succeeds or ``stop`` is set."""
        while not stop.is_set():
            try:
                return await aio_pika.connect_robust(self.url)
            except (AMQPError, OSError) as exc:
                self.log.warning(
                    "broker not reachable (%s); retrying in %.0f s", exc, self.connect_retry_s
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.connect_retry_s)
        return None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self.handle(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    # -- one message ------------------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Settle one message: ack it, dead-letter it, or requeue it after a delay."""
        try:
            try:
                await self.ingest(message)
            except ChunkRejected as exc:
                await self._dead_letter(message, exc.reason, exc.message)
            except Gone as exc:
                await self._dead_letter(message, Reason.UPLOAD_GONE, exc.message)
            except InvalidRequest as exc:  # the service's verdict on the chunk: final
                await self._dead_letter(message, Reason.REJECTED, f"{exc.code}: {exc.message}")
        except Exception as exc:  # transient: database, storage, lock, broker
            await self._retry_later(message, exc)
            return
        await self._settle(message.ack(), message)

    async def ingest(self, message: AbstractIncomingMessage) -> None:
        """Record the message's chunk (and complete its upload if it was the last);
        returns when the chunk is durable. Raises ChunkRejected, Gone or InvalidRequest
        for a message that can never succeed, anything else for a transient failure."""
        chunk = parse_chunk(
            message.headers or {},
            message.body,
            max_size=self.uploads.limits.max_upload_size,
            profiles=self.profiles,
        )
        info = await self.uploads.create(self.owner_id, self._new_upload(chunk))
        if info.status == UploadStatus.COMPLETED.value:
            self.log.debug("chunk %d of %s: upload already complete", chunk.index, info.upload_id)
            return
        if info.status != UploadStatus.OPEN.value:
            raise ChunkRejected(
                Reason.UPLOAD_GONE,
                f"upload {chunk.upload_id!r} is {info.status}; its chunks are no longer taken",
            )
        check_upload_shape(chunk, size=info.size, block_size=info.block_size)
        if chunk.has_metadata:
            await self.uploads.describe(
                self.owner_id,
                info.upload_id,
                filename=chunk.filename,
                content_type=chunk.content_type,
                title=chunk.title,
                profile=chunk.profile,
            )
        if chunk.index in info.present:
            recorded = await self.uploads.block_sha256(self.owner_id, info.upload_id, chunk.index)
            if recorded is not None and recorded != chunk.sha256:
                raise ChunkRejected(
                    Reason.CHUNK_CONFLICT,
                    f"chunk {chunk.index} of {chunk.upload_id!r} was recorded with SHA-256 "
                    f"{recorded}; this one has {chunk.sha256}",
                )
        else:
            try:
                await self.uploads.put_block(
                    self.owner_id,
                    info.upload_id,
                    chunk.index,
                    _one(chunk.body),
                    sha256=chunk.sha256,
                    content_length=len(chunk.body),
                )
            except InvalidState:
                if await self._status(info.upload_id) == UploadStatus.COMPLETED.value:
                    return  # completed by another consumer meanwhile: this was a duplicate
                raise
        # a duplicate completes too: the delivery that recorded the last block may have
        # failed to complete and been requeued
        await self._complete_if_whole(info.upload_id)

    def _new_upload(self, chunk: Chunk) -> NewUpload:
        return NewUpload(
            filename=chunk.filename,
            size=chunk.total_size,
            block_size=chunk.block_size,
            title=chunk.title,
            content_type=chunk.content_type,
            protocol=PROTOCOL,
            profile=chunk.profile,
            external_id=chunk.upload_id,
        )

    async def _complete_if_whole(self, upload_id: str) -> None:
        if not await self._whole(upload_id):
            return
        # several consumers may hold the last blocks at once; completion runs once
        async with self.locker.hold(upload_id, wait_s=self.lock_wait_s):
            if not await self._whole(upload_id):
                return
            try:
                info = await self.uploads.complete(self.owner_id, upload_id)
            except UploadIncomplete as exc:
                # staged blocks that no longer hold their verified bytes were dropped;
                # their messages were acked, so the sender must send them again
                self.log.error(
                    "upload %s: %s (missing %s)", upload_id, exc.message, exc.details.get("missing")
                )
                return
        self.log.info("upload %s complete: asset %s", upload_id, info.asset_id)

    async def _whole(self, upload_id: str) -> bool:
        info: UploadInfo = await self.uploads.status(self.owner_id, upload_id)
        return info.status == UploadStatus.OPEN.value and not info.missing

    async def _status(self, upload_id: str) -> str:
        return (await self.uploads.status(self.owner_id, upload_id)).status

    # -- settling ---------------------------------------------------------------------

    async def _retry_later(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        deliveries = _earlier_deliveries(message) + 1
        if deliveries >= self.max_deliveries:
            text = f"failed {deliveries} times; last error: {type(exc).__name__}: {exc}"
            self.log.error("dead-lettering a chunk message: %s", text)
            try:
                await self._dead_letter(message, Reason.REDELIVERY_LIMIT, text)
            except Exception as publish_exc:  # the broker again: requeue, try later
                self.log.warning("could not dead-letter: %s", publish_exc)
            else:
                await self._settle(message.ack(), message)
                return
        else:
            self.log.warning(
                "chunk message failed (delivery %d of %d), requeued: %s: %s",
                deliveries,
                self.max_deliveries,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, _EXPECTED),
            )
        await asyncio.sleep(self.retry_delay_s)
        await self._settle(message.nack(requeue=True), message)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, reason: Reason, text: str
    ) -> None:
        """Publish a copy with the reason to the dead-letter queue and wait for the broker's
        confirm; the caller acks the original only then."""
        channel = self._channel
        if channel is None:
            raise RuntimeError("the consumer is not connected")
        headers = {k: v for k, v in (message.headers or {}).items() if k != H_DELIVERY_COUNT}
        headers.update(
            {
                H_ERROR: reason.value,
                H_REASON: text[:1000],
                H_QUEUE: self.queue,
                H_DELIVERIES: _earlier_deliveries(message) + 1,
            }
        )
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            app_id=message.app_id,
            type=message.type,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(
            copy, routing_key=self.dead_letter_queue, mandatory=True
        )
        self.log.warning(
            "dead-lettered a chunk message of %r: %s: %s",
            headers.get("x-upload-id"),
            reason.value,
            text,
        )

    async def _settle(self, action: Awaitable[None], message: AbstractIncomingMessage) -> None:
        try:
            await action
        except (AMQPError, RuntimeError) as exc:
            # the channel that delivered it is gone: the broker redelivers, harmlessly
            self.log.warning("could not settle message %s: %s", message.delivery_tag, exc)


def _earlier_deliveries(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(H_DELIVERY_COUNT)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    return 1 if message.redelivered else 0


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body
