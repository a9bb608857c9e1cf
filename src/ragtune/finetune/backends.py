"""How the gradients of a step are made and applied: plain PyTorch, or a DeepSpeed engine.

The trainer's loop sees only `Backend`: per micro-batch ``backward(token_loss,
step_tokens)``, per optimizer step ``step()``, the ``lr`` the step runs with, and the
backend's share of a checkpoint. `make_backend` picks one from the config:

* `TorchBackend` (``deepspeed: 0``): one process; ragtune's optimizer (AdamW or
  bitsandbytes' 8-bit AdamW), the warmup/decay schedule, gradient-norm clipping.
* `DeepSpeedBackend` (``deepspeed: 1-3``): ``deepspeed.initialize`` owns the optimizer
  (ragtune's, or its CPU Adam when the optimizer is offloaded), the schedule, clipping,
  the gradient all-reduce and ZeRO's partitioning; its checkpoint is DeepSpeed's own.
* `pipeline.PipelineBackend` (``pipeline_parallel > 1``): DeepSpeed's pipeline engine, which
  takes a whole step's micro-batches at once (``train_batch``) instead of ``backward``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ragtune.finetune.batch_plan import BatchPlan
from ragtune.finetune.config import FinetuneConfig
from ragtune.finetune.deepspeed import Processes, deepspeed_config
from ragtune.finetune.qlora import TrainableModel

__all__ = [
    "Backend",
    "DeepSpeedBackend",
    "DeepSpeedEngineState",
    "TorchBackend",
    "lr_factor",
    "make_backend",
    "make_optimizer",
]

ADAPTER_FILE = "adapter_model.safetensors"  # PEFT's name for the LoRA weights


class Backend(Protocol):
    """What the training loop needs from the thing that owns the optimizer."""

    module: Any  # what the loss runs forward through: the PEFT model, or the engine wrapping it
    data_parallel_rank: int  # which share of each step's examples this process trains on

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step applies."""
        ...

    def backward(self, token_loss: torch.Tensor, step_tokens: int) -> None:
        """Add the gradient of ``token_loss / step_tokens``: a micro-batch's summed token
        loss, weighted by the target tokens of the whole global batch."""
        ...

    def step(self) -> float | None:
        """Apply the accumulated gradient (clip, update, schedule) and clear it; returns
        the gradient norm before clipping (None where the backend does not report it)."""
        ...

    def save(self, directory: Path, step: int) -> dict[str, Any]:
        """Write this process's optimizer and schedule state into checkpoint ``directory``;
        returns what goes into this rank's trainer-state file."""
        ...

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        """Restore the adapter, optimizer and schedule from what `save` and the adapter
        in ``directory/adapter`` hold (``state``: this rank's trainer-state file)."""
        ...

    def save_adapter(self, directory: Path) -> None:
        """The LoRA weights in PEFT's format (written by rank 0)."""
        ...


def lr_factor(config: FinetuneConfig) -> Callable[[int], float]:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine/linear decay to 0 (or constant)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        if config.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(config: FinetuneConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class TorchBackend:
    """One plain PyTorch process: optimizer, LambdaLR schedule, clipping."""

    def __init__(self, config: FinetuneConfig, trainable: TrainableModel, processes: Processes) -> None:
        self.module = trainable.model
        self.processes = processes
        self.data_parallel_rank = 0
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.max_grad_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf  # 0: no clipping
        self.optimizer = make_optimizer(config, self.params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(config))

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def backward(self, token_loss: torch.Tensor, step_tokens: int) -> None:
        (token_loss / step_tokens).backward()

    def step(self) -> float | None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def save(self, directory: Path, step: int) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.module, load_file(directory / "adapter" / ADAPTER_FILE))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_adapter(self, directory: Path) -> None:
        if self.processes.is_main:
            self.module.save_pretrained(directory)


class DeepSpeedEngineState:
    """What every DeepSpeed engine backend shares: the engine (``module``) owns the learning
    rate, the gradient norm of the last update and its own (sharded) checkpoint."""

    module: Any

    @property
    def lr(self) -> float:
        return float(self.module.get_lr()[0])

    def step(self) -> float | None:
        grad_norm = self.module.get_global_grad_norm()  # the engine already updated
        return None if grad_norm is None else float(grad_norm)

    def save(self, directory: Path, step: int) -> dict[str, Any]:
        # DeepSpeed saves its own (sharded) optimizer and schedule; every rank writes its shard.
        self.module.save_checkpoint(
            str(directory), tag="deepspeed", client_state={"step": step}, exclude_frozen_parameters=True
        )
        return {}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        self.module.load_checkpoint(str(directory), tag="deepspeed", load_module_strict=False)


class DeepSpeedBackend(DeepSpeedEngineState):
    """A DeepSpeed engine (ZeRO stage 1-3): it all-reduces the gradients, clips, steps the
    optimizer and schedule, and partitions what the stage partitions."""

    def __init__(
        self, config: FinetuneConfig, plan: BatchPlan, trainable: TrainableModel, processes: Processes
    ) -> None:
        import deepspeed

        self.peft_model, self.processes, self.plan = trainable.model, processes, plan
        self.data_parallel_rank = processes.rank
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        ds_config = deepspeed_config(config, plan, trainable.compute_dtype)
        if config.offload_params == "nvme":
            # Each of ZeRO-Infinity's swap buffers must hold the largest parameter; DeepSpeed's
            # default (1e8 elements) allocates ~1 GB of them however small the model is, which
            # made the NVMe run's peak memory 1.7x the in-memory run's (BENCHMARKS.md).
            largest = max(p.numel() for p in self.peft_model.parameters())
            aligned = -(-largest // 2**20) * 2**20  # room for the padding DeepSpeed adds for direct I/O
            ds_config["zero_optimization"]["offload_param"]["buffer_size"] = aligned
        # ragtune's own optimizer, unless ZeRO-Offload needs DeepSpeed's CPU Adam (built from ds_config).
        client_optimizer = None if config.offload_optimizer != "none" else make_optimizer(config, params)
        self.module, _, _, _ = deepspeed.initialize(
            model=self.peft_model,
            model_parameters=params,
            optimizer=client_optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config)),
            config=ds_config,
        )
        if processes.is_main:
            (config.output_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2))

    def backward(self, token_loss: torch.Tensor, step_tokens: int) -> None:
        # DeepSpeed divides what backward() gets by grad_accum_steps and averages gradients
        # over processes: multiplying by both first leaves the weight 1 / step_tokens.
        self.module.backward(token_loss * (self.plan.grad_accum_steps * self.plan.data_parallel / step_tokens))
        self.module.step()  # counts the micro-batch; the engine updates at the accumulation boundary

    def save_adapter(self, directory: Path) -> None:
        if self.module.zero_optimization_stage() == 3:
            import deepspeed

            # ZeRO-3 shards the parameters: gather them (on every rank) before rank 0 writes,
            # one at a time, since ZeRO-Infinity has only a few swap buffers to bring
            # parameters back from NVMe ("Not enough swap in buffers 5 for 6 params").
            weights = {}
            for name, param in self.peft_model.named_parameters():
                if param.requires_grad:
                    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                        weights[name] = param.detach().cpu().clone()
            if self.processes.is_main:
                self.peft_model.save_pretrained(directory, state_dict=weights)
        elif self.processes.is_main:
            self.peft_model.save_pretrained(directory)


def make_backend(
    config: FinetuneConfig, plan: BatchPlan, trainable: TrainableModel, processes: Processes
) -> TorchBackend | DeepSpeedBackend:
    """The backend the config asks for (``deepspeed: 0`` = plain PyTorch; a pipeline run
    builds `pipeline.PipelineBackend` instead)."""
    if config.deepspeed:
        return DeepSpeedBackend(config, plan, trainable, processes)
    return TorchBackend(config, trainable, processes)
