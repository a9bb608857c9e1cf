"""Tensor-parallel inference through DeepSpeed-Inference (``RAGTUNE_LLM_TENSOR_PARALLEL=N``).

The local model's linear layers are sharded over N processes by ``deepspeed.init_inference``
(AutoTP: attention and MLP projections split by heads and columns, their outputs all-reduced),
so a model too large for one device's memory decodes across N. Launch N processes:

    RAGTUNE_LLM_TENSOR_PARALLEL=2 torchrun --nproc_per_node 2 -m ragtune.cli serve-llm --model DIR

Rank 0 is the one that serves. Every sharded layer's all-reduce needs all N processes, so
the others follow it in lockstep (`Lockstep`): rank 0 announces each prompt and its sampling
parameters before decoding it, the followers decode the same prompt (greedy decoding, or
sampling with the seed rank 0 chose, gives every rank the same tokens, since the all-reduced
logits are the same), and rank 0 ends them when it exits.
"""

from __future__ import annotations

import atexit
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

__all__ = ["Lockstep", "shard_for_inference"]


def shard_for_inference(model: Any, size: int, dtype: torch.dtype) -> tuple[Any, Lockstep]:
    """``model`` sharded over ``size`` processes (this one among them) by DeepSpeed-Inference."""
    import deepspeed
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != size:
        raise ValueError(
            f"RAGTUNE_LLM_TENSOR_PARALLEL={size} needs {size} processes, but this one was started as "
            f"{world}: launch with torchrun --nproc_per_node {size} (or the deepspeed launcher)"
        )
    # DeepSpeed's CPU all-reduce for inference goes through shared memory sized by LOCAL_SIZE,
    # which its own launcher sets and torchrun does not (without it the first all-reduce
    # crashes the process); torchrun's LOCAL_WORLD_SIZE is the same number.
    os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine = deepspeed.init_inference(
        model, tensor_parallel={"tp_size": size}, dtype=dtype, replace_with_kernel_inject=False
    )
    return engine.module, Lockstep(dist.get_rank())


class Lockstep:
    """Rank 0 tells the other ranks which prompt to decode next (a broadcast per request)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        if rank == 0:
            atexit.register(self._announce, None)  # the followers' signal to exit

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def _announce(self, request: tuple[str, Any] | None) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.broadcast_object_list([request], src=0)

    def announce(self, prompt: str, params: Any) -> Any:
        """Send the next request to the followers; returns ``params`` with the seed every rank samples with."""
        if params.temperature > 0 and params.seed is None:
            params = replace(params, seed=random.randrange(2**31))
        self._announce((prompt, params))
        return params

    def follow(self, decode: Callable[[str, Any], Iterator[str]]) -> None:
        """Decode what rank 0 announces, until it exits (the loop of every other rank)."""
        import torch.distributed as dist

        while True:
            request: list[Any] = [None]
            dist.broadcast_object_list(request, src=0)
            if request[0] is None:
                return
            prompt, params = request[0]
            for _ in decode(prompt, params):
                pass
