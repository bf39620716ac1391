"""Read models for assets: what the API and CLI show, computed from the tables."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from ingestd.db.engine import Database
from ingestd.db.models import Asset, Event, Rendition, Source, WorkOrder
from ingestd.domain.states import DONE_ORDER_STATES, AssetStatus, OrderState
from ingestd.errors import InvalidRequest, NotFound
from ingestd.jobs.progress import LiveProgress

# share of the bar that validation stands for, before the kind's graph is known
_VALIDATE_SHARE = 0.1
# what a ``meta.<KEYWORD>`` filter may name: a FITS keyword (HIERARCH ones with dots)
_KEYWORD = re.compile(r"[A-Za-z0-9_.\-]{1,70}")


@dataclass(frozen=True)
class StepView:
    step: str
    state: str
    percent: float
    eta_s: float | None
    attempts: int
    error: str | None


@dataclass(frozen=True)
class AssetView:
    asset: Asset
    sources: list[Source]
    renditions: list[Rendition]
    steps: list[StepView]
    percent: float
    eta_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def _latest(orders: list[WorkOrder]) -> list[WorkOrder]:
    latest: dict[str, WorkOrder] = {}
    for o in sorted(orders, key=lambda o: (o.created_at, o.id)):
        latest[o.step] = o
    return list(latest.values())


def _live(
    orders: list[WorkOrder], live: Mapping[str, LiveProgress] | None
) -> dict[str, tuple[float, float | None]]:
    """Each order's (progress, eta): the progress board's newer figure for running orders."""
    figures: dict[str, tuple[float, float | None]] = {}
    for o in orders:
        figure = (float(o.progress), o.eta_s)
        board = (live or {}).get(o.id)
        if board is not None and o.state == OrderState.RUNNING.value:
            figure = (max(figure[0], board.progress), board.eta_s)
        figures[o.id] = figure
    return figures


def _progress(
    asset: Asset, orders: list[WorkOrder], figures: Mapping[str, tuple[float, float | None]]
) -> tuple[float, float | None]:
    status = AssetStatus(asset.status)
    if status == AssetStatus.READY:
        return 100.0, None

    def done(o: WorkOrder) -> float:
        return 1.0 if OrderState(o.state) in DONE_ORDER_STATES else figures[o.id][0]

    first = [o for o in orders if not o.depends_on and o.step == "validate"]
    rest = [o for o in orders if o not in first]
    head = done(first[0]) if first else 0.0
    weights = sum(float(o.params.get("weight", 1.0)) for o in rest)
    tail = sum(float(o.params.get("weight", 1.0)) * done(o) for o in rest) / weights if rest else 0
    fraction = _VALIDATE_SHARE * head + (1 - _VALIDATE_SHARE) * tail
    etas = [
        eta
        for o in orders
        if o.state == OrderState.RUNNING.value and (eta := figures[o.id][1]) is not None
    ]
    return round(100 * fraction, 1), (max(etas) if etas else None)


def latest_master(session: Session, asset_id: str) -> Source | None:
    """The newest source of an asset whose master is stored (a rejected one has none)."""
    return session.scalars(
        select(Source)
        .where(Source.asset_id == asset_id, Source.master_key.is_not(None))
        .order_by(Source.created_at.desc())
        .limit(1)
    ).first()


def keyword_equals(name: str, value: str) -> ColumnElement[bool]:
    """``asset.meta["fits"]["keywords"][name]`` as text equals ``value`` (a JSON path that
    SQLite renders with JSON_EXTRACT and PostgreSQL with #>>; numbers compare as written)."""
    if not _KEYWORD.fullmatch(name):
        raise InvalidRequest(f"not a FITS keyword: {name!r}")
    path = Asset.meta[("fits", "keywords", name)]
    return cast(path.as_string(), String) == value


def encode_cursor(created_at: datetime, asset_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{asset_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, asset_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), asset_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("invalid cursor") from exc


class AssetQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(
        self, owner_id: str, asset_id: str, live: Mapping[str, LiveProgress] | None = None
    ) -> AssetView:
        """The asset as the API shows it; ``live`` holds the progress board's figures."""
        with self.db.transaction() as session:
            asset = session.get(Asset, asset_id)
            if asset is None or asset.owner_id != owner_id:
                raise NotFound(f"asset {asset_id} not found")
            orders = _latest(
                list(session.scalars(select(WorkOrder).where(WorkOrder.asset_id == asset_id)))
            )
            figures = _live(orders, live)
            percent, eta = _progress(asset, orders, figures)
            return AssetView(
                asset=asset,
                sources=list(
                    session.scalars(
                        select(Source)
                        .where(Source.asset_id == asset_id)
                        .order_by(Source.created_at)
                    )
                ),
                renditions=list(
                    session.scalars(
                        select(Rendition)
                        .where(Rendition.asset_id == asset_id)
                        .order_by(Rendition.name)
                    )
                ),
                steps=[
                    StepView(
                        o.step,
                        o.state,
                        round(100 * figures[o.id][0], 1),
                        figures[o.id][1],
                        o.attempts,
                        o.error,
                    )
                    for o in orders
                ],
                percent=percent,
                eta_s=eta,
            )

    def page(
        self,
        owner_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        status: str | None = None,
        keywords: Sequence[tuple[str, str]] = (),
    ) -> tuple[list[AssetView], str | None]:
        """``keywords``: (FITS keyword, value) pairs that must all match exactly."""
        limit = max(1, min(limit, 200))
        with self.db.transaction() as session:
            query = select(Asset.id).where(Asset.owner_id == owner_id)
            if status:
                query = query.where(Asset.status == status)
            for name, value in keywords:
                query = query.where(keyword_equals(name, value))
            if cursor:
                stamp, last_id = decode_cursor(cursor)
                query = query.where(
                    or_(
                        Asset.created_at < stamp,
                        and_(Asset.created_at == stamp, Asset.id < last_id),
                    )
                )
            ids = list(
                session.scalars(
                    query.order_by(Asset.created_at.desc(), Asset.id.desc()).limit(limit + 1)
                )
            )
        views = [self.get(owner_id, i) for i in ids[:limit]]
        more = len(ids) > limit
        next_cursor = (
            encode_cursor(views[-1].asset.created_at, views[-1].asset.id) if more else None
        )
        return views, next_cursor

    def events(
        self, owner_id: str, asset_id: str, *, after: int = 0, limit: int = 500
    ) -> list[Event]:
        with self.db.transaction() as session:
            asset = session.get(Asset, asset_id)
            if asset is None or asset.owner_id != owner_id:
                raise NotFound(f"asset {asset_id} not found")
            return list(
                session.scalars(
                    select(Event)
                    .where(Event.asset_id == asset_id, Event.id > after)
                    .order_by(Event.id)
                    .limit(limit)
                )
            )

    def master(self, owner_id: str, asset_id: str) -> Source:
        with self.db.transaction() as session:
            asset = session.get(Asset, asset_id)
            if asset is None or asset.owner_id != owner_id:
                raise NotFound(f"asset {asset_id} not found")
            source = latest_master(session, asset_id)
            if source is None:
                raise NotFound(f"asset {asset_id} has no stored master")
            return source
