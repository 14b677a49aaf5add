"""Per-backend counters: cumulative (Prometheus) and per second (windowed figures).

Only the proxy's event loop touches these, so there are no locks. One slot per second,
an hour kept: ``figures(window)`` sums the slots of the last ``window`` seconds.
"""

from __future__ import annotations

import math
import time
from collections import deque

from pgshift.traffic.router import (
    LATENCY_BUCKETS_MS,
    STATUS_CLASSES,
    BackendFigures,
    bucket_index,
)

_NB = len(LATENCY_BUCKETS_MS)
# slot layout: [requests, 2xx, 3xx, 4xx, 5xx, connection errors, latency buckets...]
_REQ, _CONN, _HIST = 0, 5, 6
KEEP_SECONDS = 3600


def status_slot(status: int) -> int:
    """1xx (101 upgrades) count as 2xx: the request succeeded."""
    return min(max(status // 100, 2), 5) - 1


class BackendStats:
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = [0] * (_HIST + _NB)
        self.latency_sum = 0.0
        self.active = 0  # requests in flight to this backend
        self.slots: deque[tuple[int, list[int]]] = deque(maxlen=KEEP_SECONDS)

    def _slot(self) -> list[int]:
        sec = int(time.monotonic())
        if not self.slots or self.slots[-1][0] != sec:
            self.slots.append((sec, [0] * (_HIST + _NB)))
        return self.slots[-1][1]

    def answered(self, status: int, seconds: float) -> None:
        slot, total = self._slot(), self.total
        s, b = status_slot(status), _HIST + bucket_index(seconds * 1000.0)
        slot[_REQ] += 1
        slot[s] += 1
        slot[b] += 1
        total[_REQ] += 1
        total[s] += 1
        total[b] += 1
        self.latency_sum += seconds

    def failed(self) -> None:
        """A request that got no answer (connect refused, reset, timeout)."""
        slot = self._slot()
        slot[_REQ] += 1
        slot[_CONN] += 1
        self.total[_REQ] += 1
        self.total[_CONN] += 1

    def window(self, seconds: float) -> BackendFigures:
        since = time.monotonic() - seconds
        acc = [0] * (_HIST + _NB)
        for sec, slot in reversed(self.slots):
            if sec + 1 <= since:
                break
            for i, n in enumerate(slot):
                if n:
                    acc[i] += n
        return BackendFigures(
            requests=acc[_REQ], status=dict(zip(STATUS_CLASSES, acc[1:5], strict=True)),
            connection_errors=acc[_CONN], latency_buckets=tuple(acc[_HIST:]))

    def prometheus(self, out: list[str]) -> None:
        """Append this backend's sample lines (HELP/TYPE lines come from ``prometheus_header``)."""
        lb = f'backend="{self.name}"'
        for i, cls in enumerate(STATUS_CLASSES):
            out.append(f'pgshift_proxy_requests_total{{{lb},class="{cls}"}} {self.total[1 + i]}')
        out.append(f"pgshift_proxy_connection_errors_total{{{lb}}} {self.total[_CONN]}")
        cum = 0
        for i, bound in enumerate(LATENCY_BUCKETS_MS):
            cum += self.total[_HIST + i]
            le = "+Inf" if math.isinf(bound) else repr(bound / 1000.0)
            out.append(f'pgshift_proxy_request_duration_seconds_bucket{{{lb},le="{le}"}} {cum}')
        out.append(f"pgshift_proxy_request_duration_seconds_sum{{{lb}}} {self.latency_sum:.6f}")
        out.append(f"pgshift_proxy_request_duration_seconds_count{{{lb}}} {cum}")
        out.append(f"pgshift_proxy_active_requests{{{lb}}} {self.active}")


PROMETHEUS_HELP = {
    "pgshift_proxy_requests_total": ("counter", "Answers from a backend by status class."),
    "pgshift_proxy_connection_errors_total": ("counter", "Requests a backend never answered."),
    "pgshift_proxy_request_duration_seconds": ("histogram", "Time to a backend's full answer."),
    "pgshift_proxy_active_requests": ("gauge", "Requests in flight to a backend."),
    "pgshift_proxy_backend_up": ("gauge", "1 if the backend may be selected."),
    "pgshift_proxy_green_weight_percent": ("gauge", "Percent of cohorts reading from green."),
    "pgshift_proxy_system_of_record": ("gauge", "1 for the side mutating requests go to."),
    "pgshift_proxy_fence_held": ("gauge", "1 while the write fence holds mutating requests."),
    "pgshift_proxy_fence_queue": ("gauge", "Mutating requests waiting at the fence."),
    "pgshift_proxy_client_connections": ("gauge", "Open client connections."),
}
