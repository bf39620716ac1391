"""The upload service: one path from first byte to a master waiting for validation.

Every protocol (block API, local files; tus and AMQP later) lands here: sessions are
created, blocks are written to the staging store and recorded only once verified, and
completion checks, assembles, hashes and hands the master to the job engine.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Block, Source, UploadPart, UploadSession
from ingestd.db.types import new_id, utcnow
from ingestd.domain.states import AssetStatus, SourceStatus, UploadStatus, check_transition
from ingestd.errors import (
    ChecksumMismatch,
    Gone,
    InvalidRequest,
    InvalidState,
    NotFound,
    SizeMismatch,
    StorageError,
    TooLarge,
    UploadIncomplete,
)
from ingestd.jobs.dispatch import Dispatcher
from ingestd.jobs.engine import JobEngine, Ready, emit
from ingestd.jobs.graph import Graph
from ingestd.storage.base import ObjectStore, StagingStore
from ingestd.uploads.blocks import (
    DEFAULT_BLOCK_SIZE,
    block_count,
    block_span,
    check_block_size,
    missing_blocks,
    normalise_sha256,
)
from ingestd.uploads.dedup import locate_block, plan_dedup
from ingestd.uploads.verify import hash_blocks

T = TypeVar("T")


@dataclass(frozen=True)
class UploadLimits:
    max_upload_size: int = 100 << 30
    ttl: timedelta = timedelta(hours=24)
    default_block_size: int = DEFAULT_BLOCK_SIZE


@dataclass(frozen=True)
class NewUpload:
    filename: str | None
    size: int | None  # None: the length is deferred (tus creation-defer-length)
    block_size: int | None = None
    blocks: Sequence[str] | None = None
    sha256: str | None = None
    title: str | None = None
    description: str | None = None
    content_type: str | None = None
    protocol: str = "blocks"
    # a tus partial upload: a piece of a later final upload, with no asset of its own
    partial: bool = False
    profile: str | None = None  # the ladder profile the asset asks for
    info: Mapping[str, Any] = field(default_factory=dict)
    # the sender's own name for the upload (AMQP chunks): creating it again returns the
    # existing upload instead of a second one
    external_id: str | None = None
    # what makes re-ingested files the same asset (e.g. "path:/data/x.fits"): the owner's
    # asset of that identity takes the new source, keeping its id, renditions and history
    identity: str | None = None


# runs inside the creating transaction with the new upload's id (a token's one-time claim)
CreateHook = Callable[[Session, str], None]


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    asset_id: str | None  # None for a tus partial upload
    source_id: str | None
    protocol: str
    status: str
    source_status: str | None
    size: int | None  # None while the length is deferred
    offset: int
    bytes_received: int
    block_size: int
    block_count: int
    present: list[int]
    missing: list[int]
    expires_at: datetime
    reason: str | None

    @property
    def asset(self) -> str:
        """The asset's id; a tus partial upload has none."""
        if self.asset_id is None:
            raise InvalidState(f"upload {self.upload_id} is a partial upload and has no asset")
        return self.asset_id


@dataclass(frozen=True)
class PartInfo:
    index: int
    size: int
    sha256: str


def master_key(asset_id: str, source_id: str) -> str:
    return f"masters/{asset_id}/{source_id}/original"


class UploadService:
    def __init__(
        self,
        db: Database,
        staging: StagingStore,
        store: ObjectStore,
        engine: JobEngine,
        dispatcher: Dispatcher,
        ingest_graph: Callable[[], Graph],
        *,
        limits: UploadLimits | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.staging = staging
        self.store = store
        self.engine = engine
        self.dispatcher = dispatcher
        self.ingest_graph = ingest_graph
        self.limits = limits or UploadLimits()
        self.clock = clock
        self._block_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._complete_locks: dict[str, asyncio.Lock] = {}

    # -- create -----------------------------------------------------------------------

    async def create(
        self, owner_id: str, req: NewUpload, *, on_create: CreateHook | None = None
    ) -> UploadInfo:
        if req.size is not None and req.size <= 0:
            raise InvalidRequest("size must be a positive number of bytes", size=req.size)
        if req.size is not None and req.size > self.limits.max_upload_size:
            raise TooLarge(
                f"size {req.size} exceeds the maximum upload size of "
                f"{self.limits.max_upload_size} bytes",
                max_upload_size=self.limits.max_upload_size,
            )
        block_size = self._block_size(req)
        count = block_count(req.size, block_size) if req.size is not None else 0
        hashes = None
        if req.blocks is not None:
            if len(req.blocks) != count:
                raise InvalidRequest(
                    f"blocks lists {len(req.blocks)} hashes; size {req.size} in blocks of "
                    f"{block_size} makes {count}",
                    expected=count,
                )
            hashes = [normalise_sha256(h, "each block hash") for h in req.blocks]
        sha = normalise_sha256(req.sha256) if req.sha256 else None
        filename = (req.filename or "")[:1000] or None  # metadata only, never a path

        now = self.clock()
        upload_id = new_id("up")

        def add_session(session: Session, source_id: str | None) -> None:
            session.add(
                UploadSession(
                    id=upload_id,
                    source_id=source_id,
                    owner_id=owner_id,
                    protocol=req.protocol,
                    status=UploadStatus.OPEN.value,
                    size=req.size,
                    block_size=block_size,
                    block_count=count,
                    block_hashes=hashes,
                    expected_sha256=sha,
                    info=dict(req.info),
                    external_id=req.external_id,
                    expires_at=now + self.limits.ttl,
                )
            )
            session.flush()
            if on_create is not None:
                on_create(session, upload_id)

        def write(session: Session) -> None:
            if req.partial:
                add_session(session, None)
                return
            asset = self._asset_of(session, owner_id, req.identity) or Asset(
                id=new_id("as"),
                owner_id=owner_id,
                identity=req.identity,
                kind="unknown",
                title=req.title or filename,
                description=req.description,
                status=AssetStatus.CREATED.value,
                meta={"profile": req.profile} if req.profile else {},
            )
            source = Source(
                id=new_id("src"),
                asset_id=asset.id,
                owner_id=owner_id,
                filename=filename,
                content_type=req.content_type,
                size=req.size,
                status=SourceStatus.UPLOADING.value,
                staging_key=upload_id,
            )
            session.add_all([asset, source])
            session.flush()
            add_session(session, source.id)
            if hashes:
                plan_dedup(session, owner_id, upload_id, hashes, req.size or 0, block_size)
            emit(
                session,
                owner_id,
                asset.id,
                "upload.created",
                upload_id=upload_id,
                size=req.size,
                protocol=req.protocol,
            )

        if req.external_id is not None:
            existing = await self.find_external(owner_id, req.external_id)
            if existing is not None:
                return existing
            try:
                await self._tx(write)
            except IntegrityError:  # another consumer created it meanwhile
                existing = await self.find_external(owner_id, req.external_id)
                if existing is None:
                    raise
                return existing
        elif req.identity is not None:
            try:
                await self._tx(write)
            except IntegrityError:  # another request created the identity's asset meanwhile
                await self._tx(write)
        else:
            await self._tx(write)
        await self.staging.create(upload_id, req.size or 0, key=await self._target(upload_id))
        return await self.status(owner_id, upload_id)

    @staticmethod
    def _asset_of(session: Session, owner_id: str, identity: str | None) -> Asset | None:
        """The owner's asset of ``identity``; it goes back to ingesting when the new
        source's upload completes (an unfinished upload leaves it as it was)."""
        if identity is None:
            return None
        return session.scalars(
            select(Asset).where(Asset.owner_id == owner_id, Asset.identity == identity)
        ).first()

    async def _target(self, upload_id: str) -> str | None:
        """The master key an upload will become (none for a tus partial upload)."""

        def find(session: Session) -> str | None:
            row = session.get_one(UploadSession, upload_id)
            if row.source_id is None:
                return None
            return master_key(session.get_one(Source, row.source_id).asset_id, row.source_id)

        return await self._read(find)

    async def read_assembled(
        self, owner_id: str, upload_id: str, length: int
    ) -> AsyncIterator[bytes]:
        """The upload's first ``length`` staged bytes, in order. A store that cannot read
        staged data (S3 multipart) assembles the master first and is read from there."""
        if self.staging.readable_before_finalize:
            async for data in self.staging.read_staged(upload_id, 0, length):
                yield data
            return
        key = await self._target(upload_id)
        if key is None:
            raise InvalidState(f"upload {upload_id} is a partial upload and has no master")
        if not await self._exists(key):
            await self.staging.finalize(upload_id, key)
        async for data in self.store.read(key, 0, length):
            yield data

    def _block_size(self, req: NewUpload) -> int:
        """The client's block size, else the default; a store that stages in parts (S3
        multipart) takes its part size by default and only whole multiples of it."""
        part_size: Callable[[int], int] | None = getattr(self.staging, "part_size", None)
        if part_size is None:
            return check_block_size(req.block_size or self.limits.default_block_size)
        part = part_size(req.size or 0)
        if req.block_size is None:
            return check_block_size(part)
        if req.block_size % part:
            raise InvalidRequest(
                f"block_size must be a multiple of {part} bytes on this server (its store "
                "takes parts of that size)",
                block_size=req.block_size,
                block_size_multiple=part,
            )
        return check_block_size(req.block_size)

    async def find_external(self, owner_id: str, external_id: str) -> UploadInfo | None:
        """The owner's upload that the sender named ``external_id``, if there is one."""

        def find(session: Session) -> UploadInfo | None:
            row = session.scalars(
                select(UploadSession).where(
                    UploadSession.owner_id == owner_id, UploadSession.external_id == external_id
                )
            ).first()
            return None if row is None else self._info(session, row)

        return await self._read(find)

    # -- blocks -----------------------------------------------------------------------

    async def put_block(
        self,
        owner_id: str,
        upload_id: str,
        index: int,
        chunks: AsyncIterator[bytes],
        *,
        sha256: str | None,
        content_length: int | None = None,
    ) -> PartInfo:
        session_row = await self._read(lambda s: self._open_session(s, owner_id, upload_id))
        if session_row.protocol == "tus" or session_row.size is None:  # sequential only
            raise InvalidState(
                f"upload {upload_id} is a {session_row.protocol} upload; send its data that way"
            )
        offset, length = block_span(index, session_row.size, session_row.block_size)
        declared = (session_row.block_hashes or [None] * session_row.block_count)[index]
        expected = sha256 or declared
        if expected is None:
            raise InvalidRequest(
                "send the block's SHA-256 in a Content-Digest header (sha-256=:<base64>:)"
            )
        if sha256 and declared and sha256 != declared:
            raise ChecksumMismatch(
                f"block {index}: Content-Digest differs from the hash declared at init",
                index=index,
            )
        if content_length is not None and content_length > length:
            raise TooLarge(
                f"block {index} must be {length} bytes; {content_length} announced",
                index=index,
                expected=length,
            )

        hasher = hashlib.sha256()

        lock = self._block_locks.setdefault((upload_id, index), asyncio.Lock())
        async with lock:
            try:
                written = await self.staging.write_at(
                    upload_id, offset, chunks, limit=length, observe=hasher.update
                )
            except TooLarge as exc:
                raise TooLarge(
                    f"block {index} is larger than its {length} bytes", index=index, expected=length
                ) from exc
            if written != length:
                raise InvalidRequest(
                    f"block {index} must be {length} bytes; received {written}",
                    index=index,
                    expected=length,
                    received=written,
                )
            actual = hasher.hexdigest()
            if actual != expected:
                # the bytes stay unrecorded: the block counts as missing until resent
                raise ChecksumMismatch(
                    f"block {index}: SHA-256 of the received data is {actual}, expected {expected}",
                    index=index,
                )

            def record(session: Session) -> None:
                row = self._open_session(session, owner_id, upload_id)
                # blocks of one upload land at once: the source row serialises their sums
                source = session.get_one(Source, row.source_id, with_for_update=True)
                session.merge(
                    UploadPart(
                        session_id=row.id, index=index, size=length, sha256=actual, origin="upload"
                    )
                )
                session.flush()
                source.bytes_received = self._received(session, row.id)

            await self._tx(record)
        self._block_locks.pop((upload_id, index), None)
        return PartInfo(index=index, size=length, sha256=actual)

    # -- status, cancel ---------------------------------------------------------------

    async def describe(
        self,
        owner_id: str,
        upload_id: str,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        title: str | None = None,
        profile: str | None = None,
    ) -> None:
        """Fill in what the upload's source and asset do not say yet (a protocol whose
        metadata may come with any message: AMQP chunks arrive in any order)."""

        def fill(session: Session) -> None:
            row = self._session(session, owner_id, upload_id)
            if row.source_id is None:
                return
            source = session.get_one(Source, row.source_id)
            asset = session.get_one(Asset, source.asset_id)
            if source.filename is None and filename is not None:
                source.filename = filename[:1000]  # metadata only, never a path
            if source.content_type is None and content_type is not None:
                source.content_type = content_type
            if asset.title is None and (title or filename) is not None:
                asset.title = title or filename
            if profile is not None and "profile" not in asset.meta:
                asset.meta = {**asset.meta, "profile": profile}

        await self._tx(fill)

    async def block_sha256(self, owner_id: str, upload_id: str, index: int) -> str | None:
        """The SHA-256 recorded for a block of the upload, or None if it has not arrived."""

        def read(session: Session) -> str | None:
            self._session(session, owner_id, upload_id)
            part = session.get(UploadPart, (upload_id, index))
            return None if part is None else part.sha256

        return await self._read(read)

    async def status(self, owner_id: str, upload_id: str) -> UploadInfo:
        return await self._read(lambda s: self._info(s, self._session(s, owner_id, upload_id)))

    async def cancel(self, owner_id: str, upload_id: str) -> None:
        def write(session: Session) -> None:
            row = self._session(session, owner_id, upload_id)
            if row.status != UploadStatus.OPEN.value:
                raise InvalidState(f"upload is {row.status}; only an open upload can be cancelled")
            row.status = check_transition(UploadStatus.OPEN, UploadStatus.CANCELLED).value
            session.execute(delete(UploadPart).where(UploadPart.session_id == row.id))
            asset_id = self._end_source(session, row, SourceStatus.CANCELLED)
            emit(session, owner_id, asset_id, "upload.cancelled", upload_id=upload_id)

        await self._tx(write)
        await self.staging.discard(upload_id)

    async def expire_sessions(self, limit: int = 100) -> int:
        """Expire open sessions past their expiry: staged data removed, asset abandoned.

        Safe to run from several schedulers at once: each session is re-checked inside
        the transaction that expires it.
        """
        now = self.clock()
        ids = await self._read(
            lambda s: [
                row.id
                for row in s.scalars(
                    select(UploadSession)
                    .where(
                        UploadSession.status.in_(
                            [UploadStatus.OPEN.value, UploadStatus.COMPLETED.value]
                        ),
                        UploadSession.expires_at <= now,
                        # completed uploads expire only as unused tus partials
                        (UploadSession.status == UploadStatus.OPEN.value)
                        | UploadSession.source_id.is_(None),
                    )
                    .limit(limit)
                )
                if _expirable(row)
            ]
        )
        expired = 0
        for upload_id in ids:
            if await self._tx(self._expire_one(upload_id, now)):
                await self.staging.discard(upload_id)
                expired += 1
        return expired

    @staticmethod
    def _expire_one(upload_id: str, now: datetime) -> Callable[[Session], bool]:
        def expire(session: Session) -> bool:
            row = session.get(UploadSession, upload_id, with_for_update=True)
            if row is None or row.expires_at > now or not _expirable(row):
                return False
            row.status = check_transition(UploadStatus(row.status), UploadStatus.EXPIRED).value
            session.execute(delete(UploadPart).where(UploadPart.session_id == row.id))
            asset_id = UploadService._end_source(session, row, SourceStatus.EXPIRED)
            emit(session, row.owner_id, asset_id, "upload.expired", upload_id=upload_id)
            return True

        return expire

    # -- complete ---------------------------------------------------------------------

    async def complete(
        self, owner_id: str, upload_id: str, *, sha256: str | None = None
    ) -> UploadInfo:
        """Check, assemble and hand the master to the job engine.

        ``sha256`` is the whole file's hash when the caller computed it from the very bytes
        it wrote, in order, since the first (a sequential tus upload on one process): the
        verifying re-read is then skipped.
        """
        # a client that retries complete while the first call still runs waits for it
        lock = self._complete_locks.setdefault(upload_id, asyncio.Lock())
        try:
            async with lock:
                return await self._complete(owner_id, upload_id, sha256)
        finally:
            if not lock.locked():
                self._complete_locks.pop(upload_id, None)

    async def _complete(self, owner_id: str, upload_id: str, known: str | None) -> UploadInfo:
        row = await self._read(lambda s: self._session(s, owner_id, upload_id))
        if row.status == UploadStatus.COMPLETED.value:
            return await self.status(owner_id, upload_id)  # idempotent
        row = await self._read(lambda s: self._open_session(s, owner_id, upload_id))
        if row.size is None or row.source_id is None:
            raise InvalidState(f"upload {upload_id} has no length yet or is a partial upload")
        size = row.size
        parts = await self._read(
            lambda s: list(s.scalars(select(UploadPart).where(UploadPart.session_id == upload_id)))
        )
        present = {p.index for p in parts}
        missing = missing_blocks(present, row.block_count)
        if missing:
            raise UploadIncomplete(
                f"{len(missing)} of {row.block_count} blocks are missing", missing=missing
            )
        total = sum(p.size for p in parts)
        if total != size:
            raise SizeMismatch(
                f"received {total} bytes; the upload declared {size}",
                received=total,
                size=size,
            )

        source = await self._read(lambda s: s.get_one(Source, row.source_id))
        key = master_key(source.asset_id, source.id)
        # a crash between the rename below and the commit leaves the master in place
        finalized = await self._exists(key)
        if not finalized:
            await self._copy_dedup_blocks(
                owner_id, upload_id, [p for p in parts if p.origin == "dedup"]
            )
        if not finalized and known is None and not self.staging.readable_before_finalize:
            # the staged parts cannot be read back: assemble, then verify the master
            await self.staging.finalize(upload_id, key)
            finalized = True
        bad: list[int]
        if known is not None and not finalized:
            whole, bad = known, []
        else:
            whole, bad = await hash_blocks(
                self.store.read(key) if finalized else self.staging.read_staged(upload_id),
                row.block_size,
                {p.index: p.sha256 for p in parts},
            )
        if bad and finalized:
            raise StorageError(f"the assembled master of upload {upload_id} is damaged")
        if bad:
            await self._tx(lambda s: self._drop_parts(s, upload_id, bad))
            raise UploadIncomplete(
                f"blocks {bad} did not hold their verified data and must be sent again",
                missing=bad,
            )
        if row.expected_sha256 and whole != row.expected_sha256:
            raise ChecksumMismatch(
                f"SHA-256 of the assembled file is {whole}, expected {row.expected_sha256}",
                sha256=whole,
            )
        if not finalized:
            await self.staging.finalize(upload_id, key)  # a rename where the store allows

        def commit(session: Session) -> tuple[UploadInfo, list[Ready]]:
            live = self._open_session(session, owner_id, upload_id)
            live.status = check_transition(UploadStatus.OPEN, UploadStatus.COMPLETED).value
            live.completed_at = self.clock()
            live.offset = size
            src = session.get_one(Source, live.source_id)
            src.status = check_transition(SourceStatus.UPLOADING, SourceStatus.UPLOADED).value
            src.sha256 = whole
            src.master_key = key
            src.staging_key = None
            src.bytes_received = size
            asset = session.get_one(Asset, src.asset_id)
            asset.status = check_transition(AssetStatus(asset.status), AssetStatus.INGESTING).value
            asset.sha256 = whole
            for p in parts:
                offset, _ = block_span(p.index, size, live.block_size)
                session.add(
                    Block(
                        owner_id=owner_id,
                        sha256=p.sha256,
                        size=p.size,
                        object_key=key,
                        offset=offset,
                        source_id=src.id,
                    )
                )
            emit(
                session,
                owner_id,
                asset.id,
                "upload.completed",
                upload_id=upload_id,
                sha256=whole,
                size=size,
            )
            ready = self.engine.enqueue_graph(session, asset.id, self.ingest_graph())
            session.flush()
            # the state as of completion: validation may finish before the caller reads it
            return self._info(session, live), ready

        info, ready = await self._tx(commit)
        await self.dispatcher.announce(ready)
        return info

    async def _exists(self, key: str) -> bool:
        try:
            await self.store.size(key)
        except NotFound:
            return False
        return True

    async def _copy_dedup_blocks(
        self, owner_id: str, upload_id: str, parts: list[UploadPart]
    ) -> None:
        if not parts:
            return
        row = await self._read(lambda s: s.get_one(UploadSession, upload_id))
        assert row.size is not None  # deduplication needs a declared block list, so a size
        gone: list[int] = []
        for part in parts:
            location = await self._read(locate_block(owner_id, part.sha256, part.size))
            offset, _ = block_span(part.index, row.size, row.block_size)
            if location is None:
                gone.append(part.index)
                continue
            try:
                await self.staging.copy_in(upload_id, offset, location[0], location[1], part.size)
            except NotFound:
                gone.append(part.index)
        if gone:
            await self._tx(lambda s: self._drop_parts(s, upload_id, gone))
            raise UploadIncomplete(
                f"deduplicated blocks {gone} are no longer stored; send them", missing=gone
            )

    # -- helpers ----------------------------------------------------------------------

    async def _tx(self, fn: Callable[[Session], T]) -> T:
        return await self.db.run(fn)

    _read = _tx

    @staticmethod
    def _end_source(session: Session, row: UploadSession, status: SourceStatus) -> str | None:
        """An upload that ends unfinished: its source gets ``status``, its asset is abandoned."""
        if row.source_id is None:
            return None
        source = session.get_one(Source, row.source_id)
        source.status = check_transition(SourceStatus(source.status), status).value
        asset = session.get_one(Asset, source.asset_id)
        if asset.status == AssetStatus.CREATED.value:  # an existing asset keeps its state
            asset.status = check_transition(AssetStatus.CREATED, AssetStatus.ABANDONED).value
        return asset.id

    def _session(self, session: Session, owner_id: str, upload_id: str) -> UploadSession:
        row = session.get(UploadSession, upload_id)
        if row is None or row.owner_id != owner_id:  # another owner's upload does not exist
            raise NotFound(f"upload {upload_id} not found")
        return row

    def _open_session(self, session: Session, owner_id: str, upload_id: str) -> UploadSession:
        row = self._session(session, owner_id, upload_id)
        if row.status == UploadStatus.OPEN.value and row.expires_at <= self.clock():
            raise Gone(f"upload {upload_id} expired at {row.expires_at.isoformat()}")
        if row.status != UploadStatus.OPEN.value:
            if row.status in (UploadStatus.EXPIRED.value, UploadStatus.CANCELLED.value):
                raise Gone(f"upload {upload_id} is {row.status}")
            raise InvalidState(f"upload {upload_id} is {row.status}")
        return row

    @staticmethod
    def _received(session: Session, upload_id: str) -> int:
        return int(
            session.scalar(
                select(func.coalesce(func.sum(UploadPart.size), 0)).where(
                    UploadPart.session_id == upload_id
                )
            )
            or 0
        )

    def _drop_parts(self, session: Session, upload_id: str, indexes: list[int]) -> None:
        session.execute(
            delete(UploadPart).where(
                UploadPart.session_id == upload_id, UploadPart.index.in_(indexes)
            )
        )
        row = session.get_one(UploadSession, upload_id)
        if row.source_id is not None:
            received = self._received(session, upload_id)
            session.get_one(Source, row.source_id).bytes_received = received

    def _info(self, session: Session, row: UploadSession) -> UploadInfo:
        source = session.get_one(Source, row.source_id) if row.source_id else None
        present = set(
            session.scalars(select(UploadPart.index).where(UploadPart.session_id == row.id))
        )
        status = row.status
        if status == UploadStatus.OPEN.value and row.expires_at <= self.clock():
            status = UploadStatus.EXPIRED.value
        if row.status == UploadStatus.COMPLETED.value:
            present = set(range(row.block_count))
        return UploadInfo(
            upload_id=row.id,
            asset_id=source.asset_id if source else None,
            source_id=row.source_id,
            protocol=row.protocol,
            status=status,
            source_status=source.status if source else None,
            size=row.size,
            offset=row.offset,
            bytes_received=source.bytes_received if source else row.offset,
            block_size=row.block_size,
            block_count=row.block_count,
            present=sorted(present),
            missing=missing_blocks(present, row.block_count),
            expires_at=row.expires_at,
            reason=source.reason if source else None,
        )


def _expirable(row: UploadSession) -> bool:
    """Open uploads, and completed tus partial uploads that no final upload has taken."""
    if row.status == UploadStatus.OPEN.value:
        return True
    return (
        row.status == UploadStatus.COMPLETED.value
        and row.source_id is None
        and not row.info.get("final")
    )
