"""tus 1.0 uploads on the common upload model.

A tus upload is an :class:`UploadSession` with ``protocol="tus"`` and a sequential offset.
Bytes stream into the same staging object as block uploads, and as they pass they are cut
into the same fixed blocks: every block the offset moves past is recorded with its
SHA-256, so completion runs the block API's path unchanged (every block present and of the
right length, blocks recorded for deduplication, master renamed into place, validation
enqueued).

The offset counts bytes made durable only. A PATCH whose connection breaks keeps what
arrived; one with an ``Upload-Checksum`` that does not match (or cannot be checked, because
the body broke off) keeps nothing.

While one process sees an upload's PATCHes in order, it carries the running hashes from one
PATCH to the next, so the whole-file SHA-256 is known when the last byte lands and completion
needs no second read. Otherwise completion re-reads the file, as for block uploads.

Concatenation: partial uploads are uploads without an asset; a final upload lists them and
is assembled by copying the partials' staged bytes in (in-kernel, a reflink where the
filesystem has them), hashed in one pass, then completed like any other.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.db.models import Source, UploadPart, UploadSession
from ingestd.db.types import utcnow
from ingestd.domain.states import UploadStatus, check_transition
from ingestd.errors import (
    ChunkChecksumMismatch,
    Forbidden,
    Gone,
    IngestdError,
    InvalidRequest,
    InvalidState,
    Locked,
    NotFound,
    OffsetMismatch,
    TooLarge,
)
from ingestd.jobs.engine import emit
from ingestd.storage.base import IncompleteWrite
from ingestd.uploads.blocks import block_count
from ingestd.uploads.locks import UploadLocker
from ingestd.uploads.routing import RoutingMap
from ingestd.uploads.service import CreateHook, NewUpload, UploadService
from ingestd.uploads.tus_protocol import Checksum, Metadata

PROTOCOL = "tus"
log = logging.getLogger("ingestd.tus")
_CARRY_LIMIT = 10_000


@dataclass(frozen=True)
class TusUpload:
    """What HEAD reports about an upload."""

    upload_id: str
    asset_id: str | None
    status: str  # open, completed
    size: int | None  # None while deferred (or a final whose partials are not all sized)
    offset: int | None  # None for a final upload whose concatenation is unfinished
    expires_at: datetime | None  # only while the upload can still receive data
    metadata: str | None
    partial: bool = False
    parts: tuple[str, ...] = ()  # a final upload's partial uploads, in order


@dataclass
class _Carry:
    """Running hashes after ``offset`` bytes of one upload, kept between PATCHes."""

    offset: int
    block: Any  # the hash of the current block's bytes so far
    whole: Any | None  # the hash of every byte from 0, if seen in order by this process


@dataclass
class SequentialHasher:
    """Hashes bytes written in order from ``offset``: blocks, the chunk, the whole file.

    ``update`` runs in the staging store's writer thread, on exactly the bytes written.
    """

    offset: int
    block_size: int
    block: Any
    whole: Any | None = None
    chunk: Any | None = None
    blocks: list[tuple[int, int, str]] = field(default_factory=list)  # (index, size, sha256)

    def update(self, data: memoryview) -> None:
        if self.chunk is not None:
            self.chunk.update(data)
        if self.whole is not None:
            self.whole.update(data)
        view = data
        while view:
            room = self.block_size - self.offset % self.block_size
            take = view[:room]
            self.block.update(take)
            self.offset += len(take)
            view = view[len(take) :]
            if self.offset % self.block_size == 0:
                self._close_block(self.block_size)

    def finish(self) -> None:
        """The last byte of the upload was written: its trailing short block is complete."""
        filled = self.offset % self.block_size
        if filled:
            self._close_block(filled)

    def _close_block(self, size: int) -> None:
        index = (self.offset - 1) // self.block_size
        self.blocks.append((index, size, self.block.hexdigest()))
        self.block = hashlib.sha256()


def _new_upload(
    metadata: Metadata, size: int | None, info: dict[str, Any], *, partial: bool = False
) -> NewUpload:
    return NewUpload(
        filename=metadata.filename,
        size=size,
        title=metadata.title,
        description=metadata.description,
        content_type=metadata.filetype,
        protocol=PROTOCOL,
        partial=partial,
        profile=metadata.text("profile"),
        info={**info, "metadata": metadata.raw},
    )


class TusService:
    def __init__(
        self,
        uploads: UploadService,
        locker: UploadLocker,
        *,
        lock_wait_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        routing: RoutingMap | None = None,
        replica: str | None = None,
        route_ttl_s: float = 3600.0,
    ) -> None:
        """With ``routing``, each PATCH records ``replica`` (this process's URL) as the one
        holding the upload's running hash, for load balancers and clients to route the
        upload's next PATCH there (``Ingestd-Replica``); elsewhere it still works, at the
        cost of one re-read of the file at completion."""
        self.uploads = uploads
        self.routing = routing
        self.replica = replica
        self.route_ttl_s = route_ttl_s
        self.db = uploads.db
        self.staging = uploads.staging
        self.locker = locker
        self.lock_wait_s = lock_wait_s
        self.clock = clock
        self._carry: OrderedDict[str, _Carry] = OrderedDict()

    async def _route(self, upload_id: str) -> None:
        assert self.routing is not None and self.replica is not None
        try:
            await self.routing.claim(upload_id, self.replica, self.route_ttl_s)
        except IngestdError as exc:  # routing is advice: the upload goes on without it
            log.warning("upload routing map: %s", exc)

    async def replica_for(self, upload_id: str) -> str | None:
        """The replica holding the upload's running hash, if the routing map knows one."""
        if self.routing is None:
            return None
        try:
            return await self.routing.lookup(upload_id)
        except IngestdError as exc:
            log.warning("upload routing map: %s", exc)
            return None

    @property
    def max_size(self) -> int:
        return self.uploads.limits.max_upload_size

    # -- creation ---------------------------------------------------------------------

    async def create(
        self,
        owner_id: str,
        *,
        size: int | None,
        metadata: Metadata,
        partial: bool = False,
        info: dict[str, Any] | None = None,
        on_create: CreateHook | None = None,
    ) -> TusUpload:
        """A new upload; ``size`` None defers the length to a later PATCH."""
        if size == 0:
            raise InvalidRequest("an empty upload has nothing to ingest", size=0)
        concat = {"concat": "partial" if partial else None}
        req = _new_upload(metadata, size, {**(info or {}), **concat}, partial=partial)
        up = await self.uploads.create(owner_id, req, on_create=on_create)
        return await self.state(owner_id, up.upload_id)

    async def create_final(
        self,
        owner_id: str,
        part_ids: Sequence[str],
        *,
        metadata: Metadata,
        info: dict[str, Any] | None = None,
        on_create: CreateHook | None = None,
    ) -> TusUpload:
        """A final upload made of ``part_ids``; assembled now if they are all complete."""
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequest("Upload-Concat: a partial upload is listed twice")
        parts = await self.db.run(lambda s: [self._usable_part(s, owner_id, p) for p in part_ids])
        sizes = [p.size for p in parts]
        total = sum(n for n in sizes if n is not None) if None not in sizes else None

        def take_parts(session: Session, final_id: str) -> None:
            for part_id in part_ids:
                part = self._usable_part(session, owner_id, part_id, lock=True)
                part.info = {**part.info, "final": final_id}
            if on_create is not None:
                on_create(session, final_id)

        concat = {"concat": "final", "parts": list(part_ids)}
        req = _new_upload(metadata, total, {**(info or {}), **concat})
        up = await self.uploads.create(owner_id, req, on_create=take_parts)
        await self._concatenate(owner_id, up.upload_id)
        return await self.state(owner_id, up.upload_id)

    # -- state ------------------------------------------------------------------------

    async def state(self, owner_id: str, upload_id: str) -> TusUpload:
        return await self.db.run(lambda s: self._state(s, owner_id, upload_id))

    def _state(self, session: Session, owner_id: str, upload_id: str) -> TusUpload:
        row = self._session(session, owner_id, upload_id)
        is_open = row.status == UploadStatus.OPEN.value
        if row.status in (UploadStatus.CANCELLED.value, UploadStatus.EXPIRED.value) or (
            is_open and row.expires_at <= self.clock()
        ):
            raise Gone(f"upload {upload_id} has expired or was terminated")
        parts = tuple(row.info.get("parts") or ())
        size: int | None = row.size
        offset: int | None = row.offset
        if parts and is_open:  # a final upload still waiting for its partials
            rows = [session.get(UploadSession, p) for p in parts]
            sizes = [r.size if r is not None else None for r in rows]
            size = sum(n for n in sizes if n is not None) if None not in sizes else None
            offset = None
        source = session.get(Source, row.source_id) if row.source_id else None
        return TusUpload(
            upload_id=row.id,
            asset_id=source.asset_id if source else None,
            status=row.status,
            size=size,
            offset=offset,
            expires_at=row.expires_at if is_open else None,
            metadata=row.info.get("metadata"),
            partial=row.info.get("concat") == "partial",
            parts=parts,
        )

    # -- PATCH ------------------------------------------------------------------------

    async def append(
        self,
        owner_id: str,
        upload_id: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        *,
        content_length: int | None = None,
        checksum: Checksum | None = None,
        length: int | None = None,
        interrupt: Callable[[], None] | None = None,
    ) -> TusUpload:
        """Write ``chunks`` at ``offset``; the upload completes when its last byte lands.

        Raises OffsetMismatch (409) when ``offset`` is not the upload's, TooLarge (413) past
        its length, ChunkChecksumMismatch (460) when ``checksum`` does not match (nothing is
        kept), and IncompleteWrite when the body broke off (what arrived is kept).

        ``interrupt`` ends ``chunks`` early. A later PATCH for the same upload calls it while
        this one writes: a client that reconnects after a stall takes over at once, and the
        stalled request keeps what it had received (tusd's lock release requests).
        """
        if content_length == 0 and await self._already_complete(owner_id, upload_id, offset):
            return await self.state(owner_id, upload_id)  # an empty PATCH at the end: no-op
        # waiting for the lock asks the request in progress, in whichever replica, to stop
        # and keep what it has; ours stops the same way when a later one comes
        async with self.locker.hold(
            upload_id, wait_s=self.lock_wait_s, on_release_request=interrupt
        ):
            if self.routing is not None and self.replica is not None:  # ours: the hash
                await self._route(upload_id)
            return await self._append(
                owner_id, upload_id, offset, chunks, content_length, checksum, length
            )

    async def _append(
        self,
        owner_id: str,
        upload_id: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        content_length: int | None,
        checksum: Checksum | None,
        length: int | None,
    ) -> TusUpload:
        row = await self.db.run(lambda s: self._writable(s, owner_id, upload_id))
        size = row.size
        if length is not None:
            size = await self._declare_length(owner_id, row, length)
        if offset != row.offset:
            raise OffsetMismatch(
                f"Upload-Offset is {offset}; the upload holds {row.offset} bytes",
                offset=row.offset,
            )
        cap = size if size is not None else self._cap(row)
        limit = cap - offset
        if content_length is not None and content_length > limit:
            raise TooLarge(
                f"{content_length} bytes sent at offset {offset}; the upload takes {limit} more",
                remaining=limit,
            )
        hasher = await self._hasher(row, offset, checksum)
        try:
            written = await self.staging.write_at(
                upload_id, offset, chunks, limit=limit, observe=hasher.update
            )
            cut: IncompleteWrite | None = None
        except IncompleteWrite as exc:
            written, cut = exc.written, exc
        except BaseException:
            self._carry.pop(upload_id, None)
            raise
        if checksum is not None and (
            cut is not None or hasher.chunk is None or (hasher.chunk.digest() != checksum.digest)
        ):
            self._carry.pop(upload_id, None)
            if cut is not None:
                raise cut  # the chunk cannot be verified, so none of it is kept
            raise ChunkChecksumMismatch(
                f"the {checksum.algorithm} checksum of the {written} bytes received does "
                "not match Upload-Checksum; they were discarded",
                algorithm=checksum.algorithm,
            )
        end = offset + written
        done = size is not None and end == size
        if done:
            hasher.finish()
        await self.db.run(self._record(owner_id, upload_id, offset, end, hasher.blocks))
        if done:
            self._carry.pop(upload_id, None)
        else:
            self._keep(upload_id, _Carry(end, hasher.block, hasher.whole))
        if cut is not None:
            raise cut
        if done:
            whole = hasher.whole.hexdigest() if hasher.whole is not None else None
            await self._finish(owner_id, upload_id, whole)
        return await self.state(owner_id, upload_id)

    async def _already_complete(self, owner_id: str, upload_id: str, offset: int) -> bool:
        def check(session: Session) -> bool:
            row = self._session(session, owner_id, upload_id)
            return row.status == UploadStatus.COMPLETED.value and offset == row.size

        return await self.db.run(check)

    async def finish_stalled(self, idle: timedelta = timedelta(minutes=1)) -> int:
        """Complete uploads whose last byte landed but whose completion never finished.

        A process that stopped between the last byte and the end of completion leaves an
        open upload with every byte; a final upload may likewise wait for an assembly that
        never ran. The scheduler finishes both once they have been idle for ``idle``.
        """
        ttl = self.uploads.limits.ttl
        quiet_since = self.clock() - idle

        def stalled(session: Session) -> list[tuple[str, str, bool]]:
            rows = session.scalars(
                select(UploadSession).where(
                    UploadSession.protocol == PROTOCOL,
                    UploadSession.status == UploadStatus.OPEN.value,
                    UploadSession.source_id.is_not(None),
                    UploadSession.expires_at <= quiet_since + ttl,  # expiry = last PATCH + ttl
                )
            )
            out = []
            for row in rows:
                final = bool(row.info.get("parts"))
                if final or (row.size is not None and row.offset == row.size):
                    out.append((row.owner_id, row.id, final))
            return out

        done = 0
        for owner_id, upload_id, final in await self.db.run(stalled):
            try:
                if final:
                    await self._concatenate(owner_id, upload_id)
                else:
                    async with self.locker.hold(upload_id, wait_s=0):
                        await self.uploads.complete(owner_id, upload_id)
                done += 1
            except Locked:
                continue  # a request is working on it
            except IngestdError as exc:  # one bad upload must not hold up the others
                log.warning("cannot finish tus upload %s: %s", upload_id, exc)
        return done

    def _cap(self, row: UploadSession) -> int:
        token_cap = row.info.get("max_size")
        return min(self.max_size, token_cap) if token_cap else self.max_size

    async def _declare_length(
        self, owner_id: str, row: UploadSession, length: int, *, assembling: bool = False
    ) -> int:
        if row.size is not None:
            if length != row.size:
                raise InvalidRequest(
                    f"Upload-Length is {row.size} and cannot be changed", size=row.size
                )
            return length
        if length < row.offset or length == 0:
            raise InvalidRequest(
                f"Upload-Length {length} is less than the {row.offset} bytes already received"
                if length
                else "an empty upload has nothing to ingest"
            )
        if length > self._cap(row):
            raise TooLarge(
                f"Upload-Length {length} exceeds the maximum upload size of {self._cap(row)}",
                max_upload_size=self._cap(row),
            )

        def declare(session: Session) -> None:
            live = self._writable(session, owner_id, row.id, assembling=assembling)
            live.size = length
            live.block_count = block_count(length, live.block_size)
            if live.source_id is not None:
                session.get_one(Source, live.source_id).size = length

        await self.db.run(declare)
        return length

    async def _hasher(
        self, row: UploadSession, offset: int, checksum: Checksum | None
    ) -> SequentialHasher:
        carry = self._carry.get(row.id)
        if carry is not None and carry.offset == offset:
            block, whole = carry.block, carry.whole
        else:
            block = hashlib.sha256()
            whole = hashlib.sha256() if offset == 0 else None
            start = offset - offset % row.block_size
            if start < offset:  # the current block's head was sent by an earlier PATCH
                async for data in self.staging.read_staged(row.id, start, offset - start):
                    block.update(data)
        return SequentialHasher(
            offset=offset,
            block_size=row.block_size,
            block=block,
            whole=whole,
            chunk=checksum.new() if checksum is not None else None,
        )

    def _keep(self, upload_id: str, carry: _Carry) -> None:
        self._carry[upload_id] = carry
        self._carry.move_to_end(upload_id)
        while len(self._carry) > _CARRY_LIMIT:
            self._carry.popitem(last=False)

    def _record(
        self,
        owner_id: str,
        upload_id: str,
        offset: int,
        end: int,
        blocks: list[tuple[int, int, str]],
        *,
        assembling: bool = False,
    ) -> Callable[[Session], None]:
        def record(session: Session) -> None:
            row = self._writable(session, owner_id, upload_id, assembling=assembling)
            if row.offset != offset:  # only without a shared lock across processes
                raise OffsetMismatch(
                    f"another request moved upload {upload_id} to offset {row.offset}",
                    offset=row.offset,
                )
            row.offset = end
            for index, size, sha in blocks:
                session.merge(
                    UploadPart(
                        session_id=upload_id, index=index, size=size, sha256=sha, origin="upload"
                    )
                )
            if row.source_id is not None:
                session.get_one(Source, row.source_id).bytes_received = end
            # the expiry slides with activity: a slow but live upload is not cut off, nor
            # the final upload waiting for this partial one
            slid = self.clock() + self.uploads.limits.ttl
            row.expires_at = max(row.expires_at, slid)
            final = session.get(UploadSession, row.info["final"]) if row.info.get("final") else None
            if final is not None and final.status == UploadStatus.OPEN.value:
                final.expires_at = max(final.expires_at, slid)

        return record

    async def _finish(self, owner_id: str, upload_id: str, whole: str | None) -> None:
        row = await self.db.run(lambda s: self._session(s, owner_id, upload_id))
        if row.source_id is not None:
            await self.uploads.complete(owner_id, upload_id, sha256=whole)
            return

        def complete_partial(session: Session) -> str | None:
            live = self._session(session, owner_id, upload_id)
            if live.status == UploadStatus.OPEN.value:
                live.status = check_transition(UploadStatus.OPEN, UploadStatus.COMPLETED).value
                live.completed_at = self.clock()
            final: str | None = live.info.get("final")
            return final

        final_id = await self.db.run(complete_partial)
        if final_id is not None:
            await self._concatenate(owner_id, final_id)

    # -- concatenation ----------------------------------------------------------------

    def _usable_part(
        self, session: Session, owner_id: str, part_id: str, *, lock: bool = False
    ) -> UploadSession:
        part = session.get(UploadSession, part_id, with_for_update=lock)
        if part is None or part.owner_id != owner_id or part.protocol != PROTOCOL:
            raise NotFound(f"partial upload {part_id} not found")
        if part.info.get("concat") != "partial":
            raise InvalidRequest(f"upload {part_id} is not a partial upload")
        if part.info.get("final"):
            raise InvalidState(f"partial upload {part_id} belongs to another final upload")
        if part.status not in (UploadStatus.OPEN.value, UploadStatus.COMPLETED.value):
            raise Gone(f"partial upload {part_id} is {part.status}")
        return part

    async def _concatenate(self, owner_id: str, final_id: str) -> None:
        """Assemble the final upload once every partial is complete (else do nothing)."""
        try:
            async with self.locker.hold(final_id, wait_s=self.lock_wait_s):
                await self._assemble(owner_id, final_id)
        except Locked:
            pass  # another request holds the final upload: it is assembling it

    async def _assemble(self, owner_id: str, final_id: str) -> None:
        """Copy the partials in, hash the result in one pass, complete it."""

        def load(session: Session) -> tuple[UploadSession, list[UploadSession]] | None:
            final = self._session(session, owner_id, final_id)
            parts = [session.get_one(UploadSession, p) for p in final.info["parts"]]
            if final.status != UploadStatus.OPEN.value or any(
                p.status != UploadStatus.COMPLETED.value for p in parts
            ):
                return None
            return final, parts

        loaded = await self.db.run(load)
        if loaded is None:
            return
        final, parts = loaded
        total = sum(p.offset for p in parts)
        if final.size is None:
            await self._declare_length(owner_id, final, total, assembling=True)
        position = 0
        for part in parts:
            await self.staging.copy_staged(final_id, position, part.id, part.offset)
            position += part.offset
        hasher = SequentialHasher(
            offset=0,
            block_size=final.block_size,
            block=hashlib.sha256(),
            whole=hashlib.sha256(),
        )
        async for data in self.uploads.read_assembled(owner_id, final_id, total):
            hasher.update(memoryview(data))
        hasher.finish()
        await self.db.run(
            self._record(owner_id, final_id, 0, total, hasher.blocks, assembling=True)
        )
        assert hasher.whole is not None
        await self.uploads.complete(owner_id, final_id, sha256=hasher.whole.hexdigest())
        for part in parts:
            await self.staging.discard(part.id)

    # -- DELETE -----------------------------------------------------------------------

    async def terminate(self, owner_id: str, upload_id: str) -> None:
        async with self.locker.hold(upload_id, wait_s=self.lock_wait_s):
            row = await self.db.run(lambda s: self._session(s, owner_id, upload_id))
            if row.status in (UploadStatus.CANCELLED.value, UploadStatus.EXPIRED.value):
                raise Gone(f"upload {upload_id} is {row.status}")
            if row.info.get("final") and row.info.get("concat") == "partial":
                raise InvalidState(
                    f"partial upload {upload_id} belongs to final upload {row.info['final']}"
                )
            if row.source_id is not None:
                if row.status == UploadStatus.COMPLETED.value:
                    raise InvalidState(
                        f"upload {upload_id} has completed; its asset is managed under /v1/assets"
                    )
                await self.uploads.cancel(owner_id, upload_id)
            else:

                def cancel_partial(session: Session) -> None:
                    live = self._session(session, owner_id, upload_id)
                    if live.status not in (UploadStatus.OPEN.value, UploadStatus.COMPLETED.value):
                        raise Gone(f"upload {upload_id} is {live.status}")
                    live.status = check_transition(
                        UploadStatus(live.status), UploadStatus.CANCELLED
                    ).value
                    emit(session, owner_id, None, "upload.cancelled", upload_id=upload_id)

                await self.db.run(cancel_partial)
                await self.staging.discard(upload_id)
            self._carry.pop(upload_id, None)

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _session(session: Session, owner_id: str, upload_id: str) -> UploadSession:
        row = session.get(UploadSession, upload_id)
        if row is None or row.owner_id != owner_id or row.protocol != PROTOCOL:
            raise NotFound(f"upload {upload_id} not found")
        return row

    def _writable(
        self, session: Session, owner_id: str, upload_id: str, *, assembling: bool = False
    ) -> UploadSession:
        """An upload that may take data now (a final upload only while being assembled)."""
        row = self._session(session, owner_id, upload_id)
        if row.info.get("concat") == "final" and not assembling:
            raise Forbidden(f"upload {upload_id} is a final upload; it is assembled, not patched")
        if row.status == UploadStatus.COMPLETED.value:
            raise InvalidState(f"upload {upload_id} is complete; it takes no more data")
        if row.status != UploadStatus.OPEN.value or row.expires_at <= self.clock():
            raise Gone(f"upload {upload_id} has expired or was terminated")
        return row
