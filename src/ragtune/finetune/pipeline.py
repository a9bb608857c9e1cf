"""Pipeline parallelism through DeepSpeed's pipeline engine (``pipeline_parallel > 1``).

The answering model, a Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2: an
``embed_tokens``, ``layers``, ``norm`` and ``rotary_emb`` under ``model``, and an ``lm_head``),
becomes a `deepspeed.pipe.PipelineModule` of a flat list of layers:

    token embedding | decoder layer 0 | ... | decoder layer L-1 | final norm + LM head

which DeepSpeed splits into ``pipeline_parallel`` stages with the decoder layers balanced
between them. The layers are the PEFT model's own modules, so the NF4 base weights and the
LoRA adapters stay inside each stage and keep PEFT's parameter names; the adapter is saved
in PEFT's format by gathering every stage's LoRA weights on rank 0.

Between stages travels the tuple ``(hidden_states, attention_mask, position_ids, window)``:
each decoder layer rebuilds the causal mask and rotary embedding from the last two, so a
stage needs nothing but what it receives. ``window`` is the `loss.target_window` of the
micro-batch: the head projects only those positions to the vocabulary, as the one-process
forward does with ``logits_to_keep``.

Exact accumulation: ``PipelineEngine.train_batch()`` runs the step's ``grad_accum_steps``
micro-batches and, like the ZeRO engine, divides each loss by ``grad_accum_steps`` and
averages gradients over the data-parallel replicas. The loss function multiplies its summed
token loss by ``grad_accum_steps × data_parallel / step_tokens``, leaving every target token
of the global batch the weight ``1 / step_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragtune.finetune.backends import DeepSpeedEngineState, lr_factor, make_optimizer
from ragtune.finetune.batch_plan import BatchPlan
from ragtune.finetune.config import ConfigError, FinetuneConfig
from ragtune.finetune.deepspeed import Processes, deepspeed_config
from ragtune.finetune.loss import summed_cross_entropy, target_window
from ragtune.finetune.qlora import TrainableModel

__all__ = ["PipelineBackend", "pipeline_layers"]

Activations = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class _Embedding(nn.Module):
    def __init__(self, decoder: Any) -> None:
        super().__init__()
        self.embed_tokens = decoder.embed_tokens

    def forward(self, inputs: Activations) -> Activations:
        input_ids, attention_mask, position_ids, window = inputs
        return self.embed_tokens(input_ids), attention_mask, position_ids, window


class _DecoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, decoder: Any) -> None:
        super().__init__()
        self.layer, self.rotary_emb, self.config = layer, decoder.rotary_emb, decoder.config

    def forward(self, inputs: Activations) -> Activations:
        from transformers.masking_utils import create_causal_mask

        hidden, attention_mask, position_ids, window = inputs
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            cache=None,
            position_ids=position_ids,
        )
        rotary = self.rotary_emb(hidden, position_ids=position_ids)
        hidden = self.layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
        return hidden, attention_mask, position_ids, window


class _Head(nn.Module):
    def __init__(self, decoder: Any, lm_head: nn.Module) -> None:
        super().__init__()
        # A tied LM head shares the embedding's weight with the first stage; both are frozen
        # (LoRA trains neither), so the copies never need DeepSpeed's tied-weight all-reduce.
        self.norm, self.lm_head = decoder.norm, lm_head

    def forward(self, inputs: Activations) -> torch.Tensor:
        hidden, _, _, window = inputs
        return self.lm_head(self.norm(hidden[:, -int(window) :]))


def pipeline_layers(peft_model: Any) -> list[nn.Module]:
    """The PEFT-wrapped causal LM as the pipeline's flat list of layers."""
    causal_lm = peft_model.get_base_model()
    decoder = getattr(causal_lm, "model", None)
    parts = ("embed_tokens", "layers", "norm", "rotary_emb")
    if decoder is None or not all(hasattr(decoder, p) for p in parts) or not hasattr(causal_lm, "lm_head"):
        raise ConfigError(
            f"pipeline_parallel needs a Llama-family decoder (model.embed_tokens, layers, norm, rotary_emb and "
            f"lm_head); {type(causal_lm).__name__} is not one"
        )
    return [
        _Embedding(decoder),
        *(_DecoderLayer(layer, decoder) for layer in decoder.layers),
        _Head(decoder, causal_lm.lm_head),
    ]


class PipelineBackend(DeepSpeedEngineState):
    """A DeepSpeed `PipelineEngine` over the model's stages (ZeRO stage 0 or 1). Its step is
    `train_batch`: the trainer hands it all of a step's micro-batches at once."""

    def __init__(
        self, config: FinetuneConfig, plan: BatchPlan, trainable: TrainableModel, processes: Processes
    ) -> None:
        import deepspeed
        from deepspeed.pipe import PipelineModule

        self.peft_model, self.processes, self.plan = trainable.model, processes, plan
        layers = pipeline_layers(self.peft_model)
        decoder_layers = len(layers) - 2
        if plan.pipeline_parallel > decoder_layers:
            raise ConfigError(
                f"pipeline_parallel {plan.pipeline_parallel} exceeds the model's {decoder_layers} decoder layers: "
                f"every stage needs at least one"
            )
        self._loss_scale = 0.0  # grad_accum_steps × data_parallel / step_tokens, set per step
        self._weights: Iterator[float] = iter(())  # per micro-batch: 1, or 0 for an idle replica's eval pass
        self._loss_sum = 0.0  # this process's summed token loss over the micro-batches it ran
        pipeline = PipelineModule(
            layers=layers,
            num_stages=plan.pipeline_parallel,
            loss_fn=self._loss,
            # Balance the decoder layers (the embedding joins the first stage, the head the last).
            partition_method="type:_DecoderLayer",
            # Micro-batches are padded to their own longest example: shapes vary between them.
            dynamic_shape=True,
        )
        params = [p for p in pipeline.parameters() if p.requires_grad]
        self.module, _, _, _ = deepspeed.initialize(
            model=pipeline,
            model_parameters=params,
            optimizer=make_optimizer(config, params),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config)),
            config=deepspeed_config(config, plan, trainable.compute_dtype),
        )
        self.data_parallel_rank = int(self.module.grid.data_parallel_id)
        # The trained parameters of this stage, by their PEFT names (for the adapter).
        local = {id(p) for p in params}
        self._stage_params = {n: p for n, p in self.peft_model.named_parameters() if id(p) in local}
        if processes.is_main:
            ds = deepspeed_config(config, plan, trainable.compute_dtype)
            (config.output_dir / "deepspeed.json").write_text(json.dumps(ds, indent=2))

    def _loss(self, logits: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        targets, window = labels
        token_loss = summed_cross_entropy(logits, targets, int(window))
        self._loss_sum += next(self._weights) * float(token_loss.detach())
        return token_loss * self._loss_scale

    def _batches(self, batches: Sequence[dict[str, torch.Tensor]]) -> Iterator[tuple[Activations, Any]]:
        for batch in batches:
            window = torch.tensor([target_window(batch["labels"])])
            inputs = (batch["input_ids"], batch["attention_mask"], batch["position_ids"], window)
            yield inputs, (batch["labels"], window)

    def train_batch(self, batches: Sequence[dict[str, torch.Tensor]], step_tokens: int) -> float:
        """Forward and backward the step's micro-batches through the stages and update;
        returns the summed token loss this process computed (the last stage's; 0 elsewhere)."""
        self._loss_scale = self.plan.grad_accum_steps * self.plan.data_parallel / step_tokens
        self._weights, self._loss_sum = iter([1.0] * len(batches)), 0.0
        self.module.train_batch(self._batches(batches))
        return self._loss_sum

    def eval_loss_sum(self, batches: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> float:
        """The weighted summed token loss of ``batches``, without gradients (the last
        stage's; 0 elsewhere)."""
        self._loss_scale, self._weights, self._loss_sum = 1.0, iter(weights), 0.0
        self.module.eval_batch(self._batches(batches), num_micro_batches=len(batches))
        self.module.train()
        return self._loss_sum

    def save_adapter(self, directory: Path) -> None:
        import torch.distributed as dist

        # Every stage holds the LoRA weights of its own layers: gather them all on rank 0,
        # into its PEFT model (which holds every layer), and save that in PEFT's format.
        mine = {n: p.detach().cpu() for n, p in self._stage_params.items()}
        gathered: list[dict[str, torch.Tensor]] | None = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, mine)
        if self.processes.is_main:
            own = dict(self.peft_model.named_parameters())
            with torch.no_grad():
                for stage in gathered or []:
                    for name, value in stage.items():
                        own[name].copy_(value)
            self.peft_model.save_pretrained(directory)
