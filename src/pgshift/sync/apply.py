"""``pgshift sync run``: apply SQLite's change log to PostgreSQL (``to-postgres``).

The loop reads ``_pgshift_changes`` rows with ``seq`` above the checkpoint in
short read transactions (one SELECT each: no long reader holding back WAL
checkpoints; the applier never writes SQLite), and applies each batch in one
PostgreSQL transaction together with the new checkpoint in
``pgshift.sync_state``: exactly once across ``kill -9``.

Order: changes are applied one by one in ``seq`` order, which is SQLite's
commit order (one writer) and, inside a transaction, its row order; foreign
keys are ``SET CONSTRAINTS ALL DEFERRED`` (migrate makes them DEFERRABLE), so
a parent and its child in one batch never fail on ordering.

A batch PostgreSQL refuses is redone change by change, each in a savepoint
with its deferred constraints checked at once; a change still refused is
parked in ``pgshift.sync_parked`` with the reason, in the same transaction,
and the loop goes on. A value that cannot be converted is parked the same way.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.dsn import Dsn, connect
from pgshift.errors import SourceError, TargetError, UsageError
from pgshift.schema.plan import build_plan
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.source.snapshot import CHANGELOG_TABLE, check_sqlite_file
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.image import ImageError
from pgshift.sync.tables import Change, TableApplier

# Changes per PostgreSQL transaction. 1000 keeps a transaction around 50-100 ms
# on the seeded tables (benchmarks/sync.py) while amortizing the commit.
DEFAULT_BATCH = 1000
POLL_SECONDS = 0.05  # --follow: how often an idle applier looks for new changes
FENCE_OP = "F"  # a change-log row written by `pgshift sync drain`, not by a trigger
MAX_BATCH_GROWTH = 64  # a batch cut inside a SQLite transaction grows up to 64x, then parks
BACKOFF_MAX = 5.0  # seconds between retries when SQLite is locked or PostgreSQL is away


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
    parked_reasons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        d["changes_per_second"] = round(self.applied / self.seconds, 1) if self.seconds else None
        return d


class SchemaChangedError(SourceError):
    """DDL on a captured table since capture was installed."""


class NeedMore(Exception):
    """A batch failed on a foreign key and more changes follow it: read a longer one."""


def open_sqlite(path: Path, *, readonly: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode with a busy timeout; read-only unless asked."""
    check_sqlite_file(path)
    mode = "?mode=ro" if readonly else ""
    con = sqlite3.connect(f"file:{path.resolve()}{mode}", uri=True, isolation_level=None,
                          check_same_thread=False, timeout=10.0)
    con.execute("pragma busy_timeout = 10000")
    return con


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


class Applier:
    """The to-postgres apply loop over one SQLite file and one target schema."""

    def __init__(self, opts: SyncOptions) -> None:
        self.opts = opts
        self.src = open_sqlite(opts.sqlite_path)
        self.pg: psycopg.Connection | None = None
        self.tables: dict[str, TableApplier] = {}
        self.state: st.SyncState | None = None
        self._schema_version: int | None = None
        self.replica = False

    def close(self) -> None:
        self.src.close()
        if self.pg is not None:
            self.pg.close()

    # ------------------------------------------------------------ setup

    def connect(self) -> None:
        opts = self.opts
        if not _has_table(self.src, CHANGELOG_TABLE):
            raise UsageError(f"capture is not installed in {opts.sqlite_path}",
                             hint=f"pgshift sync install {opts.sqlite_path} (before migrate's "
                                  "snapshot)")
        self.pg = connect(opts.dsn, application_name="pgshift-sync")
        for s in session_sql(opts.schema):
            self.pg.execute(s)
        self.pg.commit()
        self.replica = _replica_role(self.pg)
        st.ensure_schema(self.pg)
        st.acquire_lock(self.pg, opts.schema, st.TO_POSTGRES)
        self.state = self._start_state()
        self._load_tables()

    def _start_state(self) -> st.SyncState:
        assert self.pg is not None
        opts = self.opts
        existing = st.load(self.pg, opts.schema, st.TO_POSTGRES)
        self.pg.commit()
        log_id = capture.install_id(self.src)
        if existing is not None:
            if existing.install_id is not None and existing.install_id != log_id:
                raise UsageError(
                    f"the change log in {opts.sqlite_path} is not the one sync into schema "
                    f"{opts.schema!r} was following (capture was reinstalled, or another "
                    "file): its checkpoint would skip changes",
                    hint=f"start over: pgshift sync uninstall {opts.sqlite_path} PG, then "
                         "sync install, migrate --drop and sync run")
            if opts.from_hwm is not None and opts.from_hwm != existing.start_seq:
                raise UsageError(
                    f"sync into schema {opts.schema!r} started at seq {existing.start_seq}, "
                    f"not {opts.from_hwm}; it resumes from seq {existing.last_seq}",
                    hint="drop --from-hwm to resume, or start over: pgshift sync uninstall "
                         "SQLITE PG, then install, migrate and sync again")
            return existing
        start = opts.from_hwm
        if start is None:
            migrated, hwm = st.migrate_hwm(self.pg, opts.schema)
            if not migrated:
                raise UsageError(
                    f"no finished pgshift migrate into schema {opts.schema!r}: sync does not "
                    "know where to start",
                    hint=f"pgshift migrate {opts.sqlite_path} PG, or give --from-hwm N")
            if hwm is None:
                raise UsageError(
                    "migrate's snapshot was taken before capture was installed: changes "
                    "between the snapshot and the install are lost to sync",
                    hint=f"pgshift sync install {opts.sqlite_path}, then migrate again "
                         "(--drop)")
            start = hwm
        new = st.SyncState(opts.schema, st.TO_POSTGRES, str(opts.sqlite_path.resolve()),
                           start, start, 0, 0, None, log_id)
        st.create(self.pg, new)
        loaded = st.load(self.pg, opts.schema, st.TO_POSTGRES)
        self.pg.commit()
        assert loaded is not None
        return loaded

    def _load_tables(self) -> None:
        assert self.pg is not None
        names = capture.installed(self.src)
        shapes = {n: capture.describe(self.src, n) for n in names}
        catalog = read_catalog(self.src)
        chosen = [t for t in catalog.tables if t.name in shapes]
        stored = load_profile(self.pg, self.opts.schema)
        self.pg.commit()
        profiles = profiles_from_json(stored) if stored else {}
        for t in chosen:
            if t.name not in profiles:
                profiles[t.name] = profile_table(self.src, t)
        plan = build_plan(catalog, profiles, schema=self.opts.schema, tables=chosen)
        missing = [t.name for t in plan.tables if st.scalar(
            self.pg, "SELECT to_regclass(%s) IS NULL",
            (pgsql.Identifier(self.opts.schema, t.name).as_string(),))]
        self.pg.commit()
        if missing:
            raise UsageError(f"captured tables missing in PostgreSQL schema "
                             f"{self.opts.schema!r}: {', '.join(missing)}",
                             hint=f"pgshift migrate {self.opts.sqlite_path} PG")
        self.tables = {t.name: TableApplier(self.opts.schema, t, shapes[t.name])
                       for t in plan.tables}
        self._schema_version = self._sqlite_schema_version()

    def _sqlite_schema_version(self) -> int:
        return int(self.src.execute("pragma schema_version").fetchone()[0])

    # ------------------------------------------------------------ loop

    def read_batch(self, limit: int | None = None) -> list[Change]:
        assert self.state is not None
        if self._sqlite_schema_version() != self._schema_version:
            self._check_shapes()
        rows = self.src.execute(
            f'SELECT seq, tbl, op, CAST(key_old AS BLOB), CAST(key_new AS BLOB), '
            f'CAST(row AS BLOB), schema_version, ts, CAST(before AS BLOB) FROM '
            f'"{CHANGELOG_TABLE}" WHERE seq > ? ORDER BY seq LIMIT ?',
            (self.state.last_seq, limit or self.opts.batch_size)).fetchall()
        return [Change(*r) for r in rows]

    def _check_shapes(self) -> None:
        for name, ta in self.tables.items():
            try:
                live = capture.describe(self.src, name)
            except UsageError as exc:
                raise SchemaChangedError(f"captured table {name} changed: {exc.message}",
                                         hint=_DDL_HINT, table=name) from exc
            if live.fingerprint != ta.shape.fingerprint:
                raise SchemaChangedError(
                    f"the columns of captured table {name} changed since capture was "
                    "installed (DDL during the sync window)", hint=_DDL_HINT, table=name)
        self._schema_version = self._sqlite_schema_version()

    def apply(self, batch: list[Change], *, final: bool = True) -> tuple[int, int]:
        """Apply one batch and move the checkpoint in the same transaction: (applied, parked).

        Refused batches are redone change by change in savepoints: first with foreign
        keys still deferred to the end of the batch, then, if the batch still fails at
        commit, with every change's deferred constraints checked at once (the change
        that breaks one is parked). ``final=False`` (more changes follow) turns a
        foreign-key failure into NeedMore: the caller retries with a longer batch.
        """
        assert self.pg is not None and self.state is not None
        planned: list[tuple[Change, list[tuple[str, list[str | None]]] | str]] = []
        for ch in batch:
            if ch.op == FENCE_OP:
                planned.append((ch, []))  # a fence marker: nothing to apply, only to pass
                continue
            ta = self.tables.get(ch.table)
            if ta is None:
                raise SchemaChangedError(
                    f"change {ch.seq} is for table {ch.table}, which is not captured now",
                    hint=_DDL_HINT, table=ch.table)
            if ch.schema_version != ta.shape.fingerprint:
                raise SchemaChangedError(
                    f"change {ch.seq} on {ch.table} was captured with another column layout "
                    f"(schema version {ch.schema_version}, now {ta.shape.fingerprint})",
                    hint=_DDL_HINT, table=ch.table)
            try:
                planned.append((ch, ta.statements(ch)))
            except Reject as exc:
                planned.append((ch, str(exc)))
            except ImageError as exc:
                planned.append((ch, f"unreadable change-log image: {exc}"))
        try:
            return self._apply_fast(planned)
        except psycopg.errors.ForeignKeyViolation as exc:
            if not final:
                # SQLite logs an ON UPDATE/DELETE CASCADE child before its parent, and a
                # batch may end inside a SQLite transaction: read on to its end.
                raise NeedMore from exc
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            pass
        try:
            return self._apply_slow(planned, immediate=False)
        except psycopg.errors.IntegrityError:
            return self._apply_slow(planned, immediate=True)

    def _apply_fast(self, planned: list[tuple[Change, Any]]) -> tuple[int, int]:
        assert self.pg is not None
        parked = 0
        with self.pg.transaction():
            self.pg.execute(_TXN_SETTINGS)
            with self.pg.pipeline(), self.pg.cursor() as cur:
                for ch, work in planned:
                    if isinstance(work, str):
                        self._park(cur, ch, work)
                        parked += 1
                        continue
                    for sql, params in work:
                        cur.execute(sql, params)
                self._checkpoint(cur, planned[-1][0], len(planned) - parked, parked)
        return len(planned) - parked, parked

    def _apply_slow(self, planned: list[tuple[Change, Any]], *,
                    immediate: bool) -> tuple[int, int]:
        assert self.pg is not None
        parked = 0
        with self.pg.transaction(), self.pg.cursor() as cur:
            cur.execute(_TXN_SETTINGS)
            for ch, work in planned:
                reason = work if isinstance(work, str) else None
                if reason is None:
                    try:
                        with self.pg.transaction():
                            for sql, params in work:
                                cur.execute(sql, params)
                            if immediate:
                                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                    except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                        reason = f"PostgreSQL: {_first_line(exc)}"
                    if immediate:
                        cur.execute("SET CONSTRAINTS ALL DEFERRED")
                if reason is not None:
                    self._park(cur, ch, reason)
                    parked += 1
            self._checkpoint(cur, planned[-1][0], len(planned) - parked, parked)
        return len(planned) - parked, parked

    def _park(self, cur: psycopg.Cursor, ch: Change, reason: str) -> None:
        cur.execute(
            "INSERT INTO pgshift.sync_parked (target_schema, direction, seq, table_name, op, "
            "key_old, key_new, row_image, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.opts.schema, st.TO_POSTGRES, ch.seq, ch.table, ch.op, _text(ch.key_old),
             _text(ch.key_new), _text(ch.row), reason))

    def _checkpoint(self, cur: psycopg.Cursor, last: Change, applied: int, parked: int) -> None:
        cur.execute(
            "UPDATE pgshift.sync_state SET last_seq = %s, last_ts = %s, applied = applied + %s, "
            "parked = parked + %s, updated_at = now() WHERE target_schema = %s AND "
            "direction = %s", (last.seq, last.ts, applied, parked, self.opts.schema,
                               st.TO_POSTGRES))

    def conflicts(self, after: int, upto: int) -> int:
        """Conflicts this run recorded (seq in (after, upto])."""
        assert self.pg is not None
        n = self.pg.execute(
            "SELECT count(*) FROM pgshift.sync_conflicts WHERE target_schema = %s AND "
            "direction = %s AND seq > %s AND seq <= %s",
            (self.opts.schema, st.TO_POSTGRES, after, upto)).fetchone()
        self.pg.commit()
        return int(n[0]) if n else 0

    def pending(self) -> int:
        assert self.state is not None
        return int(self.src.execute(f'SELECT count(*) FROM "{CHANGELOG_TABLE}" WHERE seq > ?',
                                    (self.state.last_seq,)).fetchone()[0])


# Deferred foreign keys for the whole batch; pgshift.applying marks the transaction as
# the applier's own, so PostgreSQL-side capture (planned) does not log it back.
_TXN_SETTINGS = "SET CONSTRAINTS ALL DEFERRED; SET LOCAL pgshift.applying = 'on'"

_DDL_HINT = ("apply the same DDL to PostgreSQL, drain, then reinstall capture: "
             "pgshift sync uninstall SQLITE && pgshift sync install SQLITE "
             "(DDL is refused during the sync window)")


def run(opts: SyncOptions, *, stop: threading.Event | None = None,
        on_batch: Callable[[SyncResult, list[Change]], None] | None = None) -> SyncResult:
    """Apply pending changes once (``follow=False``) or until ``stop`` is set.

    ``on_batch(result, batch)`` is called after each committed batch (metrics, lag).

    In follow mode a locked SQLite file or a lost PostgreSQL connection is
    retried with backoff (the checkpoint makes a retried batch harmless).
    """
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {opts.batch_size}")
    stop = stop or threading.Event()
    started = time.perf_counter()
    applier = Applier(opts)
    try:
        applier.connect()
        assert applier.state is not None
        result = SyncResult(st.TO_POSTGRES, applier.state.start_seq, applier.state.last_seq)
        first_seq = applier.state.last_seq
        backoff = opts.poll
        while not stop.is_set():
            if opts.until_seq is not None and applier.state.last_seq >= opts.until_seq:
                break
            if applier.pg is None:
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                _reconnect(applier)
                continue
            try:
                limit = opts.batch_size
                while True:
                    batch = applier.read_batch(limit)
                    final = len(batch) < limit or limit >= MAX_BATCH_GROWTH * opts.batch_size
                    try:
                        applied, parked = (applier.apply(batch, final=final) if batch
                                           else (0, 0))
                        break
                    except NeedMore:
                        limit *= 2
                if not batch:
                    if not opts.follow and opts.until_seq is None:
                        break
                    stop.wait(opts.poll)
                    continue
            except sqlite3.OperationalError as exc:
                if not opts.follow:
                    raise SourceError(f"reading the change log failed: {exc}",
                                      hint="retry; is the file locked by a long write?") \
                        from exc
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except psycopg.OperationalError as exc:
                if not opts.follow:
                    raise TargetError(f"PostgreSQL failed while applying: {exc}",
                                      hint="rerun: the checkpoint makes it safe") from exc
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                _reconnect(applier)
                continue
            except psycopg.Error as exc:
                raise TargetError(f"PostgreSQL refused the apply statements: "
                                  f"{_first_line(exc)}",
                                  hint="check that the PostgreSQL tables still match migrate's "
                                       "plan: pgshift verify SQLITE PG") from exc
            backoff = opts.poll
            applier.state.last_seq = batch[-1].seq
            result.last_seq = batch[-1].seq
            result.applied += applied
            result.parked += parked
            result.batches += 1
            if on_batch is not None:
                on_batch(result, batch)
        result.pending = applier.pending()
        if applier.pg is not None and result.last_seq > result.start_seq:
            result.conflicts = applier.conflicts(first_seq, result.last_seq)
        result.seconds = time.perf_counter() - started
        if result.parked and applier.pg is not None:
            result.parked_reasons = st.parked_rows(applier.pg, opts.schema, limit=20)
            applier.pg.commit()
        return result
    finally:
        applier.close()


def _reconnect(applier: Applier) -> None:
    if applier.pg is not None:
        applier.pg.close()
        applier.pg = None
    try:
        applier.connect()
    except (psycopg.OperationalError, UsageError):
        if applier.pg is not None:
            applier.pg.close()
        applier.pg = None


def _replica_role(conn: psycopg.Connection) -> bool:
    """``session_replication_role = replica`` when allowed (superuser, rds_superuser, or
    SET privilege): foreign-key actions and user triggers do not fire for the applier's
    writes. The change log already holds every row SQLite's own cascades and triggers
    changed, so replaying them once more would be wrong: e.g. deleting the row a key
    update evicts must not cascade onto children SQLite had already moved to that key.
    Without the privilege, foreign keys are deferred to each batch's end instead."""
    try:
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        return True
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        return False


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("select 1 from sqlite_schema where type = 'table' and name = ?",
                       (name,)).fetchone() is not None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "backslashreplace") if raw is not None else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
