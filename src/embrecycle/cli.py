"""The ``embrecycle`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._version import __version__
from .errors import ConfigError, EmbRecycleError

app = typer.Typer(help="Embedding recycling for transformer encoders.", no_args_is_help=True, add_completion=False)
cache_app = typer.Typer(help="Build, inspect and check layer-k caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


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


@cache_app.command("build")
def cache_build(
    model: Annotated[str, typer.Option(help="Model name (hub id) or local directory.")],
    layer: Annotated[int, typer.Option(help="Layers run before caching (0..N; 0 = embeddings).")],
    data: Annotated[Path, typer.Option(help="Input file: .jsonl, .csv, .tsv, .txt or .conll.")],
    out: Annotated[
        str, typer.Option(help="Cache directory or URL (s3://, gs://, file://; created, or extended if it exists).")
    ],
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV input.")] = "text",
    data_format: Annotated[str | None, typer.Option("--format", help="Input format if not given by extension.")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Max tokens per document (default: model limit, <= 512).")
    ] = None,
    truncation: Annotated[str, typer.Option(help="'truncate' long documents, or 'error'.")] = "truncate",
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16, bfloat16, float32.")] = "float16",
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass.")] = 32,
    revision: Annotated[str | None, typer.Option(help="Hub revision of the model.")] = None,
    shard: Annotated[str | None, typer.Option(help="Shard name, for several writers on one cache.")] = None,
    no_fsync: Annotated[bool, typer.Option("--no-fsync", help="Skip fsync after each batch.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    engine: Annotated[str, typer.Option(help="'local' (this process) or 'ray' (Ray Data actors).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (engine ray; default: local).")] = None,
    num_workers: Annotated[int, typer.Option(help="Model actors (engine ray).")] = 2,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per actor (engine ray).")] = 0.0,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs per actor (engine ray).")] = 1.0,
    batches_per_shard: Annotated[int, typer.Option(help="Batches per shard (engine ray).")] = 16,
) -> None:
    """Compute and store layer-k states of every document not yet cached."""
    from .cache import BuildConfig, RayOptions, build_cache, build_cache_ray
    from .data import read_examples

    try:
        config = BuildConfig(
            model=model,
            layer=layer,
            max_length=max_length,
            truncation=truncation,
            dtype=dtype,
            batch_size=batch_size,
            revision=revision,
            shard=shard,
            fsync=not no_fsync,
        )
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine {engine!r}: choose 'local' or 'ray'.")
        examples = read_examples(data, data_format, text_field=text_field, label_field=None)
        docs, sources = [e.doc for e in examples], [e.source for e in examples]
        if engine == "ray":
            options = RayOptions(
                address=address,
                num_workers=num_workers,
                gpus_per_worker=gpus_per_worker,
                cpus_per_worker=cpus_per_worker,
                batches_per_shard=batches_per_shard,
            )
            summary = build_cache_ray(docs, out, config, options, sources=sources, progress=not quiet)
        else:
            summary = build_cache(docs, out, config, sources=sources, progress=not quiet)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    typer.echo(str(summary))


@cache_app.command("info")
def cache_info(
    path: Annotated[str, typer.Argument(help="Cache directory or URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest and statistics as JSON.")] = False,
) -> None:
    """Describe a cache: what made it and how big it is."""
    from .cache import open_cache

    try:
        cache = open_cache(path)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    info = {**cache.manifest, "stats": cache.stats()}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    s, st = cache.settings, info["stats"]
    typer.echo(
        f"cache {path} (format v{cache.manifest['format_version']}, embrecycle {cache.manifest['library_version']})"
    )
    typer.echo(f"  model       {s.model} ({s.model_type}, {s.num_layers} layers, hidden {s.hidden_size})")
    typer.echo(f"  layer       {s.layer} of {s.num_layers}")
    typer.echo(f"  dtype       {s.dtype}, max_length {s.max_length}, truncation {s.truncation}")
    typer.echo(f"  weights     {s.lower_fingerprint[:16]}  tokenizer {s.tokenizer_fingerprint[:16]}")
    typer.echo(f"  documents   {st['documents']} ({st['truncated_documents']} truncated), tokens {st['tokens']}")
    typer.echo(
        f"  size        {st['bytes'] / 1e6:.1f} MB in {st['shards']} shard(s), {st['bytes_per_token']} bytes/token"
    )


@cache_app.command("verify")
def cache_verify(
    path: Annotated[str, typer.Argument(help="Cache directory or URL.")],
    repair: Annotated[bool, typer.Option(help="Drop damaged entries so the next build recomputes them.")] = False,
) -> None:
    """Check every checksum and file length; exit 1 if anything is damaged."""
    from .cache import open_cache

    try:
        cache = open_cache(path)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    report = cache.verify(repair=repair)
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.ok:
        typer.echo(f"ok: {report.documents_checked} documents verified in {len(cache.shards)} shard(s)")
        return
    msg = f"{len(report.problems)} problem(s) in {report.documents_checked} documents"
    if repair:
        msg += f"; dropped {report.repaired_entries} damaged entries: re-run `cache build` to recompute them"
    typer.echo(msg, err=True)
    raise typer.Exit(0 if repair else 1)


@app.command("train")
def train_cmd(
    task: Annotated[str, typer.Option(help="classification or ner.")],
    model: Annotated[str, typer.Option(help="Base model name (hub id) or local directory.")],
    layer: Annotated[int, typer.Option(help="Cut k: layers 1..k come from the cache.")],
    train: Annotated[Path, typer.Option(help="Training file (.jsonl/.csv/.tsv, or .conll for ner).")],
    dev: Annotated[Path, typer.Option(help="Development file, evaluated during training.")],
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    cache: Annotated[
        str | None, typer.Option(help="Cache directory or URL (default: derived from the settings).")
    ] = None,
    upper: Annotated[
        str, typer.Option(help="What is trained above the cut: full, head, lora or adapter (the head always).")
    ] = "full",
    baseline: Annotated[
        str | None,
        typer.Option(help="Train from text instead: full-finetune (every weight) or lora (LoRA on every layer)."),
    ] = None,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (update scale alpha / r).")] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="LoRA input dropout.")] = 0.1,
    lora_targets: Annotated[
        str | None,
        typer.Option(help="Comma-separated linear modules to adapt, e.g. query,value (default: every linear)."),
    ] = None,
    adapter_size: Annotated[int, typer.Option(help="Bottleneck width of the adapters.")] = 64,
    adapter_placement: Annotated[str, typer.Option(help="pfeiffer (after the FFN) or houlsby (after both).")] = (
        "pfeiffer"
    ),
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 5e-5,
    head_lr: Annotated[float | None, typer.Option(help="Peak learning rate of the task head (default: --lr).")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed (head init, shuffling).")] = 42,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per document.")] = None,
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of steps for linear warmup.")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps (default: every epoch).")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping: evaluations without improvement.")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Use at most N training examples (seeded).")] = None,
    dev_limit: Annotated[int | None, typer.Option(help="Use at most N dev examples (seeded).")] = None,
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV.")] = "text",
    label_field: Annotated[str, typer.Option(help="Label field of JSON lines / CSV.")] = "label",
    cache_dtype: Annotated[str, typer.Option(help="Cache storage dtype.")] = "float16",
    init_from: Annotated[
        Path | None,
        typer.Option(help="Run directory (same model, task, labels) whose weights start the trained part."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a classifier or NER tagger on recycled layer-k states (or fully fine-tune, as a baseline)."""
    from .training import TrainConfig
    from .training import train as run_training

    try:
        config = TrainConfig(
            task=task,
            model=model,
            layer=layer,
            train=str(train),
            dev=str(dev),
            out=str(out),
            cache=str(cache) if cache else None,
            upper=upper,
            upper_options={
                "lora_r": lora_r,
                "lora_alpha": lora_alpha,
                "lora_dropout": lora_dropout,
                "lora_targets": [t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None,
                "adapter_size": adapter_size,
                "adapter_placement": adapter_placement,
            },
            baseline=baseline,
            epochs=epochs,
            lr=lr,
            head_lr=head_lr,
            batch_size=batch_size,
            seed=seed,
            max_length=max_length,
            warmup_ratio=warmup_ratio,
            weight_decay=weight_decay,
            eval_every=eval_every,
            patience=patience,
            train_limit=train_limit,
            dev_limit=dev_limit,
            text_field=text_field,
            label_field=label_field,
            cache_dtype=cache_dtype,
            init_from=str(init_from) if init_from else None,
        )
        result = run_training(config, progress=not quiet)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    typer.echo(result.summary())


@app.command("predict")
def predict_cmd(
    run: Annotated[
        list[Path],
        typer.Option(help="Run directory from `embrecycle train`; repeat for several tasks in one shared pass."),
    ],
    data: Annotated[Path, typer.Option(help="Documents to label.")],
    out: Annotated[
        Path, typer.Option(help="Predictions file (JSON lines); with several runs, a directory of RUN_NAME.jsonl.")
    ],
    cache: Annotated[
        str | None, typer.Option(help="Cache (directory or URL) to look documents up in (default: the run's).")
    ] = None,
    update_cache: Annotated[bool, typer.Option(help="Store the states of documents that missed the cache.")] = False,
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV.")] = "text",
    data_format: Annotated[str | None, typer.Option("--format", help="Input format if not by extension.")] = None,
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass.")] = 64,
) -> None:
    """Predict labels (or tags) for documents; cached documents skip the lower layers.

    With several --run options (same base model and layer), each document's states are read once and every
    task's upper layers run on them; frozen weights are loaded once.
    """
    from .multitask import TaskSet

    try:
        tasks = TaskSet.load(run)
        first = tasks.models[0]
        examples = first.read(data, data_format, text_field=text_field, label_field=None)
        if any(m.task.name != first.task.name for m in tasks.models):
            # NER reads CoNLL word lists; classification the texts: give each kind its documents
            raise ConfigError("one data file cannot feed NER and classification runs at once; split the call.")
        preds = tasks.predict([e.doc for e in examples], cache=cache, update_cache=update_cache, batch_size=batch_size)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    paths = {name: out for name in preds} if len(preds) == 1 else {name: out / f"{name}.jsonl" for name in preds}
    for name, p in preds.items():
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        with open(paths[name], "w", encoding="utf-8") as f:
            for e, item in zip(examples, p, strict=True):
                f.write(json.dumps({"source": e.source, **(item or {"skipped": "empty document"})}) + "\n")
    p = next(iter(preds.values()))
    where = str(out) if len(preds) == 1 else f"{out}/ ({', '.join(preds)})"
    typer.echo(
        f"{len(p)} documents x {len(preds)} task(s) -> {where}: {p.hits} cache hits, {p.misses} misses"
        + (f" ({p.added_to_cache} added to the cache)" if update_cache else "")
        + (f", {p.skipped_empty} empty skipped" if p.skipped_empty else "")
    )
    for note in dict.fromkeys(n for q in preds.values() for n in q.notes):
        typer.echo(f"note: {note}")


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Option(help="Run directory from `embrecycle train`.")],
    data: Annotated[Path, typer.Option(help="Labelled documents.")],
    cache: Annotated[
        str | None, typer.Option(help="Cache (directory or URL) to look documents up in (default: the run's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV.")] = "text",
    label_field: Annotated[str, typer.Option(help="Label field of JSON lines / CSV.")] = "label",
    data_format: Annotated[str | None, typer.Option("--format", help="Input format if not by extension.")] = None,
) -> None:
    """Score a run on a labelled file: accuracy and macro-F1, or entity precision/recall/F1."""
    from .predict import load

    try:
        model = load(run)
        metrics = model.evaluate(model.read(data, data_format, text_field, label_field), cache=cache)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            typer.echo(f"{k:>14}  {v:.4f}" if isinstance(v, float) else f"{k:>14}  {v}")


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Option(help="Run directory from `embrecycle train`.")],
    out: Annotated[Path, typer.Option(help="New directory for the transformers model.")],
) -> None:
    """Write a run as a plain transformers model (LoRA merged, head and tokenizer included, model card)."""
    from .export import export_run

    try:
        result = export_run(run, out)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    typer.echo(
        f"exported {run} -> {result.out} ({result.bytes / 1e6:.1f} MB); "
        f"from_pretrained reproduces the run's logits within {result.max_abs_diff:.1e}"
    )


def _int_list(values: list[str], option: str) -> list[int]:
    """Integers from repeated and/or comma-separated option values."""
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    try:
        return [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"{option} takes layer numbers like 2,3,4; got {values}.") from None


@app.command("select-layer")
def select_layer_cmd(
    model: Annotated[str, typer.Option(help="Base model name (hub id) or local directory.")],
    task: Annotated[str, typer.Option(help="classification or ner.")],
    train: Annotated[Path, typer.Option(help="Training file the real run will use.")],
    dev: Annotated[Path, typer.Option(help="Development file.")],
    out: Annotated[Path, typer.Option(help="Where selection.json/.md/.png and the proxy runs go.")] = Path("selection"),
    target_retention: Annotated[
        float, typer.Option(help="Share of full fine-tuning's score to keep, in (0, 1].")
    ] = 0.99,
    budget_minutes: Annotated[
        float | None, typer.Option(help="Time budget (default: --budget-share of one full fine-tuning run).")
    ] = None,
    budget_share: Annotated[
        float, typer.Option(help="Default budget as a share of one full fine-tuning run, in (0, 1].")
    ] = 0.25,
    candidates: Annotated[
        list[str] | None,
        typer.Option("--candidates", help="Cuts k to evaluate: 2,3,4 or repeated (default 25/50/75% of layers)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs of the planned training (sets the default budget).")] = 3,
    batch_size: Annotated[int, typer.Option(help="Batch size of the planned training.")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate of the recycled runs.")] = 5e-5,
    reference_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the full fine-tuning reference (default: --lr).")
    ] = None,
    sample: Annotated[int | None, typer.Option(help="Training examples per proxy (default: what fits).")] = None,
    dev_sample: Annotated[int | None, typer.Option(help="Dev examples per proxy.")] = None,
    proxy_epochs: Annotated[int, typer.Option(help="Epochs of each proxy run.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the sample, heads and batch order.")] = 42,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per document.")] = None,
    text_field: Annotated[str, typer.Option(help="Text field of JSON lines / CSV.")] = "text",
    label_field: Annotated[str, typer.Option(help="Label field of JSON lines / CSV.")] = "label",
    cache_root: Annotated[
        str | None, typer.Option(help="Folder for the per-cut caches (default: where `train` looks).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Recommend the layer to recycle: measured speed, cache size and predicted accuracy per cut."""
    from .selection import SelectConfig, select_layer
    from .selection.report import format_table

    try:
        config = SelectConfig(
            task=task,
            model=model,
            train=str(train),
            dev=str(dev),
            out=str(out),
            target_retention=target_retention,
            budget_minutes=budget_minutes,
            budget_share=budget_share,
            candidates=_int_list(candidates, "--candidates") if candidates else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            reference_lr=reference_lr,
            proxy_epochs=proxy_epochs,
            sample=sample,
            dev_sample=dev_sample,
            seed=seed,
            max_length=max_length,
            text_field=text_field,
            label_field=label_field,
            cache_root=cache_root,
        )
        sel = select_layer(config, progress=None if as_json else typer.echo)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(sel.to_dict(), indent=2))
        return
    typer.echo("\n" + format_table(sel) + "\n")
    for note in sel.notes:
        typer.echo(f"note: {note}")
    rec = "none" if sel.recommended is None else f"k = {sel.recommended}"
    typer.echo(
        f"recommended: {rec} (target {sel.target_retention:.0%}); took {sel.seconds / 60:.1f} min of a "
        f"{sel.budget_seconds / 60:.1f}-min budget; report -> {out / 'selection.md'}"
    )
    if sel.train_command():
        typer.echo(f"next: {sel.train_command()}")


@app.command("bench")
def bench_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny subsets, one epoch, one seed (a smoke run).")] = False,
    models: Annotated[
        list[str] | None, typer.Option("--model", help="minilm-l6, mpnet-base, or a path/hub id (repeat).")
    ] = None,
    datasets: Annotated[
        list[str] | None, typer.Option("--dataset", help="sci-cite, chemprot, bc5cdr (repeat).")
    ] = None,
    methods: Annotated[list[str] | None, typer.Option("--method", help="Methods to run (repeat; default all).")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="Seeds (repeat; default 1 2 3).")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Training examples per dataset.")] = None,
    dev_limit: Annotated[int | None, typer.Option(help="Dev examples per dataset.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Test examples per dataset.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs for every method.")] = None,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="Measure peak memory per method in a fresh process.")
    ] = True,
    data_dir: Annotated[Path, typer.Option(help="Folder holding sci-cite/, chemprot/, bc5cdr/.")] = Path(
        "../shared/data"
    ),
    out: Annotated[Path, typer.Option(help="Where results, report and plots go.")] = Path("benchmarks/results"),
    readme: Annotated[Path | None, typer.Option(help="README whose <!-- bench:start/end --> table to refresh.")] = None,
    from_results: Annotated[
        list[Path] | None,
        typer.Option(help="Only re-render the report of this results file (repeat to merge runs into --out)."),
    ] = None,
) -> None:
    """Benchmark recycling against full fine-tuning, LoRA and frozen features: scores, speed, every overhead."""
    from .bench import BenchConfig, report_from_results, run_and_report

    try:
        if from_results:
            merged_out = out if len(from_results) > 1 else None
            typer.echo(f"report -> {report_from_results(from_results, readme, merged_out)}")
            return
        given = {
            k: v
            for k, v in {
                "models": models,
                "datasets": datasets,
                "methods": methods,
                "seeds": seeds,
                "train_limit": train_limit,
                "dev_limit": dev_limit,
                "test_limit": test_limit,
                "epochs": epochs,
            }.items()
            if v
        }
        common = {"data_dir": str(data_dir), "out": str(out), **given}
        if not memory:
            common["memory"] = False
        config = BenchConfig.quick_config(**common) if quick else BenchConfig(**common)  # type: ignore[arg-type]
        paths = run_and_report(config, readme=readme, progress=typer.echo)
    except (EmbRecycleError, OSError) as e:
        _fail(e)
    typer.echo(f"results -> {paths['results']}\nreport  -> {paths['report']}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
