"""Run retrieval and answer evaluations on a BEIR-format dataset in a throwaway store, or on the live index.

The corpus is indexed into a fresh temporary data directory (never the user's), one
ragtune document per corpus record, through the same ingestion code as real files; chunk
hits are mapped back to their record's ``_id``. With ``index=True`` the configured index is
searched instead, read-only, for a dataset made from it (`ragtune.eval.index`). A plain
``bm25s`` ranking of the same records is computed in the same run as the baseline.
Unanswerable rows with ``excluded`` passages are asked with those passages' documents
filtered out; answers are also checked for faithfulness to what they cite
(`ragtune.eval.faithfulness`).

    from ragtune.eval.runner import evaluate_retrieval
    report = evaluate_retrieval("../shared/data/squad-dev", Settings(), mode="hybrid")
    print(report["ndcg@10"], report["baseline_bm25s"]["ndcg@10"])
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ragtune.config import RetrievalMode, Settings
from ragtune.embed import Embedder
from ragtune.eval.datasets import BeirDataset, DatasetError, load_beir
from ragtune.eval.faithfulness import answer_faithfulness, support_check
from ragtune.eval.index import IndexTarget, describe, open_index
from ragtune.eval.metrics import normalize_answer, retrieval_metrics, squad_exact_match, squad_f1
from ragtune.ingest.formats import TEXT
from ragtune.system import System, build
from ragtune.types import Filters, Hit, LoadedDocument, Section

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


class EvalTarget(Protocol):
    """What an evaluation searches, and how its hits and scopes map to the dataset's corpus ids."""

    system: System

    @property
    def description(self) -> str | None:
        """The live index searched; None for a scratch copy of the corpus."""
        ...

    def ranking(self, hits: list[Hit], depth: int = 100) -> list[str]:
        """The distinct corpus ids of `hits`, best first."""
        ...

    def excluding(self, corpus_ids: Sequence[str]) -> Filters | None:
        """A search of every document but those holding `corpus_ids`."""
        ...


@dataclass
class ScratchTarget:
    """The dataset's corpus in a temporary store: each record is a document of its own."""

    system: System
    description: str | None = None

    def ranking(self, hits: list[Hit], depth: int = 100) -> list[str]:
        return doc_ranking(hits, depth)

    def excluding(self, corpus_ids: Sequence[str]) -> Filters | None:
        doc_ids = tuple(self.system.ingestor.document_id(_SOURCE_PREFIX + c, "") for c in corpus_ids)
        return Filters(exclude_doc_ids=doc_ids) if doc_ids else None


@contextmanager
def evaluation_target(
    dataset: BeirDataset,
    dataset_dir: str | Path,
    settings: Settings,
    *,
    index: bool,
    judged: Iterable[str],
    embedder: Embedder | None = None,
    generator: bool = True,
) -> Iterator[EvalTarget]:
    """A scratch copy of the dataset's corpus, or (`index`) the live index read-only, which
    must hold every passage in `judged`."""
    if not index:
        with indexed_dataset(dataset, settings, embedder, generator) as system:
            yield ScratchTarget(system)
        return
    system = open_index(settings, embedder, generator)
    try:
        target = IndexTarget(system, describe(settings))
        target.check_holds(judged, dataset_dir)
        yield target
    finally:
        system.close()


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


def rank_queries(target: EvalTarget, queries: dict[str, str], mode: RetrievalMode) -> dict[str, list[str]]:
    """Each query's distinct corpus ids, best first, searched in batches."""
    rankings: dict[str, list[str]] = {}
    ids = list(queries)
    for start in range(0, len(ids), _QUERY_BATCH):
        batch = ids[start : start + _QUERY_BATCH]
        # Three chunks per document rank plenty of distinct documents for @10 metrics.
        hits = target.system.retriever.run_many([queries[q] for q in batch], top_k=30, mode=mode)
        rankings.update({q: target.ranking(h) for q, h in zip(batch, hits)})
    return rankings


def evaluate_retrieval(
    dataset_dir: str | Path,
    settings: Settings,
    mode: RetrievalMode = "hybrid",
    limit: int | None = None,
    seed: int = 0,
    *,
    index: bool = False,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Retrieval metrics of the dataset's queries; `index` searches the live index (see the module docstring)."""
    dataset = load_beir(dataset_dir)
    query_ids = fixed_sample([q for q in dataset.queries if q in dataset.qrels], limit, seed)
    judged = {c for q in query_ids for c in dataset.qrels[q]}
    with evaluation_target(
        dataset, dataset_dir, settings, index=index, judged=judged, embedder=embedder, generator=False
    ) as target:
        started = time.perf_counter()
        rankings = rank_queries(target, {q: dataset.queries[q] for q in query_ids}, mode)
        elapsed = time.perf_counter() - started
    qrels = {q: dataset.qrels[q] for q in query_ids}
    return {
        "dataset": str(dataset_dir),
        "mode": mode,
        **retrieval_metrics(rankings, qrels),
        "baseline_bm25s": retrieval_metrics(bm25s_baseline(dataset, query_ids), qrels),
        "ms_per_query": round(elapsed * 1000 / max(len(query_ids), 1), 2),
        "index": target.description,
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
    *,
    index: bool = False,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Answer metrics, citation support and faithfulness of the answerable questions, and the
    abstention on the unanswerable ones (each asked under its scope); `index`: the live index."""
    dataset = load_beir(dataset_dir)
    answerable = fixed_sample([q for q in dataset.queries if dataset.answers.get(q)], limit, seed)
    unanswerable = fixed_sample(list(dataset.unanswerable), limit, seed)
    if not answerable:
        raise DatasetError(
            f"{dataset_dir}: no query in queries.jsonl has an 'answers' list; answer evaluation needs them"
        )
    check = support_check(settings.eval, settings.embedding.device)  # a bad model fails before indexing
    judged = {c for q in unanswerable for c in dataset.excluded.get(q, ())}
    exact = f1 = supported = answered = false_abstentions = declined = 0.0
    faithful = sentences = 0
    started = time.perf_counter()
    with evaluation_target(dataset, dataset_dir, settings, index=index, judged=judged, embedder=embedder) as target:
        rag = target.system.rag
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
                faithfulness = answer_faithfulness(answer, check)
                faithful += faithfulness.supported
                sentences += faithfulness.sentences
            if n % 100 == 0:
                log_progress(f"answered {n}/{len(answerable)}")
        for qid in unanswerable:
            scope = target.excluding(dataset.excluded[qid]) if dataset.excluded.get(qid) else None
            declined += rag.ask(dataset.unanswerable[qid], mode=mode, filters=scope).abstained
    total = len(answerable)
    return {
        "dataset": str(dataset_dir),
        "generator": settings.answer.generator,
        "exact_match": round(exact / total, 4),
        "f1": round(f1 / total, 4),
        "citation_support": round(supported / answered, 4) if answered else 0.0,
        "faithfulness": round(faithful / sentences, 4) if sentences else 0.0,
        "abstain_rate": round(declined / len(unanswerable), 4) if unanswerable else None,
        "false_abstain_rate": round(false_abstentions / total, 4),
        "n_questions": total,
        "n_unanswerable": len(unanswerable),
        "n_answer_sentences": sentences,
        "faithfulness_check": check.name,
        "index": target.description,
        "seconds": round(time.perf_counter() - started, 1),
    }


def fixed_sample(ids: list[str], limit: int | None, seed: int) -> list[str]:
    """A fixed-seed sample, so a --limit run measures the same questions every time."""
    if limit is None or limit >= len(ids):
        return ids
    if limit <= 0:
        raise ValueError(f"limit must be greater than 0; got {limit}")
    return sorted(random.Random(seed).sample(ids, limit), key=ids.index)
