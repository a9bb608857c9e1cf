"""The NF4 codec and its kernels: derived table, blockwise codes, double quantization,
bitsandbytes parity, the C and Triton decodes against the eager one."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file

from ragtune.quant.dispatch import Backend, decode_backend, dequantize_nf4, native_enabled
from ragtune.quant.kernels import native
from ragtune.quant.nf4 import (
    DYNAMIC_MAP_8BIT,
    NF4_TABLE,
    NF4QuantState,
    bits_per_parameter,
    derive_nf4_table,
    dynamic_map_8bit,
    quantize_nf4,
)

from .conftest import switch_off_native

bnbf = pytest.importorskip("bitsandbytes.functional")

# QLoRA's published NF4 levels (Dettmers et al. 2023, Appendix E; bitsandbytes' table).
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def test_table_is_derived_and_equals_the_published_values() -> None:
    table = derive_nf4_table()
    assert table.dtype == torch.float32 and table.shape == (16,)
    assert torch.allclose(table.double(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(NF4_TABLE, bnbf.get_4bit_type("nf4", device="cpu"))
    # asymmetric halves: 7 negative levels, an exact zero, 8 positive levels
    assert (table < 0).sum() == 7 and table[7] == 0 and (table > 0).sum() == 8
    assert torch.all(table[1:] > table[:-1])


def test_table_depends_on_the_offset() -> None:
    # the derivation really runs: another offset gives other levels
    assert not torch.allclose(derive_nf4_table(0.99), NF4_TABLE, atol=1e-3)


def test_dynamic_map_equals_bitsandbytes() -> None:
    assert torch.equal(dynamic_map_8bit(), bnbf.create_dynamic_map(signed=True))
    assert torch.equal(DYNAMIC_MAP_8BIT, dynamic_map_8bit())


CASES = [
    ((256, 320), torch.float32, 64),
    ((1000, 77), torch.bfloat16, 64),  # blocks straddle rows, last block partial
    ((33,), torch.float16, 32),  # odd number of weights: last byte half padding
    ((3, 513), torch.float32, 128),
    ((5000,), torch.float32, 4096),
    ((2, 3, 40), torch.float32, 64),  # any number of dimensions
]


@pytest.mark.parametrize(("shape", "dtype", "blocksize"), CASES)
def test_codes_and_absmax_equal_bitsandbytes(
    decoder: str, shape: tuple[int, ...], dtype: torch.dtype, blocksize: int
) -> None:
    w = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype)
    packed, state = quantize_nf4(w, blocksize, double_quant=False)
    ref_packed, ref_state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert torch.equal(packed, ref_packed.flatten())
    assert torch.equal(state.absmax, ref_state.absmax)
    out = dequantize_nf4(packed, state)
    assert out.shape == w.shape and out.dtype == dtype
    # bitsandbytes 0.50.2 returns a 1-D weight of blocksize 4096 as (1, n) on some CPUs: compare values.
    assert torch.equal(out, bnbf.dequantize_4bit(ref_packed, ref_state).reshape(w.shape))


def test_high_nibble_holds_the_first_code() -> None:
    packed, state = quantize_nf4(torch.tensor([1.0, -1.0, 0.0]), double_quant=False)
    assert packed.tolist() == [0xF0, 0x77]  # 15|0, then 7 (zero) | 7 (padding)
    assert dequantize_nf4(packed, state).tolist() == [1.0, -1.0, 0.0]


def test_exact_values_survive() -> None:
    w = torch.zeros(4, 64)
    w[1, 5], w[2, 7] = 3.0, -0.5  # block absmax and zeros are represented exactly
    packed, state = quantize_nf4(w, 64)
    out = dequantize_nf4(packed, state)
    assert out[0].abs().sum() == 0  # an all-zero block stays zero
    assert out[1, 5] == pytest.approx(3.0, rel=1e-2) and out[2, 7] == pytest.approx(-0.5, rel=1e-2)
    assert (out[1] != 0).sum() == 1


def test_double_quant_decodes_bitsandbytes_states_exactly(decoder: str) -> None:
    w = torch.randn(512, 512) * 0.02
    ref_packed, ref = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = NF4QuantState((512, 512), torch.float32, 64, ref.absmax, ref.state2.absmax, ref.offset)
    assert torch.equal(dequantize_nf4(ref_packed.flatten(), theirs), bnbf.dequantize_4bit(ref_packed, ref))


def test_double_quant_is_nearest_and_bitsandbytes_reads_it() -> None:
    w = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0)) * 0.02
    packed, state = quantize_nf4(w, 64, double_quant=True)
    _, plain = quantize_nf4(w, 64, double_quant=False)
    ref_packed, ref = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(packed, ref_packed.flatten())
    assert state.absmax.dtype == torch.uint8 and state.absmax_scale is not None
    assert state.absmax_offset is not None and float(state.absmax_offset) == pytest.approx(float(ref.offset))
    assert torch.equal(state.absmax_scale, ref.state2.absmax)
    # bitsandbytes' CPU search sometimes returns a neighbour of the nearest 8-bit level;
    # we round to the nearest, so codes agree almost everywhere and ours are never worse.
    same = (state.absmax == ref.absmax).float().mean().item()
    assert same > 0.99
    ours = (state.block_absmax() - plain.absmax).abs()
    theirs = (bnbf.dequantize_blockwise(ref.absmax, ref.state2) + ref.offset - plain.absmax).abs()
    assert torch.all(ours <= theirs)
    # and bitsandbytes decodes our double-quantized state to the same weights as we do
    as_bnb = bnbf.QuantState(
        absmax=state.absmax,
        shape=torch.Size(state.shape),
        code=bnbf.get_4bit_type("nf4", device="cpu"),
        blocksize=64,
        quant_type="nf4",
        dtype=torch.float32,
        offset=state.absmax_offset,
        state2=bnbf.QuantState(absmax=state.absmax_scale, code=dynamic_map_8bit(), blocksize=256, dtype=torch.float32),
    )
    assert torch.equal(bnbf.dequantize_4bit(packed.view(-1, 1), as_bnb), dequantize_nf4(packed, state))


def test_double_quant_costs_little_accuracy() -> None:
    w = torch.randn(1024, 1024) * 0.02
    plain = dequantize_nf4(*quantize_nf4(w, double_quant=False))
    dq = dequantize_nf4(*quantize_nf4(w, double_quant=True))
    mse_plain = (plain - w).square().mean()
    mse_dq = (dq - w).square().mean()
    assert mse_plain <= mse_dq < 1.01 * mse_plain
    assert mse_plain < 0.01 * w.square().mean()  # NF4 keeps >99% of the signal energy


def test_bits_per_parameter() -> None:
    assert bits_per_parameter(64, double_quant=False) == 4.5
    assert bits_per_parameter(64, double_quant=True) == pytest.approx(4.127, abs=5e-4)
    _, plain = quantize_nf4(torch.randn(1024, 1024), double_quant=False)
    _, dq = quantize_nf4(torch.randn(1024, 1024), double_quant=True)
    assert plain.bits_per_parameter() == 4.5
    assert dq.bits_per_parameter() == pytest.approx(4.127, abs=5e-4)


def test_state_roundtrips_through_safetensors(tmp_path) -> None:
    w = torch.randn(300, 70).to(torch.bfloat16)
    packed, state = quantize_nf4(w, 32)
    save_file(
        {"packed": packed, **{f"state.{k}": v for k, v in state.state_dict().items()}}, tmp_path / "w.safetensors"
    )
    loaded = load_file(tmp_path / "w.safetensors")
    restored = NF4QuantState.from_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("state.")})
    assert restored.shape == (300, 70) and restored.dtype == torch.bfloat16 and restored.blocksize == 32
    assert torch.equal(dequantize_nf4(loaded["packed"], restored), dequantize_nf4(packed, state))


def test_output_dtype_can_be_chosen() -> None:
    packed, state = quantize_nf4(torch.randn(8, 64).half())
    assert dequantize_nf4(packed, state).dtype == torch.float16
    assert dequantize_nf4(packed, state, torch.float32).dtype == torch.float32


def test_large_tensor_in_several_chunks_matches_bitsandbytes(decoder: str) -> None:
    # more than one internal chunk (2**20 weights), with a ragged end
    w = torch.randn(2**21 + 96)
    packed, state = quantize_nf4(w, 64, double_quant=False)
    ref_packed, ref = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, ref_packed.flatten())
    # bitsandbytes returns 1-D inputs as one row
    assert torch.equal(dequantize_nf4(packed, state), bnbf.dequantize_4bit(ref_packed, ref).flatten())


@pytest.mark.parametrize("blocksize", [0, 16, 100, 8192, True])
def test_bad_blocksize_is_named(blocksize: int) -> None:
    with pytest.raises(ValueError, match=f"got {blocksize!r}"):
        quantize_nf4(torch.randn(64), blocksize)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(TypeError, match=r"torch.int64"):
        quantize_nf4(torch.arange(64))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.empty(0, 4))
    packed, state = quantize_nf4(torch.randn(64))
    with pytest.raises(ValueError, match="32 uint8 bytes"):
        dequantize_nf4(packed[:-1], state)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 33])  # every row tail of the 4-row tiles
def test_decode_and_multiply_kernel_matches_decode_then_matmul(rows: int) -> None:
    if native.native_decoder() is None:
        pytest.skip("no C compiler here: NF4Linear decodes tiles with eager ops")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # 512x512 codes are 128 KiB: split over both threads
    try:
        for out_features, in_features, blocksize in [(512, 512, 64), (37, 96, 32), (3, 4096, 4096)]:
            packed, state = quantize_nf4(torch.randn(out_features, in_features), blocksize)
            x = torch.randn(rows, in_features)
            got = native.linear_native(x, packed, state.block_absmax(), blocksize, out_features)
            if got is None:
                pytest.skip("this CPU lacks AVX2/FMA: NF4Linear decodes tiles instead")
            expected = x @ dequantize_nf4(packed, state).t()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


def test_decode_and_multiply_kernel_refuses_what_it_cannot_do() -> None:
    if native.native_decoder() is None:
        pytest.skip("no C compiler here")
    with pytest.raises(ValueError, match="blocksize"):  # 2-weight blocks would read past x's rows
        native.linear_native(torch.randn(1, 2), torch.zeros(1, dtype=torch.uint8), torch.ones(1), 2, 1)
    packed, state = quantize_nf4(torch.randn(8, 96), 64)
    # rows of 96 weights do not start on 64-weight blocks: the caller decodes tiles instead
    assert native.linear_native(torch.randn(2, 96), packed, state.block_absmax(), 64, 8) is None
    packed, state = quantize_nf4(torch.randn(8, 64), 64)
    with pytest.raises(ValueError, match="do not hold a"):
        native.linear_native(torch.randn(2, 64), packed[:-1], state.block_absmax(), 64, 8)
    with pytest.raises(ValueError, match="float32"):
        native.linear_native(torch.randn(2, 64, dtype=torch.float64), packed, state.block_absmax(), 64, 8)


@pytest.mark.parametrize("default_dtype", [torch.float64, torch.float16])
def test_native_kernels_write_float32_whatever_the_default_dtype(default_dtype: torch.dtype) -> None:
    # their buffers are float32 by construction, not by torch's default dtype
    from ragtune.quant.linear import NF4Linear

    layer = NF4Linear.from_linear(torch.nn.Linear(256, 64, bias=False), 64, double_quant=True)
    x = torch.randn(4, 256)
    expected = x @ layer.dequantize().t()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        got = layer(x)
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def interpreted_triton(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The CUDA decode module imported under Triton's interpreter, which runs the same
    kernel on CPU tensors (numpy underneath): its indexing and masks checked without a GPU."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    sys.modules.pop("ragtune.quant.kernels.nf4_triton", None)
    yield importlib.import_module("ragtune.quant.kernels.nf4_triton")
    sys.modules.pop("ragtune.quant.kernels.nf4_triton", None)


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize(("shape", "blocksize"), [((37, 61), 64), ((128, 512), 32), ((3, 8198), 4096)])
def test_triton_decode_kernel_matches_the_cpu_decode(
    interpreted_triton: ModuleType, shape: tuple[int, int], blocksize: int, double_quant: bool
) -> None:
    # odd sizes (a half-filled last byte and block), many double-quantization groups, big blocks
    packed, state = quantize_nf4(torch.randn(shape) * 0.05, blocksize, double_quant)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        got = interpreted_triton.decode_nf4(
            packed, state.absmax, state.absmax_scale, state.absmax_offset, blocksize, state.numel, dtype
        )
        expected = dequantize_nf4(packed, state, dtype).reshape(-1)
        assert got.dtype == dtype and got.shape == expected.shape
        if dtype == torch.bfloat16:
            # the interpreter truncates fp32 to bf16 (a GPU rounds to nearest even, which
            # bench/nf4_gpu.py checks bit for bit): equal within one bf16 step
            assert torch.allclose(got.float(), expected.float(), rtol=2**-7, atol=0)
        else:
            assert torch.equal(got, expected)


def test_triton_decode_refuses_constants_that_do_not_cover_the_weights(interpreted_triton: ModuleType) -> None:
    packed, state = quantize_nf4(torch.randn(64, 64), 32, double_quant=False)
    decode = interpreted_triton.decode_nf4
    with pytest.raises(ValueError, match="need 128 absmax values; got 64"):  # a wrong blocksize, say
        decode(packed, state.absmax[:64], None, None, 32, state.numel, torch.float32)
    with pytest.raises(ValueError, match="packed bytes"):
        decode(packed[:-1], state.absmax, None, None, 32, state.numel, torch.float32)
    with pytest.raises(ValueError, match="blocksize"):
        decode(packed, state.absmax, None, None, 2, state.numel, torch.float32)
    packed, state = quantize_nf4(torch.randn(512, 256), 32, double_quant=True)  # 4096 blocks: 16 scales
    with pytest.raises(ValueError, match="one scale per 256"):
        decode(packed, state.absmax, state.absmax_scale[:-1], state.absmax_offset, 32, state.numel, torch.float32)


@pytest.fixture
def fresh_native_decoder() -> Iterator[Callable[[], object]]:
    """Forget the built kernel and the dispatch's decision, so a test can watch them being made."""
    native.native_decoder.cache_clear()
    native_enabled.cache_clear()
    yield native.native_decoder
    native.native_decoder.cache_clear()


def _fail(*args: object, **kwargs: object) -> None:
    raise subprocess.CalledProcessError(1, "cc")


@pytest.mark.parametrize("broken", ["no compiler", "compile error", "switched off"])
def test_without_a_working_c_compiler_the_eager_decode_runs(
    monkeypatch: pytest.MonkeyPatch, fresh_native_decoder: Callable[[], object], broken: str
) -> None:
    if broken == "no compiler":
        monkeypatch.setattr(native.shutil, "which", lambda name: None)
    elif broken == "compile error":
        monkeypatch.setattr(native.subprocess, "run", _fail)
    else:
        switch_off_native(monkeypatch)
    assert decode_backend(torch.device("cpu")) is Backend.EAGER
    w = torch.randn(300, 64)
    packed, state = quantize_nf4(w, 64, double_quant=False)
    ref_packed, ref = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(dequantize_nf4(packed, state), bnbf.dequantize_4bit(ref_packed, ref))
    if broken == "switched off":
        assert native.native_decoder.cache_info().currsize == 0  # nothing was compiled
    else:
        assert fresh_native_decoder() is None


def test_native_decode_splits_over_threads_like_the_eager_one(monkeypatch: pytest.MonkeyPatch) -> None:
    if native.native_decoder() is None:
        pytest.skip("no C compiler here")
    # three threads, a ragged last block and an odd number of weights
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    w = torch.randn(3 * 2**17 + 77)
    packed, state = quantize_nf4(w, 128, double_quant=True)
    decoded = dequantize_nf4(packed, state)
    switch_off_native(monkeypatch)
    assert torch.equal(decoded, dequantize_nf4(packed, state))


def test_native_decode_checks_what_the_kernel_will_touch() -> None:
    if native.native_decoder() is None:
        pytest.skip("no C compiler here")
    packed, state = quantize_nf4(torch.randn(256), 64, double_quant=False)
    with pytest.raises(ValueError, match="need 4 absmax values; got 3"):
        native.decode_native(packed, state.absmax[:3], 64, torch.empty(256))
    with pytest.raises(ValueError, match="two values per packed byte"):
        native.decode_native(packed, state.absmax, 64, torch.empty(255))
