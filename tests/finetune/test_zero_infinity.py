"""ZeRO-Infinity: ZeRO-3 with the parameters and the optimizer state offloaded to NVMe swap
files (DeepSpeed's async I/O op over libaio) trains what the same run holding them in CPU
memory trains, and the swap files are where the config put them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from ragtune.finetune.batch_plan import plan_batch
from ragtune.finetune.deepspeed import deepspeed_config
from tests.builders import build_tiny_llama


def test_nvme_offload_writes_deepspeeds_nvme_and_aio_sections(make_config, tmp_path):
    config = make_config(deepspeed=3, offload_params="nvme", offload_optimizer="nvme", nvme_path=tmp_path / "swap")
    ds = deepspeed_config(config, plan_batch(global_batch=4, micro_batch=2, devices=1), dtype=torch.float32)
    zero = ds["zero_optimization"]
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "nvme"
    assert zero["offload_param"]["nvme_path"] == zero["offload_optimizer"]["nvme_path"] == str(tmp_path / "swap")
    assert zero["offload_param"]["max_in_cpu"] == 0 and ds["optimizer"]["type"] == "AdamW"
    assert ds["aio"]["block_size"] == 1048576 and ds["aio"]["queue_depth"] == 8


def _run(config_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "finetune", str(config_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_zero3_with_params_and_optimizer_on_nvme_matches_the_run_holding_them_in_memory(make_config, tmp_path):
    from deepspeed.ops.op_builder import AsyncIOBuilder

    if not AsyncIOBuilder().is_compatible(verbose=False):
        pytest.skip("DeepSpeed's async I/O op needs libaio: run scripts/system-deps/libaio.sh")
    # DeepSpeed swaps only tensors of at least 1 MiB, counted at 2 bytes an element (its swap
    # buffers are 16-bit even for an fp32 run): MLP matrices of 64 × 8192 are 1 MiB.
    model = build_tiny_llama(tmp_path / "wide-llama", intermediate_size=8192)
    swap = tmp_path / "swap"
    # bf16, as on a GPU: for a model that is not already 16-bit, DeepSpeed 0.19.8 on a CPU swaps
    # parameters in as bf16 (Init._set_dtype's `dtype or float16 if fp16 else bfloat16` binds
    # as `(dtype or float16) if ... else bfloat16`), and an fp32 run fails with "expected m1
    # and m2 to have the same dtype, but got: float != c10::BFloat16" (BENCHMARKS.md).
    common = {
        "model": str(model),
        "quant": "none",
        "dtype": "bf16",
        "deepspeed": 3,
        "lora_dropout": 0.0,
        "save_every": 0,
        # bf16 matmuls are slow on this CPU: 2 steps of 2 examples keep the test short.
        "global_batch": 2,
        "micro_batch": 1,
        "max_steps": 2,
        "eval_fraction": 0.0,
    }
    # The baseline offloads to CPU memory: both runs then step DeepSpeed's CPU Adam, and only
    # where the tensors wait between uses differs. (Against ragtune's torch AdamW without
    # offload the bf16 losses differ by 4e-3: two Adam implementations rounding to bf16.)
    losses = {}
    for name, offload in (
        ("in-memory", {"offload_params": "cpu", "offload_optimizer": "cpu"}),
        ("nvme", {"offload_params": "nvme", "offload_optimizer": "nvme", "nvme_path": str(swap)}),
    ):
        config = make_config(name, **common, **offload)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
        result = _run(path)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
        if "nvme_path" in offload:
            ds = json.loads((config.output_dir / "deepspeed.json").read_text())
            assert ds["zero_optimization"]["offload_param"]["device"] == "nvme"

    assert len(losses["nvme"]) == len(losses["in-memory"]) == 2
    assert max(abs(a - b) for a, b in zip(losses["nvme"], losses["in-memory"])) <= 1e-4
    params = sorted(p.name for p in swap.glob("zero_stage_3/*params/rank0/*.swp"))
    optimizer = sorted(p.name for p in swap.glob("zero_stage_3/optimizer/rank0/*.swp"))
    assert params and optimizer, sorted(str(p.relative_to(swap)) for p in swap.rglob("*"))
