"""Declared options of a component (timestep sampler, loss weighting, MTL method) and the one
parser of their two spellings.

A component declares its parameters once, as `Param`s: name, type (int, float or bool),
default and a finite range. `parse_options` reads the text after the component's name,
`name:v1,v2` (positional, in declared order) or `name:key=v,key2=v` (or both, positional
first); `check_options` reads a mapping (`--method-options` JSON, a TOML table). Both end in the
same checks, so that a degenerate value (NaN, inf, out of range, `1.5` for an integer, a key given
twice) is refused up front with one line naming the component, the key and the allowed range,
instead of training to a meaningless result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from antdiff.errors import AntError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Param:
    """One declared parameter: `kind` int, float or bool, in [low, high] (an end is excluded when
    `open_low` / `open_high`); `optional`: None ("none" in a spec) is allowed too; `size` > 1: a
    list of that many values, each in the range (a mapping only)."""

    name: str
    kind: type
    default: Any
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    optional: bool = False
    size: int = 1
    help: str = ""

    def range_text(self) -> str:
        """The allowed values in words, e.g. `a number in (0, 10]`."""
        if self.kind is bool:
            text = "true or false"
        else:
            what = "an integer" if self.kind is int else "a number"
            text = (
                f"{what} in {'(' if self.open_low else '['}{_show(self.low)}, "
                f"{_show(self.high)}{')' if self.open_high else ']'}"
            )
        if self.size > 1:
            text = f"a list of {self.size} values, each {text}"
        return f"{text} or none" if self.optional else text

    def parse(self, component: str, text: str) -> Any:
        """The value written `text` in a spec (`none`, `true`/`false`, or a number), checked."""
        word = text.strip().lower()
        if word == "none" and self.optional:
            return None
        if self.kind is bool and (word in _TRUE or word in _FALSE):
            return word in _TRUE
        try:
            number = float(word)
        except ValueError:
            return self._refuse(component, text)
        value = int(number) if number.is_integer() and abs(number) < 2**63 else number
        return (
            self._one(component, value, text) if self.size == 1 else self._refuse(component, text)
        )

    def check(self, component: str, value: Any) -> Any:
        """`value` (a bool or number, None if optional, a list for size > 1: typed, as JSON or
        TOML give it) as this parameter's type, in range; else AntError naming `component`, the
        key and the range."""
        if value is None and self.optional:
            return None
        if self.size == 1:
            return self._one(component, value, value)
        if not isinstance(value, list | tuple) or len(value) != self.size:
            return self._refuse(component, value)
        return tuple(self._one(component, v, value) for v in value)

    def _one(self, component: str, value: Any, shown: Any) -> Any:
        if self.kind is bool:
            return value if isinstance(value, bool) else self._refuse(component, shown)
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or not self._inside(number):
            return self._refuse(component, shown)
        if self.kind is int:
            if number != int(number):
                return self._refuse(component, shown)
            return int(number)
        return float(number)

    def _inside(self, x: float) -> bool:
        above = x > self.low if self.open_low else x >= self.low
        below = x < self.high if self.open_high else x <= self.high
        return above and below

    def _refuse(self, component: str, value: Any) -> Any:
        raise AntError(f"{component}: {self.name} must be {self.range_text()}, got {value!r}")


def _show(x: float) -> str:
    """A bound as people write it: 1000000 rather than 1e+06, 0.001, 0.01."""
    return str(int(x)) if float(x).is_integer() and abs(x) <= 2**53 else f"{x:g}"


def defaults(params: Iterable[Param]) -> dict[str, Any]:
    """Each declared parameter's default, by name."""
    return {p.name: p.default for p in params}


def check_options(
    component: str, params: Sequence[Param], given: Mapping[str, Any], extra: bool = False
) -> dict[str, Any]:
    """The declared defaults updated by the mapping `given`, every value checked; unknown keys
    are refused unless `extra` (then they pass on unchecked, for a component that forwards them,
    e.g. torchjd's own options)."""
    declared = _declared(component, params, given, extra)
    values = defaults(params)
    for key, value in given.items():
        values[key] = declared[key].check(component, value) if key in declared else value
    return values


def parse_options(component: str, params: Sequence[Param], text: str) -> dict[str, Any]:
    """The values of `text`, the part of a spec after `name:`: `v1,v2` in declared order and/or
    `key=v` pairs; a key given twice, a positional value after a `key=v`, or more values than
    declared parameters are refused."""
    given: dict[str, str] = {}
    named = False
    if text.strip() and not params:
        raise AntError(f"{component} takes no parameters, got {text!r}")
    items = [item.strip() for item in text.split(",") if item.strip()]
    for i, item in enumerate(items):
        key, eq, value = item.partition("=")
        if eq:
            named, key = True, key.strip()
        elif named:
            raise AntError(f"{component}: positional value {item!r} after a key=value option")
        elif i < len(params):
            key, value = params[i].name, item
        else:
            n = len(params)
            raise AntError(f"{component} takes at most {n} parameter(s), got {text!r}")
        if key in given:
            raise AntError(f"{component}: {key} is given twice in {text!r}")
        given[key] = value
    declared = _declared(component, params, given, extra=False)
    values = defaults(params)
    values.update({key: declared[key].parse(component, text) for key, text in given.items()})
    return values


def _declared(
    component: str, params: Sequence[Param], given: Iterable[str], extra: bool
) -> dict[str, Param]:
    declared = {p.name: p for p in params}
    unknown = sorted(set(given) - set(declared))
    if unknown and not extra:
        valid = ", ".join(declared) or "none"
        raise AntError(f"{component}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
    return declared


def options_help(params: Iterable[Param]) -> str:
    """`name (range, default d)` for each parameter, comma-separated: for help texts and docs."""
    return ", ".join(f"{p.name} ({p.range_text()}, default {p.default})" for p in params)
