"""Promotion: the decision from a report, where the live configuration finds a promoted model, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.config import Settings
from ragtune.store.promotions import Promotions
from ragtune.system import live_settings, open_catalog
from ragtune.tune.promote import PromotionError, promote
from ragtune.tune.report import TuneReport, decide
from tests.inprocess import run_ragtune


def _adapter(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text("{}", encoding="utf-8")
    return directory


def _report(model: Path, f1_after: float = 0.30, abstain_after: float = 0.50) -> TuneReport:
    return TuneReport(
        "answerer",
        str(model),
        "f1",
        before={"f1": 0.20, "abstain_rate": 0.50, "false_abstentions": 0.05},
        after={"f1": f1_after, "abstain_rate": abstain_after, "false_abstentions": 0.05},
    )


def test_the_main_metric_must_improve_and_no_metric_may_fall_past_the_margin(tmp_path):
    assert decide(_report(tmp_path)).promote
    flat = decide(_report(tmp_path, f1_after=0.20))
    assert not flat.promote and "f1 did not improve" in flat.reasons[0]
    worse_elsewhere = decide(_report(tmp_path, abstain_after=0.40), margin=0.05)
    assert not worse_elsewhere.promote and "abstain_rate fell by 0.1000" in worse_elsewhere.reasons[0]
    assert decide(_report(tmp_path, abstain_after=0.40), margin=0.2).promote


def test_a_rise_in_false_abstentions_counts_as_worse(tmp_path):
    report = _report(tmp_path)
    report.after["false_abstentions"] = 0.25
    decision = decide(report, margin=0.1)
    assert not decision.promote and "false_abstentions rose by 0.2000" in decision.reasons[0]


def test_a_report_round_trips_through_its_file(tmp_path):
    report = _report(tmp_path)
    report.decision = decide(report)
    report.write(tmp_path / "report.json")
    assert TuneReport.read(tmp_path / "report.json") == report


def test_a_promoted_adapter_is_live_unless_the_settings_name_their_own(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    adapter = _adapter(tmp_path / "adapter")
    decision = promote(settings, report := _report(adapter))
    assert decision.promote and report.promoted
    catalog = open_catalog(settings)
    try:
        assert live_settings(settings, catalog).llm.adapter == str(adapter.resolve())
        assert live_settings(Settings(data_dir=tmp_path / "data", llm_adapter=""), catalog).llm.adapter == ""
        assert Promotions(catalog).current("ragtune", "answerer").report["after"]["f1"] == 0.30
        # another collection has its own promotions
        other = Settings(data_dir=tmp_path / "data", collection="other")
        assert live_settings(other, catalog).llm.adapter == ""
    finally:
        catalog.close()


def test_a_report_that_is_not_better_promotes_nothing(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    report = _report(_adapter(tmp_path / "adapter"), f1_after=0.10)
    assert not promote(settings, report).promote and not report.promoted
    catalog = open_catalog(settings)
    try:
        assert Promotions(catalog).current("ragtune", "answerer") is None
    finally:
        catalog.close()


def test_promotion_refuses_a_missing_model_and_a_pinned_setting(tmp_path):
    with pytest.raises(PromotionError, match=r"adapter_config\.json is missing"):
        promote(Settings(data_dir=tmp_path / "data"), _report(tmp_path / "nowhere"))
    pinned = Settings(data_dir=tmp_path / "data", llm_adapter="/models/mine")
    with pytest.raises(PromotionError, match="RAGTUNE_LLM_ADAPTER is set explicitly"):
        promote(pinned, _report(_adapter(tmp_path / "adapter")))


def test_cli_promote_and_status(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no .env file from the checkout
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))

    def ragtune(*args: str | Path):
        return run_ragtune(["tune", *args], monkeypatch, capsys)

    worse = _report(_adapter(tmp_path / "worse"), f1_after=0.1)
    worse.write(tmp_path / "worse.json")
    refused = ragtune("promote", tmp_path / "worse.json")
    assert refused.code == 1 and "not promoted, the live model stays: f1 did not improve" in refused.stdout
    assert TuneReport.read(tmp_path / "worse.json").decision.promote is False  # the decision is written back
    assert "nothing promoted for 'ragtune'" in ragtune("status").stdout

    better = _report(_adapter(tmp_path / "better"))
    better.write(tmp_path / "better.json")
    accepted = ragtune("promote", tmp_path / "better.json")
    assert accepted.code == 0, accepted.stderr
    assert "answerer" in accepted.stdout and "/v1/admin/reload" in accepted.stdout
    shown = ragtune("status")
    assert shown.code == 0 and shown.stdout.startswith("live") and str((tmp_path / "better").resolve()) in shown.stdout

    (tmp_path / "junk.json").write_text("[1, 2]", encoding="utf-8")
    junk = ragtune("promote", tmp_path / "junk.json")
    assert junk.code == 2 and "is not a ragtune tuning report" in junk.stderr
    missing = ragtune("promote", tmp_path / "missing.json")
    assert missing.code == 2 and "missing.json" in missing.stderr


def test_a_promoted_embedder_comes_with_its_vectors_and_is_what_the_next_build_serves(tmp_path, embedder):
    from ragtune.system import build
    from tests.builders import tiny_sentence_model
    from tests.tune.conftest import DOCUMENTS

    corpus = tmp_path / "docs"
    corpus.mkdir()
    for name, text in DOCUMENTS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", embedding_backend="torch")  # the model is not pinned
    with build(settings, embedder=embedder, generator=False) as system:  # the configured model, 384-d
        assert len(system.ingestor.ingest_paths([corpus]).indexed) == len(DOCUMENTS)
        chunks = system.store.count()
    tuned = tiny_sentence_model(tmp_path / "tuned", DOCUMENTS.values())  # another space, 32-d
    report = TuneReport("embedder", str(tuned), "hybrid_ndcg@10", {"hybrid_ndcg@10": 0.5}, {"hybrid_ndcg@10": 0.6})

    assert promote(settings, report, progress=False).promote  # no system given: it opens the index itself
    with build(settings, generator=False) as system:
        assert system.embedder.name == str(tuned.resolve()) and system.embedder.dimension == 32
        assert system.store.count() == chunks  # every chunk re-embedded, none lost
        assert system.retriever.run("When does the office kitchen open?", mode="dense")
