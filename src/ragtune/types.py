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
    >>> check_metadata({"team": "finance", "year": 2024})
    {'team': 'finance', 'year': 2024}
    >>> metadata_conditions({"year": {"gte": 2023}, "team": ["finance", "shared"]})
    (MetaCondition(key='year', op='gte', value=2023), MetaCondition(key='team', op='in', value=('finance', 'shared')))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The store holds at most this many tags per chunk, each at most this many characters; the
# API, the CLI and the store all apply these numbers (through `check_tags`).
MAX_TAGS = 32
MAX_TAG_CHARS = 128

CITATION_MARKER = re.compile(r"\[(\d{1,3})\]")

# Custom metadata: at most this many keys per document, named like identifiers (so a key can
# never carry quotes or operators into a store expression), with scalar values.
MAX_METADATA_KEYS = 32
MAX_METADATA_VALUE_CHARS = 256
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# A collection name; RAGTUNE_COLLECTION's own rule (the default collection) is a subset of it.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")
MetaValue = str | int | float | bool
COMPARISONS = ("eq", "ne", "in", "gt", "gte", "lt", "lte")


class QuestionError(ValueError):
    """The question itself is unusable (empty, too long)."""


class TagError(ValueError):
    """Tags over the limits (`MAX_TAGS`, `MAX_TAG_CHARS`) or empty."""


class MetadataError(ValueError):
    """Metadata, a metadata filter or a collection name that breaks the rules; the message says which."""


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


def check_collection(name: str) -> str:
    """`name` when it is a valid collection name; `MetadataError` otherwise."""
    if not COLLECTION_NAME.fullmatch(name):
        raise MetadataError(
            f"collection {name[:80]!r} is not a valid name: use 1 to 255 letters, digits, '_' or '-', "
            "not starting with '-'"
        )
    return name


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
        raise MetadataError(
            f"metadata key {str(key)[:80]!r} is not allowed: use 1 to 64 letters, digits or '_', not starting with a digit"
        )
    return key


def _check_value(key: str, value: object) -> MetaValue:
    # True is an int to Python but a JSON boolean to the store: no size check for it.
    if isinstance(value, int):
        if not isinstance(value, bool) and abs(value) >= 2**63:
            raise MetadataError(f"metadata {key}: {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise MetadataError(f"metadata {key}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_METADATA_VALUE_CHARS or "\n" in value or "\r" in value:
            raise MetadataError(
                f"metadata {key}: a value has at most {MAX_METADATA_VALUE_CHARS} characters on one line"
            )
        return value
    raise MetadataError(
        f"metadata {key}: {type(value).__name__} values are not supported; use a string, number or boolean"
    )


def check_metadata(metadata: Mapping[str, object]) -> dict[str, MetaValue]:
    """Metadata with valid keys and scalar values (strings, numbers, booleans), at most
    `MAX_METADATA_KEYS` of them; `MetadataError` otherwise."""
    if len(metadata) > MAX_METADATA_KEYS:
        raise MetadataError(f"at most {MAX_METADATA_KEYS} metadata keys per document; got {len(metadata)}")
    return {_check_key(k): _check_value(k, v) for k, v in metadata.items()}


def typed_value(raw: str) -> MetaValue:
    """A value written on a command line: integers, decimals, true/false typed, the rest text
    (so is a number with a leading zero, a postcode or an id: ``02134``)."""
    raw = raw.strip()
    if re.fullmatch(r"-?(0|[1-9]\d{0,17})", raw):
        return int(raw)
    if re.fullmatch(r"-?(0|[1-9]\d*)\.\d+", raw):
        return float(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return raw


def parse_meta_pair(pair: str) -> tuple[str, MetaValue]:
    """``year=2024`` -> ("year", 2024), typed by `typed_value`."""
    key, sep, raw = pair.partition("=")
    if not sep:
        raise MetadataError(f"metadata {pair[:80]!r} must look like key=value, e.g. team=finance")
    key = _check_key(key.strip())
    return key, _check_value(key, typed_value(raw))


_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|=|>|<)(.*)$", re.DOTALL)
_WHERE_OPS = {"=": "eq", "!=": "ne", ">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}


def parse_where(clause: str) -> dict[str, object]:
    """A command line's metadata filter as `metadata_conditions` takes it: ``year>=2023`` ->
    ``{"year": {"gte": 2023}}``, ``team=a|b`` -> ``{"team": {"in": ["a", "b"]}}``."""
    found = _WHERE.match(clause)
    if not found:
        raise MetadataError(
            f"--where {clause[:80]!r} must look like key=value, key!=value, key>=n (or >, <=, <) or key=a|b"
        )
    key, op, raw = found.groups()
    if op == "=" and "|" in raw:
        return {key: {"in": [typed_value(v) for v in raw.split("|")]}}
    return {key: {_WHERE_OPS[op]: typed_value(raw)}}


def merge_metadata(own: Mapping[str, MetaValue], given: Mapping[str, MetaValue]) -> dict[str, MetaValue]:
    """A file's own metadata (front matter) under what was given at ingest, which wins; the
    file's keys past `MAX_METADATA_KEYS` in all are left out."""
    room = MAX_METADATA_KEYS - len(given)
    kept = [(k, v) for k, v in own.items() if k not in given][: max(room, 0)]
    return {**dict(kept), **given}


@dataclass(frozen=True)
class MetaCondition:
    """One metadata comparison: ``metadata[key] <op> value`` (`in`: any of a tuple of values)."""

    key: str
    op: str
    value: MetaValue | tuple[MetaValue, ...]


def metadata_conditions(spec: dict[str, object]) -> tuple[MetaCondition, ...]:
    """A filter as the API and CLI take it: ``{"team": "finance"}`` (equal), ``{"team":
    ["a", "b"]}`` or ``{"team": {"in": [...]}}`` (any of), ``{"year": {"gte": 2023, "lt": 2025}}``
    (ranges; also gt, lte, ne). Keys and values follow `check_metadata`'s rules."""
    conditions: list[MetaCondition] = []
    for key, wanted in spec.items():
        _check_key(key)
        if isinstance(wanted, list):
            wanted = {"in": wanted}
        if not isinstance(wanted, dict):
            conditions.append(MetaCondition(key, "eq", _check_value(key, wanted)))
            continue
        if not wanted:
            raise MetadataError(f"metadata filter {key}: give a comparison, one of {', '.join(COMPARISONS)}")
        for op, value in wanted.items():
            if op not in COMPARISONS:
                raise MetadataError(f"metadata filter {key}: {str(op)[:40]!r} is not one of {', '.join(COMPARISONS)}")
            if op == "in":
                if not isinstance(value, list) or not 1 <= len(value) <= 100:
                    raise MetadataError(f"metadata filter {key}: 'in' takes a list of 1 to 100 values")
                conditions.append(MetaCondition(key, op, tuple(_check_value(key, v) for v in value)))
                continue
            checked = _check_value(key, value)
            if op in ("gt", "gte", "lt", "lte") and (isinstance(checked, bool) or not isinstance(checked, int | float)):
                raise MetadataError(f"metadata filter {key}: {op} compares numbers; got {value!r}")
            conditions.append(MetaCondition(key, op, checked))
    if len(conditions) > MAX_METADATA_KEYS:
        raise MetadataError(f"at most {MAX_METADATA_KEYS} metadata conditions in one filter")
    return tuple(conditions)


@dataclass(frozen=True)
class Labels:
    """What a document is filed under, given at ingest and carried by each of its chunks: its
    collection ("" for the configured default, RAGTUNE_COLLECTION), tags and metadata."""

    collection: str = ""
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = field(default_factory=dict)


NO_LABELS = Labels()  # the default collection, no tags, no metadata


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
    metadata: dict[str, MetaValue] = field(default_factory=dict)  # what the file says of itself (front matter)

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
    collection: str = ""
    metadata: dict[str, MetaValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Filters:
    """What a search may return; a chunk must match every filter given (any of the listed
    values). `collections` is the reader's scope: the store searches only these (empty: all).
    `exclude_doc_ids` takes documents out of whatever else matches: an evaluation asks a
    question written for one document against every document but that one."""

    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()
    metadata: tuple[MetaCondition, ...] = ()
    collections: tuple[str, ...] = ()
    exclude_doc_ids: tuple[str, ...] = ()


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
    collection: str = ""
    metadata: dict[str, MetaValue] = field(default_factory=dict)


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
