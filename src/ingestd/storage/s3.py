"""S3 stores: :class:`S3Store` (an :class:`ObjectStore`) here, and
:class:`~ingestd.storage.s3_staging.S3Staging` (a :class:`StagingStore` built on multipart
uploads) beside it, for any S3-compatible server; the configuration, client and error
mapping they share live here.

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

import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
)

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = [
    "NotReadable",
    "S3Config",
    "S3Store",
    "StorageUnavailable",
    "make_client",
    "parse_s3_url",
]

MIB = 1 << 20
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
READ_CHUNK = MIB
NOT_FOUND_CODES = {"NoSuchKey", "NoSuchUpload", "NotFound", "404"}
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


def map_error(exc: Exception, what: str) -> IngestdError:
    """A botocore/boto3 failure as an ingestd error (the caller raises it ``from exc``)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"{what}: not found")
        message = f"{what}: S3 answered {status} {code}: {error.get('Message', '')}".strip()
        if status >= 500:
            return StorageUnavailable(message, s3_code=code)
        return StorageError(message, s3_code=code)
    if isinstance(exc, _UNREACHABLE):
        return StorageUnavailable(f"{what}: cannot reach the object store: {exc}")
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, Boto3Error) and isinstance(cause, ClientError | BotoCoreError):
        return map_error(cause, what)
    return StorageError(f"{what}: {exc}")


BOTO_ERRORS = (ClientError, BotoCoreError, Boto3Error)


def s3_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


# -- the shared base -------------------------------------------------------------------------


class S3Base:
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
        except BOTO_ERRORS as exc:
            raise map_error(exc, what) from exc

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
            if s3_code(exc) == "InvalidRange":  # past the end: nothing to read
                return
            raise map_error(exc, what) from exc
        except BOTO_ERRORS as exc:
            raise map_error(exc, what) from exc
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


class S3Store(S3Base):
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
            if status != 404 and s3_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise map_error(exc, f"bucket {self.bucket}") from exc
        except BOTO_ERRORS as exc:
            raise map_error(exc, f"bucket {self.bucket}") from exc
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.config.region and self.config.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            await anyio.to_thread.run_sync(partial(self.client.create_bucket, **params))
        except ClientError as exc:
            if s3_code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise map_error(exc, f"create bucket {self.bucket}") from exc
        except BOTO_ERRORS as exc:
            raise map_error(exc, f"create bucket {self.bucket}") from exc

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
        except BOTO_ERRORS as exc:
            raise map_error(exc, f"sign {key}") from exc


# -- StagingStore ----------------------------------------------------------------------------
