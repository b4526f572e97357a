"""Sweeps over one cache: every combination of training modes, learning rates and seeds, trained from the
same cached layer-k states (the lower layers run once, for the documents no run has cached yet).

``sweep(config, lr=[1e-4, 3e-4, 1e-3], seed=[1, 2, 3], upper=["full", "lora"])`` trains each combination
into ``OUT/runs/NAME`` (a normal run directory: ``predict``, ``export`` and ``TaskSet`` take it) and keeps
``OUT/leaderboard.{md,json}`` and ``OUT/sweep.png`` up to date after every run. ``OUT/sweep.json`` records
the settings; a second call with the same settings resumes: finished runs are kept, an interrupted one is
continued, a missing one is trained again. The summary compares the sweep's time with the same sweep as
separate full fine-tuning runs, from a few timed full fine-tuning steps on the same data.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .config import VERSION_KEY
from .errors import ConfigError, RunExistsError
from .files import write_text_atomic
from .leaderboard import LeaderboardRow, SweepRun, leaderboard, write_leaderboard
from .run_dir import staging_dir
from .tasks import TASKS
from .training.config import TrainConfig
from .training.loop import RUN_ONLY, changed_settings, train
from .training.result import METRICS_FILE, read_metrics

__all__ = ["SWEEP_FIELDS", "FullFinetuneEstimate", "SweepResult", "sweep", "sweep_values"]

SWEEP_FIELDS = ("upper", "lr", "head_lr", "seed")
"""The :class:`TrainConfig` fields a sweep can vary."""
SWEEP_FILE = "sweep.json"
RUNS = "runs"
PROBE_STEPS = 6
"""Full fine-tuning steps timed for the comparison (the first is a warm-up and not counted)."""


@dataclass
class FullFinetuneEstimate:
    """What the sweep's training would have cost as full fine-tuning runs, from timed steps."""

    seconds_per_example: float
    steps_timed: int
    probe_seconds: float
    """Time the probe took (its model load and tokenization included)."""

    def seconds_for(self, examples: int) -> float:
        return self.seconds_per_example * examples


@dataclass
class SweepResult:
    """A sweep's runs, leaderboard and timings (also in ``OUT/leaderboard.json``)."""

    out: str
    metric: str
    runs: list[SweepRun]
    leaderboard: list[LeaderboardRow]
    trained: int
    """Runs trained by this call (the others were kept from an interrupted one)."""
    total_seconds: float
    full_finetune: FullFinetuneEstimate | None = None

    @property
    def best(self) -> LeaderboardRow:
        return self.leaderboard[0]

    @property
    def train_seconds(self) -> float:
        """Training time of every run (evaluation excluded)."""
        return float(sum(r.train_seconds for r in self.runs))

    @property
    def cache_build_seconds(self) -> float:
        """Time the lower layers ran (the first run builds the cache; later runs find their documents in it)."""
        return float(sum(r.cache_build_seconds for r in self.runs))

    @property
    def eval_seconds(self) -> float:
        return float(sum(r.eval_seconds for r in self.runs))

    @property
    def full_finetune_seconds(self) -> float | None:
        """The estimated training time of the same runs as full fine-tuning (same examples seen)."""
        if self.full_finetune is None:
            return None
        return self.full_finetune.seconds_for(sum(r.examples_seen for r in self.runs))

    def timing_line(self) -> str:
        ours = self.cache_build_seconds + self.train_seconds
        line = (
            f"{len(self.runs)} runs: training {self.train_seconds:.1f} s + cache build "
            f"{self.cache_build_seconds:.1f} s = {ours:.1f} s (evaluation {self.eval_seconds:.1f} s not counted)"
        )
        full = self.full_finetune_seconds
        if full is not None and self.full_finetune is not None:
            line += (
                f"; as separate full fine-tuning runs ~{full:.1f} s "
                f"({self.full_finetune.seconds_per_example * 1e3:.1f} ms/example over "
                f"{self.full_finetune.steps_timed} timed steps): {full / ours:.2f}x the time"
                if ours > 0
                else ""
            )
        return line

    def summary(self) -> str:
        b = self.best
        seeds = f" over {len(b.seeds)} seeds" if len(b.seeds) > 1 else ""
        kept = len(self.runs) - self.trained
        return (
            f"sweep: best {b.upper}, lr {b.lr:g}"
            + (f", head lr {b.head_lr:g}" if b.head_lr != b.lr else "")
            + f": dev {self.metric} {b.mean:.4f} ± {b.std:.4f}{seeds} | {self.timing_line()}"
            + (f" | {kept} runs kept from before" if kept else "")
            + f" -> {Path(self.out) / 'leaderboard.md'}"
        )


def sweep_values(config: TrainConfig, values: dict[str, Sequence[Any] | None]) -> list[dict[str, Any]]:
    """Every combination of ``values`` (a field left None keeps the config's value), as field overrides.

    Raises:
        ConfigError: an unknown field, an empty or repeated list, or a sweep over modes of a baseline.
    """
    unknown = sorted(set(values) - set(SWEEP_FIELDS))
    if unknown:
        raise ConfigError(f"a sweep varies {list(SWEEP_FIELDS)}, not {unknown}.")
    grid: dict[str, list[Any]] = {}
    for name in SWEEP_FIELDS:
        given = values.get(name)
        if given is None:
            grid[name] = [getattr(config, name)]
            continue
        items = list(given) if isinstance(given, list | tuple) else [given]
        if not items:
            raise ConfigError(f"{name}=[] in a sweep: give at least one value, or leave it unset.")
        repeated = sorted({str(v) for v in items if items.count(v) > 1})
        if repeated:
            raise ConfigError(f"{name} repeats {repeated} in a sweep: give each value once.")
        grid[name] = items
    if config.baseline is not None and len(grid["upper"]) > 1:
        raise ConfigError(
            f"upper={grid['upper']} with baseline={config.baseline!r}: a baseline trains from text and has no "
            "upper modes to sweep; sweep --upper without --baseline."
        )
    return [dict(zip(SWEEP_FIELDS, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _name(cfg: TrainConfig) -> str:
    mode = cfg.mode.name
    head = f"-headlr{cfg.head_learning_rate:g}" if cfg.head_lr is not None else ""
    return f"{mode}-lr{cfg.learning_rate:g}{head}-seed{cfg.seed}"


def sweep(
    config: TrainConfig,
    *,
    upper: Sequence[str] | None = None,
    lr: Sequence[float | None] | None = None,
    head_lr: Sequence[float | None] | None = None,
    seed: Sequence[int] | None = None,
    progress: bool = True,
    compare_full_finetune: bool = True,
) -> SweepResult:
    """Train every combination of ``upper`` x ``lr`` x ``head_lr`` x ``seed`` (None: the config's value) over
    one cache; ``config.out`` is the sweep directory. See the module docstring.

    ``config.overwrite`` starts the sweep over (every run is trained again); otherwise finished runs are kept.

    Raises:
        ConfigError: bad sweep values (every combination's settings are checked before any training), or a
            sweep directory made with other settings.
        RunExistsError: ``config.out`` exists and is not a sweep directory.
    """
    t0 = time.perf_counter()
    combos = sweep_values(config, {"upper": upper, "lr": lr, "head_lr": head_lr, "seed": seed})
    out = Path(config.out)
    base = {k: v for k, v in config.to_dict().items() if k not in (*RUN_ONLY, *SWEEP_FIELDS, VERSION_KEY)}
    configs = []
    for combo in combos:  # every combination validated before any training
        fields = {**config.to_dict(), **combo, "resume": False, "overwrite": False}
        configs.append(TrainConfig.from_dict(fields))
    names = [_name(c) for c in configs]
    same = sorted({n for n in names if names.count(n) > 1})
    if same:
        raise ConfigError(
            f"two combinations of the sweep train the same run {same} (an unset value is the mode's default): "
            "give each learning rate once."
        )
    _open_sweep_dir(out, base, combos, config.overwrite)
    runs: list[SweepRun] = []
    trained = 0
    metric = TASKS[config.task].primary_metric
    for cfg, name in zip(configs, names, strict=True):
        run_dir = out / RUNS / name
        cfg = dataclasses.replace(cfg, out=str(run_dir))
        kept = not config.overwrite and (run_dir / METRICS_FILE).exists()
        if kept:
            _check_kept(run_dir, cfg)
            result = read_metrics(run_dir)
        else:
            resume = not config.overwrite and staging_dir(run_dir).is_dir()
            result = train(dataclasses.replace(cfg, resume=resume, overwrite=config.overwrite), progress=progress)
            trained += 1
        runs.append(
            SweepRun(
                name=name,
                run_dir=str(run_dir),
                upper=cfg.mode.name,
                lr=cfg.learning_rate,
                head_lr=cfg.head_learning_rate,
                seed=cfg.seed,
                score=float(result.best.get(metric, 0.0)),
                train_seconds=result.train_seconds,
                eval_seconds=result.eval_seconds,
                cache_build_seconds=result.cache_build_seconds,
                examples_seen=round(result.examples_per_second * result.train_seconds),
                weights_bytes=result.weights_bytes,
                learned_nothing=result.learned_nothing,
                kept=kept,
            )
        )
        partial = SweepResult(str(out), metric, runs, leaderboard(runs), trained, time.perf_counter() - t0)
        _write(out, partial, len(configs))
    estimate = None
    if compare_full_finetune and config.baseline is None:
        estimate = estimate_full_finetune(configs[0], progress=progress)
    outcome = SweepResult(str(out), metric, runs, leaderboard(runs), trained, time.perf_counter() - t0, estimate)
    _write(out, outcome, len(configs))
    return outcome


def _open_sweep_dir(out: Path, base: dict[str, Any], combos: list[dict[str, Any]], overwrite: bool) -> None:
    record = out / SWEEP_FILE
    if out.exists() and not record.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunExistsError(
            f"--out {out} exists and is not a sweep directory (no {SWEEP_FILE}): choose another --out for the sweep."
        )
    if record.exists() and not overwrite:
        theirs = json.loads(record.read_text(encoding="utf-8")).get("settings", {})
        changed = changed_settings(base, theirs)
        if changed:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} -> {base.get(k)!r}" for k in changed)
            raise ConfigError(
                f"the sweep in {out} was started with other settings ({shown}): run it with the same settings to "
                "resume it (the swept values may change), pass --overwrite to start it over, or choose another --out."
            )
    if overwrite and (out / RUNS).exists():
        shutil.rmtree(out / RUNS)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": base, "combinations": combos, VERSION_KEY: __version__}
    write_text_atomic(record, json.dumps(payload, indent=2) + "\n")


def _check_kept(run_dir: Path, cfg: TrainConfig) -> None:
    saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("train_config", {})
    changed = changed_settings(cfg.to_dict(), saved, ignore=(VERSION_KEY,))
    if changed:
        raise ConfigError(
            f"the sweep's run {run_dir} was trained with other settings ({', '.join(changed)}): delete it to train "
            "it again, or pass --overwrite to start the sweep over."
        )


def _write(out: Path, result: SweepResult, planned: int) -> None:
    extra = {
        "summary": result.summary() if result.runs else "",
        "runs_planned": planned,
        "runs_finished": len(result.runs),
        "trained_now": result.trained,
        "train_seconds": result.train_seconds,
        "cache_build_seconds": result.cache_build_seconds,
        "eval_seconds": result.eval_seconds,
        "total_seconds": result.total_seconds,
        "full_finetune_seconds_estimate": result.full_finetune_seconds,
        "full_finetune_probe": dataclasses.asdict(result.full_finetune) if result.full_finetune else None,
        "runs": [dataclasses.asdict(r) for r in result.runs],
    }
    write_leaderboard(out, result.leaderboard, result.metric, extra)


def estimate_full_finetune(config: TrainConfig, progress: bool = False) -> FullFinetuneEstimate:
    """Seconds per training example of full fine-tuning with ``config``'s model, data, batch size, device and
    precision: :data:`PROBE_STEPS` steps of a full fine-tuning run on a seeded subset (the first not counted)."""
    t0 = time.perf_counter()
    n = PROBE_STEPS * config.batch_size
    with tempfile.TemporaryDirectory(prefix="embrecycle-probe-") as tmp:
        probe = dataclasses.replace(
            config, baseline="full-finetune", upper="full", lr=None, head_lr=None, epochs=1,
            train_limit=min(n, config.train_limit or n), dev_limit=min(8, config.dev_limit or 8),
            out=str(Path(tmp) / "probe"), cache=None, resume=False, overwrite=False, eval_every=None,
            patience=None, save_every=None, init_from=None, source_cache=None, fusion_size=None,
        )  # fmt: skip
        with _quiet_logs():  # a 6-step probe learns nothing, and the runs already warned about the data
            r = train(probe, progress=progress)
    # every step but the first (a warm-up); the first batch is taken as full
    timed = r.step_seconds[1:] if len(r.step_seconds) > 1 else r.step_seconds
    examples = r.train_examples - config.batch_size if len(r.step_seconds) > 1 else r.train_examples
    per_example = float(np.sum(timed)) / max(1, examples)
    return FullFinetuneEstimate(per_example, len(timed), time.perf_counter() - t0)


@contextmanager
def _quiet_logs() -> Iterator[None]:
    logger = logging.getLogger("embrecycle")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
