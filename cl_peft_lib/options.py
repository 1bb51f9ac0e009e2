"""Typed ``KEY=VALUE`` options: one parser for the CLI, the grid and the notebooks.

``cl-peft run --opt lr=0.01 --opt layers=(0,1)``, ``cl-peft grid --opt ...`` and
``run_grid(..., opts={"lr": 0.01})`` all go through :func:`parse_opts`; values keep
their type (``1`` is an int, ``1e-3`` a float, ``true`` a bool, ``none`` None,
``(0,1)`` or ``0,1`` a tuple, anything else a string). :func:`format_opt` is its
inverse, so a grid hands its options to child runs as strings without losing a type.

The same module checks a method config's fields against their type hints
(:func:`check_fields`, called by ``MethodConfig.__post_init__``) with one-line errors
such as ``lr must be a float, got 'abc' (str)``.

Chapter: ``notebooks/06_ablations.ipynb`` (grids of method options).
"""
from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORDS = {"true": True, "false": False, "none": None, "null": None,
          "inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_LITERALS = (bool, int, float, str, tuple, list, type(None))


# ----------------------------------------------------------------------------- parsing
def parse_value(text: str) -> Any:
    """The typed value of an option's text.

    ``true``/``false`` -> bool, ``none``/``null`` -> None, ``inf``/``nan`` -> float, Python
    literals (``3``, ``1e-3``, ``'a b'``, ``(0, 1)``, ``[0, 1]``) -> themselves, ``a,b`` -> a
    tuple of parsed items, anything else -> the string itself (stripped).
    """
    s = text.strip()
    if s.lower() in _WORDS:
        return _WORDS[s.lower()]
    try:
        v = ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        v = s
    else:
        if not isinstance(v, _LITERALS):  # a dict, set, bytes or complex is not an option value
            return s
        return v
    if "," in s:
        return tuple(parse_value(p) for p in s.split(",") if p.strip())
    return s


def parse_opt(s: str) -> tuple[str, Any]:
    """``"lr=0.01"`` -> ``("lr", 0.01)``.

    Raises:
        ValueError: no ``=`` or the key is not a field-like name.
    """
    if not isinstance(s, str) or "=" not in s:
        raise ValueError(f"an option must be KEY=VALUE (e.g. lr=0.01), got {s!r}")
    k, v = s.split("=", 1)
    k = k.strip()
    if not _KEY.fullmatch(k):
        raise ValueError(f"option key {k!r} in {s!r} is not a name; write KEY=VALUE, e.g. lr=0.01")
    return k, parse_value(v)


def parse_opts(opts: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Options as a dict, from ``["lr=0.01", "top_n=3"]`` or from a dict (returned as a copy).

    A later ``KEY=VALUE`` wins over an earlier one with the same key.

    Raises:
        ValueError: a malformed string, a non-string key or a single string instead of a list.
    """
    if opts is None:
        return {}
    if isinstance(opts, str):
        raise ValueError(f"options must be a list of KEY=VALUE strings or a dict, got the string {opts!r}; "
                         f"write [{opts!r}]")
    if isinstance(opts, Mapping):
        bad = [k for k in opts if not isinstance(k, str) or not _KEY.fullmatch(k)]
        if bad:
            raise ValueError(f"option keys must be names, got {bad}")
        return dict(opts)
    return dict(parse_opt(o) for o in opts)


def format_opt(key: str, value: Any) -> str:
    """``("lr", 0.01)`` -> ``"lr=0.01"``; the inverse of :func:`parse_opt` for literal values."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={value}"
    return f"{key}={value!r}"


def format_opts(opts: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """Options as ``KEY=VALUE`` strings (for child command lines); types survive :func:`parse_opts`."""
    return [format_opt(k, v) for k, v in parse_opts(opts).items()]


# ----------------------------------------------------------------------------- output folders
def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work is done, that ``path`` is a writable folder or can be created as one.

    Nothing is created: the nearest existing parent must be a writable folder.

    Raises:
        ValueError: ``path`` or one of its parents is a file, or the folder cannot be written or created.
    """
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                what = "is a file" if q == p else f"lies under {q}, which is a file"
                raise ValueError(f"{flag} {p} {what}; give a folder path")
            if not os.access(q, os.W_OK | os.X_OK):
                what = "is not writable" if q == p else f"cannot be created: {q} is not writable"
                raise ValueError(f"{flag} {p} {what}; give a writable folder")
            return p
    return p  # a relative path under a current folder that no longer exists: the run will say so


# ----------------------------------------------------------------------------- typed fields
def describe(hint: Any) -> str:
    """``float | None`` -> ``"None or a float"`` (for error messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = ["None" if a is type(None) else describe(a) for a in args]
        parts.sort(key=lambda d: d != "None")
        return " or ".join(parts)
    if origin in (tuple, list):
        kind = origin.__name__
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            return f"a {kind} of {len(args)} " + ("values" if len(set(args)) > 1 else _plural(args[0]))
        return f"a {kind} of " + (_plural(args[0]) if args else "values")
    names = {bool: "a bool", int: "an int", float: "a float", str: "a string"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _plural(hint: Any) -> str:
    d = describe(hint)
    return {"an int": "ints", "a float": "floats", "a bool": "bools", "a string": "strings"}.get(d, d)


class _Mismatch(Exception):
    pass


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint``; a list becomes a tuple where a tuple is expected.

    Accepted: an int where a float is expected (kept as it is), a list or a single item
    where a variable-length tuple is expected, a comma-separated string where a tuple of
    strings is expected. Refused: bools as numbers, strings as numbers, non-finite floats.

    Raises:
        ValueError: ``"<name> must be <type>, got <value> (<type>)"``.
    """
    try:
        return _coerce(value, hint)
    except _Mismatch:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}") from None
        raise ValueError(f"{name} must be {describe(hint)}, got {value!r} ({type(value).__name__})") from None


def _coerce(v: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return v
    if origin is Literal:
        for a in args:
            if type(v) is type(a) and v == a:
                return v
        raise _Mismatch
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin in (tuple, list):
        variadic = origin is list or not args or (len(args) == 2 and args[1] is Ellipsis)
        item = args[0] if args else Any
        if isinstance(v, str) and variadic and item is str:
            v = [p.strip() for p in v.split(",") if p.strip()]
        elif variadic and not isinstance(v, (list, tuple, str)):
            v = [v]  # a single item: layers=3 means (3,)
        if not isinstance(v, (list, tuple)):
            raise _Mismatch
        if not variadic and len(v) != len(args):
            raise _Mismatch
        item_hints = [item] * len(v) if variadic else args
        return origin(_coerce(x, a) for x, a in zip(v, item_hints))
    if hint is bool:
        if isinstance(v, bool) or type(v).__name__ == "bool_":  # numpy bools too
            return bool(v)
        raise _Mismatch
    if hint is int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise _Mismatch
        return v if type(v) is int else int(v)
    if hint is float:
        if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or isinstance(v, numbers.Real)):
            raise _Mismatch
        if type(v) not in (int, float):
            v = float(v)
        if isinstance(v, float) and not math.isfinite(v):
            raise _Mismatch
        return v
    if hint is str:
        if isinstance(v, str):
            return v
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(v, hint):
            return v
        raise _Mismatch
    return v  # a hint this checker does not know: accepted as it is


def check_fields(obj: Any) -> None:
    """Check (and normalise) every field of the dataclass instance ``obj`` against its type hint.

    Raises:
        ValueError: the first field whose value does not fit its type.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in hints:
            setattr(obj, f.name, coerce(f.name, getattr(obj, f.name), hints[f.name]))


def check_range(obj: Any, name: str, *, gt: float | None = None, ge: float | None = None,
                lt: float | None = None, le: float | None = None, note: str = "") -> None:
    """Raise ``ValueError`` unless ``obj.<name>`` (None passes) lies in the given bounds (``note`` ends the message)."""
    v = getattr(obj, name)
    if v is None:
        return
    ok = ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le))
    if not ok:
        bounds = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
                  f"< {lt}" if lt is not None else "", f"<= {le}" if le is not None else ""]
        raise ValueError(f"{name} must be {' and '.join(b for b in bounds if b)}{note}, got {v!r}")
