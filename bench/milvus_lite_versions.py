"""Which Milvus Lite? Latency (dense, BM25, hybrid) at 10k rows and BM25 ranking quality.

Runs against whatever `milvus-lite` + `pymilvus` the interpreter has, so the same script
compares versions: run it once in ragtune's venv (milvus-lite 2.5.1) and once in a scratch
venv with milvus-lite 3.x, e.g.

    .venv/bin/python bench/milvus_lite_versions.py > bench/out/lite-2.5.1.json
    python -m venv /tmp/v3 && /tmp/v3/bin/pip install milvus-lite==3.2.2 pymilvus bm25s numpy
    /tmp/v3/bin/python bench/milvus_lite_versions.py > bench/out/lite-3.2.2.json

Store-only (random unit vectors for the dense field, real SQuAD text for BM25), so no
embedding model is involved. BM25 quality is nDCG@10 on squad-dev against plain bm25s on
the same 429 paragraphs.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ragtune.eval.metrics import ndcg_at_k, recall_at_k

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-dev"
ROWS, DIM, QUERIES, BATCH = 10_000, 384, 200, 500


def load_squad() -> tuple[list[dict], list[dict], dict[str, dict[str, int]]]:
    corpus = [json.loads(line) for line in (SQUAD / "corpus.jsonl").open()]
    queries = [json.loads(line) for line in (SQUAD / "queries.jsonl").open()]
    qrels: dict[str, dict[str, int]] = {}
    for line in (SQUAD / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return corpus, queries, qrels


def make_collection(client, name: str, analyzer: dict | None) -> None:
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    text_args = {"enable_analyzer": True}
    if analyzer:
        text_args["analyzer_params"] = analyzer
    schema.add_field("text", DataType.VARCHAR, max_length=8192, **text_args)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_function(
        Function(
            name="bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"]
        )
    )
    index = client.prepare_index_params()
    index.add_index("dense", index_type="FLAT", metric_type="COSINE")
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema, index_params=index)


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def main() -> None:
    from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker

    corpus, queries, qrels = load_squad()
    rng = np.random.default_rng(0)
    english = {
        "tokenizer": "standard",
        "filter": [
            "lowercase",
            {"type": "stop", "stop_words": ["_english_"]},
            {"type": "stemmer", "language": "english"},
        ],
    }
    result: dict = {
        "milvus_lite": importlib.metadata.version("milvus-lite"),
        "pymilvus": importlib.metadata.version("pymilvus"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(f"{tmp}/bench.db")
        make_collection(client, "latency", None)
        texts = [corpus[i % len(corpus)]["text"] for i in range(ROWS)]
        vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        started = time.perf_counter()
        for s in range(0, ROWS, BATCH):
            client.insert(
                "latency",
                [
                    {"id": str(i), "text": texts[i], "dense": vectors[i].tolist()}
                    for i in range(s, min(s + BATCH, ROWS))
                ],
            )
        result["insert_10k_s"] = round(time.perf_counter() - started, 2)
        qtexts = [q["text"] for q in queries[:QUERIES]]
        qvecs = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
        timings: dict[str, list[float]] = {"dense": [], "bm25": [], "hybrid": []}
        for text, vec in zip(qtexts, qvecs):
            t = time.perf_counter()
            client.search(
                "latency", data=[vec.tolist()], anns_field="dense", limit=10, search_params={"metric_type": "COSINE"}
            )
            timings["dense"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.search("latency", data=[text], anns_field="sparse", limit=10, search_params={"metric_type": "BM25"})
            timings["bm25"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.hybrid_search(
                "latency",
                [
                    AnnSearchRequest([vec.tolist()], "dense", {"metric_type": "COSINE"}, 50),
                    AnnSearchRequest([text], "sparse", {"metric_type": "BM25"}, 50),
                ],
                RRFRanker(60),
                limit=10,
            )
            timings["hybrid"].append(time.perf_counter() - t)
        result["latency_10k"] = {mode: percentiles(samples) for mode, samples in timings.items()}

        # Ranking quality of Milvus BM25 (default and English analyzer) against bm25s.
        ids = [row["_id"] for row in corpus]
        judged = [q for q in queries if q["_id"] in qrels]
        for label, analyzer in (("default", None), ("english", english)):
            name = f"quality_{label}"
            try:
                make_collection(client, name, analyzer)
            except Exception as exc:  # an analyzer this version lacks is a finding, not a crash
                result[f"bm25_ndcg@10_{label}"] = f"unsupported: {type(exc).__name__}: {str(exc)[:120]}"
                continue
            client.insert(
                name, [{"id": r["_id"], "text": r["text"], "dense": vectors[i].tolist()} for i, r in enumerate(corpus)]
            )
            ndcg, r5 = [], []
            for q in judged:
                hits = client.search(
                    name, data=[q["text"]], anns_field="sparse", limit=10, search_params={"metric_type": "BM25"}
                )[0]
                ranked = [h["id"] for h in hits]
                ndcg.append(ndcg_at_k(ranked, qrels[q["_id"]], 10))
                r5.append(recall_at_k(ranked, qrels[q["_id"]], 5))
            result[f"bm25_ndcg@10_{label}"] = round(float(np.mean(ndcg)), 4)
            result[f"bm25_recall@5_{label}"] = round(float(np.mean(r5)), 4)
        client.close()

    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([r["text"] for r in corpus], stopwords="en", show_progress=False), show_progress=False
    )
    res, _ = retriever.retrieve(
        bm25s.tokenize([q["text"] for q in judged], stopwords="en", show_progress=False), k=10, show_progress=False
    )
    result["bm25s_ndcg@10"] = round(
        float(np.mean([ndcg_at_k([ids[j] for j in res[n]], qrels[q["_id"]], 10) for n, q in enumerate(judged)])), 4
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
