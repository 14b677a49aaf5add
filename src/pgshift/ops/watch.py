"""``pgshift optimize --watch``: the health figures the runbook's monitoring needs, on a loop.

Each sample reads connection use, the oldest open transaction, replication and WAL
archiving freshness, and the statements whose mean time in the last interval passed
a threshold (pg_stat_statements deltas between two samples, so a query that was slow
yesterday does not stay "slow" forever).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psycopg

from pgshift.dsn import Dsn, connect
from pgshift.ops.usage import has_pg_stat_statements


@dataclass(frozen=True)
class SlowQuery:
    query: str
    calls: int  # in the interval
    mean_ms: float  # in the interval

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class HealthSample:
    """One look at the server."""

    ts: str
    connections: int
    max_connections: int
    active: int
    idle_in_transaction: int
    oldest_transaction_s: float | None
    replicas: int
    replay_lag_s: float | None
    archived_age_s: float | None  # since the last WAL segment was archived; None: no archiving
    archive_failures: int
    slow_queries: list[SlowQuery] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["slow_queries"] = [q.to_dict() for q in self.slow_queries]
        return d


_Counters = dict[int, tuple[str, int, float]]


def _statement_counters(conn: psycopg.Connection) -> _Counters:
    rows = conn.execute(
        "SELECT queryid, query, calls, total_exec_time FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND queryid IS NOT NULL").fetchall()
    return {int(r[0]): (str(r[1]), int(r[2]), float(r[3])) for r in rows}


def _slow(before: _Counters, after: _Counters, threshold_ms: float) -> list[SlowQuery]:
    out = []
    for qid, (query, calls, total) in after.items():
        prev_calls, prev_total = before.get(qid, (query, 0, 0.0))[1:]
        n = calls - prev_calls
        if n > 0 and (total - prev_total) / n >= threshold_ms:
            out.append(SlowQuery(query, n, round((total - prev_total) / n, 3)))
    return sorted(out, key=lambda q: -q.mean_ms * q.calls)[:10]


def sample(conn: psycopg.Connection, before: _Counters | None, threshold_ms: float,
           statements: bool) -> tuple[HealthSample, _Counters]:
    """Read one HealthSample; ``before`` is the previous sample's statement counters."""
    act = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state = 'active'), "
        "count(*) FILTER (WHERE state LIKE 'idle in transaction%'), "
        "extract(epoch FROM max(now() - xact_start)) "
        "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchone()
    assert act is not None
    max_conn = conn.execute("SELECT current_setting('max_connections')::int").fetchone()
    rep = conn.execute("SELECT count(*), extract(epoch FROM max(replay_lag)) "
                       "FROM pg_stat_replication").fetchone()
    arc = conn.execute("SELECT extract(epoch FROM now() - last_archived_time), failed_count "
                       "FROM pg_stat_archiver").fetchone()
    counters = _statement_counters(conn) if statements else {}
    slow = _slow(before, counters, threshold_ms) if before is not None else []
    s = HealthSample(
        ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        connections=int(act[0]), max_connections=int(max_conn[0]) if max_conn else 0,
        active=int(act[1]), idle_in_transaction=int(act[2]),
        oldest_transaction_s=round(float(act[3]), 1) if act[3] is not None else None,
        replicas=int(rep[0]) if rep else 0,
        replay_lag_s=round(float(rep[1]), 3) if rep and rep[1] is not None else None,
        archived_age_s=round(float(arc[0]), 1) if arc and arc[0] is not None else None,
        archive_failures=int(arc[1]) if arc else 0, slow_queries=slow)
    return s, counters


def watch(dsn: Dsn, on_sample: Callable[[HealthSample], None], *, interval: float = 60.0,
          count: int | None = None, slow_ms: float = 100.0) -> int:
    """Call ``on_sample`` every ``interval`` seconds (``count`` times, or until Ctrl-C).

    The first sample sets the baseline for slow statements. Returns the samples taken.
    """
    taken = 0
    with connect(dsn, autocommit=True, application_name="pgshift-watch") as conn:
        statements = has_pg_stat_statements(conn)
        counters: _Counters | None = None
        while count is None or taken < count:
            if taken:
                time.sleep(interval)
            s, counters = sample(conn, counters, slow_ms, statements)
            on_sample(s)
            taken += 1
    return taken
