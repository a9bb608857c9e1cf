"""Context expansion: each retrieved chunk with its neighbours in the document, read as one passage.

A chunk is cut from its document at a size, not at a thought: the sentence that answers a
question often sits just before or after the chunk that matched it. With a window of N,
the N chunks before and after each hit (by their position in the document, which the chunk
id encodes as ``<doc_id>-<seq>``) join the generator's context. Overlapping windows of the
same document merge into one run of consecutive chunks, each chunk appears once, and the
text a chunk shares with the chunk before it (the chunker's overlap) is cut from the later
one, so the generator never reads the same sentence twice. Every piece stays its own `Hit`
with its own id, so a citation of it points at the chunk whose text it quotes.

    >>> neighbour_ids("3f2a-00004", window=1)
    ['3f2a-00003', '3f2a-00005']
    >>> shared_overlap("one two three four", "three four five", min_chars=4)
    10
"""

from __future__ import annotations

from dataclasses import replace

from ragtune.store.base import VectorStore
from ragtune.types import Hit


def chunk_position(chunk_id: str) -> tuple[str, int] | None:
    """(doc_id, seq) of an id written by `ragtune.ingest.chunking.chunk_document`; None for other ids."""
    doc_id, _, seq = chunk_id.rpartition("-")
    return (doc_id, int(seq)) if doc_id and seq.isdigit() else None


def neighbour_ids(chunk_id: str, window: int) -> list[str]:
    position = chunk_position(chunk_id)
    if position is None:
        return []
    doc_id, seq = position
    width = len(chunk_id) - len(doc_id) - 1
    return [f"{doc_id}-{s:0{width}d}" for s in range(seq - window, seq + window + 1) if s >= 0 and s != seq]


def shared_overlap(before: str, after: str, min_chars: int = 16, max_chars: int = 2000) -> int:
    """Length of the longest suffix of `before` that starts `after` (the chunker's overlap);
    0 below `min_chars`, where a match is as likely a coincidence ("a", "the ")."""
    for size in range(min(len(before), len(after), max_chars), min_chars - 1, -1):
        if after.startswith(before[-size:]):
            return size
    return 0


def expand_context(store: VectorStore, hits: list[Hit], window: int) -> list[Hit]:
    """`hits` with `window` neighbours on each side, as runs of consecutive chunks per document.

    Runs come in the rank order of their best hit; within a run, in document order. A
    neighbour carries the score of the hit it was fetched for (it was not itself ranked)."""
    if window <= 0 or not hits:
        return hits
    by_id = {h.id: h for h in hits}
    anchor_score: dict[str, float] = {}  # each neighbour: the best score of the hits it is next to
    for h in hits:
        for n in neighbour_ids(h.id, window):
            anchor_score[n] = max(anchor_score.get(n, float("-inf")), h.score)
    for found in store.fetch(sorted(n for n in anchor_score if n not in by_id)):
        by_id[found.id] = replace(found, score=anchor_score[found.id])

    runs: list[list[Hit]] = []
    placed: dict[str, int] = {}  # chunk id -> index of its run in `runs`
    for hit in hits:  # a hit already inside an earlier window still brings its own neighbours
        members = [i for i in [hit.id, *neighbour_ids(hit.id, window)] if i in by_id]
        # A window that overlaps or touches an earlier run of the same document joins it.
        touching = {placed[n] for i in members for n in [i, *neighbour_ids(i, 1)] if n in placed}
        target = min(touching) if touching else len(runs)
        if not touching:
            runs.append([])
        for other in sorted(touching - {target}):
            runs[target].extend(runs[other])
            runs[other] = []
        runs[target].extend(by_id[i] for i in members if i not in placed)
        for chunk in runs[target]:
            placed[chunk.id] = target

    context: list[Hit] = []
    for run in runs:
        previous: Hit | None = None
        for chunk in sorted(run, key=lambda h: chunk_position(h.id) or ("", 0)):
            if previous is not None and _consecutive(previous.id, chunk.id):
                cut = shared_overlap(previous.text, chunk.text)
                if cut and cut < len(chunk.text):
                    chunk = replace(chunk, text=chunk.text[cut:].lstrip())
            context.append(chunk)
            previous = chunk
    return context


def _consecutive(first: str, second: str) -> bool:
    a, b = chunk_position(first), chunk_position(second)
    return a is not None and b is not None and a[0] == b[0] and b[1] == a[1] + 1
