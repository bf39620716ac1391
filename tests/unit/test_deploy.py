"""deploy/compose.yaml describes the distributed layout with settings ingestd knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ingestd.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_layout_has_every_part() -> None:
    services = compose()["services"]
    for backend in ("postgres", "rabbitmq", "redis", "s3"):
        assert backend in services
    assert services["api"]["deploy"]["replicas"] == 2
    workers = [s for s in services.values() if s.get("command", [None])[0] == "worker"]
    assert sum(w.get("deploy", {}).get("replicas", 1) for w in workers) >= 2
    queues = {w["command"][w["command"].index("--queues") + 1] for w in workers}
    assert queues == {"encode", "default"}  # heavy and light steps in their own pools
    assert services["scheduler"]["command"] == ["scheduler"]
    assert services["amqp-ingest"]["command"] == ["amqp-ingest"]


def test_every_ingestd_variable_is_a_setting() -> None:
    """A misspelt INGESTD_ variable would be ignored silently at run time."""
    known = {f"INGESTD_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("INGESTD_"):
                assert variable in known, f"{name}: {variable}"


def test_every_ingestd_role_uses_the_distributed_backends() -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        if service.get("image") != "ingestd:latest":
            continue
        assert env["INGESTD_DATABASE_URL"].startswith("postgresql://"), name
        assert env["INGESTD_BROKER_URL"].startswith("amqp://"), name
        assert env["INGESTD_REDIS_URL"].startswith("redis://"), name
        assert env["INGESTD_STORAGE_URL"].startswith("s3://"), name
        assert env["INGESTD_SECRET"], name  # signed URLs must verify on every replica
