"""The configured index as an evaluation or `ragtune synth` reads it: opened to be read, never written.

`ragtune eval … --index` measures a dataset made from the live index (`ragtune synth`)
against that index itself, not a scratch copy, so a team can re-run the same set after every
configuration change. Such a dataset's corpus ids are the index's chunk ids, so a hit is
judged by its own id, and an unanswerable row's ``excluded`` passages are the chunks of the
document it was written for, whose documents the search leaves out.

Nothing is ingested, deleted or re-embedded here. A Milvus Lite index that does not exist
is refused before it is opened (opening would create it), and so is one that holds no
chunks; a dataset whose judged passages the index does not hold (made from another index,
or its documents re-chunked since) is refused rather than measured wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragtune.config import Settings
from ragtune.embed import Embedder
from ragtune.eval.datasets import DatasetError
from ragtune.store.base import is_server_uri
from ragtune.system import System, build
from ragtune.types import Filters, Hit

_FETCH_BATCH = 1000  # chunk ids per store query when looking passages up


class EmptyIndexError(ValueError):
    """There is no index to read, or it holds no chunks; the message says how to make one."""


def describe(settings: Settings) -> str:
    return f"{settings.resolved_milvus_uri()} (collection {settings.store.collection})"


def open_index(settings: Settings, embedder: Embedder | None = None, generator: bool = False) -> System:
    """The system over the configured index, which must exist and hold chunks (EmptyIndexError)."""
    uri = settings.resolved_milvus_uri()
    catalog = settings.data_dir / "catalog.db"
    if not is_server_uri(uri) and not Path(uri).expanduser().exists():
        raise EmptyIndexError(
            f"there is no index at {uri} (RAGTUNE_DATA_DIR={settings.data_dir}): index documents first "
            "(ragtune ingest DIR), or point RAGTUNE_DATA_DIR / RAGTUNE_MILVUS_URI at an index"
        )
    if not settings.store.catalog_url and not catalog.exists():
        raise EmptyIndexError(f"the index at {uri} has no catalog ({catalog}); was it made by ragtune ingest?")
    system = build(settings, embedder=embedder, generator=generator)
    if system.store.count() == 0:
        system.close()
        raise EmptyIndexError(
            f"the index {describe(settings)} holds no chunks: index documents first (ragtune ingest DIR)"
        )
    return system


def existing_chunks(system: System, chunk_ids: Iterable[str]) -> dict[str, Hit]:
    """The chunks of `chunk_ids` the store holds, by id."""
    wanted = sorted(set(chunk_ids))
    found: dict[str, Hit] = {}
    for start in range(0, len(wanted), _FETCH_BATCH):
        found.update((h.id, h) for h in system.store.fetch(wanted[start : start + _FETCH_BATCH]))
    return found


@dataclass
class IndexTarget:
    """An evaluation against the live index: corpus ids are chunk ids."""

    system: System
    description: str

    def ranking(self, hits: list[Hit], depth: int = 100) -> list[str]:
        return list(dict.fromkeys(h.id for h in hits))[:depth]

    def excluding(self, corpus_ids: Sequence[str]) -> Filters | None:
        """Every document but those holding `corpus_ids`."""
        doc_ids = sorted({h.doc_id for h in existing_chunks(self.system, corpus_ids).values()})
        return Filters(exclude_doc_ids=tuple(doc_ids)) if doc_ids else None

    def check_holds(self, corpus_ids: Iterable[str], dataset: str | Path) -> None:
        """DatasetError unless the index holds every one of `corpus_ids`."""
        wanted = set(corpus_ids)
        missing = sorted(wanted - set(existing_chunks(self.system, wanted)))
        if missing:
            raise DatasetError(
                f"the index {self.description} lacks {len(missing)} of the {len(wanted)} passages {dataset} "
                f"judges (e.g. {', '.join(missing[:3])}): the set was made from another index, or its documents "
                "changed or were re-chunked since; make it again with ragtune synth, or drop --index"
            )
