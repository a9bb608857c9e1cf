"""What a `/v1/tune/...` job does, step by step, on the service's own system (whose store it
must use: with Milvus Lite no other handle on the index may open in this process).

The steps are `ragtune tune embedder|answerer` with their questions written first, then
`ragtune.tune.promote.promote` when the request asks for it. Bad options are refused before
the job starts (422), so a job fails only for what happens while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.api.deps import Services
from ragtune.api.errors import ApiError
from ragtune.api.tune_runner import TuneRunner, TuneWork
from ragtune.api.tune_schemas import TuneAnswererRequest, TuneEmbedderRequest
from ragtune.eval.index import describe
from ragtune.tune.dataset import describe_synthesis, write_synthesis
from ragtune.tune.promote import promote
from ragtune.tune.report import TuneReport
from ragtune.tune.synth import SynthError, SynthOptions, synthesize, writer_for

Stages = list[str]
# Both kinds go through the same stages (the runner adds "reloading" after a promotion).
STAGES: Stages = ["writing questions", "training and measuring", "promoting", "reloading"]


def _promoted(
    runner: TuneRunner, services: Services, body: TuneEmbedderRequest | TuneAnswererRequest, report: TuneReport
) -> TuneReport:
    """The report after the promotion the request asked for (decision and `promoted` set), rewritten."""
    if body.promote:
        promote(runner.settings, report, body.margin, body.min_gain, progress=False, system=services.system)
        report.write(Path(report.model).parent / "report.json")
    return report


def embedder_work(services: Services, runner: TuneRunner, body: TuneEmbedderRequest) -> tuple[Stages, TuneWork]:
    from ragtune.tune.embedder import EmbedderOptions, tune_on_questions, write_question_set
    from ragtune.tune.pairs import TuneError, read_question_set

    try:
        options = EmbedderOptions(
            epochs=body.epochs,
            batch_size=body.batch_size,
            learning_rate=body.learning_rate,
            hard_negatives=body.hard_negatives,
            per_chunk=body.per_chunk,
            holdout=body.holdout,
            seed=body.seed,
        )
    except TuneError as exc:
        raise ApiError(422, "invalid_options", str(exc)) from None
    system = services.system

    def work(out: Path, stage: Callable[[str], None]) -> TuneReport:
        stage("writing questions")
        write_question_set(system, options, out / "questions", {"index": describe(system.settings)}, stage)
        stage("training and measuring")
        report = tune_on_questions(
            system.settings, read_question_set(out / "questions"), options, out, progress=False, log=stage
        )
        stage("promoting")
        return _promoted(runner, services, body, report)

    return STAGES, work


def answerer_work(services: Services, runner: TuneRunner, body: TuneAnswererRequest) -> tuple[Stages, TuneWork]:
    from ragtune.tune.answerer import tune_answerer

    system = services.system
    settings = system.settings
    try:
        synth = SynthOptions(body.per_chunk, body.unanswerable, body.holdout, settings.retrieval.top_k, body.seed)
    except SynthError as exc:
        raise ApiError(422, "invalid_options", str(exc)) from None
    finetune: dict[str, Any] = {"max_steps": body.max_steps, "lr": body.learning_rate, "lora_r": body.lora_r}

    def work(out: Path, stage: Callable[[str], None]) -> TuneReport:
        stage("writing questions")
        writer = writer_for(system)
        synthesis = synthesize(system, writer, synth, stage)
        source = {"index": describe(settings)}
        write_synthesis(synthesis, out / "questions", describe_synthesis(source, writer.name, synth, settings))
        stage("training and measuring")
        # Measured on a scratch copy of the held-out corpus (every chunk of the index): the live
        # store is this process's, and Milvus Lite lets one handle open it.
        report = tune_answerer(
            runner.settings, out / "questions", out / "run", finetune, body.limit, progress=stage, on_index=False
        )
        stage("promoting")
        return _promoted(runner, services, body, report)

    return STAGES, work
