"""QLoRA fine-tuning of the answering model (``ragtune finetune``).

Stages: `batch_plan` (the global-batch rule), `config` (the run's YAML), `data` (RAG-shaped
examples in the generator's own prompt, built once per run), `qlora` (NF4/bitsandbytes
base + PEFT LoRA), `trainer` (the `Trainer` recipe: the loop, exact accumulation),
`backends` (plain PyTorch or DeepSpeed under the loop), `pipeline` (DeepSpeed's pipeline
engine over the model's stages), `loss` (the summed token loss both compute), `checkpoint`
(layout and resume checks), `metrics_log` (metrics.jsonl, loss.png), `deepspeed` (processes
and the DeepSpeed config), `export` (merge).
"""

from ragtune.finetune.batch_plan import BatchPlan, BatchPlanError, plan_batch
from ragtune.finetune.config import ConfigError, FinetuneConfig

__all__ = ["BatchPlan", "BatchPlanError", "ConfigError", "FinetuneConfig", "plan_batch", "train"]


def __getattr__(name: str):  # the trainer imports torch and transformers: load it on first use
    if name == "train":
        from ragtune.finetune.trainer import train

        return train
    raise AttributeError(name)
