"""Alembic environment: migrations run against the URL ingestd passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from ingestd.db.engine import make_engine
from ingestd.db.models import Base

_LOCK_KEY = 7230611  # the advisory lock that serialises migrations
config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            # replicas starting at once: one migrates, the others wait, then find nothing to do
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                connection.commit()
    engine.dispose()


run_migrations()
