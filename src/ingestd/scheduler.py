"""The scheduler: the periodic chores that keep a deployment tidy.

Each round rescues expired leases, publishes what the dispatch outbox still holds,
expires abandoned uploads (their staged data and multipart uploads go, their sources and
assets are marked), finishes tus uploads whose completion was cut short, forgets
long-expired upload tokens, removes blocks that no stored master backs any more, aborts
multipart uploads no open session owns, removes work directories of dead workers, and
sends notifications (webhooks, e-mail) for new events.

Several schedulers may run at once (``INGESTD_SCHEDULER=1`` on more than one replica):
every chore re-checks its rows inside the transaction that changes them, lease rescue
skips rows another transaction holds, and removing an absent object is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ingestd.auth.tokens import UploadTokens
from ingestd.db.engine import Database
from ingestd.db.models import Block, Source, UploadSession
from ingestd.db.types import utcnow
from ingestd.domain.states import SourceStatus, UploadStatus
from ingestd.errors import IngestdError
from ingestd.jobs.dispatch import Dispatcher
from ingestd.jobs.engine import JobEngine
from ingestd.uploads.service import UploadService
from ingestd.uploads.tus import TusService

#: Sources whose master is (or is about to be) stored: their blocks can be deduplicated.
_LIVE_SOURCES = [
    SourceStatus.UPLOADED.value,
    SourceStatus.VALIDATING.value,
    SourceStatus.INGESTED.value,
]


@runtime_checkable
class StaleUploads(Protocol):
    """A staging store that can list multipart uploads started before a time (S3)."""

    async def stale_uploads(self, older_than: datetime) -> list[str]: ...

    async def discard(self, upload_id: str) -> None: ...


@dataclass
class Chores:
    """What one round did, for logs and tests."""

    rescued: int = 0
    published: int = 0
    expired: int = 0
    finished: int = 0
    tokens: int = 0
    blocks: int = 0
    multipart: int = 0
    workdirs: int = 0
    notified: int = 0
    errors: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        db: Database,
        engine: JobEngine,
        dispatcher: Dispatcher,
        uploads: UploadService,
        tus: TusService,
        tokens: UploadTokens,
        *,
        workdir: Path,
        block_grace: timedelta = timedelta(days=1),
        multipart_grace: timedelta = timedelta(hours=1),
        relay: Callable[[], Awaitable[int]] | None = None,
        notify: Callable[[], Awaitable[int]] | None = None,
        stale_uploads: StaleUploads | None = None,
        clock: Callable[[], datetime] = utcnow,
        logger: logging.Logger | None = None,
    ) -> None:
        self.db = db
        self.engine = engine
        self.dispatcher = dispatcher
        self.uploads = uploads
        self.tus = tus
        self.tokens = tokens
        self.workdir = workdir
        self.block_grace = block_grace
        self.multipart_grace = multipart_grace
        self.relay = relay
        self.notify = notify
        self.stale = stale_uploads
        self.clock = clock
        self.log = logger or logging.getLogger("ingestd.scheduler")

    async def run(self, stop: asyncio.Event, interval_s: float = 5.0) -> None:
        while not stop.is_set():
            chores = await self.round()
            for error in chores.errors:
                self.log.warning("scheduler: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def round(self) -> Chores:
        """One pass over every chore; a failing chore does not stop the others."""
        chores = Chores()

        async def rescue() -> None:
            ready = await asyncio.to_thread(self.engine.rescue_expired)
            chores.rescued = len(ready)
            if ready:
                await self.dispatcher.announce(ready)

        async def publish() -> None:
            if self.relay is not None:
                chores.published = await self.relay()

        async def expire() -> None:
            chores.expired = await self.uploads.expire_sessions()

        async def finish() -> None:
            chores.finished = await self.tus.finish_stalled()

        async def tokens() -> None:
            chores.tokens = await self.tokens.purge_expired()

        async def blocks() -> None:
            chores.blocks = await self.db.run(self._purge_blocks)

        async def multipart() -> None:
            chores.multipart = await self._abort_orphan_multipart()

        async def notify() -> None:
            if self.notify is not None:
                chores.notified = await self.notify()

        async def workdirs() -> None:
            chores.workdirs = await asyncio.to_thread(clean_workdirs, self.workdir)

        for name, chore in (
            ("rescue", rescue),
            ("outbox", publish),
            ("expire", expire),
            ("finish", finish),
            ("tokens", tokens),
            ("blocks", blocks),
            ("multipart", multipart),
            ("workdirs", workdirs),
            ("notify", notify),
        ):
            try:
                await chore()
            except (IngestdError, SQLAlchemyError, OSError) as exc:
                chores.errors.append(f"{name}: {exc}")
        return chores

    def _purge_blocks(self, session: Session) -> int:
        """Blocks older than the grace period whose source no longer backs them with a
        stored master (cancelled, expired, or the master replaced)."""
        backed = (
            select(Source.id)
            .where(
                Source.id == Block.source_id,
                Source.status.in_(_LIVE_SOURCES),
                Source.master_key == Block.object_key,
            )
            .exists()
        )
        cutoff = self.clock() - self.block_grace
        result = session.execute(
            delete(Block)
            .where(Block.created_at < cutoff, ~backed)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _abort_orphan_multipart(self) -> int:
        if self.stale is None:
            return 0
        stale = await self.stale.stale_uploads(self.clock() - self.multipart_grace)
        if not stale:
            return 0

        def open_ids(session: Session) -> set[str]:
            return set(
                session.scalars(
                    select(UploadSession.id).where(
                        UploadSession.id.in_(stale),
                        UploadSession.status.in_(
                            [UploadStatus.OPEN.value, UploadStatus.COMPLETED.value]
                        ),
                    )
                )
            )

        keep = await self.db.run(open_ids)
        aborted = 0
        for upload_id in stale:
            if upload_id not in keep:
                await self.stale.discard(upload_id)
                aborted += 1
        return aborted


def clean_workdirs(workdir: Path, *, min_age_s: float = 60.0) -> int:
    """Remove the step directories of worker processes of this machine that are gone
    (killed mid-step). Directories are named ``<pid>-<step>-...`` by the worker."""
    if not workdir.is_dir():
        return 0
    removed = 0
    now = time.time()
    for entry in workdir.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit() or now - entry.stat().st_mtime < min_age_s:
            continue
        if _alive(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
