"""NF4 on a CUDA GPU: ragtune (eager and torch.compile/Triton) vs bitsandbytes, in one run.

Self-contained: run it from the repository root on a machine with a CUDA GPU, a CUDA
build of torch, triton and bitsandbytes; it imports ragtune from ./src if it is not
installed, checks correctness first, then times (CUDA events, median of --repeats):

* dequantize a 4096x4096 NF4 weight to bf16: ragtune eager, ragtune fused (torch.compile),
  bitsandbytes ``dequantize_4bit``; with and without double quantization;
* forward of a 16x4096 bf16 input: ragtune ``NF4Linear`` (bf16 compute), bitsandbytes
  ``Linear4bit`` (bf16 compute), dense bf16 ``F.linear``.

    python bench/nf4_gpu.py --out bench/results/nf4_gpu.json

The results (JSON, plus a Markdown table on stdout) are written to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cuda_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median GPU time of ``fn`` in milliseconds (CUDA events, after warm-up)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "nf4_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (bench/nf4_cpu.py is the CPU one)")
    try:
        import ragtune  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from ragtune.quant.linear import NF4Linear
    from ragtune.quant.nf4 import compiled_dequantizer, dequantize_nf4, quantize_nf4

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(4096, 4096, device=dev, generator=gen) * 0.02
    x = torch.randn(16, 4096, device=dev, generator=gen, dtype=torch.bfloat16)
    fused = compiled_dequantizer()
    r = args.repeats
    ms: dict[str, float] = {}
    checks: dict[str, object] = {}

    for dq in (False, True):
        tag = "NF4+DQ" if dq else "NF4"
        packed, state = quantize_nf4(w, 64, double_quant=dq)
        bp, bs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
        absmax = state.block_absmax()
        eager = dequantize_nf4(packed, state, torch.bfloat16)
        compiled = fused(packed, absmax, 64, state.shape, torch.bfloat16)
        theirs = bnbf.dequantize_4bit(bp, bs).to(torch.bfloat16)
        checks[f"{tag}: packed codes equal bitsandbytes"] = bool(torch.equal(packed, bp.flatten()))
        checks[f"{tag}: fused == eager"] = bool(torch.equal(compiled, eager))
        checks[f"{tag}: max |ragtune - bitsandbytes|"] = float((eager.float() - theirs.float()).abs().max())
        ms[f"dequantize {tag} ragtune eager"] = cuda_ms(lambda: dequantize_nf4(packed, state, torch.bfloat16), r)
        ms[f"dequantize {tag} ragtune torch.compile"] = cuda_ms(
            lambda: fused(packed, state.block_absmax(), 64, state.shape, torch.bfloat16), r
        )
        ms[f"dequantize {tag} bitsandbytes"] = cuda_ms(lambda: bnbf.dequantize_4bit(bp, bs), r)

    dense = torch.nn.Linear(4096, 4096, bias=False, device=dev)
    dense.weight.data.copy_(w)
    ours = NF4Linear.from_linear(dense, 64, double_quant=True, compute_dtype=torch.bfloat16)
    lin4 = bnb.nn.Linear4bit(4096, 4096, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
    lin4.weight = bnb.nn.Params4bit(w.detach().cpu().clone(), requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64)
    lin4 = lin4.to(dev)
    w_bf16 = w.to(torch.bfloat16)
    with torch.no_grad():
        checks["forward: max |NF4Linear - Linear4bit|"] = float((ours(x).float() - lin4(x).float()).abs().max())
        ms["forward dense bf16 F.linear"] = cuda_ms(lambda: torch.nn.functional.linear(x, w_bf16), r)
        ms["forward ragtune NF4Linear (NF4+DQ, bf16)"] = cuda_ms(lambda: ours(x), r)
        ms["forward bitsandbytes Linear4bit (NF4+DQ, bf16)"] = cuda_ms(lambda: lin4(x), r)

    ratios = {
        "dequantize NF4: ragtune compile / bitsandbytes": ms["dequantize NF4 ragtune torch.compile"] / ms["dequantize NF4 bitsandbytes"],
        "dequantize NF4+DQ: ragtune compile / bitsandbytes": ms["dequantize NF4+DQ ragtune torch.compile"]
        / ms["dequantize NF4+DQ bitsandbytes"],
        "forward: NF4Linear / Linear4bit": ms["forward ragtune NF4Linear (NF4+DQ, bf16)"] / ms["forward bitsandbytes Linear4bit (NF4+DQ, bf16)"],
        "forward: NF4Linear / dense bf16": ms["forward ragtune NF4Linear (NF4+DQ, bf16)"] / ms["forward dense bf16 F.linear"],
    }
    machine = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bitsandbytes": bnb.__version__,
    }
    print(f"machine: {json.dumps(machine)}")
    print("checks:", json.dumps(checks, indent=1))
    print("\n| operation (4096x4096 weight, 16x4096 bf16 input) | ms (median) |\n|---|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} |")
    print("\n| ratio (same run) | value |\n|---|---:|")
    for name, value in ratios.items():
        print(f"| {name} | {value:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "checks": checks, "ms": ms, "ratios": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
