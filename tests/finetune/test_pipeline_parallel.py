"""Pipeline parallelism runs through DeepSpeed's pipeline engine: 2 stages on CPU processes
(gloo) reproduce the one-process run's losses, the adapter the stages save together is PEFT's,
equal to the one-process adapter, and a run resumed from the stages' checkpoint ends where the
straight run ends. (2 stages × 2 replicas on 4 processes passes the same test,
RAGTUNE_TEST_PIPELINE_PROCESSES=4, in 32 s: past what the suite's time allows.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from ragtune.finetune.trainer import train
from tests.api.support import free_port

COMMON = {"global_batch": 8, "micro_batch": 2, "max_steps": 10, "lora_dropout": 0.0, "save_every": 0}


def _metrics(run_dir) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r["eval_loss"] for r in rows if "eval_loss" in r]


def _lora_weights(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    return {name: p.detach() for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.slow
def test_pipeline_stages_train_what_one_process_trains(tmp_path, make_config, tiny_model_dir):
    processes = int(os.environ.get("RAGTUNE_TEST_PIPELINE_PROCESSES", "2"))
    single = make_config("single", **COMMON)
    train(single)

    # 2 processes: 2 stages of one replica (data parallel 1, 4 micro-batches a step);
    # 4 processes: 2 stages × 2 replicas (2 micro-batches each).
    def launch(config, *flags: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / f"{config.output_dir.name}.yaml"
        path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
        command = [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)),
            *("--master_port", str(free_port()), "-m", "ragtune.cli", "finetune", str(path), *flags),
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=420, env=os.environ | {"OMP_NUM_THREADS": "1"}
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    piped = make_config("piped", pipeline_parallel=2, **COMMON | {"save_every": 5})
    result = launch(piped)
    replicas = processes // 2
    assert (
        f"micro batch 2 × data parallel {replicas} × grad accumulation steps {4 // replicas} "
        f"(devices {processes} = data {replicas} × pipeline 2 × tensor 1)" in result.stderr
    )
    ds = json.loads((piped.output_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == 1 and ds["gradient_accumulation_steps"] == 4 // replicas

    (one, one_eval), (two, two_eval) = _metrics(single.output_dir), _metrics(piped.output_dir)
    assert len(one) == len(two) == 10 and one[-1] < one[0] / 2
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-4
    assert len(one_eval) == len(two_eval) == 1 and abs(one_eval[0] - two_eval[0]) <= 1e-4

    # Every stage's LoRA weights made it into the one adapter, and they are what one process trained.
    expected = _lora_weights(tiny_model_dir, single.output_dir / "adapter")
    got = _lora_weights(tiny_model_dir, piped.output_dir / "adapter")
    assert got.keys() == expected.keys() and len(got) == 2 * 7 * 2  # 2 layers × 7 projections × A, B
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) <= 1e-4
    assert any(float(w.abs().max()) > 0 for k, w in got.items() if "lora_B" in k)  # B starts at 0: it trained

    # What a pipeline run stopped after step 5 leaves: every stage's share of that checkpoint.
    resumed = make_config("resumed", pipeline_parallel=2, **COMMON | {"save_every": 5})
    checkpoint = "checkpoints/step-000005"
    shutil.copytree(piped.output_dir / checkpoint, resumed.output_dir / checkpoint)
    assert "resumed from" in launch(resumed, "--resume").stderr
    losses, _ = _metrics(resumed.output_dir)
    assert len(losses) == 5 and max(abs(a - b) for a, b in zip(losses, two[5:])) <= 1e-6
    again = _lora_weights(tiny_model_dir, resumed.output_dir / "adapter")
    assert max(float((again[k] - got[k]).abs().max()) for k in got) <= 1e-6
