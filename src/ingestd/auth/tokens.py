"""Direct-upload tokens: what a back end hands a browser so it can upload one file.

A token is created with an API key (``POST /v1/upload-tokens``), lives minutes, and lets
its bearer create exactly one tus upload for the key's owner (plus the partial uploads a
parallel client assembles it from), no larger than ``max_size`` and of the allowed kinds.
It reads and writes only the uploads it created, and nothing under ``/v1``. Stored as a
SHA-256 hash, like API keys.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ingestd.db.engine import Database
from ingestd.db.models import UploadSession, UploadToken
from ingestd.db.types import new_id, utcnow
from ingestd.errors import Forbidden, InvalidRequest, TooLarge, Unauthorized
from ingestd.uploads.service import CreateHook

TOKEN_PREFIX = "ut_"  # noqa: S105 (a marker, not a secret)
KINDS = ("audio", "video", "image", "fits")
MAX_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class IssuedToken:
    token: str  # the only time the plaintext exists
    token_id: str
    expires_at: datetime
    max_size: int
    kinds: list[str] | None


@dataclass(frozen=True)
class Grant:
    """What a presented token allows, as of the request."""

    token_id: str
    owner_id: str
    max_size: int
    kinds: list[str] | None
    upload_id: str | None
    parts: tuple[str, ...]

    def may_access(self, upload_id: str) -> bool:
        return upload_id == self.upload_id or upload_id in self.parts

    def check_kind(self, kind: str | None) -> None:
        if self.kinds is not None and kind is not None and kind not in self.kinds:
            raise Forbidden(
                f"this upload token allows {', '.join(self.kinds)} files, not {kind}",
                allowed=self.kinds,
            )


def is_upload_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UploadTokens:
    def __init__(
        self, db: Database, *, max_upload_size: int, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.max_upload_size = max_upload_size
        self.clock = clock

    async def issue(
        self,
        owner_id: str,
        *,
        max_size: int | None,
        kinds: Sequence[str] | None,
        ttl: timedelta,
        label: str | None = None,
    ) -> IssuedToken:
        if ttl <= timedelta(0) or ttl > MAX_TTL:
            raise InvalidRequest(
                f"expires_in_s must be between 1 and {int(MAX_TTL.total_seconds())}"
            )
        size = max_size if max_size is not None else self.max_upload_size
        if size <= 0 or size > self.max_upload_size:
            raise InvalidRequest(
                f"max_size must be between 1 and the server's maximum of {self.max_upload_size}",
                max_upload_size=self.max_upload_size,
            )
        allowed = sorted(set(kinds)) if kinds is not None else None
        unknown = [k for k in allowed or () if k not in KINDS]
        if unknown or allowed == []:
            raise InvalidRequest(
                f"kinds must be a non-empty list of {', '.join(KINDS)}", unknown=unknown
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = UploadToken(
            id=new_id("ut"),
            owner_id=owner_id,
            token_hash=_hash(token),
            max_size=size,
            kinds=allowed,
            label=label,
            parts=[],
            expires_at=self.clock() + ttl,
        )

        def add(session: Session) -> None:
            session.add(row)

        await self.db.run(add)
        return IssuedToken(token, row.id, row.expires_at, size, allowed)

    async def authenticate(self, token: str) -> Grant:
        def look(session: Session) -> Grant:
            row = session.scalars(
                select(UploadToken).where(UploadToken.token_hash == _hash(token))
            ).first()
            if row is None or row.expires_at <= self.clock():
                raise Unauthorized("invalid or expired upload token")
            return Grant(
                token_id=row.id,
                owner_id=row.owner_id,
                max_size=row.max_size,
                kinds=row.kinds,
                upload_id=row.upload_id,
                parts=tuple(row.parts),
            )

        return await self.db.run(look)

    async def purge_expired(self, grace: timedelta = timedelta(days=1)) -> int:
        """Delete tokens that expired more than ``grace`` ago; their uploads stay."""
        cutoff = self.clock() - grace

        def purge(session: Session) -> int:
            result = session.execute(delete(UploadToken).where(UploadToken.expires_at <= cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

        return await self.db.run(purge)

    def claim(self, grant: Grant, *, partial: bool, size: int | None) -> CreateHook:
        """A hook for the creating transaction: the token's one upload, or one more part."""

        def hook(session: Session, upload_id: str) -> None:
            row = session.get(UploadToken, grant.token_id, with_for_update=True)
            if row is None or row.expires_at <= self.clock():
                raise Unauthorized("invalid or expired upload token")
            if row.upload_id is not None:
                raise Forbidden("this upload token has already created its upload")
            if partial:
                used = session.scalar(
                    select(func.coalesce(func.sum(UploadSession.size), 0)).where(
                        UploadSession.id.in_(list(row.parts))
                    )
                )
                if int(used or 0) + (size or 0) > row.max_size:
                    raise TooLarge(
                        f"the partial uploads would exceed this token's {row.max_size} bytes",
                        max_size=row.max_size,
                    )
                row.parts = [*row.parts, upload_id]
                return
            row.upload_id = upload_id
            row.used_at = self.clock()

        return hook
