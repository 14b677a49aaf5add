"""``pgshift verify``: prove SQLite and PostgreSQL hold the same data.

Per table: key-range segments are checksummed on both engines at once (a
SQLite thread and a PostgreSQL session run side by side), differing segments
are bisected to rows, keyless tables are compared as multisets. The schema is
checked against the plan separately. Exit 0 identical, 1 differences.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgshift.copy.checkpoint import load_profile
from pgshift.dsn import Dsn, connect
from pgshift.errors import ExitCode, TargetError, UsageError
from pgshift.existing.verify_plan import is_into_existing, mapped_checks, mapped_plan
from pgshift.progress import NullProgress, Progress
from pgshift.schema.plan import Plan, build_plan, select_tables
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.source.snapshot import Snapshot, check_snapshot_of, open_source, sqlite_failure
from pgshift.verify.redaction import redact_diff
from pgshift.verify.relationships import LinkCheck, SourceCount
from pgshift.verify.schema_check import SchemaDiff, check_schema
from pgshift.verify.segments import ROWS_TO_COMPARE, Range, RowDiff, TableComparer

SEGMENT_ROWS = 100_000  # per checksum query: one index range scan per side
SPLIT_FANOUT = 16  # a differing segment is cut into this many parts per round
MAX_ROW_DIFFS = 1000  # per table: beyond this the report says "and more"


@dataclass
class VerifyOptions:
    """Everything ``pgshift verify`` can be told."""

    sqlite_path: Path
    dsn: Dsn
    schema: str = "public"
    tables: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    sample: float | None = None  # fraction of segments checked; None = full
    live: bool = False
    live_wait: float = 1.0
    live_retries: int = 5
    check_schema: bool = True
    seed: int = 0
    # A snapshot of sqlite_path (e.g. the one migrate copied, taken by the rollout
    # engine): compared instead of the live file, so the check is of exactly what
    # was copied, before sync carries later changes. None: the live file.
    snapshot: Snapshot | None = None
    # Called before re-checking a differing segment in live mode (sync plugs in its
    # "lag drained" wait here); by default live mode sleeps live_wait seconds.
    wait_for_lag: Callable[[], None] | None = None
    # Full values of secret-looking columns in the differences (``--show-values``);
    # by default they are masked (verify.redaction): verify's output goes to logs.
    show_values: bool = False


@dataclass
class TableVerdict:
    table: str
    sqlite_rows: int = 0
    postgres_rows: int = 0
    segments: int = 0
    segments_checked: int = 0
    differing_segments: int = 0
    diffs: list[RowDiff] = field(default_factory=list)
    more_diffs: bool = False
    seconds: float = 0.0
    mode: str = "segments"

    @property
    def equal(self) -> bool:
        return not self.diffs and self.sqlite_rows == self.postgres_rows \
            and not self.differing_segments


@dataclass
class VerifyResult:
    tables: list[TableVerdict]
    schema_diffs: list[SchemaDiff]
    seconds: float
    sampled: float | None = None
    # After a mapped load: links checked against the source's own references, and
    # each feed's rows next to its base table's (verify/relationships.py).
    links: list[LinkCheck] = field(default_factory=list)
    sources: list[SourceCount] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return (all(t.equal for t in self.tables) and not self.schema_diffs
                and all(link.ok for link in self.links))

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.identical else ExitCode.DIFFERENCES

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "exit_code": int(self.exit_code),
            "seconds": round(self.seconds, 3),
            "sample": self.sampled,
            "tables": [{
                "table": t.table, "equal": t.equal, "mode": t.mode,
                "sqlite_rows": t.sqlite_rows, "postgres_rows": t.postgres_rows,
                "segments": t.segments, "segments_checked": t.segments_checked,
                "differing_segments": t.differing_segments, "seconds": round(t.seconds, 3),
                "differences": [d.to_dict() for d in t.diffs], "more_differences": t.more_diffs,
            } for t in self.tables],
            "schema_differences": [d.to_dict() for d in self.schema_diffs],
            "links": [link.to_dict() for link in self.links],
            "sources": [c.to_dict() for c in self.sources],
        }


def verify(opts: VerifyOptions, progress: Progress | None = None) -> VerifyResult:
    """Compare every chosen table of the SQLite file with its PostgreSQL copy.

    The SQLite side is read in one read transaction of one connection (a
    consistent view without copying the file); the PostgreSQL side in one
    REPEATABLE READ transaction. Type decisions come from the profile migrate
    stored in the target, so verify does not rescan the source to plan.
    With ``opts.snapshot`` the SQLite side is that snapshot. ``progress`` stays
    open: whoever made it closes it.
    """
    progress = progress or NullProgress()
    if opts.sample is not None and not 0 < opts.sample <= 1:
        raise UsageError(f"--sample must be more than 0% and at most 100% "
                         f"(got {opts.sample * 100:g}%)",
                         hint="--sample 1% (or leave --sample out to check every segment)")
    if opts.snapshot is not None:
        check_snapshot_of(opts.snapshot, opts.sqlite_path)
        if opts.live:
            raise UsageError("--live re-reads the live file; a snapshot never changes",
                             hint="verify the snapshot without --live, or the live file with it")
    started = time.perf_counter()
    read = opts.snapshot.path if opts.snapshot is not None else opts.sqlite_path
    src = opts.snapshot.connect() if opts.snapshot is not None else open_source(opts.sqlite_path)
    pg = connect(opts.dsn)
    try:
        src.execute("BEGIN")
        progress.step("catalog and profile")
        plan, mapped = plan_tables(opts, src, pg)
        pg.rollback()  # the comparison gets a transaction of its own, set up below
        if not opts.live:
            pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        pg.execute("SET search_path = pg_catalog")
        # Ordered checksums sort each segment in memory rather than on disk.
        pg.execute("SET work_mem = '256MB'")
        # A mapped load's schema is the application's: there is no plan to hold it to.
        schema_diffs = check_schema(pg, plan) if opts.check_schema and not mapped else []
        missing = {d.obj for d in schema_diffs if d.what == "table"}
        # Columns missing in PostgreSQL are reported by the schema check; the data
        # comparison covers the columns both sides have.
        gone = {d.obj for d in schema_diffs if d.what == "column" and d.actual == "missing"}
        for t in plan.tables:
            t.columns = [c for c in t.columns if f"{t.name}.{c.name}" not in gone]
        verdicts = []
        for t in plan.tables:
            if t.name in missing:
                verdicts.append(TableVerdict(t.name, t.rows, 0, mode="missing"))
                continue
            progress.step(f"compare {t.name}")
            progress.task(t.name, t.rows)
            verdicts.append(_compare_table(opts, plan, t.name, src, pg, progress))
        links: list[LinkCheck] = []
        sources: list[SourceCount] = []
        if mapped:
            progress.step("links and source counts")
            links, sources = mapped_checks(src, pg, read,
                                           load_profile(pg, opts.schema) or {},
                                           schema=opts.schema, tables=opts.tables,
                                           exclude=opts.exclude)
        pg.rollback()
    except psycopg.OperationalError as exc:
        raise TargetError(f"PostgreSQL failed during verify: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise sqlite_failure(exc, read, "verify: reading") from exc
    finally:
        src.close()
        pg.close()
    if not opts.show_values:
        for v in verdicts:
            v.diffs = [redact_diff(d) for d in v.diffs]
    return VerifyResult(verdicts, schema_diffs, time.perf_counter() - started, opts.sample,
                        links, sources)


def plan_tables(opts: VerifyOptions, src: sqlite3.Connection, pg: psycopg.Connection
          ) -> tuple[Plan, bool]:
    """The tables to compare; True when they were loaded ``--into-existing`` (mapped)."""
    stored = load_profile(pg, opts.schema)
    if is_into_existing(stored):
        assert stored is not None
        return mapped_plan(src, stored, schema=opts.schema, tables=opts.tables,
                           exclude=opts.exclude), True
    catalog = read_catalog(src)
    chosen = select_tables(catalog, opts.tables, opts.exclude)
    profiles = profiles_from_json(stored) if stored else {}
    for t in chosen:
        if t.name not in profiles:  # not migrated by pgshift: profile it now
            profiles[t.name] = profile_table(src, t)
    return build_plan(catalog, profiles, schema=opts.schema, tables=chosen), False


def _compare_table(opts: VerifyOptions, plan: Plan, name: str, src: sqlite3.Connection,
                   pg: psycopg.Connection, progress: Progress) -> TableVerdict:
    t0 = time.perf_counter()
    table = plan.table(name)
    cmp = TableComparer(table, plan.schema, src, pg)
    verdict = TableVerdict(name)
    if not cmp.keys or not cmp.segmentable:
        verdict.mode = "multiset" if not cmp.keys else "whole table"
        whole = Range(None, None)
        s, p = _both(lambda: cmp.sqlite_figures(whole), lambda: cmp.pg_figures(whole))
        if s != p and opts.live:
            s, p = _settle(opts, cmp, whole, s, p)
        verdict.sqlite_rows, verdict.postgres_rows = s[0], p[0]
        verdict.segments = verdict.segments_checked = 1
        if s != p:
            verdict.differing_segments = 1
            _add(verdict, cmp.multiset_diff() if not cmp.keys else cmp.diff_rows(None))
        progress.advance(name, s[0])
    else:
        _compare_segments(opts, cmp, table.rows, verdict, progress)
    if cmp.null_keyed:
        left, right = cmp.null_key_rows()
        verdict.mode += " + NULL keys"
        verdict.sqlite_rows += sum(left.values())
        verdict.postgres_rows += sum(right.values())
        if left != right:
            _add(verdict, cmp.count_diffs(left, right))
    verdict.seconds = time.perf_counter() - t0
    return verdict


def _compare_segments(opts: VerifyOptions, cmp: TableComparer, rows: int,
                      verdict: TableVerdict, progress: Progress) -> None:
    seg_rows = SEGMENT_ROWS if opts.sample is None else max(1000, min(SEGMENT_ROWS, rows // 100))
    ranges = cmp.split(Range(None, None), max(1, math.ceil(rows / seg_rows)), rows)
    verdict.segments = len(ranges)
    if opts.sample is not None:
        k = max(1, math.ceil(len(ranges) * opts.sample))
        ranges = sorted(random.Random(opts.seed).sample(ranges, k),
                        key=lambda r: (r.lo is not None, r.lo or ()))
    verdict.segments_checked = len(ranges)
    left, right = _both(lambda: [cmp.sqlite_figures(r) for r in ranges],
                        lambda: [cmp.pg_figures(r) for r in ranges])
    progress.advance(verdict.table, sum(n for n, _ in left))
    for i, (r, a, b) in enumerate(zip(ranges, left, right, strict=True)):
        if a != b and opts.live:
            # An in-flight change that sync carries over is not a difference.
            left[i], right[i] = a, b = _settle(opts, cmp, r, a, b)
        if a != b:
            verdict.differing_segments += 1
            _bisect(cmp, r, a[0], verdict)
    verdict.sqlite_rows = sum(n for n, _ in left)
    verdict.postgres_rows = sum(n for n, _ in right)


def _settle(opts: VerifyOptions, cmp: TableComparer, r: Range, a: tuple[int, str],
            b: tuple[int, str]) -> tuple[tuple[int, str], tuple[int, str]]:
    """Re-check a differing range after the sync lag drains; the last figures seen."""
    for _ in range(opts.live_retries):
        if opts.wait_for_lag:
            opts.wait_for_lag()
        else:
            time.sleep(opts.live_wait)
        cmp.sqlite.commit()  # a fresh read transaction sees the latest writes
        cmp.sqlite.execute("BEGIN")
        a, b = cmp.sqlite_figures(r), cmp.pg_figures(r)
        if a == b:
            break
    return a, b


def _bisect(cmp: TableComparer, r: Range, rows: int, verdict: TableVerdict) -> None:
    if rows <= ROWS_TO_COMPARE:
        _add(verdict, cmp.diff_rows(r))
        return
    parts = cmp.split(r, SPLIT_FANOUT, rows)
    if len(parts) == 1:  # the SQLite side has too few keys to split: compare rows
        _add(verdict, cmp.diff_rows(r))
        return
    for part in parts:
        a, b = cmp.sqlite_figures(part), cmp.pg_figures(part)
        if a != b:
            _bisect(cmp, part, max(a[0], 1) if a[0] else b[0], verdict)
        if verdict.more_diffs:
            return


def _add(verdict: TableVerdict, diffs: list[RowDiff]) -> None:
    room = MAX_ROW_DIFFS - len(verdict.diffs)
    verdict.diffs.extend(diffs[:room])
    if len(diffs) > room:
        verdict.more_diffs = True


def _both(left: Callable[[], Any], right: Callable[[], Any]) -> tuple[Any, Any]:
    """Run the SQLite side and the PostgreSQL side at the same time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(left), pool.submit(right)
        return a.result(), b.result()
