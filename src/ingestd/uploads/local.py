"""Ingesting a file from the local disk: the script entry, through the upload path."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from ingestd.uploads.blocks import block_span
from ingestd.uploads.service import NewUpload, UploadInfo, UploadService


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def ingest_file(
    uploads: UploadService,
    owner_id: str,
    path: Path,
    *,
    title: str | None = None,
    description: str | None = None,
) -> UploadInfo:
    """Ingest a local file exactly as an upload would be: blocks verified, then completed."""
    size = (await anyio.Path(path).stat()).st_size
    info = await uploads.create(
        owner_id,
        NewUpload(
            filename=path.name,
            size=size,
            title=title,
            description=description,
            protocol="local",
        ),
    )
    async with await anyio.open_file(path, "rb") as f:
        for index in range(info.block_count):
            _, length = block_span(index, size, info.block_size)
            data = await f.read(length)
            digest = hashlib.sha256(data).hexdigest()
            await uploads.put_block(owner_id, info.upload_id, index, _once(data), sha256=digest)
    return await uploads.complete(owner_id, info.upload_id)
