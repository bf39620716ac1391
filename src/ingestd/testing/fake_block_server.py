"""An in-memory fake of ingestd's block upload and asset API, for ``httpx.MockTransport``.

It enforces the real rules (API key, owner scoping, block count and sizes, the SHA-256 of
each block against its ``Content-Digest`` and the declared block list, completeness and
the whole-file SHA-256 on complete) and counts what it receives. Dedup is per owner.
Processing is simulated: after complete, each ``GET /v1/assets/{id}`` advances the asset
one step through ``processing_polls`` polls to ``outcome``.

    server = FakeBlockServer()
    client = IngestdClient("http://fake", FakeBlockServer.API_KEY, transport=server.transport())
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ingestd.errors import InvalidRequest
from ingestd.uploads.blocks import parse_content_digest

Handler = Callable[[httpx.Request], httpx.Response | None]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK_PATH = re.compile(r"^/v1/uploads/([^/]+)/blocks/([^/]+)$")
_UPLOAD_PATH = re.compile(r"^/v1/uploads/([^/]+)(/complete)?$")
_ASSET_PATH = re.compile(r"^/v1/assets/([^/]+)(/events)?$")


class _Reject(Exception):
    """Ends handling of a request with an ingestd error response."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


@dataclass
class FakeUpload:
    upload_id: str
    owner: str
    asset_id: str
    size: int
    block_size: int
    blocks: list[str] | None
    sha256: str | None
    expires_at: float
    status: str = "uploading"
    received: dict[int, str] = field(default_factory=dict)

    @property
    def block_count(self) -> int:
        return math.ceil(self.size / self.block_size)

    def block_length(self, index: int) -> int:
        return min(self.block_size, self.size - index * self.block_size)

    def missing(self) -> list[int]:
        return [i for i in range(self.block_count) if i not in self.received]


@dataclass
class FakeAsset:
    asset_id: str
    owner: str
    title: str
    description: str
    created_at: str
    status: str = "created"
    polls_left: int = 0
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


class FakeBlockServer:
    API_KEY = "fake-key"

    def __init__(
        self,
        *,
        api_keys: dict[str, str] | None = None,
        default_block_size: int = 8 * 1024 * 1024,
        min_block_size: int = 64 * 1024,
        max_block_size: int = 64 * 1024 * 1024,
        processing_polls: int = 2,
        outcome: str = "ready",
        failure_error: str = "the source could not be decoded",
        ttl_s: float = 86400.0,
        latency_s: float = 0.0,
    ) -> None:
        self.api_keys = api_keys if api_keys is not None else {self.API_KEY: "owner-1"}
        self.default_block_size = default_block_size
        self.min_block_size = min_block_size
        self.max_block_size = max_block_size
        self.processing_polls = processing_polls
        self.outcome = outcome
        self.failure_error = failure_error
        self.ttl_s = ttl_s
        self.latency_s = latency_s
        #: Called before routing; may return a response (fault injection) or raise.
        self.intercept: Handler | None = None
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, FakeUpload] = {}
        self.assets: dict[str, FakeAsset] = {}
        self.block_puts: list[int] = []  # indices of accepted block PUTs, in order
        self.bytes_received = 0
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        """A transport for sync or async clients; async handling sleeps ``latency_s``."""
        return httpx.MockTransport(self.handle_async)

    # test controls

    def expire(self, upload_id: str) -> None:
        self.uploads[upload_id].status = "expired"

    def forget(self, upload_id: str) -> None:
        del self.uploads[upload_id]

    # handling

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            return self.handle(request)
        finally:
            self.in_flight -= 1

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
            if self.intercept is not None:
                injected = self.intercept(request)
                if injected is not None:
                    return injected
            try:
                owner = self._owner(request)
                return self._route(request, owner)
            except _Reject as reject:
                body: dict[str, Any] = {"code": reject.code, "message": reject.message}
                if reject.details:
                    body["details"] = reject.details
                return httpx.Response(reject.status, json={"error": body})

    def _owner(self, request: httpx.Request) -> str:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        owner = self.api_keys.get(key) if scheme.lower() == "bearer" else None
        if owner is None:
            raise _Reject(401, "unauthorized", "A valid API key is required.")
        return owner

    def _route(self, request: httpx.Request, owner: str) -> httpx.Response:
        method, path = request.method, request.url.path
        if path == "/v1/uploads" and method == "POST":
            return self._create(request, owner)
        if (match := _BLOCK_PATH.match(path)) and method == "PUT":
            return self._put_block(request, self._upload(match[1], owner), match[2])
        if match := _UPLOAD_PATH.match(path):
            upload = self._upload(match[1], owner)
            if match[2] and method == "POST":
                return self._complete(upload)
            if not match[2] and method == "GET":
                return httpx.Response(200, json=self._upload_json(upload))
            if not match[2] and method == "DELETE":
                upload.status = "cancelled"
                return httpx.Response(204)
        if path == "/v1/assets" and method == "GET":
            return self._list_assets(request, owner)
        if (match := _ASSET_PATH.match(path)) and method == "GET":
            asset = self.assets.get(match[1])
            if asset is None or asset.owner != owner:
                raise _Reject(404, "not_found", "The resource does not exist.")
            if match[2]:
                return httpx.Response(200, json={"items": asset.events})
            self._advance(asset)
            return httpx.Response(200, json=self._asset_json(asset))
        raise _Reject(404, "not_found", f"No route for {method} {path}.")

    def _create(self, request: httpx.Request, owner: str) -> httpx.Response:
        try:
            body = json.loads(request.content)
        except ValueError as exc:
            raise _Reject(400, "invalid_request", "The body is not JSON.") from exc
        size, filename = body.get("size"), body.get("filename")
        if not isinstance(filename, str) or not filename:
            raise _Reject(400, "invalid_request", "filename is required.")
        if not isinstance(size, int) or size <= 0:
            raise _Reject(400, "invalid_request", "size must be a positive integer.")
        block_size = body.get("block_size") or self.default_block_size
        low, high = self.min_block_size, self.max_block_size
        if not isinstance(block_size, int) or not low <= block_size <= high:
            raise _Reject(400, "invalid_request", f"block_size must be {low}..{high} bytes.")
        count = math.ceil(size / block_size)
        blocks = body.get("blocks")
        if blocks is not None and (
            not isinstance(blocks, list)
            or len(blocks) != count
            or not all(isinstance(b, str) and _HEX64.match(b) for b in blocks)
        ):
            raise _Reject(400, "invalid_request", f"blocks must list {count} SHA-256 hex digests.")
        sha256 = body.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and _HEX64.match(sha256)):
            raise _Reject(400, "invalid_request", "sha256 must be a SHA-256 hex digest.")
        meta = body.get("asset") or {}
        asset = FakeAsset(
            asset_id=f"ast_{uuid.uuid4().hex[:12]}",
            owner=owner,
            title=str(meta.get("title") or filename),
            description=str(meta.get("description") or ""),
            created_at=_now_iso(),
        )
        self.assets[asset.asset_id] = asset
        upload = FakeUpload(
            upload_id=f"upl_{uuid.uuid4().hex[:12]}",
            owner=owner,
            asset_id=asset.asset_id,
            size=size,
            block_size=block_size,
            blocks=blocks,
            sha256=sha256,
            expires_at=time.time() + self.ttl_s,
        )
        for index, digest in enumerate(blocks or []):
            if (owner, digest) in self.blobs:  # dedup, scoped to the owner
                upload.received[index] = digest
        self.uploads[upload.upload_id] = upload
        self._event(asset, "upload.created", upload_id=upload.upload_id)
        answer = {
            "upload_id": upload.upload_id,
            "asset_id": asset.asset_id,
            "block_size": block_size,
            "block_count": count,
            "missing": upload.missing(),
            "expires_at": _iso(upload.expires_at),
        }
        return httpx.Response(201, json=answer)

    def _upload(self, upload_id: str, owner: str) -> FakeUpload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.owner != owner:
            raise _Reject(404, "not_found", "The upload does not exist.")
        return upload

    def _writable(self, upload: FakeUpload) -> None:
        if upload.status == "expired" or time.time() > upload.expires_at:
            upload.status = "expired"
            raise _Reject(410, "gone", "The upload has expired.")
        if upload.status != "uploading":
            raise _Reject(409, "invalid_state", f"The upload is {upload.status}.")

    def _put_block(self, request: httpx.Request, upload: FakeUpload, raw: str) -> httpx.Response:
        self._writable(upload)
        if not raw.isdigit() or int(raw) >= upload.block_count:
            raise _Reject(400, "invalid_block", "The block index is out of range.")
        index, data = int(raw), request.content
        expected = upload.block_length(index)
        if len(data) > expected:
            raise _Reject(413, "too_large", f"Block {index} must be {expected} bytes.")
        if len(data) != expected:
            raise _Reject(400, "invalid_block", f"Block {index} must be {expected} bytes.")
        try:
            claimed = parse_content_digest(request.headers.get("Content-Digest", ""))
        except InvalidRequest as exc:
            raise _Reject(400, "invalid_request", exc.message) from exc
        digest = hashlib.sha256(data).hexdigest()
        if claimed != digest:
            raise _Reject(422, "checksum_mismatch", "The block does not match its digest.")
        if upload.blocks is not None and upload.blocks[index] != digest:
            raise _Reject(422, "checksum_mismatch", "The block differs from the declared list.")
        self.blobs[(upload.owner, digest)] = data
        upload.received[index] = digest
        self.block_puts.append(index)
        self.bytes_received += len(data)
        return httpx.Response(200, json={"index": index, "size": len(data), "sha256": digest})

    def _complete(self, upload: FakeUpload) -> httpx.Response:
        if upload.status in ("uploaded", "validating", "ingested"):
            answer = {"upload_id": upload.upload_id, "asset_id": upload.asset_id}
            return httpx.Response(202, json={**answer, "status": upload.status})
        self._writable(upload)
        missing = upload.missing()
        if missing:
            raise _Reject(409, "upload_incomplete", "Some blocks are missing.", missing=missing)
        whole = hashlib.sha256()
        received = 0
        for index in range(upload.block_count):
            blob = self.blobs[(upload.owner, upload.received[index])]
            whole.update(blob)
            received += len(blob)
        if received != upload.size:
            raise _Reject(409, "size_mismatch", "The received size differs from the declared.")
        if upload.sha256 is not None and whole.hexdigest() != upload.sha256:
            raise _Reject(422, "checksum_mismatch", "The file does not match its sha256.")
        upload.status = "uploaded"
        asset = self.assets[upload.asset_id]
        asset.status, asset.polls_left = "ingesting", self.processing_polls
        self._event(asset, "upload.completed", upload_id=upload.upload_id)
        answer = {"upload_id": upload.upload_id, "asset_id": asset.asset_id, "status": "uploaded"}
        return httpx.Response(202, json=answer)

    def _advance(self, asset: FakeAsset) -> None:
        if asset.status not in ("ingesting", "processing"):
            return
        if asset.polls_left > 0:
            asset.polls_left -= 1
            asset.status = "processing"
            return
        asset.status = self.outcome
        if self.outcome == "failed":
            asset.error = self.failure_error
        self._event(asset, f"asset.{asset.status}")

    def _list_assets(self, request: httpx.Request, owner: str) -> httpx.Response:
        limit = int(request.url.params.get("limit", "50"))
        start = int(request.url.params.get("cursor", "0"))
        mine = [a for a in self.assets.values() if a.owner == owner]
        page = mine[start : start + limit]
        more = start + limit < len(mine)
        items = [self._asset_json(a) for a in page]
        return httpx.Response(
            200, json={"items": items, "next_cursor": str(start + limit) if more else None}
        )

    def _asset_json(self, asset: FakeAsset) -> dict[str, Any]:
        total = self.processing_polls + 1
        done = {"created": 0, "ingesting": 0, "ready": total}.get(
            asset.status, total - asset.polls_left - 1
        )
        percent = 100.0 * done / total
        state = {"ready": "done", "failed": "failed"}.get(asset.status, "running")
        step = {
            "step": "encode",
            "state": state if asset.status != "created" else "pending",
            "percent": percent,
            "eta_s": None if asset.status in ("ready", "failed") else float(total - done),
            "attempts": 1,
            "error": asset.error,
        }
        ready = asset.status == "ready"
        rendition = {
            "name": "720p",
            "kind": "hls",
            "url": f"http://fake/r/{asset.asset_id}/720p.m3u8",
            "size": 1234,
            "codec": "h264",
            "bitrate": 2_500_000,
        }
        return {
            "id": asset.asset_id,
            "kind": "video",
            "title": asset.title,
            "description": asset.description,
            "status": asset.status,
            "error": asset.error,
            "created_at": asset.created_at,
            "updated_at": _now_iso(),
            "progress": {"percent": percent, "eta_s": step["eta_s"], "steps": [step]},
            "metadata": {},
            "loudness": {"integrated_lufs": -14.2, "true_peak_dbtp": -1.1} if ready else None,
            "renditions": [rendition] if ready else [],
        }

    def _upload_json(self, upload: FakeUpload) -> dict[str, Any]:
        if upload.status == "uploading" and time.time() > upload.expires_at:
            upload.status = "expired"
        present = sorted(upload.received)
        return {
            "upload_id": upload.upload_id,
            "asset_id": upload.asset_id,
            "status": upload.status,
            "size": upload.size,
            "bytes_received": sum(upload.block_length(i) for i in present),
            "block_size": upload.block_size,
            "block_count": upload.block_count,
            "present": present,
            "missing": upload.missing(),
            "expires_at": _iso(upload.expires_at),
        }

    def _event(self, asset: FakeAsset, kind: str, **data: Any) -> None:
        event_id = len(asset.events) + 1
        asset.events.append({"id": event_id, "type": kind, "created_at": _now_iso(), "data": data})


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _now_iso() -> str:
    return _iso(time.time())
