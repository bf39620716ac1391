"""Publication targets per owner, and publishing an asset's outputs to them.

What is published: every object of the store under ``renditions/<asset>/`` (streams,
previews, waveforms, archives), never the private master. Object ``renditions/<a>/<rel>``
goes to ``<asset id>/<rel>`` under the target's base. Each object has a
:class:`~ingestd.db.models.Publication` row (size, SHA-256, where, status), written as soon as
the target confirms it, so a publish cut short keeps what it did.

Publishing again is idempotent: an object whose row says ``published`` with the same
SHA-256 and size, and that the target still holds at that size, is not sent again; a changed
object is replaced; an object no longer in the store is removed from the target.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Publication, Rendition, Target, WorkOrder
from ingestd.db.types import new_id, utcnow
from ingestd.domain.states import ACTIVE_ORDER_STATES, AssetStatus
from ingestd.errors import Conflict, InvalidRequest, InvalidState, NotFound
from ingestd.jobs.engine import JobEngine, Ready, emit
from ingestd.jobs.graph import Graph, StepSpec
from ingestd.publish.targets import (
    PathEscapes,
    PublicationTarget,
    PublishFailed,
    TargetOpener,
    TargetPolicy,
    mask_secrets,
    open_target,
    validate_config,
)
from ingestd.storage.base import ObjectStore

STEP_FAMILY = "publish"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$")
Action = Literal["sent", "replaced", "unchanged", "removed"]


def publish_step(target_name: str) -> str:
    return f"{STEP_FAMILY}:{target_name}"


def renditions_prefix(asset_id: str) -> str:
    return f"renditions/{asset_id}/"


class KeyLister(Protocol):
    """An object store that can list keys (the capability publishing needs)."""

    async def list_keys(self, prefix: str) -> list[tuple[str, int]]: ...


async def list_store(store: ObjectStore, prefix: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every object under ``prefix``, sorted by key."""
    lister = getattr(store, "list_keys", None)
    if lister is not None:
        found: list[tuple[str, int]] = await lister(prefix)
        return sorted(found)
    from ingestd.storage.local import LocalStore
    from ingestd.storage.s3 import S3Store

    if isinstance(store, LocalStore):
        top = store.path_for(prefix.rstrip("/"))

        def walk() -> list[tuple[str, int]]:
            if not top.is_dir():
                return []
            return sorted(
                (p.relative_to(store.objects).as_posix(), p.stat().st_size)
                for p in top.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )

        return await anyio.to_thread.run_sync(walk)
    if isinstance(store, S3Store):
        base = store.config.prefix

        def pages() -> list[tuple[str, int]]:
            paginator = store.client.get_paginator("list_objects_v2")
            return sorted(
                (o["Key"][len(base) :], int(o["Size"]))
                for page in paginator.paginate(Bucket=store.bucket, Prefix=base + prefix)
                for o in page.get("Contents", [])
            )

        return await anyio.to_thread.run_sync(pages)
    raise InvalidRequest(f"the object store {type(store).__name__} cannot list its objects")


@dataclass(frozen=True)
class TargetView:
    id: str
    name: str
    kind: str
    config: dict[str, Any]  # secrets masked
    enabled: bool
    created_at: datetime

    @classmethod
    def of(cls, t: Target) -> TargetView:
        return cls(t.id, t.name, t.kind, mask_secrets(t.config), t.enabled, t.created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "config": self.config,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class ObjectResult:
    key: str
    remote: str
    size: int | None
    sha256: str | None
    action: Action
    bytes_sent: int = 0
    resumes: int = 0


@dataclass(frozen=True)
class PublishReport:
    asset_id: str
    target: str
    objects: list[ObjectResult] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(1 for o in self.objects if o.action == action)

    def to_dict(self) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id,
            "target": self.target,
            "sent": self.count("sent") + self.count("replaced"),
            "unchanged": self.count("unchanged"),
            "removed": self.count("removed"),
            "bytes_sent": sum(o.bytes_sent for o in self.objects),
            "objects": [o.__dict__ for o in self.objects],
        }


@dataclass(frozen=True)
class _TargetRef:
    id: str
    name: str
    kind: str
    config: dict[str, Any]
    enabled: bool


@dataclass(frozen=True)
class _Row:
    status: str
    size: int | None
    sha256: str | None


class PublicationService:
    """Targets (owner-scoped) and publishing assets to them.

    ``openers`` builds a :class:`PublicationTarget` from a config, per kind; the default
    knows ``directory``, ``s3`` and ``ftp``. ``engine`` is needed only to enqueue publish
    orders (:meth:`enqueue`)."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        *,
        policy: TargetPolicy,
        engine: JobEngine | None = None,
        openers: Mapping[str, TargetOpener] | None = None,
        max_attempts: int = 5,
    ) -> None:
        self.db = db
        self.store = store
        self.policy = policy
        self.engine = engine
        self.max_attempts = max_attempts
        self.openers: dict[str, TargetOpener] = {
            kind: partial(open_target, kind, policy=policy) for kind in ("directory", "s3", "ftp")
        }
        self.openers.update(openers or {})

    # -- targets ---------------------------------------------------------------------------

    async def create_target(
        self,
        owner_id: str,
        name: str,
        kind: str,
        config: Mapping[str, Any],
        *,
        enabled: bool = True,
    ) -> TargetView:
        if not NAME.match(name):
            raise InvalidRequest(
                f"invalid target name {name!r}: letters, digits, '.', '_', '-'; 63 at most"
            )
        clean = validate_config(kind, config, self.policy)

        def insert(session: Session) -> TargetView:
            row = Target(
                id=new_id("tg"),
                owner_id=owner_id,
                name=name,
                kind=kind,
                config=clean,
                enabled=enabled,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return TargetView.of(row)

        try:
            return await self.db.run(insert)
        except IntegrityError as exc:
            raise Conflict(f"a target named {name!r} exists already") from exc

    async def list_targets(self, owner_id: str) -> list[TargetView]:
        def query(session: Session) -> list[TargetView]:
            rows = session.scalars(
                select(Target).where(Target.owner_id == owner_id).order_by(Target.name)
            )
            return [TargetView.of(t) for t in rows]

        return await self.db.run(query)

    async def get_target(self, owner_id: str, name: str) -> TargetView:
        return await self.db.run(lambda s: TargetView.of(_target(s, owner_id, name)))

    async def delete_target(self, owner_id: str, name: str) -> None:
        """Forget the target and its publication rows; what it holds stays there."""

        def remove(session: Session) -> None:
            session.delete(_target(session, owner_id, name))

        await self.db.run(remove)

    # -- publishing --------------------------------------------------------------------------

    def _open(self, ref: _TargetRef) -> PublicationTarget:
        opener = self.openers.get(ref.kind)
        if opener is None:
            raise InvalidRequest(f"targets of kind {ref.kind!r} cannot be published to here")
        return opener(ref.config)

    def _refs(self, owner_id: str, asset_id: str, name: str) -> Callable[[Session], _TargetRef]:
        def load(session: Session) -> _TargetRef:
            _asset(session, owner_id, asset_id)
            t = _target(session, owner_id, name)
            return _TargetRef(t.id, t.name, t.kind, dict(t.config), t.enabled)

        return load

    async def _rows(self, target_id: str, asset_id: str) -> dict[str, _Row]:
        def query(session: Session) -> dict[str, _Row]:
            rows = session.scalars(
                select(Publication).where(
                    Publication.target_id == target_id, Publication.asset_id == asset_id
                )
            )
            return {p.key: _Row(p.status, p.size, p.sha256) for p in rows}

        return await self.db.run(query)

    async def _objects(self, asset_id: str) -> list[tuple[str, int]]:
        """The asset's published set: the store's objects under its renditions prefix,
        plus any rendition row's key under it that a listing missed."""
        prefix = renditions_prefix(asset_id)
        found = dict(await list_store(self.store, prefix))
        keys = await self.db.run(
            lambda s: list(
                s.scalars(select(Rendition.storage_key).where(Rendition.asset_id == asset_id))
            )
        )
        for key in keys:
            if key.startswith(prefix) and key not in found:
                try:
                    found[key] = await self.store.size(key)
                except NotFound:
                    continue
        return sorted(found.items())

    async def _hash(self, key: str) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        async for chunk in self.store.read(key):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    async def _record(
        self,
        ref: _TargetRef,
        asset_id: str,
        key: str,
        remote: str,
        *,
        status: str,
        size: int | None = None,
        sha256: str | None = None,
        error: str | None = None,
    ) -> None:
        def upsert(session: Session) -> None:
            row = session.scalars(
                select(Publication).where(
                    Publication.target_id == ref.id,
                    Publication.asset_id == asset_id,
                    Publication.key == key,
                )
            ).first()
            if row is None:
                row = Publication(id=new_id("pb"), target_id=ref.id, asset_id=asset_id, key=key)
                session.add(row)
            row.remote = remote
            row.status = status
            row.error = error
            row.updated_at = utcnow()
            if status == "published":
                row.size, row.sha256, row.published_at = size, sha256, utcnow()

        await self.db.run(upsert)

    async def publish(self, owner_id: str, asset_id: str, target_name: str) -> PublishReport:
        """Copy the asset's outputs to the target; see the module docstring. Raises NotFound
        (asset or target of another owner too), InvalidState (target disabled) and
        :class:`PublishFailed` (the target's reason; the object's row says ``failed``)."""
        ref = await self.db.run(self._refs(owner_id, asset_id, target_name))
        if not ref.enabled:
            raise InvalidState(f"target {ref.name!r} is disabled")
        prefix = renditions_prefix(asset_id)
        objects = await self._objects(asset_id)
        rows = await self._rows(ref.id, asset_id)
        report = PublishReport(asset_id, ref.name)
        target = self._open(ref)
        try:
            for key, _ in objects:
                path = f"{asset_id}/{key[len(prefix) :]}"
                remote = target.remote(path)
                sha256, size = await self._hash(key)
                prev = rows.get(key)
                if (
                    prev is not None
                    and prev.status == "published"
                    and (prev.sha256, prev.size) == (sha256, size)
                    and await self._stat(ref, target, path) == size
                ):
                    report.objects.append(ObjectResult(key, remote, size, sha256, "unchanged"))
                    continue
                try:
                    sent = await target.put(path, partial(self.store.read, key), size, sha256)
                except (PublishFailed, PathEscapes) as exc:
                    await self._record(
                        ref, asset_id, key, remote, status="failed", error=exc.message
                    )
                    raise PublishFailed(
                        f"target {ref.name}: {exc.message}", target=ref.name, key=key
                    ) from exc
                await self._record(
                    ref, asset_id, key, remote, status="published", size=size, sha256=sha256
                )
                action: Action = "replaced" if prev is not None else "sent"
                report.objects.append(
                    ObjectResult(key, remote, size, sha256, action, sent.bytes_sent, sent.resumes)
                )
            current = {key for key, _ in objects}
            for key, prev in rows.items():
                if key not in current and prev.status != "removed":
                    report.objects.append(await self._remove(ref, target, asset_id, key))
        finally:
            await target.aclose()
        await self.db.run(
            lambda s: emit(
                s,
                owner_id,
                asset_id,
                "asset.published",
                target=ref.name,
                sent=report.count("sent") + report.count("replaced"),
                unchanged=report.count("unchanged"),
                removed=report.count("removed"),
            )
        )
        return report

    async def _stat(self, ref: _TargetRef, target: PublicationTarget, path: str) -> int | None:
        try:
            return await target.stat(path)
        except PublishFailed as exc:
            raise PublishFailed(f"target {ref.name}: {exc.message}", target=ref.name) from exc

    async def _remove(
        self, ref: _TargetRef, target: PublicationTarget, asset_id: str, key: str
    ) -> ObjectResult:
        path = f"{asset_id}/{key[len(renditions_prefix(asset_id)) :]}"
        remote = target.remote(path)
        try:
            await target.delete(path)
        except PublishFailed as exc:
            raise PublishFailed(
                f"target {ref.name}: {exc.message}", target=ref.name, key=key
            ) from exc
        await self._record(ref, asset_id, key, remote, status="removed")
        return ObjectResult(key, remote, None, None, "removed")

    async def unpublish(self, owner_id: str, asset_id: str, target_name: str) -> PublishReport:
        """Remove the asset's objects from the target; their rows say ``removed``."""
        ref = await self.db.run(self._refs(owner_id, asset_id, target_name))
        rows = await self._rows(ref.id, asset_id)
        report = PublishReport(asset_id, ref.name)
        target = self._open(ref)
        try:
            for key, row in sorted(rows.items()):
                if row.status != "removed":
                    report.objects.append(await self._remove(ref, target, asset_id, key))
        finally:
            await target.aclose()
        await self.db.run(
            lambda s: emit(
                s,
                owner_id,
                asset_id,
                "asset.unpublished",
                target=ref.name,
                removed=report.count("removed"),
            )
        )
        return report

    async def publications(self, owner_id: str, asset_id: str) -> list[dict[str, Any]]:
        def query(session: Session) -> list[dict[str, Any]]:
            _asset(session, owner_id, asset_id)
            rows = session.execute(
                select(Publication, Target.name, Target.kind)
                .join(Target, Target.id == Publication.target_id)
                .where(Publication.asset_id == asset_id, Target.owner_id == owner_id)
                .order_by(Target.name, Publication.key)
            )
            return [
                {
                    "target": name,
                    "kind": kind,
                    "key": p.key,
                    "remote": p.remote,
                    "size": p.size,
                    "sha256": p.sha256,
                    "status": p.status,
                    "error": p.error,
                    "published_at": _iso(p.published_at),
                    "updated_at": _iso(p.updated_at),
                }
                for p, name, kind in rows
            ]

        return await self.db.run(query)

    # -- work orders -------------------------------------------------------------------------

    def enqueue(self, owner_id: str, asset_id: str, target_name: str) -> tuple[str, list[Ready]]:
        """Add a ``publish:<target>`` order for a ready asset (one active order at most: an
        order already waiting is returned). Returns its id and what to announce after the
        commit. Raises NotFound, InvalidState (asset not ready, target disabled)."""
        if self.engine is None:
            raise InvalidState("this service has no job engine to enqueue publications")
        engine = self.engine
        step = publish_step(target_name)
        with self.db.transaction() as session:
            asset = _asset(session, owner_id, asset_id, lock=True)
            target = _target(session, owner_id, target_name)
            if not target.enabled:
                raise InvalidState(f"target {target_name!r} is disabled")
            if target.kind not in self.openers:
                raise InvalidRequest(
                    f"target {target_name!r} is a {target.kind} target; it is not published "
                    "with publish orders"
                )
            if asset.status != AssetStatus.READY.value:
                raise InvalidState(
                    f"asset {asset_id} is {asset.status}; it can be published once ready"
                )
            active = session.scalars(
                select(WorkOrder.id).where(
                    WorkOrder.asset_id == asset_id,
                    WorkOrder.step == step,
                    WorkOrder.state.in_([s.value for s in ACTIVE_ORDER_STATES]),
                )
            ).first()
            if active is not None:
                return active, []
            spec = StepSpec(step, queue="default", max_attempts=self.max_attempts, weight=0.5)
            ready = engine.enqueue_graph(session, asset_id, Graph((spec,)), force=True)
            order_id = session.scalars(
                select(WorkOrder.id).where(
                    WorkOrder.asset_id == asset_id,
                    WorkOrder.step == step,
                    WorkOrder.state.in_([s.value for s in ACTIVE_ORDER_STATES]),
                )
            ).one()
            emit(session, owner_id, asset_id, "publish.requested", target=target_name)
            return order_id, ready


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _asset(session: Session, owner_id: str, asset_id: str, *, lock: bool = False) -> Asset:
    asset = session.get(Asset, asset_id, with_for_update=lock)
    if asset is None or asset.owner_id != owner_id:
        raise NotFound(f"asset {asset_id} not found")
    return asset


def _target(session: Session, owner_id: str, name: str) -> Target:
    target = session.scalars(
        select(Target).where(Target.owner_id == owner_id, Target.name == name)
    ).first()
    if target is None:
        raise NotFound(f"target {name!r} not found")
    return target


def default_policy(data_dir: Path, extra_roots: list[Path] | None = None) -> TargetPolicy:
    """Directory targets under ``<data_dir>/published`` (and ``extra_roots``)."""
    return TargetPolicy(
        directory_roots=(Path(os.path.realpath(data_dir / "published")), *(extra_roots or []))
    )
