"""The FastAPI application, built around already-wired services."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ingestd import __version__
from ingestd.api import (
    assets,
    errors,
    ingest,
    stream,
    subscriptions,
    targets,
    tokens,
    tus,
    uploads,
)
from ingestd.bootstrap import Services


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="ingestd",
        version=__version__,
        description="Resumable ingestion, validation and processing of media masters.",
    )
    app.state.services = services
    errors.install(app)
    app.include_router(uploads.router)
    app.include_router(tokens.router)
    app.include_router(assets.router)
    app.include_router(stream.router)
    app.include_router(tus.router)
    app.include_router(subscriptions.router)
    app.include_router(targets.router)
    app.include_router(ingest.router)
    app.add_middleware(tus.TusMiddleware)
    origins = services.settings.cors_origin_list
    if origins:  # outermost, so preflights are answered before anything else
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=tus.REQUEST_HEADERS,
            expose_headers=tus.EXPOSED_HEADERS,
            max_age=86400,
        )

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    return app
