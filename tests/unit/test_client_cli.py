from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ingestd.cli.client_commands import register
from ingestd.testing.fake_block_server import FakeBlockServer

BLOCK = 64 * 1024


@pytest.fixture
def server() -> FakeBlockServer:
    return FakeBlockServer()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "INGESTD_API_KEY": FakeBlockServer.API_KEY,
        "INGESTD_CLIENT_STATE_DIR": str(tmp_path / "state"),
        "INGESTD_SERVER": "http://fake",
        "INGESTD_DATA_DIR": str(tmp_path / "data"),
    }


def _app(server: FakeBlockServer) -> typer.Typer:
    app = typer.Typer()
    register(app, transport=server.transport(), poll_interval=0.0)
    return app


def _file(tmp_path: Path, name: str, size: int, seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _invoke(server: FakeBlockServer, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(server), list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_upload_json_prints_the_final_asset(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    path = _file(tmp_path, "song.wav", 3 * BLOCK + 5)
    code, out, _ = _invoke(
        server, env, "upload", str(path), "--json", "--block-size", str(BLOCK), "--title", "Song"
    )
    assert code == 0
    asset = json.loads(out)  # stdout is only the JSON: no bars
    assert asset["status"] == "ready" and asset["title"] == "Song"
    assert asset["renditions"][0]["url"].startswith("http://fake/")
    assert sorted(server.block_puts) == [0, 1, 2, 3]


def test_upload_json_of_several_files_is_a_list(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    a = _file(tmp_path, "a.wav", BLOCK + 1, seed=1)
    b = _file(tmp_path, "b.wav", 2 * BLOCK, seed=2)
    code, out, _ = _invoke(
        server, env, "upload", str(a), str(b), "--json", "--block-size", str(BLOCK)
    )
    assert code == 0
    assets = json.loads(out)
    assert [x["title"] for x in assets] == ["a.wav", "b.wav"]
    assert {x["status"] for x in assets} == {"ready"}


def test_upload_no_wait_returns_before_processing(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    path = _file(tmp_path, "a.wav", BLOCK)
    code, out, _ = _invoke(server, env, "upload", str(path), "--json", "--no-wait")
    assert code == 0
    assert json.loads(out)["status"] in ("ingesting", "processing")


def test_failed_processing_exits_non_zero_with_the_error(
    tmp_path: Path, env: dict[str, str]
) -> None:
    server = FakeBlockServer(outcome="failed", failure_error="no audio stream")
    path = _file(tmp_path, "bad.wav", BLOCK)
    code, out, _ = _invoke(server, env, "upload", str(path), "--json")
    assert code == 1
    assert json.loads(out)["error"] == "no audio stream"
    code, _, err = _invoke(server, env, "upload", str(_file(tmp_path, "bad2.wav", 10, seed=3)))
    assert code == 1
    assert "no audio stream" in err


def test_upload_error_from_the_server_is_reported_per_file(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    path = _file(tmp_path, "a.wav", BLOCK)
    code, out, _ = _invoke(server, env, "upload", str(path), "--json", "--block-size", "1000")
    assert code == 1
    outcome = json.loads(out)
    assert outcome["file"] == str(path)
    assert outcome["error"]["code"] == "invalid_request"
    assert "block_size" in outcome["error"]["message"]


def test_upload_with_bars_prints_a_summary(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    path = _file(tmp_path, "take.wav", 2 * BLOCK)
    code, out, _ = _invoke(server, env, "upload", str(path), "--block-size", str(BLOCK))
    assert code == 0
    assert "take.wav" in out and "ready" in out


def test_missing_key_is_a_clear_error(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    del env["INGESTD_API_KEY"]
    path = _file(tmp_path, "a.wav", 10)
    code, _, err = _invoke(server, env, "upload", str(path))
    assert code == 1
    assert "no API key" in err and "local-key" in err
    assert server.requests == []


def test_key_is_read_from_the_data_dir(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    del env["INGESTD_API_KEY"]
    data = Path(env["INGESTD_DATA_DIR"])
    data.mkdir()
    (data / "local-key").write_text(FakeBlockServer.API_KEY + "\n")
    code, out, _ = _invoke(server, env, "assets", "--json")
    assert code == 0 and json.loads(out) == []


def test_wrong_key_surfaces_the_server_message(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    code, _, err = _invoke(server, env, "assets", "--key", "nope")
    assert code == 1
    assert "A valid API key is required" in err


def test_assets_and_status(tmp_path: Path, server: FakeBlockServer, env: dict[str, str]) -> None:
    path = _file(tmp_path, "a.wav", BLOCK)
    _, out, _ = _invoke(server, env, "upload", str(path), "--json", "--title", "Opening")
    asset_id = json.loads(out)["id"]

    code, out, _ = _invoke(server, env, "assets", "--json", "--limit", "10")
    assert code == 0 and [a["id"] for a in json.loads(out)] == [asset_id]
    code, out, _ = _invoke(server, env, "assets")
    assert code == 0 and asset_id in out and "Opening" in out

    code, out, _ = _invoke(server, env, "status", asset_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "ready"
    code, out, _ = _invoke(server, env, "status", asset_id)
    assert code == 0
    assert "integrated_lufs" in out and f"http://fake/r/{asset_id}/720p.m3u8" in out


def test_status_follow_waits_until_done(
    tmp_path: Path, server: FakeBlockServer, env: dict[str, str]
) -> None:
    path = _file(tmp_path, "a.wav", BLOCK)
    _, out, _ = _invoke(server, env, "upload", str(path), "--json", "--no-wait")
    asset_id = json.loads(out)["id"]
    code, out, _ = _invoke(server, env, "status", asset_id, "--follow", "--json")
    assert code == 0 and json.loads(out)["status"] == "ready"


def test_status_of_an_unknown_asset(server: FakeBlockServer, env: dict[str, str]) -> None:
    code, _, err = _invoke(server, env, "status", "ast_nope")
    assert code == 1 and "not_found" in err
