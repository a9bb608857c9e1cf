"""The training loss's two halves, shared by the whole-model forward (`trainer`) and the
pipeline's last stage (`pipeline`), so both compute the same sum in the same order."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ragtune.finetune.data import IGNORE_INDEX

__all__ = ["summed_cross_entropy", "target_window"]


def target_window(labels: torch.Tensor) -> int:
    """How many last positions hold every target of the (left-padded) batch, plus the one
    position before the first target, whose logits predict it."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum(1).max()) + 1


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of the cross-entropy over the target tokens, from the logits of the last
    ``window`` positions (position t predicts token t + 1)."""
    predicting = logits[:, :-1].float()
    targets = labels[:, labels.shape[1] - window + 1 :]
    return F.cross_entropy(
        predicting.reshape(-1, predicting.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
