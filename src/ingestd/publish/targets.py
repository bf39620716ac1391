"""Publication targets: where an owner's renditions are copied to.

The seam is :class:`PublicationTarget`, a small Protocol; :func:`open_target` builds one of
the three kinds this module knows (``directory``, ``s3``, ``ftp``) from a target's config,
which :func:`validate_config` checks first. Paths given to a target are relative to its
base (directory root + prefix, bucket prefix, FTP base directory), ``/``-separated, with no
empty, ``.`` or ``..`` part: :func:`check_path` refuses anything else.

Every failure of a target surfaces as :class:`PublishFailed` carrying the target's reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.to_thread
import boto3
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ingestd.errors import IngestdError, InvalidRequest, NotFound, StorageError
from ingestd.storage.local import fsync_dir
from ingestd.storage.s3 import BOTO_ERRORS, S3Config, make_client, map_error

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

T = TypeVar("T")
CHUNK = 1 << 20
MIB = 1 << 20
KINDS = ("directory", "s3", "ftp", "catalog")
SECRET_NAME = re.compile(r"password|secret|token|api_?key|authorization|credential", re.I)


class PublishFailed(StorageError):
    """A publication target failed."""

    code = "publish_failed"


class PathEscapes(InvalidRequest):
    """The path leaves the target's root."""

    code = "path_escapes_root"


# -- payloads and paths ----------------------------------------------------------------------

ByteSource = Callable[[int], AsyncIterator[bytes]]
"""Opens the bytes to send from an offset to the end (a resumed transfer reopens it)."""
Payload = Path | ByteSource


async def _file_chunks(path: Path, offset: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        await f.seek(offset)
        while chunk := await f.read(CHUNK):
            yield chunk


def open_payload(payload: Payload, offset: int = 0) -> AsyncIterator[bytes]:
    return _file_chunks(payload, offset) if isinstance(payload, Path) else payload(offset)


def check_path(path: str) -> list[str]:
    """The parts of a target-relative path; raises :class:`PathEscapes` for ``..`` and kin."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        raise PathEscapes(f"invalid path {path!r}: it must stay inside the target's root")
    return parts


def _clean_prefix(value: str) -> str:
    value = value.strip("/")
    if value:
        try:
            check_path(value)
        except PathEscapes as exc:
            raise ValueError(exc.message) from exc  # pydantic names the field
    return value


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


@dataclass(frozen=True)
class RemoteObject:
    path: str  # relative to the target's base
    size: int


@dataclass(frozen=True)
class Sent:
    """What one :meth:`PublicationTarget.put` did."""

    bytes_sent: int
    resumes: int = 0  # transfers the server cut and that continued from its size


class PublicationTarget(Protocol):
    """One place objects are published to. Methods may be called one at a time only (an
    instance holds one connection); they raise :class:`PublishFailed` (with the target's
    reason) for anything the target refuses or cannot do, and :class:`PathEscapes` for a
    path that would leave the target's base."""

    def remote(self, path: str) -> str:
        """Where ``path`` is, for people: a path or URL, never with credentials."""
        ...

    async def put(self, path: str, payload: Payload, size: int, sha256: str) -> Sent:
        """Store ``size`` bytes (SHA-256 ``sha256``) at ``path``, replacing what is there.

        Readers never see a partial object where the protocol allows (temp + rename,
        multipart). A transfer the server cuts is resumed from what the server holds where
        the protocol allows. The result is verified (size and hash) before this returns; a
        payload that does not match ``size``/``sha256`` is refused, nothing replaced.
        """
        ...

    async def stat(self, path: str) -> int | None:
        """The size of the object at ``path``, or None if absent. Cheap (no read)."""
        ...

    async def verify(self, path: str, size: int, sha256: str) -> None:
        """Check the object at ``path`` has this size and hash (reading it back where the
        target keeps no hash); raises :class:`PublishFailed` if not."""
        ...

    async def delete(self, path: str) -> None:
        """Remove the object (and directories left empty, where there are directories);
        an absent object is not an error."""
        ...

    async def list(self, prefix: str) -> list[RemoteObject]:
        """Objects under ``prefix`` (a directory-like path; "" for the whole base)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the target may not be used afterwards."""
        ...


class Hasher:
    """Counts and hashes what goes through, to refuse a payload that is not what was said."""

    def __init__(self, offset: int = 0) -> None:
        self.digest = hashlib.sha256()
        self.size = offset

    def update(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)

    def check(self, where: str, size: int, sha256: str) -> None:
        if self.size != size:
            raise PublishFailed(f"{where}: sent {self.size} bytes, expected {size}")
        if self.digest.hexdigest() != sha256:
            raise PublishFailed(f"{where}: the bytes sent do not match their SHA-256")


# -- configuration ---------------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    auto: bool = Field(False, description="publish every new asset once its steps are done")


class DirectoryConfig(_Config):
    path: str = Field(description="absolute directory, inside a root the operator allows")
    prefix: str = ""

    _prefix = field_validator("prefix")(_clean_prefix)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value) or "\0" in value:
            raise ValueError("must be an absolute path")
        return value


class S3TargetConfig(_Config):
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]+$")
    prefix: str = ""
    endpoint_url: str | None = Field(None, pattern=r"^https?://")
    region: str | None = None
    path_style: bool = True
    access_key_id: str | None = None  # both, or neither: boto3's chain (AWS_* variables)
    secret_access_key: str | None = None
    part_size_mib: int = Field(8, ge=5, le=5120)

    _prefix = field_validator("prefix")(_clean_prefix)


class FtpConfig(_Config):
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.\-:\[\]]+$")
    port: int = Field(21, ge=1, le=65535)
    user: str = "anonymous"
    password: str = ""
    path: str = Field("/", description="base directory on the server")
    timeout_s: float = Field(30.0, gt=0, le=600)
    retries: int = Field(3, ge=0, le=20, description="reconnections after a cut transfer")

    @field_validator("path")
    @classmethod
    def _base(cls, value: str) -> str:
        clean = _clean_prefix(value)
        return f"/{clean}" if clean else "/"


CONFIGS: dict[str, type[_Config]] = {
    "directory": DirectoryConfig,
    "s3": S3TargetConfig,
    "ftp": FtpConfig,
}


@dataclass(frozen=True)
class TargetPolicy:
    """What the operator allows tenants to configure. ``directory_roots``: the directories
    a directory target may lie in (none: the kind is refused), so that no API key can make
    the server write into arbitrary places (its own data directory, say)."""

    directory_roots: Sequence[Path] = ()


def validate_config(kind: str, config: Mapping[str, Any], policy: TargetPolicy) -> dict[str, Any]:
    """The config, checked and normalised for its kind; raises :class:`InvalidRequest`.

    A ``catalog`` config is taken as given: its own module checks it.
    """
    if kind not in KINDS:
        raise InvalidRequest(f"unknown target kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "catalog":
        return dict(config)
    try:
        parsed = CONFIGS[kind].model_validate(dict(config))
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        raise InvalidRequest(
            f"invalid {kind} target config: "
            + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
            problems=problems,
        ) from exc
    if isinstance(parsed, DirectoryConfig):
        _check_root(Path(parsed.path), policy)
    if isinstance(parsed, S3TargetConfig) and (parsed.access_key_id is None) != (
        parsed.secret_access_key is None
    ):
        raise InvalidRequest("give both access_key_id and secret_access_key, or neither")
    return parsed.model_dump(exclude_defaults=False)


def _check_root(path: Path, policy: TargetPolicy) -> Path:
    resolved = Path(os.path.realpath(path))
    for root in policy.directory_roots:
        if resolved.is_relative_to(Path(os.path.realpath(root))):
            return resolved
    raise PathEscapes(
        f"directory {str(path)!r} is not inside a directory this server allows for targets"
        + (
            f" ({', '.join(str(r) for r in policy.directory_roots)})"
            if policy.directory_roots
            else " (none is configured)"
        )
    )


def mask_secrets(value: Any) -> Any:
    """A copy of a config with every secret-looking value replaced, for showing it."""
    if isinstance(value, Mapping):
        return {
            k: ("***" if SECRET_NAME.search(str(k)) and v not in (None, "") else mask_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


TargetOpener = Callable[[Mapping[str, Any]], PublicationTarget]


def open_target(kind: str, config: Mapping[str, Any], policy: TargetPolicy) -> PublicationTarget:
    """A target of one of this module's kinds, from a config :func:`validate_config` passed."""
    clean = validate_config(kind, config, policy)
    if kind == "directory":
        d = DirectoryConfig.model_validate(clean)
        return DirectoryTarget(_check_root(Path(d.path), policy), d.prefix)
    if kind == "s3":
        return S3Target(S3TargetConfig.model_validate(clean))
    if kind == "ftp":
        from ingestd.publish.ftp import FtpTarget  # it builds on this module's pieces

        return FtpTarget(FtpConfig.model_validate(clean))
    raise InvalidRequest(f"targets of kind {kind!r} are not published by this module")


# -- directory -------------------------------------------------------------------------------


class DirectoryTarget:
    """A local (or mounted) directory. Writes are atomic: a temporary file next to the
    object, fsynced, renamed over it, the directory fsynced. Symbolic links that would lead
    out of the root are refused."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = Path(os.path.realpath(root))
        self.base = self.root.joinpath(*check_path(prefix)) if prefix else self.root

    def remote(self, path: str) -> str:
        return str(self.base.joinpath(*check_path(path)))

    def _inside(self, p: Path) -> None:
        if not Path(os.path.realpath(p)).is_relative_to(self.root):
            raise PathEscapes(f"{p} leads out of the target's root {self.root}")

    def _file(self, path: str, *, create: bool = False) -> Path:
        full = self.base.joinpath(*check_path(path))
        if not self.root.exists():  # the policy allowed the root when the target was made
            if not create:
                return full  # nothing published yet: nothing to find
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PublishFailed(f"cannot create {self.root}: {exc}") from exc
        existing = full.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        self._inside(existing)
        if create:
            try:
                full.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PublishFailed(f"cannot create {full.parent}: {exc}") from exc
        if full.parent.exists():
            self._inside(full.parent)
        if full.is_symlink():
            raise PathEscapes(f"{full} is a symbolic link; refusing to write through it")
        return full

    async def put(self, path: str, payload: Payload, size: int, sha256: str) -> Sent:
        full = self._file(path, create=True)
        tmp = full.parent / f".{full.name}.{uuid.uuid4().hex}.part"
        hasher = Hasher()
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                async for chunk in open_payload(payload):
                    hasher.update(chunk)
                    await f.write(chunk)
                await f.flush()
                await anyio.to_thread.run_sync(os.fsync, f.wrapped.fileno())
            hasher.check(str(full), size, sha256)
            await anyio.to_thread.run_sync(os.replace, tmp, full)
            await anyio.to_thread.run_sync(fsync_dir, full.parent)
        except OSError as exc:
            raise PublishFailed(f"cannot write {full}: {exc}") from exc
        finally:
            await anyio.Path(tmp).unlink(missing_ok=True)
        return Sent(hasher.size)

    async def stat(self, path: str) -> int | None:
        full = self._file(path)
        try:
            return full.stat().st_size if full.is_file() else None
        except OSError:
            return None

    async def verify(self, path: str, size: int, sha256: str) -> None:
        full = self._file(path)
        hasher = Hasher()
        try:
            async for chunk in _file_chunks(full, 0):
                hasher.update(chunk)
        except OSError as exc:
            raise PublishFailed(f"cannot read back {full}: {exc}") from exc
        hasher.check(str(full), size, sha256)

    async def delete(self, path: str) -> None:
        full = self._file(path)
        try:
            full.unlink(missing_ok=True)
            parent = full.parent
            while parent != self.base and parent.is_relative_to(self.base):
                if any(parent.iterdir()):
                    break
                parent.rmdir()
                parent = parent.parent
        except OSError as exc:
            raise PublishFailed(f"cannot delete {full}: {exc}") from exc

    async def list(self, prefix: str) -> list[RemoteObject]:
        top = self.base.joinpath(*check_path(prefix)) if prefix else self.base
        if not top.is_dir():
            return []
        self._inside(top)
        found = []
        for p in sorted(top.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                found.append(RemoteObject(p.relative_to(self.base).as_posix(), p.stat().st_size))
        return found

    async def aclose(self) -> None:
        return None


# -- S3 --------------------------------------------------------------------------------------


class S3Target:
    """A bucket (and key prefix) on any S3-compatible server. Objects over one part go up
    as a multipart upload, part by part as the payload streams (aborted on failure, so
    readers never see a partial object). The SHA-256 is kept in the object's metadata
    (``x-amz-meta-sha256``), which :meth:`verify` compares with the size."""

    def __init__(self, config: S3TargetConfig, client: S3Client | None = None) -> None:
        self.config = config
        self.part_size = config.part_size_mib * MIB
        session = None
        if config.access_key_id and config.secret_access_key:
            session = boto3.session.Session(
                aws_access_key_id=config.access_key_id,
                aws_secret_access_key=config.secret_access_key,
            )
        s3 = S3Config(
            bucket=config.bucket,
            endpoint_url=config.endpoint_url,
            region=config.region,
            path_style=config.path_style,
        )
        self.client: S3Client = client or make_client(s3, session=session, max_pool_connections=4)

    def _key(self, path: str) -> str:
        return join(self.config.prefix, "/".join(check_path(path)))

    def remote(self, path: str) -> str:
        return f"s3://{self.config.bucket}/{self._key(path)}"

    async def _call(self, path: str, fn: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(partial(fn, *args, **kw))
        except BOTO_ERRORS as exc:
            mapped = map_error(exc, self.remote(path))
            if isinstance(mapped, NotFound):
                raise
            raise PublishFailed(mapped.message) from exc

    async def _part(
        self, path: str, key: str, upload_id: str, number: int, body: bytes
    ) -> dict[str, Any]:
        """Upload part ``number`` of a multipart upload; its entry for completing it."""
        answer = await self._call(
            path,
            self.client.upload_part,
            Bucket=self.config.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def put(self, path: str, payload: Payload, size: int, sha256: str) -> Sent:
        key, bucket = self._key(path), self.config.bucket
        meta = {"sha256": sha256}
        hasher = Hasher()
        chunks = open_payload(payload)
        buf = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                hasher.update(chunk)
                buf += chunk
                while len(buf) >= self.part_size and hasher.size < size:
                    if upload_id is None:
                        started = await self._call(
                            path,
                            self.client.create_multipart_upload,
                            Bucket=bucket,
                            Key=key,
                            Metadata=meta,
                        )
                        upload_id = started["UploadId"]
                    part, buf = bytes(buf[: self.part_size]), buf[self.part_size :]
                    parts.append(await self._part(path, key, upload_id, len(parts) + 1, part))
            hasher.check(self.remote(path), size, sha256)
            if upload_id is None:
                await self._call(
                    path,
                    self.client.put_object,
                    Bucket=bucket,
                    Key=key,
                    Body=bytes(buf),
                    Metadata=meta,
                )
            else:
                if buf:
                    parts.append(await self._part(path, key, upload_id, len(parts) + 1, bytes(buf)))
                await self._call(
                    path,
                    self.client.complete_multipart_upload,
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                upload_id = None
        finally:
            if upload_id is not None:
                # the bucket's lifecycle rule is the backstop if this fails too
                with anyio.CancelScope(shield=True), contextlib.suppress(IngestdError):
                    await self._call(
                        path,
                        self.client.abort_multipart_upload,
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                    )
        await self.verify(path, size, sha256)
        return Sent(hasher.size)

    async def _head(self, path: str) -> dict[str, Any] | None:
        try:
            head = await self._call(
                path, self.client.head_object, Bucket=self.config.bucket, Key=self._key(path)
            )
        except NotFound:
            return None
        return dict(head)

    async def stat(self, path: str) -> int | None:
        head = await self._head(path)
        return None if head is None else int(head["ContentLength"])

    async def verify(self, path: str, size: int, sha256: str) -> None:
        head = await self._head(path)
        where = self.remote(path)
        if head is None:
            raise PublishFailed(f"{where}: not found after upload")
        if int(head["ContentLength"]) != size:
            raise PublishFailed(f"{where}: holds {head['ContentLength']} bytes, not {size}")
        if head.get("Metadata", {}).get("sha256") != sha256:
            raise PublishFailed(f"{where}: its recorded SHA-256 differs")

    async def delete(self, path: str) -> None:
        await self._call(
            path, self.client.delete_object, Bucket=self.config.bucket, Key=self._key(path)
        )

    async def list(self, prefix: str) -> list[RemoteObject]:
        base = join(self.config.prefix, prefix)
        full = f"{base}/" if base else ""
        strip = len(f"{self.config.prefix}/") if self.config.prefix else 0

        def run() -> list[RemoteObject]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=full
            )
            return [
                RemoteObject(o["Key"][strip:], int(o["Size"]))
                for page in pages
                for o in page.get("Contents", [])
            ]

        return await self._call(prefix or "/", run)

    async def aclose(self) -> None:
        self.client.close()
