"""The default answerer: no LLM, it quotes the sentences of the retrieved chunks that best
answer the question and cites the chunk each one came from.

Each sentence is scored by how much of the question's rare vocabulary it contains
(IDF-weighted overlap, IDF taken over the retrieved sentences) and by the embedding
similarity between it and the question, both read with the preceding sentence as context
(so "It was founded in 1850." can answer "When was the club founded?" when the sentence
before names the club); the chunk's retrieval rank breaks near-ties.
When even the best sentence is not similar enough to the question, it says so instead of
quoting something unrelated.

    >>> from ragtune.generate.extractive import split_sentences
    >>> split_sentences("Milvus stores vectors. It was built e.g. for search! Done.")
    ['Milvus stores vectors.', 'It was built e.g. for search!', 'Done.']
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass

import numpy as np
import Stemmer

from ragtune.embed import Embedder
from ragtune.generate.base import NOT_FOUND, Generation
from ragtune.types import Hit

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = {
    "e.g.",
    "i.e.",
    "etc.",
    "mr.",
    "mrs.",
    "dr.",
    "prof.",
    "vs.",
    "st.",
    "no.",
    "fig.",
    "u.s.",
    "inc.",
    "ltd.",
    "jr.",
    "sr.",
    "approx.",
}
_WORD = re.compile(r"[A-Za-z0-9]+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "at",
        "by",
        "for",
        "with",
        "about",
        "against",
        "between",
        "into",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "to",
        "from",
        "up",
        "down",
        "in",
        "out",
        "on",
        "off",
        "over",
        "under",
        "again",
        "further",
        "then",
        "once",
        "here",
        "there",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "no",
        "nor",
        "not",
        "only",
        "own",
        "same",
        "so",
        "than",
        "too",
        "very",
        "can",
        "will",
        "just",
        "should",
        "now",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "what",
        "which",
        "who",
        "whom",
        "this",
        "that",
        "these",
        "those",
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "he",
        "him",
        "his",
        "she",
        "her",
        "it",
        "its",
        "they",
        "them",
        "their",
        "am",
        "would",
        "could",
        "also",
        "as",
        "many",
        "much",
        "one",
    ]
)


def _blocks(text: str) -> list[str]:
    """Lines joined into running text, except headings and titles (PDF and DOCX text carry
    them on lines of their own): a short unpunctuated line followed by a capitalised one."""
    blocks: list[str] = []
    current: list[str] = []
    lines = [line.strip() for line in text.splitlines()] + [""]
    for line, following in itertools.pairwise(lines):
        if not line:
            blocks.append(" ".join(current))
            current = []
        elif (
            len(line) <= 60
            and not line.endswith((".", "!", "?", ":", ";", ","))
            and (not following or following[0].isupper() or following[0].isdigit())
        ):
            blocks.extend([" ".join(current), line])
            current = []
        else:
            current.append(line)
    blocks.append(" ".join(current))
    return [b for b in blocks if b]


def _is_statement(sentence: str) -> bool:
    """A sentence rather than a heading or title: it ends like one, or runs past a few words."""
    return sentence.rstrip().endswith((".", "!", "?", ";", ":")) or len(sentence.split()) > 8


def split_sentences(text: str) -> list[str]:
    pieces = []
    for block in _blocks(text):
        start = 0
        for match in _SENTENCE_END.finditer(block):
            last_word = block[start : match.start() + 1].rsplit(None, 1)[-1].lower()
            # "e.g." and single initials ("J. Smith") end with a period but not a sentence.
            if last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last_word):
                continue
            pieces.append(block[start : match.start() + 1])
            start = match.end()
        pieces.append(block[start:])
    return [" ".join(p.split()) for p in pieces if p.strip()]


# Snowball English, the stemmer Milvus's BM25 analyzer uses too: "merges" meets "merge".
_STEMMER = Stemmer.Stemmer("english")


def content_terms(text: str) -> list[str]:
    return _STEMMER.stemWords([w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOPWORDS])


# A quote opening with one of these is unreadable without the sentence before it.
_ANAPHORA = re.compile(r"^(It|Its|This|These|That|Those|They|Their|He|His|She|Her|Such)\b")


@dataclass(frozen=True)
class ScoredSentence:
    text: str
    hit_number: int  # 1-based position of its chunk in the retrieved list
    position: int  # index of the sentence within its chunk
    context: str  # the preceding sentence of the same chunk, or ""
    lexical: float
    semantic: float
    score: float


class ExtractiveAnswerer:
    """Answers by quoting the best-matching retrieved sentences, each cited.

    answerer = ExtractiveAnswerer(embedder, min_relevance=0.25)
    generation = answerer.generate("Who maintains Milvus?", hits)
    """

    name = "extractive"
    model_names: tuple[str, ...] = ()  # no model to choose: `model` is always None

    def __init__(
        self,
        embedder: Embedder | None,
        min_relevance: float = 0.25,
        max_sentences: int = 1,
        semantic_weight: float = 0.5,
        cache_size: int = 20_000,
    ) -> None:
        if max_sentences <= 0:
            raise ValueError(f"max_sentences must be greater than 0; got {max_sentences}")
        if not 0.0 <= semantic_weight <= 1.0:
            raise ValueError(f"semantic_weight must be within [0, 1]; got {semantic_weight}")
        self.embedder = embedder
        self.min_relevance = min_relevance
        self.max_sentences = max_sentences
        self.semantic_weight = semantic_weight if embedder is not None else 0.0
        # The same chunks come back for many questions; their sentence vectors are reused.
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()  # the API answers questions on several threads

    def _embed(self, texts: list[str]) -> np.ndarray:
        assert self.embedder is not None
        with self._cache_lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:  # embedded outside the lock: concurrent questions need not queue here
            known.update(zip(missing, self.embedder.embed(missing)))
        with self._cache_lock:
            for text in texts:
                self._vectors[text] = known[text]
                self._vectors.move_to_end(text)
            while len(self._vectors) > self._cache_size:
                self._vectors.popitem(last=False)
        return np.stack([known[t] for t in texts])

    def score_sentences(self, question: str, hits: list[Hit]) -> list[ScoredSentence]:
        sentences = [
            (text, number, position)
            for number, hit in enumerate(hits, start=1)
            for position, text in enumerate(split_sentences(hit.text))
        ]
        if not sentences:
            return []
        terms = [set(content_terms(text)) for text, _, _ in sentences]
        previous = [terms[i - 1] if position else set() for i, (_, _, position) in enumerate(sentences)]
        document_frequency = Counter(t for ts in terms for t in ts)
        n = len(sentences)

        def idf(term: str) -> float:
            return math.log(1 + (n + 1) / (document_frequency.get(term, 0) + 0.5))

        question_terms = set(content_terms(question))
        question_weight = sum(idf(t) for t in question_terms) or 1.0
        # Words met only in the preceding sentence count half: context, not the answer itself.
        lexical = [
            (sum(idf(t) for t in question_terms & own) + 0.5 * sum(idf(t) for t in (question_terms & before) - own))
            / question_weight
            for own, before in zip(terms, previous)
        ]
        if self.embedder is not None:
            with_context = [
                f"{sentences[i - 1][0]} {text}" if position else text for i, (text, _, position) in enumerate(sentences)
            ]
            question_vector = self.embedder.embed([question])[0]
            semantic = (self._embed(with_context) @ question_vector).tolist()
        else:
            semantic = [0.0] * n
        scored = []
        for i, ((text, number, position), lex, sem) in enumerate(zip(sentences, lexical, semantic)):
            score = (1 - self.semantic_weight) * lex + self.semantic_weight * sem + 0.05 / number
            context = sentences[i - 1][0] if position else ""
            scored.append(ScoredSentence(text, number, position, context, lex, float(sem), score))
        return sorted(scored, key=lambda s: s.score, reverse=True)

    def generate(self, question: str, hits: list[Hit], model: str | None = None) -> Generation:
        scored = self.score_sentences(question, hits)
        if not scored or self._relevance(scored[0]) < self.min_relevance:
            return Generation(NOT_FOUND, abstained=True)
        # A heading ("Backups") can match a question best yet states nothing: quote statements
        # when there are any (whether to answer at all was decided on the best match above).
        statements = [s for s in scored if _is_statement(s.text)] or scored
        # Quote in reading order: by chunk rank, then by position within the chunk.
        chosen = sorted(statements[: self.max_sentences], key=lambda s: (s.hit_number, s.position))
        return Generation(" ".join(f"{self._quote(s, chosen)} [{s.hit_number}]" for s in chosen))

    def stream(self, question: str, hits: list[Hit], model: str | None = None) -> PyGenerator[str, None, Generation]:
        """The same answer as `generate`, yielded a few words at a time (the answer is
        computed at once; streaming it keeps one code path for every generator)."""
        generation = self.generate(question, hits)
        words = re.findall(r"\S+\s*", generation.text)
        for start in range(0, len(words), 8):
            yield "".join(words[start : start + 8])
        return generation

    @staticmethod
    def _quote(sentence: ScoredSentence, chosen: list[ScoredSentence]) -> str:
        context_chosen = any(
            c.hit_number == sentence.hit_number and c.position == sentence.position - 1 for c in chosen
        )
        if sentence.context and not context_chosen and _ANAPHORA.match(sentence.text):
            return f"{sentence.context} {sentence.text}"
        return sentence.text

    def _relevance(self, sentence: ScoredSentence) -> float:
        return sentence.semantic if self.embedder is not None else sentence.lexical
