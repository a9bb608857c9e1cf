"""Processes and DeepSpeed: the run's rank/world, and the DeepSpeed config from the plan.

Multi-process training goes through DeepSpeed itself (``deepspeed.initialize``), launched
by ``torchrun`` or the ``deepspeed`` launcher; ragtune only writes its config. The batch
keys come from the `BatchPlan`, so they always multiply out.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from ragtune.finetune.batch_plan import BatchPlan
from ragtune.finetune.config import ConfigError, FinetuneConfig

__all__ = ["Processes", "all_sum", "barrier", "deepspeed_config", "init_processes"]


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int
    distributed: bool  # torch.distributed is initialised (DeepSpeed runs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_processes(use_deepspeed: bool) -> Processes:
    """Join the launcher's process group (DeepSpeed runs), or run as one plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not use_deepspeed:
        if world > 1:
            raise ConfigError(
                f"launched as {world} processes but deepspeed is 0: multi-process training runs "
                "through DeepSpeed; set deepspeed: 1, 2 or 3, or pipeline_parallel above 1"
            )
        return Processes(0, 1, 0, False)
    import deepspeed
    import torch.distributed as dist

    if world == 1:
        # A one-process DeepSpeed run started without a launcher: give it the env a launcher would.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True)


def all_sum(values: list[float], processes: Processes) -> list[float]:
    """Sum ``values`` over all processes (float64, so sums of token losses stay exact)."""
    if not processes.distributed:
        return values
    import torch.distributed as dist

    device = processes.device()
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(processes: Processes) -> None:
    if processes.distributed:
        import torch.distributed as dist

        dist.barrier()


def _offload(device: str, config: FinetuneConfig) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": torch.cuda.is_available()}
    if device == "nvme":
        section["nvme_path"] = str(config.nvme_path)
    return section


def deepspeed_config(config: FinetuneConfig, plan: BatchPlan, dtype: torch.dtype) -> dict[str, Any]:
    """DeepSpeed's JSON config for this run: batch keys from the plan, ZeRO stage and offload
    (to the CPU, or ZeRO-Infinity's NVMe swap files under ``nvme_path``)."""
    zero: dict[str, Any] = {"stage": config.deepspeed}
    if config.pipeline_parallel > 1:
        # Without ZeRO, DeepSpeed's pipeline engine clips each stage's gradients by that
        # stage's own norm (measured: losses 5e-4 off the one-process run by step 3); ZeRO-1
        # takes the norm over all stages, as clipping the whole model does.
        zero["stage"] = 1
    if config.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(config.offload_optimizer, config)
    if config.offload_params != "none":
        zero["offload_param"] = _offload(config.offload_params, config)
        if config.offload_params == "nvme":
            # DeepSpeed keeps up to 1e9 parameter elements in CPU memory before it swaps to disk
            # at all; choosing NVMe means memory is what is short, so every partition swaps.
            zero["offload_param"]["max_in_cpu"] = 0
            # Each parameter swapped in holds one of the offload's (5) swap buffers until it
            # is released; keeping parameters for reuse or prefetching them, as ZeRO-3 does
            # by default, runs out of buffers ("Not enough buffers 0 for swapping 1"). Fetch
            # each when its module runs and release it after.
            zero |= {"stage3_max_live_parameters": 0, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 0}
    ds: dict[str, Any] = {
        **plan.deepspeed_batch_config(),
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        # ragtune's own torch AdamW is passed in unless the optimizer is offloaded, where
        # ZeRO-Offload needs its own CPU Adam, built from this section.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if "nvme" in (config.offload_optimizer, config.offload_params):
        # libaio's settings for the swap files (DeepSpeed's defaults, written out so the run's
        # deepspeed.json shows what it used): 1 MiB blocks, 8 requests in flight per thread.
        ds["aio"] = {
            "block_size": 1048576,
            "queue_depth": 8,
            "thread_count": 1,
            "single_submit": False,
            "overlap_events": True,
        }
    if config.offload_optimizer != "none":
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": config.lr, "weight_decay": config.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8},
        }
    return ds
