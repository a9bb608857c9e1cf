"""Split sections into overlapping chunks that never cut a word.

Written here rather than taken from a text-splitter library because ragtune needs the
chunks' exact character offsets, per-section metadata and a guarantee that a split only
ever falls on whitespace; the algorithm is the usual recursive one: split on paragraphs,
then lines, then sentences, then words, until each piece fits, then pack pieces greedily
into chunks of at most ``chunk_size`` characters, repeating the trailing pieces of the
previous chunk (up to ``chunk_overlap`` characters) at the start of the next.

    >>> from ragtune.ingest.chunking import split_text
    >>> split_text("One two three. Four five six. Seven eight nine.", chunk_size=32, chunk_overlap=15)
    ['One two three. Four five six.', 'Four five six. Seven eight nine.']
"""

from __future__ import annotations

import hashlib
import re

from ragtune.types import NO_LABELS, Chunk, Labels, LoadedDocument, merge_metadata

# Each pattern matches the whitespace after which a piece may end.
_SEPARATORS = [re.compile(r"\n\s*\n\s*"), re.compile(r"\n\s*"), re.compile(r"(?<=[.!?;:])\s+"), re.compile(r"\s+")]


def _pieces(text: str, start: int, end: int, size: int, level: int) -> list[tuple[int, int]]:
    """Spans covering text[start:end] contiguously, each at most `size` long where possible."""
    if end - start <= size:
        return [(start, end)]
    if level == len(_SEPARATORS):
        # A single "word" longer than a chunk (a URL, a base64 blob): the only forced cut.
        return [(i, min(i + size, end)) for i in range(start, end, size)]
    spans, piece_start = [], start
    for match in _SEPARATORS[level].finditer(text, start, end):
        if match.end() < end and match.start() > piece_start:
            spans.append((piece_start, match.end()))
            piece_start = match.end()
    spans.append((piece_start, end))
    out: list[tuple[int, int]] = []
    for s, e in spans:
        out.extend([(s, e)] if e - s <= size else _pieces(text, s, e, size, level + 1))
    return out


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_spans(text: str, chunk_size: int, chunk_overlap: int) -> list[tuple[int, int]]:
    """Character spans of the chunks of `text` (whitespace trimmed)."""
    if chunk_size <= 0 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"need 0 <= chunk_overlap < chunk_size; got size {chunk_size}, overlap {chunk_overlap}")
    pieces = [p for p in _pieces(text, 0, len(text), chunk_size, 0) if text[p[0] : p[1]].strip()]
    chunks: list[tuple[int, int]] = []
    current: list[tuple[int, int]] = []
    for piece in pieces:
        if current and piece[1] - current[0][0] > chunk_size:
            chunks.append(_trimmed(text, current[0][0], current[-1][1]))
            # Carry whole trailing pieces into the next chunk while they fit the overlap.
            carried: list[tuple[int, int]] = []
            for prev in reversed(current):
                if current[-1][1] - prev[0] > chunk_overlap:
                    break
                carried.insert(0, prev)
            while carried and piece[1] - carried[0][0] > chunk_size:
                carried.pop(0)
            current = carried
        current.append(piece)
    if current:
        chunks.append(_trimmed(text, current[0][0], current[-1][1]))
    return [c for c in chunks if c[1] > c[0]]


def split_text(text: str, chunk_size: int, chunk_overlap: int) -> list[str]:
    return [text[s:e] for s, e in split_spans(text, chunk_size, chunk_overlap)]


def document_id(source: str, collection: str = "", default_collection: str = "") -> str:
    """A stable id for a source in a collection; the same file keeps its id when its content
    changes. In the default collection ("" or `default_collection`) it is the source's alone,
    so documents indexed before there were collections keep their ids."""
    key = source if collection in ("", default_collection) else f"{collection}\x00{source}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def chunk_document(
    doc: LoadedDocument, chunk_size: int, chunk_overlap: int, labels: Labels = NO_LABELS, doc_id: str = ""
) -> list[Chunk]:
    """The document's chunks (of `doc_id`, by default the id of its source), each carrying
    `labels`; metadata given at ingest overrides what the file says of itself (front matter)."""
    doc_id = doc_id or document_id(doc.source)
    metadata = merge_metadata(doc.metadata, labels.metadata)
    chunks: list[Chunk] = []
    for section in doc.sections:
        for text in split_text(section.text, chunk_size, chunk_overlap):
            seq = len(chunks)
            chunks.append(
                Chunk(
                    id=f"{doc_id}-{seq:05d}",
                    doc_id=doc_id,
                    seq=seq,
                    text=text,
                    source=doc.source,
                    title=doc.title,
                    page=section.page or 0,
                    heading=section.heading,
                    tags=labels.tags,
                    collection=labels.collection,
                    metadata=metadata,
                )
            )
    return chunks
