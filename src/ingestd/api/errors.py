"""Domain errors to HTTP: ``{"error": {"code", "message", "details"?}}`` with a precise status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingestd import errors as e

STATUS: list[tuple[type[e.IngestdError], int]] = [
    (e.NotFound, 404),
    (e.Unauthorized, 401),
    (e.Forbidden, 403),
    (e.ChunkChecksumMismatch, 460),  # tus checksum extension
    (e.ChecksumMismatch, 422),
    (e.UnsupportedMediaType, 415),
    (e.UnsupportedVersion, 412),
    (e.TooLarge, 413),
    (e.InvalidRequest, 400),
    (e.Locked, 423),
    (e.Conflict, 409),
    (e.Gone, 410),
    (e.SourceRejected, 422),
    (e.StorageError, 503),
    (e.BrokerError, 503),
    (e.LeaseLost, 409),
]


def status_for(exc: e.IngestdError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def install(app: FastAPI) -> None:
    @app.exception_handler(e.IngestdError)
    async def _domain(_: Request, exc: e.IngestdError) -> JSONResponse:
        headers = None
        if isinstance(exc, e.Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, e.Locked):
            headers = {"Retry-After": "1"}
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_for(exc), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg")}
            for err in exc.errors()
        ]
        return JSONResponse(
            error_body("invalid_request", "the request is not valid", {"problems": problems}),
            400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)
