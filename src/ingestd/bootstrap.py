"""The composition root: settings in, a wired service out. Nothing else reads settings."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ingestd.auth.keys import IssuedKey, KeyService
from ingestd.auth.signing import UrlSigner
from ingestd.auth.tokens import UploadTokens
from ingestd.db.engine import Database
from ingestd.db.migrate import upgrade
from ingestd.defaults import LOCAL_KEY_FILE, LOCAL_OWNER
from ingestd.errors import ConfigError
from ingestd.jobs.dispatch import Dispatcher, InProcessDispatcher
from ingestd.jobs.engine import Backoff, JobEngine
from ingestd.jobs.progress import InMemoryProgress, ProgressBoard
from ingestd.jobs.worker import Step, Worker
from ingestd.media import Toolchain
from ingestd.media.ladder import Profile, load_profiles
from ingestd.pipeline.context import PipelineDeps, PipelineLimits
from ingestd.pipeline.fits import FitsSteps
from ingestd.pipeline.ingest import VALIDATE, ValidateStep, ingest_graph
from ingestd.pipeline.music import MusicSteps
from ingestd.pipeline.video import VideoSteps
from ingestd.publish import PublicationService, PublishSteps, default_policy
from ingestd.publish.catalog import CatalogSteps
from ingestd.scheduler import Scheduler, StaleUploads
from ingestd.settings import Settings
from ingestd.storage.base import ObjectStore, StagingStore
from ingestd.storage.local import LocalStore
from ingestd.uploads.locks import InProcessLocker, UploadLocker
from ingestd.uploads.orders import IdentityRule, OrderRunner, OrderService
from ingestd.uploads.routing import InMemoryRouting, RoutingMap
from ingestd.uploads.service import UploadLimits, UploadService
from ingestd.uploads.tus import TusService

if TYPE_CHECKING:
    from ingestd.coordination.redis import RedisCoordination
    from ingestd.notify import Notifier


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ObjectStore
    staging: StagingStore
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
    publications: PublicationService
    orders: OrderService
    locker: UploadLocker
    progress: ProgressBoard
    routing: RoutingMap
    coordination: RedisCoordination | None = None
    public_url: str | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ingestd"))

    def worker(
        self,
        *,
        worker_id: str | None = None,
        queues: list[str] | None = None,
        concurrency: int | None = None,
    ) -> Worker:
        s = self.settings
        return Worker(
            self.engine,
            self.dispatcher,
            self.steps,
            worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}",
            queues=queues or s.queue_list,
            concurrency=concurrency or s.worker_concurrency,
            workdir=self.workdir,
            heartbeat_s=s.heartbeat_s,
            poll_s=s.poll_s,
            board=self.progress,
            logger=self.log.getChild("worker"),
        )

    def order_runner(self) -> OrderRunner:
        """The loop that runs ingest orders for server paths: whoever runs workers runs it."""
        s = self.settings
        return OrderRunner(
            self.orders,
            self.uploads,
            identity=IdentityRule.parse(s.fits_identity),
            poll_s=s.poll_s,
            logger=self.log.getChild("orders"),
        )

    @property
    def workdir(self) -> Path:
        return self.settings.data_dir.resolve() / "work"

    def notifier(self) -> Notifier:
        """Webhook and e-mail deliveries; one per scheduler process (it holds an HTTP
        client and a fan-out cursor)."""
        from ingestd.notify import EmailSender, Notifier, SmtpConfig, WebhookSender

        s = self.settings
        smtp = (
            SmtpConfig(
                s.smtp_host, s.smtp_port, s.smtp_from, s.smtp_user, s.smtp_password, s.smtp_starttls
            )
            if s.smtp_host
            else None
        )
        return Notifier(
            self.db,
            self.signer,
            webhooks=WebhookSender(
                timeout_s=s.webhook_timeout_s, allow_private=s.webhook_allow_private
            ),
            email=EmailSender(smtp),
            base_url=s.public_url or s.resolved_replica_url,
            max_attempts=s.notify_max_attempts,
            logger=self.log.getChild("notify"),
        )

    def scheduler(self, notifier: Notifier | None = None) -> Scheduler:
        s = self.settings
        relay = getattr(self.dispatcher, "relay", None)
        stale = self.staging if isinstance(self.staging, StaleUploads) else None
        return Scheduler(
            self.db,
            self.engine,
            self.dispatcher,
            self.uploads,
            self.tus,
            self.tokens,
            workdir=self.workdir,
            block_grace=timedelta(seconds=s.orphan_block_grace_s),
            multipart_grace=timedelta(seconds=max(3600, s.upload_ttl_s)),
            relay=relay,
            notify=notifier.run_once if notifier is not None else None,
            stale_uploads=stale,
            logger=self.log.getChild("scheduler"),
        )

    async def run_scheduler(self, stop: asyncio.Event, interval_s: float | None = None) -> None:
        """Rescue expired leases, publish the outbox, expire abandoned uploads (their staged
        data goes), finish tus uploads whose completion was cut short, and the rest of
        :class:`Scheduler`'s chores, until ``stop``."""
        notifier = self.notifier()
        try:
            await self.scheduler(notifier).run(
                stop, interval_s or self.settings.scheduler_interval_s
            )
        finally:
            await notifier.aclose()

    async def start(self) -> None:
        """Check the shared backends answer (call once, in the event loop that uses them)."""
        if self.coordination is not None:
            await self.coordination.check()
        ensure = getattr(self.store, "ensure_bucket", None)
        if ensure is not None:
            await ensure()

    async def aclose(self) -> None:
        """Close what lives in the event loop (broker and Redis connections)."""
        await self.dispatcher.close()
        if self.coordination is not None:
            await self.coordination.close()

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
    db = Database.from_url(url, pool_size=settings.database_pool_size)
    store, staging = build_stores(settings)
    toolchain = Toolchain.discover(settings.ffmpeg, settings.ffprobe, settings.packager)
    engine = JobEngine(
        db,
        lease_s=settings.lease_s,
        backoff=Backoff(base_s=settings.retry_base_s),
        outbox=settings.broker_url is not None,
    )
    dispatcher: Dispatcher
    if settings.broker_url:
        from ingestd.jobs.amqp import AmqpDispatcher, Topology

        dispatcher = AmqpDispatcher(
            settings.broker_url,
            engine,
            topology=Topology(settings.broker_prefix, settings.broker_delivery_limit),
            prefetch=settings.worker_concurrency,
        )
    else:
        dispatcher = InProcessDispatcher()
    deps = PipelineDeps(
        store=store,
        toolchain=toolchain,
        limits=PipelineLimits(
            max_duration_s=settings.max_duration_s,
            step_timeout_s=settings.step_timeout_s,
            segment_s=settings.segment_s,
            video_preset=settings.video_preset,
            per_rung=settings.video_ladder_mode == "per_rung",
            fits_require_checksums=settings.fits_require_checksums,
        ),
    )
    steps: dict[str, Step] = {
        VALIDATE: Step(ValidateStep(deps, engine, profiles), timeout_s=settings.step_timeout_s),
        **MusicSteps(deps).steps(),
        **VideoSteps(deps, profiles).steps(),
        **FitsSteps(deps).steps(),
        **CatalogSteps().steps(),
    }
    publications = PublicationService(
        db,
        store,
        policy=default_policy(settings.data_dir, settings.publish_dir_list),
        engine=engine,
    )
    steps.update(PublishSteps(publications, timeout_s=settings.step_timeout_s).steps())
    uploads = UploadService(
        db,
        staging,
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
    coordination: RedisCoordination | None = None
    locker: UploadLocker
    progress: ProgressBoard
    routing: RoutingMap
    if settings.redis_url:
        from ingestd.coordination.redis import RedisCoordination

        coordination = RedisCoordination.from_url(settings.redis_url, settings.redis_prefix)
        locker, progress, routing = (
            coordination.locker,
            coordination.progress,
            coordination.routing,
        )
    else:
        locker, progress, routing = InProcessLocker(), InMemoryProgress(), InMemoryRouting()
    tus = TusService(
        uploads,
        locker,
        lock_wait_s=settings.tus_lock_wait_s,
        routing=routing if coordination is not None else None,
        replica=settings.resolved_replica_url,
        route_ttl_s=settings.upload_ttl_s,
    )
    return Services(
        settings=settings,
        db=db,
        store=store,
        staging=staging,
        engine=engine,
        dispatcher=dispatcher,
        uploads=uploads,
        tus=tus,
        tokens=UploadTokens(db, max_upload_size=settings.max_upload_size),
        keys=KeyService(db),
        signer=UrlSigner(load_secret(settings), ttl_s=settings.url_ttl_s),
        toolchain=toolchain,
        steps=steps,
        profiles=profiles,
        publications=publications,
        orders=OrderService(db, roots=settings.ingest_root_list),
        locker=locker,
        progress=progress,
        routing=routing,
        coordination=coordination,
        public_url=settings.public_url,
    )


def build_stores(settings: Settings) -> tuple[ObjectStore, StagingStore]:
    """The object store and the staging store the storage URL names."""
    if settings.storage_is_s3:
        from ingestd.storage.s3 import S3Store, make_client, parse_s3_url
        from ingestd.storage.s3_staging import S3Staging

        config = parse_s3_url(settings.storage_url or "")
        client = make_client(config)
        tmp = settings.data_dir.resolve() / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return (
            S3Store(config, client, tmp_dir=tmp),
            S3Staging(config, client, max_object_size=settings.max_upload_size),
        )
    local = LocalStore(settings.storage_root)
    return local, local


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
