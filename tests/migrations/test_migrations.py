"""``alembic upgrade head`` produces exactly the model, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ingestd.db.engine import make_engine
from ingestd.db.migrate import upgrade
from ingestd.db.models import Base


def test_head_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        indexes = {i["name"] for i in inspect(conn).get_indexes("work_orders")}
    assert "uq_work_orders_active_step" in indexes
    engine.dispose()


def _schema(url: str) -> dict[str, object]:
    """Tables, columns (name, nullability), primary keys, unique constraints and indexes."""
    engine = make_engine(url)
    with engine.connect() as conn:
        insp = inspect(conn)
        schema: dict[str, object] = {}
        for table in sorted(insp.get_table_names()):
            schema[table] = {
                "columns": sorted((c["name"], c["nullable"]) for c in insp.get_columns(table)),
                "pk": sorted(insp.get_pk_constraint(table)["constrained_columns"]),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in insp.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(table)
                    # PostgreSQL lists each unique constraint's index too
                    if not i.get("duplicates_constraint")
                ),
                "foreign_keys": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"])
                    for f in insp.get_foreign_keys(table)
                ),
            }
    engine.dispose()
    return schema


@pytest.mark.postgres
def test_sqlite_and_postgresql_get_the_same_schema(tmp_path: Path, pg_url: str) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'ingestd.db'}"
    upgrade(sqlite_url)
    sqlite, postgres = _schema(sqlite_url), _schema(pg_url)
    assert sqlite.keys() == postgres.keys()
    for table in sqlite:
        assert sqlite[table] == postgres[table], table
