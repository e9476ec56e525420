"""Command-line flags generated from a config dataclass, so that the dataclass is the one source
of a stage's settings: names, types, defaults and help (the sparsify habit, without simple_parsing).

    add_dataclass_args(parser, TrainConfig, exclude=("side_stream",))
    cfg = from_args(TrainConfig, parser.parse_args(argv))

Field `lr: float = 1e-4` with the string literal under it as its docstring becomes
`--lr FLOAT` (dest `lr`, default 1e-4, help = that docstring). Types: int, float (finite),
str, Path, bool (`--x/--no-x`), Literal (choices), `X | None` (also accepts 'none'),
`tuple[X, X]` (nargs=2) and `tuple[X, ...]` (one or more values, each also a comma list).
Values are checked by the dataclass's own `__post_init__` when `from_args` builds it: its
`ReproError` is the command line's one-line error.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

NONE_WORDS = ("none", "null")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring on one line} of a dataclass (and its bases), read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's docstring wins
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # built in, or no source on disk
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _scalar(tp: Any) -> Callable[[str], Any]:
    """str -> value of type `tp`, raising ArgumentTypeError with what is wrong."""
    if tp is bool:
        raise TypeError("bool is a switch, not a value")
    if tp is int:
        def parse_int(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        return parse_int
    if tp is float:
        from repro.cli.common import finite

        return finite()
    if tp in (str, Path):
        return tp
    raise TypeError(f"no command-line type for {tp!r}: exclude the field or give it a simpler type")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str):
        return None if text.strip().lower() in NONE_WORDS else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_or_none


def _listed(parse: Callable[[str], Any], split: bool) -> Callable[[str], tuple]:
    """One command-line word -> a tuple: "1,2" -> (1, 2) when `split` (not for paths)."""

    def parse_list(text: str) -> tuple:
        parts = [p for p in text.split(",") if p.strip()] if split else [text]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r} holds no value: give a comma list such as a,b")
        return tuple(parse(p.strip() if split else p) for p in parts)

    return parse_list


def argument_spec(tp: Any) -> dict[str, Any]:
    """add_argument keywords (type, choices, nargs, action) for a field annotation `tp`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"no command-line type for {tp!r}")
        spec = argument_spec(inner[0])
        if spec.get("action") is argparse.BooleanOptionalAction:
            return spec
        if "choices" in spec:  # argparse's `choices` would refuse the None that 'none' gives
            choices = spec.pop("choices")
            spec["type"] = _in_choices(spec["type"], choices)
            spec["metavar"] = "{" + ",".join(map(str, (*choices, "none"))) + "}"
        spec["type"] = _optional(spec["type"])
        return spec
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(tp) is Literal:
        kind = type(args[0])
        return {"type": _scalar(kind), "choices": tuple(args)}
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": _listed(_scalar(args[0]), split=args[0] is not Path), "nargs": "+"}
        if args and all(a is args[0] for a in args):
            return {"type": _scalar(args[0]), "nargs": len(args)}
    return {"type": _scalar(tp)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                       only: Iterable[str] | None = None, flags: dict[str, tuple[str, ...]] | None = None,
                       title: str | None = None) -> list[str]:
    """Add a flag for each field of dataclass `cls` (except `exclude`; only `only` if given);
    return the field names added. `flags` gives other option strings for a field, e.g.
    {"dead_tokens_threshold": ("--dead-tokens-threshold", "--dead-tokens")}. A field without a
    default is a required flag. The dest is always the field's name."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    exclude, only, flags = set(exclude), None if only is None else set(only), flags or {}
    group = parser.add_argument_group(title or f"settings ({cls.__name__})")
    added = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or (only is not None and f.name not in only):
            continue
        spec = argument_spec(hints[f.name])
        if f.default is not dataclasses.MISSING:
            spec["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            spec["default"] = f.default_factory()
        else:
            spec["required"] = True
        help_text = docs.get(f.name, "").replace("%", "%%") + (" (default: %(default)s)" if "default" in spec else "")
        action = group.add_argument(*flags.get(f.name, (_flag(f.name),)), dest=f.name, help=help_text, **spec)
        if action.help.count("%(default)s") > 1:  # some Pythons' BooleanOptionalAction add it too
            action.help = help_text
        added.append(f.name)
    return added


def _in_choices(parse: Callable[[str], Any], choices: tuple) -> Callable[[str], Any]:
    """`parse`, then refuse values outside `choices` (for an optional Literal)."""

    def parse_choice(text: str):
        value = parse(text)
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(map(str, choices))}, none)")
        return value

    return parse_choice


def _flatten(value: Any) -> Any:
    """nargs="+" of comma lists gives [(a, b), (c,)] -> (a, b, c); nargs=2 gives a list -> tuple."""
    if isinstance(value, list):
        return tuple(x for item in value for x in (item if isinstance(item, tuple) else (item,)))
    return value


def from_args(cls: type, args: argparse.Namespace, **changes: Any):
    """Build dataclass `cls` from the parsed flags its fields own (plus `changes`); its
    `__post_init__` checks the values and raises `ReproError` for bad ones."""
    values = {f.name: _flatten(getattr(args, f.name)) for f in dataclasses.fields(cls)
              if f.init and hasattr(args, f.name)}
    return cls(**{**values, **changes})


__all__ = ["add_dataclass_args", "argument_spec", "field_docs", "from_args"]
