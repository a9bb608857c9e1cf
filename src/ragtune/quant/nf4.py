"""NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al. 2023), in plain PyTorch.

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

On CPU the decode runs in a small C kernel (:func:`native_decoder`, built with the system
C compiler on first use), split over ``torch.get_num_threads()`` threads; without a
compiler the same numbers come from eager PyTorch ops, about 1.3-2x slower. A second C
kernel (:func:`linear_native`) multiplies a few input rows by the weight while decoding it,
for NF4Linear's forward. On CUDA the decode is one Triton kernel
(:mod:`ragtune.quant.nf4_triton`), eager ops without Triton.

>>> import torch
>>> from ragtune.quant.nf4 import quantize_nf4, dequantize_nf4
>>> w = torch.randn(1024, 1024)
>>> packed, state = quantize_nf4(w, blocksize=64, double_quant=True)
>>> packed.dtype, packed.numel(), round(state.bits_per_parameter(), 3)
(torch.uint8, 524288, 4.127)
>>> mse = float((dequantize_nf4(packed, state) - w).square().mean())
>>> 0.005 < mse < 0.01  # about 0.0085 of the unit variance
True
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DQ_BLOCKSIZE",
    "NF4_BYTE_LUT",
    "NF4_TABLE",
    "NF4QuantState",
    "bits_per_parameter",
    "byte_lut",
    "check_blocksize",
    "decode_native",
    "dequantize_codes",
    "dequantize_nf4",
    "dequantize_packed_rows",
    "derive_nf4_table",
    "dynamic_map_8bit",
    "linear_native",
    "native_decoder",
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
# about 256 MB of temporaries (measured on an H200: a 4096x4096 quantize took 3.9 ms in
# 1M chunks, 1.1 ms in one).
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


_DYNAMIC_MAP = dynamic_map_8bit()


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
        """The fp32 absmax of every block (decoded from 8 bits under double quantization)."""
        if self.absmax_scale is None:
            return self.absmax
        assert self.absmax_offset is not None
        lib = native_decoder() if self.absmax.device.type == "cpu" else None
        if lib is not None:
            return _decode_absmax_native(lib, self.absmax, self.absmax_scale, float(self.absmax_offset))
        decoded = dequantize_codes(self.absmax, self.absmax_scale, _DYNAMIC_MAP, DQ_BLOCKSIZE)
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
        state.absmax, state.absmax_scale = quantize_codes(absmax - offset, _DYNAMIC_MAP, DQ_BLOCKSIZE)
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


# The CPU kernels in C. The decode: one pass per byte, reading its two codes, looking up
# their levels, scaling and writing them; with AVX-512 a permute looks up 16 levels from a
# table held in one register. The products are the same IEEE float32 products as the eager
# path's. Then the decode-and-multiply for NF4Linear's forward on few rows.
_DECODE_C = r"""
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

void nf4_decode(const uint8_t *restrict packed, const float *restrict absmax,
                const float *restrict table, float *restrict out,
                int64_t nbytes, int64_t blocksize) {
  const int64_t half = blocksize / 2;
#ifdef __AVX512F__
  const __m512 levels = _mm512_loadu_ps(table);
  const __m512i low = _mm512_set1_epi32(15);
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#endif
  for (int64_t start = 0; start < nbytes; start += half) {
    const float s = absmax[start / half];
    const int64_t stop = start + half < nbytes ? start + half : nbytes;
    int64_t i = start;
#ifdef __AVX512F__
    const __m512 scale = _mm512_set1_ps(s);
    for (; i + 16 <= stop; i += 16) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(packed + i)));
      const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), levels), scale);
      const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(v, low), levels), scale);
      _mm512_storeu_ps(out + 2 * i, _mm512_permutex2var_ps(hi, first, lo));
      _mm512_storeu_ps(out + 2 * i + 16, _mm512_permutex2var_ps(hi, second, lo));
    }
#endif
    for (; i < stop; ++i) {
      out[2 * i] = table[packed[i] >> 4] * s;
      out[2 * i + 1] = table[packed[i] & 15] * s;
    }
  }
}

/* Double quantization: absmax[i] = map[codes[i]] * scales[i / group] + offset, rounded after
   the product and after the sum, as the eager ops do (built with -ffp-contract=off). */
void dq_absmax(const uint8_t *restrict codes, const float *restrict map, const float *restrict scales,
               float offset, float *restrict out, int64_t n, int64_t group) {
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const float s = scales[g0 / group];
    const int64_t g1 = g0 + group < n ? g0 + group : n;
    for (int64_t i = g0; i < g1; ++i) out[i] = map[codes[i]] * s + offset;
  }
}

/* The forward of NF4Linear for few input rows: out[i, j] = sum_c x[i, c] * W[j, c] for the W
   rows j0 <= j < j1. W is decoded PANEL rows at a time into a buffer that stays in L2 and is
   multiplied there, KC columns at a time so that x's and the panel's slices stay in L1; the
   dense weight never exists. Hand-written because no PyTorch op multiplies while decoding:
   decode-then-torch.mm leaves one core idle (the decode is serial per tile) and writes the
   weight to memory once more. AVX2 and FMA only (x86-64-v3, both CPUs here); elsewhere it
   returns -1 and NF4Linear takes the tiled path. Returns -2 when the buffer cannot be had.
   The buffer (PANEL * k floats) stays allocated per calling thread for later calls.
   The caller checks k % blocksize == 0: each panel starts on a block boundary, and k is a
   multiple of 8 (blocks hold at least 32 weights), so no row has a partial vector. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <stdlib.h>
#define PANEL 16
#define KC 512

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* acc[a][b] += x[a, c0:c1] . w[b, c0:c1] (8 lanes each) for mb <= 4 rows of x, nb <= 2 of w:
   8 accumulators and 4 + 2 loads per 8 FMAs, inlined with constant mb and nb. */
static inline __attribute__((always_inline)) void nf4_tile(const float *x, int64_t k, int mb,
    const float *w, int nb, int64_t c0, int64_t c1, __m256 *acc) {
  __m256 r[4][2];
  for (int a = 0; a < mb; ++a) for (int b = 0; b < nb; ++b) r[a][b] = acc[a * PANEL + b];
  for (int64_t c = c0; c < c1; c += 8) {
    __m256 wv[2];
    for (int b = 0; b < nb; ++b) wv[b] = _mm256_loadu_ps(w + b * k + c);
    for (int a = 0; a < mb; ++a) {
      const __m256 xv = _mm256_loadu_ps(x + a * k + c);
      for (int b = 0; b < nb; ++b) r[a][b] = _mm256_fmadd_ps(xv, wv[b], r[a][b]);
    }
  }
  for (int a = 0; a < mb; ++a) for (int b = 0; b < nb; ++b) acc[a * PANEL + b] = r[a][b];
}

static inline __attribute__((always_inline)) void nf4_rows_times_panel(const float *x, int64_t k,
    int mb, const float *panel, int64_t rows, float *out, int64_t ldo) {
  __m256 acc[4 * PANEL];
  for (int t = 0; t < 4 * PANEL; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < k; c0 += KC) {
    const int64_t c1 = c0 + KC < k ? c0 + KC : k;
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) nf4_tile(x, k, mb, panel + r * k, 2, c0, c1, acc + r);
    if (r < rows) nf4_tile(x, k, mb, panel + r * k, 1, c0, c1, acc + r);
  }
  for (int a = 0; a < mb; ++a)
    for (int64_t r = 0; r < rows; ++r) out[a * ldo + r] = hsum256(acc[a * PANEL + r]);
}

int nf4_linear_available(void) { return 1; }

int nf4_linear(const float *restrict x, int64_t m, int64_t k, const uint8_t *restrict packed,
               const float *restrict absmax, const float *restrict table, int64_t blocksize,
               float *restrict out, int64_t ldo, int64_t j0, int64_t j1) {
  /* One decode buffer per thread, kept between calls, so no call pays its page faults. */
  static __thread float *panel = NULL;
  static __thread int64_t capacity = 0;
  if (capacity < PANEL * k) {
    free(panel);
    /* cache-line aligned: malloc's 16-byte alignment splits every other load over two
       lines (measured 1.2x slower) */
    panel = aligned_alloc(64, sizeof(float) * PANEL * k);
    capacity = panel == NULL ? 0 : PANEL * k;
    if (panel == NULL) return -2;
  }
  for (int64_t p0 = j0; p0 < j1; p0 += PANEL) {
    const int64_t rows = p0 + PANEL <= j1 ? PANEL : j1 - p0;
    const int64_t e0 = p0 * k;
    nf4_decode(packed + e0 / 2, absmax + e0 / blocksize, table, panel, rows * k / 2, blocksize);
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) nf4_rows_times_panel(x + i * k, k, 4, panel, rows, out + i * ldo + p0, ldo);
    switch (m - i) {
      case 3: nf4_rows_times_panel(x + i * k, k, 3, panel, rows, out + i * ldo + p0, ldo); break;
      case 2: nf4_rows_times_panel(x + i * k, k, 2, panel, rows, out + i * ldo + p0, ldo); break;
      case 1: nf4_rows_times_panel(x + i * k, k, 1, panel, rows, out + i * ldo + p0, ldo); break;
    }
  }
  return 0;
}
#else
int nf4_linear_available(void) { return 0; }

int nf4_linear(const float *x, int64_t m, int64_t k, const uint8_t *packed, const float *absmax,
               const float *table, int64_t blocksize, float *out, int64_t ldo, int64_t j0, int64_t j1) {
  return -1;
}
#endif
"""

# Below this many bytes a second thread costs more than it saves.
_MIN_PARALLEL_BYTES = 1 << 16


@functools.lru_cache(maxsize=1)
def native_decoder() -> ctypes.CDLL | None:
    """The C decode kernels built for this CPU, or None (then the eager path decodes).

    Plain C without torch headers compiles in about 0.3 s, so it is built once per process,
    in a private temporary directory, with the system C compiler; there is no disk cache to
    trust or invalidate. None when there is no compiler, compiling fails, or the
    environment sets ``RAGTUNE_NF4_NATIVE=0``.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if os.environ.get("RAGTUNE_NF4_NATIVE") == "0" or compiler is None:
        return None
    with tempfile.TemporaryDirectory(prefix="ragtune-nf4-") as tmp:
        source, library = Path(tmp) / "nf4.c", Path(tmp) / "nf4.so"
        source.write_text(_DECODE_C)
        command = [compiler, "-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC"]
        try:
            subprocess.run([*command, "-o", str(library), str(source)], check=True, capture_output=True, timeout=120)
            lib = ctypes.CDLL(str(library))
        except (OSError, subprocess.SubprocessError):
            return None
    lib.nf4_decode.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2
    lib.nf4_decode.restype = None
    lib.dq_absmax.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_float, ctypes.c_void_p] + [ctypes.c_int64] * 2
    lib.dq_absmax.restype = None
    lib.nf4_linear.argtypes = (
        [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        + [ctypes.c_void_p] * 3
        + [
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        + [ctypes.c_int64] * 3
    )
    lib.nf4_linear.restype = ctypes.c_int
    lib.nf4_linear_available.argtypes = []
    lib.nf4_linear_available.restype = ctypes.c_int
    return lib


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _workers() -> ThreadPoolExecutor:
    """The decode threads; a forked child (which inherits no threads) makes its own."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="ragtune-nf4"))
    return _POOL[1]


def decode_native(
    packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, out: torch.Tensor, threads: int | None = None
) -> None:
    """Decode packed NF4 (CPU, starting on a block boundary) into ``out`` with the C kernel.

    ``out`` is contiguous float32 with room for ``2 * packed.numel()`` values. The bytes
    are split in whole blocks over ``threads`` threads (default ``torch.get_num_threads()``;
    ctypes releases the GIL), so the page faults of a fresh ``out`` are taken on all of them.
    """
    lib = native_decoder()
    if lib is None:
        raise RuntimeError("the native NF4 decoder is not available")
    packed, absmax = packed.contiguous(), absmax.float().contiguous()
    nbytes, half = packed.numel(), check_blocksize(blocksize) // 2
    # The kernel trusts its pointers: check everything it will read and write.
    if any(t.device.type != "cpu" for t in (packed, absmax, out)) or packed.dtype != torch.uint8:
        raise ValueError("decode_native takes uint8 codes and float32 tensors on the CPU")
    if absmax.numel() < -(-nbytes // half):
        raise ValueError(f"{nbytes} packed bytes need {-(-nbytes // half)} absmax values; got {absmax.numel()}")
    if out.dtype != torch.float32 or not out.is_contiguous() or out.numel() < 2 * nbytes:
        raise ValueError("out must be contiguous float32 with two values per packed byte")
    threads = torch.get_num_threads() if threads is None else threads
    parts = max(1, min(threads, nbytes // _MIN_PARALLEL_BYTES))
    step = max(half, -(-nbytes // parts // half) * half)

    def run(start: int) -> None:
        stop = min(nbytes, start + step)
        lib.nf4_decode(
            packed.data_ptr() + start,
            absmax.data_ptr() + 4 * (start // half),
            NF4_TABLE.data_ptr(),
            out.data_ptr() + 8 * start,
            stop - start,
            blocksize,
        )

    futures = [_workers().submit(run, start) for start in range(step, nbytes, step)]
    run(0)
    for future in futures:
        future.result()


def linear_native(
    x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, out_features: int
) -> torch.Tensor | None:
    """``x @ W.T`` for a few rows of fp32 ``x`` (CPU), ``W`` decoded inside the C kernel.

    ``packed`` and ``absmax`` (fp32 per block) hold the ``(out_features, x.shape[1])`` weight.
    The weight's rows are split over ``torch.get_num_threads()`` threads (ctypes releases the
    GIL). The output has no autograd history: NF4Linear's autograd function calls this.
    None where the kernel cannot run: no compiler, a CPU without AVX2 and FMA, or rows that
    do not start on a block boundary (``in_features % blocksize``); then the caller decodes
    tiles and multiplies them with ``torch.mm``.
    """
    lib = native_decoder()
    m, k = x.shape
    if lib is None or not lib.nf4_linear_available() or k % check_blocksize(blocksize):
        return None
    if m == 0 or out_features == 0:
        return torch.empty(m, out_features, dtype=torch.float32)
    x, packed, absmax = x.contiguous(), packed.contiguous(), absmax.float().contiguous()
    # The kernel trusts its pointers: check everything it will read.
    if any(t.device.type != "cpu" for t in (x, packed, absmax)) or x.dtype != torch.float32:
        raise ValueError("linear_native takes float32 inputs on the CPU")
    if (
        packed.dtype != torch.uint8
        or packed.numel() != out_features * k // 2
        or absmax.numel() < out_features * k // blocksize
    ):
        raise ValueError(f"packed codes and absmax do not hold a ({out_features}, {k}) weight in blocks of {blocksize}")
    out = torch.empty(m, out_features, dtype=torch.float32)
    parts = max(1, min(torch.get_num_threads(), packed.numel() // _MIN_PARALLEL_BYTES))
    rows = -(-out_features // parts // 16) * 16  # whole panels of 16 rows per thread

    def run(j0: int) -> int:
        return lib.nf4_linear(
            x.data_ptr(),
            m,
            k,
            packed.data_ptr(),
            absmax.data_ptr(),
            NF4_TABLE.data_ptr(),
            blocksize,
            out.data_ptr(),
            out_features,
            j0,
            min(out_features, j0 + rows),
        )

    futures = [_workers().submit(run, j0) for j0 in range(rows, out_features, rows)]
    codes = [run(0)] + [future.result() for future in futures]
    if any(codes):  # -2: checked above that this CPU can run it, so only allocation fails
        raise MemoryError("the NF4 kernel could not allocate its decode buffer")
    return out


def _decode_absmax_native(lib: ctypes.CDLL, codes: torch.Tensor, scales: torch.Tensor, offset: float) -> torch.Tensor:
    """The double-quantized absmax constants decoded by one serial C loop.

    The eager ops would leave their OpenMP threads spinning on the cores that the decode
    threads need next: measured +5 ms on a 4096x4096 weight, 2 threads.
    """
    codes, scales = codes.contiguous(), scales.float().contiguous()
    if codes.dtype != torch.uint8 or scales.numel() * DQ_BLOCKSIZE < codes.numel():
        raise ValueError("absmax must be uint8 codes with one scale per 256 of them")
    out = torch.empty(codes.numel(), dtype=torch.float32)
    lib.dq_absmax(
        codes.data_ptr(),
        _DYNAMIC_MAP.data_ptr(),
        scales.data_ptr(),
        offset,
        out.data_ptr(),
        codes.numel(),
        DQ_BLOCKSIZE,
    )
    return out


def _decode_in_chunks(packed: torch.Tensor, absmax: torch.Tensor, bs: int, out: torch.Tensor) -> None:
    """The eager decode (any device), a chunk at a time."""
    lut = NF4_BYTE_LUT.to(packed.device)
    padded = out.numel()
    chunk = _CHUNK_ELEMENTS if packed.device.type == "cpu" else _GPU_CHUNK_ELEMENTS
    step = max(1, chunk // bs) * bs
    index = torch.empty(min(step, padded) // 2, dtype=torch.int32, device=packed.device)
    pairs = torch.empty(index.numel(), dtype=torch.int64, device=packed.device)
    for start in range(0, padded, step):
        stop = min(start + step, padded)
        b0 = start // bs
        dequantize_packed_rows(
            packed[start // 2 : stop // 2], absmax[b0 : -(-stop // bs)], bs, index, pairs, lut, out[start:stop]
        )


def dequantize_nf4(packed: torch.Tensor, state: NF4QuantState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode packed NF4 codes to a tensor of ``state.shape`` (in ``state.dtype`` by default).

    Works on CPU and CUDA; the output is computed in fp32 and rounded once to ``dtype``.
    On CUDA one Triton kernel decodes (:mod:`ragtune.quant.nf4_triton`) where Triton is
    installed, with the same numbers.

    >>> import torch
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
    if packed.is_cuda and (triton_decode := _triton_decoder()) is not None:
        on_device = state.to(packed.device)
        return triton_decode(
            packed, on_device.absmax, on_device.absmax_scale, on_device.absmax_offset, state.blocksize, n, dtype
        ).view(state.shape)
    absmax = state.block_absmax().to(packed.device)
    bs = state.blocksize
    padded = n + n % 2
    out = torch.empty(padded, dtype=torch.float32, device=packed.device)
    if packed.device.type == "cpu" and native_decoder() is not None:
        decode_native(packed, absmax, bs, out)
    else:
        _decode_in_chunks(packed, absmax, bs, out)
    out = out[:n].view(state.shape)
    return out if dtype == torch.float32 else out.to(dtype)


@functools.lru_cache(maxsize=1)
def _triton_decoder() -> Callable[..., torch.Tensor] | None:
    """The Triton decode kernel for CUDA tensors (:mod:`ragtune.quant.nf4_triton`), or None
    where Triton is not installed (then CUDA tensors take the eager path)."""
    try:
        from ragtune.quant.nf4_triton import decode_nf4
    except ImportError:
        return None
    return decode_nf4
