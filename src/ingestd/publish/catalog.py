"""Catalog targets: an external HTTP catalog kept in step with an owner's ready assets.

A catalog holds one item per asset, named by an external id (by default the asset id) and
made of fields mapped from the asset. Two ways keep it in step: the ``catalog:<target>``
step pushes an asset once its processing is done (when the target's ``auto`` is true), and
:meth:`CatalogSync.sync` reconciles a whole target with the local database as the truth.

The catalog HTTP API (put an adapter in front of any catalog that speaks it)::

    Authorization: Bearer <api_key>                      on every request
    PUT    {url}/items/{external_id}   JSON object of fields   -> 200 or 201 (upsert)
    DELETE {url}/items/{external_id}                           -> 204, or 404 (already gone)
    GET    {url}/items?page=N&page_size=M                      -> 200
           {"items": [{"id": "<external_id>", <fields>...}], "next_page": N + 1 | null}

Pages count from 1. ``external_id`` is URL-quoted in the path. A PUT replaces the item's
fields. 401/403 mean a wrong key; other 4xx reject the request (the body says why);
5xx, timeouts and refused connections are retried a few times with backoff within one
call (``retries``, ``backoff_s``). The job engine does the durable retries of the push step.

A target's ``config``:

    url          base URL (required)
    api_key      sent as a bearer token (required)
    mapping      catalog field -> asset field path (``title``, ``sha256``, ``created_at``,
                 ``meta.fits.keywords.INSTRUME``...); default :data:`DEFAULT_MAPPING`. Fields whose
                 value is missing are left out of the item.
    id_field     the asset field path that gives the external id; default ``id``
    kinds        asset kinds to keep in the catalog; default all
    page_size    items per GET page (default 100); timeout_s per request (default 10)
    retries      extra tries per call on 5xx/timeouts (default 2); backoff_s (default 0.5)
    auto         push each asset when its processing is done (default false)
    max_attempts attempts of the push step in the job engine (default 5)
    required     a push that still fails after the last attempt fails the asset too
                 (default false: the asset is ready, the failure is on the publication)

Each asset's item is one :class:`Publication` row (key ``catalog``, remote = external id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Owner, Publication, Target, WorkOrder
from ingestd.db.types import new_id, utcnow
from ingestd.domain.states import AssetStatus
from ingestd.errors import ConfigError, IngestdError, InvalidState, NotFound
from ingestd.jobs.engine import emit
from ingestd.jobs.graph import StepSpec
from ingestd.jobs.worker import Outcome, Step, StepContext

__all__ = [
    "DEFAULT_MAPPING",
    "KIND",
    "STEP_FAMILY",
    "CatalogClient",
    "CatalogConfig",
    "CatalogError",
    "CatalogRejected",
    "CatalogSteps",
    "CatalogSync",
    "CatalogUnauthorized",
    "CatalogUnavailable",
    "LocalItem",
    "SyncPlan",
    "SyncRefused",
    "SyncReport",
    "catalog_step_specs",
    "item_for",
]

KIND = "catalog"  # Target.kind
PUBLICATION_KEY = "catalog"  # Publication.key: one item per asset
STEP_FAMILY = "catalog:"
STEP_NAME_MAX = 100  # WorkOrder.step

DEFAULT_MAPPING: Mapping[str, str] = {
    "title": "title",
    "description": "description",
    "kind": "kind",
    "checksum": "sha256",
    "created": "created_at",
    "telescope": "meta.fits.keywords.TELESCOP",
    "instrument": "meta.fits.keywords.INSTRUME",
    "object": "meta.fits.keywords.OBJECT",
    "date_obs": "meta.fits.keywords.DATE-OBS",
}
# what a field path may start with ("metadata" is the column's name for ``meta``)
ASSET_FIELDS = frozenset(
    {"id", "owner_id", "identity", "kind", "title", "description", "status", "sha256"}
    | {"created_at", "updated_at", "meta", "metadata"}
)

log = logging.getLogger("ingestd.publish.catalog")


# -- errors ---------------------------------------------------------------------------


class CatalogError(IngestdError):
    """The catalog did not accept the request."""

    code = "catalog_error"


class CatalogUnavailable(CatalogError):
    """The catalog is unreachable, too slow, or failing (5xx); worth retrying later."""

    code = "catalog_unavailable"


class CatalogUnauthorized(CatalogError):
    """The catalog refused the target's API key."""

    code = "catalog_unauthorized"


class CatalogRejected(CatalogError):
    """The catalog rejected the request (4xx) or answered something not in the contract."""

    code = "catalog_rejected"


class SyncRefused(CatalogError):
    """The sync would delete more items than allowed; nothing was changed."""

    code = "catalog_sync_refused"

    def __init__(self, message: str, report: SyncReport) -> None:
        super().__init__(message, deletes=len(report.plan.delete))
        self.report = report  # the plan that was refused


# -- configuration and field mapping ---------------------------------------------------


@dataclass(frozen=True)
class CatalogConfig:
    url: str
    api_key: str
    mapping: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MAPPING))
    id_field: str = "id"
    kinds: frozenset[str] | None = None
    page_size: int = 100
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    auto: bool = False
    max_attempts: int = 5
    required: bool = False

    @classmethod
    def parse(cls, name: str, config: Mapping[str, Any]) -> CatalogConfig:
        """Check a target's config; raises ConfigError naming the target and the key."""

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"catalog target {name!r}: {key} {why}", target=name, key=key)

        url = config.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise bad("url", "must be an http(s) URL")
        api_key = config.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            raise bad("api_key", "is required")
        mapping = config.get("mapping", DEFAULT_MAPPING)
        if not isinstance(mapping, Mapping) or not mapping:
            raise bad("mapping", "must be a non-empty object of catalog field -> asset field")
        for key, path in mapping.items():
            if key == "id" or not isinstance(path, str) or not _valid_path(path):
                raise bad("mapping", f"has an invalid entry {key!r}: {path!r}")
        id_field = config.get("id_field", "id")
        if not isinstance(id_field, str) or not _valid_path(id_field):
            raise bad("id_field", "must be an asset field path")
        kinds = config.get("kinds")
        if kinds is not None and (
            not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds)
        ):
            raise bad("kinds", "must be a list of asset kinds")
        numbers: dict[str, Any] = {}
        for key, kind, low in (
            ("page_size", int, 1),
            ("timeout_s", float, 0.001),
            ("retries", int, 0),
            ("backoff_s", float, 0.0),
            ("max_attempts", int, 1),
        ):
            if key in config:
                value = config[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise bad(key, "must be a number")
                if kind is int and value != int(value):
                    raise bad(key, "must be a whole number")
                if value < low:
                    raise bad(key, f"must be at least {low}")
                numbers[key] = kind(value)
        for key in ("auto", "required"):
            if not isinstance(config.get(key, False), bool):
                raise bad(key, "must be true or false")
        return cls(
            url=url.rstrip("/"),
            api_key=api_key,
            mapping=dict(mapping),
            id_field=id_field,
            kinds=frozenset(kinds) if kinds is not None else None,
            auto=bool(config.get("auto", False)),
            required=bool(config.get("required", False)),
            **numbers,
        )

    def includes(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def _valid_path(path: str) -> bool:
    parts = path.split(".")
    return parts[0] in ASSET_FIELDS and all(parts)


def asset_document(asset: Asset) -> dict[str, Any]:
    """The asset as plain values, for field paths to look into."""
    return {
        "id": asset.id,
        "owner_id": asset.owner_id,
        "identity": asset.identity,
        "kind": asset.kind,
        "title": asset.title,
        "description": asset.description,
        "status": asset.status,
        "sha256": asset.sha256,
        "created_at": asset.created_at,
        "updated_at": asset.updated_at,
        "meta": asset.meta or {},
    }


def resolve(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``meta.fits.keywords.INSTRUME``), JSON-ready; None if absent."""
    head, *rest = path.split(".")
    value: Any = document.get("meta" if head == "metadata" else head)
    for part in rest:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class LocalItem:
    """What the catalog should hold for one asset."""

    asset_id: str
    external_id: str
    fields: dict[str, Any]
    sha256: str | None = None


def item_for(config: CatalogConfig, document: Mapping[str, Any]) -> LocalItem:
    """The catalog item of an asset; raises CatalogRejected if it has no external id."""
    external = resolve(document, config.id_field)
    if external is None or external == "":
        raise CatalogRejected(
            f"asset {document['id']} has no value for id_field {config.id_field!r}"
        )
    fields = {}
    for name, path in config.mapping.items():
        value = resolve(document, path)
        if value is not None:
            fields[name] = value
    return LocalItem(document["id"], str(external), fields, document.get("sha256"))


def differs(item: LocalItem, remote: Mapping[str, Any], mapping: Mapping[str, str]) -> bool:
    """Whether a remote item's mapped fields differ from the local ones (extra remote fields
    that the mapping does not name are the catalog's own business)."""
    return any(item.fields.get(name) != remote.get(name) for name in mapping)


# -- the HTTP client ---------------------------------------------------------------------


class CatalogClient:
    """The catalog HTTP API (see the module docstring); use as ``async with``."""

    def __init__(
        self,
        config: CatalogConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=config.timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> CatalogClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def put(self, item: LocalItem) -> None:
        await self._request("PUT", _item_path(item.external_id), json=item.fields)

    async def delete(self, external_id: str) -> bool:
        """Remove an item; False if the catalog did not have it."""
        response = await self._request("DELETE", _item_path(external_id), missing_ok=True)
        return response.status_code != 404

    async def items(self) -> AsyncIterator[dict[str, Any]]:
        """Every item of the catalog, page by page."""
        page: int | None = 1
        while page is not None:
            params = {"page": page, "page_size": self.config.page_size}
            response = await self._request("GET", "/items", params=params)
            try:
                body = response.json()
                items, following = body["items"], body.get("next_page")
            except (ValueError, TypeError, KeyError) as exc:
                raise CatalogRejected(
                    f"catalog {self.config.url} answered GET /items with no item list"
                ) from exc
            if not isinstance(items, list) or not (
                following is None or (isinstance(following, int) and following > page)
            ):
                raise CatalogRejected(f"catalog {self.config.url} answered an invalid item page")
            for item in items:
                if not isinstance(item, dict) or item.get("id") is None:
                    raise CatalogRejected(f"catalog {self.config.url} listed an item with no id")
                yield item
            page = following

    async def _request(
        self, method: str, path: str, *, missing_ok: bool = False, **kw: Any
    ) -> httpx.Response:
        """One call, tried again on 5xx, timeouts and refused connections."""
        for attempt in range(self.config.retries + 1):
            if attempt:
                await self._sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                return await self._send(method, path, missing_ok=missing_ok, **kw)
            except CatalogUnavailable:
                if attempt == self.config.retries:
                    raise
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, *, missing_ok: bool, **kw: Any) -> httpx.Response:
        where = f"{method} {self.config.url}{path}"
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise CatalogUnavailable(
                f"{where}: no answer within {self.config.timeout_s:g} s", url=self.config.url
            ) from exc
        except httpx.TransportError as exc:
            raise CatalogUnavailable(
                f"{where}: catalog unreachable ({type(exc).__name__}: {exc})",
                url=self.config.url,
            ) from exc
        status = response.status_code
        if status >= 500:
            raise CatalogUnavailable(
                f"{where}: catalog answered {status}: {_reason(response)}", status=status
            )
        if status in (401, 403):
            raise CatalogUnauthorized(
                f"{where}: catalog refused the API key ({status}: {_reason(response)})",
                status=status,
            )
        if status >= 400 and not (missing_ok and status == 404):
            raise CatalogRejected(
                f"{where}: catalog answered {status}: {_reason(response)}", status=status
            )
        return response


def _item_path(external_id: str) -> str:
    return f"/items/{quote(external_id, safe='')}"


def _reason(response: httpx.Response) -> str:
    """The catalog's own words, short."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return response.text.strip()[:300] or response.reason_phrase


# -- rows ------------------------------------------------------------------------------


def record(
    session: Session,
    target_id: str,
    item: LocalItem,
    status: str,
    error: str | None = None,
    *,
    keep_published: bool = False,
) -> None:
    """Write the asset's Publication row for this target. With ``keep_published``, a row
    already marked published is left alone (its published_at stands)."""
    row = session.scalars(
        select(Publication).where(
            Publication.target_id == target_id,
            Publication.asset_id == item.asset_id,
            Publication.key == PUBLICATION_KEY,
        )
    ).first()
    if row is None:
        row = Publication(
            id=new_id("pub"), target_id=target_id, asset_id=item.asset_id, key=PUBLICATION_KEY
        )
        session.add(row)
    elif keep_published and row.status == "published" and row.remote == item.external_id:
        return
    row.remote = item.external_id
    row.status = status
    row.error = error
    if status == "published":
        row.sha256 = item.sha256
        row.published_at = utcnow()


def record_removed(session: Session, target_id: str, external_id: str) -> None:
    for row in session.scalars(
        select(Publication).where(
            Publication.target_id == target_id,
            Publication.key == PUBLICATION_KEY,
            Publication.remote == external_id,
        )
    ):
        row.status = "removed"
        row.error = None


def _removal(target_id: str, external_id: str) -> Callable[[Session], None]:
    return lambda session: record_removed(session, target_id, external_id)


@dataclass(frozen=True)
class LoadedTarget:
    id: str
    name: str
    owner_id: str
    config: CatalogConfig


def load_target(session: Session, owner_id: str, name: str) -> LoadedTarget:
    """An enabled catalog target of the owner; raises NotFound, ConfigError, InvalidState."""
    target = session.scalars(
        select(Target).where(Target.owner_id == owner_id, Target.name == name)
    ).first()
    if target is None:
        raise NotFound(f"no target named {name!r}")
    if target.kind != KIND:
        raise ConfigError(f"target {name!r} is a {target.kind} target, not a catalog")
    if not target.enabled:
        raise InvalidState(f"target {name!r} is disabled")
    return LoadedTarget(target.id, target.name, owner_id, CatalogConfig.parse(name, target.config))


# -- reconciliation --------------------------------------------------------------------


@dataclass
class SyncPlan:
    add: list[LocalItem] = field(default_factory=list)
    update: list[LocalItem] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # external ids
    unchanged: list[LocalItem] = field(default_factory=list)
    stale: list[LocalItem] = field(default_factory=list)  # differ; --update-existing not asked
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (asset id, why)


@dataclass
class SyncReport:
    target: str
    plan: SyncPlan
    dry_run: bool
    # what was done (in a dry run: what would be)
    added: int = 0
    updated: int = 0
    deleted: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    refusal: str | None = None  # a dry run that a real run would refuse (--max-deletes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "dry_run": self.dry_run,
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": len(self.plan.unchanged),
            "stale": len(self.plan.stale),
            "failed": self.failed,
            "skipped": [{"asset": a, "reason": r} for a, r in self.plan.skipped],
            "refusal": self.refusal,
            "plan": {
                "add": [i.external_id for i in self.plan.add],
                "update": [i.external_id for i in self.plan.update],
                "delete": list(self.plan.delete),
            },
        }


class CatalogSync:
    """Reconcile a catalog target with the database, and push single assets."""

    def __init__(self, db: Database, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.db = db
        self.transport = transport

    def client(self, config: CatalogConfig) -> CatalogClient:
        return CatalogClient(config, transport=self.transport)

    async def sync(
        self,
        owner_name: str,
        target_name: str,
        *,
        dry_run: bool = False,
        update_existing: bool = False,
        max_deletes: int | None = None,
    ) -> SyncReport:
        """Make the catalog hold exactly the owner's ready assets (of the target's kinds).

        Adds first, then updates, then deletes, recording each on its Publication row as
        it happens. Raises SyncRefused (before any change) when more than ``max_deletes``
        items would go, CatalogUnauthorized / CatalogUnavailable when the catalog cannot
        be used; an item the catalog rejects is reported in ``failed`` and the rest go on.
        """
        target, local, skipped = await self.db.run(
            lambda s: self._local_items(s, owner_name, target_name)
        )
        async with self.client(target.config) as client:
            remote = {str(item["id"]): item async for item in client.items()}
            plan = self._plan(target.config, local, remote, update_existing)
            plan.skipped = skipped
            report = SyncReport(target.name, plan, dry_run)
            if max_deletes is not None and len(plan.delete) > max_deletes:
                refusal = (
                    f"catalog sync of {target.name!r} would delete {len(plan.delete)} "
                    f"item{'' if len(plan.delete) == 1 else 's'}, "
                    f"more than --max-deletes {max_deletes}; nothing was changed"
                )
                report.refusal = refusal
                if not dry_run:
                    raise SyncRefused(refusal, report)
            if dry_run:
                report.added, report.updated = len(plan.add), len(plan.update)
                report.deleted = len(plan.delete)
                return report
            await self._apply(client, target, plan, report)
        return report

    def _local_items(
        self, session: Session, owner_name: str, target_name: str
    ) -> tuple[LoadedTarget, list[LocalItem], list[tuple[str, str]]]:
        owner = session.scalars(select(Owner.id).where(Owner.name == owner_name)).first()
        if owner is None:  # never an empty set of assets: that would empty the catalog
            raise NotFound(f"no owner named {owner_name!r}")
        target = load_target(session, owner, target_name)
        query = (
            select(Asset)
            .where(Asset.owner_id == owner, Asset.status == AssetStatus.READY.value)
            .order_by(Asset.created_at, Asset.id)
        )
        if target.config.kinds is not None:
            query = query.where(Asset.kind.in_(sorted(target.config.kinds)))
        items: dict[str, LocalItem] = {}
        skipped: list[tuple[str, str]] = []
        for asset in session.scalars(query):
            try:
                item = item_for(target.config, asset_document(asset))
            except CatalogRejected as exc:
                skipped.append((asset.id, exc.message))
                continue
            first = items.get(item.external_id)
            if first is not None:  # the oldest asset keeps the item
                skipped.append(
                    (asset.id, f"external id {item.external_id!r} is {first.asset_id}'s")
                )
                continue
            items[item.external_id] = item
        return target, list(items.values()), skipped

    @staticmethod
    def _plan(
        config: CatalogConfig,
        local: Sequence[LocalItem],
        remote: Mapping[str, Mapping[str, Any]],
        update_existing: bool,
    ) -> SyncPlan:
        plan = SyncPlan()
        for item in local:
            there = remote.get(item.external_id)
            if there is None:
                plan.add.append(item)
            elif not differs(item, there, config.mapping):
                plan.unchanged.append(item)
            elif update_existing:
                plan.update.append(item)
            else:
                plan.stale.append(item)
        wanted = {i.external_id for i in local}
        plan.delete = sorted(k for k in remote if k not in wanted)
        return plan

    async def _apply(
        self, client: CatalogClient, target: LoadedTarget, plan: SyncPlan, report: SyncReport
    ) -> None:
        for op, items in (("add", plan.add), ("update", plan.update)):
            for item in items:
                try:
                    await client.put(item)
                except CatalogRejected as exc:
                    await self._record(target.id, item, "failed", exc.message)
                    report.failed.append({"id": item.external_id, "op": op, "error": exc.message})
                    continue
                await self._record(target.id, item, "published")
                if op == "add":
                    report.added += 1
                else:
                    report.updated += 1
        have = [*plan.unchanged, *plan.stale]

        def mark_published(session: Session) -> None:  # the catalog has them: say so
            for item in have:
                record(session, target.id, item, "published", keep_published=True)

        await self.db.run(mark_published)
        for external_id in plan.delete:
            try:
                await client.delete(external_id)
            except CatalogRejected as exc:
                report.failed.append({"id": external_id, "op": "delete", "error": exc.message})
                continue
            await self.db.run(_removal(target.id, external_id))
            report.deleted += 1

    async def _record(
        self,
        target_id: str,
        item: LocalItem,
        status: str,
        error: str | None = None,
        *,
        keep_published: bool = False,
    ) -> None:
        await self.db.run(
            lambda s: record(s, target_id, item, status, error, keep_published=keep_published)
        )

    async def push(self, asset_id: str, target_name: str) -> LocalItem:
        """Send one ready asset to a catalog target of its owner now (``submit`` by hand);
        records the Publication row either way and raises the catalog's error."""

        def load(session: Session) -> tuple[LoadedTarget, LocalItem]:
            asset = session.get(Asset, asset_id)
            if asset is None:
                raise NotFound(f"asset {asset_id} not found")
            if asset.status != AssetStatus.READY.value:
                raise InvalidState(f"asset {asset_id} is {asset.status}, not ready")
            target = load_target(session, asset.owner_id, target_name)
            if not target.config.includes(asset.kind):
                raise InvalidState(
                    f"target {target_name!r} does not take {asset.kind} assets "
                    f"(kinds: {', '.join(sorted(target.config.kinds or ()))})"
                )
            return target, item_for(target.config, asset_document(asset))

        target, item = await self.db.run(load)
        try:
            async with self.client(target.config) as client:
                await client.put(item)
        except CatalogError as exc:
            await self._record(target.id, item, "failed", exc.message)
            raise
        await self._record(target.id, item, "published")
        return item


# -- the push step ---------------------------------------------------------------------


def catalog_step_specs(
    session: Session, owner_id: str, kind: str, *, after: Sequence[str] = ()
) -> tuple[StepSpec, ...]:
    """A ``catalog:<name>`` step for each enabled catalog target of the owner with
    ``auto`` true that takes assets of ``kind``; each runs after the steps ``after``.

    A target whose config is invalid is left out (and logged): it must not stop the
    asset's processing; ``ingestd catalog sync`` reports the error.
    """
    specs = []
    targets = session.scalars(
        select(Target)
        .where(Target.owner_id == owner_id, Target.kind == KIND, Target.enabled.is_(True))
        .order_by(Target.name)
    )
    for target in targets:
        name = f"{STEP_FAMILY}{target.name}"
        try:
            config = CatalogConfig.parse(target.name, target.config)
        except ConfigError as exc:
            log.warning("%s; no catalog push", exc.message)
            continue
        if not config.auto or not config.includes(kind):
            continue
        if len(name) > STEP_NAME_MAX:
            log.warning("catalog target name %r is too long for a step name", target.name)
            continue
        specs.append(
            StepSpec(
                name,
                depends_on=tuple(after),
                queue="default",
                max_attempts=config.max_attempts,
                weight=0.1,
                params={"target_id": target.id},
            )
        )
    return tuple(specs)


@dataclass(frozen=True)
class _PushJob:
    target: LoadedTarget
    item: LocalItem


class CatalogSteps:
    """The ``catalog:`` step family: push the asset's item to the target in the step name.

    A failure the catalog may recover from (5xx, timeout, unreachable) is raised while
    attempts remain, so the job engine retries with backoff. On the last attempt, or at
    once for a failure retrying cannot cure (401, another 4xx, a bad config), the reason
    goes on the Publication row (status ``failed``) and on the work order, and a
    ``publication.failed`` event is written; the step then succeeds, so the asset is
    ready: its outputs are fine, and the next ``catalog sync`` adds the missing item. A
    target with ``required: true`` raises instead, so the engine fails the asset.
    """

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport

    def steps(self) -> dict[str, Step]:
        return {STEP_FAMILY: Step(self.push, timeout_s=None)}

    async def push(self, ctx: StepContext) -> Outcome:
        claim = ctx.claim
        name = claim.step.split(":", 1)[1]
        target_id = claim.params.get("target_id")

        def load(session: Session) -> _PushJob | str:
            asset = session.get_one(Asset, claim.asset_id)
            target = session.get(Target, target_id) if isinstance(target_id, str) else None
            if target is None:
                target = session.scalars(
                    select(Target).where(Target.owner_id == asset.owner_id, Target.name == name)
                ).first()
            if target is None or target.kind != KIND:
                return f"no catalog target {name!r}"
            if not target.enabled:
                return f"target {name!r} is disabled"
            loaded = LoadedTarget(
                target.id, target.name, asset.owner_id, CatalogConfig.parse(name, target.config)
            )
            if not loaded.config.includes(asset.kind):
                return f"target {name!r} does not take {asset.kind} assets"
            return _PushJob(loaded, item_for(loaded.config, asset_document(asset)))

        try:
            job = await ctx.read(load)
        except (ConfigError, CatalogRejected) as exc:
            return await self._give_up(ctx, None, None, exc)
        if isinstance(job, str):
            return Outcome({"published": False, "skipped": job})
        try:
            async with CatalogClient(job.target.config, transport=self.transport) as client:
                await client.put(job.item)
        except CatalogError as exc:
            last = claim.attempt >= claim.max_attempts
            if isinstance(exc, CatalogUnavailable) and not last:
                raise
            return await self._give_up(ctx, job.target, job.item, exc)
        item = job.item
        target = job.target

        def published(session: Session) -> None:
            record(session, target.id, item, "published")

        return Outcome({"published": True, "remote": item.external_id}, published)

    async def _give_up(
        self,
        ctx: StepContext,
        target: LoadedTarget | None,
        item: LocalItem | None,
        exc: IngestdError,
    ) -> Outcome:
        claim = ctx.claim
        reason = exc.message

        def failed(session: Session) -> None:
            if target is not None and item is not None:
                record(session, target.id, item, "failed", reason)
            order = session.get_one(WorkOrder, claim.order_id)
            order.error = reason
            asset = session.get_one(Asset, claim.asset_id)
            emit(
                session,
                asset.owner_id,
                asset.id,
                "publication.failed",
                step=claim.step,
                target=claim.step.split(":", 1)[1],
                error=reason,
            )

        if target is not None and target.config.required:
            if isinstance(exc, CatalogUnavailable) and claim.attempt < claim.max_attempts:
                raise exc
            if item is not None:
                await ctx.write(lambda s: record(s, target.id, item, "failed", reason))
            raise exc
        ctx.logger.warning("catalog push gave up: %s", reason)
        return Outcome({"published": False, "error": reason}, failed)
