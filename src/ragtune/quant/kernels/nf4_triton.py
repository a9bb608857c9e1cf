"""The NF4 decode on CUDA: one Triton kernel for codes, double-quantized constants and cast.

Each program decodes a run of packed bytes: it reads the byte, the block's absmax (under
double quantization: the 8-bit code, its group's fp32 scale and the offset, decoded in
registers) and the two levels, and writes both weights interleaved, rounded once to the
output dtype. One launch, no temporaries, no host synchronisation: the constants stay on
the device. ``torch.compile`` of the same expression needed a recompile per weight shape
and paid Dynamo's guards on every call, which made it several times slower than
bitsandbytes (the H200 figures: BENCHMARKS.md, NF4, GPU).

The numbers equal the eager decode bit for bit: ``map[code] * scale`` and ``+ offset``
are rounded separately (``enable_fp_fusion=False`` forbids the fused multiply-add), as
the eager ops and bitsandbytes' two kernels do.

Importing this module needs Triton (it comes with CUDA builds of torch). With
``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors, which is how the test suite
checks it on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from ragtune.quant.nf4 import DQ_BLOCKSIZE, DYNAMIC_MAP_8BIT, NF4_TABLE, check_blocksize

__all__ = ["decode_nf4"]

# Packed bytes per program: 2048 outputs, 16 per thread with 4 warps (16-byte bf16 stores).
_BYTES_PER_PROGRAM = 1024


@triton.jit
def _decode_kernel(
    packed_ptr,
    absmax_ptr,
    table_ptr,
    dq_map_ptr,
    dq_scale_ptr,
    dq_offset_ptr,
    out_ptr,
    n_bytes,
    n_out,
    HALF_BLOCK: tl.constexpr,
    DOUBLE_QUANT: tl.constexpr,
    DQ_GROUP: tl.constexpr,
    BYTES: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * BYTES
    offsets = start + tl.arange(0, BYTES)
    in_range = offsets < n_bytes
    byte = tl.load(packed_ptr + offsets, mask=in_range, other=0).to(tl.int32)
    block = offsets // HALF_BLOCK
    if DOUBLE_QUANT:
        code = tl.load(absmax_ptr + block, mask=in_range, other=0).to(tl.int32)
        group_scale = tl.load(dq_scale_ptr + block // DQ_GROUP, mask=in_range, other=0.0)
        scale = tl.load(dq_map_ptr + code) * group_scale + tl.load(dq_offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=in_range, other=0.0)
    high = tl.load(table_ptr + (byte >> 4)) * scale
    low = tl.load(table_ptr + (byte & 15)) * scale
    values = tl.reshape(tl.join(high, low), (2 * BYTES,))  # high, low, high, low, ...
    out_offsets = 2 * start + tl.arange(0, 2 * BYTES)
    tl.store(out_ptr + out_offsets, values.to(out_ptr.dtype.element_ty), mask=out_offsets < n_out)


@functools.lru_cache(maxsize=8)
def _device_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The NF4 levels and the 8-bit map on ``device``, copied there once."""
    return NF4_TABLE.to(device), DYNAMIC_MAP_8BIT.to(device)


def decode_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    absmax_scale: torch.Tensor | None,
    absmax_offset: torch.Tensor | None,
    blocksize: int,
    numel: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Decode ``numel`` weights from flat packed codes into a new flat tensor of ``dtype``.

    ``absmax`` is fp32 per block, or with ``absmax_scale`` and ``absmax_offset`` (double
    quantization) uint8 codes in the dynamic 8-bit map. All tensors on one device.
    """
    check_blocksize(blocksize)
    packed, absmax = packed.contiguous(), absmax.contiguous()
    n_bytes = packed.numel()
    # The kernel reads where the indices point: check every size it will read.
    if n_bytes != -(-numel // 2):
        raise ValueError(f"{numel} weights need {-(-numel // 2)} packed bytes; got {n_bytes}")
    n_blocks = -(-numel // blocksize)
    if absmax.numel() < n_blocks:
        raise ValueError(
            f"{numel} weights in blocks of {blocksize} need {n_blocks} absmax values; got {absmax.numel()}"
        )
    levels, dq_map = _device_tables(packed.device)
    double_quant = absmax_scale is not None
    if absmax_scale is not None:  # double_quant, spelled so that mypy narrows the type
        if absmax_offset is None or absmax.dtype != torch.uint8 or absmax_scale.numel() < -(-n_blocks // DQ_BLOCKSIZE):
            raise ValueError("double quantization needs uint8 absmax codes, one scale per 256 of them, and the offset")
        scales, offset = absmax_scale.float().contiguous(), absmax_offset.float().reshape(1)
    else:
        absmax = absmax.float()
        scales = offset = absmax  # unread: DOUBLE_QUANT is off
    out = torch.empty(numel, dtype=dtype, device=packed.device)
    grid = (triton.cdiv(n_bytes, _BYTES_PER_PROGRAM),)
    # Triton launches on the current CUDA device; the tensors may live on another one.
    on_device = torch.cuda.device(packed.device) if packed.is_cuda else contextlib.nullcontext()
    with on_device:
        _decode_kernel[grid](
            packed,
            absmax,
            levels,
            dq_map,
            scales,
            offset,
            out,
            n_bytes,
            numel,
            HALF_BLOCK=blocksize // 2,
            DOUBLE_QUANT=double_quant,
            DQ_GROUP=DQ_BLOCKSIZE,
            BYTES=_BYTES_PER_PROGRAM,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return out
