"""Unanswerable rows may name the passages their search leaves out (``excluded``); the loader reads them
and refuses a malformed scope with the file and line."""

from __future__ import annotations

import json

import pytest

from ragtune.eval.datasets import DatasetError, load_beir, write_beir


def test_the_excluded_passages_of_an_unanswerable_row_round_trip_and_a_bad_scope_names_its_line(tmp_path):
    corpus = [{"_id": "c1", "title": "T", "text": "Milvus listens on 19530."}, {"_id": "c2", "text": "Kitchen."}]
    queries = [{"_id": "q1", "text": "Which port?", "answers": ["19530"]}]
    unanswerable = [{"_id": "u1", "text": "Which port?", "excluded": ["c1"]}, {"_id": "u2", "text": "Why?"}]
    write_beir(tmp_path, corpus, queries, [("q1", "c1")], unanswerable)
    dataset = load_beir(tmp_path)
    assert dataset.qrels == {"q1": {"c1": 1}} and dataset.answers == {"q1": ["19530"]}
    assert dataset.unanswerable == {"u1": "Which port?", "u2": "Why?"} and dataset.excluded == {"u1": ("c1",)}
    (tmp_path / "unanswerable.jsonl").write_text(
        json.dumps(unanswerable[0]) + "\n" + json.dumps({"_id": "u3", "text": "x", "excluded": "c1"}) + "\n"
    )
    with pytest.raises(DatasetError, match=r"unanswerable.jsonl:2: 'excluded' must be a list of corpus ids"):
        load_beir(tmp_path)
