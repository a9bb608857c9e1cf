"""Embedder adaptation on squad-dev (issue 16): `ragtune tune embedder` on the articles alone, then
measured on squad-dev's own questions, which training never sees.

1. `tune_embedder` with ``corpus=squad-dev/docs`` (the 10 article files, in a scratch index):
   rule-written questions (no LLM), split by document into train and holdout, the model
   fine-tuned on the training split, the synthetic held-out split measured before and after.
2. The base and the tuned model, each with the default backend (onnx-int8), index
   squad-dev's corpus (429 paragraphs) and search ALL its 2,036 questions in the dense, hybrid
   and BM25 modes, in this run; the metrics are also given for the questions about the
   articles trained on and about the held-out ones.

Results go into ``--results`` (one entry per ``--label``, kept across runs).

    RAGTUNE_TORCH_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python bench/tune_embedder.py --label a-priori
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ragtune.config import RETRIEVAL_MODES, Settings
from ragtune.embed import Embedder, LocalEmbedder, build_embedder
from ragtune.eval.datasets import BeirDataset, load_beir
from ragtune.eval.metrics import retrieval_metrics
from ragtune.eval.runner import ScratchTarget, indexed_dataset, rank_queries
from ragtune.tune.embedder import EmbedderOptions, tune_embedder
from ragtune.tune.pairs import judged

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad-dev"


def rankings(dataset: BeirDataset, settings: Settings, embedder: Embedder) -> dict[str, dict[str, list[str]]]:
    """Every mode's ranking of every judged question, over a scratch index of the corpus."""
    with indexed_dataset(dataset, settings, embedder, generator=False) as system:
        target = ScratchTarget(system)
        return {mode: rank_queries(target, judged(dataset), mode) for mode in RETRIEVAL_MODES}


def article(corpus_id: str) -> str:
    return corpus_id.rsplit("-p", 1)[0]  # "rhine-p03" -> "rhine", the article file's stem


def metrics(ranked: dict[str, dict[str, list[str]]], dataset: BeirDataset, articles: set[str] | None) -> dict:
    """nDCG@10, R@5 and the rest per mode, over the questions about `articles` (None: all)."""
    qrels = {
        q: judgement
        for q, judgement in dataset.qrels.items()
        if articles is None or any(article(c) in articles for c in judgement)
    }
    return {mode: retrieval_metrics(ranked[mode], qrels) for mode in RETRIEVAL_MODES}


def measured(ranked: dict[str, dict[str, list[str]]], dataset: BeirDataset, split: dict[str, set[str]]) -> dict:
    return {
        "all": metrics(ranked, dataset, None),
        "trained_articles": metrics(ranked, dataset, split["train"]),
        "held_out_articles": metrics(ranked, dataset, split["holdout"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="a-priori", help="The configuration's name in the results.")
    parser.add_argument("--epochs", type=float, default=EmbedderOptions.epochs)
    parser.add_argument("--batch-size", type=int, default=EmbedderOptions.batch_size)
    parser.add_argument("--learning-rate", type=float, default=EmbedderOptions.learning_rate)
    parser.add_argument("--hard-negatives", type=int, default=EmbedderOptions.hard_negatives)
    parser.add_argument("--per-chunk", type=int, default=EmbedderOptions.per_chunk)
    parser.add_argument("--seed", type=int, default=EmbedderOptions.seed)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("RAGTUNE_TORCH_THREADS", "1")))
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "tune_embedder")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "tune_embedder.json")
    args = parser.parse_args()
    options = EmbedderOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hard_negatives=args.hard_negatives,
        per_chunk=args.per_chunk,
        seed=args.seed,
    )
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / args.label
    shutil.rmtree(out, ignore_errors=True)  # a label's earlier run
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as data:
        # One export cache for every run: the base model is exported once, each tuned model once.
        cache = args.work / "embedders"
        settings = Settings(data_dir=Path(data), torch_threads=args.threads, embedding={"cache_dir": str(cache)})
        report = tune_embedder(settings, out, options, corpus=SQUAD / "docs")
        split = {
            name: {Path(d["source"]).stem for d in docs} for name, docs in report.details["questions"]["splits"].items()
        }
        squad = load_beir(SQUAD)
        embedding = settings.embedding
        models = {
            "before": build_embedder(embedding, cache),
            "after": LocalEmbedder(report.model, embedding.device, embedding.batch_size, embedding.backend, cache),
        }
        squad_dev = {name: measured(rankings(squad, settings, model), squad, split) for name, model in models.items()}
    entry: dict[str, Any] = {
        "options": vars(options),
        "backend": models["after"].backend,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_end": os.getloadavg()[0],
        "training": report.details["training"],
        "synthetic_holdout": {"before": report.before, "after": report.after},
        "questions": {k: v for k, v in report.details["questions"].items() if k != "splits"},
        "split": {name: sorted(articles) for name, articles in split.items()},
        "squad_dev": squad_dev,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results[args.label] = entry
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    for mode in ("dense", "hybrid"):
        before, after = squad_dev["before"]["all"][mode], squad_dev["after"]["all"][mode]
        print(
            f"{mode:7} nDCG@10 {before['ndcg@10']:.4f} -> {after['ndcg@10']:.4f}   "
            f"R@5 {before['recall@5']:.4f} -> {after['recall@5']:.4f}"
        )
    print(f"training {report.details['training']['seconds']} s on {args.threads} thread(s); results in {args.results}")


if __name__ == "__main__":
    main()
