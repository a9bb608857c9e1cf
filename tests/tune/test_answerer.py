"""`ragtune tune answerer` on the tiny Llama: it trains an adapter PEFT loads, measures the held-out split
before (as the generator serves now) and after (with the new adapter), and refuses bad input with exit 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ragtune.config import Settings
from ragtune.eval.index import describe
from ragtune.generate.base import NOT_FOUND
from ragtune.store.catalog import Catalog
from ragtune.store.promotions import Promotions
from ragtune.tune.answerer import METRICS, live_adapter
from ragtune.tune.dataset import write_synthesis
from ragtune.tune.synth import Synthesis
from tests.builders import build_tiny_llama
from tests.conftest import SQUAD_MINI
from tests.inprocess import Result, run_ragtune
from tests.tune.conftest import CHUNKING

TRAINING = ["--max-steps", "2", "--global-batch", "2", "--micro-batch", "2", "--lr", "0.01", "--lora-r", "4"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-tune"))


@pytest.fixture(scope="module")
def synth_set(
    tmp_path_factory: pytest.TempPathFactory, question_set: tuple[Path, dict[str, Any], Synthesis], index_settings
) -> Path:
    """The package's question set as `ragtune synth` writes it from the index (its manifest names the source)."""
    out = tmp_path_factory.mktemp("answerer") / "questions"
    write_synthesis(question_set[2], out, {"source": {"index": describe(index_settings)}, "writer": "rules"})
    return out


@pytest.fixture
def ragtune(monkeypatch, capsys, tmp_path, embedder, index_settings, tiny_llama) -> Callable[..., Result]:
    """`ragtune ARGS` on the package's index, with the tiny Llama as the local generator unless `env` says otherwise."""
    monkeypatch.chdir(tmp_path)  # no .env file from the checkout
    monkeypatch.setattr("ragtune.system.build_embedder", lambda *args, **kwargs: embedder)
    env = {
        "RAGTUNE_DATA_DIR": str(index_settings.data_dir),
        "RAGTUNE_TORCH_THREADS": "1",
        "RAGTUNE_GENERATOR": "local",
        "RAGTUNE_LLM_MODEL": str(tiny_llama),
        "RAGTUNE_LLM_MAX_NEW_TOKENS": "4",
        **{f"RAGTUNE_{name.upper()}": str(value) for name, value in CHUNKING.items()},
    }

    def run(*args: str | Path, env_update: dict[str, str | None] | None = None) -> Result:
        for key, value in (env | (env_update or {})).items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        return run_ragtune(list(args), monkeypatch, capsys)

    return run


def test_trains_an_adapter_and_reports_every_metric_before_and_after(
    ragtune, synth_set, tiny_llama, index_settings, tmp_path, monkeypatch
):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import ragtune.tune.answerer as answerer

    asked: list[tuple[str, bool, int | None]] = []  # (adapter, index, limit) of each evaluation
    evaluate = answerer.evaluate_answers

    def recorded(dataset_dir, settings, limit, **kwargs):
        asked.append((settings.llm.adapter, kwargs["index"], limit))
        return evaluate(dataset_dir, settings, limit, **kwargs)

    monkeypatch.setattr(answerer, "evaluate_answers", recorded)
    out = tmp_path / "run"
    result = ragtune("tune", "answerer", "--questions", synth_set, "--out", out, *TRAINING, "--limit", "3", "--json")
    assert result.code == 0, result.stderr

    report = json.loads(result.stdout)
    adapter = out / "adapter"
    assert report == json.loads((out / "report.json").read_text())
    assert report["kind"] == "answerer" and report["main_metric"] == "f1" and report["model"] == str(adapter.resolve())
    assert set(report["before"]) == set(report["after"]) == set(METRICS)
    # Before: the generator as configured (no adapter); after: the new one; both on the live index, same sample.
    assert asked == [("", True, 3), (str(adapter.resolve()), True, 3)]
    details = report["details"]
    assert details["evaluated_on"] == describe(index_settings)
    split = json.loads((synth_set / "manifest.json").read_text())["splits"]["holdout"]
    assert details["eval"]["n_questions"] == min(3, split["with_answers"]) > 0
    assert details["eval"]["n_unanswerable"] == min(3, split["unanswerable"]) > 0
    assert details["finetune"]["steps"] == 2 and details["finetune"]["config"]["lora_r"] == 4
    assert details["finetune"]["config"]["top_k"] == Settings().retrieval.top_k  # prompts as the generator's
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert any(e["target"] == NOT_FOUND for e in examples)  # the unanswerable rows are trained on

    # The adapter loads with stock PEFT, and training moved it (LoRA's B matrices start at zero).
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any(float(w.abs().sum()) > 0 for name, w in weights.items() if "lora_B" in name)


def test_promote_keeps_the_live_adapter_when_the_gain_is_too_small(ragtune, synth_set, index_settings, tmp_path):
    out = tmp_path / "run"
    # No F1 gain exceeds 1: the decision is certain, and the shared index stays unpromoted.
    args = ["--questions", synth_set, "--out", out, *TRAINING, "--limit", "2", "--promote", "--min-gain", "1"]
    result = ragtune("tune", "answerer", *args)
    assert result.code == 0, result.stderr
    assert "not promoted, the live model stays: f1 did not improve by more than 1.0000" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["promoted"] is False and report["decision"]["promote"] is False
    assert "nothing promoted" in ragtune("tune", "status").stdout


def test_a_run_stopped_after_training_goes_on_with_resume(ragtune, synth_set, tmp_path, monkeypatch):
    import ragtune.tune.answerer as answerer

    evaluate = answerer.evaluate_answers

    def crash_after_training(dataset_dir, settings, limit, **kwargs):
        if settings.llm.adapter:
            raise RuntimeError("the machine went down")
        return evaluate(dataset_dir, settings, limit, **kwargs)

    monkeypatch.setattr(answerer, "evaluate_answers", crash_after_training)
    out = tmp_path / "run"
    args = ["--questions", synth_set, "--out", out, *TRAINING, "--limit", "2"]
    assert ragtune("tune", "answerer", *args).code == 1
    assert (out / "before.json").is_file() and not (out / "report.json").exists()
    again = ragtune("tune", "answerer", *args)
    assert again.code == 2 and "holds a stopped run: pass --resume" in again.stderr

    measured: list[str] = []

    def recorded(dataset_dir, settings, limit, **kwargs):
        measured.append(settings.llm.adapter)
        return evaluate(dataset_dir, settings, limit, **kwargs)

    monkeypatch.setattr(answerer, "evaluate_answers", recorded)
    resumed = ragtune("tune", "answerer", *args, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr
    assert "resumed from" in resumed.stderr  # the trainer's checkpoint at the last step
    report = json.loads(resumed.stdout)
    assert measured == [report["model"]]  # the measurement before was kept, not made again
    kept = json.loads((out / "before.json").read_text())
    assert report["before"]["f1"] == kept["measured"]["f1"] and report["details"]["finetune"]["steps"] == 2
    assert "api_key" not in kept["key"]["llm"] and kept["key"]["index"] == report["details"]["evaluated_on"]
    # A finished run is not a stopped one, and --resume takes no folder of something else.
    for folder in (out, synth_set):
        refused = ragtune("tune", "answerer", "--questions", synth_set, "--out", folder, *TRAINING, "--resume")
        assert refused.code == 2 and "already exists and is not an empty folder" in refused.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--questions", "{missing}"], {}, "no such folder"),
        (["--questions", "{squad}"], {}, "is not a ragtune synth set: it has no manifest.json"),
        (["--questions", "{set}"], {"RAGTUNE_GENERATOR": None}, "needs RAGTUNE_GENERATOR=local (it is extractive)"),
        (["--questions", "{set}", "--out", "{set}"], {}, "already exists and is not an empty folder"),
        (["--questions", "{set}", "--set", "data=x.jsonl"], {}, "fine-tuning key data cannot be set here"),
        (["--questions", "{set}", "--set", "lora_rank=8"], {}, "invalid fine-tuning config: lora_rank"),
        (["--questions", "{set}", "--set", "lora_r"], {}, "--set takes KEY=VALUE"),
        (["--questions", "{set}", "--promote"], {"RAGTUNE_LLM_ADAPTER": ""}, "RAGTUNE_LLM_ADAPTER is set explicitly"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_creates_nothing(ragtune, args, env, message, synth_set, tmp_path):
    places = {"missing": tmp_path / "missing", "squad": SQUAD_MINI, "set": synth_set}
    command = [a.format(**places) for a in args]
    if "--out" not in command:
        command += ["--out", str(tmp_path / "out")]
    result = ragtune("tune", "answerer", *command, env_update=env)
    assert result.code == 2, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "missing").exists()


def test_the_adapter_measured_before_is_the_one_served_now(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    assert live_adapter(settings) == "" and not settings.data_dir.exists()  # no catalog: none made
    settings.data_dir.mkdir()
    catalog = Catalog(settings.resolved_catalog_url(), settings.store.collection)
    Promotions(catalog).record(settings.store.collection, "answerer", "/adapters/promoted", {})
    catalog.close()
    assert live_adapter(settings) == "/adapters/promoted"
    assert live_adapter(Settings(data_dir=tmp_path / "data", llm_adapter="/adapters/mine")) == "/adapters/mine"


def test_the_table_puts_the_main_metric_first_and_counts_fewer_false_abstentions_as_better():
    from ragtune.cli.tune import report_table
    from ragtune.tune.report import TuneReport

    report = TuneReport(
        "answerer",
        "/runs/a/adapter",
        "f1",
        before={"exact_match": 0.0, "f1": 0.10, "false_abstentions": 0.20},
        after={"exact_match": 0.25, "f1": 0.40, "false_abstentions": 0.05},
    )
    header, *rows = report_table(report).splitlines()
    assert header.split() == ["metric", "before", "after", "better", "by"]
    assert [row.split() for row in rows] == [
        ["f1", "0.1000", "0.4000", "+0.3000"],
        ["exact_match", "0.0000", "0.2500", "+0.2500"],
        ["false_abstentions", "0.2000", "0.0500", "+0.1500"],
    ]
