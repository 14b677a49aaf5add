"""Storing the demo rows in SQLite fast: bulk-load pragmas, multi-row INSERTs, a generator child.

:func:`_build` writes every table of the blue schema into a private file (no journal, no fsync),
builds the secondary indexes once at the end and switches the file to WAL mode. From
``_PARALLEL_MIN_SCALE`` jobs up, a child interpreter (:func:`_produce`) generates the rows and
pickles them through a pipe while this process inserts them, and stages ``_STAGED_TABLES`` in a
side file that is copied in with SQLite's transfer optimisation. The rows are the same either way.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing, contextmanager
from itertools import chain
from pathlib import Path

from pgshift.demo.seed_rows import Row, _batches
from pgshift.demo.seed_schema import _split_schema, _table_ddl

# Below this many jobs, starting a child interpreter costs more than it saves.
_PARALLEL_MIN_SCALE = 100_000
# The progress callback fires each time a table crosses a multiple of this.
_PROGRESS_EVERY = 50_000
# Rows per multi-row INSERT. One statement per row would rebuild the ephemeral table behind
# jobs' CHECK (status IN (...)) for every row; batching also cuts the per-statement overhead.
# Kept under 999 parameters, the limit of SQLite builds older than 3.32.
_MAX_PARAMS = 999
# Page cache while building. Every job inserts its random UUID at a random spot of the PK index,
# so that index (~55 MB at 1M jobs) should stay cached while table pages stream past it.
_CACHE_KIB = 131_072
# Tables the child process stores itself, into a staging file the parent then copies with
# INSERT ... SELECT * (SQLite's transfer optimisation copies records and index entries as they
# are). This moves their inserts and index build off the parent, the busier of the two.
_STAGED_TABLES: tuple[str, ...] = ("job_history",)

_COLUMNS: dict[str, int] = {
    "users": 6,
    "user_sessions": 6,
    "jobs": 14,
    "job_history": 5,
    "tool_configs": 6,
    "rate_limits": 5,
    "app_state": 3,
    "oauth_tokens": 9,
}
_GROUP_ROWS: dict[str, int] = {table: _MAX_PARAMS // n for table, n in _COLUMNS.items()}

# (table, rows in the batch, flattened multi-row parameter tuples, rows left over). A batch with
# a row count but neither groups nor rows was stored in the staging file by the child.
Packed = tuple[str, int, list[Row], list[Row]]


def _remove_with_sidecars(path: Path, *, keep_main: bool = False) -> None:
    suffixes = ("-wal", "-shm", "-journal") if keep_main else ("", "-wal", "-shm", "-journal")
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _use_child(scale: int) -> bool:
    return scale >= _PARALLEL_MIN_SCALE and _usable_cpus() >= 2 and bool(sys.executable)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Millions of short-lived row tuples keep triggering cyclic collections that find nothing:
    # pausing the collector saves about a quarter of the generation time.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _open_for_bulk_load(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    # These files are private until renamed into place and deleted on any failure, so there is
    # nothing to protect: no journal, no fsync. WAL is switched on once the data is in.
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    con.execute("PRAGMA temp_store=MEMORY")
    con.execute(f"PRAGMA threads={min(4, _usable_cpus())}")  # parallel sorts in CREATE INDEX
    return con


def _build(
    path: Path,
    scale: int,
    seed_value: int,
    counts: dict[str, int],
    progress: Callable[[str, int, int], None] | None,
    *,
    parallel: bool,
) -> None:
    staging = Path(f"{path}.staging") if parallel else None
    con = _open_for_bulk_load(path)
    try:
        table_ddl, index_ddl = _split_schema()
        con.execute("BEGIN")
        for statement in table_ddl:
            con.execute(statement)
        with _gc_paused(), closing(_stream(seed_value, scale, staging)) as stream:
            staged = _load(con, stream, counts, progress)
        if staged:
            assert staging is not None
            con.execute("COMMIT")  # ATTACH is refused inside a transaction
            con.execute("ATTACH DATABASE ? AS staging", (str(staging),))
            con.execute("BEGIN")
            for table in staged:
                # Indexes first, on the empty table, so the copy takes the staged entries as is.
                for statement in index_ddl.pop(table, []):
                    con.execute(statement)
                con.execute(f"INSERT INTO main.{table} SELECT * FROM staging.{table}")
                copied = con.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
                if copied != counts[table]:
                    raise RuntimeError(f"{table}: staged {copied} rows, planned {counts[table]}")
        # Building secondary indexes once over sorted keys is faster and packs pages fuller than
        # maintaining them row by row; the stored DDL text is the same either way.
        for statements in index_ddl.values():
            for statement in statements:
                con.execute(statement)
        con.execute("COMMIT")
        if staged:
            con.execute("DETACH DATABASE staging")

        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL mode (journal_mode={mode})")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
        if staging is not None:
            _remove_with_sidecars(staging)
    # Closing the last connection checkpoints and deletes the WAL; make sure nothing is left.
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        raise RuntimeError(f"{wal} still holds {wal.stat().st_size} bytes after checkpoint")
    wal.unlink(missing_ok=True)


def _insert_sql(table: str) -> tuple[str, str]:
    """(multi-row INSERT of _GROUP_ROWS[table] rows, single-row INSERT) for ``table``."""
    row = f"({', '.join('?' * _COLUMNS[table])})"
    many = ", ".join([row] * _GROUP_ROWS[table])
    return f"INSERT INTO {table} VALUES {many}", f"INSERT INTO {table} VALUES {row}"


def _insert(con: sqlite3.Connection, table: str, groups: list[Row], rest: list[Row]) -> None:
    group_sql, row_sql = _insert_sql(table)
    if groups:
        con.executemany(group_sql, groups)
    if rest:
        con.executemany(row_sql, rest)


def _load(
    con: sqlite3.Connection,
    stream: Iterable[Packed],
    counts: dict[str, int],
    progress: Callable[[str, int, int], None] | None,
) -> list[str]:
    """Insert every packed batch of ``stream``; return the tables the child staged instead."""
    done = dict.fromkeys(counts, 0)
    next_report = dict.fromkeys(counts, _PROGRESS_EVERY)
    staged: list[str] = []
    for table, n_rows, groups, rest in stream:
        if progress and not done[table]:
            progress(table, 0, counts[table])
        if groups or rest:
            _insert(con, table, groups, rest)
        elif table not in staged:
            staged.append(table)
        done[table] += n_rows
        if progress and (done[table] >= next_report[table] or done[table] == counts[table]):
            progress(table, done[table], counts[table])
            next_report[table] = (done[table] // _PROGRESS_EVERY + 1) * _PROGRESS_EVERY
    if done != counts:
        raise RuntimeError(f"generated {done} rows, planned {counts}")
    return staged


# --------------------------------------------------------------------------- row streams


class _ChildUnavailable(Exception):
    """The child generator could not start; generating in-process gives the same rows."""


def _stream(seed_value: int, scale: int, staging: Path | None) -> Generator[Packed, None, None]:
    """Every table's rows as packed batches, in insertion order.

    With ``staging``, a child process generates them and stores _STAGED_TABLES in that file; if
    it cannot start, this process generates everything itself.
    """
    if staging is not None:
        child = _child_stream(seed_value, scale, staging)
        try:
            first = next(child)
        except _ChildUnavailable:
            pass
        else:
            try:
                yield first
                yield from child
            finally:
                child.close()
            return
    yield from _packed(_batches(seed_value, scale))


def _packed(batches: Iterable[tuple[str, list[Row]]]) -> Iterator[Packed]:
    for table, rows in batches:
        per = _GROUP_ROWS[table]
        whole = len(rows) - len(rows) % per
        groups = [
            tuple(chain.from_iterable(rows[start : start + per])) for start in range(0, whole, per)
        ]
        yield table, len(rows), groups, rows[whole:]


# The child gets the parent's sys.path, so it imports this very module however pgshift was found.
_CHILD_CODE = (
    "import json, sys\n"
    "sys.path[:] = json.loads(sys.argv[1])\n"
    "from pgshift.demo.seed_build import _produce\n"
    "_produce(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])\n"
)
_EOF = object()


def _child_stream(seed_value: int, scale: int, staging: Path) -> Generator[Packed, None, None]:
    """Packed batches generated by a child interpreter and pickled through its stdout.

    Generating rows costs about as much CPU as SQLite spends storing them, so a second process
    takes a large share of the wall time on two cores. A plain subprocess rather than
    multiprocessing: no fork of a possibly threaded parent, no re-import of the caller's
    ``__main__``.
    """
    argv = [sys.executable, "-c", _CHILD_CODE, json.dumps(sys.path)]
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                [*argv, str(seed_value), str(scale), str(staging)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        except OSError as exc:
            raise _ChildUnavailable(str(exc)) from exc
        assert proc.stdout is not None
        produced = 0
        try:
            while True:
                try:
                    item = pickle.load(proc.stdout)
                except EOFError:
                    item = _EOF
                if item is None:
                    break
                if item is _EOF:
                    proc.wait()
                    if not produced:
                        raise _ChildUnavailable(f"exit code {proc.returncode}")
                    stderr.seek(0)
                    tail = stderr.read()[-2000:].decode("utf-8", "replace")
                    raise RuntimeError(
                        f"row generator process died (exit code {proc.returncode}):\n{tail}"
                    )
                produced += 1
                yield item
            if proc.wait() != 0:
                raise RuntimeError(f"row generator process exited with {proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def _produce(seed_value: int, scale: int, staging: str) -> None:
    """Child entry point: store _STAGED_TABLES in ``staging``, pickle the rest to stdout.

    A writer thread drains a small queue of pickles, so generating batch k+1 overlaps with the
    parent reading and inserting batch k instead of waiting for the pipe to empty. ``None``
    marks the end, sent only once the staging file is complete and closed.
    """
    gc.disable()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the pickle stream
    blobs: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def write() -> None:
        try:
            while (blob := blobs.get()) is not None:
                out.write(blob)  # one blocking write(2) per blob: the GIL is free meanwhile
                out.flush()
        except BaseException:
            # The parent is gone (broken pipe): stop at once rather than block on a full queue.
            os._exit(1)

    writer = threading.Thread(target=write, name="pgshift-seed-writer", daemon=True)
    writer.start()
    con = _open_for_bulk_load(Path(staging))
    try:
        con.execute("BEGIN")
        for table in _STAGED_TABLES:
            con.execute(_table_ddl(table))
        for item in _packed(_batches(seed_value, scale)):
            table, n_rows, groups, rest = item
            if table in _STAGED_TABLES:
                _insert(con, table, groups, rest)
                item = (table, n_rows, [], [])
            blobs.put(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        indexes = _split_schema()[1]
        for table in _STAGED_TABLES:
            for statement in indexes.get(table, []):
                con.execute(statement)
        con.execute("COMMIT")
    finally:
        con.close()
    blobs.put(pickle.dumps(None))
    blobs.put(None)
    writer.join()
