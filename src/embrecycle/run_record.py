"""The typed record of a training run: what ``run.json`` holds, read and written in one place.

Format version 2 (this release) stores the cache settings of the run's layer-k
states as :class:`~embrecycle.cache.settings.CacheSettings` itself, the training
mode by its registry name and the base model's revision. Version 1 runs (written
by embrecycle 0.1.0) are read and converted; anything else fails with a message
that says how to re-create the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .cache.settings import KEY_FIELDS, CacheSettings
from .errors import ConfigError, NotARunError, RunCorruptedError
from .files import write_text_atomic
from .modes import TrainingMode, get_mode, mode_of_v1_run
from .run_dir import check_complete, check_finished
from .upper import UpperOptions

__all__ = ["RUN_FILE", "RUN_FORMAT", "RUN_FORMAT_VERSION", "RunRecord", "read_run_record"]

RUN_FILE = "run.json"
SELF_CHECK = "record_sha256"
"""Key of ``run.json``'s checksum of its own content (every other key, canonical JSON)."""
RUN_FORMAT = "embrecycle-run"
RUN_FORMAT_VERSION = 2

# Settings that decide the layer-k states: runs share a pass over documents only if all of these agree.
STATE_FIELDS = tuple(k for k in KEY_FIELDS if k != "dtype")


@dataclass(frozen=True)
class RunRecord:
    """Everything a run directory says about how it was made.

    Attributes:
        task: Task name (``classification``, ``ner``).
        labels: The label vocabulary, in the head's order.
        mode: Training mode name (:mod:`embrecycle.modes`).
        states: Settings of the layer-k states the run reads (``dtype``: the storage dtype of its training
            cache; any storage dtype of the same states is accepted when predicting).
        upper_options: LoRA and adapter settings.
        upper_fingerprint: For frozen-base modes, the pretrained upper layers the run depends on.
        model_revision: The base model's identity as trained on: the hub commit hash, or ``sha256:...`` of a
            local directory's weight files (``states.model_revision`` is the revision as requested).
        cache: Where the training cache was (None for runs trained from text).
        train_config: The training settings as given (informational).
        device, precision: Where and in which compute precision the run trained (resolved from ``auto``).
        source: For a cross-model run (``--source-cache``): the source cache's ``settings`` (model, revision,
            layer, hidden size, tokenizer fingerprint, dtype, ...), its ``fingerprint`` and ``location``, and the
            ``fusion`` kind; None otherwise.
        label_counts: How often each label occurs in the training data (NER: each tag over the words), the
            reference a server's drift signal compares predictions with; empty in runs of releases before 0.3.
        files: ``sha256:`` of every other file of the finished run (weights, labels, metrics, curves), checked
            by every reader; empty while training and in runs of releases before 0.2.
        embrecycle_version: The release that wrote the run.
    """

    task: str
    labels: tuple[str, ...]
    mode: str
    states: CacheSettings
    upper_options: UpperOptions = field(default_factory=UpperOptions)
    upper_fingerprint: str | None = None
    model_revision: str | None = None
    cache: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    label_counts: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    embrecycle_version: str = __version__

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        get_mode(self.mode)  # an unknown mode fails here, naming the known ones

    # ---- what the record implies --------------------------------------
    @property
    def training_mode(self) -> TrainingMode:
        return get_mode(self.mode)

    @property
    def method(self) -> str:
        return self.training_mode.method

    @property
    def model(self) -> str:
        return self.states.model

    @property
    def revision(self) -> str | None:
        """The revision to load the base model at (as requested when training)."""
        return self.states.model_revision

    @property
    def layer(self) -> int:
        return self.states.layer

    def expected_states(self, dtype: str) -> CacheSettings:
        """The cache settings a cache in storage ``dtype`` must have to feed this run."""
        return dataclasses.replace(self.states, dtype=dtype)

    def state_differences(self, other: RunRecord) -> list[str]:
        """The settings that make ``other``'s layer-k states differ from this run's (empty: one pass serves both)."""
        mine, theirs = self.states, other.states
        diffs = [k for k in ("model", *STATE_FIELDS) if getattr(mine, k) != getattr(theirs, k)]
        return [f"{k}: {getattr(mine, k)!r} vs {getattr(theirs, k)!r}" for k in diffs]

    # ---- JSON ----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "embrecycle_version": self.embrecycle_version,
            "task": self.task,
            "labels": list(self.labels),
            "mode": self.mode,
            "method": self.method,
            "states": self.states.to_dict(),
            "upper_options": dataclasses.asdict(self.upper_options),
            "upper_fingerprint": self.upper_fingerprint,
            "model_revision": self.model_revision,
            "cache": self.cache,
            "train_config": self.train_config,
            "device": self.device,
            "precision": self.precision,
            "label_counts": dict(self.label_counts),
            "source": self.source,
            "files": dict(self.files),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = RUN_FILE) -> RunRecord:
        """Parse ``run.json`` (version 2, or version 1 converted); unknown or missing keys are errors naming them."""
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise ConfigError(f"{where} is not an embrecycle run record (format={_get(data, 'format')!r}).")
        version = data.get("format_version")
        if version == 1:
            data = _upgrade_v1(data, where)
        elif version != RUN_FORMAT_VERSION:
            raise ConfigError(
                f"{where} has run format version {version!r}; this embrecycle ({__version__}) reads versions 1 and "
                f"{RUN_FORMAT_VERSION}. Re-create the run with `embrecycle train` (its settings are in "
                "'train_config'), or use the embrecycle release that wrote it."
            )
        body = {k: v for k, v in data.items() if k not in ("format", "format_version", "method")}
        _check_keys(body, where, required={"task", "labels", "mode", "states"})
        try:
            return cls(
                task=body["task"],
                labels=tuple(body["labels"]),
                mode=body["mode"],
                states=CacheSettings.from_dict(body["states"]),
                upper_options=UpperOptions.from_dict(body.get("upper_options")),
                upper_fingerprint=body.get("upper_fingerprint"),
                model_revision=body.get("model_revision"),
                cache=body.get("cache"),
                train_config=body.get("train_config") or {},
                device=body.get("device", "cpu"),
                precision=body.get("precision", "fp32"),
                label_counts={str(k): int(v) for k, v in (body.get("label_counts") or {}).items()},
                source=body.get("source"),
                files=dict(body.get("files") or {}),
                embrecycle_version=body.get("embrecycle_version", "unknown"),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from e

    def write(self, run_dir: str | Path) -> None:
        """Write ``run.json`` and ``labels.json`` (id2label/label2id, for tools that read only that)."""
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        body = self.to_json()
        body[SELF_CHECK] = _digest(body)
        write_text_atomic(out / RUN_FILE, json.dumps(body, indent=2) + "\n")
        labels = {"id2label": dict(enumerate(self.labels)), "label2id": {v: i for i, v in enumerate(self.labels)}}
        write_text_atomic(out / "labels.json", json.dumps(labels, indent=2) + "\n")


def read_run_record(run_dir: str | os.PathLike[str]) -> RunRecord:
    """The record of a run directory.

    Raises:
        NotARunError: ``run.json`` is missing (a FileNotFoundError).
        ConfigError: it is unreadable, of an unknown version, or has unknown or missing keys.
        IncompleteRunError: the run did not finish training (:func:`~embrecycle.run_dir.check_complete`).
    """
    check_complete(run_dir)
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise NotARunError(f"{run_dir} is not a run directory: {RUN_FILE} is missing (train one first).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}. Re-create the run with `embrecycle train`.") from e
    if isinstance(data, dict) and SELF_CHECK in data:
        stated = data.pop(SELF_CHECK)
        if stated != _digest(data):
            raise RunCorruptedError(
                f"{path} is damaged: its content does not match its own checksum ({SELF_CHECK}). Train the run "
                "again (--overwrite replaces it)."
            )
    record = RunRecord.from_json(data, str(path))
    check_finished(run_dir)
    verify_files(run_dir, record)
    return record


def file_digest(path: Path) -> str:
    """``sha256:`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def verify_files(run_dir: str | os.PathLike[str], record: RunRecord) -> None:
    """Check every file ``record.files`` lists against its checksum.

    Raises:
        RunCorruptedError: a file is missing or its bytes differ (named, with the fix).
    """
    for name, digest in record.files.items():
        path = Path(run_dir) / name
        if not path.is_file():
            raise RunCorruptedError(f"{path} is missing from the run. Train the run again (--overwrite replaces it).")
        if file_digest(path) != digest:
            raise RunCorruptedError(
                f"{path} is damaged: its bytes differ from the checksum in {RUN_FILE}. Train the run again "
                "(--overwrite replaces it)."
            )


def _digest(body: dict[str, Any]) -> str:
    """The record's checksum over everything but where the base model and tokenizer are (``states.model``,
    ``states.tokenizer``): a user may repoint those to a moved directory; the fingerprints check what they hold."""
    states = body.get("states")
    if isinstance(states, dict):
        body = {**body, "states": {k: v for k, v in states.items() if k not in ("model", "tokenizer")}}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _check_keys(body: dict[str, Any], where: str, required: set[str], known: set[str] | None = None) -> None:
    known = known or {f.name for f in dataclasses.fields(RunRecord)}
    unknown = sorted(set(body) - known)
    missing = sorted(required - set(body))
    problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
    if problems:
        raise ConfigError(
            f"{where}: " + "; ".join(problems) + f" (a run record has {sorted(known)}). "
            "Re-create the run with `embrecycle train`."
        )


# Version 1 (embrecycle 0.1.0): a flat dict; cache settings spread over top-level keys, the tokenizer implied by
# the model, the training mode split over "method" and "upper".
_V1_KEYS = {
    "embrecycle_version", "task", "labels", "method", "upper", "upper_options", "upper_fingerprint", "model",
    "revision", "model_type", "lower_fingerprint", "layer", "num_layers", "hidden_size", "tokenizer_fingerprint",
    "max_length", "truncation", "cache_dtype", "cache", "train_config",
}  # fmt: skip


def _upgrade_v1(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A version 1 record in the version 2 form (the same keys :meth:`RunRecord.from_json` then checks)."""
    body = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    _check_keys(body, where, required=_V1_KEYS - {"upper_fingerprint", "revision"}, known=_V1_KEYS)
    try:
        mode = mode_of_v1_run(body["method"], body["upper"])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    states = {
        "model": body["model"],
        "model_revision": body.get("revision"),
        **{k: body[k] for k in ("model_type", "lower_fingerprint", "layer", "num_layers", "hidden_size")},
        "tokenizer": body["model"],  # 0.1.0 always loaded the tokenizer of the model
        **{k: body[k] for k in ("tokenizer_fingerprint", "max_length", "truncation")},
        "dtype": body["cache_dtype"],
    }
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "embrecycle_version": body.get("embrecycle_version", "0.1.0"),
        **{k: body[k] for k in ("task", "labels")},
        "mode": mode.name,
        "states": states,
        **{k: body.get(k) for k in ("upper_options", "upper_fingerprint", "cache", "train_config")},
        "model_revision": body.get("revision"),
    }
