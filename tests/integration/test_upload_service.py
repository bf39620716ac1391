"""The upload service on real SQLite and PostgreSQL with the local store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Owner, Source, UploadSession, WorkOrder
from ingestd.db.types import new_id, utcnow
from ingestd.errors import (
    ChecksumMismatch,
    Gone,
    InvalidBlock,
    InvalidRequest,
    NotFound,
    TooLarge,
    UploadIncomplete,
)
from ingestd.jobs.dispatch import InProcessDispatcher
from ingestd.jobs.engine import JobEngine
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.storage.local import LocalStore
from ingestd.uploads.blocks import MIN_BLOCK_SIZE
from ingestd.uploads.service import NewUpload, UploadLimits, UploadService, master_key

pytestmark = pytest.mark.anyio
BS = MIN_BLOCK_SIZE


async def stream(data: bytes, piece: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def owner(db: Database) -> str:
    with db.transaction() as s:
        o = Owner(id=new_id("own"), name=new_id("n"))
        s.add(o)
        return o.id


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def service(database: Database, store: LocalStore) -> UploadService:
    return UploadService(
        database,
        store,
        store,
        JobEngine(database),
        InProcessDispatcher(),
        lambda: Graph((StepSpec("validate"),)),
        limits=UploadLimits(max_upload_size=10 * BS, ttl=timedelta(hours=1), default_block_size=BS),
    )


def blocks_of(data: bytes) -> list[bytes]:
    return [data[i : i + BS] for i in range(0, len(data), BS)]


async def upload_all(service: UploadService, who: str, data: bytes, **kw: object) -> str:
    info = await service.create(who, NewUpload(filename="a.wav", size=len(data), **kw))  # type: ignore[arg-type]
    for i in info.missing:
        await service.put_block(
            who, info.upload_id, i, stream(blocks_of(data)[i]), sha256=sha(blocks_of(data)[i])
        )
    return info.upload_id


async def test_upload_complete_stores_the_master_and_enqueues_validation(
    service: UploadService, database: Database, store: LocalStore
) -> None:
    who = owner(database)
    data = os.urandom(2 * BS + 123)
    info = await service.create(
        who, NewUpload(filename="../../etc/passwd", size=len(data), sha256=sha(data))
    )
    assert info.missing == [0, 1, 2] and info.block_size == BS
    # blocks out of order, one twice (idempotent)
    for i in (2, 0, 2):
        await service.put_block(
            who, info.upload_id, i, stream(blocks_of(data)[i]), sha256=sha(blocks_of(data)[i])
        )
    mid = await service.status(who, info.upload_id)
    assert mid.missing == [1] and mid.bytes_received == BS + 123
    await service.put_block(
        who, info.upload_id, 1, stream(blocks_of(data)[1]), sha256=sha(blocks_of(data)[1])
    )
    done = await service.complete(who, info.upload_id)
    assert done.status == "completed" and done.source_status == "uploaded"
    assert (await service.complete(who, info.upload_id)).status == "completed"  # idempotent
    with database.transaction() as s:
        src = s.get_one(Source, info.source_id)
        asset = s.get_one(Asset, info.asset_id)
        orders = list(s.scalars(select(WorkOrder).where(WorkOrder.asset_id == asset.id)))
        assert src.filename == "../../etc/passwd"  # metadata only
        assert src.sha256 == sha(data) and asset.status == "ingesting"
        assert [(o.step, o.state) for o in orders] == [("validate", "ready")]
        key = src.master_key
    assert key is not None and not key.count("..")
    master = store.path_for(key)
    assert master.read_bytes() == data
    assert not list(store.staging.iterdir())  # no second copy left behind


async def test_bad_blocks_are_refused_and_not_kept(
    service: UploadService, database: Database
) -> None:
    who = owner(database)
    data = os.urandom(BS + 10)
    info = await service.create(who, NewUpload(filename="x", size=len(data)))
    block = blocks_of(data)[0]
    with pytest.raises(ChecksumMismatch):
        await service.put_block(who, info.upload_id, 0, stream(block), sha256=sha(b"other"))
    with pytest.raises(InvalidBlock):
        await service.put_block(who, info.upload_id, 2, stream(b"x"), sha256=sha(b"x"))
    with pytest.raises(InvalidBlock):
        await service.put_block(who, info.upload_id, -1, stream(b"x"), sha256=sha(b"x"))
    with pytest.raises(TooLarge):
        await service.put_block(who, info.upload_id, 1, stream(b"y" * 11), sha256=sha(b"y" * 11))
    with pytest.raises(InvalidRequest):  # short block
        await service.put_block(who, info.upload_id, 1, stream(b"y" * 9), sha256=sha(b"y" * 9))
    with pytest.raises(InvalidRequest):  # no digest at all
        await service.put_block(who, info.upload_id, 0, stream(block), sha256=None)
    status = await service.status(who, info.upload_id)
    assert status.missing == [0, 1] and status.bytes_received == 0
    with pytest.raises(UploadIncomplete) as missing:
        await service.complete(who, info.upload_id)
    assert missing.value.details["missing"] == [0, 1]


async def test_sizes_and_owners(service: UploadService, database: Database) -> None:
    who, other = owner(database), owner(database)
    for size in (0, -5):
        with pytest.raises(InvalidRequest):
            await service.create(who, NewUpload(filename="x", size=size))
    with pytest.raises(TooLarge):
        await service.create(who, NewUpload(filename="x", size=10 * BS + 1))
    info = await service.create(who, NewUpload(filename="x", size=10))
    with pytest.raises(NotFound):
        await service.status(other, info.upload_id)
    with pytest.raises(NotFound):
        await service.put_block(other, info.upload_id, 0, stream(b"0" * 10), sha256=sha(b"0" * 10))
    with pytest.raises(NotFound):
        await service.status(who, "up_doesnotexist")


async def test_whole_file_checksum_is_verified(service: UploadService, database: Database) -> None:
    who = owner(database)
    data = os.urandom(BS // 2)
    upload_id = await upload_all(service, who, data, sha256=sha(b"something else"))
    with pytest.raises(ChecksumMismatch):
        await service.complete(who, upload_id)


async def test_tampered_staged_block_is_detected_at_completion(
    service: UploadService, database: Database, store: LocalStore
) -> None:
    who = owner(database)
    data = os.urandom(2 * BS)
    upload_id = await upload_all(service, who, data)
    staged = store.staging / f"{upload_id}.part"
    # a concurrent writer scribbled over block 1
    data_on_disk = bytearray(staged.read_bytes())
    data_on_disk[BS + 5 : BS + 7] = b"\x00\x01"
    staged.write_bytes(bytes(data_on_disk))
    with pytest.raises(UploadIncomplete) as info:
        await service.complete(who, upload_id)
    assert info.value.details["missing"] == [1]
    await service.put_block(
        who, upload_id, 1, stream(blocks_of(data)[1]), sha256=sha(blocks_of(data)[1])
    )
    assert (await service.complete(who, upload_id)).status == "completed"


async def test_dedup_is_scoped_to_the_owner(
    service: UploadService, database: Database, store: LocalStore
) -> None:
    who, other = owner(database), owner(database)
    data = os.urandom(3 * BS)
    hashes = [sha(b) for b in blocks_of(data)]
    first = await upload_all(service, who, data, blocks=hashes)
    await service.complete(who, first)

    again = await service.create(who, NewUpload(filename="b", size=len(data), blocks=hashes))
    assert again.missing == []  # nothing to send
    done = await service.complete(who, again.upload_id)
    with database.transaction() as s:
        src = s.get_one(Source, done.source_id)
        assert src.sha256 == sha(data) and src.master_key is not None
        assert store.path_for(src.master_key).read_bytes() == data

    stranger = await service.create(other, NewUpload(filename="c", size=len(data), blocks=hashes))
    assert stranger.missing == [0, 1, 2]  # no hint that someone else has the file


async def test_cancel_removes_staged_data(
    service: UploadService, database: Database, store: LocalStore
) -> None:
    who = owner(database)
    data = os.urandom(BS)
    upload_id = await upload_all(service, who, data)
    await service.cancel(who, upload_id)
    assert not (store.staging / f"{upload_id}.part").exists()
    with pytest.raises(Gone):
        await service.put_block(who, upload_id, 0, stream(data), sha256=sha(data))
    status = await service.status(who, upload_id)
    assert status.status == "cancelled" and status.source_status == "cancelled"


async def test_expired_upload_answers_gone(database: Database, store: LocalStore) -> None:
    service = UploadService(
        database,
        store,
        store,
        JobEngine(database),
        InProcessDispatcher(),
        lambda: Graph((StepSpec("validate"),)),
        limits=UploadLimits(ttl=timedelta(seconds=-1), default_block_size=BS),
    )
    who = owner(database)
    info = await service.create(who, NewUpload(filename="x", size=10))
    assert info.status == "expired"
    with pytest.raises(Gone):
        await service.put_block(who, info.upload_id, 0, stream(b"0" * 10), sha256=sha(b"0" * 10))


async def test_scheduler_expires_abandoned_uploads(database: Database, store: LocalStore) -> None:
    clock_now = [utcnow()]
    service = UploadService(
        database,
        store,
        store,
        JobEngine(database),
        InProcessDispatcher(),
        lambda: Graph((StepSpec("validate"),)),
        limits=UploadLimits(ttl=timedelta(hours=1), default_block_size=BS),
        clock=lambda: clock_now[0],
    )
    who = owner(database)
    data = os.urandom(BS)
    stale = await upload_all(service, who, data)
    fresh = await service.create(who, NewUpload(filename="y", size=10))
    assert await service.expire_sessions() == 0
    clock_now[0] += timedelta(minutes=61)
    fresh_at = clock_now[0] - timedelta(minutes=1)
    with database.transaction() as s:  # the second upload was touched later
        s.get_one(UploadSession, fresh.upload_id).expires_at = fresh_at + timedelta(hours=1)
    assert await service.expire_sessions() == 1
    assert await service.expire_sessions() == 0  # idempotent
    assert not (store.staging / f"{stale}.part").exists()
    assert (store.staging / f"{fresh.upload_id}.part").exists()
    status = await service.status(who, stale)
    assert (status.status, status.source_status, status.present) == ("expired", "expired", [])
    with database.transaction() as s:
        assert s.get_one(Asset, status.asset_id).status == "abandoned"


async def test_concurrent_completes_agree(service: UploadService, database: Database) -> None:
    import asyncio

    who = owner(database)
    data = os.urandom(2 * BS)
    upload_id = await upload_all(service, who, data)
    results = await asyncio.gather(*(service.complete(who, upload_id) for _ in range(3)))
    assert {r.status for r in results} == {"completed"}
    with database.transaction() as s:
        orders = list(s.scalars(select(WorkOrder)))
    assert len(orders) == 1  # validation enqueued once


async def test_complete_recovers_from_a_crash_after_the_rename(
    service: UploadService, database: Database, store: LocalStore
) -> None:
    who = owner(database)
    data = os.urandom(2 * BS + 3)
    upload_id = await upload_all(service, who, data)
    info = await service.status(who, upload_id)
    # the process died after moving the master into place but before committing
    await store.finalize(upload_id, master_key(info.asset_id, info.source_id))
    done = await service.complete(who, upload_id)
    assert done.status == "completed"
    with database.transaction() as s:
        assert s.get_one(Source, info.source_id).sha256 == sha(data)
