"""Which tuned models are promoted into the live configuration, kept in the catalog database.

A promotion names an embedder model directory or a LoRA adapter directory for one store
collection, with the report that justified it. The newest promotion of each kind is the live
one; older rows stay as the history (`ragtune tune status`). Being in the catalog, the record
reaches every process that shares it: API replicas pick it up on ``POST /v1/admin/reload``.

    >>> from ragtune.store.catalog import Catalog
    >>> from ragtune.store.promotions import Promotions
    >>> promotions = Promotions(Catalog("sqlite://"))
    >>> _ = promotions.record("ragtune", "answerer", "/models/adapter-1", {"main_metric": "f1"})
    >>> promotions.current("ragtune", "answerer").path
    '/models/adapter-1'
    >>> promotions.current("ragtune", "embedder") is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ragtune.store.catalog import Catalog
from ragtune.store.tables import TableBase, utc_now

PROMOTION_KINDS = ("embedder", "answerer")


class PromotionRow(TableBase):
    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(4096))
    report: Mapped[dict] = mapped_column(JSON, default=dict)
    promoted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


@dataclass(frozen=True)
class Promotion:
    kind: str
    path: str
    report: dict[str, Any]
    promoted_at: datetime


class Promotions:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.ensure_tables(PromotionRow)

    def record(self, collection: str, kind: str, path: str, report: dict[str, Any]) -> Promotion:
        if kind not in PROMOTION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PROMOTION_KINDS)}; got {kind!r}")
        with self.catalog.session() as s, s.begin():
            row = PromotionRow(collection=collection, kind=kind, path=path, report=report, promoted_at=utc_now())
            s.add(row)
            s.flush()
            return _promotion(row)

    def current(self, collection: str, kind: str) -> Promotion | None:
        history = self.history(collection, kind, limit=1)
        return history[0] if history else None

    def history(self, collection: str, kind: str | None = None, limit: int = 20) -> list[Promotion]:
        """Newest first."""
        query = select(PromotionRow).where(PromotionRow.collection == collection)
        if kind is not None:
            query = query.where(PromotionRow.kind == kind)
        with self.catalog.session() as s:
            rows = s.scalars(query.order_by(PromotionRow.id.desc()).limit(limit)).all()
            return [_promotion(row) for row in rows]


def _promotion(row: PromotionRow) -> Promotion:
    return Promotion(row.kind, row.path, dict(row.report or {}), row.promoted_at)
