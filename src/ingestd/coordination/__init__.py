"""Coordination of several api and worker replicas: shared upload locks, the live progress
board and the upload routing map, in Redis (:mod:`ingestd.coordination.redis`).

The Protocols and their single-process implementations live beside their users:
:mod:`ingestd.uploads.locks`, :mod:`ingestd.jobs.progress`, :mod:`ingestd.uploads.routing`.
"""

from __future__ import annotations

from ingestd.coordination.redis import (
    CoordinationError,
    RedisCoordination,
    RedisLocker,
    RedisProgress,
    RedisRouting,
    connect,
)

__all__ = [
    "CoordinationError",
    "RedisCoordination",
    "RedisLocker",
    "RedisProgress",
    "RedisRouting",
    "connect",
]
