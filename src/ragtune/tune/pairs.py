"""Training pairs for the embedder from a `ragtune synth` question set, with retrieved hard negatives.

A set (`ragtune.tune.dataset`) holds ``train/`` (the training documents' questions, each
judged to the chunk it was written about) and ``holdout/`` (the held-out documents'
questions, over every chunk). `read_question_set` reads both back; `mine_examples` turns
each training question into (question, its chunk, hard negatives): the best-ranked chunks
of a search that are

* training chunks: no held-out text enters training, not even as a negative;
* not its own chunk, nor a chunk next to it in the same document, which the chunker's
  overlap makes share the sentence the question was written from;
* without its answer (or, for a retrieval-only query, without the query's own sentence):
  a chunk that holds the answer is a positive the set does not know about, and training it
  away would teach the model the wrong thing.

Chunks of the same document farther away stay candidates: telling a document's sections
apart is most of what a question about it needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.eval.datasets import BeirDataset, DatasetError, load_beir, read_jsonl
from ragtune.tune.dataset import FORMAT, MANIFEST
from ragtune.tune.synth import occurs


class TuneError(ValueError):
    """Options or a question set that cannot tune a model; the message says which and why."""


@dataclass(frozen=True)
class QuestionSet:
    directory: Path
    manifest: dict[str, Any]
    train: BeirDataset  # the training documents' questions and chunks
    holdout: BeirDataset  # the held-out documents' questions, over every chunk
    place: dict[str, tuple[str, int]]  # chunk id -> (its document's id, its position there)


@dataclass(frozen=True)
class Example:
    question: str
    positive: str
    negatives: tuple[str, ...]


def _split(directory: Path, name: str) -> BeirDataset:
    split = directory / name
    if not split.is_dir():
        raise TuneError(
            f"--questions {directory} has no {name}/ split; tuning needs both train/ and holdout/ "
            "(make the set with ragtune synth and --holdout above 0)"
        )
    try:
        dataset = load_beir(split)
    except DatasetError as exc:
        raise TuneError(f"--questions {directory}: {exc}") from None
    if not any(q in dataset.qrels for q in dataset.queries):
        raise TuneError(f"--questions {directory}: {name}/ holds no judged questions; tuning needs some in each split")
    return dataset


def read_question_set(directory: Path) -> QuestionSet:
    """The set `ragtune synth` wrote into `directory`; TuneError when it is not one or lacks a split."""
    if not directory.is_dir():
        raise TuneError(f"--questions {directory}: no such folder")
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TuneError(f"--questions {directory} is not a question set made by ragtune synth (no {MANIFEST})")
    train, holdout = _split(directory, "train"), _split(directory, "holdout")
    place: dict[str, tuple[str, int]] = {}
    seen: dict[str, int] = {}
    # The held-out corpus is every chunk, document by document in order (`write_synthesis`).
    for _, row in read_jsonl(directory / "holdout" / "corpus.jsonl", ("_id", "text")):
        doc = str(row.get("doc_id", row["_id"]))
        place[str(row["_id"])] = (doc, seen.get(doc, 0))
        seen[doc] = seen.get(doc, 0) + 1
    missing = sorted(set(train.corpus) - set(place))
    if missing:
        raise TuneError(f"--questions {directory}: holdout/corpus.jsonl lacks training chunks such as {missing[0]}")
    return QuestionSet(directory, manifest, train, holdout, place)


def judged(dataset: BeirDataset) -> dict[str, str]:
    """The questions of `dataset` that have a judged chunk, by id."""
    return {q: text for q, text in dataset.queries.items() if q in dataset.qrels}


def _positive(dataset: BeirDataset, query_id: str) -> str:
    return next(c for c, grade in dataset.qrels[query_id].items() if grade > 0)


def usable_negative(candidate: str, positive: str, avoid: Sequence[str], questions: QuestionSet) -> bool:
    """Whether `candidate` may be a hard negative of a question about `positive` (module docstring)."""
    if candidate == positive or candidate not in questions.train.corpus:
        return False
    (doc, at), (own_doc, own_at) = questions.place[candidate], questions.place[positive]
    if doc == own_doc and abs(at - own_at) <= 1:
        return False
    text = questions.train.corpus[candidate].text
    return not any(occurs(phrase, text) for phrase in avoid)


def mine_examples(questions: QuestionSet, rankings: dict[str, list[str]], count: int) -> tuple[list[Example], int]:
    """A training example per judged training question, with its first `count` usable negatives
    in `rankings` (chunk ids, best first); returns the examples and how many questions were
    left out for want of `count` negatives."""
    train = questions.train
    examples, short = [], 0
    for query_id, question in judged(train).items():
        positive = _positive(train, query_id)
        avoid = train.answers.get(query_id) or [question]
        negatives = [c for c in rankings.get(query_id, []) if usable_negative(c, positive, avoid, questions)][:count]
        if len(negatives) < count:
            short += 1
            continue
        examples.append(Example(question, train.corpus[positive].text, tuple(train.corpus[c].text for c in negatives)))
    return examples, short


def holdout_pairs(questions: QuestionSet) -> list[Example]:
    """(question, its chunk) for every judged held-out question: what the held-out loss is measured on."""
    holdout = questions.holdout
    return [Example(q, holdout.corpus[_positive(holdout, qid)].text, ()) for qid, q in judged(holdout).items()]


def columns(examples: list[Example]) -> dict[str, list[str]]:
    """The examples as sentence-transformers' columns: anchor, positive, then negative_1 … negative_n."""
    table = {"anchor": [e.question for e in examples], "positive": [e.positive for e in examples]}
    for n in range(len(examples[0].negatives) if examples else 0):
        table[f"negative_{n + 1}"] = [e.negatives[n] for e in examples]
    return table
