"""DeepSpeed runs the distributed training: its config comes from the batch plan, and a
2-process ZeRO run (gloo, on CPU; torchrun or the deepspeed launcher) reproduces the
1-process run's losses."""

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
from ragtune.finetune.trainer import train
from tests.api.support import free_port


def test_deepspeed_config_takes_its_batch_keys_from_the_plan(make_config):
    plan = plan_batch(global_batch=64, micro_batch=8, devices=4)
    config = make_config(deepspeed=3, offload_optimizer="cpu", offload_params="cpu", max_grad_norm=0.5)
    ds = deepspeed_config(config, plan, torch.bfloat16)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        64,
        8,
        2,
    )
    assert (
        ds["train_batch_size"]
        == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * plan.devices
    )
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW" and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"]

    plain = deepspeed_config(
        make_config(deepspeed=2), plan_batch(global_batch=8, micro_batch=2, devices=2), torch.float32
    )
    assert (
        "optimizer" not in plain
        and "offload_optimizer" not in plain["zero_optimization"]
        and not plain["bf16"]["enabled"]
    )


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    # the `deepspeed` launcher passes --local_rank=N before the subcommand
    "deepspeed": [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--module", "--master_port"],
}


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "stage"), [("torchrun", 2), ("deepspeed", 1)])
def test_two_process_zero_run_matches_one_process_with_the_same_global_batch(tmp_path, make_config, launcher, stage):
    # Same global batch of 8: one process accumulates 4 micro-batches of 2, two ZeRO
    # processes accumulate 2 each. Exact token weighting must survive DeepSpeed's own
    # 1/accumulation scaling and its averaging over ranks.
    common = {"global_batch": 8, "micro_batch": 2, "max_steps": 4, "lora_dropout": 0.0, "save_every": 0}
    single = make_config("single", **common)
    train(single)

    distributed = make_config("zero", deepspeed=stage, **common)
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(json.loads(distributed.model_dump_json())))
    module = ["-m", "ragtune.cli"] if launcher == "torchrun" else ["ragtune.cli"]
    command = [*LAUNCHERS[launcher], str(free_port()), *module, "finetune", str(path)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=420, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 8 = micro batch 2 × devices 2 × grad accumulation steps 2" in result.stderr

    ds = json.loads((distributed.output_dir / "deepspeed.json").read_text())
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        8,
        2,
        2,
    )
    assert ds["zero_optimization"]["stage"] == stage
    one, two = _losses(single.output_dir), _losses(distributed.output_dir)
    assert len(one) == len(two) == 4 and one[-1] < one[0]
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-4
    assert (distributed.output_dir / "adapter" / "adapter_config.json").is_file()
