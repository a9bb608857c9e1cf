"""Synthetic question sets from an index (`ragtune synth`): what evaluation and fine-tuning read.

1. `read_documents` takes the indexed documents (those with ``tag``, when given) and their
   chunks from the store, read-only.
2. `split_documents` puts about a ``holdout`` share of the documents aside, by a seeded hash
   of each one's id: the split is by document, never by question, so no document is on both
   sides, and a document keeps its side as others are added.
3. A writer (`RuleWriter`, the no-model rules of `ragtune.tune.rules`, or
   `ragtune.tune.llm.LlmWriter`) writes ``per_chunk`` questions about each chunk.
4. Filters: a question must be usable, and its answer must occur in its chunk as whole words
   without the question giving it away; then the round trip (after Alberti et al. 2019): the
   question, searched as configured, must retrieve its chunk in the top ``top_k``; then a
   question already kept for another chunk goes. `Synthesis.counts` says how many each step
   dropped.
5. Unanswerable rows: a seeded ``unanswerable`` share of each split's answer-bearing
   questions is asked of the documents its split's corpus holds but its own (for the held-out
   split every other document, for the training split the other training documents). One that
   another document answers there (its answer occurs in one of the ``top_k`` chunks found)
   stays answerable; the others become unanswerable rows, whose expected answer is NOT_FOUND,
   with the chunks of their own document as the ``excluded`` scope, and with the best chunk
   found there as the (non-answering) context that fine-tuning trains the refusal on.

`ragtune.tune.dataset.write_synthesis` writes the result as BEIR folders and JSONL rows.
"""

from __future__ import annotations

import hashlib
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ragtune.config import Settings
from ragtune.eval.metrics import normalize_answer
from ragtune.store.catalog import INDEXED
from ragtune.system import System, build
from ragtune.tune.rules import WrittenQuestion, rule_questions
from ragtune.types import Filters, Hit, QuestionError, check_question

_PAGE = 1000  # catalog rows read at a time
_SEARCH_BATCH = 64


class SynthError(ValueError):
    """Options or an index that cannot make a question set; the message says which and why."""


@dataclass(frozen=True)
class SynthOptions:
    per_chunk: int = 2
    unanswerable: float = 0.2
    holdout: float = 0.3
    top_k: int = 5
    seed: int = 0
    tag: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.per_chunk <= 20:
            raise SynthError(f"--per-chunk must be 1 to 20 questions per chunk; got {self.per_chunk}")
        if not 0.0 <= self.unanswerable < 1.0:
            raise SynthError(f"--unanswerable must be at least 0 and below 1 (a share); got {self.unanswerable}")
        if not 0.0 <= self.holdout < 1.0:
            raise SynthError(
                f"--holdout must be at least 0 and below 1 (the share of documents held out); got {self.holdout}"
            )
        if not 1 <= self.top_k <= 100:
            raise SynthError(f"--top-k must be 1 to 100; got {self.top_k}")


class QuestionWriter(Protocol):
    """Writes up to `count` questions about a chunk; `rng` is seeded by the run's seed and the chunk's text."""

    @property
    def name(self) -> str:
        """What wrote the questions (``rules``, or ``llm …``), for the manifest."""
        ...

    def write(self, chunk: Hit, count: int, rng: random.Random) -> list[WrittenQuestion]: ...


class RuleWriter:
    """The no-model rules of `ragtune.tune.rules` (cloze, else the Inverse Cloze Task's query)."""

    name = "rules"

    def write(self, chunk: Hit, count: int, rng: random.Random) -> list[WrittenQuestion]:
        return rule_questions(chunk.text, count, rng)


@dataclass(frozen=True)
class Pair:
    """A kept question about `chunk`; `answer` None for a retrieval-only query."""

    id: str
    chunk: Hit
    question: str
    answer: str | None
    rule: str


@dataclass(frozen=True)
class UnanswerableRow:
    """A question about `own`'s chunk, asked of the other documents its split's corpus holds."""

    id: str
    question: str
    own: Pair  # what it was written for: its chunk and (withheld) answer
    context: Hit  # the best chunk found outside its document, which does not answer it


@dataclass
class Synthesis:
    chunks: dict[str, list[Hit]]  # doc id -> its chunks, in order
    splits: dict[str, list[str]]  # "train" / "holdout" -> doc ids
    pairs: list[Pair] = field(default_factory=list)  # answerable and retrieval-only, not unanswerable
    unanswerable: list[UnanswerableRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    by_rule: dict[str, int] = field(default_factory=dict)
    _side: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._side = {doc: name for name, docs in self.splits.items() for doc in docs}

    def split_of(self, doc_id: str) -> str:
        return self._side[doc_id]


def read_documents(system: System, tag: str | None = None) -> dict[str, list[Hit]]:
    """The chunks of every indexed document (with `tag`), by document id in id order."""
    documents: dict[str, list[Hit]] = {}
    offset = 0
    while True:
        rows, total = system.catalog.list(offset, _PAGE, INDEXED)
        for row in rows:
            if tag is None or tag in row.tags:
                chunks = system.store.chunks(row.id)
                if chunks:
                    documents[row.id] = chunks
        offset += len(rows)
        if not rows or offset >= total:
            break
    return dict(sorted(documents.items()))


def _position(doc_id: str, seed: int) -> float:
    """Where a seeded hash of the document's id falls in [0, 1)."""
    return int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:15], 16) / 16**15


def split_documents(doc_ids: Sequence[str], holdout: float, seed: int) -> dict[str, list[str]]:
    """The documents whose seeded hash (`_position`) falls below ``holdout`` are held out, so each
    document's side depends on it alone: documents added to the index later never move one. The
    share is hence about ``holdout``, not exact; with a share above 0, at least one document is
    held out and one kept (the lowest and highest hashes). SynthError when there are too few."""
    ordered = sorted(doc_ids, key=lambda doc: _position(doc, seed))
    if not ordered:
        raise SynthError("there are no documents to write questions about")
    if holdout == 0:
        return {"train": sorted(ordered), "holdout": []}
    if len(ordered) < 2:
        raise SynthError(f"holding out documents needs at least 2 documents; got {len(ordered)} (or --holdout 0)")
    n_holdout = min(max(sum(_position(doc, seed) < holdout for doc in ordered), 1), len(ordered) - 1)
    return {"train": sorted(ordered[n_holdout:]), "holdout": sorted(ordered[:n_holdout])}


def occurs(answer: str, text: str) -> bool:
    """Whether `answer` is in `text` as whole words, after SQuAD's normalisation.

    >>> occurs("the Rhine", "It flows into the Rhine."), occurs("19", "in 2019")
    (True, False)
    """
    wanted = normalize_answer(answer)
    return bool(wanted) and f" {wanted} " in f" {normalize_answer(text)} "


def _usable(written: WrittenQuestion, chunk: Hit, max_chars: int) -> bool:
    try:
        check_question(written.question, max_chars)
    except QuestionError:
        return False
    if written.answer is None:
        return written.rule != "llm"  # an LLM's pair without an answer is a failed pair
    return occurs(written.answer, chunk.text) and not occurs(written.answer, written.question)


def _search(system: System, questions: list[str], top_k: int, filters: Filters | None) -> list[list[Hit]]:
    found: list[list[Hit]] = []
    for start in range(0, len(questions), _SEARCH_BATCH):
        found.extend(system.retriever.run_many(questions[start : start + _SEARCH_BATCH], top_k, filters=filters))
    return found


def synthesize(
    system: System,
    writer: QuestionWriter,
    options: SynthOptions,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> Synthesis:
    """Questions about the documents of `system`'s index by the steps of the module docstring."""
    chunks = read_documents(system, options.tag)
    if not chunks:
        which = f" with tag {options.tag!r}" if options.tag else ""
        raise SynthError(f"the index holds no indexed documents{which}; ingest some first (ragtune ingest DIR)")
    synthesis = Synthesis(chunks, split_documents(list(chunks), options.holdout, options.seed))
    counts = dict.fromkeys(("generated", "dropped_bad_answer", "dropped_duplicate", "dropped_round_trip"), 0)
    max_chars = system.settings.answer.max_question_chars
    candidates: list[tuple[Hit, WrittenQuestion]] = []
    for n, doc_chunks in enumerate(chunks.values(), start=1):
        for chunk in doc_chunks:
            # Seeded by the text, not the id (its source path): the same chunk gets the same questions anywhere.
            rng = random.Random(f"{options.seed}:{hashlib.sha256(chunk.text.encode()).hexdigest()}")
            written = writer.write(chunk, options.per_chunk, rng)
            counts["generated"] += len(written)
            for question in written:
                if _usable(question, chunk, max_chars):
                    candidates.append((chunk, question))
                else:
                    counts["dropped_bad_answer"] += 1
        if n % 50 == 0 or n == len(chunks):
            log(f"synth: questions written about {n} of {len(chunks)} documents")
    scope = Filters(tags=(options.tag,)) if options.tag else None
    found = _search(system, [q.question for _, q in candidates], options.top_k, scope)
    seen: set[str] = set()
    for (chunk, question), hits in zip(candidates, found):
        if chunk.id not in {h.id for h in hits}:
            counts["dropped_round_trip"] += 1
            continue
        # After the round trip: of two chunks given the same question, one that it retrieves keeps it.
        if question.question.lower() in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add(question.question.lower())
        pair = Pair(f"q{len(synthesis.pairs) + 1:05d}", chunk, question.question, question.answer, question.rule)
        synthesis.pairs.append(pair)
        synthesis.by_rule[pair.rule] = synthesis.by_rule.get(pair.rule, 0) + 1
    counts["kept"] = len(synthesis.pairs)
    counts["kept_answered_elsewhere"] = _make_unanswerable(system, synthesis, options)
    counts["unanswerable"] = len(synthesis.unanswerable)
    synthesis.counts = counts
    return synthesis


def _make_unanswerable(system: System, synthesis: Synthesis, options: SynthOptions) -> int:
    """Turns a share of each split's answer-bearing pairs into unanswerable rows (module
    docstring, step 5); returns how many chosen ones another document answers."""
    rng = random.Random(options.seed)
    chosen: dict[str, list[Pair]] = {}  # by document: its pairs share a scope, so one search serves them
    for name in synthesis.splits:
        answerable = [p for p in synthesis.pairs if p.answer is not None and synthesis.split_of(p.chunk.doc_id) == name]
        for pair in sorted(rng.sample(answerable, round(len(answerable) * options.unanswerable)), key=lambda p: p.id):
            chosen.setdefault(pair.chunk.doc_id, []).append(pair)
    # The held-out questions are asked of every other document (as the live index holds them);
    # training ones of the other training documents only, so no held-out text enters training.
    searched = {"holdout": set(synthesis.chunks), "train": set(synthesis.splits["train"])}
    depth = max(options.top_k, system.settings.retrieval.candidates)  # room to drop the other split's chunks
    answered_elsewhere = 0
    turned: set[str] = set()
    for doc_id, pairs in chosen.items():
        scope = Filters(tags=(options.tag,) if options.tag else (), exclude_doc_ids=(doc_id,))
        allowed = searched[synthesis.split_of(doc_id)]
        found = _search(system, [p.question for p in pairs], depth, scope)
        for pair, all_hits in zip(pairs, found):
            hits = [h for h in all_hits if h.doc_id in allowed][: options.top_k]
            if not hits:  # no other document to ask it of: it stays answerable
                continue
            assert pair.answer is not None
            if any(occurs(pair.answer, h.text) for h in hits):
                answered_elsewhere += 1
                continue
            row_id = f"u{len(synthesis.unanswerable) + 1:05d}"
            synthesis.unanswerable.append(UnanswerableRow(row_id, pair.question, pair, hits[0]))
            turned.add(pair.id)
    synthesis.pairs = [p for p in synthesis.pairs if p.id not in turned]
    return answered_elsewhere


def writer_for(system: System) -> QuestionWriter:
    """The LLM when the system answers with one (RAGTUNE_GENERATOR=openai|local), else the rules."""
    from ragtune.generate.base import ChatModel
    from ragtune.tune.llm import LlmWriter

    generator = system.rag.generator if system.rag is not None else None
    if isinstance(generator, ChatModel):
        settings = system.settings
        return LlmWriter(generator, f"llm ({settings.answer.generator}, {settings.llm.model or 'default model'})")
    return RuleWriter()


@contextmanager
def scratch_index(directory: Path, settings: Settings, generator: bool = False) -> Iterator[System]:
    """The supported files of `directory` indexed into a temporary store (never the configured
    one), as `ragtune ingest` would index them; SynthError when none could be."""
    if not directory.is_dir():
        raise SynthError(f"--corpus {directory}: no such folder")
    with tempfile.TemporaryDirectory(prefix="ragtune-synth-") as tmp:
        store = settings.store.model_copy(update={"milvus_uri": "", "catalog_url": "", "collection": "synth"})
        system = build(settings.model_copy(update={"data_dir": Path(tmp), "store": store}), generator=generator)
        try:
            report = system.ingestor.ingest_paths([directory], prune=False)
            if not report.indexed:
                failed = "; ".join(f"{source}: {error}" for source, error in report.failed[:3])
                raise SynthError(
                    f"--corpus {directory}: no document could be indexed{f' ({failed})' if failed else ''}"
                )
            yield system
        finally:
            system.close()
