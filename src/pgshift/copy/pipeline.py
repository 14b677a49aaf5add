"""The COPY pipeline: workers that move chunks from the snapshot into PostgreSQL.

Each worker owns one SQLite connection to the (immutable) snapshot and one
PostgreSQL connection. A chunk is rendered to CSV inside SQLite (fast form,
pgshift.copy.convert) and streamed with COPY; suspect values go through the
Python converters. The chunk's COPY, its rejects and its checkpoint commit in
one transaction. If PostgreSQL refuses the chunk, it is redone row by row in
Python and, failing that, bisected to the rows PostgreSQL refuses, each of
which becomes a reject with PostgreSQL's own reason.

Threads suffice: sqlite3 releases the GIL while it steps and psycopg while
it sends, so two workers keep both cores busy (SQLite rendering in one,
the PostgreSQL backend parsing in the other).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgshift.copy import checkpoint
from pgshift.copy.checkpoint import RejectRecord
from pgshift.copy.chunks import Chunk, q
from pgshift.copy.classes import cautious, contradicts
from pgshift.copy.convert import (
    FastField,
    InvalidText,
    Reject,
    convert,
    fast_field,
    raw_for_report,
)
from pgshift.dsn import Dsn, connect
from pgshift.errors import PgshiftError, SourceError, TargetError
from pgshift.schema.ddl import qualified
from pgshift.schema.model import Table
from pgshift.source.profile import ScanProfile, TableProfile, profiles_to_json


def _text_factory(raw: bytes) -> str | InvalidText:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(raw)


@dataclass
class ChunkResult:
    table: str
    no: int
    rows: int
    nbytes: int
    rejects: int
    seconds: float
    slow_rows: int = 0
    profile: TableProfile | None = None  # the chunk's own profile (TableSql.scan)


@dataclass(frozen=True)
class RowSource:
    """Where a table's rows come from when it is not a plain copy of one SQLite table.

    ``sql`` is a SELECT template with a ``{where}`` placeholder (the chunk's range
    predicate) returning the key columns aliased ``keys`` and then one column per
    target column, aliased by the target column's name (``--into-existing``).
    ``labels`` name the keys in rejects (the source's own key names).
    """

    sql: str
    keys: list[str]
    labels: list[str]


@dataclass
class TableSql:
    """Per-table SQL, computed once and shared by the workers."""

    table: Table
    copy_sql: str
    fast_select: str  # returns (csv bytes, suspect count) for a chunk
    slow_select: str  # returns key columns + values of rows needing the slow form
    all_select: str  # every row of a chunk, for the full slow form
    conversions: list[str]
    key_names: list[str]  # the key as rejects name it
    # The profile folded into the copy scan: its aggregates follow the fast select's
    # three values, and a chunk they show to contradict the plan's profile-derived
    # shortcuts is rendered again by ``safe`` (every check on); see classes.py.
    scan: ScanProfile | None = None
    safe: TableSql | None = None

    @classmethod
    def build(cls, schema: str, table: Table, rows: RowSource | None = None, *,
              scan: ScanProfile | None = None) -> TableSql:
        """The SQL of one table; ``rows`` reads mapped rows instead of ``table.name``.

        With ``scan`` the fast select also computes the profile of each chunk.
        """
        cols = table.copy_columns
        fields = [fast_field(c.decision.conversion, c.name, clean=c.clean, not_null=c.nulls == 0)
                  for c in cols]
        suspects = [f.suspect for f in fields if f.suspect]
        suspects += [f"{q(c.name)} IS NULL" for c in cols
                     if c.name in table.primary_key and c.nulls]
        # printf's %w stops at a NUL byte: such values must never reach the fast form,
        # or they would load silently truncated.
        suspects += [f"instr({q(c.name)}, char(0)) > 0" for c in cols if c.nul_texts]
        line = _printf_line(fields)
        if rows is None:
            src, where = q(table.name), "{where}"
            keys = list(table.source.primary_key) or ["rowid"]
            labels = keys
        else:
            # LIMIT -1 keeps SQLite from flattening the mapped SELECT into the
            # rendering one, which would evaluate each mapped expression once per use.
            src, where, keys, labels = f"({rows.sql} LIMIT -1)", "1", rows.keys, rows.labels
        key_sql = ", ".join("rowid" if k == "rowid" else q(k) for k in keys)
        values = ", ".join(q(c.name) for c in cols)
        aggs = "".join(", " + a for a in scan.exprs) if scan is not None else ""
        if suspects:
            any_suspect = " OR ".join(f"({s})" for s in suspects)
            taken = {c.name.lower() for c in table.source.columns} if scan else set()
            sus, text = _alias("sus", taken), _alias("line", taken)
            passed = "".join(", " + q(c.name) for c in table.source.columns) if scan else ""
            # LIMIT -1 keeps SQLite from flattening the subquery, which would
            # evaluate the suspect predicate twice per row.
            fast = (f"SELECT group_concat(iif({sus}, NULL, {text}), char(10)), sum({sus}), "
                    f"count(*){aggs} FROM (SELECT ({any_suspect}) AS {sus}, {line} AS {text}"
                    f"{passed} FROM {src} WHERE {where} LIMIT -1)")
            slow = f"SELECT {key_sql}, {values} FROM {src} WHERE ({where}) AND ({any_suspect})"
        else:
            fast = (f"SELECT group_concat({line}, char(10)), 0, count(*){aggs} FROM {src} "
                    f"WHERE {where}")
            slow = f"SELECT {key_sql}, {values} FROM {src} WHERE 0"
        return cls(
            table=table,
            copy_sql=f"COPY {qualified(schema, table.name)} "
                     f"({', '.join(_pgq(c.name) for c in cols)}) FROM STDIN (FORMAT csv)",
            fast_select=fast,
            slow_select=slow,
            all_select=f"SELECT {key_sql}, {values} FROM {src} WHERE {where}",
            conversions=[c.decision.conversion for c in cols],
            key_names=labels,
            scan=scan,
            safe=TableSql.build(schema, cautious(table), rows) if scan is not None else None,
        )


def _alias(name: str, taken: set[str]) -> str:
    """An output name for the fast select's subquery that no source column has."""
    while name.lower() in taken:
        name += "_"
    return name


# SQLite's default SQLITE_MAX_FUNCTION_ARG is 127 (1000 in newer builds).
_PRINTF_MAX_ARGS = 100


def _printf_line(fields: list[FastField]) -> str:
    """One CSV line per row: printf over groups of fields, groups joined by commas."""
    if not fields:
        return "''"
    groups = [fields[i : i + _PRINTF_MAX_ARGS] for i in range(0, len(fields), _PRINTF_MAX_ARGS)]
    parts = []
    for g in groups:
        fmt = ",".join(f.fmt for f in g).replace("'", "''")
        parts.append(f"printf('{fmt}', {', '.join(f.arg for f in g)})")
    return " || ',' || ".join(parts)


def _pgq(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class CopyJob:
    schema: str
    run_id: str
    dsn: Dsn
    open_source: Callable[[], sqlite3.Connection]
    tables: dict[str, TableSql]
    session_sql: Sequence[str] = ()
    on_chunk: Callable[[ChunkResult], None] | None = None
    results: list[ChunkResult] = field(default_factory=list)


Task = Callable[[psycopg.Connection], None]
"""Work other than a chunk that a copy worker runs on its PostgreSQL session (autocommit)."""


class WorkQueue:
    """The copy workers' work: chunks, and tasks that may arrive while chunks copy.

    Tasks go first (a table's keys and indexes start as soon as its last chunk is
    in, while other tables still copy). A worker waiting for work returns None
    only when nothing is queued and no other worker holds an item, since only
    a finishing item can queue more.
    """

    def __init__(self, chunks: Sequence[Chunk] = ()) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[Chunk] = deque(chunks)
        self._tasks: deque[Task] = deque()
        self._busy = 0
        self._stopped = False

    def put_chunks(self, chunks: Sequence[Chunk]) -> None:
        """Queue more chunks (after the ones queued)."""
        with self._cond:
            self._chunks.extend(chunks)
            self._cond.notify_all()

    def put_task(self, task: Task) -> None:
        """Queue a task; it runs before any queued chunk."""
        with self._cond:
            self._tasks.append(task)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._chunks) + len(self._tasks)

    def take(self, *, wait: bool) -> Chunk | Task | None:
        """The next item (call :meth:`done` when it is finished), or None."""
        with self._cond:
            while not self._stopped:
                if self._tasks or self._chunks:
                    self._busy += 1
                    return self._tasks.popleft() if self._tasks else self._chunks.popleft()
                if not wait or self._busy == 0:
                    return None
                self._cond.wait()
            return None

    def done(self) -> None:
        """One taken item is finished (anything it queued is already queued)."""
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def stop(self) -> None:
        """No more items for anyone (a worker failed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


def run_copy(job: CopyJob, chunks: list[Chunk], jobs: int,
             work: WorkQueue | None = None) -> list[ChunkResult]:
    """Copy ``chunks`` (and run the tasks of ``work``) with ``jobs`` workers.

    Re-raises the first worker error. ``job.on_chunk`` runs in the worker after
    the chunk committed and before the next item is taken; it may queue more
    work on ``work``.
    """
    queue = work if work is not None else WorkQueue()
    queue.put_chunks(chunks)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def finish(w: _Worker, rendered: _Rendered) -> None:
        result = w.load(rendered)
        with lock:
            job.results.append(result)
        if job.on_chunk:
            job.on_chunk(result)
        queue.done()

    def worker() -> None:
        # Each worker renders its next chunk in SQLite while PostgreSQL loads the
        # current one, as a shell pipe would (measured: rendering and loading take
        # about the same time, so without the overlap each waits for the other).
        try:
            with _Worker(job) as w, ThreadPoolExecutor(1) as ahead:
                pending: Future[_Rendered] | None = None
                while True:
                    if pending is None:
                        item = queue.take(wait=True)
                        if item is None:
                            break
                        if not isinstance(item, Chunk):
                            w.run_task(item)
                            queue.done()
                            continue
                        pending = ahead.submit(w.render, item)
                    rendered = pending.result()
                    nxt = queue.take(wait=False)
                    pending = ahead.submit(w.render, nxt) if isinstance(nxt, Chunk) else None
                    finish(w, rendered)
                    if nxt is not None and not isinstance(nxt, Chunk):
                        w.run_task(nxt)
                        queue.done()
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)
            queue.stop()

    threads = [threading.Thread(target=worker, name=f"pgshift-copy-{i}", daemon=True)
               for i in range(max(1, min(jobs, len(queue))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return job.results


class _Worker:
    def __init__(self, job: CopyJob) -> None:
        self.job = job
        self.fast_con = job.open_source()
        self.fast_con.text_factory = bytes  # CSV bytes go to COPY without a decode/encode
        self.slow_con = job.open_source()
        self.slow_con.text_factory = _text_factory
        # The loader's own connection for redoing a refused chunk: the render
        # thread is using the other two at the same time.
        self.redo_con = job.open_source()
        self.redo_con.text_factory = _text_factory
        self.pg = connect(job.dsn, application_name="pgshift")
        for stmt in job.session_sql:
            self.pg.execute(stmt)
        self.pg.commit()

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fast_con.close()
        self.slow_con.close()
        self.redo_con.close()
        self.pg.close()

    def run_task(self, task: Task) -> None:
        """A task on this worker's session, in autocommit mode (DDL, one statement each)."""
        self.pg.autocommit = True
        try:
            task(self.pg)
        finally:
            self.pg.autocommit = False

    def copy_chunk(self, chunk: Chunk) -> ChunkResult:
        """Render and load one chunk (no read-ahead)."""
        return self.load(self.render(chunk))

    def render(self, chunk: Chunk) -> _Rendered:
        """The SQLite half: the chunk's CSV and its slow-form rows."""
        started = time.perf_counter()
        ts = self.job.tables[chunk.table]
        where, params = chunk.where()
        profile: TableProfile | None = None
        try:
            row = self.fast_con.execute(ts.fast_select.replace("{where}", where),
                                        params).fetchone()
            data, suspects, total = row[:3]
            if ts.scan is not None and ts.safe is not None:
                profile = ts.scan.read(self.fast_con, total or 0, row[3:], where, params)
                if contradicts(ts.table, profile):
                    # A shortcut the plan took does not hold for this chunk: every check on.
                    data, suspects, total = self.fast_con.execute(
                        ts.safe.fast_select.replace("{where}", where), params).fetchone()
                    ts = ts.safe
            slow_rows = (self.slow_con.execute(ts.slow_select.replace("{where}", where), params)
                         .fetchall() if suspects else [])
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"reading {chunk.table} chunk {chunk.no} failed: {exc}",
                              table=chunk.table, operation="copy") from exc
        rejects: list[RejectRecord] = []
        extra = self._render(ts, slow_rows, rejects)
        return _Rendered(chunk, ts, data, total or 0, len(slow_rows), extra, rejects, started,
                         profile)

    def load(self, r: _Rendered) -> ChunkResult:
        """The PostgreSQL half: COPY, rejects and checkpoint in one transaction."""
        chunk, ts, data, extra, rejects, started = (r.chunk, r.ts, r.data, r.extra, r.rejects,
                                                    r.started)
        # Every line ends with a newline: for a one-column table a NULL row is an empty
        # line, and an empty last line without its terminator would simply vanish.
        # Written piece by piece: concatenating would copy the chunk's CSV once more
        # (measured: peak RSS 254 MiB at scale 1,000,000 with the copy, under 256).
        parts = ([] if data is None else [data, b"\n"]) + (
            ["".join(line + "\n" for line, _ in extra).encode()] if extra else [])
        nbytes = sum(len(p) for p in parts)
        loaded = r.total - r.slow_count + len(extra)
        try:
            with self.pg.transaction():
                if parts:
                    self._copy(ts, *parts)
                checkpoint.record_chunk(self.pg, self.job.run_id, chunk.table, chunk.no, loaded,
                                        nbytes, rejects, time.perf_counter() - started,
                                        _profile_json(r.profile))
            return ChunkResult(chunk.table, chunk.no, loaded, nbytes, rejected_rows(rejects),
                               time.perf_counter() - started, r.slow_count, r.profile)
        except psycopg.errors.DataError:
            pass  # PostgreSQL refused a value the fast form let through: redo slowly
        except psycopg.errors.IntegrityError:
            pass
        except psycopg.OperationalError as exc:
            raise TargetError(f"PostgreSQL failed while loading {chunk.table}: {exc}",
                              table=chunk.table, operation="copy") from exc
        return self._copy_slow(chunk, ts, started, r.profile)

    def _render(self, ts: TableSql, rows: list[tuple[Any, ...]],
                rejects: list[RejectRecord]) -> list[tuple[str, tuple[Any, ...]]]:
        """CSV lines of rows converted in Python; failing rows go to ``rejects``."""
        nkey = len(ts.key_names)
        out = []
        for row in rows:
            key, values = row[:nkey], row[nkey:]
            fields: list[str] = []
            failed: list[RejectRecord] = []
            for col, conv, value in zip(ts.table.copy_columns, ts.conversions, values,
                                        strict=True):
                try:
                    if value is None and col.name in ts.table.primary_key:
                        raise Reject("NULL in a primary-key column")
                    fields.append(convert(conv, value))
                except Reject as exc:
                    # Every bad column of the row is reported, not just the first.
                    raw, cls = raw_for_report(value)
                    failed.append(RejectRecord(ts.table.name, _key_dict(ts.key_names, key),
                                               col.name, raw, cls, str(exc), row=id(row)))
            if failed:
                rejects.extend(failed)
                continue
            out.append((",".join(fields), row))
        return out

    def _copy(self, ts: TableSql, *parts: bytes) -> None:
        with self.pg.cursor() as cur, cur.copy(ts.copy_sql) as cp:
            for part in parts:
                cp.write(part)

    def _copy_slow(self, chunk: Chunk, ts: TableSql, started: float,
                   profile: TableProfile | None) -> ChunkResult:
        where, params = chunk.where()
        rows = self.redo_con.execute(ts.all_select.replace("{where}", where), params).fetchall()
        rejects: list[RejectRecord] = []
        lines = self._render(ts, rows, rejects)
        with self.pg.transaction():
            loaded, nbytes = self._load_bisect(ts, lines, rejects)
            checkpoint.record_chunk(self.pg, self.job.run_id, chunk.table, chunk.no, loaded,
                                    nbytes, rejects, time.perf_counter() - started,
                                    _profile_json(profile))
        return ChunkResult(chunk.table, chunk.no, loaded, nbytes, rejected_rows(rejects),
                           time.perf_counter() - started, len(rows), profile)

    def _load_bisect(self, ts: TableSql, lines: list[tuple[str, tuple[Any, ...]]],
                     rejects: list[RejectRecord]) -> tuple[int, int]:
        """Load lines in savepoints, halving on failure down to single refused rows."""
        if not lines:
            return 0, 0
        payload = "".join(line + "\n" for line, _ in lines).encode()
        try:
            with self.pg.transaction():
                self._copy(ts, payload)
            return len(lines), len(payload)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            if len(lines) == 1:
                row = lines[0][1]
                nkey = len(ts.key_names)
                column = _column_of(exc)
                value = None
                if column is not None:
                    names = [c.name for c in ts.table.copy_columns]
                    if column in names:
                        value = row[nkey + names.index(column)]
                raw, cls = raw_for_report(value)
                reason = (exc.diag.message_primary or str(exc)).strip()
                # A duplicate names its constraint in the reason; the detail
                # "Key (a, b)=(1, 2) already exists." gives its columns and values.
                detail = _KEY_DETAIL.match(exc.diag.message_detail or "")
                if column is None and detail:
                    column, raw, cls = detail[1], detail[2], "key"
                    reason += f": {exc.diag.message_detail}"
                rejects.append(RejectRecord(ts.table.name, _key_dict(ts.key_names, row[:nkey]),
                                            column, raw, cls, f"PostgreSQL: {reason}",
                                            row=id(row)))
                return 0, 0
        mid = len(lines) // 2
        a = self._load_bisect(ts, lines[:mid], rejects)
        b = self._load_bisect(ts, lines[mid:], rejects)
        return a[0] + b[0], a[1] + b[1]


_KEY_DETAIL = re.compile(r"Key \((.+)\)=\((.*)\) (?:already exists|conflicts)", re.S)


def _column_of(exc: psycopg.Error) -> str | None:
    """The column PostgreSQL names in a COPY error's context, if any."""
    if exc.diag.column_name:
        return exc.diag.column_name
    context = exc.diag.context or ""
    marker = ", column "
    if marker in context:
        return context.split(marker, 1)[1].split(":", 1)[0].strip()
    return None


@dataclass
class _Rendered:
    chunk: Chunk
    ts: TableSql
    data: bytes | None
    total: int
    slow_count: int
    extra: list[tuple[str, tuple[Any, ...]]]
    rejects: list[RejectRecord]
    started: float
    profile: TableProfile | None = None


def _profile_json(profile: TableProfile | None) -> dict[str, Any] | None:
    return None if profile is None else profiles_to_json({profile.table: profile})[profile.table]


def rejected_rows(rejects: list[RejectRecord]) -> int:
    """Rows behind the reject records (a row with two bad columns has two records; two
    rows may share a key: NULL keys, keyless tables)."""
    return len({r.row if r.row is not None else repr(sorted(r.key.items()))
                for r in rejects})


def _key_dict(names: list[str], key: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, v in zip(names, key, strict=True):
        if isinstance(v, bytes):
            v = {"$hex": bytes(v).hex()}
        out[n] = v
    return out


__all__ = ["ChunkResult", "CopyJob", "PgshiftError", "RowSource", "TableSql", "Task", "WorkQueue",
           "run_copy"]
