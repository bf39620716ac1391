"""tus uploads whose completion was cut short are finished later, not lost."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from ingestd.db.engine import Database
from ingestd.db.models import Owner, Source, UploadSession
from ingestd.db.types import new_id, utcnow
from ingestd.errors import StorageError
from ingestd.jobs.dispatch import InProcessDispatcher
from ingestd.jobs.engine import JobEngine
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.storage.local import LocalStore
from ingestd.uploads.blocks import MIN_BLOCK_SIZE
from ingestd.uploads.locks import InProcessLocker
from ingestd.uploads.service import UploadLimits, UploadService
from ingestd.uploads.tus import TusService
from ingestd.uploads.tus_protocol import Metadata

pytestmark = pytest.mark.anyio
BS = MIN_BLOCK_SIZE


async def stream(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 10_000):
        yield data[i : i + 10_000]


@pytest.fixture
def tus(database: Database, tmp_path: Path) -> TusService:
    store = LocalStore(tmp_path / "store")
    uploads = UploadService(
        database,
        store,
        store,
        JobEngine(database),
        InProcessDispatcher(),
        lambda: Graph((StepSpec("validate"),)),
        limits=UploadLimits(max_upload_size=10 * BS, ttl=timedelta(hours=1), default_block_size=BS),
    )
    return TusService(uploads, InProcessLocker(), lock_wait_s=1)


def new_owner(db: Database) -> str:
    with db.transaction() as s:
        o = Owner(id=new_id("own"), name=new_id("n"))
        s.add(o)
        return o.id


async def test_a_completion_cut_short_is_finished_by_the_scheduler(
    tus: TusService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = new_owner(database)
    data = os.urandom(2 * BS + 123)
    up = await tus.create(who, size=len(data), metadata=Metadata())

    real_complete = tus.uploads.complete

    async def crash(*args: object, **kw: object) -> object:
        raise StorageError("the process stopped here")

    monkeypatch.setattr(tus.uploads, "complete", crash)
    with pytest.raises(StorageError):
        await tus.append(who, up.upload_id, 0, stream(data), content_length=len(data))
    monkeypatch.setattr(tus.uploads, "complete", real_complete)

    state = await tus.state(who, up.upload_id)
    assert (state.status, state.offset) == ("open", len(data))  # every byte is kept
    assert await tus.finish_stalled() == 0  # too recent: a request may still be finishing

    tus.clock = lambda: utcnow() + timedelta(minutes=2)
    assert await tus.finish_stalled() == 1
    with database.transaction() as s:
        row = s.get_one(UploadSession, up.upload_id)
        source = s.get_one(Source, row.source_id)
        assert row.status == "completed"
        assert source.sha256 == hashlib.sha256(data).hexdigest()
    assert await tus.finish_stalled() == 0  # nothing left


async def test_an_empty_patch_at_the_end_of_a_completed_upload_is_a_no_op(
    tus: TusService, database: Database
) -> None:
    who = new_owner(database)
    data = os.urandom(BS + 1)
    up = await tus.create(who, size=len(data), metadata=Metadata())
    await tus.append(who, up.upload_id, 0, stream(data), content_length=len(data))
    again = await tus.append(who, up.upload_id, len(data), stream(b""), content_length=0)
    assert (again.status, again.offset) == ("completed", len(data))
