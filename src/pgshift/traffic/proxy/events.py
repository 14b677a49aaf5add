"""The proxy's log: one JSON object per line, one line per event.

    {"ts": "2026-12-04T18:30:00.123Z", "level": "warning", "event": "backend_down",
     "side": "green", "reason": "HTTP 503"}

Events (docs/traffic.md lists their fields): ``proxy_start``, ``proxy_stop``,
``backend_down``/``backend_up`` (active check), ``backend_ejected``/``backend_restored``
(passive), ``weight_changed``, ``system_of_record_changed``, ``fence_held``,
``fence_released``, ``rollback``, ``refused`` (the proxy answered a request itself or
closed a connection: ``reason`` says why), ``descriptors_exhausted``.

Refusals can come by the thousand (a flood of oversized heads, a connection cap hit under
load): each ``reason`` is logged at most once a second, with the number suppressed since.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = logging.getLogger("pgshift.proxy")
REFUSAL_INTERVAL = 1.0  # seconds between two ``refused`` lines with the same reason


def emit(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as one JSON line."""
    if not LOGGER.isEnabledFor(level):
        return
    t = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
    record = {"ts": stamp, "level": logging.getLevelName(level).lower(), "event": event,
              **fields}
    LOGGER.log(level, json.dumps(record, default=str))


class Refusals:
    """Counts refusals by reason and logs each reason at most once per interval
    (``refused`` lines by default; ``descriptors_exhausted`` uses one too)."""

    def __init__(self, interval: float = REFUSAL_INTERVAL, *, event: str = "refused",
                 level: int = logging.WARNING) -> None:
        self.interval = interval
        self.event = event
        self.level = level
        self.counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, reason: str, **fields: Any) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        emit(self.event, self.level, reason=reason, **fields)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send the proxy's events to stderr, one bare line each (``pgshift proxy``)."""
    if any(getattr(h, "_pgshift_proxy", False) for h in LOGGER.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._pgshift_proxy = True  # type: ignore[attr-defined]
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
