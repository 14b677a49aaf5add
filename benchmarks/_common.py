"""Shared helpers for the benchmark scripts in this directory.

Everything a benchmark needs besides its own contestants: the durable embedded PostgreSQL,
a cached seeded SQLite file, fresh databases, running a command while measuring its wall time
and the peak memory of its whole process tree, counting what landed in PostgreSQL, describing
the machine, and rendering result tables as text or Markdown.

Passwords never reach a command line or a printed line: child processes get ``PGPASSWORD`` in
their environment and a DSN without one (:func:`libpq_env`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import conninfo, sql

from pgshift.dsn import Dsn, connect
from pgshift.embedded_pg import EmbeddedPostgres

__all__ = [
    "REPO_ROOT",
    "Measured",
    "OtherLoad",
    "SchemaShape",
    "TreeRssSampler",
    "checkpoint",
    "count_rows",
    "fresh_database",
    "libpq_env",
    "log",
    "machine_info",
    "markdown_table",
    "median",
    "mib",
    "pgshift_exe",
    "run_measured",
    "scratch_dir",
    "seeded_sqlite",
    "server_pid",
    "source_shape",
    "sqlite_row_counts",
    "sqlite_tables",
    "start_server",
    "target_shape",
    "text_table",
    "wait_cpu",
    "wait_for_quiet",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this script belongs to."""

_T0 = time.perf_counter()


# --------------------------------------------------------------------------- output


def log(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the script started."""
    print(f"[{time.perf_counter() - _T0:8.1f}s] {message}", file=sys.stderr, flush=True)


def mib(n_bytes: int | float | None) -> str:
    """``n_bytes`` in MiB with one decimal (``-`` for None)."""
    return "-" if n_bytes is None else f"{n_bytes / 2**20:.1f}"


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain fixed-width table; numeric-looking cells are right-aligned."""
    body = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=True):
            numeric = bool(re.fullmatch(r"[-+]?[\d.,]+x?|-", cell))
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells are escaped)."""

    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- processes


def pgshift_exe() -> str:
    """The ``pgshift`` console script of the interpreter running this benchmark."""
    beside = Path(sys.executable).parent / "pgshift"
    if beside.is_file():
        return str(beside)
    found = shutil.which("pgshift")
    if found is None:
        raise SystemExit("pgshift console script not found (pip install -e . in the venv)")
    return found


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``children`` file; [] once it is gone)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes; (0, 0) once it is gone or has no memory map."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return rss, hwm


class TreeRssSampler:
    """Polls the memory of a process tree in a background thread; keeps the peaks.

    ``root`` is the tree's root pid; with ``include_root=False`` only its descendants count
    (``TreeRssSampler(os.getpid(), include_root=False)`` watches the subprocesses this script
    starts itself). Two figures are kept:

    * ``peak_sum``: the largest sum of VmRSS over the tree at one instant (pages shared
      between processes count more than once, so for a multi-process tree it is an upper
      bound);
    * ``peak_single``: the largest VmHWM (the kernel's own high-water mark, exact since the
      process's ``exec``) of any process, as last seen alive.

    ``peak`` is the larger of the two. ``wait4``'s ``ru_maxrss`` is deliberately not used: on
    Linux ``exec`` carries the pre-exec high-water mark over, and ``subprocess`` forks with
    ``vfork``, so every child would report at least this (large, seeding) Python's RSS.
    """

    def __init__(self, root: int, *, include_root: bool = True, interval: float = 0.05) -> None:
        self.root, self.include_root, self.interval = root, include_root, interval
        self.peak_sum = 0
        self.hwm: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    @property
    def peak_single(self) -> int:
        """The largest VmHWM seen for one process of the tree, bytes."""
        return max(self.hwm.values(), default=0)

    @property
    def peak(self) -> int:
        """max(peak_sum, peak_single), bytes."""
        return max(self.peak_sum, self.peak_single)

    def sample(self) -> int:
        """One reading of the tree's summed RSS (folded into the peaks)."""
        total, todo, seen = 0, [self.root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if pid != self.root or self.include_root:
                rss, hwm = _memory(pid)
                total += rss
                if hwm > self.hwm.get(pid, 0):
                    self.hwm[pid] = hwm
            todo.extend(_children(pid))
        self.peak_sum = max(self.peak_sum, total)
        self.samples += 1
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeRssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    """One measured command: exit status, wall time, peak memory and where its output went."""

    argv: list[str]
    returncode: int
    seconds: float
    peak_rss: int
    """max(summed VmRSS of the tree as polled, largest VmHWM of one process), bytes."""
    peak_single: int
    """Largest VmHWM of one process of the tree, bytes."""
    cpu_seconds: float
    """User + system CPU of the process and its reaped descendants."""
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        """What the command printed on stdout."""
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        """What the command printed on stderr."""
        return self.stderr_path.read_text(errors="replace")


def wait_cpu(proc: subprocess.Popen[Any]) -> tuple[int, float]:
    """Reap ``proc`` with ``wait4``: (exit code, user+system CPU seconds of its tree).

    ``proc.returncode`` is set as ``Popen.wait`` would. If the wait is interrupted (Ctrl-C),
    ``proc`` is terminated (then killed) and reaped before the exception propagates, so no
    contestant outlives the benchmark.
    """
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        _stop(proc)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate ``proc`` (kill it after ``grace`` seconds) and reap it."""
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except (ProcessLookupError, ChildProcessError):
        pass


def run_measured(
    argv: Sequence[str],
    *,
    out_dir: Path,
    label: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> Measured:
    """Run ``argv`` to completion; measure wall time, CPU time and peak RSS of its tree.

    stdout/stderr go to ``out_dir/<label>.stdout|.stderr`` (files, not pipes: a chatty
    command can never block on a full pipe, and reading them costs nothing during the run).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = out_dir / f"{label}.stdout", out_dir / f"{label}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, stdin=stdin,
                                env=dict(env) if env is not None else None, cwd=cwd)
        with TreeRssSampler(proc.pid) as sampler:
            code, cpu = wait_cpu(proc)
        seconds = time.perf_counter() - started
    return Measured(list(argv), code, seconds, sampler.peak, sampler.peak_single, cpu,
                    out_path, err_path)


# --------------------------------------------------------------------------- CPU noise

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (idle and iowait excluded)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / _CLK_TCK


def _tree_cpu(root: int) -> float:
    """CPU seconds of the live tree under ``root``, including children it has reaped.

    Per process: utime + stime + cutime + cstime. A child that exits and is reaped between
    two readings moves from its own counters into its parent's cutime/cstime: no loss.
    """
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                after_comm = fh.read().rsplit(b")", 1)[1].split()
            total += sum(int(v) for v in after_comm[11:15])  # fields 14-17 of stat(5)
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(_children(pid))
    return total / _CLK_TCK


class OtherLoad:
    """How busy the machine was with *other* work while a measurement ran.

    ``other = machine busy CPU - this script's tree (contestants included) - the PostgreSQL
    server's tree``, over the interval, as a fraction of the machine's capacity
    (``nproc x wall``). 0.0 means nobody else competed for the CPU; on a shared machine a
    high value marks the timing as noisy.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.fraction = 0.0
        self._start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _reading(self) -> tuple[float, float, float]:
        ours = _tree_cpu(os.getpid()) + (_tree_cpu(self.server_pid) if self.server_pid else 0.0)
        return time.perf_counter(), _machine_busy(), ours

    def __enter__(self) -> OtherLoad:
        self._start = self._reading()
        return self

    def __exit__(self, *exc: object) -> None:
        t1, busy1, ours1 = self._reading()
        t0, busy0, ours0 = self._start
        capacity = (os.cpu_count() or 1) * max(t1 - t0, 1e-6)
        self.fraction = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / capacity


def wait_for_quiet(server_pid: int | None, *, max_other: float = 0.2, timeout: float = 120.0,
                   probe: float = 2.0) -> float:
    """Wait until other processes use less than ``max_other`` of the CPU (probes of ``probe`` s).

    Gives up after ``timeout`` seconds and returns the last reading either way.
    """
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        with OtherLoad(server_pid) as load:
            time.sleep(probe)
        if load.fraction < max_other or time.monotonic() >= deadline:
            if waited:
                log(f"other load now {load.fraction:.0%} of the CPU")
            return load.fraction
        if not waited:
            log(f"machine busy ({load.fraction:.0%} of the CPU used by other processes): "
                f"waiting up to {timeout:.0f} s for it to calm down")
            waited = True


def server_pid(datadir: Path) -> int | None:
    """The postmaster's pid from ``datadir/postmaster.pid`` (None if not running)."""
    try:
        return int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------- PostgreSQL


# Locks held for the life of this process, one per data directory in use (see start_server).
_LOCKS: dict[Path, int] = {}


def _lock_datadir(datadir: Path) -> None:
    """Take ``<datadir>.lock`` (flock) for this process; exit if another process holds it."""
    path = datadir.absolute().with_name(datadir.name + ".lock")
    if path in _LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SystemExit(f"{datadir} is in use by another benchmark (pid {holder}); "
                         "wait for it or pass another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[path] = fd


def start_server(datadir: Path, *, durable: bool = True) -> EmbeddedPostgres:
    """Start the embedded PostgreSQL in ``datadir`` (created on first use).

    The data directory is locked for this process (``<datadir>.lock``), so two benchmarks
    sharing a workdir fail fast instead of stopping each other's server. A server still
    running without a lock holder was left by an interrupted run: it is stopped first (it was
    started with another random password, which a fresh instance could not adopt).
    """
    _lock_datadir(datadir)
    server = EmbeddedPostgres(datadir, durable=durable)
    if server.is_running():
        log(f"stopping a server left running in {datadir} by an interrupted run")
        server.stop()
    server.start()
    return server


def fresh_database(server: EmbeddedPostgres, name: str) -> Dsn:
    """Drop ``name`` if it exists and create it empty; return its DSN."""
    server.drop_database(name)
    return server.create_database(name)


def checkpoint(server: EmbeddedPostgres) -> None:
    """Flush dirty buffers so the next contestant does not pay for the previous one's writes."""
    with connect(server.dsn(), autocommit=True, application_name="pgshift-bench") as conn:
        conn.execute("CHECKPOINT")


def libpq_env(dsn: Dsn) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment with ``PGPASSWORD``) for a child process.

    Inherited ``PG*`` variables are removed so only the DSN decides where the child connects.
    """
    params = conninfo.conninfo_to_dict(dsn.conninfo)
    password = str(params.pop("password", "") or "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password:
        env["PGPASSWORD"] = password
    return conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}), env


def count_rows(dsn: Dsn, tables: Iterable[str]) -> dict[str, int | None]:
    """Rows per table in the target, found in whichever user schema holds it (None: absent).

    Tools choose their own target schema (pgshift: ``public`` by default, pgloader: the
    database's default), so the table is looked up by name outside the system schemas.
    """
    counts: dict[str, int | None] = {}
    with connect(dsn, autocommit=True, application_name="pgshift-bench") as conn:
        for table in tables:
            row = conn.execute(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s AND c.relkind IN ('r', 'p') AND n.nspname NOT IN "
                "('pg_catalog', 'information_schema', 'pgshift') ORDER BY n.nspname = 'public' "
                "DESC LIMIT 1",
                (table,),
            ).fetchone()
            if row is None:
                counts[table] = None
                continue
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(row[0]), sql.Identifier(table))
            result = conn.execute(query).fetchone()
            counts[table] = int(result[0]) if result else None
    return counts


@dataclass
class SchemaShape:
    """How much of a schema's integrity survived: counts of each kind of object."""

    not_null: int = 0
    """Columns that refuse NULL (primary-key columns included)."""
    primary_keys: int = 0
    uniques: int = 0
    """UNIQUE constraints and unique indexes, primary keys excluded."""
    indexes: int = 0
    """Non-unique indexes."""
    partial: int = 0
    """Indexes with a WHERE clause."""
    foreign_keys: int = 0
    checks: int = 0
    not_valid: int = 0
    """FOREIGN KEY / CHECK constraints left NOT VALID (PostgreSQL only)."""

    def as_dict(self) -> dict[str, int]:
        """The counts, for JSON."""
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}

    def losses(self, source: SchemaShape) -> list[str]:
        """What ``self`` (a target) lacks compared with ``source``, e.g. ``["27 NOT NULL"]``."""
        labels = {
            "not_null": "NOT NULL",
            "primary_keys": "PK",
            "uniques": "UNIQUE",
            "indexes": "index",
            "partial": "partial-index WHERE",
            "foreign_keys": "FK",
            "checks": "CHECK",
        }
        out = []
        for key, label in labels.items():
            missing = getattr(source, key) - getattr(self, key)
            if missing > 0:
                out.append(f"{missing}/{getattr(source, key)} {label}")
        if self.not_valid:
            out.append(f"{self.not_valid} NOT VALID")
        return out


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_shape(path: Path, tables: Iterable[str]) -> SchemaShape:
    """The integrity objects of SQLite tables (CHECKs are counted in the CREATE TABLE text)."""
    shape = SchemaShape()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        for table in tables:
            info = con.execute(f"PRAGMA table_info({_q(table)})").fetchall()
            shape.not_null += sum(1 for c in info if c[3] or c[5])
            shape.primary_keys += 1 if any(c[5] for c in info) else 0
            for _seq, _name, unique, origin, partial in con.execute(
                    f"PRAGMA index_list({_q(table)})"):
                if origin == "pk":
                    continue
                if unique:
                    shape.uniques += 1
                else:
                    shape.indexes += 1
                shape.partial += 1 if partial else 0
            shape.foreign_keys += len(
                {r[0] for r in con.execute(f"PRAGMA foreign_key_list({_q(table)})")})
            row = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)).fetchone()
            shape.checks += len(re.findall(r"\bCHECK\s*\(", row[0] or "", re.I)) if row else 0
    return shape


def target_shape(dsn: Dsn, tables: Iterable[str]) -> SchemaShape:
    """The same counts for the tables of that name in the target's user schemas."""
    names = list(tables)
    shape = SchemaShape()
    rel = ("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
           "WHERE c.relname = ANY(%(t)s) AND c.relkind IN ('r', 'p') "
           "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgshift')")
    with connect(dsn, autocommit=True, application_name="pgshift-bench") as conn:
        one = conn.execute(
            f"SELECT count(*) FROM pg_attribute WHERE attrelid IN ({rel}) AND attnum > 0 "
            "AND NOT attisdropped AND attnotnull", {"t": names}).fetchone()
        shape.not_null = int(one[0]) if one else 0
        for primary, unique, partial, n in conn.execute(
                f"SELECT indisprimary, indisunique, indpred IS NOT NULL, count(*) FROM pg_index "
                f"WHERE indrelid IN ({rel}) GROUP BY 1, 2, 3", {"t": names}):
            if primary:
                shape.primary_keys += n
            elif unique:
                shape.uniques += n
            else:
                shape.indexes += n
            if partial:
                shape.partial += n
        for contype, validated, n in conn.execute(
                f"SELECT contype, convalidated, count(*) FROM pg_constraint "
                f"WHERE conrelid IN ({rel}) AND contype IN ('f', 'c') GROUP BY 1, 2",
                {"t": names}):
            if contype == "f":
                shape.foreign_keys += n
            else:
                shape.checks += n
            if not validated:
                shape.not_valid += n
    return shape


# --------------------------------------------------------------------------- SQLite


def sqlite_tables(path: Path) -> list[str]:
    """The user tables of a SQLite file, in catalog order."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        return [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid")]


def sqlite_row_counts(path: Path) -> dict[str, int]:
    """Rows per user table of a SQLite file."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        return {t: int(con.execute(f"SELECT count(*) FROM {_q(t)}").fetchone()[0])
                for t in sqlite_tables(path)}


def seeded_sqlite(workdir: Path, scale: int) -> tuple[Path, dict[str, int]]:
    """``workdir/hyperpage-<scale>.db``, seeded on first use and reused afterwards.

    A cached file is trusted only if its row counts match what ``seed`` writes for ``scale``.
    Returns the path and its rows per table.
    """
    from pgshift.demo.seed import row_counts, seed

    path = workdir / f"hyperpage-{scale}.db"
    expected = row_counts(scale)
    if path.is_file():
        try:
            if sqlite_row_counts(path) == expected:
                log(f"reusing seeded {path} ({mib(path.stat().st_size)} MiB)")
                return path, expected
        except sqlite3.Error:
            pass
        log(f"cached {path} does not match scale {scale}: seeding again")
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"seeding {path} at scale {scale:,} ({sum(expected.values()):,} rows)")
    result = seed(path, scale, overwrite=True)
    log(f"seeded in {result.seconds:.1f}s, {mib(result.bytes)} MiB")
    return path, sqlite_row_counts(path)


# --------------------------------------------------------------------------- machine


def _mem_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _tool_version(argv: list[str], package: str | None = None) -> str | None:
    """The first version number ``argv`` prints, plus the Debian package's version if any."""
    if shutil.which(argv[0]) is None:
        return None
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = re.search(r"\d+\.\d+(?:\.\d+)?\S*", proc.stdout or proc.stderr)
    version = found.group(0).strip('"') if found else "?"
    if package and shutil.which("dpkg-query"):
        deb = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, check=False).stdout.strip()
        if deb and not deb.startswith(version):
            version += f" (Debian package {deb})"
    return version


def machine_info(server: EmbeddedPostgres) -> dict[str, Any]:
    """Date, CPUs, RAM, disk, OS and server/tool versions, for the record."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "ram_gib": round(_mem_total() / 2**30, 1),
        "os": _os_name(),
        "postgres": server.version,
        "postgres_durable": server.durable,
        "python": platform.python_version(),
        "pgshift_rev": _git_revision(),
        "sqlite3_cli": _tool_version(["sqlite3", "--version"]),
        "psql": _tool_version(["psql", "--version"]),
        "pgloader": _tool_version(["pgloader", "--version"], "pgloader"),
    }


def _git_revision() -> str | None:
    """``git rev-parse --short HEAD`` of this checkout, ``+dirty`` if ``src/`` has changes."""
    if shutil.which("git") is None:
        return None
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    if head.returncode:
        return None
    status = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO_ROOT), "status",
                             "--porcelain", "--", "src"],
                            capture_output=True, text=True, check=False)
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary directory under ``parent``, removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
