"""``ragtune finetune ...``: QLoRA fine-tuning on the command line.

    ragtune finetune configs/finetune-smollm2.yaml --max-steps 200   # flags override the file
    ragtune finetune configs/finetune-smollm2.yaml --resume          # continue from the last checkpoint
    ragtune finetune plan --global-batch 128 --micro-batch 4 --devices 1
    ragtune finetune merge runs/smollm2-rag/adapter --out runs/smollm2-rag/merged
    torchrun --nproc_per_node 2 -m ragtune.cli finetune CONFIG.yaml --deepspeed 2

A first argument that is not one of the subcommands is the config file of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

DEFAULT_MODEL_CACHE = Path("~/.cache/ragtune/models").expanduser()

__all__ = ["finetune_app"]


class _RunByDefault(TyperGroup):
    """``ragtune finetune CONFIG.yaml`` means ``ragtune finetune run CONFIG.yaml``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


finetune_app = typer.Typer(
    cls=_RunByDefault,
    help="QLoRA fine-tuning of the answering model: ragtune finetune CONFIG.yaml, flags override its keys.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


@finetune_app.command("plan")
def plan(
    global_batch: Annotated[int | None, typer.Option(help="Examples per optimizer step, over all devices.")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="Examples per forward/backward pass on one device.")] = None,
    grad_accum_steps: Annotated[int | None, typer.Option(help="Micro-batches accumulated per optimizer step.")] = None,
    devices: Annotated[int, typer.Option(help="Data-parallel processes (GPUs).")] = 1,
) -> None:
    """Derive the missing one of global batch, micro batch and accumulation steps (or check all three)."""
    import json

    from ragtune.finetune.batch_plan import BatchPlanError, plan_batch

    try:
        result = plan_batch(global_batch, micro_batch, grad_accum_steps, devices)
    except BatchPlanError as exc:
        raise _fail(str(exc)) from None
    typer.echo(result.describe())
    typer.echo(f"grad_accum_steps = {result.grad_accum_steps}")
    typer.echo("DeepSpeed: " + json.dumps(result.deepspeed_batch_config()))


def _parse_set(pairs: list[str]) -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw)  # YAML scalars: 3, 0.1, true, [a, b]
        except yaml.YAMLError as exc:
            raise _fail(f"--set {pair}: the value is not valid YAML ({exc})") from None
    return values


@finetune_app.command("run")
def run(
    config_file: Annotated[
        Path | None, typer.Argument(metavar="CONFIG.yaml", help="The run's YAML config.", show_default=False)
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Base model: HF directory or .gguf ('' = SmolLM2-135M-Instruct).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="JSONL of {question, answer, context?} or a BEIR dataset directory.")
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Checkpoints, logs and output_dir/adapter go here.")] = None,
    global_batch: Annotated[int | None, typer.Option()] = None,
    micro_batch: Annotated[int | None, typer.Option()] = None,
    grad_accum_steps: Annotated[int | None, typer.Option()] = None,
    devices: Annotated[int | None, typer.Option(help="Must equal the launcher's process count.")] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    warmup_steps: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    shuffle: Annotated[bool | None, typer.Option("--shuffle/--no-shuffle")] = None,
    max_seq_len: Annotated[int | None, typer.Option()] = None,
    lora_r: Annotated[int | None, typer.Option()] = None,
    lora_alpha: Annotated[float | None, typer.Option()] = None,
    lora_dropout: Annotated[float | None, typer.Option()] = None,
    target_modules: Annotated[str | None, typer.Option(help="Comma-separated, e.g. q_proj,v_proj.")] = None,
    quant: Annotated[str | None, typer.Option(help="nf4 | bnb | none")] = None,
    deepspeed: Annotated[int | None, typer.Option(help="ZeRO stage 1-3 (0 = plain PyTorch).")] = None,
    offload_optimizer: Annotated[str | None, typer.Option(help="none | cpu")] = None,
    offload_params: Annotated[str | None, typer.Option(help="none | cpu (ZeRO-3)")] = None,
    save_every: Annotated[int | None, typer.Option()] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Any other config key: --set eval_every=20.")] = [],  # noqa: B006
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in output_dir.")
    ] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also write the adapter merged into the base: output_dir/merged.")
    ] = False,
) -> None:
    """Fine-tune the answering model with QLoRA; the adapter lands in output_dir/adapter."""
    from ragtune.finetune.batch_plan import BatchPlanError
    from ragtune.finetune.config import ConfigError, FinetuneConfig
    from ragtune.finetune.data import DataError

    overrides = {
        "model": model,
        "data": data,
        "output_dir": output_dir,
        "global_batch": global_batch,
        "micro_batch": micro_batch,
        "grad_accum_steps": grad_accum_steps,
        "devices": devices,
        "max_steps": max_steps,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "shuffle": shuffle,
        "max_seq_len": max_seq_len,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": [m.strip() for m in target_modules.split(",") if m.strip()]
        if target_modules is not None
        else None,
        "quant": quant,
        "deepspeed": deepspeed,
        "offload_optimizer": offload_optimizer,
        "offload_params": offload_params,
        "save_every": save_every,
        **_parse_set(set_),
    }
    try:
        config = FinetuneConfig.load(config_file, overrides)
        from ragtune.finetune.trainer import train

        result = train(config, resume=resume, merge=merge)
    except (ConfigError, DataError, BatchPlanError) as exc:
        raise _fail(str(exc)) from None
    if result.interrupted:
        raise typer.Exit(130)


@finetune_app.command("merge")
def merge(
    adapter: Annotated[Path, typer.Argument(help="A PEFT adapter directory (output_dir/adapter).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Where the merged HF model directory goes.")],
    model: Annotated[str | None, typer.Option(help="Base model; default: the one the adapter was trained on.")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Where converted GGUF models are cached.")] = DEFAULT_MODEL_CACHE,
) -> None:
    """Fold a LoRA adapter into its dense base weights: a plain transformers model directory."""
    import json

    from ragtune.finetune.export import merge_adapter
    from ragtune.models import ModelNotFoundError, model_dir

    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise _fail(f"{adapter} has no adapter_config.json: not a PEFT adapter directory")
    base = model or json.loads(config_path.read_text()).get("base_model_name_or_path") or ""
    try:
        base_dir = model_dir(base, cache_dir)
    except ModelNotFoundError as exc:
        raise _fail(f"{exc} (pass the base model with --model)") from None
    typer.echo(f"merged model written to {merge_adapter(base_dir, adapter, out)}", err=True)
