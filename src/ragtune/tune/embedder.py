"""`ragtune tune embedder`: fine-tune the embedding model on synthetic questions about the corpus.

1. Questions: `ragtune.tune.synth.synthesize` writes them about the index's chunks (or a
   ``--corpus`` folder's, in a scratch index) into ``OUT/questions/``, split by document into
   train and holdout; or ``--questions`` names a set `ragtune synth` made. The round trip
   keeps a question that finds its chunk in the top ``ROUND_TRIP_TOP_K`` (20, not the 5 of
   `ragtune synth`): a held-out question must not be selected for being one the current model
   already ranks in its top 5, or "before" would be measured on the model's own successes.
2. Before: the held-out split's corpus (every chunk) is indexed in a scratch store with the
   served model, as served (its backend), and its held-out questions are searched in every
   mode. The same index mines the hard negatives (`ragtune.tune.pairs`) by a dense search:
   the chunks the model being tuned ranks high for a question but that do not answer it.
3. Training: sentence-transformers' own trainer with MultipleNegativesRankingLoss (each
   question against its chunk, the batch's other chunks and its hard negatives), batches
   without duplicate texts, warmup then linear decay; the model is written to ``OUT/model/``.
4. After: the same measurement with the tuned model, which loads from that directory with any
   backend (an ONNX export is keyed by a hash of the model's files, so it is never a stale one).

The live index is only read. ``OUT/report.json`` holds before and after (`TuneReport`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback

from ragtune.config import RETRIEVAL_MODES, RetrievalMode, Settings
from ragtune.embed import Embedder, LocalEmbedder, build_embedder
from ragtune.embed.embedders import EmbeddingError, resolve_model_path
from ragtune.eval.datasets import BeirDataset
from ragtune.eval.index import describe, open_index
from ragtune.eval.metrics import retrieval_metrics
from ragtune.eval.runner import ScratchTarget, indexed_dataset, log_progress, rank_queries
from ragtune.system import System, live_settings, open_catalog
from ragtune.tune.dataset import check_output, describe_synthesis, write_synthesis
from ragtune.tune.pairs import (
    Example,
    QuestionSet,
    TuneError,
    columns,
    holdout_pairs,
    judged,
    mine_examples,
    read_question_set,
)
from ragtune.tune.report import TuneReport
from ragtune.tune.synth import SynthError, SynthOptions, scratch_index, synthesize, writer_for

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ROUND_TRIP_TOP_K = 20
_MINING_MODE: RetrievalMode = "dense"  # negatives the model being tuned confuses with the right chunk
Log = Callable[[str], None]


@dataclass(frozen=True)
class EmbedderOptions:
    """Fixed before any measurement: one epoch at the top of the usual learning rates (a run is
    tens of steps), batches of 32 (31 in-batch negatives each), 10% warmup, one hard negative;
    three questions per chunk, as GPL (Wang et al. 2022) writes per passage."""

    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    hard_negatives: int = 1
    per_chunk: int = 3
    holdout: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.epochs <= 100:
            raise TuneError(f"--epochs must be above 0 and at most 100; got {self.epochs}")
        if not 2 <= self.batch_size <= 1024:
            raise TuneError(
                f"--batch-size must be 2 to 1024 (each question needs the batch's other chunks); got {self.batch_size}"
            )
        if not 0 < self.learning_rate <= 0.01:
            raise TuneError(f"--learning-rate must be above 0 and at most 0.01; got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise TuneError(f"the warmup ratio must be at least 0 and below 1; got {self.warmup_ratio}")
        if not 0 <= self.hard_negatives <= 10:
            raise TuneError(f"--hard-negatives must be 0 to 10 per question; got {self.hard_negatives}")
        if not 1 <= self.per_chunk <= 20:
            raise TuneError(f"--per-chunk must be 1 to 20 questions per chunk; got {self.per_chunk}")
        if not 0 < self.holdout < 1:
            raise TuneError(
                f"--holdout must be above 0 and below 1 (the share of documents held out); got {self.holdout}"
            )


class _Shown:
    """An embedder whose calls show a progress bar while `enabled` (the indexing, not each search)."""

    def __init__(self, inner: Embedder, enabled: bool) -> None:
        self.inner, self.enabled = inner, enabled
        self.name, self.backend, self.dimension = inner.name, inner.backend, inner.dimension

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        return self.inner.embed(texts, show_progress=show_progress or self.enabled)


class _TrainingBar(TrainerCallback):
    """The trainer's progress on stderr with the running loss, instead of the trainer's own bar or
    printer, which print every log on stdout, where `--json` prints the report."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=state.max_steps, desc="training", unit="step", file=sys.stderr, disable=not self.enabled)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar.close()


def served_settings(settings: Settings) -> Settings:
    """`settings` with the embedder the index serves (a promoted one, `live_settings`), when there is an index."""
    if not settings.store.catalog_url and not (settings.data_dir / "catalog.db").is_file():
        return settings
    catalog = open_catalog(settings)
    try:
        return live_settings(settings, catalog)
    finally:
        catalog.close()


def measure(target: ScratchTarget, dataset: BeirDataset) -> dict[str, float]:
    """nDCG@10 and R@5 of the dataset's judged questions in every retrieval mode."""
    metrics: dict[str, float] = {}
    for mode in RETRIEVAL_MODES:
        found = retrieval_metrics(rank_queries(target, judged(dataset), mode), dataset.qrels)
        metrics |= {f"{mode}_ndcg@10": found["ndcg@10"], f"{mode}_recall@5": found["recall@5"]}
    return metrics


def _measured(
    questions: QuestionSet, settings: Settings, embedder: Embedder, show: bool
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """The held-out metrics of `embedder` over a scratch index of every chunk, and each training
    question's dense ranking there (what the hard negatives are mined from)."""
    shown = _Shown(embedder, show)
    with indexed_dataset(questions.holdout, settings, shown, generator=False) as system:
        shown.enabled = False
        target = ScratchTarget(system)
        return measure(target, questions.holdout), rank_queries(target, judged(questions.train), _MINING_MODE)


def _epoch_losses(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean training loss over the first and over the last epoch. One step's loss depends on which
    texts share its batch (they are its negatives), so single steps are too noisy to compare."""
    logged = [(entry["epoch"], entry["loss"]) for entry in history if "loss" in entry]
    end = logged[-1][0]
    first = [loss for epoch, loss in logged if epoch <= 1 + 1e-6]
    last = [loss for epoch, loss in logged if epoch > end - 1 + 1e-6]
    return {"first_epoch": sum(first) / len(first), "last_epoch": sum(last) / len(last)}


def train(
    model: SentenceTransformer,
    examples: list[Example],
    holdout: list[Example],
    options: EmbedderOptions,
    show: bool,
) -> dict[str, Any]:
    """Fine-tunes `model` in place on `examples` (module docstring, step 3); returns what the run did."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    with tempfile.TemporaryDirectory(prefix="ragtune-tune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=options.epochs,
            per_device_train_batch_size=options.batch_size,
            per_device_eval_batch_size=options.batch_size,
            learning_rate=options.learning_rate,
            warmup_steps=options.warmup_ratio,  # below 1: a share of the steps
            lr_scheduler_type="linear",
            seed=options.seed,
            data_seed=options.seed,
            # A text twice in a batch would be its own in-batch negative.
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            logging_steps=1,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            use_cpu=model.device.type == "cpu",
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(columns(examples)),
            # The held-out loss needs two chunks at least: a lone chunk has no negative to rank below it.
            eval_dataset=Dataset.from_dict(columns(holdout)) if len({e.positive for e in holdout}) > 1 else None,
            loss=MultipleNegativesRankingLoss(model),
        )
        for printing in (PrinterCallback, ProgressCallback):  # either prints every log on stdout
            trainer.remove_callback(printing)
        trainer.add_callback(_TrainingBar(show))
        held_out = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        loss = _epoch_losses(trainer.state.log_history) | {"mean": output.training_loss}
        if held_out is not None:
            loss |= {"holdout_before": held_out, "holdout_after": trainer.evaluate()["eval_loss"]}
    return {
        "seconds": round(seconds, 1),
        "steps": trainer.state.global_step,
        "examples": len(examples),
        "loss": {name: round(value, 4) for name, value in loss.items()},
        "threads": torch.get_num_threads(),
        "device": str(model.device),
    }


def _save(model: SentenceTransformer, out: Path) -> Path:
    """Writes the model into ``out/model``, which appears only once it is whole."""
    target = out / "model"
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=out))
    try:
        model.save(str(staging))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_question_set(system: System, options: EmbedderOptions, out: Path, source: dict[str, str], log: Log) -> None:
    """The rules' (or the configured LLM's) questions about `system`'s index, written to `out`."""
    # No unanswerable questions: an embedder learns nothing from a question without an answer here.
    synth = SynthOptions(options.per_chunk, 0.0, options.holdout, ROUND_TRIP_TOP_K, options.seed)
    writer = writer_for(system)
    synthesis = synthesize(system, writer, synth, log)
    write_synthesis(synthesis, out, describe_synthesis(source, writer.name, synth, system.settings))


def _base_model(settings: Settings) -> Path:
    if settings.embedding.base_url:
        raise TuneError(
            f"the embedder is a server (RAGTUNE_EMBEDDING_BASE_URL={settings.embedding.base_url}); "
            "only a local sentence-transformers model can be fine-tuned"
        )
    try:
        return resolve_model_path(settings.embedding.model)
    except EmbeddingError as exc:  # not installed, or not a directory
        raise TuneError(str(exc)) from None


def tune_on_questions(
    settings: Settings,
    questions: QuestionSet,
    options: EmbedderOptions,
    out: Path,
    progress: bool | None = None,
    log: Log = log_progress,
) -> TuneReport:
    """Steps 2 to 4 of the module docstring on a question set; writes ``out/model`` and ``out/report.json``."""
    from sentence_transformers import SentenceTransformer

    show = sys.stderr.isatty() if progress is None else progress
    base_dir = _base_model(settings)
    cache, embedding = settings.resolved_embedder_cache(), settings.embedding
    log(f"tune: measuring {embedding.model} on {len(judged(questions.holdout))} held-out questions")
    before, rankings = _measured(questions, settings, build_embedder(embedding, cache), show)
    examples, short = mine_examples(questions, rankings, options.hard_negatives)
    if len(examples) < 2:
        raise TuneError(
            f"{len(examples)} training questions with {options.hard_negatives} hard negatives each "
            f"({short} found too few): index more documents, or lower --holdout"
        )
    log(f"tune: training on {len(examples)} questions ({short} left out for want of hard negatives)")
    model = SentenceTransformer(str(base_dir), device=embedding.device, local_files_only=True)
    training = train(model, examples, holdout_pairs(questions), options, show)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = _save(model, out).resolve()
    del model
    tuned = LocalEmbedder(str(model_dir), embedding.device, embedding.batch_size, embedding.backend, cache)
    log(f"tune: measuring the tuned model ({tuned.backend})")
    after, _ = _measured(questions, settings, tuned, show)
    manifest = questions.manifest
    report = TuneReport(
        "embedder",
        str(model_dir),
        f"{settings.retrieval.mode}_ndcg@10",
        before,
        after,
        {
            "base_model": embedding.model,
            "backend": tuned.backend,
            "training": training,
            "options": {**vars(options), "mining_mode": _MINING_MODE},
            "hard_negatives": {
                "per_question": options.hard_negatives,
                "mined": options.hard_negatives * len(examples),
                "questions_without_enough": short,
            },
            "questions": {
                "set": str(questions.directory.resolve()),
                "writer": manifest.get("writer"),
                "round_trip_top_k": manifest.get("round_trip_top_k"),
                "counts": manifest.get("counts", {}),
                "train_questions": len(judged(questions.train)),
                "holdout_questions": len(judged(questions.holdout)),
                "holdout_corpus": len(questions.holdout.corpus),
                "splits": manifest.get("documents", {}),
            },
        },
    )
    report.write(out / "report.json")
    return report


def tune_embedder(
    settings: Settings,
    out: Path,
    options: EmbedderOptions | None = None,
    *,
    corpus: Path | None = None,
    questions: Path | None = None,
    progress: bool | None = None,
    log: Log = log_progress,
) -> TuneReport:
    """Fine-tunes the served embedder (module docstring) into ``out/model``; the report is also
    ``out/report.json``. Questions come from `questions` (a `ragtune synth` set), else are
    written about `corpus` (a folder, indexed in a scratch store) or the configured index.
    TuneError, SynthError or EmptyIndexError for bad input, before anything is written."""
    options = options or EmbedderOptions()
    try:
        check_output(out)
    except SynthError as exc:
        raise TuneError(str(exc)) from None
    if corpus is not None and questions is not None:
        raise TuneError("--corpus and --questions both name the questions' source; give one")
    settings = served_settings(settings)
    _base_model(settings)  # a remote or missing model fails before questions are written
    if questions is not None:
        question_set = read_question_set(questions)
    else:
        llm = settings.answer.generator != "extractive"  # then the LLM writes the questions (`writer_for`)
        opened: AbstractContextManager[System]
        opened = scratch_index(corpus, settings, llm) if corpus is not None else open_index(settings, generator=llm)
        source = {"corpus": str(corpus.resolve())} if corpus is not None else {"index": describe(settings)}
        with opened as system:
            write_question_set(system, options, out / "questions", source, log)
        question_set = read_question_set(out / "questions")
    return tune_on_questions(settings, question_set, options, out, progress, log)


def training_summary(report: TuneReport) -> str:
    """What the run trained and what it measured on, for a terminal (above the before/after table)."""
    training, data = report.details["training"], report.details["questions"]
    loss = training["loss"]
    return (
        f"trained {report.details['base_model']} on {training['examples']} questions "
        f"({report.details['hard_negatives']['mined']} hard negatives) in {training['seconds']} s, "
        f"{training['steps']} steps; mean training loss {loss['first_epoch']:.3f} in the first epoch, "
        f"{loss['last_epoch']:.3f} in the last\n"
        f"measured on {data['holdout_questions']} held-out questions over {data['holdout_corpus']} chunks, "
        f"embedded by {report.details['backend']}; {report.main_metric} is the mode you serve"
    )
