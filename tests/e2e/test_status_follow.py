"""``ingestd status ASSET --follow`` over the live event stream of a running server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from ingestd.testing.media import make_tone
from tests.e2e.conftest import Served


def test_follow_ends_when_the_asset_is_ready_and_shows_its_steps(
    served: Served, ffmpeg: str, tmp_path: Path
) -> None:
    tone = make_tone(ffmpeg, tmp_path / "take.wav", seconds=3)
    uploaded = served.cli("upload", str(tone), "--no-wait", "--json", timeout=120)
    assert uploaded.returncode == 0, uploaded.stderr
    asset_id = json.loads(uploaded.stdout)["id"]

    followed = served.cli("status", asset_id, "--follow", timeout=180)
    assert followed.returncode == 0, followed.stderr
    assert asset_id in followed.stdout and "ready" in followed.stdout

    asset = httpx.get(
        f"{served.url}/v1/assets/{asset_id}",
        headers={"Authorization": f"Bearer {served.key}"},
    ).json()
    steps = [s["step"] for s in asset["progress"]["steps"]]
    assert steps and all(step in followed.stdout for step in steps)

    again = served.cli("status", asset_id, "--follow", "--json", timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "ready"


def test_follow_of_an_unknown_asset_fails_cleanly(served: Served) -> None:
    result = served.cli("status", "ast_nope", "--follow", timeout=60)
    assert result.returncode == 1 and "not_found" in result.stderr
