"""NF4 (QLoRA's 4-bit NormalFloat): the codec, a frozen NF4 linear layer, an error report.

Modules, each importing only those listed before it:

* :mod:`~ragtune.quant.nf4`: the format (tables, state, blocksize) and its PyTorch codec;
* :mod:`~ragtune.quant.kernels`: the C decode for the CPU and the Triton decode for CUDA;
* :mod:`~ragtune.quant.dispatch`: which of them decodes and multiplies, per device;
* :mod:`~ragtune.quant.linear`: :class:`NF4Linear`, model conversion, save and load;
* :mod:`~ragtune.quant.report` and :mod:`~ragtune.quant.cli`: the error report and its command.

>>> import torch
>>> from ragtune.quant import quantize_nf4, dequantize_nf4, NF4Linear
>>> packed, state = quantize_nf4(torch.randn(64, 64))
>>> dequantize_nf4(packed, state).shape
torch.Size([64, 64])
"""

from ragtune.quant.dispatch import dequantize_nf4
from ragtune.quant.linear import (
    NF4Linear,
    ReplaceReport,
    add_nf4_to_lora_config,
    load_nf4_model,
    replace_linear_with_nf4,
    save_nf4_model,
)
from ragtune.quant.nf4 import NF4_TABLE, NF4QuantState, bits_per_parameter, quantize_nf4

__all__ = [
    "NF4_TABLE",
    "NF4Linear",
    "NF4QuantState",
    "ReplaceReport",
    "add_nf4_to_lora_config",
    "bits_per_parameter",
    "dequantize_nf4",
    "load_nf4_model",
    "quantize_nf4",
    "replace_linear_with_nf4",
    "save_nf4_model",
]
