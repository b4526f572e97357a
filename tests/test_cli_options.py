"""The command line is generated from the settings dataclasses: every field has its flag, help and default."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from embrecycle.cli import BenchArgs, CacheBuildArgs, EvaluateArgs, ExportArgs, PredictArgs, app
from embrecycle.cli_options import Given, command, field_default, option_specs, reference_markdown, walk
from embrecycle.config import Checks, Settings, setting
from embrecycle.errors import ConfigError

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _flag(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-")).split("/")[0]


def test_every_field_of_every_settings_class_the_cli_exposes_has_a_flag() -> None:
    exposed: set[type] = set()
    missing, unreasoned, nested_hidden = [], [], []
    for entry in walk(app):
        for cls in entry.settings:
            exposed.add(cls)
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                where = f"{entry.path}: {cls.__name__}.{f.name}"
                if "cli_exclude" in f.metadata:
                    if not str(f.metadata["cli_exclude"]).strip():
                        unreasoned.append(where)
                    if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] not in entry.settings:
                        nested_hidden.append(where)  # a nested settings class must be exposed in its own fields
                    continue
                param = entry.param(f.name)
                if param is None or _flag(f) not in [*param.opts, *param.secondary_opts]:
                    missing.append(f"{where} ({_flag(f)})")
    assert not missing, f"settings fields without a flag: {missing}"
    assert not unreasoned, f"fields excluded from the CLI without a reason: {unreasoned}"
    assert not nested_hidden, f"nested settings whose fields no flag gives: {nested_hidden}"
    from embrecycle.bench.config import BenchConfig
    from embrecycle.cache.builder import BuildConfig
    from embrecycle.cache.ray_engine import RayOptions
    from embrecycle.selection.config import SelectConfig
    from embrecycle.training.config import TrainConfig
    from embrecycle.upper import UpperOptions

    every = {BuildConfig, RayOptions, TrainConfig, UpperOptions, SelectConfig, BenchConfig}
    every |= {CacheBuildArgs, PredictArgs, EvaluateArgs, ExportArgs, BenchArgs}
    assert every <= exposed


def test_every_option_has_help_and_the_dataclass_default() -> None:
    no_help, wrong_default = [], []
    for entry in walk(app):
        specs = {s.name: s for s in entry.specs}
        for p in entry.click_command.params:
            if not (getattr(p, "help", None) or "").strip():
                no_help.append(f"{entry.path} {p.name}")
        for cls in entry.settings:
            for f in dataclasses.fields(cls):
                if f.name not in specs:
                    continue  # excluded (checked above)
                param, default = entry.param(f.name), field_default(f)
                if default is dataclasses.MISSING:
                    ok = param.required
                elif specs[f.name].is_list:
                    shown = ", ".join(map(str, default)) if default else False
                    ok = param.default is None and (param.show_default or False) == shown
                else:
                    ok = not param.required and param.default == default
                if not ok:
                    wrong_default.append(f"{entry.path} {f.name}: CLI {param.default!r}, dataclass {default!r}")
    assert not no_help, f"options without help text: {no_help}"
    assert not wrong_default, f"defaults that differ from the dataclass: {wrong_default}"


def test_docs_cli_md_is_current() -> None:
    assert DOCS.read_text(encoding="utf-8") == reference_markdown(app), (
        "docs/cli.md is stale: python -m embrecycle.cli_options > docs/cli.md"
    )


def test_help_of_every_command() -> None:
    for entry in walk(app):
        r = runner.invoke(app, [*entry.path.split(), "--help"])
        assert r.exit_code == 0, (entry.path, r.output)
        for s in entry.specs:
            if not s.hidden:
                assert s.flag in r.output, (entry.path, s.flag)


# --- the generator on a settings class of its own ------------------------------------------------------


@dataclass
class Demo(Settings):
    name: str = setting(help="A name.")
    ks: list[int] | None = setting(None, "Cuts.", flag="--k", items="layer numbers")
    words: list[str] = setting(default_factory=lambda: ["a", "b"], help="Words.", flag="--word")
    paths: list[str] | None = setting(None, "Paths (may hold commas).", flag="--path", comma_separated=False)
    mode: str = setting("full", "Mode.", choices=("full", "head"))
    check: bool = setting(True, "Check.")
    lr: float | None = setting(None, "Learning rate.")
    n: int = setting(3, "Count.")
    limit: int | None = setting(600, "Limit (none: all).")
    seed: int = setting(7, "Seed; several make a sweep.", sweep=True)
    internal: dict[str, int] = setting(default_factory=dict, help="Internal.", cli="set by the program, not the user")

    def problems(self) -> list[str]:
        return Checks().positive(n=self.n).problems


def _demo_app(seen: list[Any]) -> typer.Typer:
    demo = typer.Typer(rich_markup_mode=None)

    @command(demo, "go", Demo)
    def go(given: Given, loud: Annotated[bool, typer.Option("--loud", help="Loud.")] = False) -> None:
        """Go."""
        seen.append((given[Demo], given.make(Demo), loud))

    @command(demo, "fail")
    def fail(what: Annotated[str, typer.Argument(help="What.")]) -> None:
        """Fail."""
        raise {"os": FileNotFoundError("no such file"), "config": ConfigError("bad"), "int": KeyboardInterrupt()}[what]

    return demo


def test_only_given_options_reach_the_dataclass() -> None:
    seen: list[Any] = []
    demo = _demo_app(seen)
    r = runner.invoke(demo, ["go", "--name", "x"])
    assert r.exit_code == 0, r.output
    given, made, loud = seen[-1]
    assert given == {"name": "x"} and made == Demo(name="x") and not loud
    args = ["go", "--name", "x", "--k", "1,2", "--k", "3", "--word", "c", "--path", "a,b", "--no-check", "--loud"]
    r = runner.invoke(demo, [*args, "--mode", "head", "--lr", "0.5", "--n", "4", "--limit", "none"])
    assert r.exit_code == 0, r.output
    given, made, loud = seen[-1]
    assert given == {
        "name": "x",
        "ks": [1, 2, 3],
        "words": ["c"],
        "paths": ["a,b"],
        "check": False,
        "mode": "head",
        "lr": 0.5,
        "n": 4,
        "limit": None,
    }
    assert made.internal == {} and loud


def test_a_sweep_field_takes_one_value_or_several() -> None:
    seen: list[Any] = []
    demo = _demo_app(seen)
    assert runner.invoke(demo, ["go", "--name", "x", "--seed", "3"]).exit_code == 0
    assert seen[-1][0] == {"name": "x", "seed": 3} and seen[-1][1].seed == 3
    r = runner.invoke(demo, ["go", "--name", "x", "--seed", "1, 2,3"])
    assert r.exit_code == 0 and seen[-1][0]["seed"] == [1, 2, 3]  # a list: the command runs a sweep
    assert runner.invoke(demo, ["go", "--name", "x"]).exit_code == 0 and seen[-1][1].seed == 7
    r = runner.invoke(demo, ["go", "--name", "x", "--seed", "1,two"])
    assert r.exit_code == 2 and "--seed takes integers (comma-separated for a sweep" in r.output and "'two'" in r.output
    r = runner.invoke(demo, ["go", "--name", "x", "--seed", ","])
    assert r.exit_code == 2 and "--seed takes integers" in r.output


def test_bad_values_are_reported_as_errors_with_exit_2() -> None:
    demo = _demo_app([])
    r = runner.invoke(demo, ["go", "--name", "x", "--k", "two"])
    assert r.exit_code == 2 and "--k takes layer numbers" in r.output and "'two'" in r.output
    r = runner.invoke(demo, ["go", "--name", "x", "--limit", "some"])
    assert r.exit_code == 2 and "--limit takes integers or none; got 'some'" in r.output
    r = runner.invoke(demo, ["go", "--name", "x", "--n", "0"])
    assert r.exit_code == 2 and "error: invalid Demo settings: n=0 (must be positive)" in r.output
    r = runner.invoke(demo, ["go"])
    assert r.exit_code == 2 and "--name" in r.output  # required
    r = runner.invoke(demo, ["fail", "os"])
    assert r.exit_code == 2 and "error: no such file" in r.stderr
    r = runner.invoke(demo, ["fail", "config"])
    assert r.exit_code == 2 and "error: bad" in r.stderr
    assert runner.invoke(demo, ["fail", "int"]).exit_code == 130


def test_help_shows_choices_defaults_and_bool_pairs() -> None:
    r = runner.invoke(_demo_app([]), ["go", "--help"])
    assert r.exit_code == 0
    for text in ("[full|head]", "--check / --no-check", "INTEGER[,...]", "(a, b)", "[default: 3]", "INTEGER|none"):
        assert text in r.output, text
    assert "--internal" not in r.output


def test_fields_without_a_command_line_form_are_refused_by_name() -> None:
    @dataclass
    class Bad(Settings):
        table: dict[str, int] = setting(default_factory=dict, help="No flag can give this.")

    with pytest.raises(TypeError, match=r"Bad\.table.*cli="):
        option_specs(Bad)

    @dataclass
    class Clash(Settings):
        name: str = setting("a", "Clashes with Demo.name.")

    with pytest.raises(TypeError, match="declared twice"):
        command(typer.Typer(), "x", Demo, Clash)(lambda given: None)


# --- what the generated commands do -------------------------------------------------------------------


def test_quiet_writes_nothing_on_stderr(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:8]))
    args = ["cache", "build", "--model", tiny_bert_dir, "--layer", "2", "--data", str(data)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and "8 computed" in r.stdout


def test_ray_options_need_the_ray_engine(tiny_bert_dir: str, tmp_path: Path) -> None:
    args = ["cache", "build", "--model", tiny_bert_dir, "--layer", "2", "--data", "x.jsonl", "--out", str(tmp_path)]
    r = runner.invoke(app, [*args, "--num-workers", "4"])
    assert r.exit_code == 2 and "--num-workers is a Ray option: add --engine ray" in r.output
