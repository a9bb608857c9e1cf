"""One embedder per collection: the catalog records which embedder produced a collection's
vectors, `check_embedder` refuses to open it with an incompatible one, and `reindex`
(``ragtune reindex``) re-embeds every stored chunk with another embedder into a new Milvus
collection, then switches to it.

Vectors of two embedders are only comparable when they compute the same function: torch and
ONNX Runtime with fp32 weights do (cosine 1.0000 on squad-dev's chunks), int8 weights move
every vector a little (cosine ≈ 0.99), and another model or an HTTP server's model is another
space altogether. Mixed, they would not fail; search would just quietly get worse.

    >>> from ragtune.store.catalog import EmbedderRecord
    >>> same_vectors(EmbedderRecord("m", "torch", 384), EmbedderRecord("m", "onnx", 384))
    True
    >>> same_vectors(EmbedderRecord("m", "torch", 384), EmbedderRecord("m", "onnx-int8", 384))
    False
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ragtune.embed import Embedder
from ragtune.store.base import StoreError, VectorStore
from ragtune.store.catalog import Catalog, DocumentRecord, EmbedderRecord
from ragtune.store.reindexing import Reindexing
from ragtune.types import Chunk, Hit

_NUMERICS = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8"}
_REEMBED_BATCH = 256  # chunks per embedding call and upsert
_PAGE = 200  # documents per catalog query
# How long a reindex may go without progress before another run may take its collection over:
# it renews the lease after each embedding call of at most _REEMBED_BATCH chunks.
_LEASE_SECONDS = 300.0


class EmbedderMismatchError(RuntimeError):
    """The collection's vectors come from another embedder than the configured one."""


def record_of(embedder: Embedder) -> EmbedderRecord:
    return EmbedderRecord(embedder.name, embedder.backend, embedder.dimension)


def same_vectors(a: EmbedderRecord, b: EmbedderRecord) -> bool:
    """Whether vectors of `a` and `b` may share a collection."""
    numerics = (_NUMERICS.get(a.backend, a.backend), _NUMERICS.get(b.backend, b.backend))
    return a.model == b.model and a.dimension == b.dimension and numerics[0] == numerics[1]


def check_embedder(catalog: Catalog, store: VectorStore, embedder: Embedder) -> None:
    """Records the embedder of a new collection; raises EmbedderMismatchError on a mismatch."""
    current = record_of(embedder)
    recorded = catalog.embedder(store.collection)
    if recorded is None:
        # Collections indexed before ragtune kept this record were embedded by this model
        # on torch (or by the embedding server), the only backends there were.
        if store.count() and current.backend != "http":
            recorded = EmbedderRecord(current.model, "torch", current.dimension)
        else:
            recorded = current
        catalog.record_embedder(store.collection, recorded)
    if not same_vectors(recorded, current):
        raise EmbedderMismatchError(
            f"collection {store.collection!r} holds vectors from {recorded}, but the configured embedder is "
            f"{current}; searching one with the other would silently give worse results. Either set "
            f"RAGTUNE_EMBEDDING_MODEL={recorded.model} and RAGTUNE_EMBEDDING_BACKEND="
            f"{recorded.backend if recorded.backend != 'http' else '…'} back, or re-embed the collection "
            "with the new one: ragtune reindex"
        )


@dataclass(frozen=True)
class ReindexReport:
    """What `reindex` did."""

    chunks: int  # chunks in the new collection, all re-embedded
    documents: int  # documents they belong to
    copied: int  # documents this run re-embedded (one changed meanwhile counts again)
    resumed: int  # documents a stopped run had re-embedded already
    removed: int  # documents deleted while it ran, removed from the new collection too
    collection: str  # the new Milvus collection, now live
    previous: str  # the Milvus collection it replaced, dropped
    embedder: EmbedderRecord

    def summary(self) -> str:
        resumed = f", resuming a stopped run that had done {self.resumed}" if self.resumed else ""
        removed = f"; {self.removed} deleted meanwhile, left out" if self.removed else ""
        return (
            f"re-embedded {self.chunks} chunks of {self.documents} documents with {self.embedder}: "
            f"{self.copied} documents in this run{resumed}{removed}. Milvus collection {self.collection!r} "
            f"now serves them; {self.previous!r} was dropped"
        )


def reembed(catalog: Catalog, store: VectorStore, embedder: Embedder, progress: bool | None = None) -> int:
    """`reindex`, returning the number of chunks the new collection holds."""
    return reindex(catalog, store, embedder, progress).chunks


def reindex(catalog: Catalog, store: VectorStore, embedder: Embedder, progress: bool | None = None) -> ReindexReport:
    """Re-embeds every chunk of `store`'s collection with `embedder` into a new Milvus collection
    (of `embedder`'s dimension), then switches to it; `progress`: a progress bar on stderr
    (None: when stderr is a terminal).

    Until the switch, `store` and every other process keep searching (and ingesting into) the
    live collection with the vectors they have. The catalog records which documents are copied,
    at which version (`ragtune.store.reindexing`): a run stopped at any point resumes with the
    rest, one with another embedder starts over, and documents ingested, changed or deleted
    meanwhile are copied again or removed before the switch, which records the new collection
    and its embedder in one catalog transaction. Processes built afterwards (`ragtune.system.
    build`, a service's ``POST /v1/admin/reload``) open the new collection.

    The previous collection is then dropped. What still holds it, `store` included, fails on
    every call (Milvus: collection not found) rather than search vectors nobody maintains any
    more, and the catalog refuses its ingestion (`ragtune.store.catalog._check_written`): it
    must be rebuilt. With Milvus Lite that can only be this process (the data path's lock); with
    a server, restart or reload the other processes. One reindex at a time per collection: another
    run raises ReindexBusyError (`Reindexing.claim`)."""
    plan = Reindexing(catalog, store.collection)
    plan.claim(_LEASE_SECONDS)  # ReindexBusyError while another run holds the collection
    try:
        return _reindex(plan, catalog, store, embedder, progress)
    finally:
        plan.release()


def _reindex(
    plan: Reindexing, catalog: Catalog, store: VectorStore, embedder: Embedder, progress: bool | None
) -> ReindexReport:
    live = catalog.physical(store.collection)
    if store.physical != live:
        raise StoreError(
            f"this store reads Milvus collection {store.physical!r}, but {store.collection!r} lives in {live!r} "
            "since another reindex: reopen it"
        )
    target = record_of(embedder)
    shadow = _open_shadow(plan, store, target)
    resumed = plan.done()
    bar = tqdm(unit="chunk", desc="re-embedding", file=sys.stderr, disable=None if progress is None else not progress)
    try:
        copied = removed = 0
        # Until nothing is left at the switch: ingestion may go on meanwhile. What remains of the
        # race: an ingestion (or deletion) that began before the switch and writes its chunks to
        # the previous collection after it. Its catalog commit is then refused, so nothing is
        # lost silently, but it fails: the document stays pending (a deletion: present) in the
        # new collection as copied, until it is ingested (deleted) again.
        while True:
            removed += _remove_deleted(plan, shadow)
            copied += _copy_stale(plan, store, shadow, embedder, bar)
            documents = plan.done()
            plan.renew(_LEASE_SECONDS)
            if plan.switch(previous_dimension=store.dimension):
                break
        chunks = shadow.count()
    finally:
        bar.close()
        shadow.close()
    report = ReindexReport(chunks, documents, copied, resumed, removed, shadow.physical, live, target)
    _drop_shadow(plan, store)
    return report


def _open_shadow(plan: Reindexing, store: VectorStore, target: EmbedderRecord) -> VectorStore:
    """The collection to fill with `target`'s vectors: the one a stopped run was filling, or a
    new one (after dropping another embedder's, or the previous one a switch left)."""
    shadow = plan.shadow()
    present = store.physical_collections()
    if shadow is not None and shadow.embedder == target and shadow.physical in present:
        return store.sibling(shadow.physical, target.dimension)
    name = _next_name(store.collection, present | {store.physical})
    if shadow is not None:
        _drop_shadow(plan, store)
    plan.begin(name, target)  # recorded before it is made: a stop in between leaves nothing unrecorded
    return store.sibling(name, target.dimension)


def _next_name(collection: str, taken: set[str]) -> str:
    """``<collection>__<n>``, n above the numbers in `taken` (the live collection's among them):
    a live collection's name is never used again, so a process still holding one that was
    dropped cannot find other vectors under it."""
    base = collection[: 255 - 12] + "__"  # Milvus names have at most 255 characters
    numbers = [int(n[len(base) :]) for n in taken if n.startswith(base) and n[len(base) :].isdigit()]
    return f"{base}{max(numbers, default=0) + 1}"


def _drop_shadow(plan: Reindexing, store: VectorStore) -> None:
    shadow = plan.shadow()
    if shadow is not None and shadow.physical in store.physical_collections():
        store.sibling(shadow.physical, shadow.dimension).drop()
    plan.dropped()


def _remove_deleted(plan: Reindexing, shadow: VectorStore) -> int:
    """Removes the documents deleted since they were copied; returns how many."""
    removed = 0
    while ids := plan.removed(limit=_PAGE):
        plan.renew(_LEASE_SECONDS)
        shadow.delete_documents(ids)
        plan.forget(ids)
        removed += len(ids)
    return removed


def _copy_stale(plan: Reindexing, store: VectorStore, shadow: VectorStore, embedder: Embedder, bar: tqdm) -> int:
    """Copies, re-embedded, every document not in the shadow as it is now; returns how many."""
    bar.total = bar.n + plan.left()[1]
    bar.refresh()
    copied = 0
    # Each record is read before its chunks: a change after the read changes its version,
    # so the document counts as left to copy again.
    while docs := plan.stale(limit=_PAGE):
        batch: list[DocumentRecord] = []
        chunks: list[Chunk] = []
        for doc in docs:
            batch.append(doc)
            chunks.extend(_as_chunk(seq, hit) for seq, hit in enumerate(store.chunks(doc.id)))
            if len(chunks) >= _REEMBED_BATCH:
                _write(plan, shadow, embedder, batch, chunks, bar)
                batch, chunks = [], []
        _write(plan, shadow, embedder, batch, chunks, bar)
        copied += len(docs)
    return copied


def _write(
    plan: Reindexing,
    shadow: VectorStore,
    embedder: Embedder,
    docs: list[DocumentRecord],
    chunks: list[Chunk],
    bar: tqdm,
) -> None:
    if not docs:
        return
    # A large document's chunks are many calls: the lease is renewed after each (and so is
    # checked to be still this run's, before anything is written: else ReindexBusyError).
    vectors = []
    for start in range(0, len(chunks), _REEMBED_BATCH):
        vectors.append(embedder.embed([c.text for c in chunks[start : start + _REEMBED_BATCH]]))
        plan.renew(_LEASE_SECONDS)
    if not vectors:
        plan.renew(_LEASE_SECONDS)
    # A document copied before, at another version, may have had other chunks; and a stopped
    # run may have written some of these unrecorded.
    shadow.delete_documents(d.id for d in docs)
    if vectors:
        shadow.upsert(chunks, np.concatenate(vectors))
    plan.copied(docs)  # only once they are stored: a stop before this redoes them
    bar.update(len(chunks))


def _as_chunk(seq: int, hit: Hit) -> Chunk:
    """The stored chunk, every field as stored."""
    return Chunk(
        hit.id,
        hit.doc_id,
        seq,
        hit.text,
        hit.source,
        hit.title,
        hit.page,
        hit.heading,
        hit.tags,
        hit.collection,
        hit.metadata,
    )
