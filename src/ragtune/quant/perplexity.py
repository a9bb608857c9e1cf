"""Perplexity of a causal LM with its original weights and with each quantization method's.

The quantizable linear weights are swapped for their fake-quantized values (the exact numbers
an NF4 / FP4 / INT4 layer computes with) and restored afterwards; `ragtune quantize report
--ppl-text` reports the result next to the weight errors of `ragtune.quant.report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ragtune.quant.linear import DEFAULT_SKIP, quantizable_linears
from ragtune.quant.report import LABELS, METHODS, fake_quantize


@torch.no_grad()
def perplexity(model: nn.Module, input_ids: torch.Tensor, window: int = 512) -> float:
    """Perplexity of ``model`` on one token sequence, in consecutive windows of ``window``."""
    ids = input_ids.reshape(-1)
    nll, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start : start + window + 1].unsqueeze(0)
        if chunk.shape[1] < 2:
            break
        logits = model(chunk[:, :-1]).logits.float()
        nll += float(torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


@torch.no_grad()
def perplexity_by_method(
    model: nn.Module,
    input_ids: torch.Tensor,
    blocksize: int = 64,
    skip: Iterable[str] = DEFAULT_SKIP,
    methods: Sequence[str] = METHODS,
) -> dict[str, float]:
    """Perplexity with the original weights, then with each method's weights.

    The quantizable linear weights are replaced by their fake-quantized values (the exact
    numbers an NF4 / FP4 / INT4 layer computes with) and restored afterwards.
    """
    chosen, _ = quantizable_linears(model, skip)
    result = {"original": perplexity(model, input_ids)}
    originals = [m.weight.detach().clone() for _, m in chosen]
    try:
        for method in methods:
            for (_, module), w in zip(chosen, originals):
                module.weight.copy_(fake_quantize(w, method, blocksize).to(w.dtype))
            result[LABELS[method]] = perplexity(model, input_ids)
    finally:
        for (_, module), w in zip(chosen, originals):
            module.weight.copy_(w)
    return result
