"""A question set on disk: what `ragtune synth` writes and `ragtune eval` and `ragtune finetune` read.

    OUT/
      manifest.json         options, what wrote the questions, counts, each split's documents
      train/                the training documents' questions, a BEIR folder:
        corpus.jsonl        a record per chunk of the training documents: _id (the chunk id),
                            title, text, doc_id, source
        queries.jsonl       _id, text, rule, and answers ([the answer]) where there is one
        qrels/test.tsv      each query and the chunk it was written for
        unanswerable.jsonl  _id, text, excluded (the chunk ids of its own document), doc_id
        finetune.jsonl      ragtune finetune's rows: question, answer, context, title; an
                            unanswerable row has a null answer and, as context, the chunk
                            found instead of its own
      holdout/              the same for the held-out documents, except that its corpus is every
                            chunk, as the index holds them: evaluating it on a scratch copy and on
                            the live index (`ragtune eval … --index`) searches the same passages

The set is written into a temporary folder beside OUT and renamed into place, so a run stopped
halfway leaves no half-written set; OUT must not exist, or be an empty folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ragtune.config import Settings
from ragtune.eval.datasets import write_beir, write_jsonl
from ragtune.tune.synth import Pair, SynthError, Synthesis, SynthOptions, UnanswerableRow
from ragtune.types import Hit

MANIFEST = "manifest.json"
FINETUNE_ROWS = "finetune.jsonl"
FORMAT = "ragtune-synth/1"


def check_output(out: Path) -> None:
    """SynthError unless `out` can receive a new set (absent, or an empty folder)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"--out {out} already exists and is not an empty folder; remove it or choose another")


def _record(chunk: Hit) -> dict[str, Any]:
    return {"_id": chunk.id, "title": chunk.title, "text": chunk.text, "doc_id": chunk.doc_id, "source": chunk.source}


def _query(pair: Pair) -> dict[str, Any]:
    row: dict[str, Any] = {"_id": pair.id, "text": pair.question, "rule": pair.rule}
    if pair.answer is not None:
        row["answers"] = [pair.answer]
    return row


def _unanswerable(row: UnanswerableRow, chunks: dict[str, list[Hit]]) -> dict[str, Any]:
    doc_id = row.own.chunk.doc_id
    return {"_id": row.id, "text": row.question, "excluded": [c.id for c in chunks[doc_id]], "doc_id": doc_id}


def _finetune_rows(pairs: list[Pair], unanswerable: list[UnanswerableRow]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"question": p.question, "answer": p.answer, "context": p.chunk.text, "title": p.chunk.title}
        for p in pairs
        if p.answer is not None  # a retrieval-only query has no answer to train on
    ]
    rows += [
        {"question": u.question, "answer": None, "context": u.context.text, "title": u.context.title}
        for u in unanswerable
    ]
    return rows


def _write_split(directory: Path, synthesis: Synthesis, name: str) -> dict[str, Any]:
    docs = synthesis.splits[name]
    corpus_docs = list(synthesis.chunks) if name == "holdout" else docs
    corpus = [_record(c) for d in corpus_docs for c in synthesis.chunks[d]]
    pairs = [p for p in synthesis.pairs if p.chunk.doc_id in docs]
    unanswerable = [u for u in synthesis.unanswerable if u.own.chunk.doc_id in docs]
    write_beir(
        directory,
        corpus,
        [_query(p) for p in pairs],
        [(p.id, p.chunk.id) for p in pairs],
        [_unanswerable(u, synthesis.chunks) for u in unanswerable],
    )
    finetune = write_jsonl(directory / FINETUNE_ROWS, _finetune_rows(pairs, unanswerable))
    return {
        "path": name,
        "documents": len(docs),
        "corpus": len(corpus),
        "queries": len(pairs),
        "with_answers": sum(p.answer is not None for p in pairs),
        "unanswerable": len(unanswerable),
        "finetune_rows": finetune,
    }


def describe_synthesis(
    source: dict[str, str], writer: str, options: SynthOptions, settings: Settings
) -> dict[str, Any]:
    """What a manifest records of how its set was made, whoever made it (`ragtune synth`, `tune
    embedder`, a `/v1/tune` job): the source, the writer, the options and the index's settings."""
    return {
        "source": source,
        "writer": writer,
        "seed": options.seed,
        "tag": options.tag,
        "per_chunk": options.per_chunk,
        "unanswerable": options.unanswerable,
        "holdout": options.holdout,
        "round_trip_top_k": options.top_k,
        "retrieval_mode": settings.retrieval.mode,
        "embedding_model": settings.embedding.model,
        "chunk_size": settings.ingest.chunk_size,
        "chunk_overlap": settings.ingest.chunk_overlap,
    }


def write_synthesis(synthesis: Synthesis, out: Path, about: dict[str, Any]) -> dict[str, Any]:
    """Writes the set into `out` (layout in the module docstring); returns the manifest, which is
    `about` (options, source, writer) with the counts and each split's documents."""
    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        splits = {
            name: _write_split(staging / name, synthesis, name) for name, docs in synthesis.splits.items() if docs
        }
        manifest = {
            "format": FORMAT,
            **about,
            "counts": {
                "documents": len(synthesis.chunks),
                "chunks": sum(len(c) for c in synthesis.chunks.values()),
                **synthesis.counts,
                "kept_by_rule": dict(sorted(synthesis.by_rule.items())),
            },
            "splits": splits,
            "documents": {
                name: [{"doc_id": d, "source": synthesis.chunks[d][0].source} for d in docs]
                for name, docs in synthesis.splits.items()
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (check_output): the staged set takes its place
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(questions: Path) -> dict[str, Any]:
    """The manifest of a set `write_synthesis` wrote into `questions`; SynthError when it is not one."""
    if not questions.is_dir():
        raise SynthError(f"{questions}: no such folder; make a question set with ragtune synth --out {questions}")
    path = questions / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SynthError(f"{questions} is not a ragtune synth set: it has no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SynthError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SynthError(f"{path} is not a ragtune synth manifest (its format is not {FORMAT})")
    return manifest
