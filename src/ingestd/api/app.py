"""The FastAPI application, built around already-wired services."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ingestd import __version__
from ingestd.api import assets, errors, uploads
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
    app.include_router(assets.router)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    return app
