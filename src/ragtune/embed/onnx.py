"""The embedding model run by ONNX Runtime, with fp32 or int8 weights.

sentence-transformers' own ``backend="onnx"`` loads models through optimum-onnx, whose only
release pins transformers < 4.58, while ragtune's training and generation run on transformers
5. So this module does what optimum would: export the model once with ``torch.onnx.export``,
let ONNX Runtime's transformer optimizer fuse attention and layer norms, and for ``int8``
apply ONNX Runtime's dynamic quantization (int8 weights per output channel, activations
quantized per call, so a text's int8 vector moves slightly, cosine ≈ 0.995, with the texts
that share its call). The export takes the whole sentence pipeline (the transformer and the
SentenceTransformer's own pooling, dense and normalisation modules), so a text goes from
tokens to its unit vector in one ONNX Runtime call, with sentence-transformers' tokenization.

Exports live in ``CACHE_DIR/<hash of the model's files>/``, so a changed model is exported
again and an unchanged one is reused on every later start. Files appear atomically (written
under a temporary name, then renamed), so processes starting together never read half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("ragtune.embed")

# Bump when the export recipe changes: older exports then stop matching and are redone.
_RECIPE = "2"
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_LONGEST_INPUT = 1 << 20  # tokens; a tokenizer's model_max_length above it is "unset"


def model_hash(model_dir: Path) -> str:
    """sha256 over the model directory's files (names and contents), in name order."""
    digest = hashlib.sha256(f"ragtune-onnx-{_RECIPE}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and ".cache" not in p.parts):
        digest.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class _SentenceEmbedding(torch.nn.Module):
    """Tokens to sentence vector as plain tensors, for export: the transformer, then every
    later module of the SentenceTransformer (pooling, dense, normalisation) as they are."""

    def __init__(self, transformer: Any, later_modules: list[torch.nn.Module], input_names: list[str]) -> None:
        super().__init__()
        self.transformer = transformer
        self.later_modules = torch.nn.ModuleList(later_modules)
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        hidden = self.transformer(**named).last_hidden_state
        features = {"token_embeddings": hidden, "attention_mask": named["attention_mask"]}
        for module in self.later_modules:
            features = module(features)
        return features["sentence_embedding"]


def export_file(out_dir: Path, int8: bool) -> Path:
    """The .onnx file `export` writes into `out_dir`."""
    return out_dir / ("model-int8.onnx" if int8 else "model.onnx")


def export(sentence_model: Any, model_dir: Path, out_dir: Path, int8: bool) -> Path:
    """Exports (and optimises, and for `int8` quantizes) `sentence_model`, loaded from
    `model_dir`, into `out_dir`; returns the .onnx file."""
    target = export_file(out_dir, int8)
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "exporting %s to ONNX%s in %s (once per model)", model_dir.name, " with int8 weights" if int8 else "", out_dir
    )
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch, _quiet_export():
        optimized = _export_optimized(sentence_model, model_dir, Path(scratch))
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(scratch) / "quantized.onnx"
            # A weight scale per output channel keeps MiniLM's vectors at cosine ≥ 0.99 of fp32's
            # (one scale per tensor: 0.95 on average).
            # DefaultTensorType: the optimizer's fused com.microsoft ops carry no type information.
            quantize_dynamic(
                optimized,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
            )
            optimized = quantized
        os.replace(optimized, target)
    return target


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporters' chatter is not the user's concern: the tracer warns about shapes that the
    dynamic axes handle, and ONNX Runtime's quantizer logs every tensor on the root logger."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _export_optimized(sentence_model: Any, model_dir: Path, scratch: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    # Eager attention traces into plain ops; SDPA's mask shortcuts would be frozen into the graph.
    transformer = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager").eval()
    example = sentence_model.preprocess(["an example", "a longer example sentence, padded"])
    names = [n for n in _INPUT_NAMES if n in example]
    raw = scratch / "raw.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _SentenceEmbedding(transformer, list(sentence_model)[1:], names).eval(),
            tuple(example[n] for n in names),
            str(raw),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names} | {"sentence_embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter handles BERT-family models without extra packages
        )
    optimized = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(getattr(config, "num_attention_heads", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0)),
    )
    path = scratch / "optimized.onnx"
    optimized.save_model_to_file(str(path))
    return path


class OnnxSentenceEncoder:
    """Embeds texts with an exported model: sentence-transformers' tokenizer, then ONNX Runtime
    calls of at most ``TOKENS_PER_CALL`` tokens (padding included)."""

    # On a 2-core CPU, MiniLM int8 is fastest at about 512 tokens per call: two or three chunks,
    # or a few dozen questions. One text per call leaves short questions to per-call overhead
    # (806 vs 1,494 questions/s), whole batches of 64 fall out of cache (96 vs 150 chunks/s).
    TOKENS_PER_CALL = 512

    def __init__(self, path: Path, preprocess: Any, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # By default ONNX Runtime's threads spin between calls, holding the CPUs that tokenizing,
        # the HTTP server and Milvus Lite need (under load: more CPU per request than torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.preprocess = preprocess

    def encode(self, texts: list[str], batch_size: int, show_progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        vectors: np.ndarray | None = None  # sized by the first call's output
        for start in tqdm(range(0, len(texts), batch_size), desc="embedding", unit="batch", disable=not show_progress):
            end = min(start + batch_size, len(texts))
            group = np.arange(start, end)
            tokens = {n: t.numpy() for n, t in self.preprocess(texts[start:end]).items() if n in self.input_names}
            lengths = tokens["attention_mask"].sum(axis=1)
            order = np.argsort(-lengths, kind="stable")  # longest first: similar lengths share a call
            first = 0
            while first < len(order):
                longest = int(lengths[order[first]])
                last = first + max(1, self.TOKENS_PER_CALL // max(longest, 1))
                picked = order[first:last]
                feeds = {n: t[picked, :longest].astype(np.int64, copy=False) for n, t in tokens.items()}
                (embedded,) = self.session.run(["sentence_embedding"], feeds)
                if vectors is None:
                    vectors = np.empty((len(texts), embedded.shape[1]), dtype=np.float32)
                vectors[group[picked]] = embedded
                first = last
        assert vectors is not None, "encode needs at least one text"
        return vectors


def load_encoder(sentence_model: Any, model_dir: Path, cache_dir: Path, int8: bool) -> tuple[OnnxSentenceEncoder, Path]:
    """The ONNX Runtime encoder of `sentence_model` (exported on first use) and its .onnx file."""
    path = export(sentence_model, model_dir, cache_dir / model_hash(model_dir), int8)
    return OnnxSentenceEncoder(path, sentence_model.preprocess, torch.get_num_threads()), path


class TextTokenizer:
    """sentence-transformers' text preprocessing for a model whose first module is its
    ``Transformer``: the model's own tokenizer with the same padding, truncation and length.

    Importing sentence-transformers costs 6–9 s on this 2-core CPU (it pulls in scikit-learn,
    peft and bitsandbytes), most of a CLI command's start. An exported graph already holds the
    pooling and normalisation, so it needs only the tokenizer; `tests/embed/test_onnx.py`
    checks the tokens equal sentence-transformers' own.
    """

    def __init__(self, model_dir: Path, max_length: int | None, lower_case: bool) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        # None: the model was saved by sentence-transformers 5.7 or later (a tuned one), which keeps
        # the length in the tokenizer's model_max_length and truncates there.
        self.max_length = int(self._tokenizer.model_max_length) if max_length is None else max_length
        self.lower_case = lower_case

    @classmethod
    def of(cls, model_dir: Path) -> TextTokenizer | None:
        """The tokenizer of a plain text model (Transformer, then pooling and the like), else None."""
        try:
            modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
            config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        first = modules[0].get("type", "") if isinstance(modules, list) and modules else ""
        length = config.get("max_seq_length")
        if first.rsplit(".", 1)[-1] != "Transformer" or not isinstance(length, (int, type(None))):
            return None
        if config.get("processing_kwargs"):  # tokenizer arguments of its own: sentence-transformers applies them
            return None
        tokenizer = cls(model_dir, length, bool(config.get("do_lower_case", False)))
        # A tokenizer without a length of its own says 1e30: sentence-transformers' path decides then.
        return tokenizer if tokenizer.max_length <= _LONGEST_INPUT else None

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.lower_case:
            texts = [text.lower() for text in texts]
        return dict(
            self._tokenizer(
                texts, padding=True, truncation="longest_first", max_length=self.max_length, return_tensors="pt"
            )
        )


def load_exported(model_dir: Path, cache_dir: Path, int8: bool) -> tuple[OnnxSentenceEncoder, Path, int, int] | None:
    """An earlier export of the model with its tokenizer alone, without loading
    sentence-transformers: (encoder, .onnx file, dimension, max tokens), or None when there
    is no export yet or the model is not a plain text model."""
    path = export_file(cache_dir / model_hash(model_dir), int8)
    tokenizer = TextTokenizer.of(model_dir) if path.is_file() else None
    if tokenizer is None:
        return None
    encoder = OnnxSentenceEncoder(path, tokenizer, torch.get_num_threads())
    dimension = encoder.session.get_outputs()[0].shape[1]
    if not isinstance(dimension, int):
        return None
    return encoder, path, dimension, tokenizer.max_length
