"""Ingestion work orders for files on the server: one per owner and path.

A request (``POST /v1/ingest``, ``ingestd ingest``, a watched folder) creates or updates the
path's order; an :class:`OrderRunner` takes the oldest queued order, ingests the file through
the upload service (a copy into staging, protocol "local") onto the asset of the file's
identity, and settles the order once that asset is ready or failed.

    queued -> started -> completed | failed -> queued (requested again)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ingestd.db.engine import Database
from ingestd.db.models import Asset, IngestOrder, Source
from ingestd.db.types import new_id, utcnow
from ingestd.domain.states import AssetStatus, IngestOrderStatus, check_transition
from ingestd.errors import ConfigError, Forbidden, IngestdError, InvalidRequest, NotFound
from ingestd.uploads.local import ingest_file
from ingestd.uploads.service import UploadService

__all__ = [
    "FileStamp",
    "IdentityRule",
    "InvalidPath",
    "NotAFile",
    "OrderRunner",
    "OrderService",
    "OrderView",
    "PathIngestionDisabled",
    "PathNotFound",
    "PathOutsideRoots",
    "resolve_path",
]

MAX_IDENTITY = 500  # the width of Asset.identity


class InvalidPath(InvalidRequest):
    """The path must be absolute, without '..' components."""

    code = "invalid_path"


class NotAFile(InvalidRequest):
    """The path is not a regular file."""

    code = "not_a_file"


class PathOutsideRoots(Forbidden):
    """The path is outside the directories this server ingests from."""

    code = "path_outside_roots"


class PathIngestionDisabled(Forbidden):
    """Ingesting server paths is off: no ingest roots are configured (INGESTD_INGEST_ROOTS)."""

    code = "path_ingestion_disabled"


class PathNotFound(NotFound):
    """The file does not exist."""

    code = "path_not_found"


@dataclass(frozen=True)
class FileStamp:
    """What a file looked like: a change of either means new content (or a touch)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns)

    def matches(self, content: dict[str, Any]) -> bool:
        return content.get("size") == self.size and content.get("mtime_ns") == self.mtime_ns


@dataclass(frozen=True)
class OrderView:
    id: str
    owner_id: str
    path: str
    status: str
    force: bool
    asset_id: str | None
    content: dict[str, Any]
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: IngestOrder) -> OrderView:
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            path=row.path,
            status=row.status,
            force=row.force,
            asset_id=row.asset_id,
            content=dict(row.content or {}),
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "path": self.path,
            "status": self.status,
            "force": self.force,
            "asset_id": self.asset_id,
            "content": {k: v for k, v in self.content.items() if k != "rerun"},
            "error": self.error,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


def resolve_path(raw: str, roots: Sequence[Path] | None) -> Path:
    """The real path of a regular file named by a request.

    ``roots`` None: any readable path (the operator's own commands). Otherwise the path must
    be absolute, free of '..', and resolve (symlinks followed) inside one of ``roots``; a
    path outside them answers the same whether or not it exists.
    """
    if not raw or "\x00" in raw:
        raise InvalidPath("the path is empty or holds a NUL character", path=raw[:1000])
    if not os.path.isabs(raw):
        raise InvalidPath(f"the path must be absolute: {raw!r}", path=raw)
    if ".." in Path(raw).parts:
        raise InvalidPath(f"the path must not contain '..': {raw!r}", path=raw)
    real = Path(os.path.realpath(raw))
    if roots is not None:
        if not roots:
            raise PathIngestionDisabled()
        real_roots = [Path(os.path.realpath(r)) for r in roots]
        if not any(real.is_relative_to(r) for r in real_roots):
            raise PathOutsideRoots(
                f"{raw} is outside the directories this server ingests from",
                path=raw,
                roots=[str(r) for r in real_roots],
            )
    try:
        mode = real.stat().st_mode
    except FileNotFoundError as exc:
        raise PathNotFound(f"no such file: {raw}", path=raw) from exc
    except OSError as exc:
        raise InvalidPath(f"{raw} cannot be read: {exc.strerror}", path=raw) from exc
    if not stat.S_ISREG(mode):
        raise NotAFile(f"{raw} is not a regular file", path=raw)
    if len(str(real)) > 1000:
        raise InvalidPath("the path is longer than 1000 characters", path=raw[:1000])
    return real


class OrderService:
    """Requests, listings and the runner's state changes; every lookup is owner-scoped."""

    def __init__(
        self,
        db: Database,
        *,
        roots: Sequence[Path],
        stale_after: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.roots = list(roots)
        self.stale_after = stale_after
        self.clock = clock

    async def request(
        self,
        owner_id: str,
        raw_path: str,
        *,
        force: bool = False,
        restricted: bool = True,
        title: str | None = None,
    ) -> OrderView:
        """Queue the path's order, or update it. ``restricted``: the path must lie inside
        the configured roots (requests over the API); the operator's commands pass False.

        A queued order keeps its place and takes the force flag; a finished one is queued
        again; a started one is marked to run again once it finishes.
        """
        path = await anyio.to_thread.run_sync(
            resolve_path, raw_path, self.roots if restricted else None
        )
        try:
            return await self.db.run(self._upsert(owner_id, str(path), force, title))
        except IntegrityError:  # a concurrent request created it first: update that one
            return await self.db.run(self._upsert(owner_id, str(path), force, title))

    def _upsert(
        self, owner_id: str, path: str, force: bool, title: str | None
    ) -> Callable[[Session], OrderView]:
        def write(session: Session) -> OrderView:
            now = self.clock()
            row = session.scalars(
                select(IngestOrder).where(
                    IngestOrder.owner_id == owner_id, IngestOrder.path == path
                )
            ).first()
            if row is None:
                row = IngestOrder(
                    id=new_id("io"),
                    owner_id=owner_id,
                    path=path,
                    status=IngestOrderStatus.QUEUED.value,
                    force=force,
                    content={"title": title} if title else {},
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                return OrderView.of(row)
            status = IngestOrderStatus(row.status)
            row.force = row.force or force  # a pending forced run stays forced
            if title:
                row.content = {**row.content, "title": title}
            if status == IngestOrderStatus.STARTED:
                row.content = {**row.content, "rerun": True}
            elif status != IngestOrderStatus.QUEUED:
                row.status = check_transition(status, IngestOrderStatus.QUEUED).value
                row.error = None
                row.started_at = row.finished_at = None
            row.updated_at = now
            session.flush()
            return OrderView.of(row)

        return write

    async def get(self, owner_id: str, order_id: str) -> OrderView:
        def read(session: Session) -> OrderView:
            row = session.get(IngestOrder, order_id)
            if row is None or row.owner_id != owner_id:  # another owner's order does not exist
                raise NotFound(f"ingest order {order_id} not found")
            return OrderView.of(row)

        return await self.db.run(read)

    async def find(self, owner_id: str, path: Path) -> OrderView | None:
        def read(session: Session) -> OrderView | None:
            row = session.scalars(
                select(IngestOrder).where(
                    IngestOrder.owner_id == owner_id, IngestOrder.path == str(path)
                )
            ).first()
            return None if row is None else OrderView.of(row)

        return await self.db.run(read)

    async def query(
        self, owner_id: str, status: str | None = None, *, limit: int = 500
    ) -> list[OrderView]:
        if status is not None:
            try:
                IngestOrderStatus(status)
            except ValueError as exc:
                known = ", ".join(s.value for s in IngestOrderStatus)
                raise InvalidRequest(f"unknown status {status!r}; one of {known}") from exc

        def read(session: Session) -> list[OrderView]:
            query = select(IngestOrder).where(IngestOrder.owner_id == owner_id)
            if status is not None:
                query = query.where(IngestOrder.status == status)
            query = query.order_by(IngestOrder.created_at, IngestOrder.id).limit(limit)
            return [OrderView.of(r) for r in session.scalars(query)]

        return await self.db.run(read)

    # -- the runner's side ----------------------------------------------------------------

    async def claim(self) -> OrderView | None:
        """Mark the oldest queued order started and return it (SKIP LOCKED on PostgreSQL,
        so runners on several hosts each take a different one). Orders whose asset is still
        being processed are left for later."""

        def take(session: Session) -> OrderView | None:
            # an order whose asset is still being processed waits: the file again would
            # land on an asset that cannot take a new source yet
            busy = (
                select(Asset.id)
                .where(
                    Asset.id == IngestOrder.asset_id,
                    Asset.status.in_([AssetStatus.INGESTING.value, AssetStatus.PROCESSING.value]),
                )
                .exists()
            )
            query = (
                select(IngestOrder)
                .where(IngestOrder.status == IngestOrderStatus.QUEUED.value, ~busy)
                .order_by(IngestOrder.created_at, IngestOrder.id)
                .limit(1)
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = session.scalars(query).first()
            if row is None:
                return None
            now = self.clock()
            row.status = check_transition(IngestOrderStatus.QUEUED, IngestOrderStatus.STARTED).value
            row.started_at = row.updated_at = now
            row.finished_at = None
            row.asset_id = None
            row.error = None
            row.content = {k: v for k, v in row.content.items() if k != "rerun"}
            session.flush()
            return OrderView.of(row)

        return await self.db.run(take)

    async def record(self, order_id: str, asset_id: str, content: dict[str, Any]) -> None:
        """The file is in: the order follows its asset from now on."""

        def write(session: Session) -> None:
            row = session.get_one(IngestOrder, order_id)
            row.asset_id = asset_id
            row.force = False  # the forced run has been handed to the job engine
            row.content = {**row.content, **content}
            row.updated_at = self.clock()

        await self.db.run(write)

    async def fail(self, order_id: str, reason: str) -> None:
        await self.db.run(lambda s: self._finish(s, s.get_one(IngestOrder, order_id), reason))

    def _finish(self, session: Session, row: IngestOrder, error: str | None) -> None:
        now = self.clock()
        rerun = bool(row.content.get("rerun"))
        new = IngestOrderStatus.FAILED if error is not None else IngestOrderStatus.COMPLETED
        if rerun:  # requested again while it ran: it runs again
            new = IngestOrderStatus.QUEUED
            row.content = {k: v for k, v in row.content.items() if k != "rerun"}
        row.status = check_transition(IngestOrderStatus(row.status), new).value
        row.error = error[:4000] if error else None
        row.finished_at = None if rerun else now
        row.updated_at = now

    async def settle(self) -> list[str]:
        """Finish started orders whose asset is now ready or failed; queue again started
        orders that never got an asset for ``stale_after`` (their runner died). Returns the
        ids of the orders settled."""

        def write(session: Session) -> list[str]:
            query = (
                select(IngestOrder)
                .join(Asset, Asset.id == IngestOrder.asset_id)
                .where(
                    IngestOrder.status == IngestOrderStatus.STARTED.value,
                    Asset.status.in_([AssetStatus.READY.value, AssetStatus.FAILED.value]),
                )
            )
            if self.db.dialect == "postgresql":  # two runners settle different orders
                query = query.with_for_update(skip_locked=True, of=IngestOrder)
            rows = session.scalars(query).all()
            done: list[str] = []
            for row in rows:
                asset = session.get_one(Asset, row.asset_id)
                error = None
                if asset.status == AssetStatus.FAILED.value:
                    error = asset.error or _rejection(session, asset.id) or "the asset failed"
                row.content = {**row.content, "sha256": asset.sha256}
                self._finish(session, row, error)
                done.append(row.id)
            stale_query = select(IngestOrder).where(
                IngestOrder.status == IngestOrderStatus.STARTED.value,
                IngestOrder.asset_id.is_(None),
                IngestOrder.updated_at < self.clock() - self.stale_after,
            )
            if self.db.dialect == "postgresql":
                stale_query = stale_query.with_for_update(skip_locked=True)
            stale = session.scalars(stale_query).all()
            for row in stale:
                row.status = check_transition(
                    IngestOrderStatus.STARTED, IngestOrderStatus.QUEUED
                ).value
                row.updated_at = self.clock()
            return done

        return await self.db.run(write)


def _rejection(session: Session, asset_id: str) -> str | None:
    source = session.scalars(
        select(Source).where(Source.asset_id == asset_id).order_by(Source.created_at.desc())
    ).first()
    return None if source is None else source.reason


@dataclass(frozen=True)
class IdentityRule:
    """What makes two files the same asset: their path, or for FITS files the values of
    primary-header keywords (``fits_identity`` = "path" or "header:KEY1,KEY2")."""

    header_keys: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> IdentityRule:
        value = value.strip()
        if value == "path":
            return cls()
        if value.startswith("header:"):
            keys = tuple(k.strip().upper() for k in value[7:].split(",") if k.strip())
            if keys:
                return cls(keys)
        raise ConfigError(
            f"INGESTD_FITS_IDENTITY must be 'path' or 'header:KEY1,KEY2', not {value!r}"
        )

    async def identity(self, path: Path) -> str:
        fits = bool(self.header_keys) and await anyio.to_thread.run_sync(_is_fits, path)
        if fits:
            header = await anyio.to_thread.run_sync(_primary_header, path)
            missing = [k for k in self.header_keys if k not in header]
            if missing:
                raise InvalidRequest(
                    f"the FITS primary header lacks {', '.join(missing)}, which identify "
                    "the asset (INGESTD_FITS_IDENTITY)",
                    missing=missing,
                )
            key = "header:" + ";".join(f"{k}={header[k]}" for k in self.header_keys)
        else:
            key = f"path:{path}"
        if len(key) > MAX_IDENTITY:  # still unique, within the column
            key = f"{key.split(':', 1)[0]}-sha256:{hashlib.sha256(key.encode()).hexdigest()}"
        return key


def _is_fits(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(9) == b"SIMPLE  ="


def _primary_header(path: Path) -> dict[str, str]:
    fits = importlib.import_module("astropy.io.fits")  # heavy: only when a FITS file comes
    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"the FITS primary header cannot be read: {exc}") from exc
    return {str(k): str(v).strip() for k, v in header.items() if k}


class OrderRunner:
    """Runs ingest orders one at a time: whoever runs workers runs one of these too."""

    def __init__(
        self,
        orders: OrderService,
        uploads: UploadService,
        *,
        identity: IdentityRule,
        poll_s: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.orders = orders
        self.uploads = uploads
        self.identity = identity
        self.poll_s = poll_s
        self.log = logger or logging.getLogger("ingestd.orders")

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: settle finished orders, take and ingest queued ones."""
        while not stop.is_set():
            try:
                busy = await self.run_once()
            except IngestdError as exc:  # the database away for a moment: try again
                self.log.warning("ingest orders: %s", exc.message)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)

    async def run_once(self) -> bool:
        """Settle what finished, then ingest one queued order. Whether anything happened."""
        settled = await self.orders.settle()
        order = await self.orders.claim()
        if order is not None:
            await self._ingest(order)
        return bool(settled) or order is not None

    async def _ingest(self, order: OrderView) -> None:
        path = Path(order.path)
        try:
            # the order holds a real path: one that has become a link is not followed
            real = await anyio.to_thread.run_sync(resolve_path, order.path, None)
            if real != path:
                raise InvalidPath(f"{order.path} has become a link to {real}")
            stamp = await anyio.to_thread.run_sync(FileStamp.of, path)
            identity = await self.identity.identity(path)
            info = await ingest_file(
                self.uploads,
                order.owner_id,
                path,
                title=order.content.get("title"),
                identity=identity,
                force=order.force,
                meta={"origin_path": str(path)},
            )
        except IngestdError as exc:
            self.log.info("ingest order %s (%s) failed: %s", order.id, order.path, exc.message)
            await self.orders.fail(order.id, exc.message)
            return
        except OSError as exc:  # the file went away or cannot be read
            await self.orders.fail(order.id, f"{order.path}: {exc.strerror or exc}")
            return
        await self.orders.record(
            order.id,
            info.asset,
            {"size": stamp.size, "mtime_ns": stamp.mtime_ns, "identity": identity},
        )
