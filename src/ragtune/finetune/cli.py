"""``ragtune finetune ...``: QLoRA fine-tuning on the command line.

    ragtune finetune configs/finetune-smollm2.yaml --max-steps 200   # flags override the file
    ragtune finetune configs/finetune-smollm2.yaml --set lora_r=8 --set eval_every=20   # any other key
    ragtune finetune configs/finetune-smollm2.yaml --resume          # continue from the last checkpoint
    ragtune finetune plan --global-batch 128 --micro-batch 4 --devices 1
    ragtune finetune merge runs/smollm2-rag/adapter --out runs/smollm2-rag/merged
    torchrun --nproc_per_node 2 -m ragtune.cli finetune CONFIG.yaml --deepspeed 2
    torchrun --nproc_per_node 4 -m ragtune.cli finetune CONFIG.yaml --pipeline-parallel 2   # 2 stages × 2 replicas
    ragtune finetune CONFIG.yaml --deepspeed 3 --offload-params nvme --offload-optimizer nvme --nvme-path /local_nvme

A first argument that is not one of the subcommands is the config file of a run. The
settings themselves are defined once, in `FinetuneConfig`: ``--set KEY=VALUE`` reaches
every key, and the few flags kept for the common ones take their help from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from typer.core import TyperGroup

from ragtune.finetune.config import FinetuneConfig

__all__ = ["finetune_app"]


class _RunByDefault(TyperGroup):
    """``ragtune finetune CONFIG.yaml`` means ``ragtune finetune run CONFIG.yaml``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


finetune_app = typer.Typer(
    cls=_RunByDefault,
    help="QLoRA fine-tuning of the answering model: ragtune finetune CONFIG.yaml; flags and --set KEY=VALUE override its keys.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def _key_help(key: str, default: bool = True) -> str:
    """A flag's help from the `FinetuneConfig` field it sets: description, choices, default."""
    field = FinetuneConfig.model_fields[key]
    text = (field.description or key.replace("_", " ")).rstrip(".")
    if get_origin(field.annotation) is Literal:
        text += ": " + " | ".join(map(str, get_args(field.annotation)))
    return f"{text[:1].upper()}{text[1:]}." + (f" Config key {key}, default {field.default!r}." if default else "")


def config_flag(key: str) -> Any:
    """The typer option of a flag that overrides config key ``key`` (None: keep the file's value);
    `ragtune tune answerer` declares its fine-tuning flags with it too."""
    return typer.Option(help=_key_help(key), show_default=False)


SET_HELP = "Any config key, the value in YAML: --set lora_r=8 --set eval_every=20."


@finetune_app.command("plan")
def plan(
    global_batch: Annotated[int | None, typer.Option(help=_key_help("global_batch", default=False))] = None,
    micro_batch: Annotated[int | None, typer.Option(help=_key_help("micro_batch", default=False))] = None,
    grad_accum_steps: Annotated[int | None, typer.Option(help=_key_help("grad_accum_steps", default=False))] = None,
    devices: Annotated[int, typer.Option(help="Processes (GPUs), all stages and shards included.")] = 1,
    pipeline_parallel: Annotated[int, typer.Option(help=_key_help("pipeline_parallel", default=False))] = 1,
    tensor_parallel: Annotated[int, typer.Option(help=_key_help("tensor_parallel", default=False))] = 1,
) -> None:
    """Derive the missing one of global batch, micro batch and accumulation steps (or check all three)."""
    import json

    from ragtune.finetune.batch_plan import BatchPlanError, plan_batch

    try:
        result = plan_batch(global_batch, micro_batch, grad_accum_steps, devices, pipeline_parallel, tensor_parallel)
    except BatchPlanError as exc:
        raise _fail(str(exc)) from None
    typer.echo(result.describe())
    typer.echo(f"data_parallel_size = {result.data_parallel}")
    typer.echo(f"grad_accum_steps = {result.grad_accum_steps}")
    if result.pipeline_parallel > 1:
        typer.echo(
            f"pipeline: {result.grad_accum_steps} micro-batches in flight per step; bubble (P - 1) / (m + P - 1) = "
            f"{result.pipeline_parallel - 1}/{result.grad_accum_steps + result.pipeline_parallel - 1} = "
            f"{result.bubble_fraction:.3f}"
        )
    typer.echo("DeepSpeed: " + json.dumps(result.deepspeed_batch_config()))


def parse_set(pairs: list[str]) -> dict[str, Any]:
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
    max_steps: Annotated[int | None, config_flag("max_steps")] = None,
    deepspeed: Annotated[int | None, config_flag("deepspeed")] = None,
    offload_optimizer: Annotated[str | None, config_flag("offload_optimizer")] = None,
    offload_params: Annotated[str | None, config_flag("offload_params")] = None,
    nvme_path: Annotated[Path | None, config_flag("nvme_path")] = None,
    pipeline_parallel: Annotated[int | None, config_flag("pipeline_parallel")] = None,
    tensor_parallel: Annotated[int | None, config_flag("tensor_parallel")] = None,
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help=SET_HELP,
        ),
    ] = [],  # noqa: B006
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in output_dir.")
    ] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also write the adapter merged into the base: output_dir/merged.")
    ] = False,
) -> None:
    """Fine-tune the answering model with QLoRA; the adapter lands in output_dir/adapter."""
    from ragtune.finetune.batch_plan import BatchPlanError
    from ragtune.finetune.config import ConfigError
    from ragtune.finetune.data import DataError

    flags = {
        "max_steps": max_steps,
        "deepspeed": deepspeed,
        "offload_optimizer": offload_optimizer,
        "offload_params": offload_params,
        "nvme_path": nvme_path,
        "pipeline_parallel": pipeline_parallel,
        "tensor_parallel": tensor_parallel,
    }
    try:
        config = FinetuneConfig.load(config_file, {**flags, **parse_set(set_)})
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
    cache_dir: Annotated[
        Path, typer.Option(help="Where converted GGUF models are cached.")
    ] = FinetuneConfig.model_fields["cache_dir"].default,
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
