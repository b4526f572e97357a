"""Many task models over one corpus: one shared pass per document, one copy of the frozen weights.

Runs trained on the same base model and cut share everything below the cut
(and, for ``head``/``lora``/``adapter`` runs, the pretrained upper layers too).
A :class:`TaskSet` loads them so those weights exist once in memory, and
predicts with one read of each document's cached states (or one run of the
lower layers on a miss) for all tasks.

NER runs take word lists and classification runs take texts, whose cache
entries differ; a mixed set makes one shared pass per input kind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .cache.store import Cache, Document
from .errors import ConfigError, UnknownTaskError
from .predict import Predictions, TaskModel, load, predict_shared
from .run_record import RunRecord
from .source_states import source_differences
from .upper import canonical_name

__all__ = ["TaskSet", "check_shareable"]


def check_shareable(runs: Sequence[tuple[Path, RunRecord]], one_input_kind: bool = False) -> None:
    """Refuse runs that cannot share one prediction pass (what :class:`TaskSet` checks), from their records alone.

    Args:
        runs: Each run's directory and record (:func:`~embrecycle.run_record.read_run_record` reads one without
            its weights).
        one_input_kind: Also refuse NER runs beside classification runs (they read different inputs from one
            data file: word lists and texts).

    Raises:
        ConfigError: naming the runs and the fix.
    """
    if not runs:
        raise ConfigError("a task set needs at least one run.")
    names = [d.name for d, _ in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"runs named {dupes} appear twice: give each run directory its own name.")
    baselines = [str(d) for d, r in runs if r.training_mode.from_text and len(runs) > 1]
    if baselines:
        raise ConfigError(
            f"{baselines} were trained from text (baselines): their lower layers are their own, so they cannot "
            "share a pass with other runs. Predict with them one at a time."
        )
    if one_input_kind and len({r.task for _, r in runs}) > 1:
        # NER reads CoNLL word lists; classification the texts: give each kind its documents
        raise ConfigError(
            f"one data file cannot feed NER and classification runs at once ({[f'{d}: {r.task}' for d, r in runs]})"
            "; split the call."
        )
    crossed = [r.source for _, r in runs if r.source is not None]
    if 0 < len(crossed) < len(runs) or any(source_differences(crossed[0]["settings"], s["settings"]) for s in crossed):
        raise ConfigError(
            "cross-model runs share a pass only with cross-model runs of the same consumer and source states "
            f"({[str(d) for d, _ in runs]} mix them): split the call."
        )
    ref_dir, ref = runs[0]
    for d, r in runs[1:]:
        diff = ref.state_differences(r)
        if diff:
            raise ConfigError(
                f"runs {ref_dir} and {d} do not share their base model and cut ({'; '.join(diff)}). "
                "A task set predicts runs of one base model and layer; split the call."
            )


class TaskSet:
    """Several trained runs over one base model and cut, predicted together.

    Example:
        >>> tasks = TaskSet.load(["runs/topic", "runs/sentiment"])   # doctest: +SKIP
        >>> out = tasks.predict(["A new protein folding method ..."])  # doctest: +SKIP
        >>> out["topic"][0]["label"], out["sentiment"][0]["label"]     # doctest: +SKIP

    Raises:
        ConfigError: runs with different base models, layers, tokenizers or max lengths (naming them), a
            baseline run (trained from text, its lower layers differ), or two runs with the same name.
    """

    def __init__(self, models: Sequence[TaskModel]) -> None:
        self.models = list(models)
        check_shareable([(m.run_dir, m.record) for m in self.models])
        self.shared_parameters = _share_frozen_weights([m.model for m in self.models])

    @classmethod
    def load(
        cls,
        run_dirs: Sequence[str | os.PathLike[str]],
        device: str = "auto",
        precision: str = "auto",
        merge_lora: bool = True,
    ) -> TaskSet:
        """Load every run on ``device`` in ``precision`` (see :mod:`embrecycle.hardware`).

        ``merge_lora`` (default) folds each LoRA run's updates into its own copy of the upper layers: fastest,
        each such run then holds its upper layers. ``False`` keeps one copy of the frozen upper layers for all
        LoRA runs and adds the low-rank updates at every layer: least memory, slower (see the hardware
        benchmark). The lower layers and embeddings are held once either way.
        """
        return cls([load(r, device, precision, merge_lora) for r in run_dirs])

    @property
    def names(self) -> list[str]:
        return [m.run_dir.name for m in self.models]

    def predict(
        self,
        docs: Sequence[Document],
        cache: str | os.PathLike[str] | Cache | None = None,
        update_cache: bool = False,
        batch_size: int = 64,
        tasks: Sequence[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> dict[str, Predictions]:
        """Every run's predictions for ``docs``, by run name (the run directory's name).

        Args:
            docs: Texts, or word lists (NER runs split texts on whitespace).
            cache: A cache of the runs' base model and layer; default: the first run's training cache.
            update_cache: Store the states of documents that missed the cache.
            batch_size: Documents per forward pass.
            tasks: Only these runs (by name; default: all).
            max_batch_tokens: Padded tokens per forward pass at most (default: no limit beyond ``batch_size``).

        Raises:
            UnknownTaskError: a name in ``tasks`` that is not in the set (naming the known ones).
        """
        wanted = self.select(tasks)
        out: dict[str, Predictions] = {}
        for kind in ("text", "words"):
            group = [m for m in wanted if ("words" if m.task.name == "ner" else "text") == kind]
            if group:
                preds = predict_shared(group, docs, cache, update_cache, batch_size, max_batch_tokens)
                for m, p in zip(group, preds, strict=True):
                    out[m.run_dir.name] = p
        return {m.run_dir.name: out[m.run_dir.name] for m in wanted}

    def by_name(self, name: str) -> TaskModel:
        """The run named ``name``."""
        return self.select([name])[0]

    def select(self, tasks: Sequence[str] | None) -> list[TaskModel]:
        """The runs named in ``tasks`` (all when None), in the set's order."""
        if tasks is None:
            return list(self.models)
        unknown = sorted(set(tasks) - set(self.names))
        if unknown:
            raise UnknownTaskError(f"unknown tasks {unknown}: this set has {self.names}.")
        return [m for m in self.models if m.run_dir.name in set(tasks)]

    def parameter_bytes(self) -> int:
        """Bytes of distinct parameter and buffer storage held by the whole set."""
        seen: dict[int, int] = {}
        for m in self.models:
            for t in [*m.model.parameters(), *m.model.buffers()]:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())


def _share_frozen_weights(models: Sequence[torch.nn.Module]) -> int:
    """Point equal frozen parameters of every model at the first model's tensors; returns how many were shared."""
    first: dict[str, torch.nn.Parameter] = {}
    for name, p in models[0].named_parameters():
        if not p.requires_grad:
            first[canonical_name(name)] = p
    shared = 0
    for model in models[1:]:
        for name, p in list(model.named_parameters()):
            q = first.get(canonical_name(name))
            if p.requires_grad or q is None or q is p or q.shape != p.shape or not torch.equal(q, p):
                continue
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._parameters[attr] = q
            shared += 1
    return shared
