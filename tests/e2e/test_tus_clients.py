"""Real tus clients against `ingestd serve`: tuspy (Python) and tus-js-client (Node.js).

Each test uploads a few seconds of generated audio through ``/files/`` the way an
integrator would, waits for the asset to become ready and compares the server's SHA-256 of
the master with the file's. Interrupted uploads are resumed by a *different* process, which
only knows what a client persists: the upload URL (or its own URL storage).

The tus-js-client tests need Node.js (skipped without ``node``) and
``npm ci --prefix tests/e2e/js`` (they fail, not skip, when ``node`` is there but the
packages are not installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader.uploader import Uploader

from ingestd.testing.media import make_tone
from tests.e2e.conftest import Served

JS_DIR = Path(__file__).parent / "js"
UPLOAD_MJS = JS_DIR / "upload.mjs"
TUS_JS_CLIENT_VERSION = "4.3.1"
TUS = {"Tus-Resumable": "1.0.0"}
KIB = 1024


# -- shared helpers -------------------------------------------------------------------------


@pytest.fixture
def tone(tmp_path: Path, ffmpeg: str) -> Path:
    """6 s of 16-bit 48 kHz stereo: 1.15 MB, several chunks at every chunk size used here."""
    return make_tone(ffmpeg, tmp_path / "tone take 1.wav", seconds=6)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def auth(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.key}"}


def head(served: Served, url: str) -> httpx.Response:
    resp = httpx.head(url, headers={**auth(served), **TUS})
    assert resp.status_code == 200, (resp.status_code, resp.headers)
    return resp


def wait_ready(served: Served, asset_id: str) -> dict[str, Any]:
    """Poll the asset until the pipeline is done; fail with its state if it is not ready."""
    asset: dict[str, Any] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        resp = httpx.get(f"{served.url}/v1/assets/{asset_id}", headers=auth(served))
        assert resp.status_code == 200, resp.text
        asset = resp.json()
        if asset["status"] in ("ready", "failed"):
            break
        time.sleep(0.1)
    assert asset.get("status") == "ready", (asset, served.log.read_text()[-3000:])
    return asset


def asset_ids(served: Served) -> list[str]:
    resp = httpx.get(f"{served.url}/v1/assets", headers=auth(served))
    return [a["id"] for a in resp.json()["items"]]


# -- tuspy ----------------------------------------------------------------------------------


def test_tuspy_uploads_a_wav_in_chunks_to_a_ready_asset(served: Served, tone: Path) -> None:
    client = TusClient(f"{served.url}/files/", headers=auth(served))
    # file_stream rather than file_path: tuspy 1.1.0 opens (and never closes) the file once
    # per request when given a path, which this suite's warnings-as-errors would flag.
    with open(tone, "rb") as stream:
        uploader = client.uploader(
            file_stream=stream,
            chunk_size=256 * KIB,
            metadata={"filename": tone.name, "title": "Take 1 (tuspy)"},
        )
        uploader.upload()
    size = tone.stat().st_size
    assert uploader.offset == size
    assert uploader.request is not None
    asset_id = uploader.request.response_headers["ingestd-asset-id"]

    asset = wait_ready(served, asset_id)
    assert asset["sha256"] == sha256(tone)
    assert asset["kind"] == "audio"
    assert asset["title"] == "Take 1 (tuspy)"
    [source] = asset["sources"]
    assert (source["filename"], source["size"], source["sha256"]) == (tone.name, size, sha256(tone))
    done = head(served, uploader.url)
    assert done.headers["Upload-Offset"] == done.headers["Upload-Length"] == str(size)
    assert done.headers["Ingestd-Asset-Id"] == asset_id
    assert asset_ids(served) == [asset_id]


# Runs in a separate Python process: the client's own state is only its URL storage file.
TUSPY_RUN = """
import json, sys
from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage

a = json.loads(sys.argv[1])
storage = FileStorage(a["storage"])
client = TusClient(a["endpoint"], headers={"Authorization": "Bearer " + a["key"]})
uploader = client.uploader(
    file_path=a["file"],
    chunk_size=a["chunk_size"],
    metadata=a["metadata"],
    store_url=True,
    url_storage=storage,
)
start = uploader.offset  # 0, or the server's offset (HEAD) for an upload found in storage
uploader.upload(stop_at=a["stop_at"])
print(json.dumps({
    "url": uploader.url,
    "start": start,
    "offset": uploader.offset,
    "asset_id": uploader.request.response_headers.get("ingestd-asset-id"),
}))
storage.close()
"""


def run_tuspy(served: Served, tone: Path, storage: Path, stop_at: int | None) -> dict[str, Any]:
    args = {
        "endpoint": f"{served.url}/files/",
        "key": served.key,
        "file": str(tone),
        "chunk_size": 128 * KIB,
        "metadata": {"filename": tone.name, "title": "Take 1 (resumed)"},
        "storage": str(storage),
        "stop_at": stop_at,
    }
    result = subprocess.run(
        [sys.executable, "-c", TUSPY_RUN, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + served.log.read_text()[-3000:]
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_tuspy_resumes_an_interrupted_upload_from_another_process(
    served: Served, tone: Path, tmp_path: Path
) -> None:
    size = tone.stat().st_size
    storage = tmp_path / "tuspy-urls.json"
    stop_at = size // 3 + 1  # not a chunk boundary: the last PATCH is a short one
    first = run_tuspy(served, tone, storage, stop_at)
    assert (first["start"], first["offset"]) == (0, stop_at)

    state = head(served, first["url"])
    assert state.headers["Upload-Offset"] == str(stop_at)
    assert state.headers["Upload-Length"] == str(size)
    asset_id = state.headers["Ingestd-Asset-Id"]
    assert asset_id == first["asset_id"]
    pending = httpx.get(f"{served.url}/v1/assets/{asset_id}", headers=auth(served)).json()
    assert pending["status"] not in ("ready", "failed"), pending

    second = run_tuspy(served, tone, storage, None)
    assert second["url"] == first["url"]  # found in tuspy's URL storage, not a new upload
    assert second["start"] == stop_at  # tuspy asked the server (HEAD) where to go on
    assert second["offset"] == size
    assert second["asset_id"] == asset_id

    asset = wait_ready(served, asset_id)
    assert asset["sha256"] == sha256(tone)
    assert asset["title"] == "Take 1 (resumed)"
    assert asset_ids(served) == [asset_id]


class OneBadChecksum(Uploader):
    """tuspy with Upload-Checksum (sha1), except that the second chunk's checksum is wrong
    the first time it is sent: as if the chunk had been damaged on the way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checksums = 0
        self.failures: list[tuple[int | None, int]] = []  # (status, offset when it failed)
        self.offsets_asked: list[int] = []  # HEAD answers, before each retry

    @property
    def checksum_algorithm(self) -> Any:
        return self._sha1

    def _sha1(self, chunk: bytes) -> Any:
        self.checksums += 1
        return hashlib.sha1(chunk + b"!" if self.checksums == 2 else chunk)

    def _retry_or_cry(self, error: TusCommunicationError) -> None:
        self.failures.append((error.status_code, self.offset))
        super()._retry_or_cry(error)  # type: ignore[no-untyped-call]

    def get_offset(self) -> int:
        offset: int = super().get_offset()
        self.offsets_asked.append(offset)
        return offset


def test_tuspy_upload_checksum_mismatch_is_refused_and_the_retry_lands(
    served: Served, tone: Path
) -> None:
    options = httpx.options(f"{served.url}/files/", headers=TUS)
    assert "checksum" in options.headers["Tus-Extension"].split(",")
    assert "sha1" in options.headers["Tus-Checksum-Algorithm"].split(",")

    client = TusClient(f"{served.url}/files/", headers=auth(served))
    chunk = 256 * KIB
    with open(tone, "rb") as stream:
        uploader = OneBadChecksum(
            file_stream=stream,
            client=client,
            chunk_size=chunk,
            metadata={"filename": tone.name},
            upload_checksum=True,  # tuspy 1.1.0: sha1 of every chunk in Upload-Checksum
            retries=1,
            retry_delay=0,
        )
        uploader.upload()
    size = tone.stat().st_size
    # the damaged chunk got 460; the server kept none of it (HEAD still said 1 chunk), and
    # the same chunk, sent again with its right checksum, was accepted
    assert uploader.checksum_algorithm_name == "sha1"
    assert uploader.failures == [(460, chunk)]
    assert uploader.offsets_asked == [chunk]
    assert uploader.offset == size
    assert uploader.checksums == -(-size // chunk) + 1  # every chunk once, one twice

    assert uploader.request is not None
    asset = wait_ready(served, uploader.request.response_headers["ingestd-asset-id"])
    assert asset["sha256"] == sha256(tone)


# -- tus-js-client --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed: the tus-js-client tests need Node.js 20")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"the tus-js-client tests need Node.js 20 or later, not {version.stdout}"
    installed = JS_DIR / "node_modules" / "tus-js-client" / "package.json"
    if not installed.is_file():
        pytest.fail(f"{installed.parent} is missing: run `npm ci --prefix tests/e2e/js` first")
    got = json.loads(installed.read_text())["version"]
    assert got == TUS_JS_CLIENT_VERSION, f"tus-js-client {got} installed; run npm ci again"
    return path


def run_js(node: str, *args: object, ok: bool = True) -> dict[str, Any]:
    """Run upload.mjs; its one line of JSON (see the script's header) comes back."""
    result = subprocess.run(
        [node, str(UPLOAD_MJS), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode == 0) is ok, (result.returncode, result.stdout, result.stderr)
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def js_args(served: Served, tone: Path, *extra: object) -> list[str]:
    return [
        "--endpoint",
        f"{served.url}/files/",
        "--file",
        str(tone),
        "--token",
        served.key,
        *map(str, extra),
    ]


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param([], id="plain"),
        pytest.param(["--with-creation"], id="creation-with-upload"),
        pytest.param(["--defer-length", "--buffer"], id="creation-defer-length"),
    ],
)
def test_tus_js_client_chunked_upload_to_a_ready_asset(
    served: Served, tone: Path, node: str, mode: list[str]
) -> None:
    chunk = 256 * KIB
    out = run_js(
        node,
        *js_args(served, tone, "--chunk-size", chunk, *mode),
        *("--metadata", f"filename={tone.name}", "--metadata", "filetype=audio/wav"),
        *("--metadata", "title=Take 1 (tus-js-client)"),
    )
    size = tone.stat().st_size
    assert out["status"] == "complete"
    assert out["bytes_accepted"] == out["bytes_patched"] == size
    patches = -(-size // chunk)
    if "--with-creation" in mode:  # the POST carried the first chunk
        assert out["requests"] == [["POST", 201]] + [["PATCH", 204]] * (patches - 1)
    else:
        assert out["requests"] == [["POST", 201]] + [["PATCH", 204]] * patches

    asset = wait_ready(served, out["asset_id"])
    assert asset["sha256"] == sha256(tone)
    assert asset["title"] == "Take 1 (tus-js-client)"
    [source] = asset["sources"]
    assert (source["filename"], source["size"]) == (tone.name, size)
    assert asset_ids(served) == [out["asset_id"]]


@pytest.mark.parametrize("resume_with", ["upload-url", "url-storage"])
def test_tus_js_client_resumes_an_interrupted_upload_from_another_process(
    served: Served, tone: Path, node: str, tmp_path: Path, resume_with: str
) -> None:
    size = tone.stat().st_size
    storage = tmp_path / "tus-js-urls.json"
    common = [*js_args(served, tone, "--chunk-size", 128 * KIB), "--url-storage", storage]
    first = run_js(node, *common, "--stop-after", size // 3, "--metadata", f"name={tone.name}")
    assert first["status"] == "stopped"
    accepted = first["bytes_accepted"]
    assert size // 3 <= accepted < size
    assert first["requests"][0] == ["POST", 201]

    state = head(served, first["url"])
    assert state.headers["Upload-Offset"] == str(accepted)  # exactly what the server confirmed
    assert state.headers["Upload-Length"] == str(size)
    assert state.headers["Ingestd-Asset-Id"] == first["asset_id"]

    if resume_with == "upload-url":  # the URL handed over, as an app would keep it
        second = run_js(node, *js_args(served, tone, "--upload-url", first["url"]))
        assert not second["resumed_from_storage"]
    else:  # tus-js-client finds the upload itself: findPreviousUploads on its URL storage
        second = run_js(node, *common)
        assert second["resumed_from_storage"]
        assert json.loads(storage.read_text()) == {}  # forgotten once complete
    assert second["status"] == "complete"
    assert second["url"] == first["url"]
    assert second["head_offsets"] == {first["url"]: accepted}
    assert second["requests"][0] == ["HEAD", 200]
    assert "POST" not in [method for method, _ in second["requests"]]
    assert second["bytes_patched"] == size - accepted  # nothing sent twice
    assert second["asset_id"] == first["asset_id"]

    asset = wait_ready(served, first["asset_id"])
    assert asset["sha256"] == sha256(tone)
    assert asset["sources"][0]["filename"] == tone.name  # from the `name` key
    assert asset_ids(served) == [first["asset_id"]]


def test_tus_js_client_parallel_upload_through_concatenation(
    served: Served, tone: Path, node: str
) -> None:
    out = run_js(
        node,
        *js_args(served, tone, "--parallel", 3, "--chunk-size", 128 * KIB),
        *("--metadata", f"filename={tone.name}", "--metadata", "title=Take 1 (parallel)"),
    )
    size = tone.stat().st_size
    assert out["status"] == "complete"
    parts = out["parallel_upload_urls"]
    assert len(set(parts)) == 3 and out["url"] not in parts
    assert out["bytes_patched"] == size
    methods = [method for method, _ in out["requests"]]
    assert methods.count("POST") == 4  # three partial uploads, then the final one
    assert out["requests"][-1] == ["POST", 201]

    asset = wait_ready(served, out["asset_id"])
    assert asset["sha256"] == sha256(tone)
    assert asset["title"] == "Take 1 (parallel)"
    assert asset["sources"][0]["size"] == size

    final = head(served, out["url"])
    assert final.headers["Upload-Concat"] == "final;" + " ".join(parts)
    assert final.headers["Upload-Offset"] == final.headers["Upload-Length"] == str(size)
    assert final.headers["Ingestd-Asset-Id"] == out["asset_id"]
    part = head(served, parts[0])
    assert part.headers["Upload-Concat"] == "partial"
    assert "Ingestd-Asset-Id" not in part.headers  # a partial upload has no asset
    assert asset_ids(served) == [out["asset_id"]]


def test_tus_js_client_resumes_an_interrupted_parallel_upload(
    served: Served, tone: Path, node: str, tmp_path: Path
) -> None:
    size = tone.stat().st_size
    storage = tmp_path / "tus-js-urls.json"
    common = [
        *js_args(served, tone, "--parallel", 3, "--chunk-size", 64 * KIB),
        *("--url-storage", storage, "--metadata", f"filename={tone.name}"),
    ]
    first = run_js(node, *common, "--stop-after", size // 3)
    assert first["status"] == "stopped"
    assert first["url"] is None and first["asset_id"] is None  # no final upload yet
    parts = first["parallel_upload_urls"]
    assert len(set(parts)) == 3
    held = {url: int(head(served, url).headers["Upload-Offset"]) for url in parts}
    # PATCHes that abort() cut off may have landed, whole or in part: the server holds at
    # least what it confirmed to the client
    assert first["bytes_patched"] <= sum(held.values()) < size

    second = run_js(node, *common)
    assert second["status"] == "complete"
    assert second["resumed_from_storage"]
    assert second["parallel_upload_urls"] == parts
    # each partial upload went on from the offset its HEAD gave (read after ours, so no
    # less), and nothing was sent twice
    resumed_at = second["head_offsets"]
    assert set(resumed_at) == set(parts)
    assert all(resumed_at[url] >= held[url] for url in parts)
    assert second["bytes_patched"] == size - sum(resumed_at.values())
    assert json.loads(storage.read_text()) == {}

    asset = wait_ready(served, second["asset_id"])
    assert asset["sha256"] == sha256(tone)
    assert asset_ids(served) == [second["asset_id"]]


@pytest.mark.parametrize("parallel", [1, 3])
def test_browser_style_upload_with_only_a_direct_upload_token(
    served: Served, tone: Path, node: str, parallel: int
) -> None:
    # the back end, holding the API key, asks for a token for one audio upload ...
    resp = httpx.post(
        f"{served.url}/v1/upload-tokens",
        headers=auth(served),
        json={"max_size": 4 << 20, "kinds": ["audio"], "expires_in_s": 600},
    )
    assert resp.status_code == 201, resp.text
    grant = resp.json()
    token, endpoint = grant["token"], grant["upload_url"]
    assert token.startswith("ut_") and endpoint == f"{served.url}/files/"

    # ... and the browser uploads with nothing but that token
    upload = [
        *("--endpoint", endpoint, "--file", tone, "--header", f"Authorization: Bearer {token}"),
        *("--chunk-size", 256 * KIB, "--parallel", parallel),
        *("--metadata", f"filename={tone.name}", "--metadata", "filetype=audio/wav"),
    ]
    out = run_js(node, *upload)
    assert out["status"] == "complete"
    asset = wait_ready(served, out["asset_id"])
    assert asset["sha256"] == sha256(tone)
    assert asset_ids(served) == [out["asset_id"]]

    # the token uploads, and only once; it reads nothing
    again = run_js(node, *upload, ok=False)
    assert again["status"] == "error" and ["POST", 403] in again["requests"]
    denied = httpx.get(
        f"{served.url}/v1/assets/{out['asset_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert denied.status_code == 401
    assert asset_ids(served) == [out["asset_id"]]


def test_tus_js_client_is_pinned_in_the_manifest_and_the_lockfile() -> None:
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/tus-js-client"]["version"] == TUS_JS_CLIENT_VERSION
    manifest = json.loads((JS_DIR / "package.json").read_text())
    assert manifest["dependencies"] == {"tus-js-client": TUS_JS_CLIENT_VERSION}
    assert os.access(UPLOAD_MJS, os.R_OK)
