"""Checked frozen dataclasses: every field's type and range, declared on the field, checked at
construction and when built from JSON, with errors that name the key.

A field is declared once, with its rule beside it::

    @dataclass(frozen=True)
    class TilingConfig(Checked):
        overlap: float = setting(0.25, ge=0, le=0.9, why="tiles per pixel grow as 1 / (1 - overlap)^2")

and :func:`from_dict` builds a (nested) instance from parsed JSON, refusing unknown keys (listing
the valid ones), missing required keys, values of the wrong type (a float batch size, a string
threshold, a list where an object belongs), non-finite numbers and values out of range, with one
:class:`SpecError` naming the dotted key (``tiling.overlap``).  Free-form values (``Any``) must be
JSON (strings, numbers, booleans, null, lists, objects with string keys) nested at most
:data:`MAX_NESTING` deep.  Adding a field, or a section that is itself a :class:`Checked`
dataclass, is one line; the checks and the JSON loading follow from its annotation.

Measured against a JSON-Schema validator: ``jsonschema`` would add five packages (one compiled,
``rpds-py``) to the inference image and a second description of every field to keep in step with
the dataclasses; the annotations already say it all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union, get_args, get_origin

__all__ = ["Checked", "SpecError", "setting", "from_dict", "MAX_NESTING"]

MAX_NESTING = 32


class SpecError(ValueError):
    """An invalid value; ``key`` is its dotted path (``tiling.overlap``), ``detail`` what is wrong."""

    def __init__(self, key: str, detail: str) -> None:
        self.key, self.detail = key, detail
        super().__init__(f"{key}: {detail}" if key else detail)

    def under(self, prefix: str) -> "SpecError":
        """The same error, one level down: ``tiling`` + ``overlap`` -> ``tiling.overlap``."""
        return SpecError(f"{prefix}.{self.key}" if self.key else prefix, self.detail)


@dataclass(frozen=True)
class _Rule:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    required: bool = False  # must be given in JSON even though Python code has a default
    check: Callable[[Any], str | None] | None = None  # extra check: an error message, or None
    why: str | None = None

    def bounds(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        return " and ".join(parts)


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, multiple_of: int | None = None,
            required: bool = False, check: Callable[[Any], str | None] | None = None, why: str | None = None) -> Any:
    """A dataclass field with its rule: bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt`` <), ``multiple_of``,
    ``required`` (in JSON), an extra ``check`` returning an error message, and ``why`` (said in errors)."""
    rule = _Rule(ge, gt, le, lt, multiple_of, required, check, why)
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


@functools.lru_cache(maxsize=None)
def _hints(klass: type) -> dict[str, Any]:
    return typing.get_type_hints(klass)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _json_problem(value: Any) -> str | None:
    """Why ``value`` is not plain JSON nested at most MAX_NESTING deep (None when it is); no recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"is nested more than {MAX_NESTING} levels deep"
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return "has an object key that is not a string"
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif not (item is None or isinstance(item, (str, int, float, bool))):
            return f"holds a {type(item).__name__}, not a JSON value"
    return None


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None when it does)."""
    origin = get_origin(hint)
    if hint is Any:
        return _json_problem(value)
    if origin is Literal:
        choices = get_args(hint)
        if any(value == c and type(value) is type(c) for c in choices):
            return None
        return f"is not one of {list(choices)}"
    if origin in (Union, types.UnionType):
        problems = [_type_problem(value, option) for option in get_args(hint)]
        return None if None in problems else " or ".join(dict.fromkeys(p for p in problems if p))
    if hint is type(None):
        return None if value is None else "must be null"
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        item_hint = get_args(hint)[0] if get_args(hint) else Any
        for i, item in enumerate(value):
            problem = _type_problem(item, item_hint)
            if problem:
                return f"item {i} ({_show(item)}) {problem}"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return "must be an object ({...})"
        key_hint, value_hint = get_args(hint) or (str, Any)
        for k, v in value.items():
            if not isinstance(k, str):
                return f"key {k!r} must be a string"
            problem = _type_problem(v, value_hint)
            if problem:
                return f"key {k!r} ({_show(v)}) {problem}"
        return None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return None if isinstance(value, hint) else f"must be a {hint.__name__} (an object)"
    raise TypeError(f"no check for annotation {hint!r}")


def _range_problem(value: Any, rule: _Rule) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    ok = ((rule.ge is None or value >= rule.ge) and (rule.gt is None or value > rule.gt)
          and (rule.le is None or value <= rule.le) and (rule.lt is None or value < rule.lt)
          and (not rule.multiple_of or value % rule.multiple_of == 0))
    return None if ok else f"must be {rule.bounds()}"


class Checked:
    """Mixin for frozen dataclasses: fields checked against their annotation and :func:`setting` rule
    on construction, then :meth:`_check` (cross-field rules) runs."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            rule: _Rule = f.metadata.get("rule", _Rule())
            problem = _type_problem(value, hints[f.name]) or _range_problem(value, rule)
            if problem is None and rule.check is not None:
                problem = rule.check(value)
            if problem:
                why = f" ({rule.why})" if rule.why and "must be" in problem else ""
                shown = "" if problem.startswith(("item ", "key ")) else f"{_show(value)} "
                raise SpecError(f.name, f"{shown}{problem}{why}")
        self._check()

    def _check(self) -> None:
        """Rules between fields; raise :class:`SpecError` naming the field."""


def _show(value: Any) -> str:
    """``value`` as JSON would write it (null, true, "text"), shortened."""
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def from_dict(klass: type, data: Any, key: str = "") -> Any:
    """Build the :class:`Checked` dataclass ``klass`` from parsed JSON ``data`` (nested sections too).

    Raises
    ------
    SpecError
        Naming the dotted key of the first problem found.
    """
    if not isinstance(data, dict):
        raise SpecError(key, f"must be an object ({{...}}), got {_type_name(data)}")
    fields = {f.name: f for f in dataclasses.fields(klass) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise SpecError(key, f"unknown key(s) {unknown}; valid: {sorted(fields)}")
    missing = [name for name, f in fields.items()
               if name not in data and (f.metadata.get("rule", _Rule()).required
                                        or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))]
    if missing:
        raise SpecError(key, f"missing required key(s) {missing}")
    hints = _hints(klass)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and issubclass(hint, Checked):
            value = from_dict(hint, value, f"{key}.{name}" if key else name)
        elif get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return klass(**kwargs)
    except SpecError as exc:
        raise exc.under(key) if key else exc from None
