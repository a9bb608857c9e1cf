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
from typing import Protocol, TypeVar

from ragtune.config import RetrievalMode, Settings
from ragtune.embed import Embedder
from ragtune.store.milvus import Filters, Hit, MilvusStore

MODES: tuple[RetrievalMode, ...] = ("dense", "bm25", "hybrid")
K = TypeVar("K", bound=Hashable)


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
        self, store: MilvusStore, embedder: Embedder, settings: Settings, reranker: Reranker | None = None
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
        """Batched retrieval: one embedding call and one store call per mode for all queries."""
        top_k = self.settings.top_k if top_k is None else top_k
        mode = mode or self.settings.retrieval_mode
        if top_k <= 0:
            raise ValueError(f"top_k must be greater than 0; got {top_k}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if any(not q.strip() for q in queries):
            raise ValueError("the question is empty")
        depth = max(top_k, self.settings.candidates) if (mode == "hybrid" or self.reranker) else top_k
        dense = self.search_dense(queries, depth, filters) if mode in ("dense", "hybrid") else None
        sparse = self.store.search_bm25(queries, depth, filters) if mode in ("bm25", "hybrid") else None
        results = []
        for i, query in enumerate(queries):
            hits = self.fuse(dense[i], sparse[i]) if mode == "hybrid" else (dense or sparse)[i]  # type: ignore[index]
            if self.reranker is not None:
                hits = self.reranker.rerank(query, hits)
            results.append(hits[:top_k])
        return results

    def search_dense(self, queries: list[str], limit: int, filters: Filters | None = None) -> list[list[Hit]]:
        return self.store.search_dense(self.embedder.embed(queries), limit, filters)

    def fuse(self, dense: list[Hit], sparse: list[Hit]) -> list[Hit]:
        by_id: dict[str, Hit] = {}
        for hit in dense + sparse:
            known = by_id.get(hit.id)
            by_id[hit.id] = hit if known is None else replace(known, scores={**known.scores, **hit.scores})
        fused = reciprocal_rank_fusion(
            [[h.id for h in dense], [h.id for h in sparse]],
            [self.settings.dense_weight, self.settings.bm25_weight],
            self.settings.rrf_k,
        )
        return [replace(by_id[i], score=s, scores={**by_id[i].scores, "rrf": s}) for i, s in fused]
