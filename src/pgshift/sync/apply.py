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

Conflicts are decided per table policy (:mod:`pgshift.sync.settings`) inside the
batch's transaction: when PostgreSQL's version wins, the transaction is rolled
back and the batch redone without that change, which is recorded as the loser;
when SQLite's wins, PostgreSQL's row is recorded as the loser and overwritten. A
paused sync (``pgshift sync pause``) applies nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.dsn import Dsn, connect
from pgshift.errors import SourceError, TargetError, UsageError
from pgshift.existing.verify_plan import PROFILE_MARK, is_into_existing
from pgshift.schema.plan import build_plan
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.source.snapshot import CHANGELOG_TABLE, check_sqlite_file
from pgshift.sync import settings as cfg
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.image import ImageError, decode
from pgshift.sync.tables import CANDIDATES_SQL, Change, TableApplier

# Changes per PostgreSQL transaction. 1000 keeps a transaction around 50-100 ms
# on the seeded tables (benchmarks/sync.py) while amortizing the commit.
DEFAULT_BATCH = 1000
POLL_SECONDS = 0.05  # --follow: how often an idle applier looks for new changes
FENCE_OP = "F"  # a change-log row written by `pgshift sync drain`, not by a trigger
MAX_BATCH_GROWTH = 64  # a batch cut inside a SQLite transaction grows up to 64x, then parks
BACKOFF_MAX = 5.0  # seconds between retries when SQLite is locked or PostgreSQL is away
LOST_ORIGIN = "lost"  # a SQLite change the to-sqlite applier recorded as a conflict loser
MAX_RECHECKS = 10  # batch redos for green writes that raced a batch, then go on


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


class NeedMore(Exception):
    """A batch failed on a foreign key and more changes follow it: read a longer one."""


@dataclass
class Decision:
    """A conflict the policy gave to PostgreSQL: the SQLite change is not applied."""

    rule: str
    reason: str
    postgres_ts: int | None
    loser_change: int | None = None


class Redo(Exception):
    """Some changes lost to PostgreSQL: redo the batch without them."""

    def __init__(self, losers: dict[int, Decision]) -> None:
        super().__init__(f"{len(losers)} changes lost to PostgreSQL")
        self.losers = losers


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
        self.settings: dict[str, cfg.TableSettings] = {}
        self.pg_captured: set[str] = set()
        self._rechecks = 0

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
        self.pg.execute(CANDIDATES_SQL)
        self.pg.commit()
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
            from pgshift.sync import mapped

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
            f'CAST(row AS BLOB), schema_version, ts, CAST(before AS BLOB), origin FROM '
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
        lose: dict[int, Decision] = {}
        self._rechecks = 0
        while True:
            try:
                return self._apply_planned(self._plan(batch, lose), lose, final=final)
            except Redo as redo:
                # the policy gave these keys to PostgreSQL (or a green write committed
                # while the batch ran): redo the batch, the transaction was rolled back
                lose.update(redo.losers)
                self._rechecks += not redo.losers

    def _plan(self, batch: list[Change], lose: dict[int, Decision]
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
                    hint=_DDL_HINT, table=ch.table)
            if ch.schema_version != ta.shape.fingerprint:
                raise SchemaChangedError(
                    f"change {ch.seq} on {ch.table} was captured with another column layout "
                    f"(schema version {ch.schema_version}, now {ta.shape.fingerprint})",
                    hint=_DDL_HINT, table=ch.table)
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
                self._resolve(cur, planned, lose)
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
                        reason = f"PostgreSQL: {_first_line(exc)}"
                    if immediate:
                        cur.execute("SET CONSTRAINTS ALL DEFERRED")
                if reason is not None:
                    self._park(cur, ch, reason)
                    parked.add(ch.seq)
            self._resolve(cur, planned, lose)
            self._checkpoint(cur, planned, parked, lose)
        return len(planned) - len(parked), len(parked)

    def _park(self, cur: psycopg.Cursor, ch: Change, reason: str) -> None:
        cur.execute(
            "INSERT INTO pgshift.sync_parked (target_schema, direction, seq, table_name, op, "
            "key_old, key_new, row_image, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.opts.schema, st.TO_POSTGRES, ch.seq, ch.table, ch.op, _text(ch.key_old),
             _text(ch.key_new), _text(ch.row), reason))

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

    # ------------------------------------------------------------ conflicts

    def _resolve(self, cur: psycopg.Cursor, planned: list[tuple[Change, Any]],
                 lose: dict[int, Decision]) -> None:
        """Decide the batch's conflict candidates per table policy, before it commits.

        Candidates (``pg_temp.pgshift_cand``): ``before`` (PostgreSQL's row is not
        SQLite's before-image), ``insert`` (an insert over another PostgreSQL row),
        ``unique`` (a row evicted on another unique key, or at a key update's new key)
        and ``lost`` (a change already given to PostgreSQL). ``insert``/``unique`` are
        conflicts only when the PostgreSQL row was not SQLite's own (see
        :meth:`_foreign_row`). When SQLite wins, the PostgreSQL row is the recorded
        loser and queued PostgreSQL changes of that key are superseded (recorded and
        removed from the queue); when PostgreSQL wins, :class:`Redo` is raised and the
        batch is redone without the change, which is then recorded as the loser.
        """
        rows = [(seq, kind, None if img is None else json.loads(img)) for seq, kind, img in
                cur.execute("SELECT seq, kind, img::text FROM pg_temp.pgshift_cand "
                            "ORDER BY seq, kind").fetchall()]
        if not rows:
            self._recheck(cur, planned, lose)
            return
        by_seq = {ch.seq: ch for ch, _ in planned}
        new: dict[int, Decision] = {}
        records: list[tuple[Any, ...]] = []
        for seq, kind, img in rows:
            ch = by_seq[seq]
            ta = self.tables[ch.table]
            ts = self.settings.get(ch.table, cfg.DEFAULT)
            qkey = self._queue_key(cur, ta, ch, img)
            pending = self._pending(cur, ta.name, qkey)
            if kind == "lost":
                d = lose[seq]
                records.append(self._record(
                    ch, ts.conflict, cfg.POSTGRES, d.rule, d.reason, d.postgres_ts,
                    winner_image=None if img is None else json.dumps(img),
                    loser_image=Jsonb(_image_json(ta, ch.before if ch.op == "D" else ch.row)),
                    loser_origin=cfg.SQLITE, loser_change=ch.seq))
                if pending:
                    # the queued PostgreSQL change now goes to SQLite as the winner:
                    # without a before-image it is applied there without a second conflict
                    cur.execute("UPDATE pgshift.pg_changes SET before = NULL WHERE id = %s",
                                (pending[0][0],))
                continue
            if kind in ("insert", "unique") and not self._foreign_row(cur, ta, ch, img,
                                                                       pending):
                continue
            pg_ts = max((p[1] for p in pending), default=None)
            side, rule = cfg.winner(ts.conflict, self.opts.sor or cfg.SQLITE, sqlite_ts=ch.ts,
                                    postgres_ts=pg_ts)
            if side == cfg.POSTGRES:
                new[seq] = Decision(rule, kind, pg_ts)
                continue
            image = None if img is None else Jsonb(img)
            newest = pending[-1][0] if pending else None
            records.append(self._record(
                ch, ts.conflict, cfg.SQLITE, rule, kind, pg_ts,
                winner_image=_text(ch.row), loser_image=image, loser_origin=cfg.POSTGRES,
                loser_change=newest))
            for change_id, _ in pending[:-1]:
                records.append(self._record(
                    ch, ts.conflict, cfg.SQLITE, rule, "superseded", pg_ts,
                    winner_image=_text(ch.row), loser_image=image,
                    loser_origin=cfg.POSTGRES, loser_change=change_id))
            if pending:
                cur.execute("DELETE FROM pgshift.pg_changes WHERE id = ANY(%s)",
                            ([p[0] for p in pending],))
        if new:
            raise Redo(new)
        self._recheck(cur, planned, lose)
        cur.executemany(
            "INSERT INTO pgshift.sync_conflicts (target_schema, direction, seq, table_name, "
            "op, key, policy, winner, winner_image, loser_image, reason, rule, sqlite_ts, "
            "postgres_ts, loser_origin, loser_change) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s, %s, %s)", records)

    def _recheck(self, cur: psycopg.Cursor, planned: list[tuple[Change, Any]],
                 lose: dict[int, Decision]) -> None:
        """A green write that committed between a change's conflict check and its write
        (the write waited for green's row lock, then overwrote it) is seen now: its queue
        entry is pending for a key this batch wrote. Redo the batch: the checks see it.

        Only tables whose queue the to-sqlite applier carries while this applier runs
        (:meth:`TableApplier.check_pending`); bounded, a busy key cannot stall the loop.
        """
        if self._rechecks >= MAX_RECHECKS:
            return
        keys: dict[str, list[list[str | None]]] = {}
        for ch, work in planned:
            ta = self.tables.get(ch.table)
            if ta is None or not ta.pending_check or isinstance(work, str) \
                    or ch.seq in lose or ch.op == FENCE_OP or ch.origin == LOST_ORIGIN:
                continue
            for raw in {ch.key_old, ch.key_new} - {None}:
                keys.setdefault(ch.table, []).append(ta.key_params(raw))
        for table, found in sorted(keys.items()):
            ta = self.tables[table]
            columns = [list(col) for col in zip(*found, strict=True)]
            hit = cur.execute(ta.recheck_sql, [*columns, self.opts.schema, ta.name]
                              ).fetchone()
            if hit and hit[0]:
                raise Redo({})

    def _record(self, ch: Change, policy: str, winner: str, rule: str, reason: str,
                pg_ts: int | None, *, winner_image: str | None, loser_image: Any,
                loser_origin: str, loser_change: int | None) -> tuple[Any, ...]:
        return (self.opts.schema, st.TO_POSTGRES, ch.seq, ch.table, ch.op,
                _text(ch.key_old if ch.key_old is not None else ch.key_new), policy, winner,
                winner_image, loser_image, reason, rule, ch.ts, pg_ts, loser_origin,
                loser_change)

    def _queue_key(self, cur: psycopg.Cursor, ta: TableApplier, ch: Change,
                   img: dict[str, Any] | None) -> Any:
        """The key as PostgreSQL's capture queue writes it (a JSON array)."""
        if img is not None:
            return [img.get(c.name) for c in ta.key]
        raw = ch.key_old if ch.op != "I" else ch.key_new
        row = cur.execute(ta.key_json_sql, ta.key_params(raw)).fetchone()
        return row[0] if row else None

    def _pending(self, cur: psycopg.Cursor, table: str, qkey: Any) -> list[tuple[int, int]]:
        """(id, ts) of the queued PostgreSQL changes of one key, oldest first."""
        if table not in self.pg_captured or qkey is None:
            return []
        return [(int(r[0]), int(r[1])) for r in cur.execute(
            "SELECT id, ts FROM pgshift.pg_changes WHERE target_schema = %s AND tbl = %s "
            "AND op <> %s AND (key_new = %s OR key_old = %s) ORDER BY id",
            (self.opts.schema, table, FENCE_OP, Jsonb(qkey), Jsonb(qkey))).fetchall()]

    def _foreign_row(self, cur: psycopg.Cursor, ta: TableApplier, ch: Change,
                     img: dict[str, Any] | None, pending: list[tuple[int, int]]) -> bool:
        """Was this PostgreSQL row (evicted, or under an insert) written by someone else?

        A table with PostgreSQL capture: yes when the queue holds changes of its key
        that did not reach SQLite. Without capture, SQLite's change log decides: yes
        when the last change SQLite logged for that key (before this one) left another
        image, or removed or moved the key away; no when SQLite never logged the key
        (a row of migrate's snapshot, which SQLite itself replaced: the common case;
        a row green inserted into a table without capture under a key SQLite never
        wrote is not told apart).
        """
        if ta.name in self.pg_captured or img is None:
            return bool(pending)
        mapped_key = getattr(ta, "sqlite_key", None)
        key = mapped_key(self.src, cur, img) if mapped_key is not None \
            else _sqlite_key(self.src, ta, img)
        if key is None:
            return False
        last = self.src.execute(
            f'SELECT key_new, CAST(row AS BLOB) FROM "{CHANGELOG_TABLE}" WHERE tbl = ? '
            "AND (key_new = ? OR key_old = ?) AND seq < ? AND op <> ? ORDER BY seq DESC "
            "LIMIT 1", (ch.table, key, key, ch.seq, FENCE_OP)).fetchone()
        if last is None:
            return False
        if last[0] != key:
            return True  # SQLite deleted or moved the key away: PostgreSQL's row is not its
        same = cur.execute(ta.same_sql, [*ta.row_params(last[1]), Jsonb(img)]).fetchone()
        return not (same and same[0])

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
    from pgshift.sync import pg_capture

    if not st.scalar(conn, "SELECT to_regclass('pgshift.pg_changes') IS NOT NULL"):
        conn.commit()
        return set()
    names = set(pg_capture.installed(conn, schema))
    conn.commit()
    return names


def _sqlite_key(con: sqlite3.Connection, ta: TableApplier, img: dict[str, Any]) -> str | None:
    """A PostgreSQL row's key as the capture triggers write it (``quote()`` literals)."""
    from pgshift.sync.apply_sqlite import reverse

    try:
        values = [reverse(c.decision.conversion, img.get(c.name)) for c in ta.key]
    except (Reject, ValueError, TypeError):
        return None
    row = con.execute("SELECT " + " || ',' || ".join("quote(?)" for _ in values),
                      values).fetchone()
    return str(row[0]) if row else None


def _image_json(ta: TableApplier, raw: bytes | None) -> dict[str, Any] | None:
    """A SQLite row image as JSON (blobs as \\x hex, non-finite reals as text)."""
    if raw is None:
        return None
    out: dict[str, Any] = {}
    for name, value in zip(ta.shape.columns, decode(raw), strict=False):
        if isinstance(value, bytes):
            value = "\\x" + value.hex()
        elif (isinstance(value, float) and not math.isfinite(value)) \
                or not isinstance(value, int | float | str | type(None)):
            value = str(value)
        out[name] = value
    return out


# Deferred foreign keys for the whole batch; pgshift.applying marks the transaction as
# the applier's own, so PostgreSQL-side capture (planned) does not log it back.
_TXN_SETTINGS = "SET CONSTRAINTS ALL DEFERRED; SET LOCAL pgshift.applying = 'on'"

_DDL_HINT = ("apply the same DDL to PostgreSQL, drain, then reinstall capture: "
             "pgshift sync uninstall SQLITE && pgshift sync install SQLITE "
             "(DDL is refused during the sync window)")


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
                if st.is_paused(applier.pg, opts.schema):
                    # `pgshift sync pause`: captures keep accumulating, nothing is applied
                    result.paused = True
                    if not opts.follow:
                        break
                    stop.wait(opts.poll)
                    continue
                result.paused = False
                limit = opts.batch_size
                batch_started = time.perf_counter()
                with batch_lock or contextlib.nullcontext():
                    while True:
                        batch = applier.read_batch(limit)
                        final = len(batch) < limit or \
                            limit >= MAX_BATCH_GROWTH * opts.batch_size
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
            result.last_batch_seconds = time.perf_counter() - batch_started
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
