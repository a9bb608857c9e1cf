"""The data that moves between ragtune's stages, and the rules every stage agrees on.

Plain frozen dataclasses, importing nothing of ragtune, so any layer can use them without
pulling in another layer's code: a loader yields a `LoadedDocument` of `Section` s, the
chunker cuts it into `Chunk` s, the store returns `Hit` s matching `Filters`, and the
pipeline answers with an `Answer` that holds `Citation` s.

    >>> from ragtune.types import check_question, check_tags
    >>> check_question("  How do I deploy?  ", max_chars=100)
    'How do I deploy?'
    >>> check_tags([" finance ", "2024"])
    ('finance', '2024')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# The store holds at most this many tags per chunk, each at most this many characters; the
# API, the CLI and the store all apply these numbers (through `check_tags`).
MAX_TAGS = 32
MAX_TAG_CHARS = 128

CITATION_MARKER = re.compile(r"\[(\d{1,3})\]")


class QuestionError(ValueError):
    """The question itself is unusable (empty, too long)."""


class TagError(ValueError):
    """Tags over the limits (`MAX_TAGS`, `MAX_TAG_CHARS`) or empty."""


def check_question(question: str, max_chars: int | None = None) -> str:
    """The question stripped; `QuestionError` (empty, without a letter or digit, or over
    `max_chars`, naming its setting) otherwise."""
    question = question.strip()
    if not question:
        raise QuestionError('the question is empty; ask something, e.g. "How do I install it?"')
    if not any(ch.isalnum() for ch in question):
        raise QuestionError(
            f"the question {question[:40]!r} has no letters or digits, so there is nothing to search for; "
            'ask something, e.g. "How do I install it?"'
        )
    if max_chars is not None and len(question) > max_chars:
        raise QuestionError(
            f"the question is {len(question)} characters, over the limit of {max_chars} (RAGTUNE_MAX_QUESTION_CHARS)"
        )
    return question


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Tags stripped, at most `MAX_TAGS` of 1 to `MAX_TAG_CHARS` characters; `TagError` otherwise."""
    given = list(tags)
    cleaned = tuple(t.strip() for t in given)
    if len(cleaned) > MAX_TAGS or any(not t or len(t) > MAX_TAG_CHARS for t in cleaned):
        raise TagError(f"give at most {MAX_TAGS} tags of 1 to {MAX_TAG_CHARS} characters; got {given[:5]!r}")
    return cleaned


@dataclass(frozen=True)
class Section:
    """A run of a document's text under one heading on one page."""

    text: str
    page: int | None = None
    heading: str = ""


@dataclass(frozen=True)
class LoadedDocument:
    """A file turned into text: what every loader returns."""

    source: str
    content_type: str
    title: str
    sections: list[Section]

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, the unit that is embedded, stored and retrieved."""

    id: str
    doc_id: str
    seq: int
    text: str
    source: str
    title: str
    page: int  # 0 where the format has no pages
    heading: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Filters:
    """Metadata filters; a chunk must match every filter given (any of the listed values)."""

    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    """A stored chunk found by a search, with its score."""

    id: str
    doc_id: str
    text: str
    source: str
    title: str
    page: int
    heading: str
    tags: tuple[str, ...]
    score: float
    scores: dict[str, float] = field(default_factory=dict)  # per retrieval mode, before fusion


@dataclass(frozen=True)
class Citation:
    number: int
    chunk_id: str
    doc_id: str
    source: str
    title: str
    page: int
    heading: str
    snippet: str
    score: float


@dataclass(frozen=True)
class Turn:
    """One earlier question of a conversation and what answered it: what a follow-up is read against."""

    question: str
    answer: str
    rewritten_question: str | None = None  # the standalone form that was searched, when it differed
    cited_titles: tuple[str, ...] = ()  # titles of the cited chunks, in citation order
    cited_headings: tuple[str, ...] = ()

    @property
    def searched(self) -> str:
        """The question as it was searched (standalone)."""
        return self.rewritten_question or self.question


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    abstained: bool
    hits: list[Hit]  # what the generator read: the retrieved chunks and, with a context window, their neighbours
    timings_ms: dict[str, float]
    usage: dict[str, int] = field(default_factory=dict)
    rewritten_question: str | None = None  # the standalone question searched, when a follow-up was rewritten
    debug: dict[str, Any] = field(default_factory=dict)  # how the question was rewritten (prompts, paraphrases)

    def turn(self) -> Turn:
        """This answer as a conversation turn."""
        return Turn(
            self.question,
            self.text,
            self.rewritten_question,
            tuple(c.title for c in self.citations),
            tuple(c.heading for c in self.citations),
        )

    def plain_text(self) -> str:
        """The answer without citation markers (what answer metrics compare)."""
        return " ".join(CITATION_MARKER.sub("", self.text).split())
