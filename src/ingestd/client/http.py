"""``IngestdClient``: typed async calls to the ingestd HTTP API.

Every failure leaves this module as a ``ClientError``: the server's ``{"error": ...}``
body when there is one, ``network_error`` when the server could not be reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from ingestd.client.blocks import content_digest
from ingestd.client.errors import BAD_RESPONSE, NETWORK_ERROR, ClientError

JSONObject = dict[str, Any]

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# complete re-reads the whole assembled file on the server: minutes for very large files
COMPLETE_TIMEOUT = httpx.Timeout(3600.0, connect=10.0)


@dataclass(frozen=True)
class UploadSession:
    """The answer to ``POST /v1/uploads``."""

    upload_id: str
    asset_id: str
    block_size: int
    block_count: int
    missing: tuple[int, ...]
    expires_at: str | None

    @classmethod
    def from_json(cls, body: JSONObject) -> UploadSession:
        return cls(
            upload_id=str(body["upload_id"]),
            asset_id=str(body["asset_id"]),
            block_size=int(body["block_size"]),
            block_count=int(body["block_count"]),
            missing=tuple(int(i) for i in body["missing"]),
            expires_at=body.get("expires_at"),
        )


@dataclass(frozen=True)
class UploadStatus:
    """The answer to ``GET /v1/uploads/{id}``."""

    upload_id: str
    asset_id: str
    status: str
    size: int
    bytes_received: int
    block_size: int
    block_count: int
    present: tuple[int, ...]
    missing: tuple[int, ...]
    expires_at: str | None

    @classmethod
    def from_json(cls, body: JSONObject) -> UploadStatus:
        return cls(
            upload_id=str(body["upload_id"]),
            asset_id=str(body["asset_id"]),
            status=str(body["status"]),
            size=int(body["size"]),
            bytes_received=int(body["bytes_received"]),
            block_size=int(body["block_size"]),
            block_count=int(body["block_count"]),
            present=tuple(int(i) for i in body["present"]),
            missing=tuple(int(i) for i in body["missing"]),
            expires_at=body.get("expires_at"),
        )


@dataclass(frozen=True)
class BlockReceipt:
    """The answer to ``PUT /v1/uploads/{id}/blocks/{n}``."""

    index: int
    size: int
    sha256: str


class IngestdClient:
    """One connection pool to one ingestd server, authenticated with one API key.

    Use as ``async with IngestdClient(...) as client``. ``max_connections`` bounds the pool,
    and so the number of block uploads that can be in flight at once.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_connections: int = 4,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
            limits=limits,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # uploads

    async def create_upload(
        self,
        *,
        filename: str,
        size: int,
        block_size: int | None = None,
        blocks: list[str] | None = None,
        sha256: str | None = None,
        asset: JSONObject | None = None,
    ) -> UploadSession:
        body: JSONObject = {"filename": filename, "size": size}
        optional = {"block_size": block_size, "blocks": blocks, "sha256": sha256, "asset": asset}
        body.update({name: value for name, value in optional.items() if value is not None})
        return UploadSession.from_json(await self._json("POST", "/v1/uploads", json=body))

    async def put_block(
        self, upload_id: str, index: int, data: bytes, sha256_hex: str
    ) -> BlockReceipt:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Digest": content_digest(sha256_hex),
        }
        body = await self._json(
            "PUT", f"/v1/uploads/{upload_id}/blocks/{index}", content=data, headers=headers
        )
        return BlockReceipt(
            index=int(body["index"]), size=int(body["size"]), sha256=str(body["sha256"])
        )

    async def get_upload(self, upload_id: str) -> UploadStatus:
        return UploadStatus.from_json(await self._json("GET", f"/v1/uploads/{upload_id}"))

    async def complete_upload(self, upload_id: str) -> JSONObject:
        return await self._json(
            "POST", f"/v1/uploads/{upload_id}/complete", timeout=COMPLETE_TIMEOUT
        )

    async def cancel_upload(self, upload_id: str) -> None:
        await self._request("DELETE", f"/v1/uploads/{upload_id}")

    # assets

    async def list_assets(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> JSONObject:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return await self._json("GET", "/v1/assets", params=params)

    async def get_asset(self, asset_id: str) -> JSONObject:
        return await self._json("GET", f"/v1/assets/{asset_id}")

    async def asset_events(self, asset_id: str) -> list[JSONObject]:
        body = await self._json("GET", f"/v1/assets/{asset_id}/events")
        items = body.get("items", [])
        if not isinstance(items, list):
            raise ClientError(BAD_RESPONSE, "the events answer has no list of items")
        return items

    # transport

    async def _json(self, method: str, url: str, **kwargs: Any) -> JSONObject:
        response = await self._request(method, url, **kwargs)
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ClientError(
                BAD_RESPONSE, f"{method} {url}: the answer is not JSON", response.status_code
            ) from exc
        if not isinstance(body, dict):
            raise ClientError(
                BAD_RESPONSE,
                f"{method} {url}: the answer is not a JSON object",
                response.status_code,
            )
        return body

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(
                NETWORK_ERROR, f"cannot reach {self.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.is_error:
            raise _error_from_response(method, url, response)
        return response


def _error_from_response(method: str, url: str, response: httpx.Response) -> ClientError:
    try:
        error = response.json().get("error")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and "code" in error:
        details = error.get("details")
        return ClientError(
            code=str(error["code"]),
            message=str(error.get("message") or error["code"]),
            status=response.status_code,
            details=details if isinstance(details, dict) else None,
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return ClientError(
        code=f"http_{response.status_code}",
        message=f"{method} {url} failed with HTTP {response.status_code}: {text}",
        status=response.status_code,
    )
