"""What every part of sync shares: options, results, constants and sessions.

A leaf of the sync package: the sources, sinks, conflict decisions and the apply
loop import it, and it imports none of them (no import cycle).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.dsn import Dsn, connect
from pgshift.errors import SourceError, TargetError
from pgshift.source.snapshot import check_sqlite_file
from pgshift.sync import pg_capture
from pgshift.sync import settings as cfg
from pgshift.sync import state as st

# Changes per PostgreSQL transaction. 1000 keeps a transaction around 50-100 ms
# on the seeded tables (benchmarks/sync.py) while amortizing the commit.
DEFAULT_BATCH = 1000
POLL_SECONDS = 0.05  # --follow: how often an idle applier looks for new changes
FENCE_OP = "F"  # a change-log row written by `pgshift sync drain`, not by a trigger
MAX_BATCH_GROWTH = 64  # a batch cut inside a SQLite transaction grows up to 64x, then parks
BACKOFF_MAX = 5.0  # seconds between retries when SQLite is locked or PostgreSQL is away
LOST_ORIGIN = "lost"  # a SQLite change the to-sqlite applier recorded as a conflict loser
TO_POSTGRES = st.TO_POSTGRES
TO_SQLITE = "to-sqlite"

DDL_HINT = ("apply the same DDL to PostgreSQL, drain, then reinstall capture: "
            "pgshift sync uninstall SQLITE && pgshift sync install SQLITE "
            "(DDL is refused during the sync window)")


@dataclass
class SyncOptions:
    sqlite_path: Path
    dsn: Dsn
    schema: str = "public"
    from_hwm: int | None = None
    batch_size: int = DEFAULT_BATCH
    follow: bool = False
    poll: float = POLL_SECONDS
    until_seq: int | None = None  # drain: stop once the checkpoint reaches this seq
    # per-table settings (None: those stored in pgshift.sync_tables, else the defaults)
    settings: dict[str, cfg.TableSettings] | None = None
    # the system of record, for sor-wins: None = the direction's usual one (SQLite for
    # to-postgres, PostgreSQL for to-sqlite); dual mode sets it (--sor)
    sor: str | None = None
    only_tables: list[str] | None = None  # to-sqlite: apply only these (dual before the flip)


@dataclass
class SyncResult:
    direction: str
    start_seq: int
    last_seq: int
    applied: int = 0
    parked: int = 0
    batches: int = 0
    seconds: float = 0.0
    pending: int = 0
    conflicts: int = 0
    paused: bool = False
    last_batch_seconds: float = 0.0  # read + apply + commit of the latest batch (metrics)
    trimmed: int = 0  # to-sqlite --trim: change-log rows deleted
    parked_reasons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        d["changes_per_second"] = round(self.applied / self.seconds, 1) if self.seconds else None
        return d


class SchemaChangedError(SourceError):
    """DDL on a captured table since capture was installed."""


def open_sqlite(path: Path, *, readonly: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode with a busy timeout; read-only unless asked."""
    check_sqlite_file(path)
    mode = "?mode=ro" if readonly else ""
    con = sqlite3.connect(f"file:{path.resolve()}{mode}", uri=True, isolation_level=None,
                          check_same_thread=False, timeout=10.0)
    con.execute("pragma busy_timeout = 10000")
    return con


def sqlite_write_hint(exc: sqlite3.Error, path: Path) -> str:
    """What to try when a write of pgshift's own into the app's SQLite file failed:
    the hint follows SQLite's message, since a lock, a read-only file and a full disk
    need different hands."""
    message = str(exc).lower()
    if "locked" in message or "busy" in message:
        return ("retry; a connection of the app held a write transaction for longer "
                "than the 10 s busy timeout")
    if "readonly" in message or "read-only" in message:
        return f"pgshift needs write access to {path} and its directory (the -wal/-shm files)"
    if "disk" in message or "full" in message:
        return f"free space on the filesystem of {path}, then retry"
    return f"check {path} with: sqlite3 {path} 'PRAGMA quick_check'"


def session_sql(schema: str) -> list[str]:
    """Settings of the applier's session: values are read as migrate's sessions read them."""
    return [
        "SET statement_timeout = 0",
        "SET lock_timeout = 0",
        "SET idle_in_transaction_session_timeout = 0",
        "SET client_encoding = 'UTF8'",
        "SET datestyle = 'ISO, YMD'",
        "SET timezone = 'UTC'",
        pgsql.SQL("SET search_path = {}, pg_catalog").format(pgsql.Identifier(schema)).as_string(),
    ]


def pg_session(opts: SyncOptions, direction: str = TO_SQLITE, *, lock: bool = True
               ) -> psycopg.Connection:
    """An applier's PostgreSQL session: settings, state tables, the direction's lock
    (``lock=False``: a session that only looks, e.g. places a fence beside a running
    applier)."""
    pg = connect(opts.dsn, application_name="pgshift-sync")
    try:
        for s in session_sql(opts.schema):
            pg.execute(s)
        pg.commit()
        st.ensure_schema(pg)
        if lock:
            st.acquire_lock(pg, opts.schema, direction)
    except BaseException:
        pg.close()
        raise
    return pg


class PgSession:
    """One lazily (re)opened applier session, shared by a source and a sink of the
    to-sqlite direction (the queue, the slot and the batch records are all in it)."""

    def __init__(self, opts: SyncOptions, direction: str = TO_SQLITE, *,
                 lock: bool = True) -> None:
        self.opts = opts
        self.direction = direction
        self.lock = lock
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = pg_session(self.opts, self.direction, lock=self.lock)
        return self._conn

    def reset(self) -> None:
        """Drop a closed or broken session; the next use opens a new one."""
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def to_sqlite_error(opts: SyncOptions, exc: BaseException) -> SourceError | TargetError:
    """The one-line error for a failure of either to-sqlite applier (trigger queue or
    logical decoding) that a retry may cure."""
    if isinstance(exc, sqlite3.OperationalError):
        return SourceError(f"writing {opts.sqlite_path} failed: {exc}",
                           hint="is blue still writing? to-sqlite runs only while blue is "
                                "quiet")
    return TargetError(f"PostgreSQL failed during to-sqlite: {first_line(exc)}",
                       hint="rerun: applying again is harmless")


def effective_settings(conn: psycopg.Connection, schema: str, tables: list[str],
                       given: dict[str, cfg.TableSettings] | None
                       ) -> dict[str, cfg.TableSettings]:
    """The settings sync runs with, stored in ``pgshift.sync_tables`` (status and plan
    show them): ``given`` (a --tables-config file) replaces the stored ones; without
    it, the stored ones, and the defaults for tables never stored."""
    if given is not None:
        chosen = {t: given.get(t, cfg.DEFAULT) for t in tables}
    else:
        stored = st.stored_settings(conn, schema)
        chosen = {}
        for t in tables:
            row = stored.get(t)
            chosen[t] = cfg.TableSettings.model_validate(
                {k: row[k] for k in ("kind", "writes", "conflict", "green_writes")},
                context={"lenient": True}) if row else cfg.DEFAULT
    st.store_settings(conn, schema, chosen)
    return chosen


def captured_on_postgres(conn: psycopg.Connection, schema: str) -> set[str]:
    """The tables of ``schema`` with PostgreSQL capture (the queue holds their changes)."""
    if not st.scalar(conn, "SELECT to_regclass('pgshift.pg_changes') IS NOT NULL"):
        conn.commit()
        return set()
    names = set(pg_capture.installed(conn, schema))
    conn.commit()
    return names


def to_postgres_checkpoint(pg: psycopg.Connection, schema: str) -> int | None:
    """The to-postgres applier's last seq (None: it never ran). Conflict decisions of
    the to-sqlite direction read blue's changes above it as not carried yet."""
    value = st.scalar(pg, "SELECT last_seq FROM pgshift.sync_state WHERE "
                          "target_schema = %s AND direction = %s AND "
                          "to_regclass('pgshift.sync_state') IS NOT NULL",
                      (schema, TO_POSTGRES))
    pg.commit()
    return None if value is None else int(value)


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("select 1 from sqlite_schema where type = 'table' and name = ?",
                       (name,)).fetchone() is not None


def text(raw: bytes | None) -> str | None:
    """A change-log image or key as text (for records and parked rows)."""
    return raw.decode("utf-8", "backslashreplace") if raw is not None else None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def q(name: str) -> str:
    """A SQLite identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'
