"""``pgshift optimize --watch --metrics-port N``: the health samples as Prometheus metrics.

Scrapes are served the latest sample the watch loop took (no query per scrape, so a
scrape every second costs the database nothing); ``pgshift_db_up`` is 0 until the first
sample and ``pgshift_db_sample_timestamp_seconds`` says how fresh it is. The HTTP side
is sync's :class:`pgshift.sync.metrics.MetricsServer` (stdlib, a daemon thread).
"""

from __future__ import annotations

import calendar
import threading
import time

from pgshift.ops.watch import HealthSample
from pgshift.sync.metrics import MetricsServer

# (metric, help, type, HealthSample attribute)
_GAUGES = (
    ("connections", "Client connections open.", "gauge", "connections"),
    ("connections_max", "max_connections.", "gauge", "max_connections"),
    ("connections_active", "Client connections running a statement.", "gauge", "active"),
    ("connections_idle_in_transaction", "Sessions idle inside a transaction.", "gauge",
     "idle_in_transaction"),
    ("oldest_transaction_seconds", "Age of the oldest open transaction.", "gauge",
     "oldest_transaction_s"),
    ("replicas", "Streaming replicas connected.", "gauge", "replicas"),
    ("replay_lag_seconds", "Largest replay lag among the replicas.", "gauge", "replay_lag_s"),
    ("wal_archived_age_seconds", "Seconds since the last WAL segment was archived.", "gauge",
     "archived_age_s"),
    ("wal_archive_failures_total", "Failed WAL archiving attempts.", "counter",
     "archive_failures"),
)


def prometheus_text(sample: HealthSample | None) -> str:
    """The Prometheus text exposition of one sample (only ``up 0`` before the first)."""
    out = ["# HELP pgshift_db_up 1 once a health sample was read.", "# TYPE pgshift_db_up gauge",
           f"pgshift_db_up {0 if sample is None else 1}"]
    if sample is None:
        return "\n".join(out) + "\n"

    def add(name: str, help_text: str, kind: str, value: object) -> None:
        if value is None:
            return
        out.extend([f"# HELP pgshift_db_{name} {help_text}", f"# TYPE pgshift_db_{name} {kind}",
                    f"pgshift_db_{name} {value}"])

    taken = calendar.timegm(time.strptime(sample.ts, "%Y-%m-%dT%H:%M:%SZ"))
    add("sample_timestamp_seconds", "When the sample was taken.", "gauge", taken)
    for name, help_text, kind, attr in _GAUGES:
        add(name, help_text, kind, getattr(sample, attr))
    add("slow_statements", "Statements over --slow-ms on average in the last interval.",
        "gauge", len(sample.slow_queries))
    slowest = max((q.mean_ms for q in sample.slow_queries), default=0.0)
    add("slowest_statement_mean_seconds", "Mean time of the slowest of them.", "gauge",
        round(slowest / 1000, 6))
    return "\n".join(out) + "\n"


class HealthExporter:
    """Serves ``GET /metrics`` from the latest sample given to :meth:`update`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9188) -> None:
        self._latest: HealthSample | None = None
        self._lock = threading.Lock()
        self.server = MetricsServer(host, port, self._body)

    def _body(self) -> str:
        with self._lock:
            return prometheus_text(self._latest)

    @property
    def port(self) -> int:
        return self.server.port

    def update(self, sample: HealthSample) -> None:
        """The watch loop's ``on_sample``: scrapes see ``sample`` from now on."""
        with self._lock:
            self._latest = sample

    def start(self) -> HealthExporter:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
