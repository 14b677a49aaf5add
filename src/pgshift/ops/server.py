"""What a PostgreSQL server looks like from a client: version, latency, settings to warn about.

Shared by ``provision`` (the connectivity test as the app user) and ``optimize``
(the post-go-live tuning report), so both judge the same settings the same way.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import psycopg

# PostgreSQL's compiled-in shared_buffers default (128 MB in 8 kB pages): a server still on
# it was never tuned for a production workload.
DEFAULT_SHARED_BUFFERS_PAGES = 16384
# Connections a pool plan must leave free for humans, migrations and pgshift's own sync.
SPARE_CONNECTIONS = 10


@dataclass(frozen=True)
class Finding:
    """One observation worth acting on: ``kind`` ('setting', 'index', ...), what and why."""

    kind: str
    subject: str
    message: str
    suggestion: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ServerInfo:
    """Version and round-trip latency of one connection, and the settings read."""

    version: str
    version_num: int
    latency_ms: float
    max_connections: int
    reserved_connections: int
    shared_buffers_pages: int
    preload: tuple[str, ...] | None  # None: not visible to this role (superuser-only setting)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["preload"] = list(self.preload) if self.preload is not None else None
        return d

    @property
    def shared_buffers_mb(self) -> float:
        return self.shared_buffers_pages * 8 / 1024


def setting(conn: psycopg.Connection, name: str) -> str | None:
    """A setting's value; None when this role may not see it (pg_settings hides the row)."""
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()
    return str(row[0]) if row else None


def round_trip_ms(conn: psycopg.Connection, samples: int = 5) -> float:
    """Median wall time of ``SELECT 1`` on ``conn`` in milliseconds (the network plus parse)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def server_info(conn: psycopg.Connection) -> ServerInfo:
    """Read the version, latency and the settings the checks below judge."""
    reserved = int(setting(conn, "superuser_reserved_connections") or 0)
    # PostgreSQL 16 added reserved_connections (for pg_use_reserved_connections); absent before.
    reserved += int(setting(conn, "reserved_connections") or 0)
    raw = setting(conn, "shared_preload_libraries")
    preload = None if raw is None else tuple(p.strip() for p in raw.split(",") if p.strip())
    return ServerInfo(
        version=setting(conn, "server_version") or "",
        version_num=int(setting(conn, "server_version_num") or 0),
        latency_ms=round_trip_ms(conn),
        max_connections=int(setting(conn, "max_connections") or 0),
        reserved_connections=reserved,
        shared_buffers_pages=int(setting(conn, "shared_buffers") or 0),
        preload=preload,
    )


def setting_findings(info: ServerInfo, planned_connections: int | None = None) -> list[Finding]:
    """The settings worth a warning before (or after) the app's traffic arrives."""
    found: list[Finding] = []
    usable = info.max_connections - info.reserved_connections
    if planned_connections is not None and planned_connections + SPARE_CONNECTIONS > usable:
        found.append(Finding(
            "setting", "max_connections",
            f"the planned pools need {planned_connections} connections but max_connections="
            f"{info.max_connections} leaves {usable} after the reserved ones "
            f"(and {SPARE_CONNECTIONS} should stay free for people and pgshift)",
            "put PgBouncer in front (provision --pgbouncer) or raise max_connections "
            f"to at least {planned_connections + SPARE_CONNECTIONS + info.reserved_connections}",
        ))
    if info.shared_buffers_pages and info.shared_buffers_pages <= DEFAULT_SHARED_BUFFERS_PAGES:
        found.append(Finding(
            "setting", "shared_buffers",
            f"shared_buffers is {info.shared_buffers_mb:.0f} MB, PostgreSQL's untuned default",
            "set shared_buffers to about 25% of the server's memory (needs a restart)",
        ))
    if info.preload is not None and "pg_stat_statements" not in info.preload:
        found.append(Finding(
            "setting", "shared_preload_libraries",
            "pg_stat_statements is not preloaded: pgshift optimize cannot see which queries "
            "are slow",
            "shared_preload_libraries = 'pg_stat_statements' (restart), then "
            "CREATE EXTENSION pg_stat_statements",
        ))
    return found
