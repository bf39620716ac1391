"""The composition root: settings in, a wired service out. Nothing else reads settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ingestd.auth.keys import IssuedKey, KeyService
from ingestd.auth.signing import UrlSigner
from ingestd.auth.tokens import UploadTokens
from ingestd.db.engine import Database
from ingestd.db.migrate import upgrade
from ingestd.defaults import LOCAL_KEY_FILE, LOCAL_OWNER
from ingestd.errors import ConfigError, IngestdError
from ingestd.jobs.dispatch import Dispatcher, InProcessDispatcher
from ingestd.jobs.engine import Backoff, JobEngine
from ingestd.jobs.worker import Step, Worker
from ingestd.media import Toolchain
from ingestd.media.ladder import Profile, load_profiles
from ingestd.pipeline.context import PipelineDeps, PipelineLimits
from ingestd.pipeline.ingest import VALIDATE, ValidateStep, ingest_graph
from ingestd.pipeline.music import MusicSteps
from ingestd.pipeline.video import VideoSteps
from ingestd.settings import Settings
from ingestd.storage.local import LocalStore
from ingestd.uploads.locks import InProcessLocker, UploadLocker
from ingestd.uploads.service import UploadLimits, UploadService
from ingestd.uploads.tus import TusService


@dataclass
class Services:
    settings: Settings
    db: Database
    store: LocalStore
    engine: JobEngine
    dispatcher: Dispatcher
    uploads: UploadService
    tus: TusService
    tokens: UploadTokens
    keys: KeyService
    signer: UrlSigner
    toolchain: Toolchain
    steps: dict[str, Step]
    profiles: dict[str, Profile]
    public_url: str | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ingestd"))

    def worker(self, *, worker_id: str | None = None) -> Worker:
        s = self.settings
        return Worker(
            self.engine,
            self.dispatcher,
            self.steps,
            worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}",
            queues=s.queue_list,
            concurrency=s.worker_concurrency,
            workdir=s.data_dir.resolve() / "work",
            heartbeat_s=s.heartbeat_s,
            poll_s=s.poll_s,
            logger=self.log.getChild("worker"),
        )

    async def run_scheduler(self, stop: asyncio.Event, interval_s: float = 5.0) -> None:
        """Rescue expired leases, expire abandoned uploads (their staged data goes), finish
        tus uploads whose completion was cut short, forget long-expired upload tokens."""
        while not stop.is_set():
            try:
                ready = await asyncio.to_thread(self.engine.rescue_expired)
                if ready:
                    await self.dispatcher.announce(ready)
                await self.uploads.expire_sessions()
                await self.tus.finish_stalled()
                await self.tokens.purge_expired()
            except IngestdError as exc:  # a failed round must not stop the loop
                self.log.warning("scheduler round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    def close(self) -> None:
        self.db.dispose()


def load_secret(settings: Settings) -> bytes:
    if settings.secret:
        return settings.secret.encode()
    path = settings.data_dir / "secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def build(settings: Settings, *, migrate: bool = True) -> Services:
    try:
        profiles = load_profiles(settings.profiles_file)
    except ValueError as exc:
        raise ConfigError(f"INGESTD_PROFILES_FILE: {exc}") from exc
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if migrate:
        upgrade(url)
    db = Database.from_url(url)
    store = LocalStore(settings.storage_root)
    toolchain = Toolchain.discover(settings.ffmpeg, settings.ffprobe, settings.packager)
    dispatcher = InProcessDispatcher()
    engine = JobEngine(db, lease_s=settings.lease_s, backoff=Backoff(base_s=settings.retry_base_s))
    deps = PipelineDeps(
        store=store,
        toolchain=toolchain,
        limits=PipelineLimits(
            max_duration_s=settings.max_duration_s,
            step_timeout_s=settings.step_timeout_s,
            segment_s=settings.segment_s,
            video_preset=settings.video_preset,
            per_rung=settings.video_ladder_mode == "per_rung",
        ),
    )
    steps: dict[str, Step] = {
        VALIDATE: Step(ValidateStep(deps, engine, profiles), timeout_s=settings.step_timeout_s),
        **MusicSteps(deps).steps(),
        **VideoSteps(deps, profiles).steps(),
    }
    uploads = UploadService(
        db,
        store,
        store,
        engine,
        dispatcher,
        ingest_graph,
        limits=UploadLimits(
            max_upload_size=settings.max_upload_size,
            ttl=timedelta(seconds=settings.upload_ttl_s),
            default_block_size=settings.block_size,
        ),
    )
    locker: UploadLocker = InProcessLocker()
    return Services(
        settings=settings,
        db=db,
        store=store,
        engine=engine,
        dispatcher=dispatcher,
        uploads=uploads,
        tus=TusService(uploads, locker, lock_wait_s=settings.tus_lock_wait_s),
        tokens=UploadTokens(db, max_upload_size=settings.max_upload_size),
        keys=KeyService(db),
        signer=UrlSigner(load_secret(settings), ttl_s=settings.url_ttl_s),
        toolchain=toolchain,
        steps=steps,
        profiles=profiles,
        public_url=settings.public_url,
    )


def ensure_local_key(services: Services) -> tuple[Path, IssuedKey | None]:
    """On first start, create the local owner's key and keep it (mode 0600) in the data dir."""
    path = services.settings.data_dir.resolve() / LOCAL_KEY_FILE
    if path.exists():
        return path, None
    issued = services.keys.create(LOCAL_OWNER, label="created on first start")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(issued.key + "\n")
    return path, issued
