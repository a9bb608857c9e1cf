"""BEIR-format datasets: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``.

SQuAD-style sets add ``answers`` (a list of strings) to each query and may carry
``unanswerable.jsonl`` (questions the documents do not answer). An unanswerable row with
``excluded`` (corpus ids) is a question written for those passages and asked of every other
passage: the evaluation searches with them filtered out (what ``ragtune synth`` writes).

    >>> from ragtune.eval.datasets import load_beir
    >>> dataset = load_beir("../shared/data/squad-dev")       # doctest: +SKIP
    >>> len(dataset.corpus), len(dataset.queries)               # doctest: +SKIP
    (429, 2036)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """The dataset folder is not in BEIR format; the message names the file and line."""


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    text: str


@dataclass
class BeirDataset:
    corpus: dict[str, CorpusDoc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, list[str]] = field(default_factory=dict)
    unanswerable: dict[str, str] = field(default_factory=dict)
    # unanswerable question id -> the corpus ids its search leaves out (absent: none)
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; DatasetError names the bad line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise DatasetError(f"{path}:{number}: missing {', '.join(missing)}")
            rows.append((number, row))
    return rows


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    root = Path(directory)
    corpus_path, queries_path, qrels_path = (
        root / "corpus.jsonl",
        root / "queries.jsonl",
        root / "qrels" / f"{split}.tsv",
    )
    for path in (corpus_path, queries_path, qrels_path):
        if not path.is_file():
            raise DatasetError(f"{root} is not a BEIR dataset: {path.relative_to(root)} is missing")
    corpus = {
        str(r["_id"]): CorpusDoc(str(r["_id"]), str(r.get("title", "")), str(r["text"]))
        for _, r in read_jsonl(corpus_path, ("_id", "text"))
    }
    query_rows = [r for _, r in read_jsonl(queries_path, ("_id", "text"))]
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(reader, start=1):
            if number == 1 and row and row[0] == "query-id":
                continue
            if len(row) < 3:
                raise DatasetError(f"{qrels_path}:{number}: expected query-id, corpus-id, score")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries = {str(r["_id"]): str(r["text"]) for r in query_rows}
    answers = {str(r["_id"]): [str(a) for a in r["answers"]] for r in query_rows if r.get("answers")}
    unanswerable_path = root / "unanswerable.jsonl"
    unanswerable: dict[str, str] = {}
    excluded: dict[str, tuple[str, ...]] = {}
    rows = read_jsonl(unanswerable_path, ("_id", "text")) if unanswerable_path.is_file() else []
    for number, entry in rows:
        unanswerable[str(entry["_id"])] = str(entry["text"])
        scope = entry.get("excluded")
        if scope is None:
            continue
        if not isinstance(scope, list) or not all(isinstance(c, str) for c in scope):
            raise DatasetError(f"{unanswerable_path}:{number}: 'excluded' must be a list of corpus ids (strings)")
        excluded[str(entry["_id"])] = tuple(scope)
    return BeirDataset(corpus, queries, qrels, answers, unanswerable, excluded)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """One JSON object per line (UTF-8, non-ASCII kept); returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_beir(
    directory: Path,
    corpus: Iterable[dict[str, Any]],
    queries: Iterable[dict[str, Any]],
    qrels: Iterable[tuple[str, str]],
    unanswerable: Iterable[dict[str, Any]] = (),
) -> None:
    """A dataset `load_beir` reads: records as given (``_id``, ``text``, … per row) and the
    judged (query id, corpus id) pairs, each relevant with score 1."""
    write_jsonl(directory / "corpus.jsonl", corpus)
    write_jsonl(directory / "queries.jsonl", queries)
    lines = ["query-id\tcorpus-id\tscore\n", *(f"{q}\t{c}\t1\n" for q, c in qrels)]
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    (directory / "qrels" / "test.tsv").write_text("".join(lines), encoding="utf-8")
    write_jsonl(directory / "unanswerable.jsonl", unanswerable)
