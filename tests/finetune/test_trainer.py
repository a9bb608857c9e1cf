"""Whole training runs of the tiny Llama: resume is bit-exact, Ctrl-C saves a checkpoint,
logs and plots are written, and the adapter loads where serving needs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ragtune.finetune.trainer import latest_checkpoint, train

ADAPTER_FILE = "adapter_model.safetensors"


def _adapter(run_dir):
    return load_file(run_dir / "adapter" / ADAPTER_FILE)


def test_six_steps_equal_three_then_resume_then_three(make_config, capsys):
    straight = make_config("straight", max_steps=6, save_every=3, lora_dropout=0.1)
    result = train(straight)
    assert result.steps == 6 and not result.interrupted
    assert (
        "batch plan: global batch 4 = micro batch 2 × devices 1 × grad accumulation steps 2" in capsys.readouterr().err
    )

    # What a run stopped after step 3 leaves behind: its output dir up to that checkpoint.
    resumed = make_config("resumed", max_steps=6, save_every=3, lora_dropout=0.1)
    (resumed.output_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        straight.output_dir / "checkpoints" / "step-000003", resumed.output_dir / "checkpoints" / "step-000003"
    )
    assert train(resumed, resume=True).steps == 6
    assert "resumed from" in capsys.readouterr().err

    a, b = _adapter(straight.output_dir), _adapter(resumed.output_dir)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training did move the adapter away from its initialisation
    first = load_file(straight.output_dir / "checkpoints" / "step-000003" / "adapter" / ADAPTER_FILE)
    assert any(not torch.equal(first[k], a[k]) for k in a)


def test_run_writes_metrics_plot_summary_and_checkpoints(make_config):
    config = make_config(max_steps=4, save_every=1, eval_every=2)
    result = train(config)
    out = config.output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["target_tokens"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in steps)
    assert [r["step"] for r in evals] == [2, 4] and result.eval_loss == evals[-1]["eval_loss"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["steps"] == 4
    # only the newest checkpoints are kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    assert latest_checkpoint(out).name == "step-000004"
    assert result.examples["train"] + result.examples["eval"] == 24 - result.examples["too_long"]


@pytest.mark.parametrize(
    ("quant", "optimizer"), [("nf4", "adamw"), ("bnb", "adamw"), ("none", "adamw"), ("nf4", "adamw8bit")]
)
def test_each_base_weight_format_and_optimizer_trains(make_config, quant, optimizer):
    config = make_config(quant, quant=quant, optimizer=optimizer, max_steps=6, save_every=0)
    result = train(config)
    rows = [json.loads(line) for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] * 0.8
    dense_bytes = 4 * result.base_params
    if quant == "none":
        assert result.base_weight_bytes >= dense_bytes * 0.99
    else:
        assert result.base_linear_bytes < result.base_weight_bytes < dense_bytes


def test_adapter_loads_with_stock_peft_and_merges_to_a_plain_model(make_config, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ragtune.generate.local import LocalLM, SamplingParams

    config = make_config(quant="none", max_steps=3, save_every=0)
    result = train(config, merge=True)
    ids = torch.tensor([[1, 5, 9, 12, 30, 2]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, result.adapter_dir).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()(ids).logits
    assert not torch.allclose(plain, adapted, atol=1e-3)  # the adapter changes the model
    assert torch.allclose(adapted, merged, atol=1e-4)
    adapter_config = json.loads((config.output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == config.lora_r and set(adapter_config["target_modules"]) == set(config.target_modules)

    # ragtune's own local generator takes either form.
    params = SamplingParams(max_new_tokens=5)
    prompt = "<|im_start|>user\nwho created milvus ?<|im_end|>\n<|im_start|>assistant\n"
    with_adapter = LocalLM.load(tiny_model_dir, adapter=result.adapter_dir).complete(prompt, params).text
    from_merged = LocalLM.load(result.merged_dir).complete(prompt, params).text
    assert with_adapter == from_merged


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "finetune", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        **kwargs,
    )


def _write_config(path, config, **extra) -> None:
    values = json.loads(config.model_dump_json()) | extra
    import yaml

    path.write_text(yaml.safe_dump(values))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"lora_rnk": 8}, "lora_rnk: Extra inputs are not permitted"),
        ({"quant": "int3"}, "quant: Input should be 'nf4', 'bnb' or 'none'"),
        ({"offload_params": "cpu", "deepspeed": 2}, "offload_params needs deepspeed: 3"),
        ({"devices": 2}, "devices is 2 but the run has 1 process"),
        ({"global_batch": 5, "micro_batch": 2}, "global_batch=5, micro_batch=2, devices=1, grad_accum_steps=?"),
        ({"data": "/no/such/data.jsonl"}, "training data /no/such/data.jsonl not found"),
        ({"target_modules": ["nope_proj"]}, "do not match the model"),
    ],
)
def test_bad_config_exits_2_with_the_key_named(tmp_path, make_config, extra, message):
    path = tmp_path / "run.yaml"
    _write_config(path, make_config(), **extra)
    result = _cli(str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_set_value_and_bad_data_rows_exit_2(tmp_path, make_config):
    path = tmp_path / "run.yaml"
    _write_config(path, make_config())
    result = _cli(str(path), "--set", "target_modules=[q_proj")
    assert result.returncode == 2 and "--set target_modules=[q_proj: the value is not valid YAML" in result.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q"\n')
    result = _cli(str(path), "--set", f"data={bad}")
    assert (
        result.returncode == 2 and "bad.jsonl:2: not valid JSON" in result.stderr and "Traceback" not in result.stderr
    )


def test_a_new_run_will_not_mix_with_an_earlier_runs_checkpoints(make_config):
    from ragtune.finetune.config import ConfigError

    train(make_config(max_steps=2, save_every=1))
    with pytest.raises(ConfigError, match=r"already holds checkpoints .* pass --resume"):
        train(make_config(max_steps=2))
    with pytest.raises(ConfigError, match=r"other settings \(lora_r: 16 -> 4\)"):
        train(make_config(max_steps=3, lora_r=4), resume=True)
    assert train(make_config(max_steps=3), resume=True).steps == 3  # max_steps may change


def test_every_process_runs_the_same_number_of_eval_passes(monkeypatch):
    # Under ZeRO-3 each forward pass is collective: a process with fewer passes hangs the rest.
    from ragtune.finetune import trainer
    from ragtune.finetune.batch_plan import plan_batch
    from ragtune.finetune.data import TokenizedExample
    from ragtune.finetune.deepspeed import Processes

    class Forward:
        def eval(self):
            pass

        def train(self):
            pass

    class Backend:
        def __init__(self, rank: int) -> None:
            self.module, self.data_parallel_rank = Forward(), rank

    examples = [TokenizedExample([1, 2, 3], [-100, 2, 3])] * 5
    calls = []
    monkeypatch.setattr(
        trainer, "summed_token_loss", lambda forward, batch: calls.append(len(batch["input_ids"])) or torch.tensor(1.0)
    )
    passes = {}
    for rank in (0, 1):
        calls.clear()
        plan = plan_batch(global_batch=4, micro_batch=2, devices=2)
        trainer.held_out_loss(Backend(rank), examples, plan, 0, Processes(rank, 2, rank, False), torch.device("cpu"))
        passes[rank] = list(calls)
    # rank 0 holds examples 0, 2, 4; rank 1 holds 1, 3 and adds a zero-weighted pass
    assert passes == {0: [2, 1], 1: [2, 1]}


def test_flags_and_set_override_the_config_file(tmp_path, make_config):
    path = tmp_path / "run.yaml"
    config = make_config(max_steps=50)
    _write_config(path, config)
    result = _cli(str(path), "--max-steps", "2", "--set", "lora_r=4", "--set", "eval_fraction=0")
    assert result.returncode == 0, result.stderr
    saved = json.loads((config.output_dir / "config.json").read_text())
    assert saved["max_steps"] == 2 and saved["lora_r"] == 4 and saved["eval_fraction"] == 0
    assert json.loads((config.output_dir / "adapter" / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path, make_config):
    config = make_config(max_steps=100_000, save_every=0)
    path = tmp_path / "run.yaml"
    _write_config(path, config)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "finetune", str(path)], stderr=subprocess.PIPE, text=True, env=env
    )
    metrics = config.output_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    checkpoint = latest_checkpoint(config.output_dir)
    assert checkpoint is not None and "continue with --resume" in stderr
    stopped_at = int(checkpoint.name.removeprefix("step-"))
    assert 2 <= stopped_at < 100_000

    resumed = _cli(str(path), "--resume", "--max-steps", str(stopped_at + 2))
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {stopped_at})" in resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == list(range(1, stopped_at + 3))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("cosine", [0.25, 0.5, 0.75, 1.0, 0.5, 0.0]),  # warmup 3, then half a cosine over 2 steps
        ("linear", [0.25, 0.5, 0.75, 1.0, 0.5, 0.0]),
        ("constant", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
    ],
)
def test_learning_rate_warms_up_then_follows_the_schedule(make_config, schedule, expected):
    from ragtune.finetune.backends import lr_factor

    factor = lr_factor(make_config(schedule=schedule, warmup_steps=3, max_steps=5))
    assert [round(factor(step), 6) for step in range(6)] == expected
