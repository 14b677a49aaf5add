"""Prometheus metrics of the reference app, in the text exposition format (no dependency).

``pgshift_demo_requests_total{route,method,status}``, the latency histogram
``pgshift_demo_request_duration_seconds{route}``, ``pgshift_demo_db_errors_total{kind}`` and
``pgshift_demo_faults_injected_total{kind}``. ``route`` is the route's template
(``/jobs/{id}``), never the raw path, so the label set stays small.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Seconds. Spans a fast cached read (~1 ms) to a request stuck behind a lock timeout.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0)


class Metrics:
    """Thread-safe counters and histograms, rendered by :meth:`render`."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._hist: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._db_errors: dict[str, int] = defaultdict(int)
        self._faults: dict[str, int] = defaultdict(int)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._requests[(route, method, status)] += 1
            counts = self._hist.get(route)
            if counts is None:
                counts = self._hist[route] = [0] * (len(BUCKETS) + 1)
            counts[i] += 1
            self._sum[route] += seconds

    def db_error(self, kind: str) -> None:
        with self._lock:
            self._db_errors[kind] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def render(self) -> str:
        with self._lock:
            requests = sorted(self._requests.items())
            hist = {k: list(v) for k, v in sorted(self._hist.items())}
            sums = dict(self._sum)
            db_errors = sorted(self._db_errors.items())
            faults = sorted(self._faults.items())
        eng = _esc(self.engine)
        out = [
            "# HELP pgshift_demo_requests_total HTTP requests served, by route template.",
            "# TYPE pgshift_demo_requests_total counter",
        ]
        for (route, method, status), n in requests:
            out.append(f'pgshift_demo_requests_total{{engine="{eng}",route="{_esc(route)}",'
                       f'method="{method}",status="{status}"}} {n}')
        out += ["# HELP pgshift_demo_request_duration_seconds Request latency.",
                "# TYPE pgshift_demo_request_duration_seconds histogram"]
        for route, counts in hist.items():
            r = _esc(route)
            cumulative = 0
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'pgshift_demo_request_duration_seconds_bucket{{engine="{eng}",'
                           f'route="{r}",le="{le}"}} {cumulative}')
            out.append(f'pgshift_demo_request_duration_seconds_sum{{engine="{eng}",'
                       f'route="{r}"}} {sums[route]:.6f}')
            out.append(f'pgshift_demo_request_duration_seconds_count{{engine="{eng}",'
                       f'route="{r}"}} {cumulative}')
        out += ["# HELP pgshift_demo_db_errors_total Database calls that failed.",
                "# TYPE pgshift_demo_db_errors_total counter"]
        out.append(f'pgshift_demo_db_errors_total{{engine="{eng}",kind="any"}} '
                   f'{sum(n for _, n in db_errors)}')
        for kind, n in db_errors:
            out.append(f'pgshift_demo_db_errors_total{{engine="{eng}",kind="{_esc(kind)}"}} {n}')
        out += ["# HELP pgshift_demo_faults_injected_total Faults injected by PGSHIFT_DEMO_FAULTS.",
                "# TYPE pgshift_demo_faults_injected_total counter"]
        for kind, n in faults:
            out.append(f'pgshift_demo_faults_injected_total{{kind="{_esc(kind)}"}} {n}')
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
