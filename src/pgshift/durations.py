"""One grammar for durations across pgshift (cutover files, gate rules, CLI options):
``500ms``, ``30s``, ``10m``, ``48h``, ``7d``, or a bare number of seconds."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
EXAMPLES = "500ms, 30s, 10m, 48h or 7d"


def seconds(value: Any) -> float:
    """``"10m"`` -> 600.0; a bare number is seconds. ``ValueError`` otherwise (negative
    numbers and booleans included)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (e.g. {EXAMPLES})")
    return float(m[1]) * _UNITS[(m[2] or "s").lower()]
