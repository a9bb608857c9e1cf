"""The NF4 format of QLoRA (Dettmers et al. 2023) and its reference codec, in plain PyTorch.

Why these 16 numbers
--------------------
Pretrained weights are roughly normal, and a block of weights divided by its absolute
maximum lies in [-1, 1]. A 4-bit code has 16 levels; put them where the normal
distribution puts equal probability mass, so every level is used about equally often:

1. Cut N(0, 1) at equally spaced probabilities between 1 - offset and offset,
   ``offset = 1 - (1/30 + 1/32) / 2 = 0.9677083`` (QLoRA's choice, halfway between the
   outer quantiles of a 15- and a 16-level grid, rounded to 7 digits as bitsandbytes does,
   so the table is bit-identical to bitsandbytes'). The outermost quantile is finite.
2. Zero must be exact (padding, ReLU outputs, pruned weights), so the halves are
   asymmetric: 8 positive quantiles ``ppf(linspace(offset, 0.5, 9)[:-1])``, 7 negative
   ones ``-ppf(linspace(offset, 0.5, 8)[:-1])``, and 0.
3. Divide by the largest value: the table spans exactly [-1, 1].

The levels are dense near zero and sparse in the tails, so normally distributed weights
lose less than with uniform INT4 at the same 4 bits. Quantizing a block: scale by
1/absmax, round every value to the nearest level (ties go to the lower level), store
the level's index; two indices per byte, the first in the high nibble.

Double quantization stores the per-block fp32 absmax constants (32 bits per 64 weights
= 0.5 bit per weight) as 8-bit codes: subtract their mean, quantize them in blocks of
256 with bitsandbytes' signed dynamic 8-bit map, keep one fp32 scale per 256 blocks:
``4 + 8/64 + 32/(64*256) = 4.127`` bits per weight instead of ``4 + 32/64 = 4.5``.

This module holds the tables, the quantization state, the quantizer and the eager decode;
it imports no kernel. The kernels (:mod:`ragtune.quant.kernels`: C on the CPU, Triton on
CUDA) decode to the same numbers faster, and :func:`ragtune.quant.dispatch.dequantize_nf4`
picks one per device. How much faster: BENCHMARKS.md, NF4 section.

>>> import torch
>>> from ragtune.quant import dequantize_nf4
>>> from ragtune.quant.nf4 import quantize_nf4
>>> w = torch.randn(1024, 1024)
>>> packed, state = quantize_nf4(w, blocksize=64, double_quant=True)
>>> packed.dtype, packed.numel(), round(state.bits_per_parameter(), 3)
(torch.uint8, 524288, 4.127)
>>> mse = float((dequantize_nf4(packed, state) - w).square().mean())
>>> 0.005 < mse < 0.01  # about 0.0085 of the unit variance
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "DQ_BLOCKSIZE",
    "DYNAMIC_MAP_8BIT",
    "NF4_BYTE_LUT",
    "NF4_TABLE",
    "NF4QuantState",
    "bits_per_parameter",
    "byte_lut",
    "check_blocksize",
    "decode_eager",
    "dequantize_codes",
    "dequantize_packed_rows",
    "derive_nf4_table",
    "dynamic_map_8bit",
    "quantize_codes",
    "quantize_nf4",
]

MIN_BLOCKSIZE = 32
MAX_BLOCKSIZE = 4096
DQ_BLOCKSIZE = 256
"""Blocks of first-level absmax constants that share one fp32 scale (QLoRA, bitsandbytes)."""

NF4_OFFSET = round(1 - (1 / 30 + 1 / 32) / 2, 7)

# Work on about a million weights at a time: temporaries stay in cache and memory bounded.
# On a GPU each chunk costs kernel launches instead, so chunks are 16x larger there, with
# about 256 MB of temporaries (the H200 quantize times: BENCHMARKS.md, NF4, GPU).
_CHUNK_ELEMENTS = 1 << 20
_GPU_CHUNK_ELEMENTS = 1 << 24

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def derive_nf4_table(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, sorted, computed from normal quantiles (see the module docstring).

    >>> derive_nf4_table()[[0, 7, 15]].tolist()
    [-1.0, 0.0, 1.0]
    """
    # float32 probabilities and a float32 normalisation, as QLoRA's reference code does,
    # so that the rounded table equals bitsandbytes' bit for bit.
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float()
    levels = levels.sort().values
    return levels / levels.max()


NF4_TABLE: torch.Tensor = derive_nf4_table()
"""The 16 NF4 levels (float32, ascending, ``NF4_TABLE[7] == 0``)."""


def dynamic_map_8bit() -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map: the 256 levels used for double quantization.

    A sign bit, a decimal exponent from 1e-6 to 1e0, and for exponent ``1e(i-6)`` a linear
    fraction with ``2**i`` steps between 0.1 and 1 (bin centres), plus 0 and 1: fine steps
    near zero, coarse ones near 1, so small and large constants keep similar relative precision.

    >>> m = dynamic_map_8bit()
    >>> m.numel(), m[0].item() < 0 < m[-1].item() == 1.0
    (256, True)
    """
    levels = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2.0
        magnitude = 10 ** (i - 6) * centres
        levels += magnitude.tolist() + (-magnitude).tolist()
    return torch.tensor(sorted(levels), dtype=torch.float32)


DYNAMIC_MAP_8BIT: torch.Tensor = dynamic_map_8bit()
"""The 256 levels of :func:`dynamic_map_8bit` (float32, ascending), the double-quantization code."""


def check_blocksize(blocksize: int) -> int:
    """Return ``blocksize`` if it is a power of two in [32, 4096], else raise ValueError."""
    if (
        not isinstance(blocksize, int)
        or isinstance(blocksize, bool)
        or not MIN_BLOCKSIZE <= blocksize <= MAX_BLOCKSIZE
        or blocksize & (blocksize - 1)
    ):
        raise ValueError(
            f"blocksize must be a power of two in [{MIN_BLOCKSIZE}, {MAX_BLOCKSIZE}]; "
            f"got {blocksize!r}. Use 64 (QLoRA's choice) unless you measure a reason not to."
        )
    return blocksize


def _midpoints(levels: torch.Tensor) -> torch.Tensor:
    # bucketize(x, midpoints) is nearest-level rounding, ties to the lower level.
    return (levels[:-1] + levels[1:]) / 2


_BINS = 4096


def _bin_of(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) * (_BINS / 2)).to(torch.int32).clamp_(0, _BINS - 1)


@functools.lru_cache(maxsize=8)
def _rounding_tables(levels: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Tables that replace a binary search by two lookups, exactly.

    ``_bin_of`` is monotone, so the number of midpoints below x is the number whose bin is
    below x's bin, plus one if x's bin holds a midpoint that x exceeds. Returns None when
    two midpoints share a bin (levels too close; the caller falls back to bucketize).
    """
    bounds = _midpoints(torch.tensor(levels, dtype=torch.float32))
    bins = _bin_of(bounds)
    if bins.unique().numel() != bins.numel():
        return None
    below = torch.zeros(_BINS, dtype=torch.int32)
    inside = torch.full((_BINS,), math.inf)
    for bound, b in zip(bounds.tolist(), bins.tolist()):
        below[b + 1 :] += 1
        inside[b] = bound
    return below, inside


def _nearest_level(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``levels`` for each value in [-1, 1] (int32)."""
    tables = _rounding_tables(tuple(levels.tolist()))
    if tables is None:
        return torch.bucketize(scaled, _midpoints(levels.to(scaled.device)), out_int32=True)
    below, inside = (t.to(scaled.device) for t in tables)
    b = _bin_of(scaled)
    return torch.index_select(below, 0, b) + (scaled > torch.index_select(inside, 0, b))


def quantize_codes(w: torch.Tensor, levels: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax quantization of ``w`` onto sorted ``levels`` in [-1, 1].

    Returns one uint8 level index per element (flat, length ``w.numel()``) and the fp32
    absmax of every block (the last block is padded). NF4, FP4 and INT4 differ only in
    ``levels``; this is the shared rounding step.

    >>> import torch
    >>> codes, absmax = quantize_codes(torch.tensor([-2.0, 1.0, 0.0, 2.0]), NF4_TABLE, 32)
    >>> codes.tolist(), absmax.tolist()
    ([0, 12, 7, 15], [2.0])
    """
    if levels.numel() > 256:
        raise ValueError(f"at most 256 levels fit a uint8 code; got {levels.numel()}")
    flat = w.reshape(-1)
    n = flat.numel()
    nblocks = -(-n // blocksize)
    levels = levels.to(device=w.device, dtype=torch.float32)
    codes = torch.empty(nblocks * blocksize, dtype=torch.uint8, device=w.device)
    absmax = torch.empty(nblocks, dtype=torch.float32, device=w.device)
    chunk = _CHUNK_ELEMENTS if w.device.type == "cpu" else _GPU_CHUNK_ELEMENTS
    step = max(1, chunk // blocksize) * blocksize
    for start in range(0, n, step):
        part = flat[start : start + step].float()
        if part.numel() % blocksize:
            part = torch.nn.functional.pad(part, (0, blocksize - part.numel() % blocksize))
        blocks = part.view(-1, blocksize)
        block_max = blocks.abs().amax(dim=1)
        b0 = start // blocksize
        absmax[b0 : b0 + blocks.shape[0]] = block_max
        # Multiply by the reciprocal (not divide), as bitsandbytes does, so codes agree
        # bit for bit; an all-zero block keeps absmax 0 and maps to the level 0.
        scaled = (blocks * (1.0 / block_max.clamp(min=1e-38)).unsqueeze(1)).clamp_(-1, 1)
        codes[start : start + part.numel()] = _nearest_level(scaled.view(-1), levels)
    return codes[:n], absmax


def dequantize_codes(codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Inverse of :func:`quantize_codes`: ``levels[code] * absmax[block]``, flat fp32."""
    n = codes.numel()
    values = levels.to(device=codes.device, dtype=torch.float32)[codes.long()]
    values = torch.nn.functional.pad(values, (0, absmax.numel() * blocksize - n))
    return (values.view(-1, blocksize) * absmax.unsqueeze(1)).view(-1)[:n]


@dataclass
class NF4QuantState:
    """Everything besides the packed codes needed to dequantize one tensor.

    ``absmax`` is the fp32 absmax per block when ``double_quant`` is off; with double
    quantization it holds uint8 codes of ``absmax - absmax_offset`` in the dynamic 8-bit
    map, with one fp32 ``absmax_scale`` per 256 blocks.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    blocksize: int
    absmax: torch.Tensor
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def block_absmax(self) -> torch.Tensor:
        """The fp32 absmax of every block (decoded from 8 bits under double quantization).

        Eager ops; :func:`ragtune.quant.dispatch.block_absmax` gives the same numbers from
        the C kernels where they run.
        """
        if self.absmax_scale is None:
            return self.absmax
        assert self.absmax_offset is not None
        decoded = dequantize_codes(self.absmax, self.absmax_scale, DYNAMIC_MAP_8BIT, DQ_BLOCKSIZE)
        return decoded + self.absmax_offset

    def bits_per_parameter(self) -> float:
        """Storage bits per weight of this tensor: codes, constants and padding included."""
        bits = 8 * (-(-self.numel // 2))
        bits += self.absmax.numel() * self.absmax.element_size() * 8
        if self.absmax_scale is not None:
            bits += 32 * (self.absmax_scale.numel() + 1)  # scales and the offset
        return bits / self.numel

    def to(self, device: torch.device | str) -> NF4QuantState:
        """A copy of the state with its tensors on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return NF4QuantState(
            self.shape,
            self.dtype,
            self.blocksize,
            self.absmax.to(device),
            move(self.absmax_scale),
            move(self.absmax_offset),
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so the state saves with ``safetensors.torch.save_file``."""
        out = {
            "shape": torch.tensor(self.shape, dtype=torch.int64),
            "dtype": torch.tensor(_DTYPES.index(self.dtype), dtype=torch.int64),
            "blocksize": torch.tensor(self.blocksize, dtype=torch.int64),
            "absmax": self.absmax,
        }
        if self.absmax_scale is not None and self.absmax_offset is not None:
            out["absmax_scale"] = self.absmax_scale
            out["absmax_offset"] = self.absmax_offset
        return out

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor]) -> NF4QuantState:
        """Inverse of :meth:`state_dict`."""
        return cls(
            shape=tuple(int(s) for s in tensors["shape"].tolist()),
            dtype=_DTYPES[int(tensors["dtype"])],
            blocksize=int(tensors["blocksize"]),
            absmax=tensors["absmax"],
            absmax_scale=tensors.get("absmax_scale"),
            absmax_offset=tensors.get("absmax_offset"),
        )


def bits_per_parameter(blocksize: int = 64, double_quant: bool = True) -> float:
    """Asymptotic storage cost of NF4 in bits per weight.

    >>> bits_per_parameter(64, double_quant=False), round(bits_per_parameter(64), 3)
    (4.5, 4.127)
    """
    check_blocksize(blocksize)
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * DQ_BLOCKSIZE)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True) -> tuple[torch.Tensor, NF4QuantState]:
    """Quantize a tensor of any shape to NF4: flat packed uint8 codes and their state.

    The codes and the first-level absmax equal bitsandbytes'
    ``quantize_4bit(w, blocksize=..., quant_type="nf4", compress_statistics=False)``.

    >>> import torch
    >>> packed, state = quantize_nf4(torch.tensor([[1.0, -1.0, 0.0]]), double_quant=False)
    >>> [hex(b) for b in packed.tolist()], state.absmax.tolist(), state.shape
    (['0xf0', '0x77'], [1.0], (1, 3))
    """
    check_blocksize(blocksize)
    if not isinstance(w, torch.Tensor) or w.dtype not in _DTYPES:
        got = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"quantize_nf4 takes a float32, float16 or bfloat16 tensor; got {got}")
    if w.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(w.shape)})")
    codes, absmax = quantize_codes(w, NF4_TABLE, blocksize)
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1), value=7)  # pad with the code of 0.0
    packed = (codes[0::2] << 4) | codes[1::2]
    state = NF4QuantState(tuple(w.shape), w.dtype, blocksize, absmax)
    if double_quant:
        offset = absmax.mean()
        state.absmax, state.absmax_scale = quantize_codes(absmax - offset, DYNAMIC_MAP_8BIT, DQ_BLOCKSIZE)
        state.absmax_offset = offset
    return packed, state


def byte_lut(levels: torch.Tensor) -> torch.Tensor:
    """Map each of the 256 byte values to its two levels (high nibble first), as int64.

    One gather of an 8-byte entry per packed byte decodes two weights at once; viewing the
    result as float32 interleaves them in storage order (x86 and CUDA are little-endian).
    """
    pairs = torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=1)
    return pairs.to(torch.float32).contiguous().view(torch.int64).view(256)


NF4_BYTE_LUT = byte_lut(NF4_TABLE)
""":func:`byte_lut` of :data:`NF4_TABLE`: packed byte -> its two NF4 levels."""


def dequantize_packed_rows(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    index: torch.Tensor,
    pairs: torch.Tensor,
    lut: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode whole blocks of packed NF4 to float32 (flat, ``2 * packed.numel()`` values).

    ``absmax`` holds one fp32 scale per ``blocksize`` outputs (the last block may be
    partial); ``index`` (int32) and ``pairs`` (int64) are scratch buffers of at least
    ``packed.numel()`` elements; ``lut`` is :func:`byte_lut` on ``packed``'s device.
    Nothing is allocated. Without ``out`` the result is scaled in place in ``pairs`` and
    returned as a float32 view of it (the tiled matmul reuses it while it is in cache);
    with ``out`` it is written there once, by a multithreaded multiply, so the page faults
    of a fresh output happen on all threads rather than inside the single-threaded gather.
    """
    n = packed.numel()
    index = index[:n]
    index.copy_(packed)
    torch.index_select(lut, 0, index, out=pairs[:n])
    values = pairs[:n].view(torch.float32)
    if out is None:
        out = values
    full = out.numel() // blocksize
    head = full * blocksize
    scale = absmax[:full].unsqueeze(1)
    torch.mul(values[:head].view(full, blocksize), scale, out=out[:head].view(full, blocksize))
    if full < absmax.numel():
        torch.mul(values[head:], absmax[full], out=out[head:])
    return out


def decode_eager(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, out: torch.Tensor) -> None:
    """Decode packed NF4 codes into ``out`` with PyTorch ops, on any device, a chunk at a time.

    ``absmax`` is the fp32 absmax per block; ``out`` is float32 with two values per packed
    byte. This is the reference the kernels in :mod:`ragtune.quant.kernels` equal bit for bit.
    """
    lut = NF4_BYTE_LUT.to(packed.device)
    padded = out.numel()
    chunk = _CHUNK_ELEMENTS if packed.device.type == "cpu" else _GPU_CHUNK_ELEMENTS
    step = max(1, chunk // blocksize) * blocksize
    index = torch.empty(min(step, padded) // 2, dtype=torch.int32, device=packed.device)
    pairs = torch.empty(index.numel(), dtype=torch.int64, device=packed.device)
    for start in range(0, padded, step):
        stop = min(start + step, padded)
        b0 = start // blocksize
        dequantize_packed_rows(
            packed[start // 2 : stop // 2],
            absmax[b0 : -(-stop // blocksize)],
            blocksize,
            index,
            pairs,
            lut,
            out[start:stop],
        )
