"""Shared fixtures: a real embedder (loaded once) and systems over temporary stores."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's systems embed with torch: its fixtures and expectations were measured with torch's
# vectors, and an ONNX backend would export the model again into every test's data directory.
# tests/embed/test_onnx.py tests the ONNX backends, and the default one end to end.
os.environ.setdefault("RAGTUNE_EMBEDDING_BACKEND", "torch")
import pytest
import torch

# `make test` runs the suite in two pytest-xdist workers (most tests wait on a child process or a
# server as often as they compute): the cores are shared between them, two threads at most each,
# in this process and in every `ragtune` process a test starts.
THREADS = max(1, min(2, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
if "PYTEST_XDIST_WORKER" in os.environ:  # set outright: the workers inherit the controller's value
    os.environ["RAGTUNE_TORCH_THREADS"] = str(THREADS)
else:
    os.environ.setdefault("RAGTUNE_TORCH_THREADS", str(THREADS))

torch.set_num_threads(THREADS)
sys.path.insert(0, str(Path(__file__).parent))

from ragtune.config import Settings  # noqa: E402
from ragtune.embed import LocalEmbedder  # noqa: E402
from ragtune.system import System, build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
# Two SQuAD articles shipped with the tests (see its README.md): what the SQuAD tests run on.
SQUAD_MINI = REPO / "tests" / "data" / "squad-mini"
# The ten-article development set beside the repository; absent on a plain clone, so a test
# that needs it skips.
SQUAD_DEV = REPO.parent / "shared" / "data" / "squad-dev"


@cache
def _exported_embedder_cache() -> Path:
    """One ONNX int8 export of the default model for every CLI process of the session."""
    directory = Path(tempfile.mkdtemp(prefix="ragtune-test-embedders-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    LocalEmbedder(backend="onnx-int8", cache_dir=directory)
    return directory


def cli_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `ragtune` CLI process over `data_dir`: the product's default
    embedder (ONNX int8), from one export shared by the session, so the process loads only
    the export and its tokenizer (tests/embed/test_onnx.py tests the export into a data dir).
    A data dir indexed in-process with the `embedder` fixture (torch) needs
    RAGTUNE_EMBEDDING_BACKEND=torch in `extra`: the CLI refuses to mix embedders."""
    return os.environ | {
        "RAGTUNE_DATA_DIR": str(data_dir),
        "RAGTUNE_TORCH_THREADS": str(THREADS),
        "RAGTUNE_EMBEDDING_BACKEND": "onnx-int8",
        "RAGTUNE_EMBEDDING_CACHE_DIR": str(_exported_embedder_cache()),
        **extra,
    }


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(batch_size=32)


@pytest.fixture(scope="session")
def onnx_embedder() -> LocalEmbedder:
    """The product's default embedder (ONNX int8, 2.4x torch's ingestion here), for tests that
    index a lot and assert no vector's value."""
    return LocalEmbedder(backend="onnx-int8", cache_dir=_exported_embedder_cache())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", torch_threads=THREADS)


@pytest.fixture
def system(settings: Settings, embedder: LocalEmbedder) -> Iterator[System]:
    with build(settings, embedder=embedder) as built:
        yield built


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    target = tmp_path / "samples"
    shutil.copytree(SAMPLES, target)
    return target
