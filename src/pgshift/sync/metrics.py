"""Sync figures as Prometheus metrics: text format, and an HTTP endpoint.

- :func:`prometheus` renders :func:`pgshift.sync.verbs.status` (``pgshift sync status
  --prometheus``, for a textfile collector);
- :class:`RunMetrics` holds what only the running applier knows (batches, the
  duration of the last one), fed by the apply loops' ``on_batch`` callbacks;
- :class:`MetricsServer` serves ``GET /metrics`` from a daemon thread (stdlib
  ``http.server``, no dependency): ``pgshift sync run --follow --metrics-port N``
  and ``pgshift sync status --serve N``. Each scrape reads the status afresh
  (lag, queue lengths and the persistent counters live in the databases), so the
  figures survive a restart of the applier and agree with ``sync status``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DIRECTIONS = ("to-postgres", "to-sqlite")


class _Lines:
    """Samples grouped by family, HELP/TYPE once per family."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, help_text: str, kind: str, value: object,
            labels: dict[str, str] | None = None) -> None:
        if value is None:
            return
        lab = {"schema": self.schema, **(labels or {})}
        rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in lab.items())
        family = self.families.setdefault(name, (help_text, kind, []))
        family[2].append(f"pgshift_sync_{name}{{{rendered}}} {_number(value)}")

    def text(self) -> str:
        out: list[str] = []
        for name, (help_text, kind, samples) in self.families.items():
            out.append(f"# HELP pgshift_sync_{name} {help_text}")
            out.append(f"# TYPE pgshift_sync_{name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def _status_lines(lines: _Lines, status: dict[str, Any]) -> None:
    state = status.get("to_postgres") or {}
    tp = {"direction": "to-postgres"}
    ts = {"direction": "to-sqlite"}
    lines.add("capture_max_seq", "Highest seq in the SQLite change log.", "gauge",
              status.get("max_seq"))
    lines.add("checkpoint_seq", "Last applied change-log seq.", "gauge",
              state.get("last_seq"), tp)
    lines.add("applied_total", "Changes applied.", "counter", state.get("applied"), tp)
    lines.add("applied_total", "Changes applied.", "counter",
              status.get("to_sqlite_applied"), ts)
    parked = status.get("parked_by_direction") or {}
    lines.add("parked_total", "Changes parked (refused or not convertible).", "counter",
              parked.get("to-postgres", state.get("parked")), tp)
    lines.add("parked_total", "Changes parked (refused or not convertible).", "counter",
              parked.get("to-sqlite"), ts)
    for direction, n in sorted((status.get("conflicts_by_direction") or {}).items()):
        lines.add("conflicts_total", "Conflicts recorded in pgshift.sync_conflicts.",
                  "counter", n, {"direction": direction})
    lines.add("pending", "Changes captured and not applied yet (queue length).", "gauge",
              status.get("pending"), tp)
    lines.add("pending", "Changes captured and not applied yet (queue length).", "gauge",
              status.get("to_sqlite_pending"), ts)
    lines.add("lag_seconds", "Age of the oldest change not applied yet.", "gauge",
              None if status.get("lag_ms") is None else status["lag_ms"] / 1000, tp)
    lines.add("lag_seconds", "Age of the oldest change not applied yet.", "gauge",
              None if status.get("to_sqlite_lag_ms") is None
              else status["to_sqlite_lag_ms"] / 1000, ts)


def prometheus(status: dict[str, Any]) -> str:
    """Render :func:`pgshift.sync.verbs.status` (its ``to_dict()``) as Prometheus metrics."""
    lines = _Lines(status.get("schema", "public"))
    _status_lines(lines, status)
    return lines.text()


class RunMetrics:
    """Figures of the running applier(s), updated after every committed batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_direction: dict[str, dict[str, float]] = {}
        self.started = time.time()

    def observe(self, result: Any) -> None:
        """Record one committed batch from a :class:`pgshift.sync.apply.SyncResult`."""
        with self._lock:
            d = self._by_direction.setdefault(result.direction, {})
            d["batches"] = result.batches
            d["applied"] = result.applied
            d["conflicts"] = result.conflicts
            d["parked"] = result.parked
            d["last_batch_seconds"] = result.last_batch_seconds
            d["last_batch_at"] = time.time()

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: dict(v) for k, v in self._by_direction.items()}

    def lines(self, lines: _Lines) -> None:
        lines.add("process_start_time_seconds", "When this pgshift sync process started.",
                  "gauge", round(self.started, 3))
        for direction, d in sorted(self.snapshot().items()):
            lab = {"direction": direction}
            lines.add("batches_total", "Batches this process committed.", "counter",
                      int(d["batches"]), lab)
            lines.add("run_applied_total", "Changes this process applied.", "counter",
                      int(d["applied"]), lab)
            lines.add("last_batch_seconds", "Read, apply and commit time of the last batch.",
                      "gauge", d["last_batch_seconds"], lab)
            lines.add("last_batch_timestamp_seconds", "When the last batch committed.",
                      "gauge", round(d["last_batch_at"], 3), lab)


def render(schema: str, collect: Callable[[], dict[str, Any]],
           run: RunMetrics | None = None) -> str:
    """One scrape: the status from ``collect()`` (``up`` 0 when it fails) and ``run``'s
    figures."""
    lines = _Lines(schema)
    try:
        status = collect()
    except Exception:  # the databases are away: say so, keep serving the process figures
        lines.add("up", "1 when the last scrape could read both databases.", "gauge", 0)
    else:
        lines.add("up", "1 when the last scrape could read both databases.", "gauge", 1)
        _status_lines(lines, status)
    if run is not None:
        run.lines(lines)
    return lines.text()


class MetricsServer:
    """``GET /metrics`` on ``host:port`` from a daemon thread; ``port`` 0 picks one."""

    def __init__(self, host: str, port: int, body: Callable[[], str],
                 on_stop: Callable[[], None] | None = None) -> None:
        render_body = body
        self.on_stop = on_stop

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                data = render_body().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not worth a log line each

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="pgshift-metrics",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        if self.on_stop is not None:
            self.on_stop()
