"""INT8 weight-only inference through torchao (``RAGTUNE_LLM_QUANT=int8``).

Each chosen ``nn.Linear`` keeps its module but its weight becomes torchao's ``Int8Tensor``:
int8 values with one scale per output row, multiplied in the compute dtype. torchao is the
engine here, not ragtune: its int8 weight-only path runs on CPU and CUDA alike, which
DeepSpeed-Inference's INT8 (CUDA kernel injection only) does not. The layers chosen are the
ones NF4 would quantize (`quantizable_linears`: ``lm_head`` and tied weights stay dense).

torchao is the optional ``int8`` extra: installed, transformers imports it with every model
class, so a plain install leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ragtune.quant.linear import DEFAULT_SKIP, ReplaceReport, quantizable_linears


def storage_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding `tensor`'s data (a torchao weight: its int8 values and scales)."""
    inner = getattr(tensor, "tensor_data_names", None)
    return [leaf for name in inner for leaf in storage_tensors(getattr(tensor, name))] if inner else [tensor]


def weight_bytes(weight: torch.Tensor) -> int:
    """Bytes a weight holds, including a torchao tensor's int8 data and scales."""
    return sum(leaf.numel() * leaf.element_size() for leaf in storage_tensors(weight))


def quantize_linear_int8(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> ReplaceReport:
    """Give the linear layers of ``model`` int8 weights in place (torchao ``Int8WeightOnlyConfig``).

    Quantize after any LoRA adapter is merged: the int8 weights are then the tuned ones.
    """
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ImportError(
            "RAGTUNE_LLM_QUANT=int8 needs torchao: pip install 'ragtune[int8]' (or RAGTUNE_LLM_QUANT=nf4|none)"
        ) from error
    chosen, skipped = quantizable_linears(model, skip)
    names = {name for name, _ in chosen}
    report = ReplaceReport(skipped=skipped, format="INT8")
    report.bytes_before = sum(weight_bytes(module.weight) for _, module in chosen)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, name: name in names)
    report.replaced = sorted(names)
    report.bytes_after = sum(weight_bytes(module.weight) for _, module in chosen)  # the same modules, new weights
    return report
