"""S3 staging: an upload in progress as one S3 multipart upload (no copy at assembly).

Part ``n`` (from 1) holds bytes ``[(n-1)·P, n·P)``; the part size P is fixed when the upload
is created. The multipart upload is started on the object the upload will become (the
master's key), so finalising is CompleteMultipartUpload. Bytes that do not fill a part (a
tus PATCH of any size) wait in a tail object until the next write continues them. A small
state object lets any process (several api replicas) continue an upload.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from ingestd.errors import InvalidRequest, NotFound, StorageError, TooLarge
from ingestd.storage.base import IncompleteWrite
from ingestd.storage.s3 import (
    BOTO_ERRORS,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    NOT_FOUND_CODES,
    NotReadable,
    S3Base,
    S3Config,
    s3_code,
)

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = ["S3Staging"]


@dataclass
class _State:
    mpu: str
    key: str  # full key of the multipart target (prefix included)
    part_size: int
    size: int  # 0: not known when the upload was created (tus deferred length)
    completed: bool = False

    def dump(self) -> bytes:
        return json.dumps(
            {
                "mpu": self.mpu,
                "key": self.key,
                "part_size": self.part_size,
                "size": self.size,
                "completed": self.completed,
            }
        ).encode()

    @classmethod
    def load(cls, raw: bytes) -> _State:
        data = json.loads(raw)
        return cls(
            mpu=str(data["mpu"]),
            key=str(data["key"]),
            part_size=int(data["part_size"]),
            size=int(data["size"]),
            completed=bool(data.get("completed", False)),
        )


def _md5_b64(view: memoryview) -> str:
    return base64.b64encode(hashlib.md5(view, usedforsecurity=False).digest()).decode()


class S3Staging(S3Base):
    """Implements :class:`StagingStore` with one S3 multipart upload per upload.

    Part ``n`` (from 1) holds bytes ``[(n-1)·P, n·P)``; P is fixed when the upload is created
    (:meth:`part_size`). A write must start on a part boundary, or exactly where the saved tail
    ends. Bytes that do not fill a part wait in a tail object until the next write continues
    them or :meth:`finalize` sends them as the last part.
    """

    readable_before_finalize = False

    def __init__(
        self,
        config: S3Config,
        client: S3Client | None = None,
        *,
        max_object_size: int,
        min_part_size: int = MIN_PART_SIZE,
        list_page_size: int = 1000,
    ) -> None:
        super().__init__(config, client)
        self.max_object_size = max_object_size
        self.min_part_size = min_part_size
        self.list_page_size = list_page_size

    # -- keys and state ------------------------------------------------------------------

    def part_size(self, size: int) -> int:
        """The part size of an upload of ``size`` bytes (0: not known yet): at least the
        minimum, small enough for 10 000 parts, a whole number of MiB."""
        wanted = size if size > 0 else self.max_object_size
        raw = max(self.min_part_size, math.ceil(wanted / MAX_PARTS))
        return math.ceil(raw / MIB) * MIB

    def _dir(self, upload_id: str) -> str:
        if not upload_id or not upload_id.replace("_", "").isalnum():
            raise InvalidRequest(f"invalid upload id {upload_id!r}")
        return f"{self.config.prefix}staging/{upload_id}/"

    def _state_key(self, upload_id: str) -> str:
        return self._dir(upload_id) + "state.json"

    def _tail_key(self, upload_id: str, start: int) -> str:
        return f"{self._dir(upload_id)}tail-{start}"

    def _load_state(self, upload_id: str) -> _State | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._state_key(upload_id))
            return _State.load(answer["Body"].read())
        except ClientError as exc:
            if s3_code(exc) in NOT_FOUND_CODES:
                return None
            raise

    def _state(self, upload_id: str) -> _State:
        state = self._load_state(upload_id)
        if state is None:
            raise NotFound(f"upload {upload_id} has no staged data")
        return state

    def _save_state(self, upload_id: str, state: _State) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._state_key(upload_id),
            Body=state.dump(),
            ContentType="application/json",
        )

    def _tails(self, upload_id: str) -> dict[int, int]:
        """Saved tails: start offset → length."""
        prefix = self._dir(upload_id) + "tail-"
        found: dict[int, int] = {}
        for key, size in self._list_keys(prefix):
            with contextlib.suppress(ValueError):
                found[int(key[len(prefix) :])] = size
        return found

    # -- create ----------------------------------------------------------------------------

    async def create(self, upload_id: str, size: int, key: str | None = None) -> None:
        """Start the multipart upload of the object ``key`` (``staging/<id>/object`` if
        none) and save its state. Idempotent: a second call starts nothing."""
        target = self._key(key) if key is not None else self._dir(upload_id) + "object"
        await self._call(f"create upload {upload_id}", self._create, upload_id, size, target)

    def _create(self, upload_id: str, size: int, target: str) -> None:
        if self._load_state(upload_id) is not None:
            return
        mpu = self.client.create_multipart_upload(Bucket=self.bucket, Key=target)["UploadId"]
        state = _State(mpu=mpu, key=target, part_size=self.part_size(size), size=size)
        try:
            self._save_state(upload_id, state)
        except BOTO_ERRORS:
            with contextlib.suppress(*BOTO_ERRORS):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=mpu)
            raise

    # -- write_at --------------------------------------------------------------------------

    async def write_at(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        limit: int,
        observe: Callable[[memoryview], object] | None = None,
    ) -> int:
        what = f"upload {upload_id}"
        state, tails = await self._call(what, self._state_and_tails, upload_id)
        p = state.part_size
        part_start = offset - offset % p
        buf = io.BytesIO()
        carried = 0
        if offset % p:
            if tails.get(part_start) != offset - part_start:
                raise StorageError(
                    f"upload {upload_id}: a write at offset {offset} must start on a part "
                    f"boundary (parts of {p} bytes) or where the saved bytes end"
                )
            async for data in self._read_object(
                self._tail_key(upload_id, part_start), 0, None, what
            ):
                buf.write(data)
            carried = buf.tell()
            if carried != offset - part_start:
                raise StorageError(f"{what}: its saved tail changed during the write")

        written = 0  # bytes of this stream made durable
        received = 0
        broke: Exception | None = None

        async def flush(final: bool) -> None:
            """Send the buffer as part ``part_start // p + 1``, or save it as the tail."""
            nonlocal part_start, carried, written
            fill = buf.tell()
            if fill == carried:  # nothing new since the saved tail
                return
            if fill == p or final:
                await self._call(
                    what, self._upload_part, state, part_start, buf, carried, observe, upload_id
                )
                if part_start in tails:
                    await self._call(
                        what,
                        self.client.delete_object,
                        Bucket=self.bucket,
                        Key=self._tail_key(upload_id, part_start),
                    )
                    del tails[part_start]
            else:
                await self._call(
                    what, self._save_tail, upload_id, part_start, buf, carried, observe
                )
                tails[part_start] = fill
            written += fill - carried
            part_start += fill
            carried = 0
            buf.seek(0)
            buf.truncate()

        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                received += len(chunk)
                if received > limit:
                    raise TooLarge(f"more than {limit} bytes sent")
                view = memoryview(chunk)
                while view:
                    room = p - buf.tell()
                    buf.write(view[:room])
                    view = view[room:]
                    if buf.tell() == p:
                        await flush(final=False)
        except (TooLarge, StorageError):
            raise
        except Exception as exc:  # the stream broke: keep what arrived
            broke = exc
        reaches_end = state.size > 0 and part_start + buf.tell() == state.size
        await flush(final=reaches_end)
        if broke is not None:
            raise IncompleteWrite(written, f"stream broke after {written} bytes") from broke
        return written

    def _state_and_tails(self, upload_id: str) -> tuple[_State, dict[int, int]]:
        state = self._state(upload_id)
        if state.completed:
            raise StorageError(f"upload {upload_id} is already assembled; it takes no more data")
        return state, self._tails(upload_id)

    @staticmethod
    def _observe(
        buf: io.BytesIO, carried: int, observe: Callable[[memoryview], object] | None
    ) -> str:
        """Show the new bytes to ``observe``; returns the MD5 of the whole buffer."""
        with buf.getbuffer() as view:
            if observe is not None:
                observe(view[carried:])
            return _md5_b64(view)

    def _upload_part(
        self,
        state: _State,
        start: int,
        buf: io.BytesIO,
        carried: int,
        observe: Callable[[memoryview], object] | None,
        upload_id: str,
    ) -> None:
        md5 = self._observe(buf, carried, observe)
        size = buf.tell()
        buf.seek(0)
        try:
            self.client.upload_part(
                Bucket=self.bucket,
                Key=state.key,
                UploadId=state.mpu,
                PartNumber=start // state.part_size + 1,
                Body=buf,
                ContentLength=size,
                ContentMD5=md5,  # the server refuses bytes damaged on the way
            )
        finally:
            buf.seek(size)

    def _save_tail(
        self,
        upload_id: str,
        start: int,
        buf: io.BytesIO,
        carried: int,
        observe: Callable[[memoryview], object] | None,
    ) -> None:
        md5 = self._observe(buf, carried, observe)
        size = buf.tell()
        buf.seek(0)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._tail_key(upload_id, start),
                Body=buf,
                ContentLength=size,
                ContentMD5=md5,
                Metadata={"start": str(start)},
            )
        finally:
            buf.seek(size)

    # -- copies ----------------------------------------------------------------------------

    async def copy_in(
        self, upload_id: str, offset: int, src_key: str, src_offset: int, size: int
    ) -> None:
        """Server-side part copies (UploadPartCopy) for the whole parts of the range; bytes
        before the first part boundary or after the last one are streamed through here."""
        state, tails = await self._call(f"upload {upload_id}", self._state_and_tails, upload_id)
        await self._copy_range(
            upload_id, state, tails, offset, self._key(src_key), src_offset, size
        )

    async def copy_staged(self, upload_id: str, offset: int, src_upload_id: str, size: int) -> None:
        """Completes the source's multipart upload if still open (its object then stays in
        staging until it is discarded), then copies like :meth:`copy_in`: whole parts
        server-side (UploadPartCopy), the unaligned head and tail streamed through here."""
        what = f"upload {src_upload_id}"
        src = await self._call(what, self._state, src_upload_id)
        if not src.completed:
            await self._call(what, self._complete, src_upload_id, src)
            src.completed = True
            await self._call(what, self._save_state, src_upload_id, src)
        state, tails = await self._call(f"upload {upload_id}", self._state_and_tails, upload_id)
        await self._copy_range(upload_id, state, tails, offset, src.key, 0, size)

    async def _copy_range(
        self,
        upload_id: str,
        state: _State,
        tails: dict[int, int],
        offset: int,
        src_full_key: str,
        src_offset: int,
        size: int,
    ) -> None:
        p = state.part_size
        what = f"upload {upload_id}"

        async def stream(at: int, src_at: int, n: int) -> None:
            chunks = self._read_object(src_full_key, src_at, n, f"object {src_full_key}")
            got = await self.write_at(upload_id, at, chunks, limit=n)
            if got != n:
                raise StorageError(f"{what}: source {src_full_key} is shorter than expected")

        pos, src_pos, left = offset, src_offset, size
        if pos % p and left:
            head = min(left, p - pos % p)
            await stream(pos, src_pos, head)
            pos, src_pos, left = pos + head, src_pos + head, left - head
        while left:
            n = min(left, p)
            final = state.size > 0 and pos + n == state.size
            if n < p and not final:
                await stream(pos, src_pos, n)
                break
            await self._call(what, self._part_copy, state, pos, src_full_key, src_pos, n)
            if pos in tails:
                await self._call(
                    what,
                    self.client.delete_object,
                    Bucket=self.bucket,
                    Key=self._tail_key(upload_id, pos),
                )
                del tails[pos]
            pos, src_pos, left = pos + n, src_pos + n, left - n

    def _part_copy(self, state: _State, at: int, src_full_key: str, src_at: int, n: int) -> None:
        self.client.upload_part_copy(
            Bucket=self.bucket,
            Key=state.key,
            UploadId=state.mpu,
            PartNumber=at // state.part_size + 1,
            CopySource={"Bucket": self.bucket, "Key": src_full_key},
            CopySourceRange=f"bytes={src_at}-{src_at + n - 1}",
        )

    # -- read_staged -----------------------------------------------------------------------

    async def read_staged(
        self, upload_id: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Any range once the multipart upload is complete; before that, only a range that
        lies inside the saved tail (S3 cannot read the parts of an open multipart upload)."""
        what = f"upload {upload_id}"
        state = await self._call(what, self._state, upload_id)
        if state.completed:
            async for chunk in self._read_object(state.key, offset, length, what):
                yield chunk
            return
        tails = await self._call(what, self._tails, upload_id)
        start = offset - offset % state.part_size
        tail = tails.get(start)
        end = None if length is None else offset + length
        if tail is None or (end is not None and end > start + tail) or offset > start + tail:
            raise NotReadable(
                f"{what}: bytes from {offset} are in parts of an unfinished multipart "
                "upload; finalize it, then read the object"
            )
        n = start + tail - offset if length is None else length
        async for chunk in self._read_object(
            self._tail_key(upload_id, start), offset - start, n, what
        ):
            yield chunk

    # -- finalize, discard -----------------------------------------------------------------

    async def finalize(self, upload_id: str, key: str) -> None:
        """CompleteMultipartUpload (the saved tail sent as the last part first); if the
        upload targeted another object, a server-side copy to ``key``. Idempotent."""
        full = self._key(key)
        what = f"finalize upload {upload_id}"
        await self._call(what, self._finalize, upload_id, full)

    def _finalize(self, upload_id: str, full: str) -> None:
        state = self._load_state(upload_id)
        if state is None:
            if self._exists(full):
                return  # finalised before
            raise NotFound(f"upload {upload_id} has no staged data")
        if not state.completed:
            try:
                self._complete(upload_id, state)
            except ClientError as exc:
                # gone: completed by an earlier finalize that stopped before cleaning up
                if s3_code(exc) != "NoSuchUpload" or not self._exists(state.key):
                    raise
        if state.key != full:
            # managed copy: CopyObject, or UploadPartCopy parts past 5 GiB; server-side
            self.client.copy({"Bucket": self.bucket, "Key": state.key}, self.bucket, full)
        self._delete_prefix(self._dir(upload_id).rstrip("/"))

    def _exists(self, full: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if s3_code(exc) in NOT_FOUND_CODES:
                return False
            raise
        return True

    def _complete(self, upload_id: str, state: _State) -> None:
        """Send saved tails as parts, check the parts, CompleteMultipartUpload."""
        p = state.part_size
        parts = self._list_parts(state)
        for start, length in sorted(self._tails(upload_id).items()):
            number = start // p + 1
            tail_key = self._tail_key(upload_id, start)
            if number not in parts:  # a tail whose part was since sent whole is stale
                body = self.client.get_object(Bucket=self.bucket, Key=tail_key)["Body"].read()
                answer = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=state.key,
                    UploadId=state.mpu,
                    PartNumber=number,
                    Body=body,
                    ContentMD5=_md5_b64(memoryview(body)),
                )
                parts[number] = (answer["ETag"], length)
            self.client.delete_object(Bucket=self.bucket, Key=tail_key)
        numbers = sorted(parts)
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, (numbers[-1] if numbers else 0) + 1)) - set(numbers))
            raise StorageError(f"upload {upload_id} lacks parts {missing[:10]}")
        short = [n for n in numbers[:-1] if parts[n][1] != p]
        if short:
            raise StorageError(f"upload {upload_id}: parts {short[:10]} are not whole")
        total = sum(size for _, size in parts.values())
        if state.size and total != state.size:
            raise StorageError(f"upload {upload_id} holds {total} bytes, not {state.size}")
        if not numbers:  # an empty upload: S3 cannot complete a multipart upload of no part
            self.client.put_object(Bucket=self.bucket, Key=state.key, Body=b"")
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=state.key, UploadId=state.mpu
            )
            return
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=state.key,
            UploadId=state.mpu,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n][0]} for n in numbers]},
        )

    def _list_parts(self, state: _State) -> dict[int, tuple[str, int]]:
        parts: dict[int, tuple[str, int]] = {}
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket,
            Key=state.key,
            UploadId=state.mpu,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        for page in pages:
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
        return parts

    async def discard(self, upload_id: str) -> None:
        """AbortMultipartUpload and remove ``staging/<id>/``; absent is not an error."""
        await self._call(f"discard upload {upload_id}", self._discard, upload_id)

    def _discard(self, upload_id: str) -> None:
        state = self._load_state(upload_id)
        if state is not None and not state.completed:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=state.key, UploadId=state.mpu
                )
            except ClientError as exc:
                if s3_code(exc) not in NOT_FOUND_CODES:
                    raise
        self._delete_prefix(self._dir(upload_id).rstrip("/"))

    # -- housekeeping ----------------------------------------------------------------------

    async def stale_uploads(self, older_than: datetime) -> list[str]:
        """Ids of uploads whose multipart upload began before ``older_than``.

        A multipart upload started by a process that died before saving its state belongs
        to no upload id and is not listed: a bucket lifecycle rule
        (AbortIncompleteMultipartUpload) is the backstop for those.
        """
        return await self._call("list multipart uploads", self._stale_uploads, older_than)

    def _stale_uploads(self, older_than: datetime) -> list[str]:
        stale: set[str] = set()
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket,
            Prefix=self.config.prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        for page in pages:
            for mpu in page.get("Uploads", []):
                if mpu["Initiated"] < older_than:
                    stale.add(mpu["UploadId"])
        if not stale:
            return []
        found: list[str] = []
        root = f"{self.config.prefix}staging/"
        for key, _ in self._list_keys(root):
            upload_id, _, name = key[len(root) :].partition("/")
            if name != "state.json":
                continue
            state = self._load_state(upload_id)
            if state is not None and state.mpu in stale:
                found.append(upload_id)
        return sorted(found)
