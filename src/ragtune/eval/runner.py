"""Run retrieval and answer evaluations on a BEIR-format dataset in a throwaway store.

The corpus is indexed into a fresh temporary data directory (never the user's), one
ragtune document per corpus record, through the same ingestion code as real files; chunk
hits are mapped back to their record's ``_id``. A plain ``bm25s`` ranking of the same
records is computed in the same run as the baseline.

    from ragtune.eval.runner import evaluate_retrieval
    report = evaluate_retrieval("../shared/data/squad-dev", Settings(), mode="hybrid")
    print(report["ndcg@10"], report["baseline_bm25s"]["ndcg@10"])
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragtune.config import RetrievalMode, Settings
from ragtune.embed import Embedder
from ragtune.eval.datasets import BeirDataset, DatasetError, load_beir
from ragtune.eval.metrics import normalize_answer, retrieval_metrics, squad_exact_match, squad_f1
from ragtune.ingest.formats import TEXT
from ragtune.system import System, build
from ragtune.types import LoadedDocument, Section

_SOURCE_PREFIX = "corpus:"
_QUERY_BATCH = 64


def log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def indexed_dataset(
    dataset: BeirDataset, settings: Settings, embedder: Embedder | None = None, generator: bool = True
) -> Iterator[System]:
    """The system over a temporary store holding the dataset's corpus (an answer generator
    only when `generator`)."""
    with tempfile.TemporaryDirectory(prefix="ragtune-eval-") as tmp:
        store = settings.store.model_copy(update={"milvus_uri": "", "catalog_url": "", "collection": "eval"})
        scratch = settings.model_copy(update={"data_dir": Path(tmp), "store": store})
        system = build(scratch, embedder=embedder, generator=generator)
        try:
            started = time.perf_counter()
            docs = (
                LoadedDocument(f"{_SOURCE_PREFIX}{doc.id}", TEXT.content_type, doc.title, [Section(doc.text)])
                for doc in dataset.corpus.values()
            )
            report = system.ingestor.ingest_documents(docs)
            log_progress(
                f"indexed {len(dataset.corpus)} records as {report.chunks} chunks in {time.perf_counter() - started:.1f}s"
            )
            yield system
        finally:
            system.close()


def doc_ranking(hits: list[Any], depth: int = 100) -> list[str]:
    ranking: list[str] = []
    for hit in hits:
        doc = hit.source.removeprefix(_SOURCE_PREFIX)
        if doc not in ranking:
            ranking.append(doc)
    return ranking[:depth]


def bm25s_baseline(dataset: BeirDataset, query_ids: list[str]) -> dict[str, list[str]]:
    """Plain bm25s (Lucene BM25, English stop words) over title + text of each record."""
    import bm25s

    ids = list(dataset.corpus)
    retriever = bm25s.BM25()
    corpus = [f"{dataset.corpus[i].title} {dataset.corpus[i].text}" for i in ids]
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([dataset.queries[q] for q in query_ids], stopwords="en", show_progress=False)
    results, _ = retriever.retrieve(queries, k=min(100, len(ids)), show_progress=False)
    return {q: [ids[j] for j in results[n]] for n, q in enumerate(query_ids)}


def evaluate_retrieval(
    dataset_dir: str | Path, settings: Settings, mode: RetrievalMode = "hybrid", limit: int | None = None, seed: int = 0
) -> dict[str, Any]:
    dataset = load_beir(dataset_dir)
    query_ids = fixed_sample([q for q in dataset.queries if q in dataset.qrels], limit, seed)
    with indexed_dataset(dataset, settings, generator=False) as system:
        started = time.perf_counter()
        rankings: dict[str, list[str]] = {}
        for start in range(0, len(query_ids), _QUERY_BATCH):
            batch = query_ids[start : start + _QUERY_BATCH]
            # Three chunks per document rank plenty of distinct documents for @10 metrics.
            hits = system.retriever.run_many([dataset.queries[q] for q in batch], top_k=30, mode=mode)
            rankings.update({q: doc_ranking(h) for q, h in zip(batch, hits)})
        elapsed = time.perf_counter() - started
    qrels = {q: dataset.qrels[q] for q in query_ids}
    return {
        "dataset": str(dataset_dir),
        "mode": mode,
        **retrieval_metrics(rankings, qrels),
        "baseline_bm25s": retrieval_metrics(bm25s_baseline(dataset, query_ids), qrels),
        "ms_per_query": round(elapsed * 1000 / max(len(query_ids), 1), 2),
        "settings": {
            "rrf_k": settings.retrieval.rrf_k,
            "dense_weight": settings.retrieval.dense_weight,
            "bm25_weight": settings.retrieval.bm25_weight,
            "chunk_size": settings.ingest.chunk_size,
            "chunk_overlap": settings.ingest.chunk_overlap,
        },
    }


def evaluate_answers(
    dataset_dir: str | Path,
    settings: Settings,
    limit: int | None = None,
    seed: int = 0,
    mode: RetrievalMode | None = None,
) -> dict[str, Any]:
    dataset = load_beir(dataset_dir)
    answerable = fixed_sample([q for q in dataset.queries if dataset.answers.get(q)], limit, seed)
    unanswerable = fixed_sample(list(dataset.unanswerable), limit, seed)
    if not answerable:
        raise DatasetError(
            f"{dataset_dir}: no query in queries.jsonl has an 'answers' list; answer evaluation needs them"
        )
    exact = f1 = supported = answered = false_abstentions = declined = 0.0
    started = time.perf_counter()
    with indexed_dataset(dataset, settings) as system:
        rag = system.rag
        assert rag is not None  # built with its generator
        for n, qid in enumerate(answerable, start=1):
            answer = rag.ask(dataset.queries[qid], mode=mode)
            golds = dataset.answers[qid]
            if answer.abstained:
                false_abstentions += 1
            else:
                answered += 1
                exact += squad_exact_match(answer.plain_text(), golds)
                f1 += squad_f1(answer.plain_text(), golds)
                cited = " ".join(normalize_answer(c.snippet) for c in answer.citations)
                supported += any(normalize_answer(g) in cited for g in golds)
            if n % 100 == 0:
                log_progress(f"answered {n}/{len(answerable)}")
        for qid in unanswerable:
            declined += rag.ask(dataset.unanswerable[qid], mode=mode).abstained
    total = len(answerable)
    return {
        "dataset": str(dataset_dir),
        "generator": settings.answer.generator,
        "exact_match": round(exact / total, 4),
        "f1": round(f1 / total, 4),
        "citation_support": round(supported / answered, 4) if answered else 0.0,
        "abstain_rate": round(declined / len(unanswerable), 4) if unanswerable else None,
        "false_abstain_rate": round(false_abstentions / total, 4),
        "n_questions": total,
        "n_unanswerable": len(unanswerable),
        "seconds": round(time.perf_counter() - started, 1),
    }


def fixed_sample(ids: list[str], limit: int | None, seed: int) -> list[str]:
    """A fixed-seed sample, so a --limit run measures the same questions every time."""
    if limit is None or limit >= len(ids):
        return ids
    if limit <= 0:
        raise ValueError(f"limit must be greater than 0; got {limit}")
    return sorted(random.Random(seed).sample(ids, limit), key=ids.index)
