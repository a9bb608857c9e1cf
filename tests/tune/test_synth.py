"""`synthesize` on a real index: the split, the filters, the unanswerable scope, the LLM round trip,
and `ragtune eval --index` measuring the set on the index itself, read-only."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from conftest import THREADS
from ragtune.config import Settings
from ragtune.eval.datasets import load_beir, read_jsonl
from ragtune.eval.index import open_index
from ragtune.eval.runner import evaluate_answers, evaluate_retrieval
from ragtune.finetune.data import read_examples
from ragtune.generate.base import NOT_FOUND
from ragtune.tune.dataset import write_synthesis
from ragtune.tune.llm import SYNTH_PROMPT
from ragtune.tune.synth import RuleWriter, SynthOptions, occurs, read_documents, synthesize, writer_for
from ragtune.types import Filters
from tests.llm_stub import stub_llm
from tests.tune.conftest import CHUNKING, DOCUMENTS, OPTIONS


def _rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path, ())]


def test_the_set_is_split_by_document_and_reads_as_beir_folders_and_finetune_rows(question_set):
    out, manifest, synthesis = question_set
    train_docs = {d["doc_id"] for d in manifest["documents"]["train"]}
    holdout_docs = {d["doc_id"] for d in manifest["documents"]["holdout"]}
    assert holdout_docs and train_docs and not train_docs & holdout_docs
    all_docs = train_docs | holdout_docs
    assert all_docs == set(synthesis.chunks) and len(all_docs) == len(DOCUMENTS)
    for split, docs, corpus_docs in (("train", train_docs, train_docs), ("holdout", holdout_docs, all_docs)):
        folder = out / split
        corpus = {row["_id"]: row for row in _rows(folder / "corpus.jsonl")}
        # training never sees a held-out document; the held-out corpus is the whole index, as --index searches it
        assert {row["doc_id"] for row in corpus.values()} == corpus_docs
        dataset = load_beir(folder)
        assert dataset.queries and all(corpus[c]["doc_id"] in docs for q in dataset.qrels for c in dataset.qrels[q])
        assert dataset.unanswerable
        for row in _rows(folder / "unanswerable.jsonl"):
            assert row["doc_id"] in docs
            assert set(dataset.excluded[row["_id"]]) == {c.id for c in synthesis.chunks[row["doc_id"]]}
        rows = read_examples(folder / "finetune.jsonl")  # what ragtune finetune reads
        counts = manifest["splits"][split]
        assert len(rows) == counts["finetune_rows"] == counts["with_answers"] + counts["unanswerable"]
        assert sum(r.answer is None for r in rows) == len(dataset.unanswerable)
        assert len(read_examples(folder)) == counts["with_answers"]  # and the BEIR folder, as finetune reads it
    counts = manifest["counts"]
    assert counts["generated"] == counts["kept"] + sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert counts["kept"] == sum(s["queries"] + s["unanswerable"] for s in manifest["splits"].values())
    assert counts["unanswerable"] > 0 and set(counts["kept_by_rule"]) <= {"cloze", "ict"}


def test_every_kept_answer_occurs_in_its_chunk_and_not_in_its_question(question_set):
    out, _, _ = question_set
    for split in ("train", "holdout"):
        dataset = load_beir(out / split)
        assert dataset.answers
        for qid, answers in dataset.answers.items():
            [chunk_id] = dataset.qrels[qid]
            assert occurs(answers[0], dataset.corpus[chunk_id].text) and not occurs(answers[0], dataset.queries[qid])
        for row in read_examples(out / split / "finetune.jsonl"):
            if row.answer is not None:
                assert row.context is not None and occurs(row.answer, row.context)
            else:  # the chunk found in its place does not hold the withheld answer
                assert row.context and row.question


@pytest.mark.slow
def test_the_same_seed_writes_the_same_files(question_set, index_settings, embedder, tmp_path):
    out, _, _ = question_set
    with open_index(index_settings, embedder) as system:
        again = synthesize(system, RuleWriter(), OPTIONS, log=lambda message: None)
    write_synthesis(again, tmp_path / "again", {"writer": "rules"})
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == 11 and all((tmp_path / "again" / f).read_bytes() == (out / f).read_bytes() for f in files)


@pytest.mark.slow
def test_unanswerable_rows_get_the_not_found_reply_under_their_scope_and_an_answer_without_it(
    question_set, index_settings, embedder
):
    _, _, synthesis = question_set
    with open_index(index_settings, embedder, generator=True) as system:
        assert system.rag is not None
        for row in synthesis.unanswerable:
            own = row.own.chunk.doc_id
            scoped = system.rag.ask(row.question, filters=Filters(exclude_doc_ids=(own,)))
            assert scoped.abstained and scoped.text == NOT_FOUND, (row.question, scoped.text)
            unscoped = system.rag.ask(row.question)
            assert not unscoped.abstained and unscoped.citations[0].doc_id == own, row.question


def _index_state(settings: Settings, embedder: Any) -> tuple[Any, ...]:
    with open_index(settings, embedder) as system:
        documents, _ = system.catalog.list(limit=100)
        chunks = {doc: [(c.id, c.text) for c in hits] for doc, hits in read_documents(system).items()}
        return system.store.count(), [asdict(d) for d in documents], system.catalog.embedder("ragtune"), chunks


def _numbers(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("seconds", "ms_per_query", "index")}


@pytest.mark.slow
def test_eval_on_the_index_gives_the_scratch_numbers_and_leaves_the_index_as_it_was(
    question_set, index_settings, embedder
):
    out, manifest, _ = question_set
    before = _index_state(index_settings, embedder)
    for evaluate in (evaluate_retrieval, evaluate_answers):
        scratch = evaluate(out / "holdout", index_settings, embedder=embedder)
        live = evaluate(out / "holdout", index_settings, index=True, embedder=embedder)
        assert scratch["index"] is None and live["index"].endswith("(collection ragtune)")
        assert _numbers(live) == _numbers(scratch)
    assert live["n_unanswerable"] == manifest["splits"]["holdout"]["unanswerable"] > 0 and live["abstain_rate"] == 1.0
    # the extractive answerer quotes its chunks, so each answer sentence is supported
    assert live["faithfulness"] == 1.0 and live["n_answer_sentences"] > 0 and live["faithfulness_check"] == "lexical"
    assert _index_state(index_settings, embedder) == before


def test_the_round_trip_drops_a_pair_whose_question_retrieves_another_chunk(index_settings, embedder):
    # The LLM asks the same question of every chunk. Its answer is in two: the Milvus chunk and the
    # kitchen's locker 19530; only the Milvus chunk is what the question retrieves.
    reply = "Here are the pairs.\nQ: Which port does the Milvus server listen on?\nA: 19530"
    with stub_llm(answer=reply) as stub:
        settings = Settings(
            data_dir=index_settings.data_dir,
            torch_threads=THREADS,
            generator="openai",
            llm_base_url=stub.url,
            llm_model="stub-model",
            llm_max_retries=0,
            **CHUNKING,
        )
        with open_index(settings, embedder, generator=True) as system:
            writer = writer_for(system)
            options = SynthOptions(per_chunk=1, unanswerable=0.0, holdout=0.0, top_k=1)
            synthesis = synthesize(system, writer, options, log=lambda message: None)
    chunks = [c for hits in synthesis.chunks.values() for c in hits]
    assert writer.name == "llm (openai, stub-model)" and len(stub.requests) == len(chunks)
    assert synthesis.counts == {
        "generated": len(chunks),
        "dropped_bad_answer": len(chunks) - 2,  # the answer is not in these chunks
        "dropped_round_trip": 1,  # the kitchen's
        "dropped_duplicate": 0,
        "kept": 1,
        "kept_answered_elsewhere": 0,
        "unanswerable": 0,
    }
    [pair] = synthesis.pairs
    assert Path(pair.chunk.source).name == "milvus.md" and (pair.answer, pair.rule) == ("19530", "llm")
    # each chunk went to the LLM as quoted document text, under the synthesis prompt
    for body, chunk in zip(stub.requests, chunks):
        system_prompt, user = (m["content"] for m in body["messages"])
        assert system_prompt == SYNTH_PROMPT.format(n=1) and "<documents>" in user and chunk.text.strip() in user
    assert len(DOCUMENTS) == len(synthesis.chunks)
