"""Building an index on a live database without blocking its writers.

``CREATE INDEX CONCURRENTLY`` takes only a SHARE UPDATE EXCLUSIVE lock, so inserts,
updates and deletes continue while it runs; ``lock_timeout`` bounds the waits for that
lock so a long transaction makes the build fail fast instead of queueing the app's
statements behind it. A failed concurrent build leaves an INVALID index behind (it
still costs every write); it is dropped, concurrently, before anything else happens,
and an INVALID index of the same name left by an earlier run is dropped before the
build (``IF NOT EXISTS`` would otherwise skip it and leave it invalid).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from pgshift.ops.usage import IndexProposal

PROBE_RUNS = 3


@dataclass(frozen=True)
class Probe:
    """A representative query timed with EXPLAIN ANALYZE: its text, plan node and time."""

    query: str
    plan: str  # the scan nodes of the plan, e.g. "Seq Scan" or "Index Only Scan"
    ms: float  # best of PROBE_RUNS executions

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class BuildOutcome:
    """What happened to one index."""

    name: str
    status: str  # "built", "exists", "failed"
    seconds: float = 0.0
    started_at: float = 0.0  # epoch seconds, for correlating with the app's writes
    finished_at: float = 0.0
    error: str | None = None
    dropped_invalid: bool = False  # an INVALID leftover (ours or an earlier run's) was dropped
    invalid_left: bool = False  # the INVALID index could not be dropped (the next run will)
    before: Probe | None = None
    after: Probe | None = None

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["before"] = self.before.to_dict() if self.before else None
        d["after"] = self.after.to_dict() if self.after else None
        return d


def index_state(conn: psycopg.Connection, schema: str, name: str) -> bool | None:
    """True valid, False INVALID (a failed concurrent build), None absent."""
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name)).fetchone()
    return None if row is None else bool(row[0])


def _drop_invalid(conn: psycopg.Connection, schema: str, name: str) -> str | None:
    """Drop an INVALID index concurrently; the server's error when that fails, else None.

    The drop waits for the same transactions the build waited for, so the blocker that
    made the build time out can make the drop time out too.
    """
    try:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
            sql.Identifier(schema), sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        raise
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {exc.diag.message_primary or exc}"
    return None


def build(conn: psycopg.Connection, proposal: IndexProposal, lock_timeout: str) -> BuildOutcome:
    """Build ``proposal`` concurrently on an autocommit connection, then ANALYZE its table.

    A failed build does not raise: the outcome says ``failed`` with the server's
    message, after the INVALID index it left was dropped (or, when the drop is blocked
    too, ``invalid_left``: the next run drops it before building). A missing privilege
    (``psycopg.errors.InsufficientPrivilege``) does raise.
    """
    outcome = BuildOutcome(proposal.name, "built")
    state = index_state(conn, proposal.schema, proposal.name)
    if state:
        outcome.status = "exists"
        return outcome
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout)))
    try:
        if state is False:
            error = _drop_invalid(conn, proposal.schema, proposal.name)
            if error is not None:
                outcome.status, outcome.invalid_left = "failed", True
                outcome.error = f"the INVALID index an earlier build left could not be " \
                                f"dropped: {error}"
                return outcome
            outcome.dropped_invalid = True
        outcome.started_at = time.time()
        started = time.perf_counter()
        try:
            conn.execute(sql.SQL(proposal.definition()))
        except psycopg.errors.InsufficientPrivilege:
            raise  # not a failed build: nothing was started, and the caller names the privilege
        except psycopg.Error as exc:
            outcome.status = "failed"
            outcome.error = f"{exc.sqlstate}: {exc.diag.message_primary or exc}"
            if index_state(conn, proposal.schema, proposal.name) is False:
                error = _drop_invalid(conn, proposal.schema, proposal.name)
                outcome.dropped_invalid = error is None
                outcome.invalid_left = error is not None
                if error is not None:
                    outcome.error += f"; the INVALID index it left could not be dropped " \
                                     f"({error})"
            return outcome
        finally:
            outcome.finished_at = time.time()
            outcome.seconds = round(time.perf_counter() - started, 3)
        conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(proposal.schema),
                                                     sql.Identifier(proposal.table)))
    finally:
        conn.execute("RESET lock_timeout")
    return outcome


def probe_query(conn: psycopg.Connection, proposal: IndexProposal) -> sql.Composed | None:
    """A query the index is for: its predicate and an equality on its first column.

    The value is the least common of the column's most common values (pg_stats) that
    a row satisfying the predicate holds, so the probe is selective the way the app's
    lookups are; failing that, any such row's value. None when the first key is an
    expression or no row qualifies.
    """
    first = proposal.columns[0].strip('"')
    if not first.replace("_", "").isalnum():
        return None
    table = sql.Identifier(proposal.schema, proposal.table)
    col = sql.Identifier(first)
    where = sql.SQL("({}) AND ").format(sql.SQL(proposal.predicate)) if proposal.predicate \
        else sql.SQL("")
    stats = conn.execute(
        "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats "
        "WHERE schemaname = %s AND tablename = %s AND attname = %s",
        (proposal.schema, proposal.table, first)).fetchone()
    candidates = [v for _, v in sorted(zip(stats[1], stats[0], strict=True))][:5] \
        if stats and stats[0] else []
    for value in candidates:
        probe = sql.SQL("SELECT count(*) FROM {} WHERE {}{} = {}").format(
            table, where, col, sql.Literal(value))
        if conn.execute(sql.SQL("SELECT 1 FROM {} WHERE {}{} = {} LIMIT 1").format(
                table, where, col, sql.Literal(value))).fetchone():
            return probe
    row = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {}{} IS NOT NULL LIMIT 1").format(
        col, table, where, col)).fetchone()
    if row is None:
        return None
    return sql.SQL("SELECT count(*) FROM {} WHERE {}{} = {}").format(
        table, where, col, sql.Literal(row[0]))


def run_probe(conn: psycopg.Connection, query: sql.Composed) -> Probe:
    """EXPLAIN ANALYZE ``query`` PROBE_RUNS times; the best time and the plan's scan nodes."""
    best, nodes = float("inf"), ""
    for _ in range(PROBE_RUNS):
        row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query).fetchone()
        assert row is not None
        doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
        best = min(best, float(doc[0]["Execution Time"]))
        nodes = ", ".join(sorted(set(_scan_nodes(doc[0]["Plan"]))))
    return Probe(query.as_string(conn), nodes, round(best, 3))


def _scan_nodes(plan: dict[str, object]) -> list[str]:
    found = [str(plan["Node Type"])] if "Scan" in str(plan.get("Node Type", "")) else []
    for child in plan.get("Plans", []) or []:  # type: ignore[attr-defined]
        found += _scan_nodes(child)
    return found
