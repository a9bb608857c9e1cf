"""The usage examples in module docstrings are run, so they cannot rot."""

import doctest
import importlib

import pytest

MODULES = [
    "ragtune.config",
    "ragtune.ingest.loaders",
    "ragtune.ingest.chunking",
    "ragtune.ingest.pipeline",
    "ragtune.store.catalog",
    "ragtune.store.milvus",
    "ragtune.retrieve.retriever",
    "ragtune.generate.base",
    "ragtune.generate.extractive",
    "ragtune.eval.metrics",
    "ragtune.api.batching",
    "ragtune.api.health",
    "ragtune.api.metrics",
    "ragtune.api.query",
    "ragtune.api.security",
    "ragtune.api.uploads",
    "ragtune.store.jobs",
    "ragtune.store.keys",
    "ragtune.finetune.batching",
    "ragtune.finetune.data",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
