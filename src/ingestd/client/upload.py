"""Resumable, parallel upload of one file over the block API.

1. Look for local state for (server, path, size, mtime). If there is some, ask the server
   which blocks it still misses; a 404/410 or a dead session means start over.
2. Otherwise hash the file (one streaming pass), open an upload session with the block
   list, and save the state before the first block is sent, so a killed process resumes.
3. Send the missing blocks with ``parallel`` workers; each reads its block from disk when
   it needs it, so memory stays near ``parallel * block_size``. Network errors and 5xx are
   retried with backoff; any other 4xx aborts with the server's message.
4. Complete; if the server still misses blocks, send them and complete again. The state is
   removed once the server has accepted the file.

Progress is reported through a callback so the orchestration is testable without a UI.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from ingestd.client.blocks import DEFAULT_BLOCK_SIZE, BlockPlan, hash_file, read_block
from ingestd.client.errors import BAD_RESPONSE, ClientError, FileChanged
from ingestd.client.http import IngestdClient, UploadSession
from ingestd.client.state import FileKey, SavedUpload, UploadStateStore

# Upload session statuses, as the server reports them.
_RESUMABLE = frozenset({"uploading"})
_ACCEPTED = frozenset({"uploaded", "validating", "ingested", "rejected"})
_COMPLETE_ROUNDS = 3

T = TypeVar("T")


class _HashingStopped(Exception):
    """Raised inside the hashing thread once its caller was cancelled."""


class Phase(StrEnum):
    HASHING = "hashing"
    UPLOADING = "uploading"
    COMPLETING = "completing"


@dataclass(frozen=True)
class UploadProgress:
    """``completed`` of ``total`` bytes are done in ``phase``.

    The first report of the uploading phase counts the bytes the server already had
    (resumed or deduplicated), so a rate should be computed from later reports only.
    """

    path: Path
    phase: Phase
    completed: int
    total: int


ProgressCallback = Callable[[UploadProgress], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for retryable failures of idempotent calls."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass(frozen=True)
class UploadOptions:
    block_size: int = DEFAULT_BLOCK_SIZE
    parallel: int = 4
    title: str | None = None
    description: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class UploadResult:
    path: Path
    upload_id: str
    asset_id: str
    status: str
    size: int
    block_count: int
    blocks_sent: int
    bytes_sent: int
    resumed: bool


@dataclass
class _Transfer:
    """Counters of one file's transfer in one run."""

    path: Path
    saved: SavedUpload
    plan: BlockPlan
    blocks_sent: int = 0
    bytes_sent: int = 0
    uploaded: int = 0  # bytes the server has, including what it had before this run


class Uploader:
    """Uploads files to one server; see the module docstring for the protocol."""

    def __init__(
        self,
        client: IngestdClient,
        state: UploadStateStore,
        options: UploadOptions | None = None,
        on_progress: ProgressCallback | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._state = state
        self._options = options or UploadOptions()
        self._on_progress = on_progress
        self._sleep = sleep
        if self._options.parallel < 1:
            raise ValueError("parallel must be at least 1")

    async def upload(self, path: Path) -> UploadResult:
        path, key = await asyncio.to_thread(_identify, self._client.base_url, path)
        saved = self._state.load(key)
        if saved is not None:
            result = await self._resume(path, saved)
            if result is not None:
                return result
        plan = None
        if saved is not None and saved.block_size == self._options.block_size:
            plan = BlockPlan(key.size, saved.block_size, saved.block_hashes, saved.sha256)
        return await self._start(path, key, plan)

    async def _resume(self, path: Path, saved: SavedUpload) -> UploadResult | None:
        """Continue ``saved``; None if the server no longer has it and a new upload is needed."""
        try:
            status = await self._retrying(lambda: self._client.get_upload(saved.upload_id))
        except ClientError as exc:
            if exc.status not in (404, 410):
                raise
            self._state.remove(saved.key)
            return None
        if status.status in _ACCEPTED:
            self._state.remove(saved.key)
            return self._result(path, saved, status.status, sent=(0, 0), resumed=True)
        if status.status not in _RESUMABLE or status.block_size != saved.block_size:
            self._state.remove(saved.key)
            return None
        plan = BlockPlan(saved.key.size, saved.block_size, saved.block_hashes, saved.sha256)
        return await self._send_and_complete(path, saved, plan, status.missing, resumed=True)

    async def _start(self, path: Path, key: FileKey, plan: BlockPlan | None) -> UploadResult:
        if plan is None:
            plan = await self._hash(path, self._options.block_size)
        session = await self._create(path, plan)
        if session.block_size != plan.block_size or session.block_count != plan.block_count:
            raise ClientError(
                BAD_RESPONSE,
                f"the server answered block_size={session.block_size} "
                f"block_count={session.block_count} for {plan.block_count} blocks "
                f"of {plan.block_size} bytes",
            )
        _, now = await asyncio.to_thread(_identify, self._client.base_url, path)
        if now != key:
            await self._client.cancel_upload(session.upload_id)
            raise FileChanged(f"{path} changed while it was being hashed; run the upload again")
        saved = SavedUpload(
            key=key,
            upload_id=session.upload_id,
            asset_id=session.asset_id,
            block_size=plan.block_size,
            sha256=plan.sha256,
            block_hashes=plan.block_hashes,
        )
        self._state.save(saved)
        return await self._send_and_complete(path, saved, plan, session.missing, resumed=False)

    async def _hash(self, path: Path, block_size: int) -> BlockPlan:
        size = (await asyncio.to_thread(path.stat)).st_size
        done = 0
        stop = threading.Event()

        def on_bytes(count: int) -> None:
            nonlocal done
            if stop.is_set():
                # Cancelled (Ctrl-C): end the thread now; asyncio.run waits for it to exit.
                raise _HashingStopped
            done += count
            self._report(path, Phase.HASHING, done, size)

        self._report(path, Phase.HASHING, 0, size)
        try:
            return await asyncio.to_thread(hash_file, path, block_size, on_bytes)
        finally:
            stop.set()

    async def _create(self, path: Path, plan: BlockPlan) -> UploadSession:
        asset = None
        if self._options.title is not None or self._options.description is not None:
            asset = {
                "title": self._options.title or path.name,
                "description": self._options.description or "",
            }
        return await self._client.create_upload(
            filename=path.name,
            size=plan.size,
            block_size=plan.block_size,
            blocks=list(plan.block_hashes),
            sha256=plan.sha256,
            asset=asset,
        )

    async def _send_and_complete(
        self,
        path: Path,
        saved: SavedUpload,
        plan: BlockPlan,
        missing: Iterable[int],
        *,
        resumed: bool,
    ) -> UploadResult:
        pending = _checked_indices(missing, plan)
        transfer = _Transfer(path, saved, plan)
        transfer.uploaded = plan.size - sum(plan.block_length(i) for i in pending)
        self._report(path, Phase.UPLOADING, transfer.uploaded, plan.size)
        for round_ in range(_COMPLETE_ROUNDS):
            await self._send_blocks(transfer, pending)
            self._report(path, Phase.COMPLETING, 0, 1)
            try:
                answer = await self._client.complete_upload(saved.upload_id)
            except ClientError as exc:
                late = exc.details.get("missing")
                retry_missing = exc.code == "upload_incomplete" and isinstance(late, list)
                if retry_missing and late and round_ + 1 < _COMPLETE_ROUNDS:
                    pending = _checked_indices(late, plan)
                    transfer.uploaded -= sum(plan.block_length(i) for i in pending)
                    continue
                self._forget_if_dead(saved, exc)
                raise
            self._state.remove(saved.key)
            self._report(path, Phase.COMPLETING, 1, 1)
            status = str(answer.get("status", "uploaded"))
            return self._result(
                path,
                saved,
                status,
                sent=(transfer.blocks_sent, transfer.bytes_sent),
                resumed=resumed,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_blocks(self, transfer: _Transfer, indices: list[int]) -> None:
        if not indices:
            return
        path, saved, plan = transfer.path, transfer.saved, transfer.plan
        queue = iter(indices)  # shared: each worker takes the next index when it is free

        async def worker() -> None:
            for index in queue:
                data = await asyncio.to_thread(read_block, path, plan, index)
                await self._put_block(saved, index, data, plan.block_hashes[index])
                transfer.blocks_sent += 1
                transfer.bytes_sent += len(data)
                transfer.uploaded += len(data)
                self._report(path, Phase.UPLOADING, transfer.uploaded, plan.size)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self._options.parallel, len(indices))):
                    group.create_task(worker())
        except ExceptionGroup as failures:
            first = failures.exceptions[0]
            if isinstance(first, ClientError):
                self._forget_if_dead(saved, first)
            raise first from None

    async def _put_block(self, saved: SavedUpload, index: int, data: bytes, sha256: str) -> None:
        receipt = await self._retrying(
            lambda: self._client.put_block(saved.upload_id, index, data, sha256)
        )
        if receipt.index != index or receipt.sha256 != sha256:
            raise ClientError(
                BAD_RESPONSE,
                f"the server acknowledged block {receipt.index} ({receipt.sha256}) "
                f"for block {index} ({sha256})",
            )

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        policy = self._options.retry
        for attempt in range(policy.attempts):
            try:
                return await call()
            except ClientError as exc:
                if not exc.retryable or attempt + 1 >= policy.attempts:
                    raise
            await self._sleep(policy.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget_if_dead(self, saved: SavedUpload, exc: ClientError) -> None:
        """Drop local state for a session the server can no longer complete."""
        if exc.status in (404, 410) or exc.code in ("checksum_mismatch", "size_mismatch"):
            self._state.remove(saved.key)

    def _report(self, path: Path, phase: Phase, completed: int, total: int) -> None:
        if self._on_progress is not None:
            self._on_progress(UploadProgress(path, phase, completed, total))

    @staticmethod
    def _result(
        path: Path, saved: SavedUpload, status: str, *, sent: tuple[int, int], resumed: bool
    ) -> UploadResult:
        return UploadResult(
            path=path,
            upload_id=saved.upload_id,
            asset_id=saved.asset_id,
            status=status,
            size=saved.key.size,
            block_count=len(saved.block_hashes),
            blocks_sent=sent[0],
            bytes_sent=sent[1],
            resumed=resumed,
        )


def _identify(server: str, path: Path) -> tuple[Path, FileKey]:
    resolved = path.resolve()
    return resolved, FileKey.for_file(server, resolved)


def _checked_indices(indices: Iterable[Any], plan: BlockPlan) -> list[int]:
    """Sorted unique block indices from a server answer, all within the plan."""
    try:
        checked = sorted({int(i) for i in indices})
    except (TypeError, ValueError) as exc:
        raise ClientError(
            BAD_RESPONSE, "the server listed missing blocks that are not numbers"
        ) from exc
    if checked and not (checked[0] >= 0 and checked[-1] < plan.block_count):
        raise ClientError(
            BAD_RESPONSE,
            f"the server asked for blocks outside 0..{plan.block_count - 1}: {checked}",
        )
    return checked
