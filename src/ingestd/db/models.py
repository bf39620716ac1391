"""The relational model (DESIGN.md, "Data model").

Relational columns for what is queried and constrained; JSON for the flexible rest.
Status columns hold the values of the enums in :mod:`ingestd.domain.states`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ingestd.db.types import UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ACTIVE_ORDER_SQL = "state IN ('blocked', 'ready', 'running')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (
        # re-ingesting the same thing (same path, or same header-derived key) finds the asset
        UniqueConstraint("owner_id", "identity", name="uq_assets_identity"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    identity: Mapped[str | None] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(20), default="unknown")
    title: Mapped[str | None] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    sha256: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    filename: Mapped[str | None] = mapped_column(String(1000))
    content_type: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[int | None] = mapped_column(BigInteger)  # null until a deferred length is known
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    staging_key: Mapped[str | None] = mapped_column(String(500))
    master_key: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UploadSession(Base):
    __tablename__ = "upload_sessions"
    __table_args__ = (
        # an upload named by the sender (an AMQP gateway's upload id): one session per name
        UniqueConstraint("owner_id", "external_id", name="uq_upload_sessions_external"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # null for a tus partial upload: a piece of a later final upload, not a source itself
    source_id: Mapped[str | None] = mapped_column(
        ForeignKey("sources.id", ondelete="CASCADE"), unique=True
    )
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    protocol: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), index=True)
    # null while a tus client defers the length (Upload-Defer-Length)
    size: Mapped[int | None] = mapped_column(BigInteger)
    # sequential protocols (tus): bytes made durable from the start; block uploads leave 0
    offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    block_size: Mapped[int] = mapped_column(BigInteger)
    block_count: Mapped[int] = mapped_column(Integer)
    # declared per-block SHA-256 (hex) when the client sent its block list, else null
    block_hashes: Mapped[list[Any] | None] = mapped_column(JSON)
    expected_sha256: Mapped[str | None] = mapped_column(String(64))
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # the sender's own id for this upload, where the protocol carries one (AMQP chunks)
    external_id: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class UploadToken(Base):
    """A short-lived direct-upload token: lets a front end create one upload for its owner."""

    __tablename__ = "upload_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    max_size: Mapped[int] = mapped_column(BigInteger)
    kinds: Mapped[list[Any] | None] = mapped_column(JSON)  # allowed asset kinds; null: any
    label: Mapped[str | None] = mapped_column(String(200))
    # the one upload (regular or tus final) it created; tus partials are listed in parts
    upload_id: Mapped[str | None] = mapped_column(String(40))
    parts: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None]


class UploadPart(Base):
    """One verified block of an upload session, durable in the staging store."""

    __tablename__ = "upload_parts"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("upload_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # "upload": bytes sent by the client; "dedup": to be copied from an existing block
    origin: Mapped[str] = mapped_column(String(10), default="upload")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Block(Base):
    """A content-addressed block an owner already stores, for deduplication.

    It lives inside a stored object (``object_key`` at ``offset``), so deduplicated
    uploads copy ranges inside the store instead of receiving the bytes again.
    """

    __tablename__ = "blocks"
    __table_args__ = (
        Index("ix_blocks_owner_sha", "owner_id", "sha256"),
        UniqueConstraint("object_key", "offset", name="uq_blocks_location"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(500))
    offset: Mapped[int] = mapped_column(BigInteger)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkOrder(Base):
    __tablename__ = "work_orders"
    __table_args__ = (
        # at most one pending or running order per (asset, step)
        Index(
            "uq_work_orders_active_step",
            "asset_id",
            "step",
            unique=True,
            sqlite_where=text(ACTIVE_ORDER_SQL),
            postgresql_where=text(ACTIVE_ORDER_SQL),
        ),
        Index("ix_work_orders_claim", "state", "queue", "run_after"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(50), default="default")
    depends_on: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    content_key: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_s: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Rendition(Base):
    __tablename__ = "renditions"
    __table_args__ = (UniqueConstraint("asset_id", "name", name="uq_renditions_asset_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    work_order_id: Mapped[str | None] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(30))
    profile: Mapped[str | None] = mapped_column(String(100))
    storage_key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int | None] = mapped_column(BigInteger)
    codec: Mapped[str | None] = mapped_column(String(100))
    bitrate: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """Append-only log per asset; the outbox that feeds notifications and SSE."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    asset_id: Mapped[str | None] = mapped_column(
        ForeignKey("assets.id", ondelete="CASCADE"), index=True
    )
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    type: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]


class OutboxMessage(Base):
    """A dispatch message written in the transaction that made a work order ready, and
    published to the broker after that transaction commits (then deleted): a crash between
    commit and publish loses nothing."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    queue: Mapped[str] = mapped_column(String(50))
    order_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # a relay took the message to publish it; another relay leaves it alone until then
    relay_until: Mapped[datetime | None]


class IngestOrder(Base):
    """An ingestion work order for a path on the server (a script, a watched folder,
    ``POST /v1/ingest``): one per owner and path; a new request for a path updates it."""

    __tablename__ = "ingest_orders"
    __table_args__ = (UniqueConstraint("owner_id", "path", name="uq_ingest_orders_path"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), index=True)  # IngestOrderStatus
    force: Mapped[bool] = mapped_column(default=False)
    asset_id: Mapped[str | None] = mapped_column(ForeignKey("assets.id", ondelete="SET NULL"))
    # what the last completed run saw (sha256, data and header keys), for change detection
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Target(Base):
    """Where an owner's outputs go: a directory, an S3 bucket/prefix, an FTP holder, or an
    HTTP catalog. ``config`` holds the kind's settings (credentials included)."""

    __tablename__ = "targets"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_targets_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))  # directory | s3 | ftp | catalog
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Publication(Base):
    """One object of an asset published to a target (for a catalog: the asset's item)."""

    __tablename__ = "publications"
    __table_args__ = (
        UniqueConstraint("target_id", "asset_id", "key", name="uq_publications_object"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(500))  # the object's key in ingestd's store
    remote: Mapped[str] = mapped_column(String(1000))  # where it is on the target
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))  # published | removed | failed
    error: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Subscription(Base):
    """An owner's notification endpoint: a webhook URL or an e-mail address, for some
    event types (``asset.ready``, ``asset.failed``, ``upload.completed``...)."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # webhook | email
    address: Mapped[str] = mapped_column(String(1000))  # URL or e-mail address
    secret: Mapped[str | None] = mapped_column(String(200))  # signs webhook bodies
    events: Mapped[list[Any]] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """One event sent (or to be sent) to one subscription, with its attempts."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_event"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)  # the first 2 KiB
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
