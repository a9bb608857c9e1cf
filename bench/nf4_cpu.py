"""NF4 on CPU: ragtune vs bitsandbytes vs torchao, and the dense fp32 GEMM, in one run.

Measures, for one 4096x4096 weight (N(0, 0.02)) and a 16x4096 fp32 input:
quantize time, dequantize time (NF4 and NF4 + double quantization) and the linear forward
(ragtune NF4Linear, bitsandbytes Linear4bit, torchao linear_nf4, dense F.linear).
Every figure is the median of ``--repeats`` timed calls after two warm-up calls; ratios
are taken between numbers of this same run.

    .venv/bin/python bench/nf4_cpu.py --threads 2 --out bench/results/nf4_cpu.json

On CPU ragtune decodes with its C kernel when a C compiler is present (the
``ragtune_cpu_decode`` field says which path ran); ``RAGTUNE_NF4_NATIVE=0`` measures the
eager PyTorch decode instead.

torchao is optional (``pip install torchao==0.18.0``; it must match the torch version).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process) so far, to spot noisy neighbours."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(v) for v in fields]
    machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    own = os.times()
    return machine, own.user + own.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from ragtune.quant.dispatch import Backend, decode_backend, dequantize_nf4
    from ragtune.quant.linear import NF4Linear
    from ragtune.quant.nf4 import quantize_nf4

    try:
        import torchao
        from torchao.quantization import to_nf4
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

        torchao_version: str | None = torchao.__version__
    except ImportError:
        torchao_version = None

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 4096, generator=gen) * 0.02
    x = torch.randn(16, 4096, generator=gen)
    dense = torch.nn.Linear(4096, 4096, bias=False)
    dense.weight.data.copy_(w)
    r = args.repeats
    ms: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    busy_before, own_before, wall_before = *busy_seconds(), time.perf_counter()

    # quantize
    ms["quantize ragtune NF4"] = timed(lambda: quantize_nf4(w, 64, double_quant=False), max(3, r // 3))
    ms["quantize ragtune NF4+DQ"] = timed(lambda: quantize_nf4(w, 64, double_quant=True), max(3, r // 3))
    ms["quantize bitsandbytes NF4"] = timed(
        lambda: bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4"), max(3, r // 3)
    )
    ms["quantize bitsandbytes NF4+DQ"] = timed(
        lambda: bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True), max(3, r // 3)
    )
    if torchao_version:
        ms["quantize torchao to_nf4"] = timed(lambda: to_nf4(w), max(3, r // 3))

    # dequantize (each call returns a fresh 64 MiB fp32 tensor, as in bitsandbytes)
    packed, state = quantize_nf4(w, 64, double_quant=False)
    packed_dq, state_dq = quantize_nf4(w, 64, double_quant=True)
    bp, bs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    bp_dq, bs_dq = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ms["dequantize ragtune NF4"] = timed(lambda: dequantize_nf4(packed, state), r)
    ms["dequantize bitsandbytes NF4"] = timed(lambda: bnbf.dequantize_4bit(bp, bs), r)
    ms["dequantize ragtune NF4+DQ"] = timed(lambda: dequantize_nf4(packed_dq, state_dq), r)
    ms["dequantize bitsandbytes NF4+DQ"] = timed(lambda: bnbf.dequantize_4bit(bp_dq, bs_dq), r)
    if torchao_version:
        nf4_ao = to_nf4(w)
        ms["dequantize torchao NF4 (DQ)"] = timed(lambda: nf4_ao.get_original_weight(), r)

    # forward 16x4096 @ 4096x4096
    ours = NF4Linear.from_linear(dense, 64, double_quant=True)
    lin4 = bnb.nn.Linear4bit(
        4096, 4096, bias=False, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4"
    )
    lin4.weight = bnb.nn.Params4bit(
        w.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64
    )
    lin4 = lin4.to("cpu")
    with torch.no_grad():
        ms["forward dense fp32 GEMM (F.linear)"] = timed(lambda: torch.nn.functional.linear(x, w), r)
        ms["forward ragtune NF4Linear (NF4+DQ)"] = timed(lambda: ours(x), r)
        ms["forward bitsandbytes Linear4bit (NF4+DQ)"] = timed(lambda: lin4(x), r)
        if torchao_version:
            ms["forward torchao linear_nf4"] = timed(lambda: linear_nf4(x, nf4_ao), r)
        ms["forward dense fp32 GEMM again"] = timed(lambda: torch.nn.functional.linear(x, w), r)
    load_after = os.getloadavg()[0]
    busy_after, own_after = busy_seconds()
    others = (busy_after - busy_before - (own_after - own_before)) / (time.perf_counter() - wall_before)

    gemm = min(ms["forward dense fp32 GEMM (F.linear)"], ms["forward dense fp32 GEMM again"])
    ratios = {
        "dequantize NF4: ragtune / bitsandbytes": ms["dequantize ragtune NF4"] / ms["dequantize bitsandbytes NF4"],
        "dequantize NF4+DQ: ragtune / bitsandbytes": ms["dequantize ragtune NF4+DQ"]
        / ms["dequantize bitsandbytes NF4+DQ"],
        "quantize NF4: ragtune / bitsandbytes": ms["quantize ragtune NF4"] / ms["quantize bitsandbytes NF4"],
        "forward: ragtune NF4Linear / dense fp32 GEMM": ms["forward ragtune NF4Linear (NF4+DQ)"] / gemm,
        "forward: bitsandbytes Linear4bit / dense fp32 GEMM": ms["forward bitsandbytes Linear4bit (NF4+DQ)"] / gemm,
    }
    if torchao_version:
        ratios["dequantize: ragtune NF4+DQ / torchao"] = (
            ms["dequantize ragtune NF4+DQ"] / ms["dequantize torchao NF4 (DQ)"]
        )
        ratios["forward: torchao linear_nf4 / dense fp32 GEMM"] = ms["forward torchao linear_nf4"] / gemm

    native_ran = decode_backend(torch.device("cpu")) is Backend.NATIVE
    machine = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "logical_cpus": os.cpu_count(),
        "bitsandbytes": bnb.__version__,
        "torchao": torchao_version or "not installed",
        "ragtune_cpu_decode": "native C kernel" if native_ran else "eager PyTorch",
        "loadavg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "other_processes_cpu_cores_during_run": round(others, 2),
        "python": sys.version.split()[0],
    }
    print(f"machine: {json.dumps(machine)}")
    print("\n| operation (4096x4096 weight, 16x4096 input) | ms (median) |\n|---|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} |")
    print("\n| ratio (same run) | value |\n|---|---:|")
    for name, value in ratios.items():
        print(f"| {name} | {value:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "ms": ms, "ratios": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
