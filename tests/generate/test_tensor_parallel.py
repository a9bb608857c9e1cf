"""DeepSpeed-Inference tensor parallelism: `ragtune serve-llm` with RAGTUNE_LLM_TENSOR_PARALLEL=2
on 2 CPU processes (torchrun, gloo) shards the model, serves from rank 0, and answers with
the greedy tokens of the one-process model; the follower rank keeps in step across requests,
sampled and streamed ones included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ragtune.generate.local import LocalLM, SamplingParams
from tests.api.support import free_port

MESSAGES = [{"role": "user", "content": "who created milvus ?"}]


def _chat(url: str, **extra: object) -> dict:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "temperature": 0.0, **extra}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_tensor_parallel_is_refused_for_quantized_weights(tiny_llama_dir: Path, quant):
    with pytest.raises(ValueError, match="RAGTUNE_LLM_TENSOR_PARALLEL > 1 needs RAGTUNE_LLM_QUANT=none"):
        LocalLM.load(tiny_llama_dir, quant=quant, tensor_parallel=2)


@pytest.mark.slow
def test_two_shards_decode_the_tokens_of_one_process(tiny_llama_dir: Path):
    lm = LocalLM.load(tiny_llama_dir)
    expected = lm.complete(lm.chat_prompt(MESSAGES), SamplingParams(max_new_tokens=12)).text
    assert expected

    port = free_port()
    env = os.environ | {"RAGTUNE_LLM_TENSOR_PARALLEL": "2", "OMP_NUM_THREADS": "1", "RAGTUNE_TORCH_THREADS": "1"}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())),
        *("-m", "ragtune.cli", "serve-llm", "--model", str(tiny_llama_dir), "--served-model-name", "tiny"),
        *("--port", str(port)),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve-llm exited with {process.returncode}: {process.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "tensor-parallel serve-llm did not answer /health within 180 s"
            time.sleep(0.5)

        assert _chat(url)["choices"][0]["message"]["content"] == expected
        # A sampled request (rank 0 picks the seed both ranks sample with), then a streamed one
        # read only in part: the follower must stay in step for the greedy request after them.
        assert _chat(url, temperature=1.0)["choices"][0]["message"]["content"] is not None
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as stream:
            first = next(line for line in stream.iter_lines() if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["object"] == "chat.completion.chunk"
        assert _chat(url)["choices"][0]["message"]["content"] == expected
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
