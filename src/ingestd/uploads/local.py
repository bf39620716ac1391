"""Ingesting a file from the local disk: the script entry, through the upload path."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session

from ingestd.db.models import Asset
from ingestd.errors import IngestdError
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
    identity: str | None = None,
    force: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> UploadInfo:
    """Ingest a local file exactly as an upload would be: blocks verified, then completed.

    ``identity``: the owner's asset of that identity takes the file as a new source (its
    unchanged steps are then skipped, unless ``force``). ``meta`` is merged into the asset's
    metadata before the pipeline starts (e.g. ``origin_path``). The upload is cancelled if
    the file cannot be read to the end.
    """
    size = (await anyio.Path(path).stat()).st_size
    info = await uploads.create(
        owner_id,
        NewUpload(
            filename=path.name,
            size=size,
            title=title,
            description=description,
            protocol="local",
            identity=identity,
            # ValidateStep reads it from the upload session, to re-run every step
            info={"force": True} if force else {},
        ),
    )
    try:
        if meta:
            await uploads.db.run(_merge_meta(info.asset, meta))
        whole = hashlib.sha256()

        def hash_block(data: bytes) -> str:
            whole.update(data)
            return hashlib.sha256(data).hexdigest()

        async with await anyio.open_file(path, "rb") as f:
            for index in range(info.block_count):
                _, length = block_span(index, size, info.block_size)
                data = await f.read(length)
                digest = await anyio.to_thread.run_sync(hash_block, data)
                await uploads.put_block(owner_id, info.upload_id, index, _once(data), sha256=digest)
        # every block was verified as it was written, in order, from these very bytes: the
        # whole file's hash needs no second read
        return await uploads.complete(owner_id, info.upload_id, sha256=whole.hexdigest())
    except (OSError, IngestdError):
        await _cancel(uploads, owner_id, info.upload_id)
        raise


async def _cancel(uploads: UploadService, owner_id: str, upload_id: str) -> None:
    with contextlib.suppress(IngestdError):  # completed or gone meanwhile: nothing to undo
        await uploads.cancel(owner_id, upload_id)


def _merge_meta(asset_id: str, meta: Mapping[str, Any]) -> Callable[[Session], None]:
    def write(session: Session) -> None:
        asset = session.get_one(Asset, asset_id)
        asset.meta = {**asset.meta, **meta}

    return write
