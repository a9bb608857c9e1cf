"""The global-batch rule: ``global_batch = micro_batch × devices × grad_accum_steps``.

One optimizer step sees ``global_batch`` examples: each of the ``devices`` processes runs
``grad_accum_steps`` forward/backward passes of ``micro_batch`` examples and the
gradients are summed before the step. Any two of the three batch numbers (plus the device
count) fix the third; `plan_batch` derives it or says exactly why the numbers cannot work.
The same plan writes DeepSpeed's three batch keys, so DeepSpeed's own consistency check
(``train_batch_size == micro × gas × world_size``) can never fire.

    >>> plan_batch(global_batch=128, micro_batch=4, devices=1).grad_accum_steps   # the seed's example
    32
    >>> plan_batch(global_batch=64, micro_batch=8, devices=4).grad_accum_steps
    2
    >>> plan_batch(micro_batch=2, grad_accum_steps=3, devices=2).global_batch
    12
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchPlan", "BatchPlanError", "plan_batch"]


class BatchPlanError(ValueError):
    """The batch numbers do not multiply out; the message names them and valid choices."""


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    grad_accum_steps: int
    devices: int

    def deepspeed_batch_config(self) -> dict[str, int]:
        """DeepSpeed's batch keys, consistent by construction."""
        return {
            "train_batch_size": self.global_batch,
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.grad_accum_steps,
        }

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = micro batch {self.micro_batch} × devices {self.devices} "
            f"× grad accumulation steps {self.grad_accum_steps}"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest(values: list[int], target: int, count: int = 2) -> list[int]:
    return sorted(sorted(values, key=lambda v: (abs(v - target), v))[:count])


def _numbers(global_batch: int | None, micro_batch: int | None, grad_accum_steps: int | None, devices: int) -> str:
    show = lambda v: "?" if v is None else str(v)  # noqa: E731
    return (
        f"global_batch={show(global_batch)}, micro_batch={show(micro_batch)}, "
        f"devices={devices}, grad_accum_steps={show(grad_accum_steps)}"
    )


def plan_batch(
    global_batch: int | None = None,
    micro_batch: int | None = None,
    grad_accum_steps: int | None = None,
    devices: int = 1,
) -> BatchPlan:
    """Derive the missing batch number, or check the three given ones multiply out.

    Raises `BatchPlanError` naming all four numbers and the nearest valid choices.
    """
    numbers = _numbers(global_batch, micro_batch, grad_accum_steps, devices)
    for name, value in (
        ("global_batch", global_batch),
        ("micro_batch", micro_batch),
        ("grad_accum_steps", grad_accum_steps),
        ("devices", devices),
    ):
        if value is not None and value < 1:
            raise BatchPlanError(f"{name} must be a positive integer ({numbers})")
    given = sum(v is not None for v in (global_batch, micro_batch, grad_accum_steps))
    if given < 2:
        raise BatchPlanError(f"give at least two of global_batch, micro_batch, grad_accum_steps ({numbers})")

    if global_batch is None:
        assert micro_batch is not None and grad_accum_steps is not None
        return BatchPlan(micro_batch * devices * grad_accum_steps, micro_batch, grad_accum_steps, devices)

    if micro_batch is None:
        assert grad_accum_steps is not None
        per_micro, remainder = divmod(global_batch, devices * grad_accum_steps)
        if remainder or per_micro == 0:
            step = devices * grad_accum_steps
            lower = max(step, global_batch // step * step)
            raise BatchPlanError(
                f"global batch {global_batch} is not divisible by devices × grad_accum_steps = {step} "
                f"({numbers}); nearest valid global batches: {_nearest([lower, lower + step], global_batch)}; "
                f"grad_accum_steps that work: {_nearest([d for d in _divisors(global_batch // devices) if global_batch % devices == 0] or [1], grad_accum_steps, 3)}"
            )
        return BatchPlan(global_batch, per_micro, grad_accum_steps, devices)

    per_step = micro_batch * devices
    if global_batch % per_step:
        lower = max(per_step, global_batch // per_step * per_step)
        valid_micro = [d for d in _divisors(global_batch // devices)] if global_batch % devices == 0 else []
        raise BatchPlanError(
            f"global batch {global_batch} is not divisible by micro_batch × devices = {per_step} "
            f"({numbers}); nearest valid global batches: {_nearest([lower, lower + per_step], global_batch)}"
            + (f"; micro batches that divide it: {_nearest(valid_micro, micro_batch, 3)}" if valid_micro else "")
        )
    derived = global_batch // per_step
    if grad_accum_steps is not None and grad_accum_steps != derived:
        raise BatchPlanError(
            f"{micro_batch} × {devices} × {grad_accum_steps} = {per_step * grad_accum_steps}, not the global batch "
            f"{global_batch} ({numbers}); with these micro batch and devices grad_accum_steps must be {derived}, "
            f"or set global_batch to {per_step * grad_accum_steps}"
        )
    return BatchPlan(global_batch, micro_batch, derived, devices)
