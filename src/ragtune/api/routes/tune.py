"""`/v1/tune/...`: tune the embedder or the answerer on the service's own index, as a job.

Each job writes a question set about the index (`ragtune synth`), trains, measures the held-out
documents before and after, and with ``promote`` promotes a better model and reloads the
service, as `ragtune tune … --promote` does. Jobs need an admin key holding every collection
(they read every document and change what the whole service serves). The job's files stay in
``<data_dir>/tune/<job id>/``: its questions, the model or adapter, and report.json.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status

from ragtune.api.access import ADMIN, KeyScope, needs
from ragtune.api.deps import ServicesDep
from ragtune.api.errors import ApiError
from ragtune.api.schemas import ErrorResponse
from ragtune.api.tune_runner import TuneBusyError, TuneRunner
from ragtune.api.tune_schemas import (
    PromotionList,
    PromotionOut,
    TuneAnswererRequest,
    TuneEmbedderRequest,
    TuneJobList,
    TuneJobOut,
)
from ragtune.api.tune_work import answerer_work, embedder_work
from ragtune.store.promotions import Promotions

router = APIRouter(prefix="/v1/tune", tags=["tune"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 429, 503)
}


def _admin_of_everything(scope: Annotated[KeyScope, Depends(needs(ADMIN, "tuning models"))]) -> KeyScope:
    if scope.collections is not None:
        raise ApiError(403, "forbidden", "tuning reads every collection; it needs an admin key without collections")
    return scope


Admin = Annotated[KeyScope, Depends(_admin_of_everything)]


def _runner(request: Request) -> TuneRunner:
    runner: TuneRunner | None = getattr(request.app.state, "tune_runner", None)
    if runner is None:
        raise ApiError(503, "starting", "the service is still starting; retry in a few seconds")
    return runner


RunnerDep = Annotated[TuneRunner, Depends(_runner)]


def _started(runner: TuneRunner, kind: str, params: dict[str, Any], work: Any) -> TuneJobOut:
    stages, run = work
    try:
        return TuneJobOut.of(runner.start(kind, params, stages, run))
    except TuneBusyError as exc:
        raise ApiError(409, "tune_busy", str(exc)) from None


@router.post("/embedder", status_code=status.HTTP_202_ACCEPTED, response_model=TuneJobOut, responses=_ERRORS)
def tune_embedder(services: ServicesDep, runner: RunnerDep, _: Admin, body: TuneEmbedderRequest) -> TuneJobOut:
    """Fine-tune the embedder on questions written about the index; 202 with the job to poll."""
    return _started(runner, "embedder", body.model_dump(), embedder_work(services, runner, body))


@router.post("/answerer", status_code=status.HTTP_202_ACCEPTED, response_model=TuneJobOut, responses=_ERRORS)
def tune_answerer(services: ServicesDep, runner: RunnerDep, _: Admin, body: TuneAnswererRequest) -> TuneJobOut:
    """Fine-tune the local generator's LoRA adapter on questions written about the index; 202 with the job."""
    if services.system.settings.answer.generator != "local":
        raise ApiError(
            422,
            "generator_not_local",
            "tuning the answerer needs RAGTUNE_GENERATOR=local: the adapter is trained for the local model",
        )
    return _started(runner, "answerer", body.model_dump(), answerer_work(services, runner, body))


@router.get("/jobs", response_model=TuneJobList, responses=_ERRORS)
def list_jobs(runner: RunnerDep, _: Admin) -> TuneJobList:
    """Tuning jobs, newest first."""
    return TuneJobList(jobs=[TuneJobOut.of(job) for job in runner.jobs.list()])


@router.get("/jobs/{job_id}", response_model=TuneJobOut, responses=_ERRORS)
def get_job(job_id: str, runner: RunnerDep, _: Admin) -> TuneJobOut:
    """One job: its stage and, once done, its report (before, after, the promotion decision)."""
    job = runner.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no tuning job {job_id[:64]!r}")
    return TuneJobOut.of(job)


@router.get("/promotions", response_model=PromotionList, responses=_ERRORS)
def promotions(services: ServicesDep, _: Admin) -> PromotionList:
    """What was promoted for the store's collection, newest first (`ragtune tune status`)."""
    history = Promotions(services.system.catalog).history(services.system.settings.store.collection)
    return PromotionList(promotions=[PromotionOut.of(p) for p in history])
