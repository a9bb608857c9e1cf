"""ZeRO-3 on one process three ways: everything in memory, parameters and optimizer offloaded
to CPU memory, and both offloaded to NVMe swap files (ZeRO-Infinity). Reports each run's
peak resident memory (ru_maxrss of the training process) and seconds as ratios to the
in-memory run of the same invocation, and the largest loss difference between the runs.

The model is a generated 2-layer Llama whose MLP matrices (64 × 65536) hold nearly all of its
25 M parameters, LoRA on every projection, quant none, bf16 (DeepSpeed 0.19.8 swaps parameters in
as bf16 on a CPU: BENCHMARKS.md). Writes bench/results/zero_infinity.json (BENCHMARKS.md,
"ZeRO-Infinity")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders, tests.finetune

import yaml

from tests.builders import build_tiny_llama
from tests.finetune.conftest import QA_ROWS

RUNS = {
    "in memory": {},
    "offload to CPU memory": {"offload_params": "cpu", "offload_optimizer": "cpu"},
    "offload to NVMe": {"offload_params": "nvme", "offload_optimizer": "nvme"},
}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ragtune-zero-infinity-"))
    model = build_tiny_llama(work / "model", intermediate_size=65536)
    data = work / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in QA_ROWS * 4))
    results: dict[str, dict[str, float]] = {}
    losses: dict[str, list[float]] = {}
    for name, offload in RUNS.items():
        out = work / name.replace(" ", "-")
        config = {
            "model": str(model),
            "data": str(data),
            "output_dir": str(out),
            "quant": "none",
            "dtype": "bf16",
            "deepspeed": 3,
            # bf16 matmuls are slow on a CPU: one example a step, 2 steps.
            "global_batch": 1,
            "micro_batch": 1,
            "max_steps": 2,
            "top_k": 2,
            "lora_dropout": 0.0,
            "eval_fraction": 0.0,
            "save_every": 0,
            **offload,
        }
        if "nvme" in offload.values():
            config["nvme_path"] = str(work / "swap")
        path = work / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ragtune.cli", "finetune", str(path)],
            check=True,
            env=os.environ | {"OMP_NUM_THREADS": "2"},
            stderr=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - started
        run = json.loads((out / "run.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
        results[name] = {"peak_rss_mib": run["peak_memory_bytes"] / 2**20, "seconds": seconds}
        print(f"{name}: peak RSS {results[name]['peak_rss_mib']:.0f} MiB, {seconds:.1f} s", flush=True)
    base = results["in memory"]
    for values in results.values():
        values["rss_ratio"] = values["peak_rss_mib"] / base["peak_rss_mib"]
        values["time_ratio"] = values["seconds"] / base["seconds"]
    cpu, nvme = losses["offload to CPU memory"], losses["offload to NVMe"]
    summary = {
        "runs": results,
        "max_loss_difference_nvme_vs_cpu_offload": max(abs(a - b) for a, b in zip(nvme, cpu)),
        "max_loss_difference_nvme_vs_in_memory": max(abs(a - b) for a, b in zip(nvme, losses["in memory"])),
        "swap_files": sorted(str(p.relative_to(work / "swap")) for p in (work / "swap").rglob("*.swp"))[:8],
    }
    out_file = Path(__file__).parent / "results" / "zero_infinity.json"
    out_file.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
