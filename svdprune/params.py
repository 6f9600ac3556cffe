"""Declared method parameters: each method class lists its parameters with their type and allowed values
(``PARAMS``), and every entry point checks the values it was given against them before the method is built.

run.py and sweeps (:func:`harness.settings.check_config`, before any data or weights), :func:`svdprune.prune` and the
lmms-eval models (:func:`svdprune.pruning.build_method`) all go through :func:`check_params`, so that e.g.
``'method.params.center="false"'`` (the string "false", not the boolean) or ``center=maybe`` is one line naming the
value and what is allowed, never a run that silently does something else. A method's ``__init__`` still checks
what depends on several values at once (a schedule against the budget, say).

Values are checked, not converted: what the user gave is what the method gets and what metrics.json records. Each
declaration also carries the parameter's default as configs/method/<name>.yaml ships it (:func:`defaults`), so that
:func:`svdprune.prune` works from an installed package with no configs/ folder.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .errors import UserError


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` is bool, int, number, choice, text, int_list, number_list or mapping; ``low``/``high``
    bound numbers (and the items of a list), ``open_low``/``open_high`` exclude the bound; ``choices`` for a choice;
    ``nullable``: null is allowed too (it then means the method's documented default behaviour)."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    nullable: bool = False
    min_items: int = 0
    #: with ``has_default``: the value configs/method/<name>.yaml gives it (what prune() uses when none is given);
    #: without: the config leaves the parameter out and the constructor's default applies
    default: Any = None
    has_default: bool = False

    def allowed(self) -> str:
        """What is allowed, in words (the end of the error line)."""
        if self.kind == "bool":
            text = "true, false"
        elif self.kind == "choice":
            text = ", ".join(map(str, self.choices))
        elif self.kind == "text":
            text = "a string"
        elif self.kind == "mapping":
            text = "a mapping"
        else:
            noun = {"int": "an integer", "number": "a number", "int_list": "a list of integers",
                    "number_list": "a list of numbers"}[self.kind]
            text = noun + self._range()
            if self.min_items > 1:
                text += f" ({self.min_items} or more)"
        return text + (", or null" if self.nullable else "")

    def _range(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f" {'>' if self.open_low else '>='} {self.low:g}"
        if self.low is None:
            return f" {'<' if self.open_high else '<='} {self.high:g}"
        if self.kind in ("int", "int_list") and not self.open_low and not self.open_high:
            return f" in {self.low:g}..{self.high:g}"
        return f" in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"

    def _in_range(self, value) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))

    def accepts(self, value) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return _is_int(value) and self._in_range(value)
        if self.kind == "number":
            return _is_number(value) and self._in_range(value)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "text":
            return isinstance(value, str)
        if self.kind == "mapping":
            return isinstance(value, Mapping)
        if self.kind in ("int_list", "number_list"):
            item_ok = _is_int if self.kind == "int_list" else _is_number
            return (isinstance(value, (list, tuple)) and len(value) >= self.min_items
                    and all(item_ok(v) and self._in_range(v) for v in value))
        raise ValueError(f"unknown parameter kind {self.kind!r}")


def _with_default(param: Param, default) -> Param:
    if default is _UNSET:
        return param
    if not param.accepts(default):
        raise ValueError(f"default {default!r} is not allowed by {param}")
    return replace(param, default=default, has_default=True)


class _Unset:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


_UNSET = _Unset()


def Flag(default=_UNSET) -> Param:  # noqa: N802 - reads as a type in a PARAMS table
    return _with_default(Param("bool"), default)


def Integer(low: int | None = None, high: int | None = None, nullable: bool = False,  # noqa: N802
            default=_UNSET) -> Param:
    return _with_default(Param("int", low, high, nullable=nullable), default)


def Number(low: float | None = None, high: float | None = None, *, open_low: bool = False,  # noqa: N802
           open_high: bool = False, nullable: bool = False, default=_UNSET) -> Param:
    return _with_default(Param("number", low, high, open_low, open_high, nullable=nullable), default)


def Choice(*choices: str, default=_UNSET) -> Param:  # noqa: N802
    return _with_default(Param("choice", choices=tuple(choices)), default)


def Text(nullable: bool = False, default=_UNSET) -> Param:  # noqa: N802
    return _with_default(Param("text", nullable=nullable), default)


def IntList(low: int | None = None, high: int | None = None, nullable: bool = False,  # noqa: N802
            min_items: int = 0, default=_UNSET) -> Param:
    return _with_default(Param("int_list", low, high, nullable=nullable, min_items=min_items), default)


def NumberList(low: float | None = None, high: float | None = None, *, open_low: bool = False,  # noqa: N802
               nullable: bool = False, default=_UNSET) -> Param:
    return _with_default(Param("number_list", low, high, open_low, nullable=nullable), default)


def Table(nullable: bool = False, default=_UNSET) -> Param:  # noqa: N802
    """A mapping (budget -> schedule, say); its entries are checked by the method, which knows their meaning."""
    return _with_default(Param("mapping", nullable=nullable), default)


def defaults(declared: Mapping[str, Param]) -> dict[str, Any]:
    """The parameters' declared defaults (copies), in declaration order: what configs/method/<name>.yaml sets, so that
    :func:`svdprune.prune` needs no file outside the package (a test holds the two equal)."""
    return {key: copy.deepcopy(param.default) for key, param in declared.items() if param.has_default}


def check_params(method: str, declared: Mapping[str, Param], params: Mapping[str, Any]) -> None:
    """Every key of ``params`` is declared and its value allowed; else one-line :class:`UserError` naming the method,
    the parameter, the value and what is allowed."""
    for key, value in params.items():
        if key not in declared:
            raise UserError(f"method {method!r} has no parameter {key!r}; allowed: {', '.join(declared) or 'none'}")
        param = declared[key]
        if param.kind in ("int_list", "number_list") and isinstance(value, (list, tuple)):
            item = Param("int" if param.kind == "int_list" else "number", param.low, param.high, param.open_low,
                         param.open_high)
            for i, entry in enumerate(value):  # name the bad entry, not the whole list
                if not item.accepts(entry):
                    raise UserError(f"{method}: method.params.{key}[{i}]={entry!r}; allowed: {item.allowed()}")
        if not param.accepts(value):
            raise UserError(f"{method}: method.params.{key}={value!r}; allowed: {param.allowed()}")
