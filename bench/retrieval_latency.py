"""Retrieval latency at 10k chunks: ragtune's Retriever vs the raw Milvus call, per mode.

The same collection, the same queries, in one run. Query vectors are embedded once up front
and served from a cache, so "ragtune" measures the pipeline's own work (filters, fusion,
hit objects) on top of the store; the embedding model's time per query is reported apart.

    .venv/bin/python bench/retrieval_latency.py [--rows 10000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ragtune.config import Settings
from ragtune.embed import LocalEmbedder
from ragtune.retrieve.retriever import Retriever
from ragtune.store.milvus import MilvusStore
from ragtune.types import Chunk

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-dev"


class CachedEmbedder:
    """Serves precomputed query vectors: isolates pipeline overhead from model time."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.name, self.backend, self.dimension = "cached", "cache", vectors.shape[1]
        self._by_text = dict(zip(texts, vectors))

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        return np.stack([self._by_text[t] for t in texts])


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    corpus = [json.loads(line) for line in (SQUAD / "corpus.jsonl").open()]
    queries = [json.loads(line)["text"] for line in (SQUAD / "queries.jsonl").open()][: args.queries]
    model = LocalEmbedder()
    paragraph_vectors = model.embed([r["text"] for r in corpus])
    started = time.perf_counter()
    query_vectors = model.embed(queries)
    embed_ms = (time.perf_counter() - started) * 1000 / len(queries)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        store = MilvusStore(f"{tmp}/milvus.db", "bench", model.dimension)
        chunks, vectors = [], []
        for i in range(args.rows):
            row = corpus[i % len(corpus)]
            chunks.append(
                Chunk(f"c{i:06d}", f"d{i // 4}", i, row["text"], f"/docs/{row['_id']}-{i}.txt", row["title"], 0, "")
            )
            noisy = paragraph_vectors[i % len(corpus)] + 0.05 * rng.standard_normal(model.dimension)
            vectors.append(noisy / np.linalg.norm(noisy))
        store.insert(chunks, np.asarray(vectors, dtype=np.float32))
        retriever = Retriever(store, CachedEmbedder(queries, query_vectors), settings.retrieval)
        client, depth = store._client, settings.retrieval.candidates
        raw_calls = {
            "dense": lambda q, v: client.search(
                "bench",
                data=[v.tolist()],
                anns_field="dense",
                limit=settings.retrieval.top_k,
                output_fields=["text"],
                search_params={"metric_type": "COSINE"},
            ),
            "bm25": lambda q, v: client.search(
                "bench",
                data=[q],
                anns_field="sparse",
                limit=settings.retrieval.top_k,
                output_fields=["text"],
                search_params={"metric_type": "BM25"},
            ),
            # The raw equivalent of ragtune's hybrid: the two candidate searches it fuses.
            "hybrid": lambda q, v: (
                client.search(
                    "bench",
                    data=[v.tolist()],
                    anns_field="dense",
                    limit=depth,
                    output_fields=["text"],
                    search_params={"metric_type": "COSINE"},
                ),
                client.search(
                    "bench",
                    data=[q],
                    anns_field="sparse",
                    limit=depth,
                    output_fields=["text"],
                    search_params={"metric_type": "BM25"},
                ),
            ),
        }
        result: dict = {
            "rows": args.rows,
            "queries": len(queries),
            "query_embedding_ms": round(embed_ms, 2),
            "modes": {},
        }
        for mode in ("dense", "bm25", "hybrid"):
            for q, v in zip(queries[:20], query_vectors[:20]):  # warm-up
                raw_calls[mode](q, v)
                retriever.run(q, mode=mode)
            raw, ours = [], []
            for q, v in zip(queries, query_vectors):
                t = time.perf_counter()
                raw_calls[mode](q, v)
                raw.append(time.perf_counter() - t)
                t = time.perf_counter()
                retriever.run(q, mode=mode)
                ours.append(time.perf_counter() - t)
            r, o = percentiles(raw), percentiles(ours)
            result["modes"][mode] = {
                "raw_milvus": r,
                "ragtune": o,
                "overhead_p50_ms": round(o["p50_ms"] - r["p50_ms"], 2),
                "overhead_p95_ms": round(o["p95_ms"] - r["p95_ms"], 2),
            }
        store.close()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
