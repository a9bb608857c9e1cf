"""``metrics.jsonl`` and ``loss.png`` in a run's output_dir: one JSON line per logged step
(``step, loss, lr, grad_norm, target_tokens, tokens_per_s``) and per held-out evaluation
(``step, eval_loss``), and the plot of both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]


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
