"""Checkpoints of a run: ``output_dir/checkpoints/step-NNNNNN``, written atomically, the
newest `KEEP_CHECKPOINTS` kept. One holds

* ``adapter/``: the LoRA weights in PEFT's format;
* ``rank{R}-trainer_state.pt``, one per process: the step, the data position, the RNG
  states, the settings the run is defined by and, for plain PyTorch, the optimizer and
  schedule state;
* ``deepspeed/``: DeepSpeed's own (sharded) optimizer and schedule, in DeepSpeed runs;
* ``trainer_state.pt``: the step and the process count. Rank 0 writes it last, so a
  directory without it is incomplete and never resumed from.

What goes into a checkpoint is the trainer's (`Trainer.save`) and its backend's
(`Backend.save`); this module lays out, commits and checks them.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ragtune.finetune.config import ConfigError, FinetuneConfig
from ragtune.finetune.deepspeed import Processes, barrier

__all__ = ["latest_checkpoint", "read_state", "rng_state", "run_defining", "set_rng_state", "writing"]

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
KEEP_CHECKPOINTS = 2

# Settings a resumed run may change: when to stop, save, log and evaluate, and where it runs.
_RESUMABLE_CHANGES = {"max_steps", "save_every", "log_every", "eval_every", "output_dir", "cache_dir", "devices"}


def run_defining(config: FinetuneConfig) -> dict[str, Any]:
    """The settings a checkpoint belongs to (a resume must keep them)."""
    return {k: v for k, v in json.loads(config.model_dump_json()).items() if k not in _RESUMABLE_CHANGES}


def rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _complete(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir/checkpoints`` (None when there is none)."""
    done = _complete(output_dir / CHECKPOINTS)
    return done[-1] if done else None


def rank_state_file(processes: Processes) -> str:
    return f"rank{processes.rank}-{STATE_FILE}"


@contextmanager
def writing(output_dir: Path, step: int, processes: Processes) -> Iterator[tuple[Path, Path]]:
    """``(partial, final)``: every process writes its part of the checkpoint of ``step``
    into ``partial``; when the block ends rank 0 commits it as ``final`` and drops the
    checkpoints older than the newest `KEEP_CHECKPOINTS`. An error leaves only ``partial``."""
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    partial = root / f".step-{step:06d}.partial"
    if processes.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier(processes)
    yield partial, final
    barrier(processes)
    if processes.is_main:
        torch.save({"step": step, "world_size": processes.world_size}, partial / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in _complete(root)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(processes)


def read_state(checkpoint: Path, processes: Processes, config: FinetuneConfig) -> dict[str, Any]:
    """This process's trainer state from ``checkpoint``, once the checkpoint is known to
    belong to this run: the same process count and run-defining settings (ConfigError)."""
    meta = torch.load(checkpoint / STATE_FILE, weights_only=False)
    if meta["world_size"] != processes.world_size:
        raise ConfigError(
            f"{checkpoint} was written by {meta['world_size']} process(es), this run has {processes.world_size}; "
            "resume with the same number of processes"
        )
    state: dict[str, Any] = torch.load(checkpoint / rank_state_file(processes), weights_only=False)
    changed = {k: (v, now) for k, v in state["config"].items() if (now := run_defining(config).get(k)) != v}
    if changed:
        described = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(
            f"{checkpoint} was trained with other settings ({described}); resume with the same ones or start a new output_dir"
        )
    return state
