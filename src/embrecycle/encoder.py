"""Load a pretrained encoder and its tokenizer, and fingerprint what defines the cached states."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .errors import ConfigError, ModelLoadError
from .families import get_family
from .split import SplitEncoder
from .tokenization import check_token_limit, set_token_limit

__all__ = [
    "LoadedEncoder",
    "attn_kwargs",
    "check_max_length",
    "damaged_weights_error",
    "load_config",
    "load_encoder",
    "load_tokenizer",
    "model_identity",
    "model_problems",
    "module_fingerprint",
    "position_limit",
    "tokenizer_fingerprint",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Families whose absolute positions start after the padding index (position id = padding_idx + 1 + i).
_PADDING_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet"}

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
    """The model's config; raises :class:`ModelLoadError` with the reason and the fix.

    Every path that loads a model loads its config first, so this also refuses what cannot be loaded: a
    local path that does not exist, and a local model directory with only pickle weights (see
    :func:`check_model_path`).
    """
    check_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {e}\n"
            "Pass a local model directory or a Hugging Face hub id that exists (hub downloads need network)."
        ) from e


_WIDTHS: dict[tuple[str, str | None], int] = {}


def model_width(name_or_path: str, revision: str | None = None) -> int | None:
    """The model's hidden size, from its config as it is here (a local directory, or a hub model already
    downloaded; None when it cannot be read without a download: nothing is fetched for it)."""
    key = (name_or_path, revision)
    if key not in _WIDTHS:
        try:
            config = AutoConfig.from_pretrained(name_or_path, revision=revision, local_files_only=True)
        except (OSError, ValueError, KeyError):  # not here (yet), or not a model: the reference rates
            return None
        width = getattr(config, "hidden_size", None)
        if not isinstance(width, int):
            return None
        _WIDTHS[key] = width
    return _WIDTHS[key]


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local path, not a hub id (``namespace/name``)."""
    return (
        name.startswith(("./", "../", "/", "~", ".\\", "..\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def check_model_path(name_or_path: str) -> None:
    """Raise ModelLoadError for a local path that does not exist, or a model directory with only pickle weights."""
    path = Path(name_or_path)
    if not path.exists() and looks_like_path(name_or_path):
        expanded = path.expanduser()
        hint = (
            f" The '~' was not expanded: pass the full path {str(expanded)!r}."
            if expanded != path and expanded.exists()
            else " Check the path, or pass a Hugging Face hub id (namespace/name)."
        )
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: that local model directory does not exist (looked for "
            f"{path.absolute()}).{hint}"
        )
    if path.is_dir():
        _require_safetensors(path)


def _require_safetensors(path: Path) -> None:
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise ModelLoadError(pickle_only_message(str(path), pickles))


def pickle_only_message(name: str, files: list[str]) -> str:
    """Why a model with only pickle weights is refused, and how to convert it."""
    shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    return (
        f"the model {name!r} has only pickle weights ({shown}) and no .safetensors file; embrecycle loads "
        "safetensors only (a pickle file can run arbitrary code when it is loaded). If you trust the model, "
        'convert it once: python -c "from transformers import AutoModel; '
        f"AutoModel.from_pretrained('{name}').save_pretrained('{name}')\" (transformers reads the pickle with "
        "torch's weights-only loader and writes model.safetensors), or use a safetensors revision from the hub."
    )


def position_limit(model_config: Any) -> tuple[int, str] | None:
    """``(tokens, why)``: most tokens per document the model's absolute position embeddings take; None for a
    model with relative positions only (DeBERTa-v2/v3 without ``position_biased_input``)."""
    model_type = getattr(model_config, "model_type", "")
    if model_type == "deberta-v2" and not getattr(model_config, "position_biased_input", True):
        return None
    n = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if model_type in _PADDING_OFFSET_TYPES:
        pad = model_config.pad_token_id if isinstance(getattr(model_config, "pad_token_id", None), int) else 1
        return n - pad - 1, f"max_position_embeddings={n}, less {pad + 1}: positions start after the padding index"
    return n, f"max_position_embeddings={n}"


def check_max_length(max_length: int | None, model_config: Any, name: str) -> None:
    """Raise ConfigError when ``max_length`` exceeds the model's position limit (see :func:`position_limit`)."""
    limit = position_limit(model_config)
    if max_length is not None and limit is not None and max_length > limit[0]:
        raise ConfigError(
            f"max_length={max_length} is more than the model {name!r} takes: at most {limit[0]} tokens per "
            f"document ({limit[1]}). Pass --max-length {limit[0]} or less, or leave it out (the default is the "
            "model's limit, at most 512)."
        )


def model_problems(name_or_path: str, revision: str | None, max_length: int | None) -> list[str]:
    """What is wrong with settings for the model ``name_or_path``: a ``max_length`` above its position limit.

    For the settings' own checks, when they are made and before any work (only the model's config is read,
    and only when ``max_length`` is given). A model that cannot be loaded is no problem here: loading it
    reports that, with its fix.
    """
    if not isinstance(max_length, int) or max_length <= 0:
        return []  # unset (the model's limit), or refused as not positive
    try:
        limit = position_limit(load_config(name_or_path, revision))
    except ModelLoadError:
        return []
    if limit is None or max_length <= limit[0]:
        return []
    return [
        f"max_length={max_length} (more than the model {name_or_path!r} takes: at most {limit[0]} tokens per "
        f"document, {limit[1]}; pass --max-length {limit[0]} or less, or leave it out: the default is the model's "
        "limit, at most 512)"
    ]


def load_tokenizer(
    name_or_path: str,
    model_type: str,
    revision: str | None = None,
    max_length: int | None = None,
    model_config: Any = None,
) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer, with the model's position limit recorded on it (``encode_documents`` then
    refuses a larger ``max_length``).

    Args:
        name_or_path: The model.
        model_type: ``config.model_type``.
        revision: Hub revision.
        max_length: Checked against the model's limit before the tokenizer loads.
        model_config: The model's config (loaded when not given).

    Raises:
        ConfigError: ``max_length`` exceeds the model's position limit.
        ModelLoadError: the tokenizer cannot be loaded, or is not a fast tokenizer.
    """
    if model_config is None:
        model_config = load_config(name_or_path, revision)
    check_max_length(max_length, model_config, name_or_path)
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
    limit = position_limit(model_config)
    set_token_limit(tok, None if limit is None else (limit[0], f"{name_or_path!r}: {limit[1]}"))
    if max_length is not None:
        check_token_limit(tok, max_length, repr(name_or_path))
    return tok


def load_encoder(
    name_or_path: str,
    layer: int,
    revision: str | None = None,
    attn_implementation: str | None = None,
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
) -> LoadedEncoder:
    """Load ``AutoModel`` + tokenizer from a local directory or the hub and split it at ``layer``.

    The model is in eval mode. ``attn_implementation`` defaults to ``sdpa`` where
    the family supports it, ``eager`` otherwise. ``max_length``, when given, is checked against the
    model's position limit before any weight loads.

    Raises:
        ConfigError: ``max_length`` exceeds the model's position limit.
        ModelLoadError: the model cannot be loaded (missing local path, pickle-only weights, ...).
    """
    config = load_config(name_or_path, revision)
    get_family(config.model_type)  # unsupported architectures fail before loading weights
    check_max_length(max_length, config, name_or_path)
    try:
        model = AutoModel.from_pretrained(
            name_or_path, revision=revision, dtype=dtype, **attn_kwargs(config.model_type, attn_implementation)
        )
    except pickle.UnpicklingError as e:  # a hub model with only pickle weights: refused by torch's loader
        raise ModelLoadError(pickle_only_message(name_or_path, ["pytorch_model.bin"]) + f" ({e})") from e
    except SafetensorError as e:
        raise damaged_weights_error(name_or_path, e) from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the weights of {name_or_path!r}: {e}") from e
    model.eval()
    tokenizer = load_tokenizer(name_or_path, config.model_type, revision, max_length, config)
    return LoadedEncoder(name_or_path, revision, SplitEncoder(model, layer), tokenizer)


def damaged_weights_error(name_or_path: str, error: Exception) -> ModelLoadError:
    """The error for a model whose ``.safetensors`` weights cannot be read, naming the damaged file."""
    path = Path(name_or_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    damaged = [f for f in files if not _readable_safetensors(f)] or files
    where = ", ".join(str(f) for f in damaged) if damaged else f"a .safetensors weight file of {name_or_path!r}"
    fix = (
        "Copy or save the model there again"
        if files
        else "Delete the model's folder from the Hugging Face cache ($HF_HOME/hub) so that it is downloaded again"
    )
    return ModelLoadError(
        f"cannot load the weights of {name_or_path!r}: {where} is truncated or damaged ({error}). {fix}."
    )


def _readable_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), "pt"):
            return True
    except (SafetensorError, OSError):
        return False


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
