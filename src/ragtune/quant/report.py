"""How much error do 4-bit codes add to real weights? NF4 vs NF4+DQ vs FP4 vs INT4.

QLoRA's claim (Dettmers et al. 2023, Table 2: Pile CC perplexity Int4 34.34, FP4 31.07,
NF4+DQ 27.41) is that NF4 beats FP4, which beats INT4, at the same 4 bits and block size.
This module measures the weight error of each code on every linear weight of a model and
on synthetic N(0, sigma) weights, the memory of the model in fp32 / bf16 / NF4, and
optionally the perplexity of a causal LM on a fixed text with each code.

All four codes quantize blocks of ``blocksize`` weights scaled by their absmax and round to
the nearest of 16 (15 distinct for FP4 and INT4) levels; they differ only in the levels:

* NF4: normal quantiles (:data:`ragtune.quant.nf4.NF4_TABLE`); NF4+DQ also 8-bit absmax.
* FP4: bitsandbytes' E2M1 table, magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12.
* INT4: symmetric integers -7..7 / 7.

>>> import torch
>>> from ragtune.quant.report import error_stats
>>> stats = error_stats(torch.randn(512, 512), blocksize=64)
>>> stats["nf4"].mse < stats["int4"].mse  # on normal weights; FP4 comes last here
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragtune.quant.dispatch import dequantize_nf4
from ragtune.quant.linear import DEFAULT_SKIP, quantizable_linears
from ragtune.quant.nf4 import (
    DQ_BLOCKSIZE,
    bits_per_parameter,
    check_blocksize,
    dequantize_codes,
    quantize_codes,
    quantize_nf4,
)

__all__ = [
    "METHODS",
    "ErrorStat",
    "LayerRow",
    "MemoryFootprint",
    "QuantReport",
    "build_report",
    "error_stats",
    "fake_quantize",
    "fp4_levels",
    "int4_levels",
]

METHODS = ("nf4", "nf4_dq", "fp4", "int4")
LABELS = {"nf4": "NF4", "nf4_dq": "NF4+DQ", "fp4": "FP4 (E2M1)", "int4": "INT4 (symmetric)"}
_STYLE = {"nf4": ("C0", "o"), "nf4_dq": ("C1", "."), "fp4": ("C2", "^"), "int4": ("C3", "s")}


def fp4_levels() -> torch.Tensor:
    """bitsandbytes' FP4 levels, sorted: 1 sign, 2 exponent and 1 mantissa bit.

    Exponent e >= 1 gives ``2**e * (1 + m/2)``: 2, 3, 4, 6, 8, 12; e = 0 is bitsandbytes'
    subnormal pair 0 and 0.0625; everything is divided by 12 to span [-1, 1].
    """
    magnitudes = [0.0, 0.0625] + [2.0**e * (1 + m / 2) for e in (1, 2, 3) for m in (0, 1)]
    values = sorted({s * v / 12 for v in magnitudes for s in (1.0, -1.0)})
    return torch.tensor(values, dtype=torch.float32)


def int4_levels() -> torch.Tensor:
    """Symmetric INT4: the integers -7..7 divided by 7 (absmax maps to +-7 exactly)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def fake_quantize(w: torch.Tensor, method: str, blocksize: int = 64) -> torch.Tensor:
    """Quantize and dequantize ``w`` with one of :data:`METHODS`; fp32, same shape."""
    if method in ("nf4", "nf4_dq"):
        packed, state = quantize_nf4(w, blocksize, double_quant=method == "nf4_dq")
        return dequantize_nf4(packed, state, torch.float32)
    levels = {"fp4": fp4_levels, "int4": int4_levels}.get(method)
    if levels is None:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    table = levels()
    codes, absmax = quantize_codes(w, table, blocksize)
    return dequantize_codes(codes, absmax, table, blocksize).view(w.shape)


@dataclass(frozen=True)
class ErrorStat:
    """Mean squared error and largest absolute error of one code on one tensor."""

    mse: float
    max_abs: float


def error_stats(w: torch.Tensor, blocksize: int = 64) -> dict[str, ErrorStat]:
    """Error of every method on ``w`` (compared with ``w`` in fp32)."""
    check_blocksize(blocksize)
    ref = w.detach().float()
    out = {}
    for method in METHODS:
        diff = fake_quantize(ref, method, blocksize) - ref
        out[method] = ErrorStat(mse=float(diff.double().square().mean()), max_abs=float(diff.abs().max()))
    return out


@dataclass
class LayerRow:
    """One weight tensor and the error of each method on it."""

    name: str
    shape: tuple[int, ...]
    std: float
    errors: dict[str, ErrorStat]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def ordering_holds(self) -> bool:
        """NF4 < FP4 < INT4 in mean squared error."""
        e = self.errors
        return e["nf4"].mse < e["fp4"].mse < e["int4"].mse


@dataclass
class MemoryFootprint:
    """Bytes of all (unique) parameters: dense fp32, dense bf16, and the QLoRA layout
    (quantized linear weights in NF4+DQ, everything else in bf16)."""

    fp32: int
    bf16: int
    nf4: int
    quantized_params: int
    total_params: int


@dataclass
class QuantReport:
    """The full comparison for one model. ``to_markdown``, ``rich_tables``, ``plot``."""

    source: str
    blocksize: int
    layers: list[LayerRow]
    synthetic: list[LayerRow]
    memory: MemoryFootprint | None = None
    perplexity: dict[str, float] | None = None
    perplexity_tokens: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def bits(self) -> dict[str, float]:
        plain = bits_per_parameter(self.blocksize, double_quant=False)
        return {
            "nf4": plain,
            "nf4_dq": bits_per_parameter(self.blocksize, double_quant=True),
            "fp4": plain,
            "int4": plain,
        }

    def overall_mse(self, method: str, rows: Sequence[LayerRow] | None = None) -> float:
        """MSE over all weights of ``rows`` together (layers weighted by size)."""
        rows = self.layers if rows is None else rows
        total = sum(r.numel for r in rows)
        return sum(r.errors[method].mse * r.numel for r in rows) / total if total else math.nan

    def ordering_count(self) -> int:
        return sum(r.ordering_holds() for r in self.layers)

    def claim_holds(self) -> bool:
        """NF4 < FP4 < INT4 in MSE over all the model's linear weights."""
        m = {k: self.overall_mse(k) for k in ("nf4", "fp4", "int4")}
        return m["nf4"] < m["fp4"] < m["int4"]

    def summary_rows(self) -> list[list[str]]:
        """Method, bits/param, overall MSE, ratio to NF4, worst max error, layers where best."""
        bits = self.bits()
        nf4 = self.overall_mse("nf4")
        rows = []
        for method in METHODS:
            mse = self.overall_mse(method)
            best = sum(
                1 for r in self.layers if r.errors[method].mse <= min(r.errors[m].mse for m in ("nf4", "fp4", "int4"))
            )
            worst = max((r.errors[method].max_abs for r in self.layers), default=math.nan)
            rows.append(
                [
                    LABELS[method],
                    f"{bits[method]:.3f}",
                    f"{mse:.3e}",
                    f"{mse / nf4:.3f}",
                    f"{worst:.3e}",
                    "-" if method == "nf4_dq" else f"{best}/{len(self.layers)}",
                ]
            )
        return rows

    def observed_order(self, rows: Sequence[LayerRow] | None = None) -> str:
        """The codes ranked by MSE over ``rows`` (default: all linear weights)."""
        mse = {m: self.overall_mse(m, rows) for m in ("nf4", "fp4", "int4")}
        return " < ".join(f"{LABELS[m]} ({mse[m]:.3e})" for m in sorted(mse, key=mse.__getitem__))

    def verdict(self) -> str:
        n = len(self.layers)
        if not n:
            return "No linear weights were measured."
        holds = "holds" if self.claim_holds() else "does NOT hold"
        nf4_best = sum(r.errors["nf4"].mse < min(r.errors["fp4"].mse, r.errors["int4"].mse) for r in self.layers)
        return (
            f"Observed order by MSE over all {n} linear weights: {self.observed_order()}. "
            f"QLoRA's order NF4 < FP4 < INT4 {holds} on these weights; it holds layer by layer "
            f"in {self.ordering_count()} of {n} layers, and NF4 has the lowest error in {nf4_best} of {n}."
        )

    def to_markdown(self, per_layer: bool = True) -> str:
        """The report as Markdown (summary, memory, synthetic, perplexity, per-layer)."""
        lines = [
            f"### NF4 vs FP4 vs INT4 on `{self.source}` (block size {self.blocksize})",
            "",
            f"{len(self.layers)} linear weights, {sum(r.numel for r in self.layers):,} parameters"
            + (f"; kept dense: {', '.join(sorted(self.skipped))}" if self.skipped else "")
            + ".",
            "",
            _md_table(
                ["code", "bits/param", "MSE (all weights)", "MSE / NF4", "max abs error", "lowest MSE in"],
                self.summary_rows(),
            ),
            "",
            self.verdict(),
        ]
        if self.memory is not None:
            m = self.memory
            lines += [
                "",
                f"Model memory ({m.total_params:,} parameters, {m.quantized_params:,} in quantized layers; "
                "NF4 = quantized layers in NF4+DQ, the rest in bf16):",
                "",
                _md_table(
                    ["fp32", "bf16", "NF4"],
                    [[_mib(m.fp32), _mib(m.bf16), _mib(m.nf4)]],
                ),
            ]
        if self.synthetic:
            lines += ["", "Synthetic weights (same block size):", ""]
            lines.append(
                _md_table(
                    ["weights", *(f"{LABELS[m]} MSE" for m in METHODS), "NF4 < FP4 < INT4"],
                    [
                        [r.name, *(f"{r.errors[m].mse:.3e}" for m in METHODS), "yes" if r.ordering_holds() else "no"]
                        for r in self.synthetic
                    ],
                )
            )
        if self.perplexity:
            lines += [
                "",
                f"Perplexity on a fixed text ({self.perplexity_tokens} tokens), linear weights replaced by each code:",
                "",
                _md_table(list(self.perplexity), [[f"{v:.3f}" for v in self.perplexity.values()]]),
            ]
        if per_layer and self.layers:
            lines += ["", "Per layer (MSE):", ""]
            lines.append(
                _md_table(
                    ["layer", "shape", "std", *(LABELS[m] for m in METHODS), "NF4<FP4<INT4"],
                    [
                        [
                            r.name,
                            "x".join(map(str, r.shape)),
                            f"{r.std:.3e}",
                            *(f"{r.errors[m].mse:.3e}" for m in METHODS),
                            "yes" if r.ordering_holds() else "no",
                        ]
                        for r in self.layers
                    ],
                )
            )
        return "\n".join(lines) + "\n"

    def rich_tables(self) -> list[Any]:
        """Summary (and synthetic, perplexity) as ``rich`` tables for the terminal."""
        from rich.table import Table

        summary = Table(title=f"{self.source}: {len(self.layers)} linear weights, block size {self.blocksize}")
        for col in ("code", "bits/param", "MSE (all weights)", "MSE / NF4", "max abs error", "lowest MSE in"):
            summary.add_column(col, justify="left" if col == "code" else "right")
        for row in self.summary_rows():
            summary.add_row(*row)
        tables: list[Any] = [summary]
        if self.synthetic:
            syn = Table(title="synthetic weights")
            syn.add_column("weights")
            for m in METHODS:
                syn.add_column(f"{LABELS[m]} MSE", justify="right")
            for r in self.synthetic:
                syn.add_row(r.name, *(f"{r.errors[m].mse:.3e}" for m in METHODS))
            tables.append(syn)
        if self.memory is not None:
            mem = Table(title="model memory")
            for col in ("fp32", "bf16", "NF4 (+bf16 rest)"):
                mem.add_column(col, justify="right")
            mem.add_row(_mib(self.memory.fp32), _mib(self.memory.bf16), _mib(self.memory.nf4))
            tables.append(mem)
        if self.perplexity:
            ppl = Table(title=f"perplexity ({self.perplexity_tokens} tokens)")
            for k in self.perplexity:
                ppl.add_column(k, justify="right")
            ppl.add_row(*(f"{v:.3f}" for v in self.perplexity.values()))
            tables.append(ppl)
        return tables

    def plot(self, path: str | Path) -> Path:
        """PNG: MSE per layer for each code (log scale) and each code's MSE relative to NF4."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=[3, 2])
        xs = range(len(self.layers))
        for method in METHODS:
            color, marker = _STYLE[method]
            mse = [r.errors[method].mse for r in self.layers]
            top.plot(xs, mse, marker, color=color, ms=3, label=LABELS[method])
        top.set_yscale("log")
        top.set_ylabel("weight MSE")
        top.set_title(f"{self.source}: quantization error per linear layer (block size {self.blocksize})")
        top.legend()
        for method in ("nf4_dq", "fp4", "int4"):
            color, marker = _STYLE[method]
            ratios = [r.errors[method].mse / r.errors["nf4"].mse for r in self.layers]
            bottom.plot(xs, ratios, marker, color=color, ms=3, label=f"{LABELS[method]} / NF4")
        bottom.axhline(1.0, color="grey", lw=0.8)
        bottom.set_ylabel("MSE relative to NF4")
        bottom.set_xlabel("linear layer (model order)")
        bottom.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def nf4_nbytes(numel: int, blocksize: int = 64) -> int:
    """Exact bytes of one NF4+DQ tensor: codes, 8-bit absmax, fp32 scales and offset."""
    nblocks = -(-numel // blocksize)
    return -(-numel // 2) + nblocks + 4 * -(-nblocks // DQ_BLOCKSIZE) + 4


def model_memory(model: nn.Module, quantized: Iterable[nn.Linear], blocksize: int = 64) -> MemoryFootprint:
    """Memory of ``model`` in fp32, bf16 and NF4 (the ``quantized`` weights in NF4+DQ)."""
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    q_ids = {id(m.weight) for m in quantized}
    q_numel = sum(params[i].numel() for i in q_ids if i in params)
    nf4 = sum(nf4_nbytes(params[i].numel(), blocksize) for i in q_ids if i in params)
    return MemoryFootprint(
        fp32=4 * total,
        bf16=2 * total,
        nf4=nf4 + 2 * (total - q_numel),
        quantized_params=q_numel,
        total_params=total,
    )


def synthetic_rows(
    shapes: Sequence[tuple[int, int]] = ((1024, 1024),),
    sigma: float = 0.02,
    blocksize: int = 64,
    seed: int = 0,
) -> list[LayerRow]:
    """Error rows for N(0, sigma) weights, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        w = torch.randn(shape, generator=gen) * sigma
        rows.append(LayerRow(f"N(0, {sigma}) {shape[0]}x{shape[1]}", tuple(shape), sigma, error_stats(w, blocksize)))
    return rows


def build_report(
    model: nn.Module,
    source: str,
    blocksize: int = 64,
    skip: Iterable[str] = DEFAULT_SKIP,
    limit: int | None = None,
    synthetic_shapes: Sequence[tuple[int, int]] = ((1024, 1024),),
) -> QuantReport:
    """Measure every quantizable linear weight of ``model`` (the first ``limit`` if given).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    >>> report = build_report(net, "toy", synthetic_shapes=())
    >>> [row.name for row in report.layers], report.memory.total_params
    (['0', '1'], 8320)
    """
    check_blocksize(blocksize)
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of layers; got {limit}")
    chosen, skipped = quantizable_linears(model, skip)
    rows = []
    for name, module in chosen[:limit]:
        w = module.weight.detach()
        rows.append(LayerRow(name, tuple(w.shape), float(w.float().std()), error_stats(w, blocksize)))
    return QuantReport(
        source=source,
        blocksize=blocksize,
        layers=rows,
        synthetic=synthetic_rows(synthetic_shapes, blocksize=blocksize),
        memory=model_memory(model, [m for _, m in chosen], blocksize),
        skipped=skipped,
    )
