"""The global-batch rule as users meet it: `plan_batch`, `ragtune finetune plan`, and the
DeepSpeed keys it writes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ragtune.finetune.batch_plan import BatchPlanError, plan_batch


def test_the_seeds_examples():
    assert plan_batch(global_batch=128, micro_batch=4, devices=1).grad_accum_steps == 32
    assert plan_batch(global_batch=64, micro_batch=8, devices=4).grad_accum_steps == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"global_batch": 64, "micro_batch": 8, "devices": 4}, (64, 8, 2)),
        ({"global_batch": 64, "grad_accum_steps": 2, "devices": 4}, (64, 8, 2)),
        ({"micro_batch": 8, "grad_accum_steps": 2, "devices": 4}, (64, 8, 2)),
        ({"global_batch": 64, "micro_batch": 8, "grad_accum_steps": 2, "devices": 4}, (64, 8, 2)),
        ({"global_batch": 6, "micro_batch": 2, "devices": 3}, (6, 2, 1)),
    ],
)
def test_any_two_and_the_devices_fix_the_third(given, expected):
    plan = plan_batch(**given)
    assert (plan.global_batch, plan.micro_batch, plan.grad_accum_steps) == expected
    assert plan.global_batch == plan.micro_batch * plan.devices * plan.grad_accum_steps
    assert plan.deepspeed_batch_config() == {
        "train_batch_size": expected[0],
        "train_micro_batch_size_per_gpu": expected[1],
        "gradient_accumulation_steps": expected[2],
    }


@pytest.mark.parametrize(
    ("given", "fragments"),
    [
        # not divisible: names all four numbers and the nearest valid global batches
        (
            {"global_batch": 100, "micro_batch": 8, "devices": 4},
            ["global_batch=100", "micro_batch=8", "devices=4", "grad_accum_steps=?", "[96, 128]"],
        ),
        # three given that do not multiply out
        (
            {"global_batch": 64, "micro_batch": 8, "grad_accum_steps": 3, "devices": 4},
            ["8 × 4 × 3 = 96", "must be 2", "global_batch to 96"],
        ),
        (
            {"global_batch": 10, "grad_accum_steps": 4, "devices": 1},
            ["not divisible by devices × grad_accum_steps = 4", "[8, 12]"],
        ),
        ({"global_batch": 64, "devices": 1}, ["at least two"]),
        ({"global_batch": 0, "micro_batch": 1, "devices": 1}, ["global_batch must be a positive integer"]),
    ],
)
def test_impossible_plans_say_why_and_what_would_work(given, fragments):
    with pytest.raises(BatchPlanError) as error:
        plan_batch(**given)
    for fragment in fragments:
        assert fragment in str(error.value)


def _plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "finetune", "plan", *args], capture_output=True, text=True, timeout=120
    )


def test_plan_command_prints_the_plan_and_rejects_bad_numbers_with_exit_2():
    ok = _plan_cli("--global-batch", "128", "--micro-batch", "4", "--devices", "1")
    assert ok.returncode == 0, ok.stderr
    assert "grad_accum_steps = 32" in ok.stdout
    assert (
        '"train_batch_size": 128, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 32' in ok.stdout
    )

    bad = _plan_cli("--global-batch", "100", "--micro-batch", "8", "--devices", "4")
    assert bad.returncode == 2
    assert "global_batch=100, micro_batch=8, devices=4" in bad.stderr and "Traceback" not in bad.stderr


def test_only_data_parallel_replicas_multiply_the_batch():
    plan = plan_batch(global_batch=64, micro_batch=4, devices=8, pipeline_parallel=2, tensor_parallel=2)
    assert (plan.data_parallel, plan.grad_accum_steps) == (2, 8)
    assert plan.global_batch == plan.micro_batch * plan.data_parallel * plan.grad_accum_steps
    assert plan.bubble_fraction == pytest.approx(1 / 9)  # (P - 1) / (m + P - 1) with P = 2, m = 8
    assert plan_batch(global_batch=64, micro_batch=4, devices=8).grad_accum_steps == 2  # 8 replicas
    assert plan_batch(global_batch=8, micro_batch=2, devices=2, pipeline_parallel=2).grad_accum_steps == 4

    with pytest.raises(BatchPlanError) as error:
        plan_batch(global_batch=64, micro_batch=4, devices=6, pipeline_parallel=2, tensor_parallel=2)
    message = str(error.value)
    assert "devices 6 is not divisible by pipeline_parallel × tensor_parallel = 2 × 2 = 4" in message
    assert "pipeline 2 × tensor 3" in message and "pipeline 2 × tensor 2" not in message and "[4, 8, 12]" in message
    with pytest.raises(BatchPlanError, match="micro_batch × data_parallel_size = 16"):
        plan_batch(global_batch=60, micro_batch=8, devices=8, pipeline_parallel=2, tensor_parallel=2)


def test_plan_command_prints_the_parallel_layout_and_the_pipeline_bubble():
    ok = _plan_cli(
        *("--devices", "8", "--pipeline-parallel", "2", "--tensor-parallel", "2"),
        *("--global-batch", "64", "--micro-batch", "4"),
    )
    assert ok.returncode == 0, ok.stderr
    assert "data_parallel_size = 2" in ok.stdout and "grad_accum_steps = 8" in ok.stdout
    assert "pipeline: 8 micro-batches in flight per step; bubble (P - 1) / (m + P - 1) = 1/9 = 0.111" in ok.stdout

    bad = _plan_cli("--devices", "6", "--pipeline-parallel", "4", "--global-batch", "64", "--micro-batch", "4")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "devices 6 is not divisible by pipeline_parallel × tensor_parallel = 4 × 1 = 4" in bad.stderr
