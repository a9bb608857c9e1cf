"""Which implementation decodes NF4 weights, and multiplies by them, for given tensors.

One decision serves :func:`dequantize_nf4` and :class:`ragtune.quant.linear.NF4Linear`'s
forward and backward (:func:`linear_forward`, :func:`linear_input_grad`):

* CUDA tensors, Triton installed: the Triton decode (:mod:`ragtune.quant.kernels.nf4_triton`);
* CPU tensors, C kernels built (:mod:`ragtune.quant.kernels.native`): the C decode, and for a
  few fp32 input rows the C decode-and-multiply where the weight's rows start on block
  boundaries;
* everything else, and the CPU when the environment sets ``RAGTUNE_NF4_NATIVE=0``: eager
  PyTorch ops (:mod:`ragtune.quant.nf4`).

Every decode gives the same numbers bit for bit; the multiplies sum in different orders.
Their speeds: BENCHMARKS.md, NF4 section ("Speed on this CPU", "GPU").

>>> import torch
>>> from ragtune.quant.nf4 import quantize_nf4
>>> decode_backend(torch.device("cpu")) in (Backend.NATIVE, Backend.EAGER)
True
>>> packed, state = quantize_nf4(torch.randn(64, 64))
>>> dequantize_nf4(packed, state).shape
torch.Size([64, 64])
"""

from __future__ import annotations

import enum
import functools
import math
import os
from collections.abc import Callable, Iterator

import torch

from ragtune.quant.kernels import native
from ragtune.quant.nf4 import NF4_BYTE_LUT, NF4QuantState, decode_eager, dequantize_packed_rows

__all__ = [
    "NATIVE_SWITCH",
    "Backend",
    "block_absmax",
    "decode_backend",
    "dequantize_nf4",
    "linear_forward",
    "linear_input_grad",
    "native_enabled",
    "triton_decoder",
]

NATIVE_SWITCH = "RAGTUNE_NF4_NATIVE"
"""Environment variable; ``0`` keeps CPU tensors on the eager path (read once, see :func:`native_enabled`)."""

# Up to this many input rows per torch thread the forward multiplies inside the C decode
# kernel; more rows are faster as decoded tiles times torch.mm, whose GEMM outruns the
# kernel's AVX2 loop once the serial tile decode is amortised (the crossover by input rows:
# BENCHMARKS.md, "Speed on this CPU").
_KERNEL_ROWS_PER_THREAD = 12

# Weights decoded per tile (8 MiB in fp32). Larger tiles mean fewer ops, each with a fixed
# dispatch and thread-sync cost, and beat L2-sized ones until the tile no longer fits the
# last-level cache, with the C decode too (BENCHMARKS.md, "Speed on this CPU").
_TILE_ELEMENTS = 1 << 21

# Below this many input rows the forward computes W x^T, from here on x W^T (see
# linear_forward; where the two layouts cost the same: BENCHMARKS.md, "Speed on this CPU").
_FEW_ROWS = 128


class Backend(enum.Enum):
    """The implementation that decodes NF4 weights on a device."""

    TRITON = "triton"
    NATIVE = "native"
    EAGER = "eager"


@functools.lru_cache(maxsize=1)
def triton_decoder() -> Callable[..., torch.Tensor] | None:
    """The Triton decode kernel for CUDA tensors, or None where Triton is not installed."""
    try:
        from ragtune.quant.kernels.nf4_triton import decode_nf4
    except ImportError:
        return None
    return decode_nf4


@functools.lru_cache(maxsize=1)
def native_enabled() -> bool:
    """Whether CPU tensors take the C kernels: they build here and ``RAGTUNE_NF4_NATIVE`` is
    not ``0``. Decided once per process, like the build, because every NF4 call asks (the
    per-call cost: BENCHMARKS.md, "Speed on this CPU")."""
    return os.environ.get(NATIVE_SWITCH) != "0" and native.native_decoder() is not None


def decode_backend(device: torch.device) -> Backend:
    """The implementation that decodes NF4 weights stored on ``device``."""
    kind = device.type  # read once: each read builds a new string, and every NF4 call asks
    if kind == "cuda" and triton_decoder() is not None:
        return Backend.TRITON
    if kind == "cpu" and native_enabled():
        return Backend.NATIVE
    return Backend.EAGER


def block_absmax(state: NF4QuantState) -> torch.Tensor:
    """The fp32 absmax of every block: :meth:`NF4QuantState.block_absmax`, with the serial C
    loop where the C kernels run. Eager ops there would leave their OpenMP threads spinning on
    the cores the decode threads need next (BENCHMARKS.md, "Speed on this CPU")."""
    if state.absmax_scale is None or decode_backend(state.absmax.device) is not Backend.NATIVE:
        return state.block_absmax()
    assert state.absmax_offset is not None
    return native.decode_absmax_native(state.absmax, state.absmax_scale, float(state.absmax_offset))


def dequantize_nf4(packed: torch.Tensor, state: NF4QuantState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode packed NF4 codes to a tensor of ``state.shape`` (in ``state.dtype`` by default).

    Works on CPU and CUDA; the output is computed in fp32 and rounded once to ``dtype``,
    by whichever implementation :func:`decode_backend` picks for ``packed``'s device.

    >>> import torch
    >>> from ragtune.quant.nf4 import quantize_nf4
    >>> packed, state = quantize_nf4(torch.full((3, 5), -2.0))
    >>> dequantize_nf4(packed, state, torch.bfloat16)[0].tolist()
    [-2.0, -2.0, -2.0, -2.0, -2.0]
    """
    dtype = state.dtype if dtype is None else dtype
    n = state.numel
    if packed.dtype != torch.uint8 or packed.numel() != -(-n // 2):
        raise ValueError(
            f"packed must be {-(-n // 2)} uint8 bytes for shape {state.shape}; got {packed.numel()} of {packed.dtype}"
        )
    packed = packed.reshape(-1)
    backend = decode_backend(packed.device)
    if backend is Backend.TRITON:
        triton_decode = triton_decoder()
        assert triton_decode is not None  # decode_backend found it
        on_device = state.to(packed.device)
        return triton_decode(
            packed, on_device.absmax, on_device.absmax_scale, on_device.absmax_offset, state.blocksize, n, dtype
        ).view(state.shape)
    absmax = block_absmax(state).to(packed.device)
    out = torch.empty(n + n % 2, dtype=torch.float32, device=packed.device)
    if backend is Backend.NATIVE:
        native.decode_native(packed, absmax, state.blocksize, out)
    else:
        decode_eager(packed, absmax, state.blocksize, out)
    out = out[:n].view(state.shape)
    return out if dtype == torch.float32 else out.to(dtype)


def linear_forward(x: torch.Tensor, packed: torch.Tensor, state: NF4QuantState) -> torch.Tensor:
    """``x @ W.T`` for 2-D ``x`` and the NF4 weight ``W`` of shape ``state.shape``
    (``(out_features, in_features)``); the result has no autograd history.

    CPU fp32 inputs never hold the dense weight: few rows go through the C decode-and-multiply,
    the rest multiply decoded row tiles while each is in cache. Other inputs multiply by
    :func:`dequantize_nf4`'s whole weight.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32:
        out_features = state.shape[0]
        absmax = block_absmax(state)  # once: the kernel may decline, then tiles
        if x.shape[0] <= _KERNEL_ROWS_PER_THREAD * torch.get_num_threads() and (
            decode_backend(x.device) is Backend.NATIVE
        ):
            out = native.linear_native(x, packed, absmax, state.blocksize, out_features)
            if out is not None:
                return out
        # The output must be row-major: a transposed one pushes attention downstream off its
        # fast kernels (a SmolLM2 training step, BENCHMARKS.md). Few rows (decoding) are
        # fastest as W x^T plus a small transposing copy; many rows (prefill, training) as
        # x W^T written straight into the output's columns.
        if x.shape[0] < _FEW_ROWS:
            out_t = torch.empty(out_features, x.shape[0], dtype=x.dtype)
            for r0, r1, w in _tiles(packed, state, absmax):
                torch.mm(w, x.t(), out=out_t[r0:r1])
            return out_t.t().contiguous()
        out = torch.empty(x.shape[0], out_features, dtype=x.dtype)
        for r0, r1, w in _tiles(packed, state, absmax):
            torch.mm(x, w.t(), out=out[:, r0:r1])
        return out
    return x @ dequantize_nf4(packed, state, x.dtype).t()


def linear_input_grad(grad: torch.Tensor, packed: torch.Tensor, state: NF4QuantState) -> torch.Tensor:
    """``grad @ W``: the input gradient of :func:`linear_forward`, the same way round."""
    if grad.device.type == "cpu" and grad.dtype == torch.float32:
        grad_x = torch.zeros(grad.shape[0], state.shape[1], dtype=grad.dtype)
        for r0, r1, w in _tiles(packed, state, block_absmax(state)):
            grad_x.addmm_(grad[:, r0:r1], w)
        return grad_x
    return grad @ dequantize_nf4(packed, state, grad.dtype)


def _tile_decoder(
    device: torch.device, nbytes: int, blocksize: int, backend: Backend
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Decode up to ``nbytes`` packed bytes (whole blocks) into one buffer reused by every tile."""
    if backend is Backend.NATIVE:
        buffer = torch.empty(2 * nbytes, dtype=torch.float32, device=device)

        def decode(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
            # One thread: a worker thread next to the matmul's OpenMP threads, which spin
            # between tiles, was slower (BENCHMARKS.md, "Speed on this CPU").
            native.decode_native(packed, scales, blocksize, buffer, threads=1)
            return buffer

        return decode
    index = torch.empty(nbytes, dtype=torch.int32, device=device)
    pairs = torch.empty(nbytes, dtype=torch.int64, device=device)
    lut = NF4_BYTE_LUT.to(device)
    return lambda packed, scales: dequantize_packed_rows(packed, scales, blocksize, index, pairs, lut)


def _tiles(packed: torch.Tensor, state: NF4QuantState, absmax: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(row_start, row_stop, dense fp32 rows)`` of the weight, decoded into one reused buffer.

    ``absmax`` is the fp32 absmax per block (:func:`block_absmax`). Tiles start on block
    boundaries, so each tile decodes whole blocks of its own.
    """
    out_features, k = state.shape
    bs = state.blocksize
    row_step = bs // math.gcd(k, bs)
    rows = max(row_step, _TILE_ELEMENTS // k // row_step * row_step)
    decode = _tile_decoder(packed.device, (rows * k + 1) // 2, bs, decode_backend(packed.device))
    for r0 in range(0, out_features, rows):
        r1 = min(out_features, r0 + rows)
        e0, e1 = r0 * k, r1 * k
        values = decode(packed[e0 // 2 : -(-e1 // 2)], absmax[e0 // bs : -(-e1 // bs)])
        yield r0, r1, values[: e1 - e0].view(r1 - r0, k)
