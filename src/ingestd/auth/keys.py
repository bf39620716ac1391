"""API keys: shown once, stored as a SHA-256 hash, looked up by a public prefix.

Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching):
guessing is out of reach and lookups stay cheap on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from ingestd.db.engine import Database
from ingestd.db.models import ApiKey, Owner
from ingestd.db.types import new_id, utcnow
from ingestd.errors import NotFound, Unauthorized

KEY_PREFIX = "ik"


@dataclass(frozen=True)
class IssuedKey:
    key: str  # the only time the plaintext exists
    prefix: str
    owner_id: str
    owner_name: str


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    owner_name: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12:
        return None
    return parts[1]


class KeyService:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def create(self, owner_name: str, label: str | None = None) -> IssuedKey:
        prefix = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        with self.db.transaction() as session:
            owner = session.scalars(select(Owner).where(Owner.name == owner_name)).first()
            if owner is None:
                owner = Owner(id=new_id("own"), name=owner_name)
                session.add(owner)
                session.flush()
            session.add(
                ApiKey(
                    id=new_id("key"),
                    owner_id=owner.id,
                    prefix=prefix,
                    key_hash=_hash(key),
                    label=label,
                )
            )
            return IssuedKey(key=key, prefix=prefix, owner_id=owner.id, owner_name=owner.name)

    def authenticate(self, key: str) -> str:
        """The owner id of a valid, unrevoked key; raises :class:`Unauthorized`."""
        prefix = _split(key)
        if prefix is None:
            raise Unauthorized("malformed API key")
        with self.db.transaction() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
            if (
                row is None
                or row.revoked_at is not None
                or not hmac.compare_digest(row.key_hash, _hash(key))
            ):
                raise Unauthorized("invalid or revoked API key")
            return row.owner_id

    def list(self) -> list[KeyInfo]:
        with self.db.transaction() as session:
            rows = session.execute(
                select(ApiKey, Owner.name).join(Owner).order_by(ApiKey.created_at)
            )
            return [
                KeyInfo(k.prefix, name, k.label, k.created_at, k.revoked_at) for k, name in rows
            ]

    def revoke(self, prefix: str) -> None:
        with self.db.transaction() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
            if row is None:
                raise NotFound(f"no key with prefix {prefix}")
            row.revoked_at = row.revoked_at or self.clock()
