"""Request and response bodies of `/v1/tune/...` (the models of `ragtune.api.schemas` are the service's core)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.store.promotions import Promotion
from ragtune.store.tune_jobs import TuneJob


class _Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promote: bool = Field(False, description="Promote the model if it measures better, then reload the service.")
    margin: float = Field(0.01, ge=0, le=1, description="No metric may fall by more than this (absolute).")
    min_gain: float = Field(0.0, ge=0, le=1, description="The main metric must rise by more than this.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    holdout: float = Field(0.3, gt=0, lt=1, description="About this share of documents is held out for measuring.")


class TuneEmbedderRequest(_Promotion):
    """Questions are written about the service's index (the rules, or the configured LLM)."""

    epochs: float = Field(1.0, gt=0, le=100)
    batch_size: int = Field(32, ge=2, le=1024)
    learning_rate: float = Field(5e-5, gt=0, le=0.01)
    hard_negatives: int = Field(1, ge=0, le=10)
    per_chunk: int = Field(3, ge=1, le=20)


class TuneAnswererRequest(_Promotion):
    """Needs RAGTUNE_GENERATOR=local; questions (with unanswerable ones) are written about the index."""

    per_chunk: int = Field(2, ge=1, le=20)
    unanswerable: float = Field(0.2, ge=0, le=1)
    max_steps: int = Field(40, ge=1, le=100_000)
    learning_rate: float = Field(2e-4, gt=0, le=0.1)
    lora_r: int = Field(16, ge=1, le=512)
    limit: int | None = Field(40, ge=1, description="Held-out questions measured (answerable and unanswerable each).")


class TuneJobOut(BaseModel):
    id: str
    kind: Literal["embedder", "answerer"]
    state: Literal["queued", "running", "done", "failed"]
    stage: str = Field(description="What the job is doing now (or `done`).")
    progress: float = Field(ge=0, le=1, description="Share of the job's stages finished.")
    params: dict[str, Any]
    report: dict[str, Any] | None = Field(description="report.json, once the job is done: before, after, decision.")
    error: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, job: TuneJob) -> TuneJobOut:
        share = job.stages_done / job.stages_total if job.stages_total else 0.0
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            stage=job.stage,
            progress=1.0 if job.state == "done" else min(share, 1.0),
            params=job.params,
            report=job.report,
            error=job.error,
            created_at=job.created_at,
            updated_at=job.updated_at,
        )


class TuneJobList(BaseModel):
    jobs: list[TuneJobOut]


class PromotionOut(BaseModel):
    kind: Literal["embedder", "answerer"]
    path: str
    main_metric: str | None
    before: float | None
    after: float | None
    promoted_at: datetime

    @classmethod
    def of(cls, promotion: Promotion) -> PromotionOut:
        metric = promotion.report.get("main_metric")
        return cls(
            kind=promotion.kind,
            path=promotion.path,
            main_metric=metric,
            before=promotion.report.get("before", {}).get(metric),
            after=promotion.report.get("after", {}).get(metric),
            promoted_at=promotion.promoted_at,
        )


class PromotionList(BaseModel):
    promotions: list[PromotionOut] = Field(description="Newest first; the first of each kind is live.")
