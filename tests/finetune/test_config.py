"""The fine-tuning config: the documented keys, the shipped example, flags over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.finetune.config import ConfigError, FinetuneConfig

REPO = Path(__file__).resolve().parents[2]
DOCUMENTED_KEYS = [
    "model",
    "data",
    "output_dir",
    "global_batch",
    "micro_batch",
    "grad_accum_steps",
    "devices",
    "max_steps",
    "lr",
    "warmup_steps",
    "seed",
    "shuffle",
    "max_seq_len",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "quant",
    "deepspeed",
    "save_every",
]


def test_every_documented_key_exists():
    assert set(DOCUMENTED_KEYS) <= set(FinetuneConfig.model_fields)


def test_the_shipped_example_config_is_valid_and_overridable():
    config = FinetuneConfig.load(REPO / "configs" / "finetune-smollm2.yaml", {"max_steps": 7, "deepspeed": None})
    assert config.max_steps == 7 and config.deepspeed == 0 and config.quant == "nf4"
    assert config.batch_plan(world_size=1).grad_accum_steps == 8
    assert config.batch_plan(world_size=2).grad_accum_steps == 4


def test_defaults_fill_a_plan_when_fewer_than_two_batch_numbers_are_given():
    assert FinetuneConfig(data="x").batch_plan(1).global_batch == 4  # micro 4, accumulation 1
    assert FinetuneConfig(data="x", global_batch=32).batch_plan(2).grad_accum_steps == 4
    assert FinetuneConfig(data="x", grad_accum_steps=8).batch_plan(1).global_batch == 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must be a mapping"),
        ("data: [unclosed\n", "not valid YAML"),
        ("data: x\nlr: -1\n", "lr: Input should be greater than 0"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.load(path)


def test_run_flags_are_config_keys_described_once():
    # A flag of `ragtune finetune run` overrides the config key of its name, and its help is
    # that field's description: the setting is defined once, in FinetuneConfig.
    import typer

    from ragtune.finetune.cli import finetune_app

    run = typer.main.get_command(finetune_app).commands["run"]
    flags = {p.name: p for p in run.params if p.name not in ("config_file", "set_", "resume", "merge")}
    assert set(flags) == {
        "max_steps",
        "deepspeed",
        "offload_optimizer",
        "offload_params",
        "nvme_path",
        "pipeline_parallel",
        "tensor_parallel",
    }
    for name, param in flags.items():
        description = FinetuneConfig.model_fields[name].description
        assert description and param.help.lower().startswith(description.lower()), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"deepspeed": 2, "offload_optimizer": "nvme", "nvme_path": "/tmp"}, "ZeRO-Infinity, which needs deepspeed: 3"),
        ({"deepspeed": 3, "offload_optimizer": "nvme"}, "offload to nvme needs nvme_path"),
        ({"pipeline_parallel": 2, "deepspeed": 3}, "DeepSpeed's pipeline engine does not run ZeRO-3"),
        (
            {"pipeline_parallel": 2, "deepspeed": 1, "offload_optimizer": "cpu"},
            "pipeline_parallel runs without offload",
        ),
        # DeepSpeed AutoTP drops PEFT's LoRA layers (BENCHMARKS.md): refused before any model loads.
        ({"tensor_parallel": 2}, "AutoTP replaces PEFT's LoRA-wrapped linear layers"),
    ],
)
def test_parallel_and_offload_combinations_the_engines_cannot_run_are_refused_up_front(overrides, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.load(None, {"data": "x.jsonl", **overrides})
    if "pipeline_parallel" in overrides:
        assert FinetuneConfig.load(None, {"data": "x.jsonl", "pipeline_parallel": 2}).uses_deepspeed
