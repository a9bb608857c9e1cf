"""The QLoRA training run as a recipe: `Trainer` holds the run's state and its steps.

    from ragtune.finetune import FinetuneConfig, train
    result = train(FinetuneConfig.load("configs/finetune-smollm2.yaml"))   # what the CLI runs

    trainer = Trainer(config, resume=True)   # the same, step by step
    trainer.setup()                          # processes, model, examples, backend, checkpoint
    result = trainer.fit()                   # train_step / evaluate / save to max_steps, then the adapter

One optimizer step consumes ``global_batch`` examples: every process runs
``grad_accum_steps`` micro-batches of ``micro_batch`` examples (see `batch_plan`).
The examples come from `data.prepare_examples`, the optimizer step from a `backends.Backend`
(plain PyTorch or DeepSpeed), the checkpoint layout from `checkpoint`.

Exact gradient accumulation. The loss of a step is the mean over the target tokens of the
*whole* global batch: ``sum of token losses / target tokens in the step``. Each micro-batch
backpropagates its summed token loss divided by that step-wide count, so the accumulated
gradient equals the one of a single batch holding all the examples, however the examples
are split into micro-batches and processes. (Averaging each micro-batch's own mean and then
averaging the means weighs a token of a short answer more than one of a long answer, and
gives a different gradient.) Every process knows the step's examples, so the count needs no
communication.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.finetune.backends import Backend, make_backend
from ragtune.finetune.batch_plan import BatchPlan
from ragtune.finetune.checkpoint import (
    CHECKPOINTS,
    latest_checkpoint,
    rank_state_file,
    read_state,
    rng_state,
    run_defining,
    set_rng_state,
    writing,
)
from ragtune.finetune.config import ConfigError, FinetuneConfig
from ragtune.finetune.data import DataError, StepSampler, TokenizedExample, collate, prepare_examples
from ragtune.finetune.deepspeed import Processes, all_sum, barrier, init_processes
from ragtune.finetune.loss import summed_cross_entropy, target_window
from ragtune.finetune.metrics_log import MetricsLog
from ragtune.finetune.pipeline import PipelineBackend
from ragtune.finetune.qlora import TrainableModel, load_trainable_model

__all__ = ["StepStats", "TrainResult", "Trainer", "latest_checkpoint", "summed_token_loss", "train"]


@dataclass
class TrainResult:
    steps: int
    plan: dict[str, int]
    train_loss: float | None
    eval_loss: float | None
    adapter_dir: str
    merged_dir: str | None
    trainable_params: int
    base_params: int
    base_linear_bytes: int
    base_weight_bytes: int
    peak_memory_bytes: int
    seconds: float
    tokens_per_second: float
    examples: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


@dataclass(frozen=True)
class StepStats:
    """One optimizer step, as `Trainer.train_step` reports it (sums over all processes)."""

    step: int  # the step just taken (1-based)
    loss: float  # per target token of the global batch
    lr: float  # the learning rate it ran with
    grad_norm: float | None
    target_tokens: int
    input_tokens: int
    seconds: float


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the loss, and a step's share of each process -----------------------------------


def summed_token_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the cross-entropy over the batch's target tokens (labels != -100).

    Rows are left-padded (`collate`), so all targets sit in the last positions: logits are
    computed for those only (``logits_to_keep``), sparing the vocabulary projection of the
    prompt, by far the largest tensor of a RAG example.
    """
    window = target_window(batch["labels"])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=window,
        use_cache=False,
    )
    return summed_cross_entropy(out.logits, batch["labels"], window)


def micro_batches(step_examples: Sequence[int], plan: BatchPlan, rank: int) -> list[list[int]]:
    """A replica's share of a step: micro-batch ``m`` of data-parallel rank ``r`` is slice
    ``(m × data_parallel + r) × micro_batch`` of the step's examples (the pipeline stages
    of one replica all take the same share)."""
    return [
        list(step_examples[(m * plan.data_parallel + rank) * plan.micro_batch :][: plan.micro_batch])
        for m in range(plan.grad_accum_steps)
    ]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def held_out_loss(
    backend: Backend | PipelineBackend,
    examples: Sequence[TokenizedExample],
    plan: BatchPlan,
    pad_id: int,
    processes: Processes,
    device: torch.device,
) -> float | None:
    """Mean loss per target token over the held-out examples (each replica takes a share)."""
    if not examples:
        return None
    replicas, rank = plan.data_parallel, backend.data_parallel_rank
    mine = list(examples[rank::replicas])
    # Every process runs the same number of forward passes: under ZeRO-3 each one gathers
    # parameters from all processes, and pipeline stages pass activations to each other, so
    # a process with fewer would leave the others waiting.
    passes = math.ceil(math.ceil(len(examples) / replicas) / plan.micro_batch)
    chunks = [mine[n * plan.micro_batch : (n + 1) * plan.micro_batch] for n in range(passes)]
    # An idle replica takes part with a repeat of the first example, weighted 0.
    batches = [_to(collate(chunk or examples[:1], pad_id), device) for chunk in chunks]
    weights = [1.0 if chunk else 0.0 for chunk in chunks]
    if isinstance(backend, PipelineBackend):
        loss = backend.eval_loss_sum(batches, weights)
    else:
        backend.module.eval()
        loss = sum(w * float(summed_token_loss(backend.module, b)) for b, w in zip(batches, weights))
        backend.module.train()
    (total_loss,) = all_sum([loss], processes)
    return total_loss / sum(e.target_tokens for e in examples)


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step, save a
    checkpoint and exit; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        _say("stopping after this step; a checkpoint will be saved (Ctrl-C again to abort at once)")

    @contextmanager
    def installed(self) -> Iterator[_StopOnSignal]:
        # Signal handlers can only be set from the main thread (not e.g. from a test's worker).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the recipe ---------------------------------------------------------------------------


class Trainer:
    """One fine-tuning run (a recipe, as torchtune's): `setup` builds what the run needs,
    `train_step` takes one optimizer step, `evaluate` measures the held-out loss, `save` and
    `load` checkpoint the state; `fit` drives them to ``max_steps``."""

    # set by setup()
    processes: Processes
    plan: BatchPlan
    device: torch.device
    trainable: TrainableModel
    pad_id: int
    train_set: list[TokenizedExample]
    eval_set: list[TokenizedExample]
    counts: dict[str, int]  # examples built, dropped as too long, train, eval
    sampler: StepSampler
    backend: Backend | PipelineBackend
    log: MetricsLog

    def __init__(self, config: FinetuneConfig, resume: bool = False, merge: bool = False) -> None:
        self.config, self.resume, self.merge = config, resume, merge
        self.step = 0  # optimizer steps taken
        self.loss: float | None = None  # the last step's
        self.tokens_seen, self.train_seconds = 0, 0.0
        self.started = time.perf_counter()

    def setup(self) -> None:
        """Processes and batch plan, output dir, model, examples, backend; with ``resume``,
        the newest checkpoint. Checks what it can before loading the model."""
        config, out = self.config, self.config.output_dir
        if not Path(config.data).expanduser().exists():
            raise DataError(f"training data {config.data} not found: give a .jsonl file or a BEIR dataset directory")
        config.check_installed()
        self.processes = processes = init_processes(config.uses_deepspeed)
        self.plan = config.batch_plan(processes.world_size)
        self.device = processes.device()
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None and not self.resume:
            # Pruning keeps the newest step numbers: an old run's checkpoints would outlive this run's.
            raise ConfigError(
                f"{out} already holds checkpoints ({checkpoint.name}) of an earlier run: pass --resume to "
                "continue it, or choose another output_dir"
            )
        if self.resume and checkpoint is None:
            _say(f"--resume: no checkpoint in {out / CHECKPOINTS}; starting from step 0")
        if processes.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(config.model_dump_json(indent=2))
            _say(f"batch plan: {self.plan.describe()}")
        self.started = time.perf_counter()

        # Model: frozen (quantized) base + LoRA. Seeded first: the LoRA init draws from the RNG.
        seed_everything(config.seed)
        # A pipeline stage needs only its own layers on its device: the model loads into CPU
        # memory and DeepSpeed moves each process's stage (deepspeed.initialize).
        load_device = torch.device("cpu") if config.pipeline_parallel > 1 else self.device
        self.trainable = trainable = load_trainable_model(config, load_device)
        tokenizer = trainable.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if processes.is_main:
            _say(trainable.describe(config.quant))

        self.train_set, self.eval_set, self.counts = prepare_examples(config, tokenizer, processes)
        if processes.is_main:
            c = self.counts
            _say(
                f"examples: {c['train']} train, {c['eval']} held out, {c['too_long']} dropped (cited chunk over max_seq_len)"
            )
        self.sampler = StepSampler(len(self.train_set), self.plan.global_batch, config.seed, config.shuffle)
        self.backend = (
            PipelineBackend(config, self.plan, trainable, processes)
            if config.pipeline_parallel > 1
            else make_backend(config, self.plan, trainable, processes)
        )
        if checkpoint is not None:
            self.load(checkpoint)
            if processes.is_main:
                _say(f"resumed from {checkpoint} (step {self.step})")
        self.log = MetricsLog(out / "metrics.jsonl", processes.is_main, self.step)
        trainable.model.train()

    def train_step(self) -> StepStats:
        """One optimizer step on the sampler's next global batch (this process's micro-batches)."""
        started = time.perf_counter()
        lr = self.backend.lr
        examples = [self.train_set[i] for i in self.sampler.next_step()]  # the whole global batch
        step_tokens = sum(e.target_tokens for e in examples)  # the loss's denominator, on every rank
        batches = [
            _to(collate([examples[i] for i in ids], self.pad_id), self.device)
            for ids in micro_batches(range(len(examples)), self.plan, self.backend.data_parallel_rank)
        ]
        if isinstance(self.backend, PipelineBackend):
            # DeepSpeed's pipeline engine runs the micro-batches through its stages itself,
            # with the same exact weighting (see `pipeline`).
            loss_sum = self.backend.train_batch(batches, step_tokens)
        else:
            loss_sum = 0.0
            for batch in batches:
                token_loss = summed_token_loss(self.backend.module, batch)
                # Exact accumulation (module docstring): every target token of the global batch
                # weighs 1 / step_tokens, so the summed gradient is the whole batch's.
                self.backend.backward(token_loss, step_tokens)
                loss_sum += float(token_loss.detach())
        grad_norm = self.backend.step()
        self.step += 1

        (total_loss,) = all_sum([loss_sum], self.processes)  # each replica's share, counted once
        self.loss = total_loss / step_tokens
        input_tokens = sum(len(e.input_ids) for e in examples)
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        self.tokens_seen += input_tokens
        return StepStats(self.step, self.loss, lr, grad_norm, step_tokens, input_tokens, seconds)

    def evaluate(self) -> float | None:
        """The held-out loss per target token, logged (None without held-out examples)."""
        loss = held_out_loss(self.backend, self.eval_set, self.plan, self.pad_id, self.processes, self.device)
        if loss is not None:
            self.log.write(step=self.step, eval_loss=loss)
        return loss

    def save(self) -> Path:
        """Checkpoint the run after the current step (see `checkpoint`); returns its directory."""
        with writing(self.config.output_dir, self.step, self.processes) as (directory, final):
            state = {
                "step": self.step,
                "sampler": self.sampler.state_dict(),
                "rng": rng_state(),
                "config": run_defining(self.config),
            }
            state |= self.backend.save(directory, self.step)
            self.backend.save_adapter(directory / "adapter")
            torch.save(state, directory / rank_state_file(self.processes))
        return final

    def load(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``: model, optimizer, schedule, data position, RNG."""
        state = read_state(checkpoint, self.processes, self.config)
        self.backend.load(checkpoint, state)
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def fit(self) -> TrainResult:
        """Train to ``max_steps``, logging, evaluating and saving on the way; then evaluate,
        write the adapter (and with ``merge`` the merged model) and run.json. Ctrl-C or
        SIGTERM stops after the current step with a checkpoint (``interrupted``)."""
        from tqdm import tqdm

        config, main = self.config, self.processes.is_main
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            disable=not main,
            desc="fine-tuning",
            unit="step",
            file=sys.stderr,
        )
        interrupted, saved = False, None
        with _StopOnSignal().installed() as stop:
            while self.step < config.max_steps and not interrupted:
                s = self.train_step()
                tokens_per_s = s.input_tokens / s.seconds
                if s.step % config.log_every == 0 or s.step == config.max_steps:
                    self.log.write(
                        step=s.step,
                        loss=s.loss,
                        lr=s.lr,
                        grad_norm=s.grad_norm,
                        target_tokens=s.target_tokens,
                        tokens_per_s=tokens_per_s,
                    )
                bar.set_postfix(loss=f"{s.loss:.4f}", tok_s=f"{tokens_per_s:.0f}", lr=f"{s.lr:.2e}")
                bar.update(1)
                if config.eval_every and s.step % config.eval_every == 0 and s.step < config.max_steps:
                    self.evaluate()
                interrupted = bool(all_sum([float(stop.requested)], self.processes)[0])
                if interrupted or (config.save_every and s.step % config.save_every == 0) or s.step == config.max_steps:
                    saved = self.save()
        bar.close()
        if interrupted:
            if main:
                _say(f"interrupted: checkpoint {saved}; continue with --resume")
            return self._result(eval_loss=None, merged_dir=None, interrupted=True)

        eval_loss = self.evaluate()
        out = config.output_dir
        self.backend.save_adapter(out / "adapter")
        merged_dir = None
        if main:
            self.log.plot(out / "loss.png")
            if self.merge:
                from ragtune.finetune.export import merge_adapter

                merged_dir = merge_adapter(self.trainable.base_dir, out / "adapter", out / "merged")
        barrier(self.processes)
        result = self._result(eval_loss, merged_dir)
        if main:
            (out / "run.json").write_text(json.dumps(asdict(result), indent=2))
            _say(f"adapter saved to {out / 'adapter'}" + (f"; merged model in {merged_dir}" if merged_dir else ""))
        return result

    def _result(self, eval_loss: float | None, merged_dir: Path | None, interrupted: bool = False) -> TrainResult:
        t = self.trainable
        return TrainResult(
            steps=self.step,
            plan=asdict(self.plan),
            train_loss=self.loss,
            eval_loss=eval_loss,
            adapter_dir=str(self.config.output_dir / "adapter"),
            merged_dir=str(merged_dir) if merged_dir else None,
            trainable_params=t.trainable_params,
            base_params=t.base_params,
            base_linear_bytes=t.base_linear_bytes,
            base_weight_bytes=t.base_weight_bytes,
            peak_memory_bytes=_peak_memory_bytes(self.device),
            seconds=round(time.perf_counter() - self.started, 2),
            tokens_per_second=round(self.tokens_seen / self.train_seconds, 1) if self.train_seconds else 0.0,
            examples=self.counts,
            interrupted=interrupted,
        )


def train(config: FinetuneConfig, resume: bool = False, merge: bool = False) -> TrainResult:
    """Run (or with ``resume`` continue) the fine-tuning described by ``config``."""
    trainer = Trainer(config, resume=resume, merge=merge)
    trainer.setup()
    return trainer.fit()
