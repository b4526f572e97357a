"""Load a pretrained encoder and its tokenizer, and fingerprint what defines the cached states."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .errors import ConfigError, ModelLoadError
from .families import get_family
from .split import SplitEncoder

__all__ = [
    "LoadedEncoder",
    "attn_kwargs",
    "load_encoder",
    "load_tokenizer",
    "model_identity",
    "module_fingerprint",
    "tokenizer_fingerprint",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")

# BPE tokenizers that need a prefix space to accept pre-split words (CoNLL input).
_PREFIX_SPACE_TYPES = {"roberta", "camembert", "deberta", "longformer"}


@dataclass
class LoadedEncoder:
    """A pretrained encoder split at a layer, with its tokenizer and identity."""

    model_name: str
    revision: str | None
    split: SplitEncoder
    tokenizer: PreTrainedTokenizerBase
    _lower_fp: str | None = field(default=None, repr=False)
    _tokenizer_fp: str | None = field(default=None, repr=False)

    @property
    def layer(self) -> int:
        return self.split.layer

    def lower_fingerprint(self) -> str:
        """sha256 of the weights the layer-k states depend on; computed once (they are frozen)."""
        if self._lower_fp is None:
            self._lower_fp = module_fingerprint(self.split.lower_modules())
        return self._lower_fp

    def tokenizer_fingerprint(self) -> str:
        if self._tokenizer_fp is None:
            self._tokenizer_fp = tokenizer_fingerprint(self.tokenizer)
        return self._tokenizer_fp


def load_config(name_or_path: str, revision: str | None = None) -> Any:
    """The model's config; raises :class:`ModelLoadError` with the reason and the fix."""
    try:
        return AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {e}\n"
            "Pass a local model directory or a Hugging Face hub id that exists (hub downloads need network)."
        ) from e


def load_tokenizer(name_or_path: str, model_type: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    kwargs: dict[str, Any] = {"revision": revision}
    if model_type in _PREFIX_SPACE_TYPES:
        kwargs["add_prefix_space"] = True
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the tokenizer of {name_or_path!r}: {e}") from e
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(
            f"the tokenizer of {name_or_path!r} is not a fast tokenizer; embrecycle needs one "
            "(for word ids and character offsets). Install `tokenizers` or convert the tokenizer."
        )
    return tok


def load_encoder(
    name_or_path: str,
    layer: int,
    revision: str | None = None,
    attn_implementation: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedEncoder:
    """Load ``AutoModel`` + tokenizer from a local directory or the hub and split it at ``layer``.

    The model is in eval mode. ``attn_implementation`` defaults to ``sdpa`` where
    the family supports it, ``eager`` otherwise.
    """
    config = load_config(name_or_path, revision)
    get_family(config.model_type)  # unsupported architectures fail before loading weights
    try:
        model = AutoModel.from_pretrained(
            name_or_path, revision=revision, dtype=dtype, **attn_kwargs(config.model_type, attn_implementation)
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the weights of {name_or_path!r}: {e}") from e
    model.eval()
    tokenizer = load_tokenizer(name_or_path, config.model_type, revision)
    return LoadedEncoder(name_or_path, revision, SplitEncoder(model, layer), tokenizer)


def attn_kwargs(model_type: str, attn_implementation: str | None) -> dict[str, Any]:
    if attn_implementation is not None:
        if attn_implementation not in ("sdpa", "eager"):
            raise ConfigError(f"attn_implementation={attn_implementation!r}: choose 'sdpa' or 'eager'.")
        return {"attn_implementation": attn_implementation}
    if model_type in ("deberta-v2", "mpnet"):
        return {"attn_implementation": "eager"}  # the only path these families have
    return {"attn_implementation": "sdpa"}


def module_fingerprint(modules: dict[str, nn.Module]) -> str:
    """sha256 over the names, shapes, dtypes and values of every parameter and buffer."""
    h = hashlib.sha256(b"embrecycle/weights/v1")
    for prefix in sorted(modules):
        state = modules[prefix].state_dict()
        for name in sorted(state):
            t = state[name].detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}|{tuple(t.shape)}|{t.dtype}".encode())
            if t.numel():
                h.update(t.view(torch.uint8).numpy())  # hashed in place, no copy
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, normaliser, pre-tokenizer, post-processor)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps({"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map}, sort_keys=True)
    return hashlib.sha256((payload + extra).encode()).hexdigest()


def model_identity(name_or_path: str, config: Any = None) -> str | None:
    """What the base model exactly is: ``sha256:<digest>`` of a local directory's weight files, else the hub
    commit the config was resolved to (None when unknown)."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        return _files_digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)) if files else None
    return getattr(config, "_commit_hash", None) if config is not None else None


@functools.lru_cache(maxsize=16)
def _files_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over the names and bytes of files (cached per path, size and mtime: a base model is hashed once)."""
    h = hashlib.sha256(b"embrecycle/files/v1")
    for name, _size, _mtime in files:
        h.update(os.path.basename(name).encode() + b"\0")
        with open(name, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return "sha256:" + h.hexdigest()
