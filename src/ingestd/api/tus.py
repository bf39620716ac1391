"""tus 1.0.0 at ``/files/``: core protocol plus creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination, concatenation and
concatenation-unfinished.

Errors keep ingestd's JSON body (``{"error": {"code", ...}}``) with tus's status codes:
409 offset mismatch, 412 unsupported version, 413 too large, 415 wrong content type,
423 locked, 460 checksum mismatch, 410 expired or terminated, 403 PATCH on a final upload.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingestd.api.deps import Svc, base_url, bearer, services
from ingestd.api.errors import error_body, status_for
from ingestd.api.uploads import known_profile
from ingestd.auth.tokens import Grant, is_upload_token
from ingestd.errors import (
    ChunkChecksumMismatch,
    InvalidRequest,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from ingestd.storage.base import IncompleteWrite
from ingestd.uploads.tus import TusUpload
from ingestd.uploads.tus_protocol import (
    CHECKSUMS,
    EXTENSIONS,
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    http_date,
    kind_of_mime,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_number,
    upload_id_from_url,
)

PREFIX = "/files"
EXPOSED_HEADERS = [
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Max-Size",
    "Tus-Extension",
    "Tus-Checksum-Algorithm",
    "Ingestd-Asset-Id",
    "Ingestd-Replica",
]
REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "Tus-Resumable",
    "X-HTTP-Method-Override",
    "X-Requested-With",
    "Content-Digest",
]

router = APIRouter(tags=["tus"])


class TusMiddleware:
    """What every request under ``/files`` shares, ahead of routing and error handling.

    ``X-HTTP-Method-Override`` on a POST becomes the method; a request without
    ``Tus-Resumable: 1.0.0`` (OPTIONS aside) gets 412 before anything else runs; every
    response carries ``Tus-Resumable``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        override = headers.get("x-http-method-override", "").strip().upper()
        if scope["method"] == "POST" and override in ("PATCH", "DELETE", "HEAD"):
            scope = {**scope, "method": override}

        async def send_tus(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"tus-resumable", b"1.0.0")],
                }
            await send(message)

        if scope["method"] != "OPTIONS" and headers.get("tus-resumable") != TUS_VERSION:
            response = JSONResponse(
                error_body(
                    "unsupported_version",
                    f"send Tus-Resumable: {TUS_VERSION}; no other version is supported",
                ),
                status_code=412,
                headers={"Tus-Version": TUS_VERSION},
            )
            await response(scope, receive, send_tus)
            return
        await self.app(scope, receive, send_tus)


@dataclass(frozen=True)
class Principal:
    owner_id: str
    grant: Grant | None  # set when a direct-upload token, not an API key, was presented

    def check_access(self, upload_id: str) -> None:
        if self.grant is not None and not self.grant.may_access(upload_id):
            raise NotFound(f"upload {upload_id} not found")


async def principal(request: Request) -> Principal:
    credential = bearer(request)
    svc = services(request)
    if is_upload_token(credential):
        grant = await svc.tokens.authenticate(credential)
        return Principal(grant.owner_id, grant)
    owner_id = await anyio.to_thread.run_sync(svc.keys.authenticate, credential)
    return Principal(owner_id, None)


Caller = Annotated[Principal, Depends(principal)]


def _location(request: Request, svc: Svc, upload_id: str) -> str:
    return f"{base_url(request, svc)}{PREFIX}/{upload_id}"


def _headers(request: Request, svc: Svc, up: TusUpload) -> dict[str, str]:
    """The state headers shared by HEAD, PATCH and POST responses."""
    headers: dict[str, str] = {}
    if up.offset is not None:
        headers["Upload-Offset"] = str(up.offset)
    if up.size is not None:
        headers["Upload-Length"] = str(up.size)
    elif not up.parts:
        headers["Upload-Defer-Length"] = "1"
    if up.expires_at is not None:
        headers["Upload-Expires"] = http_date(up.expires_at)
    if up.asset_id is not None:
        headers["Ingestd-Asset-Id"] = up.asset_id
    return headers


@router.options(PREFIX, include_in_schema=False)
@router.options(PREFIX + "/", summary="tus: server capabilities")
@router.options(PREFIX + "/{upload_id}", include_in_schema=False)
async def options(svc: Svc) -> Response:
    return Response(
        status_code=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Max-Size": str(svc.tus.max_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        },
    )


@router.post(PREFIX, include_in_schema=False)
@router.post(PREFIX + "/", status_code=201, summary="tus: create an upload")
async def create(request: Request, caller: Caller, svc: Svc) -> Response:
    h = request.headers
    metadata = parse_metadata(h.get("upload-metadata"))
    known_profile(svc, metadata.text("profile"))
    concat = parse_concat(h.get("upload-concat"))
    length = parse_number(h.get("upload-length"), "Upload-Length")
    defer = h.get("upload-defer-length")
    if defer is not None and defer.strip() != "1":
        raise InvalidRequest("Upload-Defer-Length must be 1")
    grant = caller.grant
    info: dict[str, Any] = {}
    if grant is not None:
        grant.check_kind(kind_of_mime(metadata.filetype))
        info = {"max_size": grant.max_size, "allowed_kinds": grant.kinds}

    if concat is not None and not concat.partial:
        if length is not None or defer is not None:
            raise InvalidRequest("a final upload takes its length from its partial uploads")
        part_ids = [upload_id_from_url(url) for url in concat.parts]
        for part_id in part_ids:
            caller.check_access(part_id)
        up = await svc.tus.create_final(
            caller.owner_id,
            part_ids,
            metadata=metadata,
            info=info,
            on_create=svc.tokens.claim(grant, partial=False, size=None) if grant else None,
        )
        headers = _headers(request, svc, up)
        headers["Location"] = _location(request, svc, up.upload_id)
        return Response(status_code=201, headers=headers)

    if (length is None) == (defer is None):
        raise InvalidRequest("send exactly one of Upload-Length and Upload-Defer-Length: 1")
    if length is not None and length > svc.tus.max_size:
        raise _too_large(length, svc.tus.max_size)
    if grant is not None and length is not None and length > grant.max_size:
        raise _too_large(length, grant.max_size)
    partial = concat is not None and concat.partial
    with_data = _has_body(request)
    if with_data:  # creation-with-upload: refuse a bad body before anything is created
        _check_content_type(request)
        parse_checksum(h.get("upload-checksum"))
        sent = parse_number(h.get("content-length"), "Content-Length")
        if sent is not None and length is not None and sent > length:
            raise TooLarge(
                f"the body holds {sent} bytes; Upload-Length is {length}", remaining=length
            )
    up = await svc.tus.create(
        caller.owner_id,
        size=length,
        metadata=metadata,
        partial=partial,
        info=info,
        on_create=svc.tokens.claim(grant, partial=partial, size=length) if grant else None,
    )
    location = _location(request, svc, up.upload_id)
    if with_data:
        try:
            up = await _append(request, svc, caller, up.upload_id, 0)
        except ChunkChecksumMismatch as exc:  # the upload exists: say where, to resume
            return JSONResponse(
                error_body(exc.code, exc.message, exc.details),
                status_code=status_for(exc),
                headers={"Location": location, "Upload-Offset": "0"},
            )
    headers = _headers(request, svc, up)
    headers["Location"] = location
    return Response(status_code=201, headers=headers)


@router.head(PREFIX + "/{upload_id}", summary="tus: the upload's offset")
async def head(upload_id: str, request: Request, caller: Caller, svc: Svc) -> Response:
    caller.check_access(upload_id)
    up = await svc.tus.state(caller.owner_id, upload_id)
    headers = _headers(request, svc, up)
    headers["Cache-Control"] = "no-store"
    if up.metadata:
        headers["Upload-Metadata"] = up.metadata
    if up.partial:
        headers["Upload-Concat"] = "partial"
    elif up.parts:
        urls = " ".join(_location(request, svc, p) for p in up.parts)
        headers["Upload-Concat"] = f"final;{urls}"
    # the replica that holds the upload's running hash: the next PATCH costs least there
    replica = await svc.tus.replica_for(upload_id)
    if replica is not None:
        headers["Ingestd-Replica"] = replica
    return Response(status_code=200, headers=headers)


@router.patch(PREFIX + "/{upload_id}", status_code=204, summary="tus: append data")
async def patch(upload_id: str, request: Request, caller: Caller, svc: Svc) -> Response:
    caller.check_access(upload_id)
    _check_content_type(request)
    offset = parse_number(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise InvalidRequest("send Upload-Offset")
    up = await _append(request, svc, caller, upload_id, offset)
    headers = _headers(request, svc, up)
    if svc.tus.routing is not None and svc.tus.replica is not None:
        headers["Ingestd-Replica"] = svc.tus.replica
    return Response(status_code=204, headers=headers)


@router.delete(PREFIX + "/{upload_id}", status_code=204, summary="tus: terminate an upload")
async def delete(upload_id: str, caller: Caller, svc: Svc) -> Response:
    caller.check_access(upload_id)
    await svc.tus.terminate(caller.owner_id, upload_id)
    return Response(status_code=204)


async def _append(
    request: Request, svc: Svc, caller: Principal, upload_id: str, offset: int
) -> TusUpload:
    h = request.headers
    length = parse_number(h.get("upload-length"), "Upload-Length")
    if caller.grant is not None and length is not None and length > caller.grant.max_size:
        raise _too_large(length, caller.grant.max_size)
    body = Body(request, idle_s=svc.settings.tus_idle_timeout_s)
    try:
        return await svc.tus.append(
            caller.owner_id,
            upload_id,
            offset,
            body.chunks(),
            content_length=parse_number(h.get("content-length"), "Content-Length"),
            checksum=parse_checksum(h.get("upload-checksum")),
            length=length,
            interrupt=body.interrupt,
        )
    except IncompleteWrite as exc:
        # the body broke off: what arrived is kept; a client still listening resumes
        state = await svc.tus.state(caller.owner_id, upload_id)
        raise InvalidRequest(
            f"the request body ended early after {exc.written} bytes; resume at the offset",
            offset=state.offset,
        ) from exc


class BodyInterrupted(Exception):
    """The request body stopped: no data for too long, or a newer request took over."""


class Body:
    """A PATCH body read message by message, which a stalled client cannot hold forever.

    Reading gives up after ``idle_s`` without data, and at once when :meth:`interrupt` is
    called (a newer request for the same upload is waiting). Either way the bytes already
    received are kept, as for a cut connection.
    """

    def __init__(self, request: Request, *, idle_s: float) -> None:
        self.request = request
        self.idle_s = idle_s
        self._waiting: asyncio.Timeout | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        self._interrupted = True
        if self._waiting is not None:
            self._waiting.reschedule(asyncio.get_running_loop().time())  # expire it now

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._interrupted:
                raise BodyInterrupted("a newer request for this upload took over")
            try:
                async with asyncio.timeout(self.idle_s) as waiting:
                    self._waiting = waiting
                    message = await self.request.receive()
            except TimeoutError:
                reason = "a newer request took over" if self._interrupted else "no data"
                raise BodyInterrupted(f"the request body stopped: {reason}") from None
            finally:
                self._waiting = None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            data = message.get("body", b"")
            if data:
                yield data
            if not message.get("more_body", False):
                return


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return parse_number(length, "Content-Length") != 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _check_content_type(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != OFFSET_OCTET_STREAM:
        raise UnsupportedMediaType(
            f"send the data as Content-Type: {OFFSET_OCTET_STREAM}", content_type=kind or None
        )


def _too_large(length: int, limit: int) -> TooLarge:
    return TooLarge(
        f"Upload-Length {length} exceeds the maximum upload size of {limit} bytes",
        max_upload_size=limit,
    )
