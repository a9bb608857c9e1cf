"""The C kernels for the CPU (``nf4_cpu.c``): their build, their ctypes calls and their threads.

The source is package data next to this module. It is compiled with the system C compiler on
first use and called through ctypes, which releases the GIL, so the work is split over Python
threads.

>>> import torch
>>> from ragtune.quant.nf4 import decode_eager, quantize_nf4
>>> packed, state = quantize_nf4(torch.randn(4, 64), double_quant=False)
>>> native, eager = torch.empty(256), torch.empty(256)
>>> decode_eager(packed, state.absmax, 64, eager)
>>> if native_decoder() is not None:  # None without a C compiler
...     decode_native(packed, state.absmax, 64, native)
...     assert torch.equal(native, eager)
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import torch

from ragtune.quant.nf4 import DQ_BLOCKSIZE, DYNAMIC_MAP_8BIT, NF4_TABLE, check_blocksize

__all__ = ["decode_absmax_native", "decode_native", "linear_native", "native_decoder"]

SOURCE = "nf4_cpu.c"

# Below this many bytes a second thread costs more than it saves.
_MIN_PARALLEL_BYTES = 1 << 16


@functools.lru_cache(maxsize=1)
def native_decoder() -> ctypes.CDLL | None:
    """The C kernels built for this CPU, or None where they cannot be built.

    Plain C without torch headers compiles in well under a second (BENCHMARKS.md, NF4), so
    it is built once per process, in a private temporary directory, with the system C
    compiler; there is no disk cache to trust or invalidate. None when there is no compiler
    or compiling fails. A missing source file raises: the installation is broken.
    ``RAGTUNE_NF4_NATIVE=0`` is :mod:`ragtune.quant.dispatch`'s switch, which then never asks.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    code = resources.files("ragtune.quant.kernels").joinpath(SOURCE).read_text()
    with tempfile.TemporaryDirectory(prefix="ragtune-nf4-") as tmp:
        source, library = Path(tmp) / "nf4.c", Path(tmp) / "nf4.so"
        source.write_text(code)
        command = [compiler, "-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC"]
        try:
            subprocess.run([*command, "-o", str(library), str(source)], check=True, capture_output=True, timeout=120)
            lib = ctypes.CDLL(str(library))
        except (OSError, subprocess.SubprocessError):
            return None
    # The C signatures, argument by argument (pointers passed as addresses).
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.nf4_decode.argtypes = [ptr, ptr, ptr, ptr, i64, i64]
    lib.nf4_decode.restype = None
    lib.dq_absmax.argtypes = [ptr, ptr, ptr, ctypes.c_float, ptr, i64, i64]
    lib.dq_absmax.restype = None
    lib.nf4_linear.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, ptr, i64, i64, i64]
    lib.nf4_linear.restype = ctypes.c_int
    lib.nf4_linear_available.argtypes = []
    lib.nf4_linear_available.restype = ctypes.c_int
    return lib


def _built() -> ctypes.CDLL:
    lib = native_decoder()
    if lib is None:
        raise RuntimeError("the native NF4 decoder is not available")
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
    lib = _built()
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


def decode_absmax_native(codes: torch.Tensor, scales: torch.Tensor, offset: float) -> torch.Tensor:
    """Double-quantized absmax constants (uint8 codes, one fp32 scale per 256) decoded by a
    serial C loop, to the numbers of :meth:`ragtune.quant.nf4.NF4QuantState.block_absmax`."""
    lib = _built()
    codes, scales = codes.contiguous(), scales.float().contiguous()
    if codes.dtype != torch.uint8 or scales.numel() * DQ_BLOCKSIZE < codes.numel():
        raise ValueError("absmax must be uint8 codes with one scale per 256 of them")
    out = torch.empty(codes.numel(), dtype=torch.float32)
    lib.dq_absmax(
        codes.data_ptr(),
        DYNAMIC_MAP_8BIT.data_ptr(),
        scales.data_ptr(),
        offset,
        out.data_ptr(),
        codes.numel(),
        DQ_BLOCKSIZE,
    )
    return out
