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
