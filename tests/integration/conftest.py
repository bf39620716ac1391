"""Fixtures for the HTTP tier: the embedded service on a real uvicorn, and API keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingestd.bootstrap import Services, build
from ingestd.settings import Settings
from ingestd.testing.server import running_server
from ingestd.uploads.blocks import MIN_BLOCK_SIZE


def service_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    """Settings for a service under test: small blocks and limits, short polls and retries."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "block_size": MIN_BLOCK_SIZE,
        "max_upload_size": 64 << 20,
        "poll_s": 0.2,
        "heartbeat_s": 1.0,
        "retry_base_s": 0.1,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def services(tmp_path: Path, db_url: str) -> Iterator[Services]:
    svc = build(service_settings(tmp_path, db_url))
    yield svc
    svc.close()


@pytest.fixture
def server(services: Services) -> Iterator[str]:
    with running_server(services) as url:
        yield url


@pytest.fixture
def api(server: str, services: Services) -> Iterator[httpx.Client]:
    key = services.keys.create("alice").key
    with httpx.Client(
        base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def other_api(server: str, services: Services) -> Iterator[httpx.Client]:
    key = services.keys.create("mallory").key
    with httpx.Client(
        base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client
