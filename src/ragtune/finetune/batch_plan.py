"""The global-batch rule: ``global_batch = micro_batch × data_parallel_size × grad_accum_steps``.

One optimizer step sees ``global_batch`` examples: each of the ``data_parallel_size`` model
replicas runs ``grad_accum_steps`` forward/backward passes of ``micro_batch`` examples and
the gradients are summed before the step. A replica may span several processes: with
``devices`` processes, ``pipeline_parallel`` stages and ``tensor_parallel`` shards per
replica, ``data_parallel_size = devices / (pipeline_parallel × tensor_parallel)``. Only the
replicas multiply the batch; the stages and shards of one replica work on the same examples.
Any two of the three batch numbers (plus the process layout) fix the third; `plan_batch`
derives it or says exactly why the numbers cannot work. The same plan writes DeepSpeed's
three batch keys, so DeepSpeed's own consistency check (``train_batch_size == micro × gas ×
data-parallel world size``) can never fire.

A pipeline runs a step's ``grad_accum_steps`` micro-batches through its stages one behind
the other: each stage idles while the first micro-batch fills the pipe and the last drains
it, a fraction ``(P - 1) / (m + P - 1)`` of the step with ``m`` micro-batches (GPipe's
bubble), so more micro-batches per step waste less.

    >>> plan_batch(global_batch=128, micro_batch=4, devices=1).grad_accum_steps   # the seed's example
    32
    >>> plan_batch(global_batch=64, micro_batch=8, devices=4).grad_accum_steps
    2
    >>> plan_batch(micro_batch=2, grad_accum_steps=3, devices=2).global_batch
    12
    >>> plan_batch(global_batch=64, micro_batch=4, devices=8, pipeline_parallel=2, tensor_parallel=2).grad_accum_steps
    8
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
    devices: int  # processes
    pipeline_parallel: int = 1  # stages per model replica
    tensor_parallel: int = 1  # shards per stage

    @property
    def data_parallel(self) -> int:
        """Model replicas, each fed its own share of the global batch."""
        return self.devices // (self.pipeline_parallel * self.tensor_parallel)

    @property
    def bubble_fraction(self) -> float:
        """The share of a step a pipeline stage idles: (P - 1) / (m + P - 1)."""
        stages = self.pipeline_parallel
        return (stages - 1) / (self.grad_accum_steps + stages - 1)

    def deepspeed_batch_config(self) -> dict[str, int]:
        """DeepSpeed's batch keys, consistent by construction."""
        return {
            "train_batch_size": self.global_batch,
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.grad_accum_steps,
        }

    def describe(self) -> str:
        if self.devices == self.data_parallel:
            return (
                f"global batch {self.global_batch} = micro batch {self.micro_batch} × devices {self.devices} "
                f"× grad accumulation steps {self.grad_accum_steps}"
            )
        return (
            f"global batch {self.global_batch} = micro batch {self.micro_batch} × data parallel "
            f"{self.data_parallel} × grad accumulation steps {self.grad_accum_steps} (devices {self.devices} = "
            f"data {self.data_parallel} × pipeline {self.pipeline_parallel} × tensor {self.tensor_parallel})"
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


def _check_layout(devices: int, pipeline_parallel: int, tensor_parallel: int) -> None:
    per_replica = pipeline_parallel * tensor_parallel
    if devices % per_replica == 0:
        return
    choices = ", ".join(
        f"pipeline {p} × tensor {t}" for p in _divisors(devices) for t in _divisors(devices // p) if (p, t) != (1, 1)
    )
    fitting = [d for d in range(per_replica, 4 * per_replica + 1, per_replica)][:3]
    raise BatchPlanError(
        f"devices {devices} is not divisible by pipeline_parallel × tensor_parallel = {pipeline_parallel} × "
        f"{tensor_parallel} = {per_replica}: each model replica needs {per_replica} processes. With {devices} "
        f"devices choose {choices}; or run {fitting} devices"
    )


def plan_batch(
    global_batch: int | None = None,
    micro_batch: int | None = None,
    grad_accum_steps: int | None = None,
    devices: int = 1,
    pipeline_parallel: int = 1,
    tensor_parallel: int = 1,
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
        ("pipeline_parallel", pipeline_parallel),
        ("tensor_parallel", tensor_parallel),
    ):
        if value is not None and value < 1:
            raise BatchPlanError(f"{name} must be a positive integer ({numbers})")
    _check_layout(devices, pipeline_parallel, tensor_parallel)
    layout = {"pipeline_parallel": pipeline_parallel, "tensor_parallel": tensor_parallel}
    replicas = devices // (pipeline_parallel * tensor_parallel)
    # The rule below multiplies by model replicas; the messages call them devices when each
    # process is a whole replica (plain data parallelism), as most runs are.
    name = "devices" if replicas == devices else "data_parallel_size"
    if replicas != devices:
        numbers += f", data_parallel_size={replicas}"
    given = sum(v is not None for v in (global_batch, micro_batch, grad_accum_steps))
    if given < 2:
        raise BatchPlanError(f"give at least two of global_batch, micro_batch, grad_accum_steps ({numbers})")

    if global_batch is None:
        assert micro_batch is not None and grad_accum_steps is not None
        return BatchPlan(micro_batch * replicas * grad_accum_steps, micro_batch, grad_accum_steps, devices, **layout)

    if micro_batch is None:
        assert grad_accum_steps is not None
        per_micro, remainder = divmod(global_batch, replicas * grad_accum_steps)
        if remainder or per_micro == 0:
            step = replicas * grad_accum_steps
            lower = max(step, global_batch // step * step)
            raise BatchPlanError(
                f"global batch {global_batch} is not divisible by {name} × grad_accum_steps = {step} "
                f"({numbers}); nearest valid global batches: {_nearest([lower, lower + step], global_batch)}; "
                f"grad_accum_steps that work: {_nearest([d for d in _divisors(global_batch // replicas) if global_batch % replicas == 0] or [1], grad_accum_steps, 3)}"
            )
        return BatchPlan(global_batch, per_micro, grad_accum_steps, devices, **layout)

    per_step = micro_batch * replicas
    if global_batch % per_step:
        lower = max(per_step, global_batch // per_step * per_step)
        valid_micro = _divisors(global_batch // replicas) if global_batch % replicas == 0 else []
        raise BatchPlanError(
            f"global batch {global_batch} is not divisible by micro_batch × {name} = {per_step} "
            f"({numbers}); nearest valid global batches: {_nearest([lower, lower + per_step], global_batch)}"
            + (f"; micro batches that divide it: {_nearest(valid_micro, micro_batch, 3)}" if valid_micro else "")
        )
    derived = global_batch // per_step
    if grad_accum_steps is not None and grad_accum_steps != derived:
        raise BatchPlanError(
            f"{micro_batch} × {replicas} × {grad_accum_steps} = {per_step * grad_accum_steps}, not the global batch "
            f"{global_batch} ({numbers}); with these micro batch and {name} grad_accum_steps must be {derived}, "
            f"or set global_batch to {per_step * grad_accum_steps}"
        )
    return BatchPlan(global_batch, micro_batch, derived, devices, **layout)
