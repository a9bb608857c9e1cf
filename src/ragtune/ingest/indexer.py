"""Index files: discover → hash → parse → chunk → embed (batched) → store, recorded in the catalog.

Idempotent by content hash: an unchanged file is skipped, a changed one replaces its chunks,
a file gone from an ingested folder loses its chunks. Resumable: a document is marked
``pending`` before its old chunks are deleted and ``indexed`` only after its new chunks are
stored, so a run killed anywhere leaves ``pending`` documents that the next run re-indexes
from scratch (delete, then insert) without duplicates.

    >>> from ragtune.ingest.indexer import parse_shard
    >>> parse_shard("2/4")
    (2, 4)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ragtune.config import IngestSettings
from ragtune.embed import Embedder
from ragtune.ingest.chunking import chunk_document, document_id
from ragtune.ingest.formats import Limits, LoaderError, has_supported_name
from ragtune.ingest.sandbox import shared_parser
from ragtune.store.base import VectorStore
from ragtune.store.catalog import INDEXED, Catalog, IndexedDocument, PendingDocument
from ragtune.types import NO_LABELS, Chunk, Labels, LoadedDocument, check_collection, merge_metadata

# Chunks embedded between two progress reports when a caller follows progress (the job worker):
# over the API's question-batching size, so each slice still goes to the model directly.
PROGRESS_SLICE = 128
Progress = Callable[[int, int], None]  # (chunks embedded so far, chunks in all)


@dataclass
class IngestReport:
    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    passed_over: list[str] = field(default_factory=list)  # in folders, files of no supported type
    chunks: int = 0

    def summary(self) -> str:
        summary = (
            f"{len(self.indexed)} indexed ({self.chunks} chunks), {len(self.unchanged)} unchanged, "
            f"{len(self.failed)} failed, {len(self.removed)} removed"
        )
        if self.passed_over:
            summary += f", {len(self.passed_over)} passed over (not a supported type)"
        return summary


@dataclass
class _Prepared:
    pending: PendingDocument
    doc: LoadedDocument
    chunks: list[Chunk]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N) with 0 <= i < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4); got {text!r}") from None
    if count <= 0 or not 0 <= index < count:
        raise ValueError(f"--shard i/N needs 0 <= i < N; got {text!r}")
    return index, count


def in_shard(relative_path: str, shard: tuple[int, int]) -> bool:
    """Stable across machines: the hash of the path relative to the ingested root."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0]


def discover(
    roots: list[Path],
    shard: tuple[int, int] | None = None,
    follow_links: bool = False,
    skipped: list[tuple[str, str]] | None = None,
    passed_over: list[str] | None = None,
) -> Iterator[Path]:
    """The files to index: explicit files as given, folders walked for supported types.

    Only regular files are yielded: a FIFO, socket or device is never opened (reading a
    FIFO blocks forever). An explicit one, or one with a supported extension in a folder,
    is appended to `skipped` as ``(path, reason)``. In a folder, hidden entries are
    skipped, and symbolic links are not followed out of the folder: a link to a file
    outside it (``notes.md -> /etc/passwd``) is skipped and reported, and linked folders
    are not descended, unless `follow_links` (``ragtune ingest --follow-links``); then
    linked folders are walked once each, so a link loop ends. Explicit files are read
    wherever their links point: naming one is asking for it.

    The folder walk passes over files without a supported extension (`format_by_name`, the
    rule an explicit file and an HTTP upload meet too), so a stray binary in a folder is
    never read; their paths are appended to `passed_over`.
    """

    def skip(path: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append((str(path), reason))

    for root in roots:
        if not root.is_dir():
            kind = _special_kind(root)
            if kind:
                skip(root, f"not a regular file ({kind}); skipped")
            elif shard is None or in_shard(root.name, shard):
                yield root
            continue
        real_root = Path(os.path.realpath(root))
        visited = {str(real_root)}
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
            except OSError as exc:
                skip(folder, f"cannot list folder: {exc.strerror or exc}")
                continue
            files: list[Path] = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                try:
                    is_link = entry.is_symlink()
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    continue
                if is_dir:
                    if not is_link:
                        stack.append(path)
                    elif follow_links:
                        target = os.path.realpath(path)
                        if target not in visited:  # a loop, or a folder already walked
                            visited.add(target)
                            stack.append(path)
                    continue
                if not has_supported_name(entry.name):
                    if passed_over is not None:
                        passed_over.append(str(path))
                    continue
                if is_link and not follow_links:
                    linked = Path(os.path.realpath(path))
                    if not linked.is_relative_to(real_root):
                        skip(path, f"a link to {linked}, outside {root}; skipped (--follow-links to index it)")
                        continue
                kind = _special_kind(path)
                if kind:
                    skip(path, f"not a regular file ({kind}); skipped")
                    continue
                files.append(path)
            for path in reversed(files):
                if shard is None or in_shard(path.relative_to(root).as_posix(), shard):
                    yield path


def _special_kind(path: Path) -> str:
    """Empty for a regular file (after links), else what it is: FIFO, socket, device, broken link."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return "a broken or looping link" if path.is_symlink() else f"unreadable: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


def _same(doc: LoadedDocument) -> LoadedDocument:
    return doc


def content_hash(data: bytes, labels: Labels) -> str:
    """What decides that a document is unchanged: its bytes and, when given, its tags and
    metadata (so re-ingesting with new metadata updates it). Bytes alone otherwise, as before
    there was metadata, so an upgrade re-indexes nothing."""
    if labels.tags or labels.metadata:
        data += b"\x00" + json.dumps([labels.tags, labels.metadata], sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


class Ingestor:
    """Indexes files into the store and records every document in the catalog. Documents go
    to the collection their labels name, or to the default one (the store's, RAGTUNE_COLLECTION)."""

    def __init__(self, settings: IngestSettings, embedder: Embedder, store: VectorStore, catalog: Catalog) -> None:
        self.settings, self.embedder, self.store, self.catalog = settings, embedder, store, catalog
        self.default_collection = store.collection

    @property
    def _written_to(self) -> tuple[str, str]:
        """Where this ingestor's chunks go: the catalog refuses a change to a document whose
        chunks went to a Milvus collection that ``ragtune reindex`` switched away from meanwhile."""
        return self.store.collection, self.store.physical

    def filed(self, labels: Labels) -> Labels:
        """`labels` with their collection named: the default one when they name none."""
        collection = check_collection(labels.collection or self.default_collection)
        return Labels(collection, labels.tags, labels.metadata)

    def document_id(self, source: str, collection: str) -> str:
        return document_id(source, collection, self.default_collection)

    def ingest_paths(
        self,
        paths: list[Path],
        labels: Labels = NO_LABELS,
        shard: tuple[int, int] | None = None,
        prune: bool = True,
        progress: bool | None = None,
        follow_links: bool = False,
    ) -> IngestReport:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"no such file or directory: {', '.join(missing)}")
        roots = [p.resolve() for p in paths]
        labels = self.filed(labels)
        report = IngestReport()
        files = list(discover(roots, shard, follow_links, skipped=report.failed, passed_over=report.passed_over))
        bar = tqdm(
            total=len(files),
            unit="file",
            desc="indexing",
            file=sys.stderr,
            disable=None if progress is None else not progress,
        )

        def on_done() -> None:
            bar.update(1)
            bar.set_postfix(chunks=report.chunks, failed=len(report.failed), refresh=False)

        self._index(((str(path), path.read_bytes) for path in files), labels, report, on_done)
        bar.close()
        if prune:
            seen = {str(path) for path in files}
            for root in roots:
                if root.is_dir():
                    self._prune(root, shard, seen, labels.collection, report)
        return report

    def ingest_bytes(
        self, data: bytes, source: str, labels: Labels = NO_LABELS, on_progress: Progress | None = None
    ) -> IngestReport:
        """Index one in-memory file (an upload) under the name `source`; `on_progress(embedded,
        total)` is called as its chunks are embedded (first with 0, then every few batches)."""
        report = IngestReport()
        self._index([(source, lambda: data)], self.filed(labels), report, on_progress=on_progress)
        return report

    def ingest_documents(self, docs: Iterable[LoadedDocument], labels: Labels = NO_LABELS) -> IngestReport:
        """Index already-parsed documents (dataset records), batched like files."""
        report = IngestReport()
        self._index(((doc.source, functools.partial(_same, doc)) for doc in docs), self.filed(labels), report)
        return report

    def delete(self, source_or_id: str, collection: str = "") -> bool:
        """Deletes a document by id, or by source in `collection` (default: the default one)."""
        record = self.catalog.find(source_or_id, collection or self.default_collection)
        if record is None:
            return False
        self.store.delete_documents([record.id])
        self.catalog.delete(record.id, self._written_to)
        return True

    # --- steps ---------------------------------------------------------------------------
    def _index(
        self,
        items: Iterable[tuple[str, Callable[[], bytes | LoadedDocument]]],
        labels: Labels,
        report: IngestReport,
        on_done: Callable[[], None] = lambda: None,
        on_progress: Progress | None = None,
    ) -> None:
        known = self.catalog.states()
        batch: list[_Prepared] = []
        for source, read in items:
            prepared = self._prepare(source, read, known, labels, report)
            if prepared is not None:
                batch.append(prepared)
                if sum(len(p.chunks) for p in batch) >= self.settings.batch_chunks:
                    self._store(batch, report, on_progress)
                    batch = []
            on_done()
        self._store(batch, report, on_progress)

    def _prepare(
        self,
        source: str,
        read: Callable[[], bytes | LoadedDocument],
        known: dict[str, tuple[str, str]],
        labels: Labels,
        report: IngestReport,
    ) -> _Prepared | None:
        doc_id = self.document_id(source, labels.collection)
        size = 0
        try:
            payload = read()
            parsed = payload if isinstance(payload, LoadedDocument) else None
            data = f"{payload.title}\n{payload.text}".encode() if isinstance(payload, LoadedDocument) else payload
            size = len(data)
            if size > self.settings.max_file_bytes:
                raise LoaderError(
                    f"{Path(source).name} is {size} bytes, over the limit of {self.settings.max_file_bytes} (RAGTUNE_MAX_FILE_BYTES)"
                )
            digest = content_hash(data, labels)
            if known.get(doc_id) == (digest, INDEXED):
                report.unchanged.append(source)
                return None
            if parsed is not None:  # already text: nothing to bound
                doc = parsed
                chunks = chunk_document(doc, self.settings.chunk_size, self.settings.chunk_overlap, labels, doc_id)
            else:
                parser = shared_parser(self.settings.parse_timeout_s, self.settings.parse_max_memory_mb)
                doc, chunks = parser.parse(
                    data,
                    source,
                    Limits.of(self.settings),
                    self.settings.chunk_size,
                    self.settings.chunk_overlap,
                    labels,
                    doc_id,
                )
        except (LoaderError, OSError) as exc:
            message = str(exc) if isinstance(exc, LoaderError) else f"cannot read {source}: {exc.strerror or exc}"
            self.catalog.mark_failed(doc_id, source, message, size, labels.collection)
            report.failed.append((source, message))
            return None
        metadata = merge_metadata(doc.metadata, labels.metadata)  # as its chunks carry it
        pending = PendingDocument(doc_id, source, digest, size, labels.tags, labels.collection, metadata)
        return _Prepared(pending, doc, chunks)

    def _store(self, batch: list[_Prepared], report: IngestReport, on_progress: Progress | None = None) -> None:
        if not batch:
            return
        chunks = [c for p in batch for c in p.chunks]
        texts = [c.text for c in chunks]
        if on_progress is None:
            vectors = self.embedder.embed(texts)
        else:  # in slices, reporting after each: a large file's progress moves as it embeds
            on_progress(0, len(texts))
            parts, step = [], PROGRESS_SLICE
            for start in range(0, len(texts), step):
                parts.append(self.embedder.embed(texts[start : start + step]))
                on_progress(min(start + step, len(texts)), len(texts))
            vectors = np.concatenate(parts) if parts else self.embedder.embed([])
        # pending before the old chunks go, indexed only after the new ones are stored:
        # a run killed in between leaves pending documents that the next run redoes.
        self.catalog.mark_pending(p.pending for p in batch)
        self.store.delete_documents(p.pending.id for p in batch)
        self.store.insert(chunks, vectors)
        self.catalog.mark_indexed(
            (IndexedDocument(p.pending.id, len(p.chunks), p.doc.content_type, p.doc.title) for p in batch),
            self._written_to,
        )
        report.indexed.extend(p.pending.source for p in batch)
        report.chunks += len(chunks)

    def _prune(
        self, root: Path, shard: tuple[int, int] | None, seen: set[str], collection: str, report: IngestReport
    ) -> None:
        prefix = str(root).rstrip(os.sep) + os.sep
        for source, doc_id in self.catalog.sources_under(prefix, collection).items():
            if source in seen or Path(source).exists():
                continue
            if shard is not None and not in_shard(Path(source).relative_to(root).as_posix(), shard):
                continue
            self.store.delete_documents([doc_id])
            self.catalog.delete(doc_id, self._written_to)
            report.removed.append(source)
