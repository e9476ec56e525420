"""Field checks for JSON records read back from artifacts (manifests, cfg.json, checkpoints).

A file from elsewhere may lack a key, hold a string where a number belongs, or null where a
record belongs; each such case must become one ReproError naming the file, the field and
the fix, not a KeyError deep inside the reader. A `Kind` is (what it should be, test).
`require(obj, {field: kind}, where, fix)` checks every field, in order, and raises on the first.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from repro.errors import ReproError

Kind = tuple[str, Callable[[Any], bool]]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


COUNT: Kind = ("a whole number >= 0", lambda v: _int(v) and v >= 0)
POSITIVE: Kind = ("a whole number >= 1", lambda v: _int(v) and v >= 1)
NUMBER: Kind = ("a finite number", _num)
NONNEG_NUMBER: Kind = ("a finite number >= 0", lambda v: _num(v) and v >= 0)
BOOL: Kind = ("true or false", lambda v: isinstance(v, bool))
STR: Kind = ("a string", lambda v: isinstance(v, str))
TEXT: Kind = ("a non-empty string", lambda v: isinstance(v, str) and bool(v))
SHA256: Kind = ("a sha256 hex digest (64 hex digits)", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None)
DICT: Kind = ("an object", lambda v: isinstance(v, dict))
LIST: Kind = ("a list", lambda v: isinstance(v, list))
STR_LIST: Kind = ("a non-empty list of strings", lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))
COUNTS: Kind = ("an object of whole numbers >= 0", lambda v: isinstance(v, dict) and all(COUNT[1](x) for x in v.values()))


def one_of(*values: Any) -> Kind:
    return (f"one of {', '.join(map(repr, values))}", lambda v: any(v == x and type(v) is type(x) for x in values))


def optional(kind: Kind) -> Kind:
    return (f"{kind[0]} or null", lambda v: v is None or kind[1](v))


def shown(value: Any) -> str:
    """A value for an error message, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require(obj: Any, fields: dict[str, Kind], where: str, fix: str, maybe: dict[str, Kind] | None = None) -> dict:
    """Check that `obj` is a JSON object holding every field of `fields` with its kind, and
    the fields of `maybe` that it holds; returns `obj`.

    `where` names the record ("the manifest of store S", "shard record 3 of ..."), `fix` says
    what to do. Unknown keys are allowed (files outlive code)."""
    if not isinstance(obj, dict):
        raise ReproError(f"{where} is {shown(obj)}, not an object: {fix}")
    for key, (what, ok) in {**fields, **(maybe or {})}.items():
        if key not in obj:
            if key in fields:
                raise ReproError(f"{where} lacks the field {key!r} ({what}): {fix}")
            continue
        if not ok(obj[key]):
            raise ReproError(f"{where} has {key}={shown(obj[key])}, not {what}: {fix}")
    return obj


__all__ = ["BOOL", "COUNT", "COUNTS", "DICT", "Kind", "LIST", "NONNEG_NUMBER", "NUMBER", "POSITIVE",
           "SHA256", "STR", "STR_LIST", "TEXT", "one_of", "optional", "require", "shown"]
