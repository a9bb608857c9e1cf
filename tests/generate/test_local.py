import sys
from pathlib import Path

import pytest
import torch

from ragtune.generate.base import NOT_FOUND
from ragtune.generate.local import LocalGenerator, LocalLM, SamplingParams, linear_weight_bytes
from ragtune.quant import NF4Linear
from ragtune.types import Hit

PROMPT_MESSAGES = [{"role": "user", "content": "who created milvus ?"}]


@pytest.fixture(scope="module")
def lm(tiny_llama_dir: Path) -> LocalLM:
    return LocalLM.load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def prompt(lm: LocalLM) -> str:
    return lm.chat_prompt(PROMPT_MESSAGES)


def _collect(stream):
    deltas = []
    while True:
        try:
            deltas.append(next(stream))
        except StopIteration as done:
            return deltas, done.value


def test_greedy_is_deterministic_and_respects_max_tokens(lm, prompt):
    first = lm.complete(prompt, SamplingParams(max_new_tokens=12))
    second = lm.complete(prompt, SamplingParams(max_new_tokens=12))
    assert first == second and first.text
    assert first.finish_reason == "length" and first.completion_tokens == 12
    assert first.prompt_tokens == lm.count_tokens(prompt)
    assert first.usage["total_tokens"] == first.prompt_tokens + 12
    shorter = lm.complete(prompt, SamplingParams(max_new_tokens=5))
    assert shorter.completion_tokens == 5 and first.text.startswith(shorter.text)


def test_kv_cache_decoding_matches_full_recomputation(lm, prompt):
    completion = lm.complete(prompt, SamplingParams(max_new_tokens=6))
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        for _ in range(6):  # no cache: the whole sequence every step
            ids = torch.cat([ids, lm.model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = lm.tokenizer.decode(ids[0, -6:], skip_special_tokens=True)
    assert completion.text == expected


def test_streaming_equals_non_streaming(lm, prompt):
    params = SamplingParams(max_new_tokens=15)
    deltas, completion = _collect(lm.stream(prompt, params))
    assert len(deltas) > 1 and "".join(deltas) == completion.text == lm.complete(prompt, params).text


def test_stop_sequence_ends_the_text_before_it(lm, prompt):
    full = lm.complete(prompt, SamplingParams(max_new_tokens=15)).text
    words = full.split()
    stop = " ".join(words[3:5])  # two words from the middle
    deltas, stopped = _collect(lm.stream(prompt, SamplingParams(max_new_tokens=15, stop=(stop,))))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]
    assert "".join(deltas) == stopped.text  # the stop string was never streamed, even in part


def test_sampling_is_seeded_and_differs_from_greedy(lm, prompt):
    sample = SamplingParams(max_new_tokens=12, temperature=1.5, seed=7)
    a, b = lm.complete(prompt, sample), lm.complete(prompt, sample)
    assert a.text == b.text
    other = lm.complete(prompt, SamplingParams(max_new_tokens=12, temperature=1.5, seed=8))
    greedy = lm.complete(prompt, SamplingParams(max_new_tokens=12))
    assert other.text != a.text or greedy.text != a.text


def test_bad_sampling_values_are_named():
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def _first_logits(lm: LocalLM, prompt: str) -> torch.Tensor:
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return lm.model(input_ids=ids).logits[0, -1]


def _save_adapter(base_dir: Path, target: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(target)
    return target


def test_lora_adapter_loads_and_changes_outputs(lm, prompt, tiny_llama_dir, tmp_path):
    adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
    tuned = LocalLM.load(tiny_llama_dir, adapter=adapter, device="cpu")
    assert not any("lora" in name for name, _ in tuned.model.named_modules())  # merged into dense weights
    assert (_first_logits(tuned, prompt) - _first_logits(lm, prompt)).abs().max() > 0.1
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json"):
        LocalLM.load(tiny_llama_dir, adapter=tmp_path, device="cpu")


def test_nf4_cuts_linear_weight_memory_and_still_decodes(lm, prompt, tiny_llama_dir, tmp_path):
    quantized = LocalLM.load(tiny_llama_dir, quant="nf4", device="cpu")
    report = quantized.quant_report
    assert len(report.replaced) == 14 and "lm_head" in report.skipped
    assert report.bytes_after < 0.3 * report.bytes_before
    assert linear_weight_bytes(quantized.model) < linear_weight_bytes(lm.model) - 0.7 * report.bytes_before
    # 4-bit weights move the logits a little, not arbitrarily.
    dense, nf4 = _first_logits(lm, prompt), _first_logits(quantized, prompt)
    assert torch.nn.functional.cosine_similarity(dense, nf4, dim=0) > 0.9
    assert quantized.complete(prompt, SamplingParams(max_new_tokens=8)).completion_tokens > 0
    # QLoRA-style: the adapter sits on the NF4 layers, unmerged.
    adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
    tuned = LocalLM.load(tiny_llama_dir, adapter=adapter, quant="nf4", device="cpu")
    assert any(isinstance(m, NF4Linear) for m in tuned.model.modules())
    assert (_first_logits(tuned, prompt) - nf4).abs().max() > 0.1


def test_int8_quarters_linear_weight_memory_and_keeps_the_logits(lm, prompt, tiny_llama_dir, tmp_path):
    quantized = LocalLM.load(tiny_llama_dir, quant="int8", device="cpu")
    report = quantized.quant_report
    assert report.format == "INT8" and len(report.replaced) == 14 and "lm_head" in report.skipped
    # int8 values plus one fp32 scale per output row: a little over a quarter of fp32.
    assert 0.25 * report.bytes_before < report.bytes_after < 0.3 * report.bytes_before
    assert linear_weight_bytes(quantized.model) < linear_weight_bytes(lm.model) - 0.7 * report.bytes_before
    assert type(quantized.model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    dense, int8 = _first_logits(lm, prompt), _first_logits(quantized, prompt)
    assert torch.nn.functional.cosine_similarity(dense, int8, dim=0) > 0.999
    assert (dense - int8).abs().max() > 0  # the weights really changed
    assert quantized.complete(prompt, SamplingParams(max_new_tokens=8)).completion_tokens > 0
    # The adapter is merged first, so the int8 weights are the tuned ones.
    adapter = _save_adapter(tiny_llama_dir, tmp_path / "adapter")
    tuned_dense = _first_logits(LocalLM.load(tiny_llama_dir, adapter=adapter, device="cpu"), prompt)
    tuned = LocalLM.load(tiny_llama_dir, adapter=adapter, quant="int8", device="cpu")
    assert not any("lora" in name for name, _ in tuned.model.named_modules())
    assert torch.nn.functional.cosine_similarity(tuned_dense, _first_logits(tuned, prompt), dim=0) > 0.999
    assert (_first_logits(tuned, prompt) - int8).abs().max() > 0.1


def test_int8_without_torchao_names_the_extra(tiny_llama_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # what an install without the extra sees
    with pytest.raises(ImportError, match=r"pip install 'ragtune\[int8\]'"):
        LocalLM.load(tiny_llama_dir, quant="int8", device="cpu")


def test_generator_prompts_with_the_chunks_and_reports_usage(lm):
    hits = [Hit("c1", "d1", "milvus was created by zilliz .", "/m.md", "milvus", 0, "", (), 1.0)]
    generator = LocalGenerator(lm, max_new_tokens=10, context_tokens=1024)
    deltas, generation = _collect(generator.stream("who created milvus ?", hits))
    assert generation == generator.generate("who created milvus ?", hits)
    assert generation.usage["completion_tokens"] <= 10 and generation.usage["prompt_tokens"] > 100
    assert generation.abstained == (generation.text == NOT_FOUND)
    if not generation.abstained:
        assert "".join(deltas).strip() == generation.text
