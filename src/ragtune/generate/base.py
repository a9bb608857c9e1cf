"""What every answer generator shares: the protocol, the answer types and citation handling.

A generator reads the question and the retrieved chunks (numbered 1…n in rank order) and
writes an answer that cites them as ``[n]``. `resolve_citations` then keeps only markers
that name a supplied chunk and renumbers them 1, 2, … in order of first use, so the
numbers a reader sees always match the citation list.

    >>> from ragtune.generate.base import renumber_citations
    >>> renumber_citations("Milvus stores vectors [3]. BM25 too [9][3].", n_chunks=4)
    ('Milvus stores vectors [1]. BM25 too [1].', [3])
"""

from __future__ import annotations

import re
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from ragtune.types import CITATION_MARKER, Citation, Hit

NOT_FOUND = "I could not find the answer in the indexed documents."


def is_refusal(text: str) -> bool:
    """Whether an LLM's answer says the documents do not hold the answer (or says nothing).

    Small models paraphrase NOT_FOUND or wrap it in quotes; the sentence's core is the signal."""
    return "could not find the answer" in text.lower() or not text.strip()


@dataclass(frozen=True)
class Generation:
    text: str  # with [n] markers numbering the supplied chunks 1..n
    abstained: bool = False
    usage: dict[str, int] = field(default_factory=dict)


class Generator(Protocol):
    """Writes an answer to `question` from `hits`, citing them as [1]..[len(hits)].

    `model_names` are the models a caller may choose between by name (an LLM server's base
    model and LoRA adapters); ``model`` is one of them, or None for the generator's default.
    A generator with a single model it cannot name (extractive, local) has none."""

    name: str
    model_names: tuple[str, ...]

    def generate(self, question: str, hits: list[Hit], model: str | None = None) -> Generation: ...


@runtime_checkable
class ChatModel(Protocol):
    """An LLM backend that also writes free text: the query rewriters (`ragtune.generate.rewrite`) use it."""

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        """The model's reply to `messages`, greedy, at most `max_new_tokens` tokens."""
        ...


ReturnT = TypeVar("ReturnT")


def run_to_end(stream: PyGenerator[Any, None, ReturnT]) -> ReturnT:
    """Exhaust a streaming generator and return what it returns (its final result)."""
    while True:
        try:
            next(stream)
        except StopIteration as done:
            return done.value


@runtime_checkable
class StreamingGenerator(Protocol):
    """A `Generator` that can also stream: `stream` yields text deltas as they are written
    and *returns* the final `Generation` (read it with ``final = yield from g.stream(...)``).

    The deltas joined equal the returned ``Generation.text``.

        stream = generator.stream("Who maintains Milvus?", hits)
        try:
            while True:
                print(next(stream), end="")
        except StopIteration as done:
            generation = done.value
    """

    name: str
    model_names: tuple[str, ...]

    def generate(self, question: str, hits: list[Hit], model: str | None = None) -> Generation: ...

    def stream(
        self, question: str, hits: list[Hit], model: str | None = None
    ) -> PyGenerator[str, None, Generation]: ...


class CitationStream:
    """Renumbers citation markers in streamed text the way `renumber_citations` does for
    the whole text: markers outside 1..n_chunks dropped, the rest numbered by first use.

    A delta can end inside a marker ("... [1" then "2] ..."), so a possibly unfinished
    marker is held back until the next delta or `flush`.

    >>> s = CitationStream(n_chunks=3)
    >>> s.feed("Paris [3"), s.feed("] and [9] Rome [1]."), s.flush()
    ('Paris ', '[1] and  Rome [2].', '')
    """

    _OPEN_TAIL = re.compile(r"\[\d{0,3}$")

    def __init__(self, n_chunks: int) -> None:
        self.n_chunks = n_chunks
        self.order: list[int] = []
        self._pending = ""

    def _replace(self, match: re.Match[str]) -> str:
        original = int(match.group(1))
        if not 1 <= original <= self.n_chunks:
            return ""
        if original not in self.order:
            self.order.append(original)
        return f"[{self.order.index(original) + 1}]"

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        tail = self._OPEN_TAIL.search(text)
        cut = tail.start() if tail else len(text)
        self._pending = text[cut:]
        return CITATION_MARKER.sub(self._replace, text[:cut])

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return CITATION_MARKER.sub(self._replace, rest)


def renumber_citations(text: str, n_chunks: int) -> tuple[str, list[int]]:
    """Drop markers outside 1..n_chunks, renumber the rest by first use; returns the
    new text and, for each new number, the original 1-based chunk number."""
    stream = CitationStream(n_chunks)
    renumbered = stream.feed(text) + stream.flush()
    renumbered = re.sub(r"(\[\d+\])(\1)+", r"\1", renumbered)  # "[1][1]" -> "[1]"
    renumbered = re.sub(r"[ \t]{2,}", " ", renumbered)
    return re.sub(r"[ \t]+([.,;:!?])(?=\s|$)", r"\1", renumbered).strip(), stream.order


def resolve_citations(generation: Generation, hits: list[Hit]) -> tuple[str, list[Citation]]:
    text, order = renumber_citations(generation.text, len(hits))
    citations = []
    for number, original in enumerate(order, start=1):
        hit = hits[original - 1]
        citations.append(
            Citation(number, hit.id, hit.doc_id, hit.source, hit.title, hit.page, hit.heading, hit.text, hit.score)
        )
    return text, citations
