"""The ``embrecycle`` command line: a thin layer over the Python API.

Every option comes from a field of a settings dataclass (:mod:`embrecycle.cli_options`):
the library's own (:class:`~embrecycle.cache.BuildConfig`, :class:`~embrecycle.cache.RayOptions`,
:class:`~embrecycle.training.TrainConfig`, :class:`~embrecycle.upper.UpperOptions`,
:class:`~embrecycle.selection.SelectConfig`, :class:`~embrecycle.bench.BenchConfig`,
:class:`~embrecycle.serve.ServeConfig`) and, for what only a command needs (input files, output paths), the
small ``*Args`` classes below.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ._version import __version__
from .batch_predict import prediction_lines
from .bench.config import BenchConfig
from .cache.builder import BuildConfig
from .cache.ray_engine import RayOptions, RayPool
from .cli_options import Given, command
from .config import Checks, Settings, setting
from .data.readers import FORMATS
from .errors import ConfigError, RunExistsError
from .files import write_text_atomic
from .hardware import DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP, hardware_problems
from .selection.config import SelectConfig
from .serve.config import ServeConfig
from .training.config import TrainConfig
from .upper import UpperOptions

__all__ = ["BenchArgs", "CacheBuildArgs", "EvaluateArgs", "ExportArgs", "HardwareArgs", "PredictArgs", "app", "main"]

app = typer.Typer(
    help="Embedding recycling for transformer encoders.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
cache_app = typer.Typer(help="Build, inspect and check layer-k caches.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")

ENGINES = ("local", "ray")

Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output: no bars, no weight-loading bars, no progress lines.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
CachePath = Annotated[str, typer.Argument(help="Cache directory or URL.")]
DataFormat = Annotated[
    str | None,
    typer.Option("--format", help=f"Input format when the file extension does not say: {', '.join(FORMATS)}."),
]
LocalCachePath = Annotated[str, typer.Argument(help="Cache directory (a local one: download a cache at a URL first).")]


# --- settings that only the command line has (what the Python API takes as arguments) ---------------


def _format_setting() -> Any:
    return setting(None, "Input format when the file extension does not say.", flag="--format", choices=FORMATS)


@dataclass
class CacheBuildArgs(Settings):
    """The input and output of ``cache build``."""

    settings_name = "cache build"

    data: str = setting(help="Input file: .jsonl, .csv, .tsv, .txt or .conll.")
    out: str = setting(help="Cache directory or URL (s3://, gs://, file://; created, or extended if it exists).")
    text_field: str = setting("text", "Text field of JSON lines / CSV input.")
    data_format: str | None = _format_setting()
    engine: str = setting(
        "local",
        "Where the model runs: local (this process) or ray (Ray Data actors, see --num-workers).",
        choices=ENGINES,
    )

    def problems(self) -> list[str]:
        return [] if self.engine in ENGINES else [f"--engine {self.engine!r} (choose 'local' or 'ray')"]


@dataclass
class PredictArgs(Settings):
    """What ``predict`` labels, with which runs, and where the predictions go."""

    settings_name = "predict"

    runs: list[str] = setting(
        help="Run directory from `embrecycle train`; repeat for several tasks in one shared pass (same base model "
        "and cut).",
        flag="--run",
        comma_separated=False,
    )
    data: str = setting(
        help="Documents to label: a file; with --engine ray, also a directory of input shards or a quoted glob "
        "(JSON lines, CSV/TSV, text, CoNLL or Parquet)."
    )
    out: str = setting(
        help="Directory for the predictions: one RUN_NAME.jsonl (the run directory's name) per run, one JSON line "
        "per document; with --engine ray, RUN_NAME/SHARD.jsonl per run and input shard."
    )
    cache: str | None = setting(
        None,
        "Cache (directory or URL) to look documents up in (default: the run's; cross-model runs: their source cache).",
    )
    update_cache: bool = setting(False, "Store the states of documents that missed the cache.")
    text_field: str = setting("text", "Text field of JSON lines / CSV input.")
    data_format: str | None = _format_setting()
    batch_size: int = setting(64, "Documents per forward pass.")
    overwrite: bool = setting(
        False,
        "Replace RUN_NAME.jsonl files that exist in --out already (engine ray: predict again the shards whose "
        "outputs exist, which a re-run otherwise skips).",
    )
    engine: str = setting(
        "local",
        "Where the models run: local (this process) or ray (a Ray Data actor pool over the input shards, see "
        "--num-workers).",
        choices=ENGINES,
    )

    def problems(self) -> list[str]:
        checks = Checks().positive(batch_size=self.batch_size).choice("engine", self.engine, ENGINES)
        checks.require(
            not (self.engine == "ray" and self.update_cache),
            "--update-cache with --engine ray (workers would write one cache at once): build the cache first with "
            "`embrecycle cache build --engine ray`, then predict",
        )
        return checks.problems


@dataclass
class HardwareArgs(Settings):
    """Where a loaded run predicts (``predict``, ``evaluate``, ``export``'s check)."""

    settings_name = "hardware"

    device: str = setting("auto", f"Where the model runs: {DEVICE_HELP}.")
    precision: str = setting(
        "auto",
        f"Compute precision: {PRECISION_HELP}.",
        choices=PRECISION_CHOICES,
    )

    def problems(self) -> list[str]:
        return hardware_problems(self.device, self.precision)


@dataclass
class EvaluateArgs(Settings):
    """What ``evaluate`` scores, on which file."""

    settings_name = "evaluate"

    run: str = setting(help="Run directory from `embrecycle train`.")
    data: str = setting(help="Labelled documents.")
    cache: str | None = setting(
        None,
        "Cache (directory or URL) to look documents up in (default: the run's; cross-model runs: their source cache).",
    )
    update_cache: bool = setting(
        False, "Store the states of documents that missed the cache (cross-model runs need it for new documents)."
    )
    text_field: str = setting("text", "Text field of JSON lines / CSV input.")
    label_field: str = setting("label", "Label field of JSON lines / CSV input.")
    data_format: str | None = _format_setting()


@dataclass
class ExportArgs(Settings):
    """What ``export`` writes where."""

    settings_name = "export"

    run: str = setting(help="Run directory from `embrecycle train`.")
    out: str = setting(help="New (or empty) directory for the transformers model.")


@dataclass
class BenchArgs(Settings):
    """The report options of ``bench``."""

    settings_name = "bench"

    readme: str | None = setting(None, "README whose <!-- bench:start/end --> table to refresh.")
    from_results: list[str] | None = setting(
        None,
        "Only re-render the report of this results file (repeat to merge runs into --out).",
        comma_separated=False,
    )


# --- helpers ------------------------------------------------------------------------------------------


@contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """With ``-q``: no weight-loading bars of transformers and the hub client (restored afterwards)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    from .progress import set_quiet

    was_enabled = hf_logging.is_progress_bar_enabled()
    set_quiet(True)
    try:
        yield
    finally:
        if was_enabled:
            set_quiet(False)


def _prediction_folder(args: PredictArgs) -> Path:
    """``--out``, created; refused before any work when it is a file, is not writable, or (without --overwrite)
    already holds the RUN_NAME.jsonl a run would write."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: --out names a directory, which receives RUN_NAME.jsonl per run.")
    names = [f"{Path(r).name}.jsonl" for r in args.runs]
    there = [n for n in names if (out / n).exists()]
    if there and not args.overwrite:
        raise RunExistsError(
            f"--out {out} already holds {', '.join(there)}: pass --overwrite to replace them, or choose another --out."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be created ({e.strerror}): choose a writable directory.") from e
    if not os.access(out, os.W_OK):
        raise ConfigError(f"--out {out} is not writable: choose a writable directory.")
    return out


# --- commands -------------------------------------------------------------------------------------------


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@command(cache_app, "build", BuildConfig, CacheBuildArgs, RayOptions)
def cache_build(given: Given, quiet: Quiet = False) -> None:
    """Compute and store layer-k states of every document not yet cached."""
    from .cache import build_cache, build_cache_ray
    from .data import read_examples
    from .errors import InputDataError
    from .tokenization import is_empty

    config = given.make(BuildConfig)
    args = given.make(CacheBuildArgs)
    ray_given = given[RayOptions]
    if args.engine == "ray":
        options = given.make(RayOptions)
    elif ray_given:
        flags = ", ".join("--" + k.replace("_", "-") for k in ray_given)
        what, them = ("is a Ray option", "it") if len(ray_given) == 1 else ("are Ray options", "them")
        raise ConfigError(f"{flags} {what}: add --engine ray, or leave {them} out.")
    examples = read_examples(args.data, args.data_format, text_field=args.text_field, label_field=None)
    docs, sources = [e.doc for e in examples], [e.source for e in examples]
    if all(is_empty(d) for d in docs):
        raise InputDataError(
            f"no documents in {args.data} ({len(docs)} empty): nothing to cache. Check the file, --format and "
            f"--text-field (now {args.text_field!r})."
        )
    with _quiet(quiet):
        if args.engine == "ray":
            summary = build_cache_ray(docs, args.out, config, options, sources=sources, progress=not quiet)
        else:
            summary = build_cache(docs, args.out, config, sources=sources, progress=not quiet)
    typer.echo(str(summary))


@command(cache_app, "info")
def cache_info(path: CachePath, as_json: AsJson = False) -> None:
    """Describe a cache: what made it and how big it is."""
    from .cache import open_cache

    cache = open_cache(path)
    info = {**cache.manifest, "stats": cache.stats(), "damage": cache.damage}
    s, st = cache.settings, info["stats"]
    lines = [
        f"cache {path} (format v{cache.manifest['format_version']}, embrecycle {cache.manifest['library_version']})",
        f"  model       {s.model} ({s.model_type}, {s.num_layers} layers, hidden {s.hidden_size})",
        f"  layer       {s.layer} of {s.num_layers}",
        f"  dtype       {s.dtype} (computed in {s.precision}), max_length {s.max_length}, truncation {s.truncation}",
        f"  weights     {s.lower_fingerprint[:16]}  tokenizer {s.tokenizer_fingerprint[:16]}",
        f"  documents   {st['documents']} ({st['truncated_documents']} truncated), tokens {st['tokens']}",
        f"  size        {st['bytes'] / 1e6:.1f} MB in {st['shards']} shard(s), {st['bytes_per_token']} bytes/token",
    ]
    if "converted_from" in cache.manifest:
        src = cache.manifest["converted_from"]
        lines.append(f"  converted   from the {src['dtype']} cache {src['location']} ({src['documents']} documents)")
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(lines))
    for problem in cache.damage:
        typer.echo(f"problem: {problem}", err=True)
    if cache.damage:
        typer.echo(f"cache {path} is damaged: run `embrecycle cache verify --repair {path}`", err=True)
        raise typer.Exit(1)


@command(cache_app, "convert")
def cache_convert(
    path: CachePath,
    dtype: Annotated[
        str,
        typer.Option(
            help="Storage dtype of the new cache: float32, float16, bfloat16, int8 (int8-g64), int8-token, int4 "
            "(int4-g32) or int4-g64."
        ),
    ],
    out: Annotated[str, typer.Option(help="New cache directory (a re-run resumes an interrupted conversion).")],
    quiet: Quiet = False,
) -> None:
    """Store a cache's states in another dtype (8-bit, 4-bit, ...) without running the model."""
    from .cache import convert_cache

    typer.echo(str(convert_cache(path, out, dtype, progress=not quiet)))


@command(cache_app, "stats")
def cache_stats_cmd(
    path: CachePath,
    keys: Annotated[bool, typer.Option("--keys", help="Also list every document's key, shard and tokens.")] = False,
    as_json: AsJson = False,
) -> None:
    """What a cache holds, shard by shard: documents, tokens, bytes, duplicates, dtype.

    Exits 1 when the cache is damaged (as `cache info` does; `cache verify --repair` mends it).
    """
    from .cache.maintenance import cache_stats

    stats = cache_stats(path, keys=keys)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        if stats["damage"]:
            raise typer.Exit(1)
        return
    lines = [
        f"cache {stats['location']}: {stats['documents']} documents, {stats['tokens']} tokens, "
        f"{stats['bytes'] / 1e6:.1f} MB ({stats['bytes_per_token']} bytes/token), dtype {stats['dtype']}, "
        f"{stats['shards']} shard(s), {stats['duplicates']} duplicate copies",
        f"  {'shard':<24} {'records':>9} {'documents':>9} {'tokens':>10} {'MB':>9}",
    ]
    for s in stats["shard_list"]:
        lines.append(
            f"  {s['name']:<24} {s['records']:>9} {s['documents']:>9} {s['tokens']:>10} {s['bytes'] / 1e6:>9.2f}"
        )
    if keys:
        lines.append(f"  {'key':<64} {'shard':<24} {'tokens':>6}")
        lines += [f"  {k['key']} {k['shard']:<24} {k['tokens']:>6}" for k in stats["keys"]]
    lines += [f"DAMAGED: {d}" for d in stats["damage"]]
    typer.echo("\n".join(lines))
    if stats["damage"]:
        raise typer.Exit(1)


@command(cache_app, "compact")
def cache_compact(
    path: LocalCachePath,
    shard: Annotated[
        list[str] | None, typer.Option(help="Merge only this shard (repeat; default: every shard).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Merge a cache's shards into one (crash-safe: a kill leaves the old or the new layout)."""
    from .cache.maintenance import compact

    typer.echo(str(compact(path, shards=shard or None, progress=not quiet)))


@command(cache_app, "remove")
def cache_remove(
    path: LocalCachePath,
    data: Annotated[
        list[str] | None, typer.Option(help="Remove every document of this file (repeat; any input format).")
    ] = None,
    key: Annotated[list[str] | None, typer.Option(help="Remove the document with this key (hex; repeat).")] = None,
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV input.")] = "text",
    data_format: DataFormat = None,
    quiet: Quiet = False,
) -> None:
    """Remove documents (by source file or key) and reclaim their space.

    Exits 1 when a document asked for is still in the cache afterwards (its shard was being written by
    another process: re-run when that finishes).
    """
    from .cache.maintenance import remove_documents
    from .data import read_examples

    if not data and not key:
        raise ConfigError("nothing to remove: give --data FILE (its documents) or --key HEX (repeat either).")
    docs = [e.doc for f in data or [] for e in read_examples(f, data_format, text_field=text_field, label_field=None)]
    summary = remove_documents(path, docs=docs, keys=key or [], progress=not quiet)
    typer.echo(str(summary))
    if summary.remaining:
        raise typer.Exit(1)


@command(cache_app, "gc")
def cache_gc(path: LocalCachePath) -> None:
    """Finish an interrupted merge and delete shard files no index refers to."""
    from .cache.maintenance import collect_garbage

    deleted = collect_garbage(path)
    typer.echo(f"deleted {len(deleted)} file(s)" + "".join(f"\n  {p}" for p in deleted))


@command(cache_app, "overlap")
def cache_overlap(
    train: Annotated[str, typer.Option(help="Training documents: a data file or a cache directory.")],
    test: Annotated[str, typer.Option(help="Test (or dev) documents: a data file or a cache directory.")],
    fail_on_overlap: Annotated[bool, typer.Option(help="Exit 1 when any test document occurs in training.")] = False,
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV input.")] = "text",
    data_format: DataFormat = None,
    as_json: AsJson = False,
) -> None:
    """Count test documents that also occur in training (exact, and up to whitespace and case)."""
    from .data.overlap import find_overlap, key_overlap

    sides = {"--train": train, "--test": test}
    caches = {flag: _cache_or_none(value) for flag, value in sides.items()}
    if caches["--train"] is None and caches["--test"] is None:
        from .data import read_examples

        a, b = (read_examples(v, data_format, text_field=text_field, label_field=None) for v in sides.values())
        result = find_overlap(a, b)
    else:
        (train_keys, train_src, _), (test_keys, test_src, test_texts) = (
            _keys(flag, value, caches, text_field, data_format) for flag, value in sides.items()
        )
        result = key_overlap(train_keys, test_keys, train_sources=train_src, test_sources=test_src,
                             test_texts=test_texts)  # fmt: skip
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary(train, test))
    if fail_on_overlap and result.any:
        raise typer.Exit(1)


def _cache_or_none(path: str) -> Any:
    """The cache at ``path`` when it is a cache directory (or URL), else None (a data file)."""
    from .cache import open_cache
    from .cache.location import is_remote

    if is_remote(path) or Path(path, "manifest.json").is_file():
        return open_cache(path)
    return None


def _keys(
    flag: str, value: str, caches: dict[str, Any], text_field: str, data_format: str | None
) -> tuple[list[bytes], list[str] | None, list[str] | None]:
    """The document keys of one side (a cache's own, or a file's under the other side's cache settings), with a
    file's sources and texts."""
    from .data import read_examples

    own = caches[flag]
    if own is not None:
        other = next(c for f, c in caches.items() if f != flag)
        if other is not None and other.fingerprint != own.fingerprint:
            raise ConfigError(
                f"the two caches were made with different settings (model, layer, tokenizer, max length, dtype or "
                f"precision), so their keys cannot be compared: give {flag} as the data file it was built from."
            )
        return [k.tobytes() for k in own.keys], None, None
    cache = next(c for c in caches.values() if c is not None)
    from .data.overlap import normalise

    read = read_examples(value, data_format, text_field=text_field, label_field=None)
    examples = [e for e in read if normalise(e.doc)]  # blank documents are never cached
    texts = [e.doc if isinstance(e.doc, str) else " ".join(e.doc) for e in examples]
    return [cache.key(e.doc) for e in examples], [e.source for e in examples], texts


@command(cache_app, "verify")
def cache_verify(
    path: CachePath,
    repair: Annotated[bool, typer.Option(help="Drop damaged entries so the next build recomputes them.")] = False,
) -> None:
    """Check every checksum and file length; exit 1 if anything is damaged."""
    from .cache import open_cache
    from .cache.store import restore_manifest

    restored = restore_manifest(path) if repair else None
    cache = open_cache(path)
    report = cache.verify(repair=repair)
    if restored:
        report.problems.insert(0, restored)
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.ok:
        typer.echo(f"ok: {report.documents_checked} documents verified in {len(cache.shards)} shard(s)")
        return
    msg = f"{len(report.problems)} problem(s) in {report.documents_checked} documents"
    if repair:
        busy = f" (not {', '.join(report.busy_shards)}: being written)" if report.busy_shards else ""
        msg += f"; repaired{busy}, dropped {report.repaired_entries} damaged entries: re-run `cache build` to recompute"
    else:
        msg += f": run `embrecycle cache verify --repair {path}`, then `cache build` to recompute what it drops"
    typer.echo(msg, err=True)
    raise typer.Exit(1)  # damage was found (and, with --repair, dropped)


@command(app, "train", TrainConfig, UpperOptions)
def train_cmd(given: Given, quiet: Quiet = False) -> None:
    """Train a classifier or NER tagger on recycled layer-k states (or fully fine-tune, as a baseline).

    Several values of --lr, --head-lr, --seed or --upper (comma-separated) make a sweep: every combination is
    trained over one cache into OUT/runs/, with OUT/leaderboard.md, leaderboard.json and sweep.png; run the same
    command again to resume an interrupted sweep.
    """
    from .sweep import SWEEP_FIELDS, sweep
    from .training import train

    fields = given[TrainConfig]
    swept = {k: fields.pop(k) for k in SWEEP_FIELDS if isinstance(fields.get(k), list)}
    if swept:
        first = {k: v[0] for k, v in swept.items()}
        config = TrainConfig(**fields, **first, upper_options=given.make(UpperOptions))
        with _quiet(quiet):
            outcome = sweep(config, **swept, progress=not quiet)
        typer.echo(outcome.summary())
        return
    config = given.make(TrainConfig, upper_options=given.make(UpperOptions))
    with _quiet(quiet):
        result = train(config, progress=not quiet)
    typer.echo(result.summary())


@command(app, "predict", PredictArgs, HardwareArgs, RayPool)
def predict_cmd(given: Given, quiet: Quiet = False) -> None:
    """Predict labels (or tags) for documents; cached documents skip the lower layers.

    With several --run options (same base model and layer), each document's states are read once and every
    task's upper layers run on them; frozen weights are loaded once. --out is a directory receiving
    RUN_NAME.jsonl for each run. With --engine ray, --data may be a directory or glob of shards, spread over
    a Ray Data actor pool; --out receives RUN_NAME/SHARD.jsonl, and a re-run skips finished shards.
    """
    from .multitask import TaskSet, check_shareable

    args = given.make(PredictArgs)
    if args.engine == "ray":
        _predict_ray(given, args, quiet)
        return
    out = _prediction_folder(args)  # before any work: a bad --out fails here, not after the predictions
    with _quiet(quiet):
        hw = given.make(HardwareArgs)
        tasks = TaskSet.load(args.runs, hw.device, hw.precision)
        check_shareable([(m.run_dir, m.record) for m in tasks.models], one_input_kind=True)
        first = tasks.models[0]
        examples = first.read(args.data, args.data_format, text_field=args.text_field, label_field=None)
        docs = [e.doc for e in examples]
        preds = tasks.predict(docs, cache=args.cache, update_cache=args.update_cache, batch_size=args.batch_size)
    for name, p in preds.items():
        write_text_atomic(out / f"{name}.jsonl", prediction_lines([e.source for e in examples], p.items))
    p = next(iter(preds.values()))
    files = [f"{name}.jsonl" for name in preds]
    where = str(out / files[0]) if len(files) == 1 else f"{out}/ ({', '.join(files)})"
    typer.echo(
        f"{len(p)} documents x {len(preds)} task(s) -> {where}: {p.hits} cache hits, {p.misses} misses"
        + (f" ({p.added_to_cache} added to the cache)" if args.update_cache else "")
        + (f", {p.skipped_empty} empty skipped" if p.skipped_empty else "")
    )
    for note in dict.fromkeys(n for q in preds.values() for n in q.notes):
        typer.echo(f"note: {note}")


def _predict_ray(given: Given, args: PredictArgs, quiet: bool) -> None:
    from .batch_predict import predict_files_ray

    hw = given.make(HardwareArgs)
    with _quiet(quiet):
        summary = predict_files_ray(
            args.runs, args.data, args.out, given.make(RayPool), cache=args.cache, text_field=args.text_field,
            data_format=args.data_format, batch_size=args.batch_size, device=hw.device, precision=hw.precision,
            overwrite=args.overwrite, progress=not quiet,
        )  # fmt: skip
    typer.echo(
        f"{summary.shards} shard(s) x {len(summary.tasks)} task(s) -> {args.out}/RUN/SHARD.jsonl: {summary.documents} "
        f"documents, {summary.hits} cache hits, {summary.misses} misses"
        + (f"; {summary.skipped} shard(s) already done, skipped (--overwrite redoes them)" if summary.skipped else "")
    )


@command(app, "evaluate", EvaluateArgs, HardwareArgs)
def evaluate_cmd(given: Given, as_json: AsJson = False, quiet: Quiet = False) -> None:
    """Score a run on a labelled file: accuracy and macro-F1, or entity precision/recall/F1."""
    from .predict import load

    args = given.make(EvaluateArgs)
    with _quiet(quiet):
        hw = given.make(HardwareArgs)
        model = load(args.run, hw.device, hw.precision)
        examples = model.read(args.data, args.data_format, args.text_field, args.label_field)
        metrics = model.evaluate(examples, cache=args.cache, update_cache=args.update_cache)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            typer.echo(f"{k:>14}  {v:.4f}" if isinstance(v, float) else f"{k:>14}  {v}")


@command(app, "export", ExportArgs, HardwareArgs)
def export_cmd(given: Given, quiet: Quiet = False) -> None:
    """Write a run as a plain transformers model (LoRA merged, head and tokenizer included, model card)."""
    from .export import export_run
    from .predict import load

    args = given.make(ExportArgs)
    with _quiet(quiet):
        hw = given.make(HardwareArgs)
        result = export_run(load(args.run, hw.device, hw.precision), args.out)
    typer.echo(
        f"exported {args.run} -> {result.out} ({result.bytes / 1e6:.1f} MB); "
        f"from_pretrained reproduces the run's logits within {result.max_abs_diff:.1e}"
    )


@command(app, "serve", ServeConfig)
def serve_cmd(given: Given, quiet: Quiet = False) -> None:
    """Serve many task models over one trunk over HTTP: POST /v1/predict, GET /v1/tasks, /healthz, /readyz, /metrics.

    Concurrent requests are batched (up to --max-batch-tokens, waiting at most --max-wait-ms); each batch reads
    its documents' cached states once (or runs the lower layers once for the misses) and every requested task's
    upper layers on them. Binds to 127.0.0.1 unless --host says otherwise; SIGTERM drains in-flight requests.
    """
    from .serve import serve

    config = given.make(ServeConfig)

    def ready(url: str) -> None:
        key = " (bearer token required)" if config.resolved_api_key() else ""
        typer.echo(f"serving {len(config.runs)} task(s) on {url}{key}: POST {url}/v1/predict", err=True)

    with _quiet(quiet):
        serve(config, on_ready=ready)


@command(app, "select-layer", SelectConfig)
def select_layer_cmd(given: Given, as_json: AsJson = False, quiet: Quiet = False) -> None:
    """Recommend the layer to recycle: measured speed, cache size and predicted accuracy per cut."""
    from .selection import select_layer
    from .selection.report import format_table

    config = given.make(SelectConfig)
    with _quiet(quiet):
        sel = select_layer(config, progress=None if as_json or quiet else typer.echo)
    if as_json:
        typer.echo(json.dumps(sel.to_dict(), indent=2))
        return
    typer.echo("\n" + format_table(sel) + "\n")
    for note in sel.notes:
        typer.echo(f"note: {note}")
    rec = "none" if sel.recommended is None else f"k = {sel.recommended}"
    typer.echo(
        f"recommended: {rec} (target {sel.target_retention:.0%}); took {sel.seconds / 60:.1f} min of a "
        f"{sel.budget_seconds / 60:.1f}-min budget; report -> {Path(config.out) / 'selection.md'}"
    )
    if sel.train_command():
        typer.echo(f"next: {sel.train_command()}")


@command(app, "bench", BenchConfig, BenchArgs)
def bench_cmd(given: Given, quiet: Quiet = False) -> None:
    """Benchmark recycling against full fine-tuning, LoRA and frozen features: scores, speed, every overhead."""
    from .bench import report_from_results, run_and_report

    args = given.make(BenchArgs)
    readme = Path(args.readme) if args.readme else None
    if args.from_results:
        explicit = "out" in given[BenchConfig] or len(args.from_results) > 1  # else: beside the results file
        merged_out = Path(given.value(BenchConfig, "out")) if explicit else None
        typer.echo(f"report -> {report_from_results([Path(p) for p in args.from_results], readme, merged_out)}")
        return
    values = given[BenchConfig]
    config = BenchConfig.quick_config(**values) if values.get("quick") else BenchConfig(**values)
    with _quiet(quiet):
        paths = run_and_report(config, readme=readme, progress=(lambda _msg: None) if quiet else typer.echo)
    typer.echo(f"results -> {paths['results']}\nreport  -> {paths['report']}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
