"""The no-model question rules, the LLM reply parser and the document split: pure functions, no store."""

from __future__ import annotations

import random

import pytest

from ragtune.tune.llm import parse_pairs
from ragtune.tune.rules import cloze, rule_questions, statements
from ragtune.tune.synth import SynthError, SynthOptions, occurs, split_documents

CHUNK = (
    "Annual leave\n\n"
    "Employees get 25 days of paid leave per year. Unused days expire at the end of March. "
    "Requests go to the line manager two weeks in advance. Managers approve requests quickly."
)


@pytest.mark.parametrize(
    ("sentence", "question", "answer"),
    [
        ("The office in Leeds was opened in 2019.", "The office in Leeds was opened in what year?", "2019"),
        ("Employees get 25 days of paid leave per year.", "Employees get how many days of paid leave per year?", "25"),
        ("The Milvus server keeps every vector in memory.", "Which server keeps every vector in memory?", "Milvus"),
        ("Milvus Lite stores the vectors in a local file.", "What stores the vectors in a local file?", "Milvus Lite"),
        (
            "Back up the data directory while ragtune is stopped.",
            "Back up what while ragtune is stopped?",
            "data directory",
        ),
    ],
)
def test_cloze_masks_a_span_of_the_sentence_by_its_kind(sentence, question, answer):
    written = cloze(sentence, random.Random(1))
    assert written is not None and (written.question, written.answer, written.rule) == (question, answer, "cloze")
    assert occurs(written.answer, sentence) and not occurs(written.answer, written.question)


def test_a_sentence_without_a_span_is_the_inverse_cloze_query_for_its_chunk():
    text = "Engineers review every change carefully before merging anything into production."
    assert cloze(text, random.Random(0)) is None
    [query] = rule_questions(text, 2, random.Random(0))
    assert (query.question, query.answer, query.rule) == (text, None, "ict")


def test_headings_and_fragments_are_not_statements_and_answer_bearing_sentences_come_first():
    # the heading and the four-word sentence are left out
    assert statements(CHUNK) == [
        "Employees get 25 days of paid leave per year.",
        "Unused days expire at the end of March.",
        "Requests go to the line manager two weeks in advance.",
    ]
    questions = rule_questions(CHUNK, 3, random.Random(7))
    assert rule_questions(CHUNK, 3, random.Random(7)) == questions  # a seed fixes them
    assert [q.rule for q in questions] == ["cloze", "cloze", "ict"]
    assert all(occurs(q.answer, CHUNK) for q in questions if q.answer is not None)
    assert all(q.question.endswith("?") for q in questions[:2])
    assert [q.rule for q in rule_questions(CHUNK, 1, random.Random(3))] == ["cloze"]


def test_the_llm_reply_parser_pairs_each_question_with_its_answer_and_ignores_the_rest():
    reply = "Sure! Here you go:\n1. Q: When do unused days expire?\nA: at the end of March.\nQ: Orphan?\n\nnothing"
    assert parse_pairs(reply, 5) == [("When do unused days expire?", "at the end of March")]
    assert parse_pairs("I cannot help with that.", 5) == []
    assert len(parse_pairs("Q: a?\nA: b\nQ: c?\nA: d\nQ: e?\nA: f", 2)) == 2


def test_the_split_is_by_document_seeded_and_keeps_each_documents_side_as_others_are_added():
    docs = [f"doc{i:02d}" for i in range(40)]
    split = split_documents(docs, 0.3, seed=0)
    assert 8 <= len(split["holdout"]) <= 16 and sorted(split["train"] + split["holdout"]) == docs
    assert not set(split["train"]) & set(split["holdout"])
    assert split_documents(list(reversed(docs)), 0.3, seed=0) == split  # the order given does not matter
    grown = split_documents([*docs, *(f"new{i}" for i in range(20))], 0.3, seed=0)
    assert set(split["holdout"]) <= set(grown["holdout"]) and set(split["train"]) <= set(grown["train"])
    assert split_documents(docs, 0.3, seed=1) != split
    # with few documents: at least one held out and one kept, whatever the share
    assert len(split_documents(docs[:2], 0.01, seed=0)["holdout"]) == 1
    assert len(split_documents(docs[:2], 0.99, seed=0)["train"]) == 1
    assert split_documents(docs[:1], 0.0, seed=0) == {"train": docs[:1], "holdout": []}
    with pytest.raises(SynthError, match="at least 2 documents"):
        split_documents(docs[:1], 0.3, seed=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"holdout": 1.5}, "--holdout must be at least 0 and below 1"),
        ({"holdout": -0.1}, "--holdout"),
        ({"unanswerable": 1.0}, "--unanswerable"),
        ({"per_chunk": 0}, "--per-chunk"),
        ({"top_k": 0}, "--top-k"),
    ],
)
def test_options_out_of_range_are_refused_with_the_option_named(options, message):
    with pytest.raises(SynthError, match=message):
        SynthOptions(**options)
