"""Cut tests/data/squad-mini from squad-dev (deterministic; see squad-mini/README.md).

Rule: every paragraph of the articles in ``ARTICLES`` (corpus ids starting with those
slugs), every question whose qrel points at one of them, and the first
``UNANSWERABLE`` lines of unanswerable.jsonl. Rows keep squad-dev's order, and lines are
copied byte for byte, so a seeded ``--limit`` sample picks the same questions as it did
on the slice the eval tests cut from squad-dev before this fixture existed.

    python tests/data/make_squad_mini.py [SQUAD_DEV_DIR [OUT_DIR]]

Defaults: ../shared/data/squad-dev beside the repository, and tests/data/squad-mini.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTICLES = ("kenya-", "rhine-")
UNANSWERABLE = 20


def _lines(path: Path) -> list[str]:
    """The file's non-blank lines, each with its line ending, exactly as stored."""
    return [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]


def build(source: Path, out: Path) -> dict[str, int]:
    """Write the fixture's data files under ``out``; return their row counts."""
    corpus = _lines(source / "corpus.jsonl")
    kept = [line for line in corpus if json.loads(line)["_id"].startswith(ARTICLES)]
    kept_ids = {json.loads(line)["_id"] for line in kept}
    header, *rows = _lines(source / "qrels" / "test.tsv")
    qrels = [row for row in rows if row.split("\t")[1] in kept_ids]
    query_ids = {row.split("\t")[0] for row in qrels}
    queries = [line for line in _lines(source / "queries.jsonl") if json.loads(line)["_id"] in query_ids]
    unanswerable = _lines(source / "unanswerable.jsonl")[:UNANSWERABLE]
    if len(queries) != len(query_ids):
        raise SystemExit(f"{source}: {len(query_ids)} questions in qrels but {len(queries)} in queries.jsonl")

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(kept), encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(queries), encoding="utf-8")
    (out / "qrels" / "test.tsv").write_text(header + "".join(qrels), encoding="utf-8")
    (out / "unanswerable.jsonl").write_text("".join(unanswerable), encoding="utf-8")
    return {"paragraphs": len(kept), "questions": len(queries), "unanswerable": len(unanswerable)}


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "squad-dev"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "squad-mini"
    print(build(source, out))
