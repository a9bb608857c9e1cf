"""Questions about a chunk written by rules, with no model: what `ragtune synth` uses without an LLM.

A chunk's sentences are those of the extractive answerer's splitter that read as statements:
they end in ``.``, ``!`` or ``?``, have 6 to 50 words and at least 3 content words (headings,
table rows and fragments do not). Each chosen sentence becomes one question:

* **cloze** (when the sentence holds an answer span): the span is replaced by a question
  phrase and the sentence ends in "?"; the span is the answer, so it occurs in the chunk.
  Spans, by kind: a year (1500–2099) becomes "what year"; another number becomes "how many
  <noun>" before a plural noun ("500 milliseconds"), else "what number"; a name (a run of
  capitalised words, joined by "of", "and", "for", without a leading stop word; two or more
  when it opens the sentence, whose first word is capitalised anyway) becomes "what", or
  "which" before the noun it qualifies ("the Milvus server": "which server"); failing all
  three, a noun phrase (one to three lower-case content words after "the", "a" or "an":
  those that end a clause first, else those before a function word, never the subject)
  becomes "what", the determiner included. One span is drawn among the first kind the
  sentence has (years, numbers and names are one kind: the entities), and the question must
  keep at least 2 content words besides it.
* **ict** (otherwise): the sentence itself is the query for the chunk that holds it, as in the
  Inverse Cloze Task (Lee et al. 2019); it has no short answer, so it serves retrieval only.

Sentences that hold an answer span are chosen first, in an order drawn by the caller's
generator, so a seed fixes the questions. Questions written so copy their words from the
chunk: retrieval finds them easily. They exercise the loop and catch regressions; an LLM
writes realistic ones.

    >>> import random
    >>> cloze("The office in Leeds was opened in 2019.", random.Random(1))
    WrittenQuestion(question='The office in Leeds was opened in what year?', answer='2019', rule='cloze')
    >>> cloze("Alert when the retrieval latency stays above 500 milliseconds.", random.Random(0)).question
    'Alert when the retrieval latency stays above how many milliseconds?'
    >>> cloze("The Milvus server listens on port 19530 by default.", random.Random(0)).question
    'Which server listens on port 19530 by default?'
    >>> cloze("Back up the data directory while ragtune is stopped.", random.Random(0))
    WrittenQuestion(question='Back up what while ragtune is stopped?', answer='data directory', rule='cloze')
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ragtune.generate.extractive import content_terms, split_sentences

_WORD = re.compile(r"[A-Za-z0-9][\w'’-]*")
_YEAR = re.compile(r"^(1[5-9]\d\d|20\d\d)$")
_NUMBER = re.compile(r"(?<![\w.,-])\d[\d,]*(?:\.\d+)?%?(?![\w-])")  # not inside "4-bit", "SHA-256"
_CAPITALISED = re.compile(r"^[A-Z][\w-]*$")
_DETERMINERS = {"the", "a", "an"}
# Words that end a noun phrase: function words and the verbs every sentence has.
_NOT_IN_PHRASE = {
    "is", "are", "was", "were", "be", "been", "has", "have", "had", "do", "does", "did", "and", "or", "but", "of",
    "to", "in", "on", "at", "by", "for", "with", "from", "into", "as", "that", "which", "who", "when", "while",
    "if", "than", "then", "it", "its", "can", "will", "may", "must", "should", "not", "so", "also", "only",
}  # fmt: skip
_MIN_WORDS, _MAX_WORDS, _MIN_CONTENT = 6, 50, 3
_MAX_PHRASE = 3
_CONNECTORS = {"of", "and", "for", "upon", "de"}


@dataclass(frozen=True)
class WrittenQuestion:
    """A question about a chunk; `answer` is a span of the chunk, or None (a retrieval-only query)."""

    question: str
    answer: str | None
    rule: str  # cloze, ict or llm


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    answer: str
    phrase: str  # what replaces sentence[start:end]


def statements(text: str) -> list[str]:
    """The sentences of `text` a question may be made from (see the module docstring)."""
    return [
        s
        for s in split_sentences(text)
        if s.rstrip("\"')]").endswith((".", "!", "?"))
        and _MIN_WORDS <= len(s.split()) <= _MAX_WORDS
        and len(content_terms(s)) >= _MIN_CONTENT
    ]


def _entity_spans(sentence: str) -> list[_Span]:
    """The years, other numbers and names of `sentence`, each with the phrase that asks for it."""
    spans = []
    words = list(_WORD.finditer(sentence))
    for match in _NUMBER.finditer(sentence):
        answer = match.group()
        if _YEAR.match(answer):
            spans.append(_Span(match.start(), match.end(), answer, "what year"))
            continue
        following = next((w for w in words if w.start() > match.end()), None)
        counts_a_noun = (
            following is not None
            and not sentence[match.end() : following.start()].strip()
            and re.fullmatch(r"[a-z]+s", following.group()) is not None
        )
        spans.append(_Span(match.start(), match.end(), answer, "how many" if counts_a_noun else "what number"))
    run: list[re.Match[str]] = []
    for i, word in enumerate([*words, None]):
        text = word.group() if word is not None else ""
        # A connector between capitalised words is part of the name: "LF AI and Data Foundation".
        joins = bool(run) and text in _CONNECTORS and i + 1 < len(words) and _CAPITALISED.match(words[i + 1].group())
        if word is not None and (_CAPITALISED.match(text) or joins):
            run.append(word)
            continue
        stripped = False
        while run and not content_terms(run[0].group()):  # "The Milvus server": the name is "Milvus"
            run.pop(0)
            stripped = True
        opens = bool(run) and run[0].start() == 0 and not stripped
        if run and (len(run) >= 2 or not opens):
            spans.append(_name_span(sentence, words, run))
        run = []
    return spans


def _name_span(sentence: str, words: list[re.Match[str]], run: list[re.Match[str]]) -> _Span:
    """A name is "what", with the determiner before it ("by the LF AI Foundation": "by what"), or
    "which" when it qualifies the noun after it ("the Milvus server": "which server")."""
    answer = sentence[run[0].start() : run[-1].end()]
    at = words.index(run[0])
    after = words.index(run[-1]) + 1
    start = words[at - 1].start() if at and words[at - 1].group().lower() in _DETERMINERS else run[0].start()
    qualifies = after < len(words) and words[after].group().islower() and words[after].group() not in _NOT_IN_PHRASE
    return _Span(start, run[-1].end(), answer, "which" if qualifies and start < run[0].start() else "what")


def _phrase_spans(sentence: str) -> list[_Span]:
    """Noun phrases after a determiner that end where a clause does (punctuation or the sentence's
    end) first, else those ending before a function word; with no tagger, a phrase can still run
    into a verb ("the batch equals"), which is why the clause-final ones come first."""
    final, inner = [], []
    words = list(_WORD.finditer(sentence))
    for i, word in enumerate(words):
        if word.group().lower() not in _DETERMINERS:
            continue
        phrase: list[re.Match[str]] = []
        for following in words[i + 1 :]:
            text = following.group()
            between = sentence[(phrase[-1] if phrase else word).end() : following.start()]
            if between.strip() or not text.islower() or text in _NOT_IN_PHRASE or text in _DETERMINERS:
                break
            phrase.append(following)
        if not phrase or len(phrase) > _MAX_PHRASE:
            continue
        end = phrase[-1].end()
        span = _Span(word.start(), end, sentence[phrase[0].start() : end], "what")
        rest = sentence[end:].lstrip()
        nxt = words[i + 1 + len(phrase)].group().lower() if i + 1 + len(phrase) < len(words) else ""
        if not rest or rest[0] in ".,;:!?)":
            final.append(span)
        elif word.start() > 0 and nxt in _NOT_IN_PHRASE:  # a subject runs into its verb: never one
            inner.append(span)
    return final or inner


def _question(sentence: str, span: _Span) -> str:
    text = sentence[: span.start] + span.phrase + sentence[span.end :]  # a counted noun stays: "how many days"
    text = text.rstrip().rstrip(".!?;:").rstrip() + "?"
    return text[0].upper() + text[1:]


def cloze(sentence: str, rng: random.Random) -> WrittenQuestion | None:
    """The sentence as a question about one of its spans (the module docstring's rule); None if it has none."""
    for spans in (_entity_spans(sentence), _phrase_spans(sentence)):
        usable = [s for s in spans if len(content_terms(sentence[: s.start] + sentence[s.end :])) >= 2]
        if usable:
            span = rng.choice(usable)
            return WrittenQuestion(_question(sentence, span), span.answer, "cloze")
    return None


def rule_questions(text: str, count: int, rng: random.Random) -> list[WrittenQuestion]:
    """Up to `count` questions about `text`, one per sentence: cloze where a sentence allows, else ict."""
    sentences = statements(text)
    rng.shuffle(sentences)
    written = [(s, cloze(s, rng)) for s in sentences]
    written.sort(key=lambda pair: pair[1] is None)  # stable: answer-bearing sentences first, in drawn order
    return [question or WrittenQuestion(sentence, None, "ict") for sentence, question in written[:count]]
