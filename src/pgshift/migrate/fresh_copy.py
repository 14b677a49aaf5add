"""The fresh load's copy step: the profile folded into it, and keys built as tables finish.

Two things used to be whole passes of their own (issue 14):

- **The profile.** A new run plans from a sample of each table
  (``source.profile.sample_tables``) and the copy scan profiles every chunk as
  it renders it (``TableSql.scan``; each chunk's profile commits with its
  checkpoint in ``pgshift.migrate_chunks.profile``). A chunk that breaks one
  of the plan's shortcuts is rendered again with every check on
  (``copy.classes``). Once all of a table's chunks are in, their merged
  profile is the table's exact profile, the one a separate scan would have
  given: if it chooses other types than the sample did, the table is
  re-planned (dropped, created with the right types, its chunks and rejects
  forgotten, in one transaction) and copied again; otherwise it is final. At
  the end the run's stored profile (``pgshift.migrate_runs.profile``, which
  verify and sync read) is the merged one, and the plan is rebuilt from it.
- **Keys and indexes.** As soon as a table is final, its primary key, UNIQUEs
  and indexes are built and it is ANALYZEd on a copy worker's session while
  the other workers keep copying (``WorkQueue`` tasks run before chunks); the
  ``keys and indexes`` step afterwards only finds what is left (statements
  already done are recorded steps and skipped, a failed one is tried and
  reported there), and ``finish`` analyzes only the tables not analyzed yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RunRecord
from pgshift.copy.chunks import Chunk, decode_bound, key_columns
from pgshift.copy.classes import cautious
from pgshift.copy.pipeline import ChunkResult, CopyJob, TableSql, WorkQueue, run_copy
from pgshift.migrate.copying import ChunkCounter, pending_chunks
from pgshift.migrate.fidelity import load_sql
from pgshift.migrate.options import MigrateOptions, TableSummary
from pgshift.migrate.sessions import session_sql
from pgshift.progress import Progress
from pgshift.schema import ddl
from pgshift.schema.defaults import check_defaults
from pgshift.schema.model import Note, Table
from pgshift.schema.plan import Plan, build_plan
from pgshift.source.catalog import Catalog
from pgshift.source.profile import (
    ScanProfile,
    TableProfile,
    merge_profiles,
    profile_table,
    profiles_from_json,
    profiles_to_json,
)
from pgshift.source.snapshot import Snapshot

PostLoad = Callable[[psycopg.Connection, MigrateOptions, str, Table], list[Note]]
"""One table's keys and indexes on a session (``fresh.post_load_table``)."""

_SAMPLED = "sampled"  # marks a stored table profile made from a sample (still being checked)
_TABLE_ROWS = "table_rows"  # the table's row count, beside a sampled profile's own rows


def stored_json(profiles: dict[str, TableProfile], sampled: set[str],
                rows: dict[str, int]) -> dict[str, Any]:
    """The profile stored with the run; sampled tables carry a marker and their row count.

    ``profiles_from_json`` ignores the extra keys, so a reader always gets profiles.
    """
    out = profiles_to_json(profiles)
    for name in sampled:
        out[name][_SAMPLED] = True
        out[name][_TABLE_ROWS] = rows[name]
    return out


def from_stored(stored: dict[str, Any]) -> tuple[dict[str, TableProfile], set[str],
                                                 dict[str, int]]:
    """(profiles, sampled tables, their row counts) of a stored profile (a resumed run)."""
    sampled = {name for name, d in stored.items() if d.get(_SAMPLED)}
    return (profiles_from_json(stored), sampled,
            {name: int(stored[name][_TABLE_ROWS]) for name in sampled})


class FreshCopy:
    """One fresh load's copy step; see the module docstring."""

    def __init__(self, coord: psycopg.Connection, opts: MigrateOptions, plan: Plan,
                 catalog: Catalog, sampled: set[str], snap: Snapshot, run: RunRecord,
                 summaries: dict[str, TableSummary], progress: Progress,
                 post_load: PostLoad | None, planned_notes: int) -> None:
        self.coord, self.opts, self.plan, self.catalog = coord, opts, plan, catalog
        self.planned_notes = planned_notes  # plan.notes before this are build_plan's own
        self.sampled = set(sampled)
        self.snap, self.run, self.summaries, self.progress = snap, run, summaries, progress
        self.post_load = post_load
        self.lock = threading.Lock()
        self.final: dict[str, TableProfile] = {}
        self.remaining: dict[str, int] = {}
        self.work = WorkQueue()
        self.counter = ChunkCounter(summaries, progress)
        self.replanned: list[str] = []
        self.analyzed: set[str] = set()  # tables ANALYZEd as they finished

    def run_copy(self) -> None:
        """Copy every pending chunk; then store the merged profile and rebuild the plan."""
        opts, plan = self.opts, self.plan
        pending = pending_chunks(self.coord, self.run, ((t.name, t.rows, key_columns(t.source))
                                                        for t in plan.tables),
                                 self.summaries, self.progress)
        size = {t.name: t.rows for t in plan.tables}
        todo = sorted((c for chunks in pending.values() for c in chunks),
                      key=lambda c: (-size[c.table], c.no))
        tables = {t.name: self._table_sql(t) for t in plan.tables}
        job = CopyJob(opts.schema, self.run.run_id, opts.dsn, self.snap.connect, tables,
                      session_sql(opts.schema), self._on_chunk)
        self.job = job
        for t in plan.tables:
            self.remaining[t.name] = len(pending.get(t.name, []))
            if not self.remaining[t.name]:
                self.work.put_task(self._finish_task(t.name))  # copied by an earlier run
        run_copy(job, todo, opts.jobs, self.work)
        self._store_final()

    def _table_sql(self, t: Table) -> TableSql:
        """The copy SQL of ``t``: profiling each chunk when ``t`` was planned from a sample."""
        if t.name not in self.sampled:
            return load_sql(self.opts.schema, t)
        plain = load_sql(self.opts.schema, t)
        if plain.table is not t:
            # Read under other names (long identifiers, --fill-null-keys): no scan here,
            # so every check on, and the finished table is profiled by a scan of its own.
            return load_sql(self.opts.schema, cautious(t))
        return TableSql.build(self.opts.schema, t, scan=ScanProfile.of(t.source))

    # ------------------------------------------------------------------ per chunk, per table

    def _on_chunk(self, r: ChunkResult) -> None:
        self.counter(r)
        with self.lock:
            self.remaining[r.table] -= 1
            last = self.remaining[r.table] == 0
        if last:
            self.work.put_task(self._finish_task(r.table))

    def _finish_task(self, name: str) -> Callable[[psycopg.Connection], None]:
        return lambda conn: self._finish_table(conn, name)

    def _finish_table(self, conn: psycopg.Connection, name: str) -> None:
        """All of ``name``'s chunks are in: check the plan against them, then its keys."""
        table = self.plan.table(name)
        if name in self.sampled:
            exact = self._merged(conn, name)
            redo = self._decided(conn, name, exact)
            if _differs(self.opts.schema, table, redo):
                self._replan(conn, redo, exact)
                return
            with self.lock:
                self.final[name] = exact
        if self.post_load is not None and not self.opts.data_only:
            if self.opts.owner:
                conn.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(self.opts.owner)))
            try:
                # Notes are not kept here: a statement that failed is not a recorded step,
                # so the keys-and-indexes step tries it again and reports it once.
                self.post_load(conn, self.opts, self.run.run_id, table)
            finally:
                if self.opts.owner:
                    conn.execute("RESET ROLE")
        if self.opts.analyze:
            # The table's rows are final: its statistics need not wait for the others.
            conn.execute(f"ANALYZE {ddl.qualified(self.opts.schema, table.pg_name)}")
            with self.lock:
                self.analyzed.add(name)

    def _merged(self, conn: psycopg.Connection, name: str) -> TableProfile:
        """The table's exact profile from its chunks' (a full scan if one lacks it)."""
        parts = checkpoint.chunk_profiles(conn, self.run.run_id, name)
        if parts and all(p is not None for p in parts.values()):
            return merge_profiles(name, [profiles_from_json({name: p})[name]
                                         for p in parts.values() if p is not None])
        con = self.snap.connect()
        try:
            return profile_table(con, self.catalog.table(name))
        finally:
            con.close()

    def _decided(self, conn: psycopg.Connection, name: str, profile: TableProfile) -> Table:
        """The table as the whole plan decides it with ``name``'s exact profile."""
        redo = self._rebuilt({name: profile}).table(name)
        # As the plan's own were: a DEFAULT PostgreSQL refuses is dropped (fidelity).
        check_defaults(conn, [redo], [], lambda t, c: "")
        redo.rows = profile.rows
        return redo

    def _rebuilt(self, exact: dict[str, TableProfile]) -> Plan:
        with self.lock:
            tables = [t.source for t in self.plan.tables]
            profiles = {**self.plan.profiles, **self.final, **exact}
        return build_plan(self.catalog, profiles, schema=self.opts.schema, tables=tables,
                          fill_null_keys=self.opts.fill_null_keys)

    def _replan(self, conn: psycopg.Connection, table: Table, exact: TableProfile) -> None:
        """The sample chose other types than the whole table: create it again and recopy."""
        opts, run_id = self.opts, self.run.run_id
        rel = ddl.qualified(opts.schema, table.pg_name)
        create = ddl.create_table(opts.schema, table)
        refused: list[str] = []
        with conn.transaction():
            if opts.owner:
                conn.execute(pgsql.SQL("SET LOCAL ROLE {}").format(
                    pgsql.Identifier(opts.owner)))
            conn.execute(f"DROP TABLE IF EXISTS {rel} CASCADE")
            conn.execute(create)
            checkpoint.record_step(conn, run_id, create)
            for stmt in ddl.defaults(opts.schema, table):
                try:
                    with conn.transaction():
                        conn.execute(stmt)
                        checkpoint.record_step(conn, run_id, stmt)
                except (psycopg.errors.ProgrammingError, psycopg.errors.DataError) as exc:
                    refused.append(f"{' '.join(stmt.split())[:160]} refused by PostgreSQL: "
                                   f"{exc.diag.message_primary}")
            checkpoint.forget_table(conn, run_id, table.name)
            if table.pg_name != table.name:  # rejects name the table as it is loaded
                checkpoint.forget_table(conn, run_id, table.pg_name)
            checkpoint.save_table_profile(conn, run_id, table.name,
                                          profiles_to_json({table.name: exact})[table.name])
        with self.lock:
            self.sampled.discard(table.name)
            self.replanned.append(table.name)
            self.plan.tables = [table if t.name == table.name else t for t in self.plan.tables]
            self.plan.notes.extend(Note("untranslated", table.name, r) for r in refused)
            self.final[table.name] = exact
            s = self.summaries[table.name]
            s.rows = s.rejects = s.bytes = 0
            s.seconds = 0.0
            self.job.tables[table.name] = load_sql(opts.schema, table)
            bounds = self.run.chunks.get(table.name, [])
            self.remaining[table.name] = len(bounds)
        self.progress.task(table.name, table.rows)
        key = tuple(key_columns(table.source))
        self.work.put_chunks([Chunk(table.name, no, key, decode_bound(lo), decode_bound(hi))
                              for no, (lo, hi) in enumerate(bounds)])

    # ------------------------------------------------------------------ the end

    def _store_final(self) -> None:
        """Store the merged profile and rebuild the plan from it (exact figures, notes)."""
        plan = self.plan
        profiles = {t.name: self.final.get(t.name, plan.profiles[t.name]) for t in plan.tables}
        rebuilt = self._rebuilt(profiles)
        # The decisions are the plan's (checked table by table); what the exact profile
        # changes is its figures: the columns' profile facts, the rows, the anomalies.
        for t in plan.tables:
            exact = rebuilt.table(t.name)
            t.rows = exact.rows
            for c, e in zip(t.columns, exact.columns, strict=True):
                c.decision, c.clean, c.nulls = e.decision, e.clean, e.nulls
                c.nul_texts, c.classes = e.nul_texts, e.classes
        plan.profiles = profiles
        # build_plan's notes (counts included) from the exact profiles; the later ones stay.
        plan.notes = rebuilt.notes + plan.notes[self.planned_notes:]
        for name in self.replanned:
            plan.notes.append(Note("info", name, "the sampled plan did not hold for every row: "
                                   "table re-planned from its full profile and copied again"))
        checkpoint.save_profile(self.coord, self.run.run_id, profiles_to_json(profiles))


def _differs(schema: str, planned: Table, exact: Table) -> bool:
    """Whether the exact profile chooses other types, conversions or defaults."""
    return (ddl.create_table(schema, planned) != ddl.create_table(schema, exact)
            or ddl.defaults(schema, planned) != ddl.defaults(schema, exact)
            or [c.decision.conversion for c in planned.columns]
            != [c.decision.conversion for c in exact.columns])


__all__ = ["FreshCopy", "from_stored", "stored_json"]
