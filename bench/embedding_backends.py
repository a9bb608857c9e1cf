"""Embedding backends side by side, in one run on this machine: torch fp32 (the baseline),
ONNX Runtime fp32 and ONNX Runtime int8.

For each backend, with the default batch size (64 texts per call; ONNX Runtime splits them by length):
1. ingestion: `Ingestor.ingest_paths` over copies of the squad-dev articles into a fresh
   store, end to end (parse, chunk, embed, Milvus, catalog), in chunks/s;
2. a question's embedding: one `embed([question])` call per squad-dev question, median and p95;
3. retrieval quality: `ragtune eval retrieval` on squad-dev, dense and hybrid (nDCG@10, R@5).
Torch at batch size 4 (its fastest on this CPU) is measured for ingestion too, so the table
shows how much of the gain is the engine and how much the batch size.

    .venv/bin/python bench/embedding_backends.py [--copies 2] [--threads 2] [--out bench/results/embedding_backends.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ragtune.config import Settings
from ragtune.eval.runner import evaluate_retrieval
from ragtune.system import build

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-dev"
RUNS = [("torch", 64), ("torch", 4), ("onnx", 64), ("onnx-int8", 64)]


def ingest_rate(docs: Path, settings: Settings) -> tuple[float, int, str]:
    with build(settings, generator=False) as system:
        system.embedder.embed(["warm-up"] * 8)
        started = time.perf_counter()
        report = system.ingestor.ingest_paths([docs], progress=False)
        elapsed = time.perf_counter() - started
        backend = system.embedder.backend
    if report.failed:
        raise SystemExit(f"ingestion failed: {report.failed[:3]}")
    return report.chunks / elapsed, report.chunks, backend


def question_latency(settings: Settings, questions: list[str]) -> dict[str, float]:
    with build(settings, generator=False) as system:
        embed = system.embedder.embed
        embed(questions[:10])
        times = []
        for question in questions:
            started = time.perf_counter()
            embed([question])
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(0.95 * len(times))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the ten squad-dev articles to ingest")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not SQUAD.is_dir():
        raise SystemExit(f"{SQUAD} is missing: this benchmark needs the squad-dev set beside the repository")
    torch.set_num_threads(args.threads)
    questions = [json.loads(line)["text"] for line in (SQUAD / "queries.jsonl").read_text().splitlines()]
    questions = questions[: args.questions]

    rows = []
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for copy in range(args.copies):
            for article in sorted((SQUAD / "docs").glob("*.md")):
                (docs / f"{copy}-{article.name}").write_text(article.read_text(encoding="utf-8"), encoding="utf-8")
        # Exports are made once, before any timing, in a cache that every run shares.
        cache = Path(tmp) / "cache"
        for n, (backend, batch) in enumerate(RUNS):
            overrides = {"embedding_backend": backend, "embedding_batch_size": batch}
            settings = Settings(data_dir=Path(tmp) / f"data-{n}", torch_threads=args.threads, **overrides)
            settings.data_dir.mkdir()
            (settings.data_dir / "embedders").symlink_to(cache.resolve(), target_is_directory=True)
            cache.mkdir(exist_ok=True)
            rate, chunks, used = ingest_rate(docs, settings)
            if used != backend:
                raise SystemExit(f"{backend} fell back to {used}; see the warning above")
            row = {"backend": backend, "batch_size": settings.embedding.batch_size, "chunks": chunks}
            row["ingest_chunks_per_s"] = round(rate, 1)
            print(f"{backend} batch {row['batch_size']}: {rate:.1f} chunks/s", file=sys.stderr, flush=True)
            if batch == 64:
                row["question"] = question_latency(settings, questions)
                for mode in ("dense", "hybrid"):
                    result = evaluate_retrieval(SQUAD, settings, mode=mode)
                    row[mode] = {k: round(result[k], 4) for k in ("ndcg@10", "recall@5")}
            rows.append(row)

    base = rows[0]
    for row in rows:
        row["ingest_vs_torch"] = round(row["ingest_chunks_per_s"] / base["ingest_chunks_per_s"], 2)
        if "question" in row:
            row["question_vs_torch"] = round(base["question"]["p50_ms"] / row["question"]["p50_ms"], 2)
            row["hybrid_ndcg_vs_torch"] = round(row["hybrid"]["ndcg@10"] - base["hybrid"]["ndcg@10"], 4)
    result = {"threads": args.threads, "copies": args.copies, "runs": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
