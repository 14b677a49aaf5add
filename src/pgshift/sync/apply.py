"""``pgshift sync run``: apply SQLite's change log to PostgreSQL (``to-postgres``).

The source is :class:`~pgshift.sync.sqlite_log.SqliteLogSource`, the sink
:class:`PostgresSink`, driven by the one apply loop (:mod:`pgshift.sync.loop`).
Each batch is applied in one PostgreSQL transaction together with the new
checkpoint in ``pgshift.sync_state``: exactly once across ``kill -9``.

Order: changes are applied one by one in ``seq`` order; foreign keys are ``SET
CONSTRAINTS ALL DEFERRED`` (migrate makes them DEFERRABLE), so a parent and its
child in one batch never fail on ordering.

A batch PostgreSQL refuses is redone change by change, each in a savepoint
with its deferred constraints checked at once; a change still refused is
parked in ``pgshift.sync_parked`` with the reason, in the same transaction,
and the loop goes on. A value that cannot be converted is parked the same way.

Conflicts are decided per table policy (:mod:`pgshift.sync.conflicts`) inside the
batch's transaction. A paused sync (``pgshift sync pause``) applies nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.dsn import connect
from pgshift.errors import PgshiftError, SourceError, TargetError, UsageError
from pgshift.existing.verify_plan import PROFILE_MARK, is_into_existing
from pgshift.schema.names import refuse_shortened
from pgshift.schema.plan import build_plan
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import mapped
from pgshift.sync import settings as cfg
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.common import (  # re-exported: their home before the seam
    BACKOFF_MAX,
    DDL_HINT,
    DEFAULT_BATCH,
    FENCE_OP,
    LOST_ORIGIN,
    MAX_BATCH_GROWTH,
    POLL_SECONDS,
    SchemaChangedError,
    SyncOptions,
    SyncResult,
    captured_on_postgres,
    effective_settings,
    first_line,
    has_table,
    open_sqlite,
    session_sql,
    text,
)
from pgshift.sync.conflicts import MAX_RECHECKS, Decision, Redo, ToPostgresConflicts
from pgshift.sync.image import ImageError
from pgshift.sync.loop import run_loop
from pgshift.sync.source import NeedMore, Outcome
from pgshift.sync.sqlite_log import SqliteLogSource
from pgshift.sync.tables import CANDIDATES_SQL, Change, TableApplier

__all__ = [
    "BACKOFF_MAX", "DEFAULT_BATCH", "FENCE_OP", "LOST_ORIGIN", "MAX_BATCH_GROWTH",
    "MAX_RECHECKS", "POLL_SECONDS", "Decision", "NeedMore", "PostgresSink",
    "Redo", "SchemaChangedError", "SyncOptions", "SyncResult", "captured_on_postgres",
    "effective_settings", "open_sqlite", "run", "session_sql",
]


class PostgresSink:
    """SQLite's changes into one PostgreSQL schema (plain or mapped tables): a
    :class:`~pgshift.sync.source.ChangeSink` that commits the checkpoint with the data."""

    def __init__(self, opts: SyncOptions, log: SqliteLogSource) -> None:
        self.opts = opts
        self.log = log  # the source: its shapes are checked, its history read by conflicts
        self.src = log.con
        self.pg: psycopg.Connection | None = None
        self.tables: dict[str, TableApplier] = {}
        self.state: st.SyncState | None = None
        self.replica = False
        self.settings: dict[str, cfg.TableSettings] = {}
        self.pg_captured: set[str] = set()
        self.policy = ToPostgresConflicts(opts.schema, opts.sor, self.src, {}, {}, set())
        self.first_seq: int | None = None  # the checkpoint this run started from

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()

    # ------------------------------------------------------------ setup

    def connect(self) -> None:
        opts = self.opts
        if not has_table(self.src, CHANGELOG_TABLE):
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
        self.pg.execute(CANDIDATES_SQL)
        self.pg.commit()
        self.state = self._start_state()
        if self.first_seq is None:  # (not again after a reconnect)
            self.first_seq = self.state.last_seq
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
            migrated, hwm, snap_log = st.migrate_hwm(self.pg, opts.schema)
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
            if snap_log is not None and snap_log != log_id:
                # seq restarted at 1 in the new log: starting after migrate's hwm would
                # skip (or misread) every change written since the reinstall
                raise UsageError(
                    f"capture in {opts.sqlite_path} was reinstalled after migrate's snapshot "
                    "(its change log is not the one the snapshot's high-water mark counts)",
                    hint="migrate again (--drop or --restart), then sync run")
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
        if is_into_existing(stored):
            # loaded --into-existing: the stored feeds map each source table onto its
            # target table (pgshift.sync.mapped); keyed by the source table still
            assert stored is not None
            self.tables = dict(mapped.forward_appliers(
                self.pg, self.opts.schema, list(stored[PROFILE_MARK]["tables"]),
                {t.name: shapes[t.name] for t in chosen}))
        else:
            profiles = profiles_from_json(stored) if stored else {}
            for t in chosen:
                if t.name not in profiles:
                    profiles[t.name] = profile_table(self.src, t)
            plan = build_plan(catalog, profiles, schema=self.opts.schema, tables=chosen)
            refuse_shortened(plan.tables, "sync")
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
        self.settings = effective_settings(self.pg, self.opts.schema, list(self.tables),
                                           self.opts.settings)
        self.pg_captured = captured_on_postgres(self.pg, self.opts.schema)
        for ta in self.tables.values():
            # Every table with PostgreSQL capture (ta.name: the PostgreSQL table, the
            # mapped target of a source table): a key with green changes this applier has
            # not seen is a conflict even when the row equals SQLite's before-image, and a
            # green write that commits between a change's check and its write is caught
            # by the recheck after the batch. Dual-writer tables and every table after
            # the flip need it for convergence (the to-sqlite applier would carry the
            # queued change over a newer write); single-writer tables before the flip,
            # so that no overwritten green write goes unrecorded.
            if ta.name in self.pg_captured:
                ta.check_pending()
        self.policy = ToPostgresConflicts(self.opts.schema, self.opts.sor, self.src,
                                          self.tables, self.settings, self.pg_captured)
        self.log.expect({name: ta.shape for name, ta in self.tables.items()})

    # ------------------------------------------------------------ loop

    def apply(self, batch: Sequence[Change], *, final: bool = True) -> Outcome:
        """Apply one batch and move the checkpoint in the same transaction.

        Refused batches are redone change by change in savepoints: first with foreign
        keys still deferred to the end of the batch, then, if the batch still fails at
        commit, with every change's deferred constraints checked at once (the change
        that breaks one is parked). ``final=False`` (more changes follow) turns a
        foreign-key failure into NeedMore: the caller retries with a longer batch.
        """
        assert self.pg is not None and self.state is not None
        lose: dict[int, Decision] = {}
        self.policy.rechecks = 0
        while True:
            try:
                applied, parked = self._apply_planned(self._plan(batch, lose), lose,
                                                      final=final)
                self.state.last_seq = batch[-1].seq
                return Outcome(batch[-1].seq, applied, parked)
            except Redo as redo:
                # the policy gave these keys to PostgreSQL (or a green write committed
                # while the batch ran): redo the batch, the transaction was rolled back
                lose.update(redo.losers)
                self.policy.rechecks += not redo.losers

    def _plan(self, batch: Sequence[Change], lose: dict[int, Decision]
              ) -> list[tuple[Change, list[tuple[str, list[str | None]]] | str]]:
        planned: list[tuple[Change, list[tuple[str, list[str | None]]] | str]] = []
        for ch in batch:
            if ch.op == FENCE_OP or ch.origin == LOST_ORIGIN:
                # a fence marker, or a change already recorded as a conflict loser by the
                # to-sqlite applier: nothing to apply, only to pass
                planned.append((ch, []))
                continue
            ta = self.tables.get(ch.table)
            if ta is None:
                raise SchemaChangedError(
                    f"change {ch.seq} is for table {ch.table}, which is not captured now",
                    hint=DDL_HINT, table=ch.table)
            if ch.schema_version != ta.shape.fingerprint:
                raise SchemaChangedError(
                    f"change {ch.seq} on {ch.table} was captured with another column layout "
                    f"(schema version {ch.schema_version}, now {ta.shape.fingerprint})",
                    hint=DDL_HINT, table=ch.table)
            ts = self.settings.get(ch.table, cfg.DEFAULT)
            try:
                planned.append((ch, ta.statements(
                    ch, lost=ch.seq in lose, check_inserts=ts.green_writes == "allow")))
            except Reject as exc:
                planned.append((ch, str(exc)))
            except ImageError as exc:
                planned.append((ch, f"unreadable change-log image: {exc}"))
        return planned

    def _apply_planned(self, planned: list[tuple[Change, Any]], lose: dict[int, Decision],
                       *, final: bool) -> tuple[int, int]:
        try:
            return self._apply_fast(planned, lose)
        except psycopg.errors.ForeignKeyViolation as exc:
            if not final:
                # SQLite logs an ON UPDATE/DELETE CASCADE child before its parent, and a
                # batch may end inside a SQLite transaction: read on to its end.
                raise NeedMore from exc
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            pass
        try:
            return self._apply_slow(planned, lose, immediate=False)
        except psycopg.errors.IntegrityError:
            return self._apply_slow(planned, lose, immediate=True)

    def _apply_fast(self, planned: list[tuple[Change, Any]],
                    lose: dict[int, Decision]) -> tuple[int, int]:
        assert self.pg is not None
        parked: set[int] = set()
        with self.pg.transaction():
            self.pg.execute(_TXN_SETTINGS)
            with self.pg.pipeline(), self.pg.cursor() as cur:
                for ch, work in planned:
                    if isinstance(work, str):
                        self._park(cur, ch, work)
                        parked.add(ch.seq)
                        continue
                    for sql, params in work:
                        cur.execute(sql, params)
            with self.pg.cursor() as cur:
                self.policy.resolve(cur, planned, lose)
                self._checkpoint(cur, planned, parked, lose)
        return len(planned) - len(parked), len(parked)

    def _apply_slow(self, planned: list[tuple[Change, Any]], lose: dict[int, Decision], *,
                    immediate: bool) -> tuple[int, int]:
        assert self.pg is not None
        parked: set[int] = set()
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
                        reason = f"PostgreSQL: {first_line(exc)}"
                    if immediate:
                        cur.execute("SET CONSTRAINTS ALL DEFERRED")
                if reason is not None:
                    self._park(cur, ch, reason)
                    parked.add(ch.seq)
            self.policy.resolve(cur, planned, lose)
            self._checkpoint(cur, planned, parked, lose)
        return len(planned) - len(parked), len(parked)

    def _park(self, cur: psycopg.Cursor, ch: Change, reason: str) -> None:
        cur.execute(
            "INSERT INTO pgshift.sync_parked (target_schema, direction, seq, table_name, op, "
            "key_old, key_new, row_image, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.opts.schema, st.TO_POSTGRES, ch.seq, ch.table, ch.op, text(ch.key_old),
             text(ch.key_new), text(ch.row), reason))

    def _checkpoint(self, cur: psycopg.Cursor, planned: list[tuple[Change, Any]],
                    parked: set[int], lose: dict[int, Decision]) -> None:
        last = planned[-1][0]
        cur.execute(
            "UPDATE pgshift.sync_state SET last_seq = %s, last_ts = %s, applied = applied + %s, "
            "parked = parked + %s, updated_at = now() WHERE target_schema = %s AND "
            "direction = %s", (last.seq, last.ts, len(planned) - len(parked), len(parked),
                               self.opts.schema, st.TO_POSTGRES))
        # per-table counters: changes that changed PostgreSQL (not parked, not lost)
        per_table: dict[str, int] = {}
        for ch, _ in planned:
            if ch.op != FENCE_OP and ch.origin != LOST_ORIGIN and ch.seq not in parked \
                    and ch.seq not in lose:
                per_table[ch.table] = per_table.get(ch.table, 0) + 1
        for table, n in sorted(per_table.items()):  # sorted: no lock-order deadlock
            cur.execute("UPDATE pgshift.sync_tables SET applied_to_postgres = "
                        "applied_to_postgres + %s WHERE target_schema = %s AND table_name = %s",
                        (n, self.opts.schema, table))

    # ------------------------------------------------------------ the sink protocol

    def ensure(self) -> None:
        if self.pg is None:
            try:
                self.connect()
            except BaseException:
                if self.pg is not None:
                    self.pg.close()
                self.pg = None
                raise

    def position(self) -> int | None:
        return self.state.last_seq if self.state is not None else None

    def paused(self) -> bool:
        assert self.pg is not None
        return st.is_paused(self.pg, self.opts.schema)

    def last_record(self) -> dict[str, Any] | None:
        return None  # the checkpoint commits with the data: nothing to recover

    def reset(self, exc: BaseException) -> None:
        # a lost PostgreSQL session is opened again (tables, settings, lock and all)
        if isinstance(exc, psycopg.OperationalError) and self.pg is not None:
            self.pg.close()
            self.pg = None

    def failed(self, exc: BaseException) -> PgshiftError:
        if isinstance(exc, sqlite3.OperationalError):
            return SourceError(f"reading the change log failed: {exc}",
                               hint="retry; is the file locked by a long write?")
        if isinstance(exc, psycopg.OperationalError):
            return TargetError(f"PostgreSQL failed while applying: {exc}",
                               hint="rerun: the checkpoint makes it safe")
        return TargetError(f"PostgreSQL refused the apply statements: {first_line(exc)}",
                           hint="check that the PostgreSQL tables still match migrate's "
                                "plan: pgshift verify SQLITE PG")

    def finish(self, result: SyncResult) -> None:
        if self.pg is None:
            return
        if result.last_seq > result.start_seq:
            n = self.pg.execute(
                "SELECT count(*) FROM pgshift.sync_conflicts WHERE target_schema = %s AND "
                "direction = %s AND seq > %s AND seq <= %s",
                (self.opts.schema, st.TO_POSTGRES, self.first_seq or 0, result.last_seq)
            ).fetchone()
            self.pg.commit()
            result.conflicts = int(n[0]) if n else 0
        if result.parked:
            result.parked_reasons = st.parked_rows(self.pg, self.opts.schema, limit=20)
            self.pg.commit()


# Deferred foreign keys for the whole batch; pgshift.applying marks the transaction as
# the applier's own, so PostgreSQL's capture trigger does not log it back (echoes).
_TXN_SETTINGS = "SET CONSTRAINTS ALL DEFERRED; SET LOCAL pgshift.applying = 'on'"


def run(opts: SyncOptions, *, stop: threading.Event | None = None,
        on_batch: Callable[[SyncResult, list[Change]], None] | None = None,
        batch_lock: threading.Lock | None = None) -> SyncResult:
    """Apply pending changes once (``follow=False``) or until ``stop`` is set.

    ``on_batch(result, batch)`` is called after each committed batch (metrics, lag).

    In follow mode a locked SQLite file or a lost PostgreSQL connection is
    retried with backoff (the checkpoint makes a retried batch harmless).
    ``batch_lock`` (dual mode) serializes batches with the to-sqlite applier of the
    same process. A paused sync (``pgshift sync pause``) applies nothing: ``follow``
    waits, otherwise the run returns with ``paused``.
    """
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {opts.batch_size}")
    log = SqliteLogSource(opts.sqlite_path)
    sink = PostgresSink(opts, log)
    try:
        sink.connect()
        assert sink.state is not None
        result = SyncResult(st.TO_POSTGRES, sink.state.start_seq, sink.state.last_seq)
        # (the log's batches are lists of Change: what on_batch was always given)
        return run_loop(log, sink, opts, result, stop=stop or threading.Event(),
                        on_batch=on_batch,  # type: ignore[arg-type]
                        batch_lock=batch_lock)
    finally:
        sink.close()
        log.close()


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
