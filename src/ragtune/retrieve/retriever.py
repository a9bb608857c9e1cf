"""Dense, BM25 and hybrid retrieval over the chunk store, with filters and optional reranking.

Hybrid fuses the two ranked lists with weighted reciprocal rank fusion,
``score(d) = Σ_m w_m / (k + rank_m(d))``: rank-based, so the incomparable scales of cosine
similarity and BM25 never need calibrating. It runs here rather than in Milvus's
``hybrid_search`` because Milvus's RRF ranker takes no per-list weights.

    >>> from ragtune.retrieve.retriever import reciprocal_rank_fusion
    >>> [h for h, _ in reciprocal_rank_fusion([["a", "b"], ["b", "c"]], weights=[1.0, 1.0], k=60)]
    ['b', 'a', 'c']
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Literal, Protocol, TypeVar

import numpy as np

from ragtune.config import RetrievalMode, RetrievalSettings
from ragtune.embed import Embedder
from ragtune.retrieve.context import expand_context
from ragtune.store.base import VectorStore
from ragtune.types import Filters, Hit, check_question

K = TypeVar("K", bound=Hashable)

Ranking = Literal["dense", "bm25"]
# The ranked lists each retrieval mode searches; more than one are fused.
MODE_RANKINGS: dict[RetrievalMode, tuple[Ranking, ...]] = {
    "dense": ("dense",),
    "bm25": ("bm25",),
    "hybrid": ("dense", "bm25"),
}


class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]: ...


class CrossEncoderReranker:
    """Re-scores (question, chunk) pairs with a local sentence-transformers cross-encoder."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from sentence_transformers import CrossEncoder

        self._model = CrossEncoder(model_path, device=device, local_files_only=True)
        self.batch_size = batch_size

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        scores = self._model.predict([(query, h.text) for h in hits], batch_size=self.batch_size)
        rescored = [replace(h, score=float(s), scores={**h.scores, "rerank": float(s)}) for h, s in zip(hits, scores)]
        return sorted(rescored, key=lambda h: h.score, reverse=True)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[K]], weights: Sequence[float], k: int) -> list[tuple[K, float]]:
    """Keys ordered by weighted RRF score; ties keep the order of first appearance."""
    scores: dict[K, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


class Retriever:
    """Finds the chunks that best match a question.

    retriever = Retriever(store, embedder, settings)
    hits = retriever.run("How do I deploy?", top_k=5, mode="hybrid")
    """

    def __init__(
        self, store: VectorStore, embedder: Embedder, settings: RetrievalSettings, reranker: Reranker | None = None
    ) -> None:
        self.store, self.embedder, self.settings, self.reranker = store, embedder, settings, reranker

    def run(
        self, query: str, top_k: int | None = None, mode: RetrievalMode | None = None, filters: Filters | None = None
    ) -> list[Hit]:
        return self.run_many([query], top_k, mode, filters)[0]

    def run_many(
        self,
        queries: list[str],
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
    ) -> list[list[Hit]]:
        """Batched retrieval: one embedding call and one store call per ranked list for all queries."""
        top_k = self.settings.top_k if top_k is None else top_k
        mode = mode or self.settings.mode
        if top_k <= 0:
            raise ValueError(f"top_k must be greater than 0; got {top_k}")
        if mode not in MODE_RANKINGS:
            raise ValueError(f"mode must be one of {', '.join(MODE_RANKINGS)}; got {mode!r}")
        for query in queries:
            check_question(query)  # an empty one is refused; the text is searched as given
        rankings = MODE_RANKINGS[mode]
        depth = max(top_k, self.settings.candidates) if (len(rankings) > 1 or self.reranker) else top_k
        searched = {ranking: self._search(ranking, queries, depth, filters) for ranking in rankings}
        results = []
        for i, query in enumerate(queries):
            per_ranking = {ranking: hits[i] for ranking, hits in searched.items()}
            hits = self.fuse(per_ranking) if len(per_ranking) > 1 else per_ranking[rankings[0]]
            if self.reranker is not None:
                hits = self.reranker.rerank(query, hits)
            results.append(hits[:top_k])
        return results

    def run_fused(
        self,
        queries: list[str],
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:
        """Multi-query search: each query's ranking (to the candidate depth), fused by equal-weight RRF."""
        top_k = self.settings.top_k if top_k is None else top_k
        rankings = self.run_many(queries, max(top_k, self.settings.candidates), mode, filters)
        by_id = {h.id: h for hits in reversed(rankings) for h in hits}  # the first query's copy wins
        fused = reciprocal_rank_fusion(
            [[h.id for h in hits] for hits in rankings], [1.0] * len(rankings), self.settings.rrf_k
        )
        return [replace(by_id[i], score=s, scores={**by_id[i].scores, "multi_query_rrf": s}) for i, s in fused[:top_k]]

    def relevant(self, query: str, hits: list[Hit], min_relevance: float) -> list[Hit]:
        """The hits whose cosine similarity to `query` is at least `min_relevance`; each keeps it
        as ``scores["relevance"]``. Computed afresh for every hit: a fused, reranked or
        multi-query score is not the similarity to this query, and BM25-only hits have none."""
        if not hits:
            return hits
        vectors = np.asarray(self.embedder.embed([query, *(h.text for h in hits)]), dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        similarity = vectors[1:] @ vectors[0]
        return [
            replace(h, scores={**h.scores, "relevance": float(s)})
            for h, s in zip(hits, similarity)
            if s >= min_relevance
        ]

    def expand(self, hits: list[Hit], window: int | None = None) -> list[Hit]:
        """`hits` with their neighbouring chunks (`ragtune.retrieve.context`); window default RAGTUNE_CONTEXT_WINDOW."""
        return expand_context(self.store, hits, self.settings.context_window if window is None else window)

    def _search(self, ranking: Ranking, queries: list[str], limit: int, filters: Filters | None) -> list[list[Hit]]:
        if ranking == "dense":
            return self.store.search_dense(self.embedder.embed(queries), limit, filters)
        return self.store.search_bm25(queries, limit, filters)

    def fuse(self, rankings: dict[Ranking, list[Hit]]) -> list[Hit]:
        """One list from several rankings of the same query, by weighted reciprocal rank fusion."""
        by_id: dict[str, Hit] = {}
        for hit in (h for hits in rankings.values() for h in hits):
            known = by_id.get(hit.id)
            by_id[hit.id] = hit if known is None else replace(known, scores={**known.scores, **hit.scores})
        weights = {"dense": self.settings.dense_weight, "bm25": self.settings.bm25_weight}
        fused = reciprocal_rank_fusion(
            [[h.id for h in hits] for hits in rankings.values()],
            [weights[ranking] for ranking in rankings],
            self.settings.rrf_k,
        )
        return [replace(by_id[i], score=s, scores={**by_id[i].scores, "rrf": s}) for i, s in fused]
