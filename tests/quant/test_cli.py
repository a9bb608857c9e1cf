"""``ragtune quantize report``: outputs, usage errors (exit 2) and failures (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragtune.quant.cli import quantize_app

runner = CliRunner()


def test_report_on_an_hf_causal_lm_with_perplexity(tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("the immune system protects against disease and detects a wide variety of agents " * 8)
    out = tmp_path / "out"
    result = runner.invoke(
        quantize_app,
        ["report", str(tiny_lm_dir), "--out-dir", str(out), "--blocksize", "32", "--ppl-text", str(text), "--markdown"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"### NF4 vs FP4 vs INT4 on `{tiny_lm_dir.parent.name}/tiny-llama` (block size 32)")
    assert "Perplexity on a fixed text" in result.stdout
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "errors.png"}
    data = json.loads((out / "report.json").read_text())
    assert len(data["layers"]) == 14 and set(data["perplexity"]) >= {"original", "NF4", "INT4 (symmetric)"}


def test_report_on_a_non_causal_model_prints_tables(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    ).save_pretrained(tmp_path / "bert")
    result = runner.invoke(quantize_app, ["report", str(tmp_path / "bert"), "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "NF4+DQ" in result.stdout and "Observed order by MSE" in result.stdout
    ppl = runner.invoke(quantize_app, ["report", str(tmp_path / "bert"), "--ppl-text", __file__])
    assert ppl.exit_code == 2 and "not a causal LM" in ppl.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/model"], "not found"),
        (["smollm2", "--blocksize", "100"], "got 100"),
        ([__file__], "not a .gguf file"),
        (["smollm2", "--ppl-text", "/no/such.txt"], "is not a file"),
        (["smollm2", "--limit", "0"], "Invalid value"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    result = runner.invoke(quantize_app, ["report", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an uncaught error


def test_a_broken_model_exits_1(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    result = runner.invoke(quantize_app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "could not load" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_report_on_smollm2(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # the GGUF conversion (~20-60 s) is kept in pytest's cache directory, so it runs once per
    # checkout; with the cache plugin disabled (-p no:cacheprovider) it converts every time
    store = getattr(request.config, "cache", None)
    cache = store.mkdir("smollm2") if store is not None else tmp_path / "models"
    result = runner.invoke(
        quantize_app, ["report", "smollm2", "--limit", "7", "--cache-dir", str(cache), "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert [row["shape"] for row in data["layers"]][:2] == [[576, 576], [192, 576]]
    assert data["memory"]["total_params"] == 134_515_008
    for row in data["layers"]:  # NF4 beats the other codes on every measured layer
        e = row["errors"]
        assert e["nf4"]["mse"] < min(e["fp4"]["mse"], e["int4"]["mse"])
