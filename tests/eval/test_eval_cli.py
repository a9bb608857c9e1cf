"""`ragtune eval` on squad-mini (two SQuAD articles shipped in tests/data): exact output contract
and quality thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import cli_environment
from ragtune.eval.datasets import DatasetError, load_beir
from ragtune.eval.metrics import mrr_at_k, ndcg_at_k, recall_at_k, squad_exact_match, squad_f1
from tests.conftest import SQUAD_DEV, SQUAD_MINI

MAKE_SQUAD_MINI = SQUAD_MINI.parent / "make_squad_mini.py"
SQUAD_MINI_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "unanswerable.jsonl")


def test_squad_mini_is_cut_from_squad_dev(tmp_path):
    """The shipped fixture is exactly what its script cuts from squad-dev (see its README)."""
    if not SQUAD_DEV.is_dir():
        pytest.skip(f"{SQUAD_DEV} is not present: cannot rebuild tests/data/squad-mini to compare")
    result = subprocess.run(
        [sys.executable, str(MAKE_SQUAD_MINI), str(SQUAD_DEV), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in SQUAD_MINI_FILES:
        assert (tmp_path / name).read_bytes() == (SQUAD_MINI / name).read_bytes(), name


def _eval(data_dir, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "eval", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_environment(data_dir),  # eval indexes into a scratch store; data_dir stays empty
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # stdout holds exactly one JSON object; logs go to stderr


@pytest.mark.slow
def test_eval_retrieval_hybrid_beats_thresholds_and_baseline(tmp_path):
    report = _eval(tmp_path, "retrieval", str(SQUAD_MINI), "--mode", "hybrid", "--limit", "150")
    assert report["n_queries"] == 150
    assert {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"} <= set(report)
    assert report["ndcg@10"] >= 0.88 and report["recall@5"] >= 0.95
    assert report["ndcg@10"] >= report["baseline_bm25s"]["ndcg@10"] - 0.01


@pytest.mark.slow
def test_eval_answers_reports_squad_metrics(tmp_path):
    report = _eval(tmp_path, "answers", str(SQUAD_MINI), "--limit", "25")
    assert set(report) >= {"exact_match", "f1", "citation_support", "abstain_rate"}
    assert report["n_questions"] == 25 and report["n_unanswerable"] == 20
    assert report["f1"] > 0.1 and report["citation_support"] >= 0.6
    assert 0.0 <= report["abstain_rate"] <= 1.0


def test_metric_definitions():
    relevant = {"a": 1}
    assert recall_at_k(["b", "a"], relevant, 1) == 0.0 and recall_at_k(["b", "a"], relevant, 5) == 1.0
    assert mrr_at_k(["b", "a"], relevant, 10) == 0.5
    assert ndcg_at_k(["a", "b"], relevant, 10) == 1.0
    assert squad_exact_match("The Rhine.", ["rhine"]) == 1.0
    assert squad_f1("Rhine river in Europe", ["the Rhine"]) == pytest.approx(0.4)


def test_answers_eval_without_answers_is_a_usage_error(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "What is it?"}\n')
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "It is a river."}\n')
    result = subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "eval", "answers", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "no query in queries.jsonl has an 'answers' list" in result.stderr


def test_bad_dataset_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "ok"}\n{not json}\n')
    with pytest.raises(DatasetError, match=r"corpus.jsonl:2: not valid JSON"):
        load_beir(tmp_path)
    (tmp_path / "corpus.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"corpus.jsonl is missing"):
        load_beir(tmp_path)


@pytest.mark.slow
def test_eval_conversations_condensing_recovers_the_standalone_recall(tmp_path):
    written = tmp_path / "items.jsonl"
    report = _eval(tmp_path, "conversations", str(SQUAD_MINI), "--limit", "80", "--write", str(written))
    assert report["n_items"] == 80 and report["condenser"] == "rules"
    assert report["condensed_r@5"] > report["verbatim_r@5"]
    assert report["condensed_r@5"] >= report["standalone_r@5"] - 0.05
    assert report["standalone_hit@5"] >= report["standalone_r@5"]
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 80 and all(set(r) == {"id", "first", "follow_up", "standalone", "relevant"} for r in rows)


def test_conversation_items_follow_the_documented_rule(tmp_path):
    from ragtune.eval.conversations import build_items, follow_up_of, load_items, write_items

    dataset = load_beir(SQUAD_MINI)
    items = build_items(dataset)
    assert items == build_items(dataset)  # fixed seed
    for item in items:
        title = dataset.corpus[item.relevant[0]].title
        assert follow_up_of(item.standalone, title) == item.follow_up and item.first != item.standalone
        assert {dataset.corpus[c].title for c in item.relevant} == {title}
    assert follow_up_of("Who ruled the United Methodist Church's board?", "United Methodist Church") == (
        "Who ruled its board?"
    )
    assert follow_up_of("Is Victoria large?", "Victoria (Australia)") == "Is it large?"
    # A conversations.jsonl in the dataset folder is used as it is.
    for name in ("corpus.jsonl", "queries.jsonl"):
        (tmp_path / name).write_bytes((SQUAD_MINI / name).read_bytes())
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_bytes((SQUAD_MINI / "qrels" / "test.tsv").read_bytes())
    write_items(items[:3], tmp_path / "conversations.jsonl")
    assert load_items(tmp_path, load_beir(tmp_path)) == items[:3]
