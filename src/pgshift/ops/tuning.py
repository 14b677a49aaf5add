"""Post-go-live tuning: pool sizing against observed connections, settings worth changing.

Every finding carries the observation behind it (counts since the statistics were
last reset) so a person can judge it; nothing here changes a setting.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pgshift.ops.server import Finding, ServerInfo, setting_findings

# Below this buffer-cache hit ratio, with real reads behind it, shared_buffers is small.
MIN_HIT_RATIO = 0.99
MIN_BLOCK_READS = 10_000
# A table is "hot" for autovacuum when dead rows pass both bounds.
DEAD_ROWS_MIN = 10_000
DEAD_RATIO = 0.10


def _shown(conn: psycopg.Connection, name: str) -> str:
    """A setting as SHOW prints it (with its unit: '4MB', not pg_settings' '4096')."""
    row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
    return str(row[0]) if row else "?"


def connection_findings(conn: psycopg.Connection, info: ServerInfo,
                        planned: int | None) -> list[Finding]:
    """The app's pools against what the server sees: used, idle, and the headroom left."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state = 'idle'), "
        "count(*) FILTER (WHERE state LIKE 'idle in transaction%') "
        "FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()
    total, idle, idle_tx = (int(x) for x in row) if row else (0, 0, 0)
    usable = info.max_connections - info.reserved_connections
    found = []
    if total > 0.8 * usable:
        found.append(Finding("connections", "max_connections",
                             f"{total} client connections open of {usable} usable",
                             "put PgBouncer in front or shrink the pools before a deploy "
                             "doubles them"))
    if idle > 10 and idle > total / 2:
        found.append(Finding("connections", "pool size",
                             f"{idle} of {total} connections are idle"
                             + (f" (the planned pools total {planned})" if planned else ""),
                             "smaller pools per instance would do; each idle backend holds "
                             "memory"))
    if idle_tx:
        found.append(Finding("connections", "idle in transaction",
                             f"{idle_tx} sessions idle inside a transaction (they hold locks "
                             "and block vacuum)",
                             "check the app for transactions left open; "
                             "idle_in_transaction_session_timeout ends them"))
    return found


def work_mem_findings(conn: psycopg.Connection) -> list[Finding]:
    """Sorts and hashes that spilled to disk: work_mem is too small for them."""
    row = conn.execute("SELECT temp_files, temp_bytes FROM pg_stat_database "
                       "WHERE datname = current_database()").fetchone()
    files, size = (int(row[0]), int(row[1])) if row else (0, 0)
    if not files:
        return []
    current = _shown(conn, "work_mem")
    return [Finding("setting", "work_mem",
                    f"{files:,} temporary files ({size / 1048576:,.1f} MB) written by sorts "
                    f"and hashes that did not fit in work_mem={current}",
                    "raise work_mem for the app role (ALTER ROLE app SET work_mem = '16MB'), "
                    "watching total memory: it applies per sort, per connection")]


def shared_buffers_findings(conn: psycopg.Connection) -> list[Finding]:
    """A buffer cache that misses with real reads behind it."""
    row = conn.execute("SELECT blks_hit, blks_read, pg_database_size(current_database()) "
                       "FROM pg_stat_database WHERE datname = current_database()").fetchone()
    if not row:
        return []
    hit, read, size = (int(x) for x in row)
    if read < MIN_BLOCK_READS or hit / max(hit + read, 1) >= MIN_HIT_RATIO:
        return []
    return [Finding("setting", "shared_buffers",
                    f"buffer cache hit ratio {hit / (hit + read):.3f} ({read:,} blocks read "
                    f"from disk) with shared_buffers={_shown(conn, 'shared_buffers')} and "
                    f"a {size / 1048576:,.0f} MB database",
                    "raise shared_buffers towards 25% of memory (needs a restart)")]


def autovacuum_findings(conn: psycopg.Connection, schema: str) -> list[Finding]:
    """Hot tables whose dead rows outrun the default autovacuum thresholds."""
    rows = conn.execute(
        "SELECT s.relname, s.n_live_tup, s.n_dead_tup, s.n_tup_upd + s.n_tup_del, "
        "s.last_autovacuum, c.reloptions FROM pg_stat_user_tables s "
        "JOIN pg_class c ON c.oid = s.relid WHERE s.schemaname = %s AND s.n_dead_tup >= %s "
        "AND s.n_dead_tup >= %s * greatest(s.n_live_tup, 1) ORDER BY s.n_dead_tup DESC",
        (schema, DEAD_ROWS_MIN, DEAD_RATIO)).fetchall()
    out = []
    for table, live, dead, churn, last, options in rows:
        if options and any(str(o).startswith("autovacuum_vacuum_scale_factor") for o in options):
            continue
        stmt = sql.SQL("ALTER TABLE {} SET (autovacuum_vacuum_scale_factor = 0.02, "
                       "autovacuum_analyze_scale_factor = 0.01)").format(
            sql.Identifier(schema, str(table))).as_string(conn)
        out.append(Finding("autovacuum", f"{schema}.{table}",
                           f"{dead:,} dead rows beside {live:,} live ({churn:,} updates and "
                           f"deletes; last autovacuum {last or 'never'})", stmt))
    return out


def tuning_findings(conn: psycopg.Connection, info: ServerInfo, schema: str,
                    planned: int | None) -> list[Finding]:
    """Everything above, plus the settings every server check warns about."""
    return [*setting_findings(info, planned), *connection_findings(conn, info, planned),
            *work_mem_findings(conn), *shared_buffers_findings(conn),
            *autovacuum_findings(conn, schema)]
