"""``alembic upgrade head`` produces exactly the model, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ingestd.db.engine import make_engine
from ingestd.db.models import Base


def test_head_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        indexes = {i["name"] for i in inspect(conn).get_indexes("work_orders")}
    assert "uq_work_orders_active_step" in indexes
    engine.dispose()
