"""Owners by name, for commands that act for one (``ingest``, ``amqp-ingest``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from ingestd.db.models import Owner

if TYPE_CHECKING:
    from ingestd.bootstrap import Services


def owner_id(services: Services, name: str) -> str:
    """The owner's id; an owner exists once it has a key, so a new name gets one (the owner
    can then use the API too)."""
    with services.db.transaction() as session:
        found = session.scalars(select(Owner.id).where(Owner.name == name)).first()
    if found is not None:
        return found
    return services.keys.create(name, label="created for a command that ingests").owner_id
