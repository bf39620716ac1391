"""Deduplication: blocks an owner already stores are not sent again.

Always scoped to one owner: a hit across owners would tell one owner what another has.
A known block lives inside a stored master (key and offset), so a deduplicated upload is
assembled by copying ranges inside the store.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.db.models import Block, UploadPart
from ingestd.uploads.blocks import block_span


def plan_dedup(
    session: Session,
    owner_id: str,
    upload_id: str,
    hashes: list[str],
    size: int,
    block_size: int,
) -> None:
    """Record as present (origin ``dedup``) every declared block this owner already stores."""
    known = dict(
        session.execute(
            select(Block.sha256, Block.size).where(
                Block.owner_id == owner_id, Block.sha256.in_(set(hashes))
            )
        ).all()
    )
    for index, digest in enumerate(hashes):
        _, length = block_span(index, size, block_size)
        if known.get(digest) == length:
            session.add(
                UploadPart(
                    session_id=upload_id, index=index, size=length, sha256=digest, origin="dedup"
                )
            )


def locate_block(
    owner_id: str, sha256: str, size: int
) -> Callable[[Session], tuple[str, int] | None]:
    """Where one of the owner's stored copies of a block is: (object key, offset)."""

    def find(session: Session) -> tuple[str, int] | None:
        row = session.execute(
            select(Block.object_key, Block.offset)
            .where(Block.owner_id == owner_id, Block.sha256 == sha256, Block.size == size)
            .limit(1)
        ).first()
        return None if row is None else (row[0], row[1])

    return find
