"""Faithfulness without labels: is each sentence of an answer supported by the chunks it cites?

The answer is cut into sentences (the extractive answerer's splitter); a sentence's ``[n]``
markers name the chunks it is checked against and are stripped before the check. Markers
that open a sentence belong to the one before it (``Quote. [1] Next quote. [2]``). A
sentence without markers is checked against those of the next sentence that has some (a
citation closing a passage covers it), else of the last one before it; an answer without a
marker supports nothing. Sentences without content words ("Yes [1].") state nothing to
check and are not counted.

* `LexicalSupport` (the default): the sentence's content words, lower-cased, stemmed
  (Snowball English by PyStemmer, the stemmer of the store's BM25 analyser) and without
  stop words, and the share of them that occur in the cited chunks: token precision
  against the source, what Adlakha et al. (2023) call K-Precision. The sentence is
  supported at ``threshold`` (RAGTUNE_FAITHFULNESS_THRESHOLD, 0.6) or above. A quote scores
  1.0 and a close paraphrase keeps most of its words ("Zilliz built Milvus": 2 of 3), while
  a sentence that swaps the fact keeps only the topic words it shares with the question
  ("Google created Milvus in 2015": 2 of 4), so 0.6 sits between the two. It cannot see
  negation or a changed relation between words the chunk does contain.
* `CrossEncoderSupport` (RAGTUNE_FAITHFULNESS_MODEL, a local directory): a
  sentence-transformers CrossEncoder reads (chunk, sentence) pairs. An NLI model (a label
  of its config names entailment) supports the sentence when entailment is its most
  likely label; a model with one output, when its sigmoid score is at least 0.5. Any
  cited chunk that supports a sentence is enough.

    >>> check = LexicalSupport(threshold=0.6)
    >>> chunk = "Milvus was created by Zilliz in 2019."
    >>> check.supported("Zilliz built Milvus.", [chunk]), check.supported("Google created Milvus in 2015.", [chunk])
    (True, False)
    >>> cited_sentences("Milvus stores vectors. [1] Zilliz made it [2]. It is open source.")
    [('Milvus stores vectors.', (1,)), ('Zilliz made it.', (2,)), ('It is open source.', (2,))]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ragtune.config import EvalSettings
from ragtune.generate.extractive import content_terms, split_sentences
from ragtune.types import CITATION_MARKER, Answer

_LEADING_MARKERS = re.compile(r"^(?:\s*\[\d{1,3}\])+")


class FaithfulnessModelError(ValueError):
    """RAGTUNE_FAITHFULNESS_MODEL names no usable model; the message says why."""


class SupportCheck(Protocol):
    """Whether `sentence` is supported by any of `passages` (the chunks it cites)."""

    @property
    def name(self) -> str:
        """What judges: ``lexical``, or ``model:<directory>``."""
        ...

    def supported(self, sentence: str, passages: Sequence[str]) -> bool: ...


@dataclass(frozen=True)
class LexicalSupport:
    """Supported when at least `threshold` of the sentence's content words occur in the passages."""

    threshold: float = 0.6
    name = "lexical"  # not a field: what the report names the check

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be within (0, 1]; got {self.threshold}")

    def share(self, sentence: str, passages: Sequence[str]) -> float:
        """The share of the sentence's distinct content words found in the passages (1.0 for none)."""
        words = set(content_terms(sentence))
        if not words:
            return 1.0
        found = set(content_terms(" ".join(passages)))
        return len(words & found) / len(words)

    def supported(self, sentence: str, passages: Sequence[str]) -> bool:
        return bool(passages) and self.share(sentence, passages) >= self.threshold


class CrossEncoderSupport:
    """An NLI (or one-score) cross-encoder from a local directory judges each (chunk, sentence) pair."""

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise FaithfulnessModelError(
                f"RAGTUNE_FAITHFULNESS_MODEL {model_dir!r} is not a directory; give a local cross-encoder "
                "or NLI model (ragtune loads models offline), or leave it empty for the lexical check"
            )
        from sentence_transformers import CrossEncoder

        try:
            self._model = CrossEncoder(str(path), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:  # no config or weights there, or not a sequence classifier
            raise FaithfulnessModelError(
                f"RAGTUNE_FAITHFULNESS_MODEL {path} does not load as a cross-encoder: {exc}"
            ) from exc
        self.name = f"model:{path}"
        self._entailment: int | None = None
        if self._model.num_labels > 1:
            labels = {int(i): str(label).lower() for i, label in self._model.config.id2label.items()}
            found = [i for i, label in labels.items() if "entail" in label]
            if not found:
                raise FaithfulnessModelError(
                    f"{path}: none of the model's labels {sorted(labels.values())} names entailment; "
                    "give an NLI model, or a cross-encoder with one output"
                )
            self._entailment = found[0]

    def supported(self, sentence: str, passages: Sequence[str]) -> bool:
        if not passages:
            return False
        pairs = [(passage, sentence) for passage in passages]
        if self._entailment is None:
            scores = self._model.predict(pairs)  # one output: sentence-transformers applies a sigmoid
            return bool(max(float(s) for s in scores) >= 0.5)
        probabilities = self._model.predict(pairs, apply_softmax=True)
        return any(int(row.argmax()) == self._entailment for row in probabilities)


def support_check(settings: EvalSettings, device: str = "cpu") -> SupportCheck:
    """The check the settings name: the model when RAGTUNE_FAITHFULNESS_MODEL is set, else lexical."""
    if settings.faithfulness_model:
        return CrossEncoderSupport(settings.faithfulness_model, device)
    return LexicalSupport(settings.faithfulness_threshold)


def cited_sentences(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Each sentence of `text` without its markers, with the citation numbers it is checked
    against (by the rules in the module docstring); sentences without words are left out."""
    pieces: list[tuple[str, list[int]]] = []
    for piece in split_sentences(text):
        leading = _LEADING_MARKERS.match(piece)
        if leading and pieces:
            pieces[-1][1].extend(int(n) for n in CITATION_MARKER.findall(leading.group()))
            piece = piece[leading.end() :]
        numbers = [int(n) for n in CITATION_MARKER.findall(piece)]
        clean = " ".join(CITATION_MARKER.sub("", piece).split())
        clean = re.sub(r"\s+([.,;:!?])", r"\1", clean)
        pieces.append((clean, numbers))
    result: list[tuple[str, tuple[int, ...]]] = []
    for i, (sentence, numbers) in enumerate(pieces):
        if not any(ch.isalnum() for ch in sentence):
            continue
        if not numbers:
            after = [n for _, n in pieces[i + 1 :] if n]
            before = [n for _, n in pieces[:i] if n]
            numbers = after[0] if after else (before[-1] if before else [])
        result.append((sentence, tuple(dict.fromkeys(numbers))))
    return result


@dataclass(frozen=True)
class Faithfulness:
    """How many of an answer's checked sentences its citations support."""

    supported: int
    sentences: int


def answer_faithfulness(answer: Answer, check: SupportCheck) -> Faithfulness:
    """The sentences of `answer` that have content words, and how many the chunks they cite support."""
    passages = {c.number: c.snippet for c in answer.citations}
    supported = sentences = 0
    for sentence, numbers in cited_sentences(answer.text):
        if not content_terms(sentence):
            continue
        sentences += 1
        supported += check.supported(sentence, [passages[n] for n in numbers if n in passages])
    return Faithfulness(supported, sentences)
