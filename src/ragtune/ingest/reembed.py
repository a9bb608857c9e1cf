"""One embedder per collection: the catalog records which embedder produced a collection's
vectors, `check_embedder` refuses to open it with an incompatible one, and `reembed`
(``ragtune reindex``) replaces every stored vector with the configured embedder's.

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

from tqdm import tqdm

from ragtune.embed import Embedder
from ragtune.store.base import VectorStore
from ragtune.store.catalog import Catalog, EmbedderRecord
from ragtune.types import Chunk

_NUMERICS = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8"}
_REEMBED_BATCH = 256  # chunks per embedding call and upsert


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


def reembed(catalog: Catalog, store: VectorStore, embedder: Embedder, progress: bool | None = None) -> int:
    """Replaces the vector of every stored chunk with `embedder`'s, then records it; returns
    the number of chunks. Rows are upserted by id, so a run stopped halfway loses nothing and
    the next run redoes it; the record changes only once every chunk is re-embedded."""
    total = catalog.counts()["chunks"]
    bar = tqdm(
        total=total,
        unit="chunk",
        desc="re-embedding",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )
    pending: list[Chunk] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if pending:
            store.upsert(pending, embedder.embed([c.text for c in pending]))
            done += len(pending)
            bar.update(len(pending))
            pending.clear()

    offset, page = 0, 200
    while True:
        docs, _ = catalog.list(offset=offset, limit=page)
        if not docs:
            break
        offset += len(docs)
        for doc in docs:
            for seq, hit in enumerate(store.chunks(doc.id)):
                pending.append(  # every field as stored: an upsert replaces the whole row
                    Chunk(
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
                )
            if len(pending) >= _REEMBED_BATCH:
                flush()
    flush()
    bar.close()
    catalog.record_embedder(store.collection, record_of(embedder))
    return done
