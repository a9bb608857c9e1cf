"""The QLoRA training run, top to bottom: plan, model, data, loop, checkpoints, export.

    from ragtune.finetune import FinetuneConfig, train
    result = train(FinetuneConfig.load("configs/finetune-smollm2.yaml"))

One optimizer step consumes ``global_batch`` examples: every process runs
``grad_accum_steps`` micro-batches of ``micro_batch`` examples (see `batch_plan`).

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
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ragtune.finetune.batch_plan import BatchPlan
from ragtune.finetune.config import ConfigError, FinetuneConfig
from ragtune.finetune.data import (
    IGNORE_INDEX,
    DataError,
    TokenizedExample,
    build_rag_examples,
    collate,
    data_fingerprint,
    load_rag_examples,
    read_examples,
    save_rag_examples,
    tokenize_example,
)
from ragtune.finetune.deepspeed import Processes, all_sum, barrier, deepspeed_config, init_processes
from ragtune.finetune.qlora import TrainableModel, load_trainable_model

__all__ = ["TrainResult", "latest_checkpoint", "summed_token_loss", "train"]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
KEEP_CHECKPOINTS = 2


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


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the loss ------------------------------------------------------------------------


def summed_token_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the cross-entropy over the batch's target tokens (labels != -100).

    Rows are left-padded (`collate`), so all targets sit in the last positions: logits are
    computed for those only (``logits_to_keep``), sparing the vocabulary projection of the
    prompt, by far the largest tensor of a RAG example.
    """
    labels = batch["labels"]
    keep = int((labels[:, 1:] != IGNORE_INDEX).sum(1).max()) + 1
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    targets = labels[:, labels.shape[1] - keep + 1 :]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


# --- data order ----------------------------------------------------------------------


class StepSampler:
    """Which examples each optimizer step gets: a fresh permutation every epoch (seeded by
    ``seed + epoch``), consumed ``global_batch`` at a time. Its state is two integers, so a
    resumed run continues with exactly the examples the interrupted one would have seen."""

    def __init__(self, size: int, global_batch: int, seed: int, shuffle: bool) -> None:
        self.size, self.global_batch, self.seed, self.shuffle = size, global_batch, seed, shuffle
        self.epoch, self.cursor = 0, 0

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def next_step(self) -> list[int]:
        chosen: list[int] = []
        while len(chosen) < self.global_batch:
            order = self._order(self.epoch)
            take = order[self.cursor : self.cursor + self.global_batch - len(chosen)]
            chosen += take
            self.cursor += len(take)
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
        return chosen

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def micro_batches(step_examples: Sequence[int], plan: BatchPlan, rank: int) -> list[list[int]]:
    """This process's share of a step: micro-batch ``m`` of rank ``r`` is slice
    ``(m × devices + r) × micro_batch`` of the step's examples."""
    return [
        list(step_examples[(m * plan.devices + rank) * plan.micro_batch :][: plan.micro_batch])
        for m in range(plan.grad_accum_steps)
    ]


def accumulate_gradients(
    forward: Any, engine: Any, batches: Sequence[dict[str, torch.Tensor]], step_tokens: int, plan: BatchPlan
) -> float:
    """Backpropagate one optimizer step's micro-batches (this process's share); returns
    their summed token loss. Every target token of the global batch weighs
    ``1 / step_tokens``, so the summed gradient is the full batch's (module docstring)."""
    loss_sum = 0.0
    for batch in batches:
        token_loss = summed_token_loss(forward, batch)
        if engine is not None:
            # DeepSpeed divides what backward() gets by grad_accum_steps and averages
            # gradients over processes: multiplying by both first leaves the exact weighting.
            engine.backward(token_loss * (plan.grad_accum_steps * plan.devices / step_tokens))
            engine.step()  # DeepSpeed applies the update only at the accumulation boundary
        else:
            (token_loss / step_tokens).backward()
        loss_sum += float(token_loss.detach())
    return loss_sum


# --- examples ------------------------------------------------------------------------


def _retriever(config: FinetuneConfig) -> tuple[Callable[[list[str], int], list[list[Any]]] | None, Callable[[], None]]:
    """Retrieval for building prompts: a BEIR dataset's corpus indexed in a scratch store,
    or the ragtune index named by ``config.index``; (None, no-op) for plain JSONL."""
    from ragtune.config import Settings

    data = Path(config.data).expanduser()
    if data.is_dir():
        from contextlib import ExitStack

        from ragtune.eval.datasets import load_beir
        from ragtune.eval.runner import indexed_dataset

        stack = ExitStack()
        pipeline = stack.enter_context(indexed_dataset(load_beir(data), Settings()))
    elif config.index:
        from ragtune.rag import Pipeline

        stack = None
        pipeline = Pipeline.from_settings(Settings(data_dir=Path(config.index).expanduser()))
    else:
        return None, lambda: None

    def retrieve(questions: list[str], top_k: int) -> list[list[Any]]:
        return pipeline.retriever.run_many(questions, top_k=top_k)

    return retrieve, (stack.close if stack is not None else pipeline.close)


def prepare_examples(
    config: FinetuneConfig, tokenizer: Any, processes: Processes
) -> tuple[list[TokenizedExample], list[TokenizedExample], dict[str, int]]:
    """Build (once, on rank 0, cached in output_dir) and tokenize the RAG-shaped examples;
    split off the held-out evaluation share (seeded)."""
    cache = config.output_dir / "examples.jsonl"
    stamp = config.output_dir / "examples.fingerprint"
    failure: DataError | None = None
    # Only rank 0 builds, so only it reads the data to fingerprint it.
    fingerprint = data_fingerprint(config.data, config.top_k, config.index, config.seed) if processes.is_main else ""
    if processes.is_main and not (cache.is_file() and stamp.is_file() and stamp.read_text() == fingerprint):
        try:
            raw = read_examples(config.data)
            retrieve, close = _retriever(config)
            try:
                built = build_rag_examples(raw, retrieve, config.top_k, config.seed)
            finally:
                close()
            save_rag_examples(built, cache)
            stamp.write_text(fingerprint)
            _say(f"built {len(built)} RAG examples from {len(raw)} rows of {config.data} -> {cache}")
        except DataError as exc:
            failure = exc
    # The other processes wait for rank 0 here: tell them when it failed, or they wait forever.
    if all_sum([float(failure is not None)], processes)[0]:
        raise failure or DataError(f"rank 0 could not build the examples from {config.data}; see its message")
    rag = load_rag_examples(cache)
    tokenized = [tokenize_example(e, tokenizer, config.max_seq_len) for e in rag]
    kept = [t for t in tokenized if t is not None]
    if not kept:
        raise ConfigError(f"no example fits max_seq_len {config.max_seq_len} with its cited chunk; raise max_seq_len")
    order = list(range(len(kept)))
    random.Random(config.seed).shuffle(order)
    n_eval = min(len(kept) - 1, round(len(kept) * config.eval_fraction)) if config.eval_fraction else 0
    eval_ids, train_ids = set(order[:n_eval]), order[n_eval:]
    train_set = [kept[i] for i in sorted(train_ids)]
    eval_set = [kept[i] for i in sorted(eval_ids)]
    counts = {"built": len(rag), "too_long": len(rag) - len(kept), "train": len(train_set), "eval": len(eval_set)}
    return train_set, eval_set, counts


# --- optimizer and schedule ------------------------------------------------------------


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


# --- checkpoints ----------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Settings a resumed run may change: when to stop, save, log and evaluate, and where it runs.
_RESUMABLE_CHANGES = {"max_steps", "save_every", "log_every", "eval_every", "output_dir", "cache_dir", "devices"}


def _run_defining(config: FinetuneConfig) -> dict[str, Any]:
    """The settings a checkpoint belongs to (a resume must keep them)."""
    return {k: v for k, v in json.loads(config.model_dump_json()).items() if k not in _RESUMABLE_CHANGES}


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir/checkpoints`` (None when there is none)."""
    root = output_dir / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _save_adapter(trainable: TrainableModel, engine: Any, directory: Path, processes: Processes) -> None:
    """The LoRA weights in PEFT's format (ZeRO-3 shards parameters: gather them first)."""
    model = trainable.model
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if processes.is_main:
                model.save_pretrained(directory)
        return
    if processes.is_main:
        model.save_pretrained(directory)


def save_checkpoint(
    step: int,
    trainable: TrainableModel,
    optimizer: Any,
    scheduler: Any,
    engine: Any,
    sampler: StepSampler,
    processes: Processes,
    config: FinetuneConfig,
) -> Path:
    """Adapter, optimizer, schedule, RNG and data position, written atomically."""
    root = config.output_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    partial = root / f".step-{step:06d}.partial"
    if processes.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier(processes)
    state = {"step": step, "sampler": sampler.state_dict(), "rng": _rng_state(), "config": _run_defining(config)}
    if engine is not None:
        # DeepSpeed saves its own (sharded) optimizer and schedule; every rank writes its shard.
        engine.save_checkpoint(
            str(partial), tag="deepspeed", client_state={"step": step}, exclude_frozen_parameters=True
        )
    else:
        state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    _save_adapter(trainable, engine, partial / "adapter", processes)
    torch.save(state, partial / f"rank{processes.rank}-{STATE_FILE}")
    barrier(processes)
    if processes.is_main:
        torch.save({"step": step, "world_size": processes.world_size}, partial / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(processes)
    return final


def load_checkpoint(
    checkpoint: Path,
    trainable: TrainableModel,
    optimizer: Any,
    scheduler: Any,
    engine: Any,
    sampler: StepSampler,
    processes: Processes,
    config: FinetuneConfig,
) -> int:
    """Restore what `save_checkpoint` wrote; returns the step it was taken after."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = torch.load(checkpoint / STATE_FILE, weights_only=False)
    if meta["world_size"] != processes.world_size:
        raise ConfigError(
            f"{checkpoint} was written by {meta['world_size']} process(es), this run has {processes.world_size}; "
            "resume with the same number of processes"
        )
    state = torch.load(checkpoint / f"rank{processes.rank}-{STATE_FILE}", weights_only=False)
    changed = {k: (v, now) for k, v in state["config"].items() if (now := _run_defining(config).get(k)) != v}
    if changed:
        described = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(
            f"{checkpoint} was trained with other settings ({described}); resume with the same ones or start a new output_dir"
        )
    if engine is not None:
        engine.load_checkpoint(str(checkpoint), tag="deepspeed", load_module_strict=False)
    else:
        set_peft_model_state_dict(trainable.model, load_file(checkpoint / "adapter" / "adapter_model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    _set_rng_state(state["rng"])
    return int(state["step"])


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step, save a
    checkpoint and exit; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

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


# --- logs -------------------------------------------------------------------------------


def _parsed(line: str) -> dict[str, Any] | None:
    """A metrics line, or None for one a crash cut short."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class MetricsLog:
    """``metrics.jsonl`` in output_dir: one line per logged step (and per eval). A resumed
    run first drops the lines after its checkpoint, so the log reads as one run."""

    def __init__(self, path: Path, enabled: bool, resume_step: int) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.is_file():
            kept = "".join(
                line + "\n"
                for line in path.read_text().splitlines()
                if (row := _parsed(line)) and row["step"] <= resume_step
            )
            tmp = path.with_suffix(".tmp")
            tmp.write_text(kept)
            tmp.replace(path)

    def write(self, **row: Any) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def plot(self, png: Path) -> None:
        """Train (and eval) loss against step, as a PNG."""
        if not self.enabled or not self.path.is_file():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [row for line in self.path.read_text().splitlines() if (row := _parsed(line))]
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        held = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train), label="train loss")
        if held:
            ax.plot(*zip(*held), "o-", label="eval loss (held out)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss per target token")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    forward: Any,
    examples: Sequence[TokenizedExample],
    micro_batch: int,
    pad_id: int,
    processes: Processes,
    device: torch.device,
) -> float | None:
    """Mean loss per target token over the held-out examples (each process takes a share)."""
    if not examples:
        return None
    forward.eval()
    mine = list(examples[processes.rank :: processes.world_size])
    # Every process runs the same number of forward passes: under ZeRO-3 each one gathers
    # parameters from all processes, so a process with fewer would leave the others waiting.
    passes = math.ceil(math.ceil(len(examples) / processes.world_size) / micro_batch)
    loss = 0.0
    for n in range(passes):
        chunk = mine[n * micro_batch : (n + 1) * micro_batch]
        weight = 1.0 if chunk else 0.0  # an idle process takes part with a zero-weighted pass
        loss += weight * float(summed_token_loss(forward, _to(collate(chunk or examples[:1], pad_id), device)))
    forward.train()
    total_loss, total_tokens = all_sum([loss, float(sum(e.target_tokens for e in mine))], processes)
    return total_loss / total_tokens


# --- the run -----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: FinetuneConfig, resume: bool = False, merge: bool = False) -> TrainResult:
    """Run (or with ``resume`` continue) the fine-tuning described by ``config``."""
    from tqdm import tqdm

    # Fail before minutes of model loading.
    if not Path(config.data).expanduser().exists():
        raise DataError(f"training data {config.data} not found: give a .jsonl file or a BEIR dataset directory")
    config.check_installed()
    processes = init_processes(config.deepspeed > 0)
    plan = config.batch_plan(processes.world_size)
    device = processes.device()
    out = config.output_dir
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        # Pruning keeps the newest step numbers: an old run's checkpoints would outlive this run's.
        raise ConfigError(
            f"{out} already holds checkpoints ({checkpoint.name}) of an earlier run: pass --resume to "
            "continue it, or choose another output_dir"
        )
    if resume and checkpoint is None:
        _say(f"--resume: no checkpoint in {out / CHECKPOINTS}; starting from step 0")
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config.model_dump_json(indent=2))
        _say(f"batch plan: {plan.describe()}")
    started = time.perf_counter()

    # Model: frozen (quantized) base + LoRA. Seeded first: the LoRA init draws from the RNG.
    seed_everything(config.seed)
    trainable = load_trainable_model(config, device)
    model, tokenizer = trainable.model, trainable.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if processes.is_main:
        _say(
            f"model {trainable.base_dir.name}: quant {config.quant}, compute {str(trainable.compute_dtype).removeprefix('torch.')}, "
            f"LoRA trains {trainable.trainable_params:,} parameters ({100 * trainable.trainable_params / trainable.base_params:.2f}% of "
            f"{trainable.base_params:,}); frozen weights {trainable.base_weight_bytes / 2**20:.1f} MiB, of which linear layers "
            f"{trainable.base_linear_bytes / 2**20:.1f} MiB"
        )

    train_set, eval_set, counts = prepare_examples(config, tokenizer, processes)
    if processes.is_main:
        _say(
            f"examples: {counts['train']} train, {counts['eval']} held out, {counts['too_long']} dropped (cited chunk over max_seq_len)"
        )
    sampler = StepSampler(len(train_set), plan.global_batch, config.seed, config.shuffle)

    # Optimizer, schedule and (for DeepSpeed) the engine that owns both.
    params = [p for p in model.parameters() if p.requires_grad]
    engine = None
    if config.deepspeed:
        import deepspeed

        ds_config = deepspeed_config(config, plan, trainable.compute_dtype)
        client_optimizer = None if config.offload_optimizer == "cpu" else make_optimizer(config, params)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=client_optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config)),
            config=ds_config,
        )
        if processes.is_main:
            (out / "deepspeed.json").write_text(json.dumps(ds_config, indent=2))
    else:
        optimizer = make_optimizer(config, params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    forward = engine if engine is not None else model

    step = 0
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, trainable, optimizer, scheduler, engine, sampler, processes, config)
        if processes.is_main:
            _say(f"resumed from {checkpoint} (step {step})")
    log = MetricsLog(out / "metrics.jsonl", processes.is_main, step)
    model.train()

    loss = eval_loss = None
    tokens_seen, train_seconds = 0, 0.0
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        disable=not processes.is_main,
        desc="fine-tuning",
        unit="step",
        file=sys.stderr,
    )
    with _StopOnSignal().installed() as stop:
        while step < config.max_steps:
            step_started = time.perf_counter()
            lr = engine.get_lr()[0] if engine is not None else scheduler.get_last_lr()[0]
            examples = [train_set[i] for i in sampler.next_step()]  # the whole global batch
            step_tokens = sum(e.target_tokens for e in examples)  # the loss's denominator, on every rank
            batches = [
                _to(collate([examples[i] for i in ids], pad_id), device)
                for ids in micro_batches(range(len(examples)), plan, processes.rank)
            ]
            loss_sum = accumulate_gradients(forward, engine, batches, step_tokens, plan)
            input_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            if engine is not None:
                grad_norm = engine.get_global_grad_norm()
            else:
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(
                        params, config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
                    )
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1

            total_loss, total_inputs = all_sum([loss_sum, float(input_tokens)], processes)
            loss = total_loss / step_tokens
            elapsed = time.perf_counter() - step_started
            train_seconds += elapsed
            tokens_seen += int(total_inputs)
            if step % config.log_every == 0 or step == config.max_steps:
                log.write(
                    step=step,
                    loss=loss,
                    lr=lr,
                    grad_norm=None if grad_norm is None else float(grad_norm),
                    target_tokens=step_tokens,
                    tokens_per_s=total_inputs / elapsed,
                )
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{total_inputs / elapsed:.0f}", lr=f"{lr:.2e}")
            bar.update(1)
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                eval_loss = evaluate(forward, eval_set, plan.micro_batch, pad_id, processes, device)
                if eval_loss is not None:
                    log.write(step=step, eval_loss=eval_loss)
            interrupted = bool(all_sum([float(stop.requested)], processes)[0])
            if interrupted or (config.save_every and step % config.save_every == 0) or step == config.max_steps:
                saved = save_checkpoint(step, trainable, optimizer, scheduler, engine, sampler, processes, config)
                if interrupted:
                    bar.close()
                    if processes.is_main:
                        _say(f"interrupted: checkpoint {saved}; continue with --resume")
                    return _result(
                        step,
                        plan,
                        trainable,
                        loss,
                        None,
                        out,
                        None,
                        counts,
                        started,
                        tokens_seen,
                        train_seconds,
                        device,
                        interrupted=True,
                    )
    bar.close()

    eval_loss = evaluate(forward, eval_set, plan.micro_batch, pad_id, processes, device)
    if eval_loss is not None:
        log.write(step=step, eval_loss=eval_loss)
    adapter_dir = out / "adapter"
    _save_adapter(trainable, engine, adapter_dir, processes)
    merged_dir = None
    if processes.is_main:
        log.plot(out / "loss.png")
        if merge:
            from ragtune.finetune.export import merge_adapter

            merged_dir = merge_adapter(trainable.base_dir, adapter_dir, out / "merged")
    barrier(processes)
    result = _result(
        step, plan, trainable, loss, eval_loss, out, merged_dir, counts, started, tokens_seen, train_seconds, device
    )
    if processes.is_main:
        (out / "run.json").write_text(json.dumps(asdict(result), indent=2))
        _say(f"adapter saved to {adapter_dir}" + (f"; merged model in {merged_dir}" if merged_dir else ""))
    return result


def _result(
    step: int,
    plan: BatchPlan,
    trainable: TrainableModel,
    loss: float | None,
    eval_loss: float | None,
    out: Path,
    merged: Path | None,
    counts: dict[str, int],
    started: float,
    tokens: int,
    train_seconds: float,
    device: torch.device,
    interrupted: bool = False,
) -> TrainResult:
    return TrainResult(
        steps=step,
        plan=asdict(plan),
        train_loss=loss,
        eval_loss=eval_loss,
        adapter_dir=str(out / "adapter"),
        merged_dir=str(merged) if merged else None,
        trainable_params=trainable.trainable_params,
        base_params=trainable.base_params,
        base_linear_bytes=trainable.base_linear_bytes,
        base_weight_bytes=trainable.base_weight_bytes,
        peak_memory_bytes=_peak_memory_bytes(device),
        seconds=round(time.perf_counter() - started, 2),
        tokens_per_second=round(tokens / train_seconds, 1) if train_seconds else 0.0,
        examples=counts,
        interrupted=interrupted,
    )
