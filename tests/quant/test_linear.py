"""NF4Linear: numerics, gradients, model conversion, save/load, and LoRA training with PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ragtune.quant import dispatch
from ragtune.quant.linear import (
    NF4Linear,
    add_nf4_to_lora_config,
    load_nf4_model,
    replace_linear_with_nf4,
    save_nf4_model,
)
from ragtune.quant.report import fake_quantize

from .conftest import tiny_llama


@pytest.mark.parametrize(
    ("in_features", "out_features", "bias", "blocksize"),
    [(64, 48, True, 64), (128, 51, False, 32), (96, 50, False, 64), (77, 33, True, 32), (5, 3, True, 32)],
)
@pytest.mark.parametrize("tile", [64, 1 << 19])
@pytest.mark.parametrize("rows", [4, 64])  # 12 and 192 input rows: both tile layouts
@pytest.mark.parametrize("kernel", [True, False])
def test_forward_and_input_gradient_match_the_dense_weight(
    monkeypatch: pytest.MonkeyPatch,
    decoder: str,
    in_features: int,
    out_features: int,
    bias: bool,
    blocksize: int,
    tile: int,
    rows: int,
    kernel: bool,
) -> None:
    # kernel: the C decode-and-multiply for every row count where the weight allows it
    # (in_features % blocksize == 0; 51 outputs leave a partial panel and an odd row);
    # else decoded tiles, where tile=64 forces many tiny tiles whose blocks straddle rows
    monkeypatch.setattr(dispatch, "_KERNEL_ROWS_PER_THREAD", 1 << 20 if kernel else 0)
    monkeypatch.setattr(dispatch, "_TILE_ELEMENTS", tile)
    dense = nn.Linear(in_features, out_features, bias=bias)
    layer = NF4Linear.from_linear(dense, blocksize=blocksize)
    w = layer.dequantize()
    x = torch.randn(3, rows, in_features, requires_grad=True)
    y = layer(x)
    ref = nn.functional.linear(x, w, layer.bias)
    assert y.shape == (3, rows, out_features)
    assert y.is_contiguous()  # a strided output sends attention kernels down slow paths
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    (gref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(gx, gref, rtol=1e-5, atol=1e-5)


def test_weights_are_frozen_and_small() -> None:
    layer = NF4Linear.from_linear(nn.Linear(256, 128))
    assert [p.requires_grad for p in layer.parameters()] == [False]  # only the bias, frozen
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.numel() == 256 * 128 // 2
    assert layer.nbytes() < 256 * 128 * 4 / 6  # >6x smaller than fp32
    assert "blocksize=64" in repr(layer)


def test_bf16_compute_dtype_returns_the_input_dtype() -> None:
    dense = nn.Linear(64, 32)
    layer = NF4Linear.from_linear(dense, compute_dtype=torch.bfloat16)
    x = torch.randn(2, 64)
    y = layer(x)
    assert y.dtype == torch.float32
    ref = nn.functional.linear(x, layer.dequantize(), layer.bias)
    torch.testing.assert_close(y, ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("double_quant", [False, True])
def test_casting_the_model_keeps_the_quantization_constants_fp32(double_quant: bool) -> None:
    layer = NF4Linear.from_linear(nn.Linear(64, 32), double_quant=double_quant)
    x = torch.randn(2, 64)
    expected = layer(x)
    layer.to(torch.bfloat16)
    assert layer.bias is not None and layer.bias.dtype == torch.bfloat16
    assert all(t.dtype in (torch.float32, torch.uint8) for t in layer.buffers())
    assert list(dict(layer.named_buffers())) == [
        "qweight",
        "absmax",
        *(["absmax_scale", "absmax_offset"] * double_quant),
    ]
    torch.testing.assert_close(layer(x), expected, rtol=1e-2, atol=1e-2)  # only the bias was rounded


def test_wrong_input_width_is_named() -> None:
    layer = NF4Linear.from_linear(nn.Linear(64, 32))
    with pytest.raises(ValueError, match="last dimension 64; got shape \\(2, 63\\)"):
        layer(torch.randn(2, 63))


def test_replace_converts_a_transformers_model_and_matches_fake_quantized_weights() -> None:
    model = tiny_llama()
    reference = tiny_llama()
    with torch.no_grad():
        for (name, m), (_, r) in zip(model.named_modules(), reference.named_modules()):
            if isinstance(m, nn.Linear) and name != "lm_head":
                r.weight.copy_(fake_quantize(m.weight, "nf4_dq"))
    report = replace_linear_with_nf4(model)
    assert len(report.replaced) == 2 * 7 and set(report.skipped) == {"lm_head"}
    assert report.bytes_after < report.bytes_before / 6 and "saved" in str(report)
    assert isinstance(model.model.layers[0].mlp.down_proj, NF4Linear)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_tied_weights_stay_dense() -> None:
    model = tiny_llama(tie=True)
    report = replace_linear_with_nf4(model, skip=[])
    assert report.skipped == {"lm_head": "weight is tied to another parameter"}
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    model = tiny_llama(tie=True)
    replace_linear_with_nf4(model, blocksize=32)
    save_nf4_model(model, tmp_path / "nf4")
    loaded = load_nf4_model(tmp_path / "nf4").eval()
    layer = loaded.model.layers[1].self_attn.q_proj
    assert isinstance(layer, NF4Linear) and layer.blocksize == 32
    assert torch.equal(layer.qweight, model.model.layers[1].self_attn.q_proj.qweight)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_load_rejects_a_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nf4.json not found"):
        load_nf4_model(tmp_path)


def test_lora_trains_on_top_of_nf4_layers(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model = tiny_llama()
    replace_linear_with_nf4(model)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    config = add_nf4_to_lora_config(
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    lora_model = peft.get_peft_model(model, config)
    wrapped = lora_model.base_model.model.model.layers[0].mlp.down_proj
    assert isinstance(wrapped.get_base_layer(), NF4Linear)
    trainable = {n for n, p in lora_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    torch.manual_seed(0)
    ids = torch.randint(0, 128, (4, 16))
    optimizer = torch.optim.AdamW([p for p in lora_model.parameters() if p.requires_grad], lr=1e-2)
    lora_model.train()
    losses = []
    for _ in range(8):
        loss = lora_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for name, value in lora_model.base_model.model.state_dict().items():
        key = name.replace(".base_layer", "")
        if key in frozen:
            assert torch.equal(value, frozen[key]), f"{name} changed: the NF4 base must stay frozen"

    # the adapter saves in PEFT's format and reloads onto a fresh NF4 base
    lora_model.eval()
    with torch.no_grad():
        expected = lora_model(input_ids=ids).logits
    lora_model.save_pretrained(tmp_path / "adapter")
    base = tiny_llama(seed=1)
    replace_linear_with_nf4(base)
    base.load_state_dict(frozen)
    reloaded_config = add_nf4_to_lora_config(peft.LoraConfig.from_pretrained(tmp_path / "adapter"))
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter", config=reloaded_config).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)
