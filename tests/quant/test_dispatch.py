"""One dispatch for dequantize_nf4 and NF4Linear: which implementation runs where."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

from ragtune.quant import NF4Linear
from ragtune.quant.dispatch import (
    NATIVE_SWITCH,
    Backend,
    block_absmax,
    decode_backend,
    dequantize_nf4,
    native_enabled,
)
from ragtune.quant.kernels import native
from ragtune.quant.nf4 import quantize_nf4

from .conftest import switch_off_native

CPU = torch.device("cpu")


def _needs_c_kernels() -> None:
    if decode_backend(CPU) is not Backend.NATIVE:
        pytest.skip("no C compiler here (or RAGTUNE_NF4_NATIVE=0)")


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of one of the C kernels' entry points, which still run."""
    calls: list[int] = []
    real: Callable[..., object] = getattr(native, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(native, name, counted)
    return calls


def test_backend_follows_the_device_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    has_triton = importlib.util.find_spec("triton") is not None
    assert decode_backend(torch.device("cuda")) is (Backend.TRITON if has_triton else Backend.EAGER)
    assert decode_backend(torch.device("meta")) is Backend.EAGER
    monkeypatch.delenv(NATIVE_SWITCH, raising=False)
    native_enabled.cache_clear()
    expected = Backend.NATIVE if native.native_decoder() is not None else Backend.EAGER
    assert decode_backend(CPU) is expected
    switch_off_native(monkeypatch)
    assert decode_backend(CPU) is Backend.EAGER
    assert decode_backend(torch.device("cuda")) is (Backend.TRITON if has_triton else Backend.EAGER)


def test_c_absmax_decode_equals_the_eager_one() -> None:
    _needs_c_kernels()
    _, state = quantize_nf4(torch.randn(700, 300) * 0.02, 64, double_quant=True)  # a partial last group
    assert torch.equal(block_absmax(state), state.block_absmax())


@pytest.mark.parametrize(("rows", "fused"), [(4, True), (1000, False)])
def test_nf4_linear_fuses_few_rows_and_tiles_many(monkeypatch: pytest.MonkeyPatch, rows: int, fused: bool) -> None:
    _needs_c_kernels()
    layer = NF4Linear.from_linear(torch.nn.Linear(128, 64, bias=False), 64)
    x = torch.randn(rows, 128)
    expected = x @ layer.dequantize().t()
    fused_calls, decode_calls = _spy(monkeypatch, "linear_native"), _spy(monkeypatch, "decode_native")
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert bool(fused_calls) is fused and bool(decode_calls) is not fused


def test_switched_off_nothing_calls_the_c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = NF4Linear.from_linear(torch.nn.Linear(128, 64, bias=False), 64)
    reference = layer.dequantize()
    switch_off_native(monkeypatch)
    calls = [_spy(monkeypatch, name) for name in ("decode_native", "linear_native", "decode_absmax_native")]
    assert torch.equal(layer.dequantize(), reference)  # the same numbers from eager ops
    for rows in (4, 1000):
        x = torch.randn(rows, 128, requires_grad=True)
        layer(x).sum().backward()
    assert not any(calls)


def test_dequantize_checks_the_packed_codes() -> None:
    packed, state = quantize_nf4(torch.randn(64))
    with pytest.raises(ValueError, match="32 uint8 bytes"):
        dequantize_nf4(packed.int(), state)
