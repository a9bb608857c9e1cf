"""Context expansion (RAGTUNE_CONTEXT_WINDOW) measured on squad-dev answers, N = 0 and 1, in one run.

The ten squad-dev articles (``docs/*.md``) are indexed as whole documents, so a chunk has
neighbours (``ragtune eval answers`` indexes each passage alone, where a window adds
nothing). Every answerable question is then asked through the pipeline once per window
size with the configured generator (the extractive default here), scoring SQuAD F1 and
citation support (a gold answer inside a cited chunk) as ``ragtune eval answers`` does.

    .venv/bin/python bench/context_window.py [--windows 0 1] [--limit N] [--out bench/results/context_window.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ragtune.config import Settings
from ragtune.eval.datasets import load_beir
from ragtune.eval.metrics import normalize_answer, squad_f1
from ragtune.eval.runner import fixed_sample
from ragtune.system import build

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-dev"


def measure(settings: Settings, questions: dict[str, str], answers: dict[str, list[str]]) -> dict[str, float]:
    f1 = supported = answered = context_chunks = 0.0
    started = time.perf_counter()
    with build(settings) as system:
        assert system.rag is not None
        for qid, question in questions.items():
            answer = system.rag.ask(question)
            context_chunks += len(answer.hits)
            if answer.abstained:
                continue
            answered += 1
            f1 += squad_f1(answer.plain_text(), answers[qid])
            cited = " ".join(normalize_answer(c.snippet) for c in answer.citations)
            supported += any(normalize_answer(g) in cited for g in answers[qid])
    n = len(questions)
    return {
        "f1": round(f1 / n, 4),
        "citation_support": round(supported / answered, 4) if answered else 0.0,
        "answered": round(answered / n, 4),
        "chunks_read_per_question": round(context_chunks / n, 2),
        "ms_per_question": round((time.perf_counter() - started) * 1000 / n, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--limit", type=int, default=None, help="a fixed-seed sample of N questions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/context_window.json"))
    args = parser.parse_args()
    if not (SQUAD / "docs").is_dir():
        sys.exit(f"{SQUAD / 'docs'} is missing: this benchmark needs the squad-dev articles beside the repository")
    torch.set_num_threads(args.threads)
    dataset = load_beir(SQUAD)
    ids = fixed_sample([q for q in dataset.queries if dataset.answers.get(q)], args.limit, 0)
    questions = {q: dataset.queries[q] for q in ids}
    results: dict[str, object] = {"questions": len(questions)}
    with tempfile.TemporaryDirectory(prefix="ragtune-context-") as tmp:
        base = Settings(data_dir=Path(tmp), torch_threads=args.threads)
        with build(base, generator=False) as system:
            report = system.ingestor.ingest_paths([SQUAD / "docs"], progress=False)
        results["chunks"] = report.chunks
        results["embedding_backend"] = base.embedding.backend
        results["generator"] = base.answer.generator
        for window in args.windows:
            settings = base.model_copy(
                update={"retrieval": base.retrieval.model_copy(update={"context_window": window})}
            )
            results[f"window_{window}"] = measure(settings, questions, dataset.answers)
            print(window, results[f"window_{window}"], file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
