"""Statuses of assets, sources, uploads, work orders and ingest orders, with their allowed
transitions.

Every status change in ingestd goes through :func:`check_transition`, so the table below is
the single place that says what may follow what.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from ingestd.errors import InvalidState


class AssetStatus(StrEnum):
    CREATED = "created"
    INGESTING = "ingesting"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    ABANDONED = "abandoned"


class SourceStatus(StrEnum):
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    VALIDATING = "validating"
    INGESTED = "ingested"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class UploadStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class OrderState(StrEnum):
    BLOCKED = "blocked"  # waiting for its inputs
    READY = "ready"  # may be claimed (possibly after run_after)
    RUNNING = "running"  # leased by a worker
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # content unchanged: the previous result stands
    FAILED = "failed"
    CANCELLED = "cancelled"


class IngestOrderStatus(StrEnum):
    """An ingestion work order for a path on the server (not a step's :class:`OrderState`)."""

    QUEUED = "queued"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


ACTIVE_ORDER_STATES = frozenset({OrderState.BLOCKED, OrderState.READY, OrderState.RUNNING})
DONE_ORDER_STATES = frozenset({OrderState.SUCCEEDED, OrderState.SKIPPED})

_TRANSITIONS: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    AssetStatus: {
        AssetStatus.CREATED: frozenset(
            {AssetStatus.INGESTING, AssetStatus.FAILED, AssetStatus.ABANDONED}
        ),
        AssetStatus.INGESTING: frozenset({AssetStatus.PROCESSING, AssetStatus.FAILED}),
        AssetStatus.PROCESSING: frozenset({AssetStatus.READY, AssetStatus.FAILED}),
        # a finished asset is processed again (retry), or takes a new source (re-ingestion)
        AssetStatus.READY: frozenset({AssetStatus.PROCESSING, AssetStatus.INGESTING}),
        AssetStatus.FAILED: frozenset({AssetStatus.PROCESSING, AssetStatus.INGESTING}),
        AssetStatus.ABANDONED: frozenset(),
    },
    SourceStatus: {
        SourceStatus.UPLOADING: frozenset(
            {SourceStatus.UPLOADED, SourceStatus.CANCELLED, SourceStatus.EXPIRED}
        ),
        SourceStatus.UPLOADED: frozenset({SourceStatus.VALIDATING}),
        SourceStatus.VALIDATING: frozenset({SourceStatus.INGESTED, SourceStatus.REJECTED}),
        SourceStatus.INGESTED: frozenset(),
        SourceStatus.REJECTED: frozenset(),
        SourceStatus.CANCELLED: frozenset(),
        SourceStatus.EXPIRED: frozenset(),
    },
    UploadStatus: {
        UploadStatus.OPEN: frozenset(
            {UploadStatus.COMPLETED, UploadStatus.CANCELLED, UploadStatus.EXPIRED}
        ),
        # only a tus partial upload that no final upload took expires after completing
        UploadStatus.COMPLETED: frozenset({UploadStatus.EXPIRED}),
        UploadStatus.CANCELLED: frozenset(),
        UploadStatus.EXPIRED: frozenset(),
    },
    IngestOrderStatus: {
        IngestOrderStatus.QUEUED: frozenset({IngestOrderStatus.STARTED}),
        IngestOrderStatus.STARTED: frozenset(
            {
                IngestOrderStatus.COMPLETED,
                IngestOrderStatus.FAILED,
                # requested again while it ran, or its runner died before the file was in
                IngestOrderStatus.QUEUED,
            }
        ),
        # requested again: the path is ingested anew
        IngestOrderStatus.COMPLETED: frozenset({IngestOrderStatus.QUEUED}),
        IngestOrderStatus.FAILED: frozenset({IngestOrderStatus.QUEUED}),
    },
    OrderState: {
        OrderState.BLOCKED: frozenset({OrderState.READY, OrderState.SKIPPED, OrderState.CANCELLED}),
        OrderState.READY: frozenset({OrderState.RUNNING, OrderState.SKIPPED, OrderState.CANCELLED}),
        OrderState.RUNNING: frozenset(
            {
                OrderState.SUCCEEDED,
                OrderState.READY,  # retry after a failure or an expired lease
                OrderState.FAILED,
                OrderState.CANCELLED,
            }
        ),
        OrderState.SUCCEEDED: frozenset(),
        OrderState.SKIPPED: frozenset(),
        OrderState.FAILED: frozenset(),
        OrderState.CANCELLED: frozenset(),
    },
}

S = TypeVar("S", bound=StrEnum)


def can_transition(current: S, new: S) -> bool:
    return new in _TRANSITIONS[type(current)][current]


def check_transition(current: S, new: S) -> S:
    """Return ``new`` if ``current -> new`` is allowed, else raise :class:`InvalidState`."""
    if not can_transition(current, new):
        name = type(current).__name__
        raise InvalidState(
            f"{name} cannot go from {current.value!r} to {new.value!r}",
            current=current.value,
            requested=new.value,
        )
    return new
