"""The scheduler's chores, with several schedulers at once on a real database."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from ingestd.bootstrap import Services
from ingestd.db.models import Asset, Block, Event, Source, UploadSession
from ingestd.db.types import utcnow
from ingestd.notify import Subscriptions
from ingestd.scheduler import clean_workdirs
from ingestd.uploads.service import NewUpload

pytestmark = pytest.mark.anyio


async def one_block(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def abandoned_upload(services: Services, owner: str, data: bytes) -> str:
    """An upload with one of its two blocks sent, whose client went away long ago."""
    bs = services.settings.block_size
    up = await services.uploads.create(owner, NewUpload("gone.wav", size=2 * bs))
    await services.uploads.put_block(
        owner, up.upload_id, 0, one_block(data), sha256=hashlib.sha256(data).hexdigest()
    )
    with services.db.transaction() as s:
        s.execute(
            update(UploadSession)
            .where(UploadSession.id == up.upload_id)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    return up.upload_id


async def test_two_schedulers_expire_an_abandoned_upload_once(services: Services) -> None:
    owner = services.keys.create("alice").owner_id
    data = os.urandom(services.settings.block_size)
    upload_id = await abandoned_upload(services, owner, data)
    staged = Path(services.settings.storage_root) / "staging" / f"{upload_id}.part"
    assert staged.exists()

    first, second = services.scheduler(), services.scheduler()
    rounds = await asyncio.gather(first.round(), second.round())
    assert sum(r.expired for r in rounds) == 1
    assert all(not r.errors for r in rounds), rounds
    assert not staged.exists()
    with services.db.transaction() as s:
        row = s.get_one(UploadSession, upload_id)
        source = s.get_one(Source, row.source_id)
        asset = s.get_one(Asset, source.asset_id)
        expired_events = s.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.type == "upload.expired", Event.asset_id == asset.id)
        )
        assert (row.status, source.status, asset.status) == ("expired", "expired", "abandoned")
    assert expired_events == 1


async def test_blocks_no_master_backs_are_removed_after_the_grace_period(
    services: Services,
) -> None:
    owner = services.keys.create("alice").owner_id
    upload_id = await abandoned_upload(services, owner, os.urandom(services.settings.block_size))
    with services.db.transaction() as s:
        source_id = s.get_one(UploadSession, upload_id).source_id
        assert source_id is not None
        for n, age in enumerate((timedelta(days=2), timedelta(minutes=5))):
            s.add(
                Block(
                    owner_id=owner,
                    sha256=f"{n:064x}",
                    size=10,
                    object_key=f"masters/x/{source_id}/original",
                    offset=n,
                    source_id=source_id,
                    created_at=utcnow() - age,
                )
            )
    await services.scheduler().round()  # the source expires: its master is gone
    with services.db.transaction() as s:
        left = s.scalars(select(Block.sha256)).all()
    assert left == [f"{1:064x}"]  # the young one waits for its grace period


def test_dead_workers_scratch_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = tmp_path / f"{dead.stdout.strip()}-package_video-abc"
    alive = tmp_path / f"{os.getpid()}-poster-def"
    young = tmp_path / f"{dead.stdout.strip()}-poster-young"
    for d in (gone, alive, young):
        d.mkdir()
        (d / "seg.m4s").write_bytes(b"x")
    old = time.time() - 3600
    for d in (gone, alive):
        os.utime(d, (old, old))
    assert clean_workdirs(tmp_path) == 1
    assert not gone.exists() and alive.exists() and young.exists()


async def test_a_scheduler_round_sends_notifications(services: Services) -> None:
    """The notify chore fans new events out to subscriptions and sends them (here an
    e-mail with no SMTP server configured: failed at once, with the reason)."""
    owner = services.keys.create("alice").owner_id
    subscriptions = Subscriptions(services.db)
    sub, _ = subscriptions.create(owner, "email", "alice@example.org", ["upload.created"])
    await services.uploads.create(owner, NewUpload("song.wav", size=100))
    notifier = services.notifier()
    try:
        chores = await services.scheduler(notifier).round()
    finally:
        await notifier.aclose()
    assert chores.notified == 1 and not chores.errors
    [(delivery, kind)] = subscriptions.deliveries(owner, sub.id)
    assert (kind, delivery.status) == ("upload.created", "failed")
    assert "e-mail is not configured" in (delivery.error or "")
