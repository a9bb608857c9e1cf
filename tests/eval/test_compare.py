"""`ragtune eval compare A.json B.json`: two results side by side with the differences; anything that is
not a pair of results of the same kind is refused with exit code 2."""

from __future__ import annotations

import json

import pytest

from ragtune.eval.compare import compare_results
from tests.inprocess import run_ragtune

RETRIEVAL = {
    "dataset": "questions/holdout",
    "mode": "hybrid",
    "recall@1": 0.5,
    "recall@5": 1.0,
    "ndcg@10": 0.8155,
    "n_queries": 2,
    "baseline_bm25s": {"recall@5": 0.5, "ndcg@10": 0.6},
    "index": None,
    "settings": {"rrf_k": 60, "bm25_weight": 1.5},
}
ANSWERS = {"dataset": "questions/holdout", "exact_match": 0.1, "f1": 0.3, "citation_support": 1.0, "faithfulness": 0.9}


@pytest.fixture
def results(tmp_path):
    def write(name: str, payload: object) -> str:
        path = tmp_path / name
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        return str(path)

    return write


def test_the_table_shows_both_values_and_the_difference_of_every_metric_and_setting(results, monkeypatch, capsys):
    after = {**RETRIEVAL, "mode": "bm25", "ndcg@10": 0.9155, "settings": {"rrf_k": 60, "bm25_weight": 2.0}}
    a, b = results("a.json", RETRIEVAL), results("b.json", after)
    result = run_ragtune(["eval", "compare", a, b], monkeypatch, capsys)
    assert result.code == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert lines["metric"][:2] == [a, b]
    assert lines["ndcg@10"] == ["0.8155", "0.9155", "+0.1000"]
    assert lines["recall@5"] == ["1.0", "1.0", "0"]
    assert lines["mode"] == ["hybrid", "bm25", "changed"]
    assert lines["settings.bm25_weight"] == ["1.5", "2.0", "+0.5000"]
    assert lines["baseline_bm25s.ndcg@10"] == ["0.6", "0.6", "0"]
    assert lines["index"] == ["—", "—"]
    as_json = json.loads(run_ragtune(["eval", "compare", a, b, "--json"], monkeypatch, capsys).stdout)
    assert {"name": "ndcg@10", "a": 0.8155, "b": 0.9155, "difference": 0.1, "changed": True} in as_json


def test_a_key_only_one_result_has_is_shown_with_a_dash():
    rows = {r.name: r for r in compare_results(ANSWERS, {**ANSWERS, "abstain_rate": 1.0})}
    assert (rows["abstain_rate"].a, rows["abstain_rate"].b, rows["abstain_rate"].difference) == (None, 1.0, None)
    assert rows["abstain_rate"].changed and not rows["f1"].changed


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ({"hello": "world"}, RETRIEVAL, "is not a ragtune eval result"),
        ([1, 2, 3], RETRIEVAL, "is not a ragtune eval result"),
        ({"recall@5": 1.0}, RETRIEVAL, "is not a ragtune eval result"),  # no dataset
        ("{not json", RETRIEVAL, "not valid JSON"),
        (None, RETRIEVAL, "no such file"),
        (ANSWERS, RETRIEVAL, "measures answers and"),
    ],
)
def test_files_that_are_not_two_results_of_one_kind_exit_2(results, monkeypatch, capsys, first, second, message):
    a = results("a.json", first) if first is not None else "/no/such/result.json"
    result = run_ragtune(["eval", "compare", a, results("b.json", second)], monkeypatch, capsys)
    assert result.code == 2 and message in result.stderr and "Traceback" not in result.stderr
