"""NF4 on a CUDA GPU: ragtune (its Triton decode) against bitsandbytes, in one run.

Self-contained: run it from the repository root on a machine with a CUDA GPU, a CUDA
build of torch with Triton, and bitsandbytes (transformers and peft for the QLoRA check).
It imports ragtune from ./src when ragtune is not installed, checks correctness on the
GPU first, then times each operation two ways:

* **per call**: CUDA events around ``--repeats`` back-to-back calls, divided by the count:
  what a caller pays, Python and kernel-launch overhead included;
* **graph**: the same call captured once in a CUDA graph and replayed: GPU time alone.

Operations, on a ``--size`` x ``--size`` weight (default 4096) quantized from bf16:
quantize; dequantize to bf16 with and without double quantization (ragtune
``dequantize_nf4``, on CUDA its Triton kernel, against bitsandbytes ``dequantize_4bit``);
the forward of a 16-row and a 4096-row bf16 input (ragtune ``NF4Linear``, bitsandbytes
``Linear4bit``, dense bf16 ``F.linear``).

    python bench/nf4_gpu.py --out bench/results/nf4_gpu.json

``--device cpu`` runs the same code on the CPU (perf_counter timing, no graphs): a dry run
of the script on a machine without a GPU, not a benchmark. Results go to --out as JSON,
and as Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class Timer:
    """Per-call and CUDA-graph timings in milliseconds on one device."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def per_call(self, fn: Callable[[], object]) -> float:
        for _ in range(3):
            fn()
        if self.device.type != "cuda":
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(self.repeats):
                    fn()
                runs.append((time.perf_counter() - start) * 1e3 / self.repeats)
            return statistics.median(runs)
        torch.cuda.synchronize()
        runs = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
            runs.append(start.elapsed_time(end) / self.repeats)
        return statistics.median(runs)

    def graph(self, fn: Callable[[], object]) -> float | None:
        """GPU time of one replay of ``fn`` captured in a CUDA graph; None off CUDA or if
        ``fn`` cannot be captured."""
        if self.device.type != "cuda":
            return None
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.repeats):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / self.repeats
        except Exception as error:  # a failed capture is reported, the run goes on
            print(f"graph capture failed: {type(error).__name__}: {error}", file=sys.stderr)
            torch.cuda.synchronize()
            return None


def qlora_steps(device: torch.device, steps: int = 30) -> dict[str, float]:
    """Train LoRA on a tiny Llama whose linear layers are NF4Linear, on one fixed batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragtune.quant.linear import add_nf4_to_lora_config, replace_linear_with_nf4

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config)
    replace_linear_with_nf4(model)
    model = get_peft_model(
        model, add_nf4_to_lora_config(LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"]))
    ).to(device)
    ids = torch.randint(0, 512, (4, 64), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    frozen_grads = sum(p.grad is not None for p in model.parameters() if not p.requires_grad)
    return {"first loss": losses[0], "last loss": losses[-1], "frozen params with grads": frozen_grads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "nf4_gpu.json")
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (bench/nf4_cpu.py is the CPU one)")
    try:
        import ragtune  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from ragtune.quant.dispatch import dequantize_nf4
    from ragtune.quant.linear import NF4Linear
    from ragtune.quant.nf4 import quantize_nf4

    timer = Timer(dev, args.repeats)
    n = args.size
    gen = torch.Generator(device=dev).manual_seed(0)
    w32 = torch.randn(n, n, device=dev, generator=gen) * 0.02
    w = w32.to(torch.bfloat16)
    checks: dict[str, object] = {}
    rows: list[tuple[str, str, float, float | None]] = []  # (group, name, per call, graph)

    def timed(group: str, name: str, fn: Callable[[], object]) -> None:
        rows.append((group, name, timer.per_call(fn), timer.graph(fn)))

    # Quantization: same codes as bitsandbytes on this device, and as ragtune on the CPU.
    packed, state = quantize_nf4(w32, 64, double_quant=False)
    bp, bs = bnbf.quantize_4bit(w32, blocksize=64, quant_type="nf4", compress_statistics=False)
    cpu_packed, cpu_state = quantize_nf4(w32.cpu(), 64, double_quant=False)
    checks["quantize fp32: codes == bitsandbytes (fraction equal)"] = float((packed == bp.flatten()).float().mean())
    checks["quantize fp32: absmax == bitsandbytes"] = bool(torch.equal(state.absmax, bs.absmax))
    checks["quantize fp32: codes == ragtune on CPU"] = bool(torch.equal(packed.cpu(), cpu_packed))
    checks["quantize fp32: absmax == ragtune on CPU"] = bool(torch.equal(state.absmax.cpu(), cpu_state.absmax))
    timed("quantize", "NF4+DQ ragtune quantize_nf4", lambda: quantize_nf4(w, 64, double_quant=True))
    timed(
        "quantize",
        "NF4+DQ bitsandbytes quantize_4bit",
        lambda: bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True),
    )

    for dq in (False, True):
        tag = "NF4+DQ" if dq else "NF4"
        packed, state = quantize_nf4(w, 64, double_quant=dq)
        bp, bs = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
        ours = dequantize_nf4(packed, state, torch.bfloat16)
        theirs = bnbf.dequantize_4bit(bp, bs)
        checks[f"{tag} bf16: codes == bitsandbytes (fraction equal)"] = float((packed == bp.flatten()).float().mean())
        checks[f"{tag}: bf16 output == ragtune on CPU, bit for bit"] = bool(
            torch.equal(ours.cpu(), dequantize_nf4(packed.cpu(), state.to("cpu"), torch.bfloat16))
        )
        checks[f"{tag}: bitsandbytes output dtype"] = str(theirs.dtype)
        checks[f"{tag}: max |ragtune - bitsandbytes| / max |w|"] = float(
            (ours.float() - theirs.float()).abs().max() / w.float().abs().max()
        )
        timed(
            f"dequantize {tag}",
            "ragtune dequantize_nf4",
            lambda packed=packed, state=state: dequantize_nf4(packed, state, torch.bfloat16),
        )
        timed(f"dequantize {tag}", "bitsandbytes dequantize_4bit", lambda bp=bp, bs=bs: bnbf.dequantize_4bit(bp, bs))

    dense = torch.nn.Linear(n, n, bias=False, device=dev, dtype=torch.bfloat16)
    dense.weight.data.copy_(w)
    ours = NF4Linear.from_linear(dense, 64, double_quant=True, compute_dtype=torch.bfloat16)
    lin4 = bnb.nn.Linear4bit(n, n, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
    lin4.weight = bnb.nn.Params4bit(
        w.cpu().clone(), requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64
    )
    lin4 = lin4.to(dev)
    for tokens in (16, 4096):
        x = torch.randn(tokens, n, device=dev, generator=gen).to(torch.bfloat16)
        with torch.no_grad():
            reference = torch.nn.functional.linear(x, ours.dequantize(torch.bfloat16))
            checks[f"forward {tokens} rows: max |NF4Linear - x @ dequantized W.T| / max"] = float(
                (ours(x).float() - reference.float()).abs().max() / reference.float().abs().max()
            )
            checks[f"forward {tokens} rows: max |NF4Linear - Linear4bit| / max"] = float(
                (ours(x).float() - lin4(x).float()).abs().max() / reference.float().abs().max()
            )
            group = f"forward {tokens}x{n} bf16"
            timed(group, "dense bf16 F.linear", lambda x=x: torch.nn.functional.linear(x, w))
            timed(group, "ragtune NF4Linear (NF4+DQ)", lambda x=x: ours(x))
            timed(group, "bitsandbytes Linear4bit (NF4+DQ)", lambda x=x: lin4(x))

    x = torch.randn(4096, n, device=dev, generator=gen).to(torch.bfloat16).requires_grad_()
    grad_out = torch.randn(4096, n, device=dev, generator=gen).to(torch.bfloat16)
    w_trainable_input = w.clone()
    group = f"forward+backward to the input {4096}x{n} bf16"
    timed(group, "dense bf16 F.linear", lambda: torch.nn.functional.linear(x, w_trainable_input).backward(grad_out))
    timed(group, "ragtune NF4Linear (NF4+DQ)", lambda: ours(x).backward(grad_out))
    timed(group, "bitsandbytes Linear4bit (NF4+DQ)", lambda: lin4(x).backward(grad_out))

    x = torch.randn(64, n, device=dev, generator=gen, dtype=torch.bfloat16, requires_grad=True)
    ours(x).float().square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x_ref, ours.dequantize(torch.bfloat16)).float().square().sum().backward()
    checks["backward: max |grad x - reference| / max"] = float(
        (x.grad.float() - x_ref.grad.float()).abs().max() / x_ref.grad.float().abs().max()
    )
    try:
        checks["QLoRA on NF4Linear, tiny Llama, 30 steps"] = qlora_steps(dev)
    except Exception:
        checks["QLoRA on NF4Linear, tiny Llama, 30 steps"] = traceback.format_exc(limit=3)

    machine = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bitsandbytes": bnb.__version__,
    }
    baseline = {
        "quantize": "NF4+DQ bitsandbytes quantize_4bit",
        "dequantize NF4": "bitsandbytes dequantize_4bit",
        "dequantize NF4+DQ": "bitsandbytes dequantize_4bit",
    }
    results = []
    for group, name, per_call, graph in rows:
        base_name = baseline.get(group, "bitsandbytes Linear4bit (NF4+DQ)")
        base = next(r for r in rows if r[0] == group and r[1] == base_name)
        dense_row = next((r for r in rows if r[0] == group and r[1] == "dense bf16 F.linear"), None)
        results.append(
            {
                "group": group,
                "name": name,
                "ms per call": per_call,
                "ms graph": graph,
                "per call / bitsandbytes": per_call / base[2],
                "graph / bitsandbytes": None if graph is None or base[3] is None else graph / base[3],
                "per call / dense": None if dense_row is None else per_call / dense_row[2],
                "graph / dense": None
                if dense_row is None or graph is None or dense_row[3] is None
                else graph / dense_row[3],
            }
        )
    print(f"machine: {json.dumps(machine)}")
    print("checks:", json.dumps(checks, indent=1))

    def cell(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    print(
        f"\n| operation ({n}x{n} weight) | implementation | ms per call | ms graph | ÷ bitsandbytes (per call / graph) | ÷ dense bf16 (per call / graph) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['group']} | {r['name']} | {cell(r['ms per call'])} | {cell(r['ms graph'])} | "
            f"{cell(r['per call / bitsandbytes'], 2)} / {cell(r['graph / bitsandbytes'], 2)} | "
            f"{cell(r['per call / dense'], 2)} / {cell(r['graph / dense'], 2)} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "checks": checks, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
