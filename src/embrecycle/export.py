"""Export a run as a standard transformers model directory that loads without this library.

The lower layers (pretrained, from the base model), the upper layers (trained,
or pretrained with LoRA merged in) and the head are stitched back into one
``AutoModelFor{Sequence,Token}Classification`` checkpoint; the tokenizer is
copied; a model card says what made it. The export checks itself: the saved
model, loaded back with ``from_pretrained``, must give the run's logits.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .errors import ConfigError, EmbRecycleError
from .predict import TaskModel, load
from .run import build_task_model
from .tokenization import encode_documents, pad_ids

__all__ = ["ExportResult", "export_run"]

PROBE_TEXTS = [
    "Embedding recycling reuses the states of the lower layers.",
    "A second, shorter probe.",
]
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    out: str
    max_abs_diff: float
    bytes: int


def export_run(run: str | os.PathLike[str] | TaskModel, out: str | os.PathLike[str]) -> ExportResult:
    """Write ``run`` as a plain transformers model directory at ``out`` (see the module docstring).

    Raises:
        ConfigError: the run has bottleneck adapters (not expressible as transformers weights).
        EmbRecycleError: the exported model does not reproduce the run's logits.
    """
    model = run if isinstance(run, TaskModel) else load(run, merge_lora=False)  # the check compares LoRA as trained
    record = model.record
    state = model.model.canonical_state_dict()  # raises for adapter runs
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new directory for the export.")
    plain = build_task_model(record.model, record.task, list(record.labels), record.revision)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"cannot stitch the run into {type(plain).__name__}: missing {missing}, extra {unexpected}.")
    plain.eval()
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    diff = _check(model, out)
    (out / "README.md").write_text(_model_card(model, diff), encoding="utf-8")
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return ExportResult(out=str(out), max_abs_diff=diff, bytes=size)


@torch.inference_mode()
def _check(model: TaskModel, out: Path) -> float:
    """Largest logit difference between the run and its export, loaded back with ``from_pretrained``: both in
    float32 on the run's device (the check is about the weights, not the precision of a run)."""
    device = model.hardware.device
    exported = model.task.auto_class.from_pretrained(out).eval().to(device)
    docs: list[Any] = [t.split() if model.task.name == "ner" else t for t in PROBE_TEXTS]
    enc = encode_documents(model.tokenizer, docs, model.record.states.max_length, "truncate")
    ids, mask = (t.to(device) for t in pad_ids(enc, model.tokenizer.pad_token_id or 0))
    model.model.eval()
    ours = model.model.forward_text(ids, mask)
    theirs = exported(input_ids=ids, attention_mask=mask).logits
    if ours.dim() == 3:
        m = mask.bool()
        ours, theirs = ours[m], theirs[m]
    diff = (ours - theirs).abs().max().item()
    if diff > TOLERANCE:
        raise EmbRecycleError(
            f"the exported model at {out} gives logits {diff:.2e} away from the run's (tolerance {TOLERANCE:g}); "
            "please report this with the run's run.json."
        )
    return diff


def _model_card(model: TaskModel, diff: float) -> str:
    record, states = model.record, model.record.states
    metrics_path = model.run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    best = {k: v for k, v in metrics.get("best", {}).items() if isinstance(v, float) and k != "train_loss"}
    cfg = record.train_config
    settings = {
        k: cfg.get(k)
        for k in ("epochs", "lr", "head_lr", "batch_size", "seed", "warmup_ratio", "weight_decay", "train_limit")
        if cfg.get(k) is not None
    }
    for k in ("lr", "head_lr"):  # unset: the mode's default, recorded in metrics.json
        if k not in settings and metrics.get(k) is not None:
            settings[k] = metrics[k]
    auto = model.task.auto_class.__name__
    lines = [
        "---",
        f"base_model: {record.model}",
        "library_name: transformers",
        f"pipeline_tag: {'token-classification' if model.task.name == 'ner' else 'text-classification'}",
        "tags: [embrecycle, embedding-recycling]",
        "---",
        "",
        f"# {model.run_dir.name}",
        "",
        f"A {model.task.name} model exported by embrecycle {__version__} from the run `{model.run_dir}`.",
        "",
        "| | |",
        "|---|---|",
        f"| task | {model.task.name} |",
        f"| labels | {', '.join(model.labels)} |",
        f"| base model | `{record.model}` ({states.model_type}, {states.num_layers} layers) |",
        f"| method | {record.method} |",
        f"| training mode | {record.mode} ({record.training_mode.description}) |",
        f"| cached layer k | {states.layer} (layers 1..{states.layer} frozen, from the cache) |",
        f"| trained above the cut | {record.training_mode.upper} |",
        f"| max length | {states.max_length} tokens ({states.truncation}) |",
        f"| training settings | {', '.join(f'{k}={v}' for k, v in settings.items())} |",
        f"| dev scores (best) | {', '.join(f'{k} {v:.4f}' for k, v in best.items()) or 'n/a'} |",
        f"| export check | logits within {diff:.1e} of the run's |",
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        f'model = {auto}.from_pretrained("path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        "```",
        "",
        "The lower layers are the base model's own; with embrecycle, cached layer-k states of the base model can be "
        "reused for this model and every other model trained on the same cache.",
        "",
    ]
    return "\n".join(lines)
