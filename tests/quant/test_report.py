"""The error report: the four codes, memory, perplexity, Markdown, JSON and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ragtune.quant.perplexity import perplexity, perplexity_by_method
from ragtune.quant.report import (
    METHODS,
    build_report,
    error_stats,
    fake_quantize,
    fp4_levels,
    int4_levels,
    model_memory,
)

from .conftest import tiny_llama

bnbf = pytest.importorskip("bitsandbytes.functional")


def test_fp4_levels_are_bitsandbytes_table() -> None:
    ref = bnbf.get_4bit_type("fp4", device="cpu").unique().sort().values
    assert torch.equal(fp4_levels(), ref)
    assert int4_levels().tolist()[0] == -1.0 and int4_levels().numel() == 15


def test_fake_fp4_equals_bitsandbytes_fp4() -> None:
    w = torch.randn(300, 64) * 0.1
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="fp4")
    assert torch.equal(fake_quantize(w, "fp4", 64), bnbf.dequantize_4bit(packed, state))


def test_int4_is_rounding_to_sevenths_of_absmax() -> None:
    w = torch.tensor([[0.7, -0.35, 0.1, 0.049] + [0.0] * 28])
    out = fake_quantize(w, "int4", 32)
    assert out[0, :4].tolist() == pytest.approx([0.7, -0.4, 0.1, 0.0])


def test_error_stats_on_normal_weights() -> None:
    stats = error_stats(torch.randn(512, 512, generator=torch.Generator().manual_seed(0)) * 0.02, 64)
    assert set(stats) == set(METHODS)
    assert stats["nf4"].mse < stats["int4"].mse and stats["nf4"].mse < stats["fp4"].mse
    assert stats["nf4"].mse <= stats["nf4_dq"].mse < 1.01 * stats["nf4"].mse
    assert all(s.max_abs > 0 for s in stats.values())


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="unknown method 'int3'"):
        fake_quantize(torch.randn(64), "int3")


def test_report_on_a_tiny_llama(tmp_path: Path) -> None:
    model = tiny_llama(tie=True)
    report = build_report(model, "tiny", blocksize=32, synthetic_shapes=((256, 128),))
    assert len(report.layers) == 14 and "lm_head" in report.skipped
    assert report.layers[0].name == "model.layers.0.self_attn.q_proj"
    bits = report.bits()
    assert bits["nf4"] == 5.0 and bits["nf4_dq"] == pytest.approx(4 + 8 / 32 + 32 / (32 * 256))
    md = report.to_markdown()
    assert "| NF4+DQ | 4.254 |" in md and "Per layer (MSE):" in md and "Observed order by MSE" in md
    assert md.count("\n| model.layers.") == 14
    data = json.loads(report.to_json())
    assert data["layers"][0]["errors"]["nf4"]["mse"] == report.layers[0].errors["nf4"].mse
    png = report.plot(tmp_path / "plot" / "errors.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert len(report.rich_tables()) == 3


def test_limit_and_bad_arguments() -> None:
    model = tiny_llama()
    assert len(build_report(model, "tiny", limit=3, synthetic_shapes=()).layers) == 3
    with pytest.raises(ValueError, match="got 0"):
        build_report(model, "tiny", limit=0)
    with pytest.raises(ValueError, match="got 48"):
        build_report(model, "tiny", blocksize=48)


def test_memory_footprint_counts_tied_weights_once() -> None:
    model = tiny_llama(tie=True)
    params = sum(p.numel() for p in model.parameters())
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    mem = model_memory(model, linears, 64)
    assert mem.total_params == params and mem.fp32 == 4 * params and mem.bf16 == 2 * params
    q = sum(m.weight.numel() for m in linears)
    assert mem.quantized_params == q
    assert 2 * (params - q) + q * 4 / 8 < mem.nf4 < 2 * (params - q) + q * 4.2 / 8


def test_perplexity_by_method_restores_the_weights() -> None:
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(0))
    result = perplexity_by_method(model, ids, blocksize=64)
    assert list(result) == ["original", "NF4", "NF4+DQ", "FP4 (E2M1)", "INT4 (symmetric)"]
    assert result["original"] == pytest.approx(perplexity(model, ids))
    assert all(1 < v < 1000 for v in result.values())
    assert len(set(result.values())) > 1  # the codes change the model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
