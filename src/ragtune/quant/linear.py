"""NF4Linear: a frozen linear layer stored in NF4, and whole-model conversion, save and load.

Which kernel decodes and multiplies the weight is :mod:`ragtune.quant.dispatch`'s choice.

>>> import torch
>>> from ragtune.quant.linear import NF4Linear
>>> dense = torch.nn.Linear(128, 64)
>>> layer = NF4Linear.from_linear(dense)
>>> x = torch.randn(2, 128, requires_grad=True)
>>> layer(x).shape, layer.qweight.dtype, layer.qweight.numel()
(torch.Size([2, 64]), torch.uint8, 4096)
>>> layer(x).sum().backward()  # gradients reach the input, so LoRA can train on top
>>> x.grad.shape
torch.Size([2, 128])
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragtune.quant.dispatch import dequantize_nf4, linear_forward, linear_input_grad
from ragtune.quant.nf4 import DQ_BLOCKSIZE, NF4QuantState, check_blocksize, quantize_nf4

__all__ = [
    "NF4Linear",
    "ReplaceReport",
    "add_nf4_to_lora_config",
    "load_nf4_model",
    "quantizable_linears",
    "replace_linear_with_nf4",
    "save_nf4_model",
]

DEFAULT_SKIP = ("lm_head",)
MANIFEST = "nf4.json"
WEIGHTS = "model.safetensors"

_FP32_CONSTANTS = ("absmax", "absmax_scale", "absmax_offset")


class NF4Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` frozen in NF4 (blockwise, optionally double-quantized).

    Buffers: ``qweight`` (packed codes, two per byte, bitsandbytes layout), ``absmax``
    (and with double quantization ``absmax_scale``, ``absmax_offset``). ``bias`` is a
    frozen parameter. The forward pass computes in ``compute_dtype``: by default float32 on
    CPU (bf16 matmuls are very slow on CPUs without AMX) and bfloat16 on GPU; the output is
    cast back to the input's dtype. Gradients flow to the input, never to the weight.

    >>> import torch
    >>> layer = NF4Linear.from_linear(torch.nn.Linear(64, 32, bias=False), blocksize=32)
    >>> w = layer.dequantize()
    >>> w.shape, w.dtype
    (torch.Size([32, 64]), torch.float32)
    """

    qweight: torch.Tensor
    absmax: torch.Tensor
    absmax_scale: torch.Tensor | None
    absmax_offset: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
        weight_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive; got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.blocksize = check_blocksize(blocksize)
        self.double_quant = double_quant
        self.compute_dtype = compute_dtype
        self.weight_dtype = weight_dtype
        n = in_features * out_features
        nblocks = -(-n // blocksize)
        self.register_buffer("qweight", torch.zeros(-(-n // 2), dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax", torch.zeros(nblocks, dtype=torch.uint8, device=device))
            nscales = -(-nblocks // DQ_BLOCKSIZE)
            self.register_buffer("absmax_scale", torch.zeros(nscales, dtype=torch.float32, device=device))
            self.register_buffer("absmax_offset", torch.zeros((), dtype=torch.float32, device=device))
        else:
            self.register_buffer("absmax", torch.zeros(nblocks, dtype=torch.float32, device=device))
            self.register_buffer("absmax_scale", None)
            self.register_buffer("absmax_offset", None)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
    ) -> NF4Linear:
        """Quantize a dense ``nn.Linear`` (its weight is read, not modified)."""
        w = linear.weight.detach()
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            blocksize=blocksize,
            double_quant=double_quant,
            compute_dtype=compute_dtype,
            weight_dtype=w.dtype,
            device=w.device,
        )
        packed, state = quantize_nf4(w, blocksize, double_quant)
        layer.qweight.copy_(packed)
        layer.absmax.copy_(state.absmax)
        if double_quant:
            assert layer.absmax_scale is not None and layer.absmax_offset is not None
            assert state.absmax_scale is not None and state.absmax_offset is not None
            layer.absmax_scale.copy_(state.absmax_scale)
            layer.absmax_offset.copy_(state.absmax_offset)
        if linear.bias is not None:
            assert layer.bias is not None
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def _apply(self, fn: Any, recurse: bool = True) -> NF4Linear:
        # model.to(torch.bfloat16) casts every floating buffer, but the absmax constants
        # must stay fp32 (as in bitsandbytes): keep the originals, follow only the device.
        constants = {n: t for n in _FP32_CONSTANTS if (t := self._buffers.get(n)) is not None and t.is_floating_point()}
        super()._apply(fn, recurse)
        for name, original in constants.items():
            moved = self._buffers[name]
            if moved is not None and moved.dtype != original.dtype:
                self._buffers[name] = original.to(moved.device)
        return self

    @property
    def quant_state(self) -> NF4QuantState:
        """The codec's view of this layer's buffers (no copies)."""
        return NF4QuantState(
            (self.out_features, self.in_features),
            self.weight_dtype,
            self.blocksize,
            self.absmax,
            self.absmax_scale,
            self.absmax_offset,
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight, ``(out_features, in_features)``."""
        return dequantize_nf4(self.qweight, self.quant_state, dtype)

    def nbytes(self) -> int:
        """Bytes held by the quantized weight, its constants and the bias."""
        return sum(t.numel() * t.element_size() for t in (*self.buffers(), *self.parameters()))

    def resolved_compute_dtype(self, device: torch.device) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        return torch.float32 if device.type == "cpu" else torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"NF4Linear expects inputs with last dimension {self.in_features}; got shape {tuple(x.shape)}"
            )
        dtype = self.resolved_compute_dtype(x.device)
        x2d = x.reshape(-1, self.in_features).to(dtype)
        y = _NF4Matmul.apply(x2d, self)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, blocksize={self.blocksize}, "
            f"double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )

    def spec(self) -> dict[str, Any]:
        """Constructor arguments, for the save manifest."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "blocksize": self.blocksize,
            "double_quant": self.double_quant,
            "weight_dtype": str(self.weight_dtype).removeprefix("torch."),
        }


class _NF4Matmul(torch.autograd.Function):
    """``x @ W.T`` and its input gradient, decoding W on the fly (W is never saved)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return linear_forward(x, layer.qweight, layer.quant_state)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        layer: NF4Linear = ctx.layer
        return linear_input_grad(grad, layer.qweight, layer.quant_state), None


@dataclass
class ReplaceReport:
    """What :func:`replace_linear_with_nf4` (or `ragtune.quant.int8`) changed, and the memory it saved."""

    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    format: str = "NF4"

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        mib = 1 << 20
        return (
            f"{self.format}: replaced {len(self.replaced)} linear layers, skipped {len(self.skipped)}; "
            f"their weights {self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB "
            f"(saved {self.bytes_saved / mib:.1f} MiB)"
        )


def _skipped(name: str, skip: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(name == s or parts[-1] == s or name.startswith(s + ".") for s in skip)


def quantizable_linears(
    model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP
) -> tuple[list[tuple[str, nn.Linear]], dict[str, str]]:
    """The ``nn.Linear`` layers to quantize, and the skipped ones with the reason.

    ``skip`` names modules to keep dense: a full name (``model.layers.0.mlp``, which skips
    everything below it) or a last component (``lm_head``). Linear layers whose weight is
    shared with another parameter (tied embeddings) stay dense too: quantizing one copy
    would untie them and save nothing.
    """
    skip = list(skip)
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    chosen: list[tuple[str, nn.Linear]] = []
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if _skipped(name, skip):
            skipped[name] = "in skip list"
        elif owners.get(id(module.weight), 0) > 1:
            skipped[name] = "weight is tied to another parameter"
        else:
            chosen.append((name, module))
    return chosen, skipped


def replace_linear_with_nf4(
    model: nn.Module,
    skip: Iterable[str] = DEFAULT_SKIP,
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> ReplaceReport:
    """Replace the ``nn.Linear`` layers of ``model`` in place by :class:`NF4Linear`.

    Which layers: see :func:`quantizable_linears` (``lm_head`` and tied weights stay dense
    by default, as in QLoRA).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    >>> report = replace_linear_with_nf4(net, skip=["2"])
    >>> report.replaced, list(report.skipped), type(net[0]).__name__
    (['0'], ['2'], 'NF4Linear')
    """
    check_blocksize(blocksize)
    chosen, skipped = quantizable_linears(model, skip)
    report = ReplaceReport(skipped=skipped)
    for name, module in chosen:
        new = NF4Linear.from_linear(module, blocksize, double_quant, compute_dtype)
        report.bytes_before += sum(p.numel() * p.element_size() for p in module.parameters())
        report.bytes_after += new.nbytes()
        model.set_submodule(name, new)
        report.replaced.append(name)
    return report


def add_nf4_to_lora_config(config: Any) -> Any:
    """Teach a ``peft.LoraConfig`` to put LoRA adapters on :class:`NF4Linear` layers.

    PEFT wraps unknown layer types only through its custom-module registry; its generic
    ``lora.Linear`` calls the base layer and adds ``B(A(x))``, which is all QLoRA needs.
    The registry is not saved with the adapter: call this again before ``PeftModel``
    loads an adapter onto an NF4 model. Merging an adapter into NF4 weights is not
    supported (it would need a lossy re-quantization).

    >>> from peft import LoraConfig
    >>> cfg = add_nf4_to_lora_config(LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    >>> NF4Linear in cfg._custom_modules
    True
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    config._register_custom_module({NF4Linear: LoraLinear})
    return config


def save_nf4_model(model: nn.Module, directory: str | Path) -> Path:
    """Save a model converted by :func:`replace_linear_with_nf4` (config, weights, manifest).

    Writes ``config.json`` (for transformers models), ``model.safetensors`` (NF4 codes and
    constants, other weights as they are; tied weights once) and ``nf4.json``.
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    modules = {n: m.spec() for n, m in model.named_modules() if isinstance(m, NF4Linear)}
    if not modules:
        raise ValueError("the model has no NF4Linear layers; call replace_linear_with_nf4 first")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(directory)
    save_model(model, str(directory / WEIGHTS))
    (directory / MANIFEST).write_text(json.dumps({"format": "ragtune-nf4", "version": 1, "modules": modules}, indent=2))
    return directory


def load_nf4_model(directory: str | Path, model_class: Any = None) -> nn.Module:
    """Load what :func:`save_nf4_model` wrote, without ever materialising the dense weights.

    ``model_class`` defaults to ``transformers.AutoModelForCausalLM``; the model is built
    from ``config.json``, its NF4 layers are swapped in, then every tensor is loaded.
    """
    from safetensors.torch import load_model

    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: {directory} is not an NF4 model saved by save_nf4_model")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != "ragtune-nf4":
        raise ValueError(f"{manifest_path} is not a ragtune NF4 manifest")
    if model_class is None:
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    else:
        model = model_class.from_config(model_class.config_class.from_pretrained(directory))
    for name, spec in manifest["modules"].items():
        spec = dict(spec)
        spec["weight_dtype"] = getattr(torch, spec["weight_dtype"])
        model.set_submodule(name, NF4Linear(**spec))
    missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model
