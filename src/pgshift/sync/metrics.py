"""Sync figures in Prometheus' text exposition format (``pgshift sync status --prometheus``)."""

from __future__ import annotations

from typing import Any


def prometheus(status: dict[str, Any]) -> str:
    """Render :func:`pgshift.sync.ops.status` as Prometheus metrics (one scrape)."""
    schema = status.get("schema", "public")
    lines: list[str] = []

    def metric(name: str, help_text: str, kind: str, value: object,
               labels: dict[str, str] | None = None) -> None:
        if value is None:
            return
        lab = {"schema": schema, **(labels or {})}
        rendered = ",".join(f'{k}="{v}"' for k, v in lab.items())
        lines.append(f"# HELP pgshift_sync_{name} {help_text}")
        lines.append(f"# TYPE pgshift_sync_{name} {kind}")
        lines.append(f"pgshift_sync_{name}{{{rendered}}} {value}")

    state = status.get("to_postgres") or {}
    tp = {"direction": "to-postgres"}
    ts = {"direction": "to-sqlite"}
    metric("capture_max_seq", "Highest seq in the SQLite change log.", "gauge",
           status.get("max_seq"))
    metric("checkpoint_seq", "Last applied change-log seq.", "gauge", state.get("last_seq"), tp)
    metric("applied_total", "Changes applied.", "counter", state.get("applied"), tp)
    metric("parked_total", "Changes parked (refused or not convertible).", "counter",
           state.get("parked"), tp)
    metric("pending", "Changes captured and not applied yet.", "gauge",
           status.get("pending"), tp)
    metric("lag_seconds", "Age of the oldest change not applied yet.", "gauge",
           None if status.get("lag_ms") is None else status["lag_ms"] / 1000, tp)
    metric("pending", "Changes captured and not applied yet.", "gauge",
           status.get("to_sqlite_pending"), ts)
    metric("lag_seconds", "Age of the oldest change not applied yet.", "gauge",
           None if status.get("to_sqlite_lag_ms") is None
           else status["to_sqlite_lag_ms"] / 1000, ts)
    return "\n".join(_dedupe_headers(lines)) + "\n"


def _dedupe_headers(lines: list[str]) -> list[str]:
    """A metric family's HELP/TYPE lines appear once, before its first sample."""
    seen: set[str] = set()
    out: list[str] = []
    for line in lines:
        if line.startswith("#"):
            if line in seen:
                continue
            seen.add(line)
        out.append(line)
    return out
