"""Command-line options generated from settings dataclasses, and the one error handler of every command.

Each field of a settings dataclass (:class:`embrecycle.config.Settings`, fields made with
:func:`embrecycle.config.setting`) becomes one option, so a setting's default and help
text exist in exactly one place, the dataclass:

* the flag is ``--field-name`` (or the field's ``flag`` metadata, e.g. ``--format``);
  a ``short`` metadata adds an alias (``-q``);
* the type comes from the annotation: ``str``, ``int``, ``float``, ``bool`` (as
  ``--x/--no-x``, or the field's ``flag`` pair), each optionally ``| None``, and
  ``list[...]`` of those: the flag repeated and/or comma-separated (``--candidates 2,3,4``;
  ``comma_separated=False`` in the metadata for values that may hold commas, like paths);
* ``choices`` are shown as the metavar (``[a|b]``, or in the help when there are many); the
  dataclass checks the value, so every bad setting is reported at once, in the library's words;
* an optional field with a default (``int | None = 600``) also takes ``none``, to unset it;
* the default shown is the dataclass default, and only options the user gave are passed
  on, so the dataclass defaults (and e.g. ``BenchConfig.quick_config``'s) apply to the rest.

A field with no command-line form (a nested dataclass, an internal switch) is excluded
with a reason: ``setting(..., cli="why")``; any other field without a usable type is an
error when the command is declared. ``tests/test_cli_options.py`` walks every command and
checks that each field of each settings class it exposes has its flag.

Example:
    >>> @command(app, "build", BuildConfig)
    ... def build(given: Given, quiet: Quiet = False) -> None:
    ...     config = given.make(BuildConfig)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass
from typing import Annotated, Any, TypeVar, Union

import typer

from .errors import ConfigError, EmbRecycleError

__all__ = [
    "CommandEntry",
    "Given",
    "OptionSpec",
    "command",
    "field_default",
    "option_specs",
    "reference_markdown",
    "reported_errors",
    "walk",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

SETTINGS_ATTR = "__embrecycle_settings__"
"""Attribute of a command's callback: the settings classes whose fields are its options."""
OPTIONS_ATTR = "__embrecycle_options__"
"""Attribute of a command's callback: its generated :class:`OptionSpec` list."""

_SCALARS: dict[type, str] = {str: "text", int: "integers", float: "numbers", bool: "booleans"}
_METAVARS: dict[type, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT"}
_MAX_CHOICES_METAVAR = 40
"""Longer lists of choices go in the help text rather than the metavar."""
_CONTEXT = "embrecycle_typer_context"
"""Name of the context parameter every generated command receives (to tell given options from defaults)."""


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one for a factory; ``MISSING`` when the field is required)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _analyse(owner: type, name: str, annotation: Any) -> tuple[type, bool, bool]:
    """``(item type, is a list, accepts None)`` of a field annotation, or a TypeError naming the field."""
    tp, optional = annotation, False
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        tp = rest[0] if len(rest) == 1 else None
    is_list = typing.get_origin(tp) is list
    if is_list:
        (tp,) = typing.get_args(tp) or (str,)
    if tp not in _SCALARS or (is_list and tp is bool):
        raise TypeError(
            f"{owner.__name__}.{name}: {annotation!r} has no command-line form; give the field a str, int, float, "
            "bool or list type, or keep it off the command line with setting(..., cli='reason')."
        )
    return tp, is_list, optional


@dataclass(frozen=True)
class OptionSpec:
    """How one settings field appears on the command line."""

    owner: type
    """The settings class."""
    name: str
    """The field name, also the click parameter's name."""
    flag: str
    """The primary flag (``--format``); a bool field's positive flag (``--fsync``)."""
    decls: tuple[str, ...]
    """Declarations passed to typer (``--fsync/--no-fsync``, ``-q``)."""
    item_type: type
    is_list: bool
    optional: bool
    default: Any
    """The dataclass default (``MISSING`` for a required field)."""
    help: str
    choices: tuple[str, ...] | None
    comma_separated: bool
    hidden: bool
    items: str
    """What the values are called in error messages (``layer numbers``)."""
    sweep: bool = False
    """Several comma-separated values are taken (a sweep): :meth:`convert` gives a list when there are several."""

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def nullable(self) -> bool:
        """An optional scalar whose default is set: ``none`` on the command line unsets it."""
        return self.optional and not self.is_list and self.item_type is not bool and self.default not in (None, MISSING)

    @property
    def shown_default(self) -> str | None:
        """The default as ``--help`` shows it (None: nothing shown)."""
        if self.required or self.default is None:
            return None
        if self.is_list:
            return ", ".join(str(v) for v in self.default) or None
        if self.item_type is bool:
            return self.flag[2:] if self.default else self.decls[0].split("/", 1)[1].lstrip("-")
        return str(self.default)

    def parameter(self) -> inspect.Parameter:
        """The keyword parameter (``Annotated[type, typer.Option(...)]``) typer builds this option from."""
        extra: dict[str, Any] = {"help": self.help, "hidden": self.hidden}
        if self.item_type is not bool:
            metavar = _METAVARS[self.item_type]
            if self.choices and sum(len(c) + 1 for c in self.choices) <= _MAX_CHOICES_METAVAR:
                metavar = "[" + "|".join(self.choices) + "]"
            elif self.choices:
                extra["help"] = f"{self.help} Choices: {', '.join(self.choices)}."
            if self.nullable:
                metavar += "|none"
            several = (self.is_list and self.comma_separated) or self.sweep
            extra["metavar"] = f"{metavar}[,...]" if several else metavar
        if self.sweep:  # text, split in convert
            return inspect.Parameter(
                self.name, inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if self.required else self.default,
                annotation=Annotated[str, typer.Option(*self.decls, **extra)],
            )  # fmt: skip
        if self.is_list:
            # given as text and converted here, so "2,3,4" and repeated flags both work
            shown = self.shown_default
            annotation: Any = Annotated[list[str], typer.Option(*self.decls, show_default=shown or False, **extra)]
            default: Any = inspect.Parameter.empty if self.required else None
        else:
            # a nullable one is read as text, to take "none" too
            kind = str if self.nullable else self.item_type
            annotation = Annotated[kind, typer.Option(*self.decls, **extra)]
            default = inspect.Parameter.empty if self.required else self.default
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    def _one(self, text: str) -> Any:
        if self.nullable and text.lower() == "none":
            return None
        try:
            return self.item_type(text)
        except ValueError:
            example = " 1,2,3" if self.item_type is int else " 1e-4,3e-4" if self.item_type is float else ""
            raise ConfigError(
                f"{self.flag} takes {self.items} (comma-separated for a sweep, e.g. {self.flag}{example}); "
                f"got {text!r}."
            ) from None

    def convert(self, value: Any) -> Any:
        """The field value for what the user typed (lists split on commas and converted)."""
        if value is None:
            return value
        if self.sweep:
            values = [self._one(p.strip()) for p in str(value).split(",") if p.strip()]
            if not values:
                raise ConfigError(f"{self.flag} takes {self.items} (comma-separated for a sweep); got {value!r}.")
            return values[0] if len(values) == 1 else values
        if self.nullable:
            if str(value).strip().lower() == "none":
                return None
            try:
                return self.item_type(value)
            except ValueError:
                raise ConfigError(f"{self.flag} takes {self.items} or none; got {value!r}.") from None
        if not self.is_list:
            return value
        raw = [str(v) for v in value]
        parts = [p.strip() for v in raw for p in (v.split(",") if self.comma_separated else [v])]
        out = []
        for p in parts:
            if not p:
                continue
            try:
                out.append(self.item_type(p))
            except ValueError:
                example = " 2,3,4" if self.item_type is int else " 0.5,1.0" if self.item_type is float else ""
                how = "repeated or comma-separated" if self.comma_separated else "repeated"
                raise ConfigError(
                    f"{self.flag} takes {self.items} ({how}, e.g. {self.flag}{example}); got {p!r}."
                ) from None
        return out


def option_specs(cls: type) -> list[OptionSpec]:
    """The options of every field of settings class ``cls`` that is not excluded (``setting(cli=...)``)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        metadata = f.metadata
        if not f.init or "cli_exclude" in metadata:
            continue
        item_type, is_list, optional = _analyse(cls, f.name, hints[f.name])
        flag = metadata.get("flag") or _flag_name(f.name)
        if item_type is bool:
            pair = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
            flag = pair.split("/", 1)[0]
            decls: tuple[str, ...] = (pair,)
        else:
            decls = (flag,)
        if metadata.get("short"):
            decls = (*decls, metadata["short"])
        specs.append(
            OptionSpec(
                owner=cls,
                name=f.name,
                flag=flag,
                decls=decls,
                item_type=item_type,
                is_list=is_list,
                optional=optional,
                default=field_default(f),
                help=str(metadata.get("help", "")),
                choices=metadata.get("choices"),
                comma_separated=bool(metadata.get("comma_separated", True)),
                hidden=bool(metadata.get("hidden", False)),
                items=str(metadata.get("items", _SCALARS[item_type])),
                sweep=bool(metadata.get("sweep", False)) and not is_list,
            )
        )
    return specs


class Given:
    """The options the user gave, per settings class (options left at their default are absent)."""

    def __init__(self, values: dict[type, dict[str, Any]]) -> None:
        self._values = values

    def __getitem__(self, cls: type) -> dict[str, Any]:
        """The given fields of ``cls`` (a copy)."""
        return dict(self._values.get(cls, {}))

    def get(self, cls: type, name: str, default: Any = None) -> Any:
        """The value of field ``name`` of ``cls`` as given, else ``default``."""
        return self._values.get(cls, {}).get(name, default)

    def value(self, cls: type, name: str) -> Any:
        """Field ``name`` of ``cls``: as given, else the dataclass default."""
        if name in self._values.get(cls, {}):
            return self._values[cls][name]
        (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
        return field_default(f)

    def make(self, cls: type[T], **overrides: Any) -> T:
        """``cls(**given, **overrides)``: the dataclass defaults fill in the rest and its checks run."""
        return cls(**{**self[cls], **overrides})


@contextmanager
def reported_errors() -> Iterator[None]:
    """Library errors and OS errors: ``error: ...`` on stderr, exit 2; Ctrl-C: exit 130."""
    try:
        yield
    except (EmbRecycleError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _check_unique(specs: list[OptionSpec], explicit: list[inspect.Parameter], where: str) -> None:
    names = [s.name for s in specs] + [p.name for p in explicit]
    flags = [d for s in specs for decl in s.decls for d in decl.split("/")]
    dupes = sorted({n for n in names if names.count(n) > 1} | {f for f in flags if flags.count(f) > 1})
    if dupes:
        raise TypeError(f"command {where!r}: {dupes} would be declared twice; rename a field or give it a flag.")


def command(app: typer.Typer, name: str, *settings: type, **typer_kwargs: Any) -> Callable[[F], F]:
    """Register ``f`` as command ``name`` of ``app``, with one option per field of each of ``settings``.

    ``f``'s own parameters (arguments, ``--json``, ``--quiet``: ``Annotated`` typer style) follow the
    generated options. With ``settings``, its first parameter receives the :class:`Given` values.
    Every command runs inside :func:`reported_errors`.
    """
    specs = [s for cls in settings for s in option_specs(cls)]

    def decorate(f: F) -> F:
        params = list(inspect.signature(f, eval_str=True).parameters.values())
        explicit = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[1 if settings else 0 :]]
        _check_unique(specs, explicit, name)
        generated = [s.parameter() for s in specs]
        required = [p for p in generated if p.default is inspect.Parameter.empty]
        context = [inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
        signature = inspect.Signature(
            [*required, *(p for p in generated if p not in required), *explicit, *(context if settings else [])]
        )

        @functools.wraps(f)
        def run(**kwargs: Any) -> Any:
            with reported_errors():
                if not settings:
                    return f(**kwargs)
                ctx = kwargs.pop(_CONTEXT)
                values: dict[type, dict[str, Any]] = {cls: {} for cls in settings}
                for s in specs:
                    value = kwargs.pop(s.name)
                    source = ctx.get_parameter_source(s.name)
                    if source is not None and source.name != "DEFAULT":
                        values[s.owner][s.name] = s.convert(value)
                return f(Given(values), **kwargs)

        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        setattr(run, SETTINGS_ATTR, settings)
        setattr(run, OPTIONS_ATTR, specs)
        app.command(name, **typer_kwargs)(run)
        return run  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class CommandEntry:
    """One command of a typer app, as :func:`walk` finds it."""

    path: str
    """``cache build``."""
    callback: Callable[..., Any]
    click_command: Any
    """The click command typer built (typer's own click)."""

    @property
    def settings(self) -> tuple[type, ...]:
        return tuple(getattr(self.callback, SETTINGS_ATTR, ()))

    @property
    def specs(self) -> list[OptionSpec]:
        return list(getattr(self.callback, OPTIONS_ATTR, []))

    def param(self, name: str) -> Any:
        """The click parameter named ``name`` (None when there is none)."""
        return next((p for p in self.click_command.params if p.name == name), None)


def walk(app: typer.Typer) -> list[CommandEntry]:
    """Every command of ``app`` (sub-apps included), with its callback and its click command."""
    root = typer.main.get_command(app)
    out: list[CommandEntry] = []

    def visit(t: typer.Typer, group: Any, prefix: str) -> None:
        for info in t.registered_commands:
            name = info.name or ""
            out.append(CommandEntry(f"{prefix}{name}", info.callback, group.commands[name]))  # type: ignore[arg-type]
        for g in t.registered_groups:
            name = g.name or ""
            visit(g.typer_instance, group.commands[name], f"{prefix}{name} ")  # type: ignore[arg-type]

    visit(app, root, "")
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _table(params: list[Any]) -> list[str]:
    lines = ["| Option | Value | Default | Description |", "|---|---|---|---|"]
    for p in params:
        if getattr(p, "hidden", False):
            continue
        if p.param_type_name == "argument":
            opt, value, default = f"`{p.name.upper()}`", "", "(required)"
        else:
            opt = ", ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])
            kind = getattr(p, "type", None)
            value = "" if p.is_flag else (p.metavar or (kind.name.upper() if kind is not None else "TEXT"))
            if p.multiple:
                value += " (repeatable)"
            if p.required:
                default = "(required)"
            elif isinstance(p.show_default, str):
                default = p.show_default
            elif p.is_flag and p.secondary_opts:
                default = (p.opts if p.default else p.secondary_opts)[0]
            elif p.default is None or p.default is False or p.show_default is False:
                default = ""
            else:
                default = str(p.default)
        lines.append(f"| {opt} | {_cell(value)} | {_cell(str(default))} | {_cell(getattr(p, 'help', '') or '')} |")
    return lines


def reference_markdown(app: typer.Typer, program: str = "embrecycle") -> str:
    """A Markdown reference of every command and option of ``app`` (``docs/cli.md``)."""
    lines = [
        f"# `{program}` command reference",
        "",
        "Generated from the settings dataclasses (`python -m embrecycle.cli_options > docs/cli.md`); "
        f"`tests/test_cli_options.py` checks that it is current. `{program} COMMAND --help` shows the same.",
        "",
        "Every command prints `error: ...` on stderr and exits 2 on bad settings or input; Ctrl-C exits 130. "
        "An optional setting whose default is set (e.g. `--train-limit`) takes `none` to unset it; list settings "
        "take the flag repeated, or comma-separated values where the value column shows `[,...]`.",
        "",
        f"## `{program}` (options before the command)",
        "",
        *_table(typer.main.get_command(app).params),
        "",
    ]
    for entry in walk(app):
        cmd = entry.click_command
        lines += [f"## `{program} {entry.path}`", "", inspect.cleandoc(cmd.help or "").split("\n\n")[0], ""]
        lines += [*_table(cmd.params), ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import importlib

    print(reference_markdown(importlib.import_module("embrecycle.cli").app), end="")
