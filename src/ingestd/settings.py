"""Settings, read once, in the composition root only (``INGESTD_*`` variables and CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingestd.defaults import DATA_DIR
from ingestd.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGESTD_", extra="ignore")

    data_dir: Path = Path(DATA_DIR)
    database_url: str | None = None  # default: sqlite in data_dir
    # PostgreSQL connections each process keeps (as many again on bursts); with hundreds of
    # workers, put PgBouncer in front and keep this small (docs/scaling.md)
    database_pool_size: int = Field(default=10, ge=1)
    # default: file:// in data_dir; s3://bucket[/prefix]?endpoint=http://host:port&region=...
    storage_url: str | None = None
    # amqp://user:pass@host:port/vhost: work orders dispatched over RabbitMQ (default:
    # in-process, one machine)
    broker_url: str | None = None
    broker_prefix: str = "ingestd."  # names of the exchanges and queues ingestd declares
    # a message delivered this many times without being settled goes to <prefix>dead
    broker_delivery_limit: int = Field(default=5, ge=1)
    # redis://host:port/db: upload locks, live progress and upload routing shared by replicas
    redis_url: str | None = None
    redis_prefix: str = "ingestd:"
    # this replica also runs the scheduler loop (``ingestd serve`` always does)
    scheduler: bool = False
    scheduler_interval_s: float = Field(default=5.0, gt=0)
    # blocks no longer referenced by any master are removed after this long
    orphan_block_grace_s: float = Field(default=24 * 3600, ge=0)
    # this replica's own URL, recorded in the upload routing map (default: host:port)
    replica_url: str | None = None
    # AMQP chunk ingestion (``ingestd amqp-ingest``)
    amqp_ingest_queue: str = "ingestd.chunks"
    amqp_ingest_owner: str = "local"
    amqp_ingest_prefetch: int = Field(default=4, ge=1)
    amqp_ingest_dead_letter_queue: str | None = None  # default: <queue>.dead
    # a chunk whose handling failed this many times goes to the dead-letter queue
    amqp_ingest_max_deliveries: int = Field(default=5, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None  # e.g. https://media.example.org; else from the request
    secret: str | None = None  # signs URLs; default: a random secret kept in data_dir

    max_upload_size: int = Field(default=100 << 30, gt=0)
    upload_ttl_s: int = Field(default=24 * 3600, gt=0)
    block_size: int = 8 << 20
    url_ttl_s: int = 6 * 3600
    tus_lock_wait_s: float = Field(default=5.0, ge=0)  # a second PATCH waits, then gets 423
    tus_idle_timeout_s: float = Field(default=30.0, gt=0)  # a PATCH body silent this long ends
    upload_token_ttl_s: int = Field(default=3600, gt=0)  # default life of a direct-upload token

    # browsers: origins allowed to call the API ("*" or a comma-separated list; empty: none)
    cors_origins: str = ""
    # behind a reverse proxy: build URLs from X-Forwarded-Proto/-Host (or Forwarded)
    trust_forwarded: bool = False

    ffmpeg: str | None = None
    ffprobe: str | None = None
    packager: str | None = None

    worker_concurrency: int = Field(default=2, ge=1)
    queues: str = "default,encode"
    lease_s: float = 60.0
    heartbeat_s: float = 10.0
    poll_s: float = 2.0
    retry_base_s: float = 2.0
    step_timeout_s: float = 6 * 3600
    max_duration_s: float = 24 * 3600
    segment_s: float = 6.0
    video_preset: str = "veryfast"  # x264 preset of the video ladder
    # "single": every rung in one ffmpeg process (cheapest); "per_rung": one work order per
    # rung, so rungs spread over workers and one failed rung can be retried alone
    video_ladder_mode: Literal["single", "per_rung"] = "single"
    profiles_file: Path | None = None  # JSON ladder profiles beside the built-in "default"

    # paths on the server: `ingestd ingest`, `ingestd watch` and POST /v1/ingest take files
    # under these roots only (comma-separated absolute paths; empty: none over the API)
    ingest_roots: str = ""
    watch_settle_s: float = Field(default=2.0, ge=0)  # a watched file must stop growing this long
    # FITS: a file without CHECKSUM/DATASUM cards is accepted (and flagged) or rejected
    fits_require_checksums: bool = False
    # what makes two FITS files "the same asset" on re-ingestion: "path", or "header:" and
    # comma-separated primary-header keywords, e.g. "header:TELESCOP,INSTRUME,DATE-OBS"
    fits_identity: str = "path"

    # directory publication targets may write only under <data_dir>/published and these
    # (comma-separated absolute paths)
    publish_dirs: str = ""

    # notifications: e-mail over SMTP (webhooks need no settings)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "ingestd@localhost"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # webhooks to hosts that resolve to loopback or private addresses (off: no calls into
    # the server's own network on an owner's say-so)
    webhook_allow_private: bool = False
    notify_max_attempts: int = Field(default=8, ge=1)

    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ingestd.db').resolve()}"

    @property
    def storage_is_s3(self) -> bool:
        return (self.storage_url or "").startswith("s3://")

    @property
    def storage_root(self) -> Path:
        """The local store's root; with an S3 store, the local scratch area for staging."""
        url = self.storage_url
        if url is None or url.startswith("s3://"):
            return (self.data_dir / "store").resolve()
        if url.startswith("file://"):
            return Path(url.removeprefix("file://")).resolve()
        raise ConfigError(
            f"unsupported INGESTD_STORAGE_URL {url!r} (file:///path or s3://bucket?endpoint=...)"
        )

    @property
    def resolved_replica_url(self) -> str:
        return self.replica_url or f"http://{self.host}:{self.port}"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def ingest_root_list(self) -> list[Path]:
        return [Path(r.strip()) for r in self.ingest_roots.split(",") if r.strip()]

    @property
    def publish_dir_list(self) -> list[Path]:
        return [Path(r.strip()) for r in self.publish_dirs.split(",") if r.strip()]

    @property
    def queue_list(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]
