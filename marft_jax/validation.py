"""Range rules of numeric and boolean settings, shared by `PPOConfig` and `finalize`.

A `Rule` says what a field may hold (a finite number in a range, an integer, a flag, or
None where the setting can be switched off); `Rule.problem(value)` returns the reason a
value breaks it, or None. NaN and ±inf break every numeric rule, and booleans never pass
as numbers (`True` is not a learning rate).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one setting may hold.

    Attributes:
        kind: "float" (any finite real, ints accepted), "int" or "bool".
        low: smallest allowed value (None: unbounded below).
        high: largest allowed value (None: unbounded above).
        low_open: `low` itself is excluded (`> low` rather than `>= low`).
        optional: None is allowed (the setting is off).
    """

    kind: str = "float"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """The rule in words, e.g. "a finite number > 0"."""
        if self.kind == "bool":
            return "true or false"
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '≥'} {self.low:g}"
        return what + (" (or None: off)" if self.optional else "")

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks the rule ("must be ..., got ..."), or None if it is allowed."""
        if value is None and self.optional:
            return None
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        elif self.kind == "int":
            ok = isinstance(value, int) and self._in_range(value)
        else:
            ok = math.isfinite(value) and self._in_range(value)
        return None if ok else f"must be {self.describe()}, got {value!r}"

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


POSITIVE = Rule(low=0.0, low_open=True)
NON_NEGATIVE = Rule(low=0.0)
UNIT = Rule(low=0.0, high=1.0)
FLAG = Rule(kind="bool")
POSITIVE_INT = Rule(kind="int", low=1)
NON_NEGATIVE_INT = Rule(kind="int", low=0)
