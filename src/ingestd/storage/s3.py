"""S3 stores: :class:`S3Store` (an :class:`ObjectStore`) and :class:`S3Staging` (a
:class:`StagingStore` built on multipart uploads), for any S3-compatible server.

boto3's client is synchronous and thread-safe: one client is shared and every call runs in a
worker thread, so the event loop never waits on the network. botocore's exceptions stop at
this module: 404s become :class:`NotFound`, everything else a :class:`StorageError`.

Staging layout, under the store's prefix, for upload ``<id>``::

    staging/<id>/state.json     {"mpu", "key", "part_size", "size", "completed"}
    staging/<id>/tail-<start>   bytes from <start> (a part boundary) that do not fill a part
    staging/<id>/object         the multipart target when no final key was given (tus partials)

The multipart upload targets the object the upload becomes (the master's key), so
assembling is CompleteMultipartUpload: no byte is copied. The state lives in the bucket, so
any process can continue an upload another one started.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from ingestd.errors import (
    ConfigError,
    IngestdError,
    InvalidRequest,
    NotFound,
    StorageError,
    TooLarge,
)
from ingestd.storage.base import IncompleteWrite

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = [
    "NotReadable",
    "S3Config",
    "S3Staging",
    "S3Store",
    "StorageUnavailable",
    "make_client",
    "parse_s3_url",
]

MIB = 1 << 20
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
READ_CHUNK = MIB
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchUpload", "NotFound", "404"}
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ResponseStreamingError,
)

T = TypeVar("T")


class StorageUnavailable(StorageError):
    """The object store cannot be reached or failed on its side; try again later."""

    code = "storage_unavailable"


class NotReadable(StorageError):
    """This range of the staged upload cannot be read back before it is finalised."""

    code = "not_readable"


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Config:
    """Where objects go. Credentials are not here: boto3's chain finds them (AWS_* vars)."""

    bucket: str
    prefix: str = ""  # "" or ends with "/"
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = True
    max_attempts: int = 3


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def parse_s3_url(url: str) -> S3Config:
    """``s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1&path_style=true``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise ConfigError(f"not an s3://bucket URL: {url!r}")
    if parts.username or parts.password:
        raise ConfigError("put no credentials in the storage URL; use the AWS_* variables")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - {"endpoint", "region", "path_style", "max_attempts"}
    if unknown:
        raise ConfigError(f"unknown storage URL parameters: {', '.join(sorted(unknown))}")
    one = {k: v[-1] for k, v in query.items()}
    prefix = parts.path.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ConfigError(f"invalid key prefix {prefix!r}")
    endpoint = one.get("endpoint") or None
    if endpoint is not None and urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise ConfigError(f"endpoint must be an http(s) URL, not {endpoint!r}")
    try:
        attempts = int(one.get("max_attempts", "3"))
    except ValueError as exc:
        raise ConfigError("max_attempts must be a number") from exc
    return S3Config(
        bucket=parts.hostname,
        prefix=f"{prefix}/" if prefix else "",
        endpoint_url=endpoint,
        region=one.get("region") or None,
        path_style=_flag("path_style", one.get("path_style", "true")),
        max_attempts=max(1, attempts),
    )


def make_client(
    config: S3Config,
    *,
    session: boto3.session.Session | None = None,
    max_pool_connections: int = 32,
) -> S3Client:
    """One boto3 client for the configuration; share it (it is thread-safe).

    Credentials come from ``session`` if given, else from boto3's default chain.
    """
    session = session or boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if config.path_style else "auto"},
            retries={"mode": "standard", "max_attempts": config.max_attempts},
            max_pool_connections=max_pool_connections,
            connect_timeout=5,
            read_timeout=60,
        ),
    )


# -- errors ----------------------------------------------------------------------------------


def _map_error(exc: Exception, what: str) -> IngestdError:
    """A botocore/boto3 failure as an ingestd error (the caller raises it ``from exc``)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"{what}: not found")
        message = f"{what}: S3 answered {status} {code}: {error.get('Message', '')}".strip()
        if status >= 500:
            return StorageUnavailable(message, s3_code=code)
        return StorageError(message, s3_code=code)
    if isinstance(exc, _UNREACHABLE):
        return StorageUnavailable(f"{what}: cannot reach the object store: {exc}")
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, Boto3Error) and isinstance(cause, ClientError | BotoCoreError):
        return _map_error(cause, what)
    return StorageError(f"{what}: {exc}")


_BOTO_ERRORS = (ClientError, BotoCoreError, Boto3Error)


def _s3_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


# -- the shared base -------------------------------------------------------------------------


class _S3Base:
    def __init__(self, config: S3Config, client: S3Client | None = None) -> None:
        self.config = config
        self.bucket = config.bucket
        self.client: S3Client = client if client is not None else make_client(config)

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise InvalidRequest(f"invalid object key {key!r}")
        return self.config.prefix + key

    async def _call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, its failures mapped."""
        return await anyio.to_thread.run_sync(partial(self._sync, what, fn, *args, **kwargs))

    @staticmethod
    def _sync(what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except _BOTO_ERRORS as exc:
            raise _map_error(exc, what) from exc

    async def _read_object(
        self, full_key: str, offset: int, length: int | None, what: str
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            params["Range"] = f"bytes={offset}-{end}"
        try:
            answer = await anyio.to_thread.run_sync(partial(self.client.get_object, **params))
        except ClientError as exc:
            if _s3_code(exc) == "InvalidRange":  # past the end: nothing to read
                return
            raise _map_error(exc, what) from exc
        except _BOTO_ERRORS as exc:
            raise _map_error(exc, what) from exc
        body = answer["Body"]
        try:
            while True:
                chunk = await self._call(what, body.read, READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    def _delete_keys(self, full_keys: list[str]) -> None:
        for start in range(0, len(full_keys), 1000):
            batch = full_keys[start : start + 1000]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def _list_keys(self, full_prefix: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full_prefix
        )
        for page in pages:
            found.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
        return found

    def _delete_prefix(self, full_prefix: str) -> int:
        """Delete the object ``full_prefix`` and everything under ``full_prefix/``."""
        base = full_prefix.rstrip("/")
        keys = [k for k, _ in self._list_keys(base) if k == base or k.startswith(base + "/")]
        self._delete_keys(keys)
        return len(keys)


# -- ObjectStore -----------------------------------------------------------------------------


def _content_disposition(filename: str) -> str:
    """``attachment`` with a safe ASCII fallback name and the exact UTF-8 one (RFC 6266)."""
    name = filename.replace("/", "_").replace("\\", "_")
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"%;' else "_" for c in name)
    quoted = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quoted}"


class S3Store(_S3Base):
    """Implements :class:`ObjectStore` on a bucket (and a key prefix). Objects stay private:
    no ACL is ever set; readers get presigned URLs."""

    def __init__(
        self,
        config: S3Config,
        client: S3Client | None = None,
        *,
        tmp_dir: Path | None = None,
        transfer: TransferConfig | None = None,
    ) -> None:
        super().__init__(config, client)
        self.tmp_dir = tmp_dir
        self.transfer = transfer or TransferConfig(
            multipart_threshold=64 * MIB,
            multipart_chunksize=MIN_PART_SIZE,
            max_concurrency=8,
            use_threads=True,
        )

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (private, as every new bucket is)."""
        try:
            await anyio.to_thread.run_sync(partial(self.client.head_bucket, Bucket=self.bucket))
            return
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404 and _s3_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise _map_error(exc, f"bucket {self.bucket}") from exc
        except _BOTO_ERRORS as exc:
            raise _map_error(exc, f"bucket {self.bucket}") from exc
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.config.region and self.config.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            await anyio.to_thread.run_sync(partial(self.client.create_bucket, **params))
        except ClientError as exc:
            if _s3_code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise _map_error(exc, f"create bucket {self.bucket}") from exc
        except _BOTO_ERRORS as exc:
            raise _map_error(exc, f"create bucket {self.bucket}") from exc

    async def put_file(self, key: str, src: Path, *, move: bool = False) -> int:
        full = self._key(key)

        def upload() -> int:
            size = src.stat().st_size
            # one PUT or a multipart upload: either way the object appears whole, or not at all
            self.client.upload_file(str(src), self.bucket, full, Config=self.transfer)
            return size

        try:
            size = await self._call(f"store {key}", upload)
        except OSError as exc:
            raise StorageError(f"cannot store {key}: {exc}") from exc
        if move:
            await anyio.Path(src).unlink(missing_ok=True)
        return size

    async def put_bytes(self, key: str, data: bytes) -> int:
        await self._call(
            f"store {key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
        )
        return len(data)

    async def size(self, key: str) -> int:
        head = await self._call(
            f"object {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key)
        )
        return int(head["ContentLength"])

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in self._read_object(self._key(key), offset, length, f"object {key}"):
            yield chunk

    @asynccontextmanager
    async def local_path(self, key: str) -> AsyncIterator[Path]:
        full = self._key(key)
        fd, name = tempfile.mkstemp(prefix="ingestd-s3-", dir=self.tmp_dir)
        os.close(fd)
        path = Path(name)
        try:
            await self._call(
                f"object {key}",
                self.client.download_file,
                self.bucket,
                full,
                name,
                Config=self.transfer,
            )
            yield path
        finally:
            await anyio.Path(path).unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await self._call(
            f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key)
        )

    async def delete_prefix(self, prefix: str) -> int:
        full = self._key(prefix.rstrip("/"))
        return await self._call(f"delete {prefix}", self._delete_prefix, full)

    def presign(self, key: str, ttl_s: int, *, filename: str | None = None) -> str:
        """A GET URL for the object, valid ``ttl_s`` seconds; with ``filename`` the answer
        carries ``Content-Disposition: attachment`` with that name. Signing is local."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        try:
            return self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=int(ttl_s)
            )
        except _BOTO_ERRORS as exc:
            raise _map_error(exc, f"sign {key}") from exc


# -- StagingStore ----------------------------------------------------------------------------


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


class S3Staging(_S3Base):
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
            if _s3_code(exc) in _NOT_FOUND_CODES:
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
        except _BOTO_ERRORS:
            with contextlib.suppress(*_BOTO_ERRORS):
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
                if _s3_code(exc) != "NoSuchUpload" or not self._exists(state.key):
                    raise
        if state.key != full:
            # managed copy: CopyObject, or UploadPartCopy parts past 5 GiB; server-side
            self.client.copy({"Bucket": self.bucket, "Key": state.key}, self.bucket, full)
        self._delete_prefix(self._dir(upload_id).rstrip("/"))

    def _exists(self, full: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _s3_code(exc) in _NOT_FOUND_CODES:
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
                if _s3_code(exc) not in _NOT_FOUND_CODES:
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
