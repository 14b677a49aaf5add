"""Benchmark: pgshift migrate vs pgloader vs the raw ``sqlite3 | psql`` pipe.

One run seeds (or reuses) a hyperpage-shaped SQLite database of ``--scale`` jobs, starts one
durable embedded PostgreSQL (fsync on) and moves the same file into a fresh database of that
server three ways:

1. ``pgshift migrate SQLITE DSN --jobs J --drop --json`` (the console script, as a user runs it);
2. ``pgloader sqlite:///SQLITE postgresql://...`` with its defaults, when installed;
3. the raw pipe: per table ``sqlite3 -csv DB "SELECT ..." | psql -c "COPY t FROM STDIN"``,
   ``--jobs`` pipelines at a time (largest tables first) into bare tables (columns and
   NOT NULL only), then the same primary keys, UNIQUEs and indexes pgshift builds, again
   ``--jobs`` tables at a time. No FOREIGN KEY / CHECK: it is the floor, not a migration.

For each it records wall time, the peak RSS of the tool's process tree, the rows that landed
in PostgreSQL and what integrity survived (NOT NULL, keys, indexes, FKs, CHECKs), prints a
comparison table and checks the targets: pgshift wall <= 1.2x raw pipe, pgshift < 0.5x
pgloader, pgshift peak RSS < 256 MiB.

Usage (from the repository root)::

    .venv/bin/python benchmarks/migrate.py --scale 1000000
    .venv/bin/python benchmarks/migrate.py --scale 2000000 --only pgshift
    .venv/bin/python benchmarks/migrate.py --scale 100000 --runs 3 --markdown docs/bench.md
    .venv/bin/python benchmarks/migrate.py --scale 1000000 --runs 3 --baseline-src ../main --double

``--baseline-src DIR`` adds a contestant: the same console script running the pgshift package
of another checkout (``PYTHONPATH=DIR/src``), alternating with this one, so a change is
measured before/after in one invocation on a shared machine. ``--double`` runs pgshift once
more at twice the scale and checks that its peak RSS stays flat (within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from psycopg import conninfo

from _common import (
    OtherLoad,
    SchemaShape,
    TreeRssSampler,
    checkpoint,
    count_rows,
    fresh_database,
    libpq_env,
    log,
    machine_info,
    markdown_table,
    median,
    mib,
    pgshift_exe,
    run_measured,
    scratch_dir,
    seeded_sqlite,
    server_pid,
    source_shape,
    sqlite_tables,
    start_server,
    target_shape,
    text_table,
    wait_cpu,
    wait_for_quiet,
)
from pgshift.dsn import Dsn
from pgshift.embedded_pg import EmbeddedPostgres

CONTESTANTS: tuple[str, ...] = ("pgshift", "baseline", "pgloader", "raw")
"""Contestant keys, in the order they run within a round."""

TARGET_VS_RAW = 1.2
TARGET_VS_PGLOADER = 0.5
TARGET_RSS_MIB = 256
RSS_GROWTH = 0.10
"""Peak RSS at twice the scale may exceed the peak at the scale by this share ("flat")."""
NOISY_LOAD = 0.10
"""Share of the CPU taken by other processes above which a run is flagged as noisy."""

HEADERS = ("tool", "wall s", "vs raw pipe", "peak RSS MiB", "rows loaded", "notes")

_SYSTEM_SQLITE3 = "/usr/bin/sqlite3"
_SYSTEM_PSQL = "/usr/bin/psql"
_ERROR_LINE = re.compile(r"\b(ERROR|FATAL|KABOOM|Heap exhausted|WARNING)\b")


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    """One measured attempt of one contestant."""

    seconds: float
    peak_rss: int
    cpu_seconds: float
    rows: int | None
    ok: bool
    notes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    shape: dict[str, int] = field(default_factory=dict)
    other_load: float = 0.0
    """CPU share other processes took during the run (see ``_common.OtherLoad``)."""


@dataclass
class Contestant:
    """A contestant's label and its runs (empty when it did not run, with ``status`` saying why)."""

    key: str
    label: str
    status: str = "ok"
    runs: list[Run] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        """Whether at least one run completed."""
        return bool(self.runs)

    @property
    def wall(self) -> float | None:
        """Median wall seconds over the runs (None if it did not run)."""
        return median([r.seconds for r in self.runs]) if self.runs else None

    @property
    def peak_rss(self) -> int | None:
        """Largest peak RSS over the runs, bytes."""
        return max(r.peak_rss for r in self.runs) if self.runs else None

    @property
    def ok(self) -> bool:
        """Ran, every run succeeded with the right row counts, and no benchmark error."""
        return self.status == "ok" and self.ran and all(r.ok for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """Everything measured, for ``--json``."""
        return {
            "key": self.key,
            "label": self.label,
            "status": self.status,
            "ok": self.ok,
            "wall_seconds": _round(self.wall),
            "peak_rss_bytes": self.peak_rss,
            "runs": [_run_dict(r) for r in self.runs],
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Bench:
    """Everything the contestants share."""

    server: EmbeddedPostgres
    sqlite: Path
    workdir: Path
    logs: Path
    jobs: int
    source_rows: dict[str, int]
    source: SchemaShape
    quiet_timeout: float = 120.0

    @property
    def tables(self) -> list[str]:
        """The source's tables."""
        return list(self.source_rows)

    @property
    def total_rows(self) -> int:
        """Rows in the source, all tables."""
        return sum(self.source_rows.values())


# --------------------------------------------------------------------------- helpers


def _tail(text: str, lines: int = 3, width: int = 200) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[:width]


def _redact(text: str, bench: Bench) -> str:
    return text.replace(bench.server.password, "***") if bench.server.password else text


def _check_target(bench: Bench, dsn: Dsn, run: Run, *, by_design: Sequence[str] = ()) -> None:
    """Count rows and integrity objects in the target; note anything missing.

    ``by_design`` names :class:`SchemaShape` fields whose absence is expected (not noted).
    """
    counts = count_rows(dsn, bench.tables)
    run.rows = sum(n for n in counts.values() if n is not None)
    absent = [t for t, n in counts.items() if n is None]
    short = {t: bench.source_rows[t] - n for t, n in counts.items()
             if n is not None and n != bench.source_rows[t]}
    if absent:
        run.ok = False
        run.notes.append(f"tables missing: {', '.join(absent)}")
    if short:
        run.ok = False
        run.notes.append("row mismatch: " + ", ".join(f"{t} {-d:+,}" for t, d in short.items()))
    shape = target_shape(dsn, bench.tables)
    run.shape = shape.as_dict()
    expected = SchemaShape(**{**bench.source.as_dict(), **{k: 0 for k in by_design}})
    losses = shape.losses(expected)
    if losses:
        run.notes.append("lost " + ", ".join(losses))


def _measure(bench: Bench, name: str, fn: Callable[[Dsn], Run],
             by_design: Sequence[str] = ()) -> Run:
    """Give ``fn`` a fresh database (after a CHECKPOINT), check the result, drop it."""
    dbname = f"bench_{name}"
    dsn = fresh_database(bench.server, dbname)
    checkpoint(bench.server)
    spid = server_pid(bench.server.datadir)
    if bench.quiet_timeout > 0:
        wait_for_quiet(spid, max_other=NOISY_LOAD, timeout=bench.quiet_timeout)
    try:
        with OtherLoad(spid) as load:
            run = fn(dsn)
        run.other_load = load.fraction
        _check_target(bench, dsn, run, by_design=by_design)
    finally:
        bench.server.drop_database(dbname)
    return run


# --------------------------------------------------------------------------- pgshift


def run_pgshift(bench: Bench, dsn: Dsn, label: str, src: Path | None = None,
                sqlite: Path | None = None) -> Run:
    """``pgshift migrate SQLITE DSN --jobs J --drop --json`` as a subprocess.

    ``src``: run the pgshift package in that source tree instead (``--baseline-src``: the
    same console script with ``PYTHONPATH`` pointing there, so both revisions run in one
    invocation, alternating). ``sqlite``: another file (the doubled scale).
    """
    target, env = libpq_env(dsn)
    if src is not None:
        env = {**env, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    with scratch_dir(bench.workdir, "pgshift-state-") as state:
        argv = [pgshift_exe(), "migrate", str(sqlite or bench.sqlite), target, "--jobs",
                str(bench.jobs), "--drop", "--json", "--state-dir", str(state)]
        m = run_measured(argv, out_dir=bench.logs, label=label, env=env, cwd=state)
    run = Run(m.seconds, m.peak_rss, m.cpu_seconds, None, m.returncode == 0)
    if m.returncode != 0:
        run.notes.append(f"exit {m.returncode}: {_redact(_tail(m.stderr), bench)}")
    try:
        report = json.loads(m.stdout)
    except json.JSONDecodeError:
        run.ok = False
        run.notes.append("no JSON on stdout")
        return run
    run.steps = list(report.get("steps") or [])
    reported = report.get("rows")
    if sqlite is None and reported != bench.total_rows:
        run.ok = False
        run.notes.append(f"--json rows {reported} != seeded {bench.total_rows:,}")
    if report.get("rejects"):
        run.notes.append(f"{report['rejects']} rejects")
    if report.get("violations"):
        run.notes.append(f"{len(report['violations'])} violations")
    return run


# --------------------------------------------------------------------------- pgloader


def run_pgloader(bench: Bench, dsn: Dsn, label: str) -> Run:
    """``pgloader sqlite:///SQLITE postgresql://user@host:port/db`` (password via PGPASSWORD)."""
    target, env = libpq_env(dsn)
    params = conninfo.conninfo_to_dict(target)
    uri = (f"postgresql://{params['user']}@{params['host']}:{params['port']}/"
           f"{params['dbname']}")
    with scratch_dir(bench.workdir, "pgloader-") as root:
        argv = ["pgloader", "--root-dir", str(root), f"sqlite://{bench.sqlite.resolve()}", uri]
        m = run_measured(argv, out_dir=bench.logs, label=label, env=env, cwd=root)
    run = Run(m.seconds, m.peak_rss, m.cpu_seconds, None, m.returncode == 0)
    if m.returncode != 0:
        run.notes.append(f"exit {m.returncode}")
    output = _redact(m.stdout + "\n" + m.stderr, bench)
    problems = [ln.strip() for ln in output.splitlines() if _ERROR_LINE.search(ln)]
    if problems:
        first = re.sub(r"^\S+Z\s+", "", problems[0])[:160]
        run.notes.append(f"{len(problems)} ERROR/WARNING line(s), first: {first}")
    if m.returncode != 0 and not problems:
        run.notes.append(_tail(output))
    return run


# --------------------------------------------------------------------------- raw pipe


_AFFINITY_TYPES = (("INT", "bigint"), ("CHAR", "text"), ("CLOB", "text"), ("TEXT", "text"),
                   ("BLOB", "bytea"), ("REAL", "double precision"),
                   ("FLOA", "double precision"), ("DOUB", "double precision"))


def _pg_type(declared: str) -> str:
    """SQLite's affinity rules, mapped: INTEGER->bigint, TEXT->text, REAL->double, BLOB->bytea."""
    upper = declared.upper()
    if not upper:
        return "bytea"
    for marker, pg in _AFFINITY_TYPES:
        if marker in upper:
            return pg
    return "numeric"


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class RawTable:
    """One table of the raw pipe: its bare DDL, its SELECT and COPY, its keys and indexes."""

    name: str
    rows: int
    create: str
    select: str
    copy: str
    post_load: list[str] = field(default_factory=list)


def raw_tables(bench: Bench) -> list[RawTable]:
    """Bare CREATE TABLEs from ``PRAGMA table_info`` and keys/indexes, largest tables first.

    Keys and indexes are pgshift's own statements (``--dry-run --json``: plan.tables[]
    .post_load minus FOREIGN KEY / CHECK), so both build the same structures; should the
    dry run fail, they are derived from the SQLite catalog instead.
    """
    post_load = _plan_post_load(bench) or _sqlite_post_load(bench.sqlite, bench.tables)
    out = []
    with closing(sqlite3.connect(f"file:{bench.sqlite}?mode=ro", uri=True)) as con:
        for table in bench.tables:
            info = con.execute(f"PRAGMA table_info({_qi(table)})").fetchall()
            pk_cols = [c for c in info if c[5]]
            cols, selects = [], []
            for _cid, name, declared, notnull, _default, pk in info:
                pg = _pg_type(declared or "")
                rowid_alias = pk and len(pk_cols) == 1 and pg == "bigint"
                nn = " NOT NULL" if notnull or rowid_alias else ""
                cols.append(f"    {_qi(name)} {pg}{nn}")
                # sqlite3 -csv prints BLOBs raw; bytea wants its hex form.
                selects.append(f"'\\x' || hex({_qi(name)})" if pg == "bytea" else _qi(name))
            qualified = f'"public".{_qi(table)}'
            out.append(RawTable(
                table,
                bench.source_rows[table],
                f"CREATE TABLE {qualified} (\n" + ",\n".join(cols) + "\n)",
                f"SELECT {', '.join(selects)} FROM {_qi(table)}",
                f"COPY {qualified} ({', '.join(_qi(c[1]) for c in info)}) "
                "FROM STDIN (FORMAT csv)",
                post_load.get(table, []),
            ))
    return sorted(out, key=lambda t: -t.rows)


def _keys_only(statements: Sequence[str]) -> list[str]:
    return [s for s in statements if " FOREIGN KEY " not in s and " CHECK (" not in s]


def _plan_post_load(bench: Bench) -> dict[str, list[str]]:
    """pgshift's post-load statements per table from a dry run ({} if the dry run fails)."""
    with scratch_dir(bench.workdir, "plan-") as state:
        proc = subprocess.run(
            [pgshift_exe(), "migrate", str(bench.sqlite), "host=127.0.0.1 dbname=unused",
             "--dry-run", "--json", "--jobs", str(bench.jobs), "--state-dir", str(state)],
            capture_output=True, text=True, check=False, cwd=state)
    try:
        plan = json.loads(proc.stdout)["plan"]
        return {t["name"]: _keys_only(t["post_load"]) for t in plan["tables"]}
    except (json.JSONDecodeError, KeyError, TypeError):
        log(f"pgshift --dry-run failed (exit {proc.returncode}): {_tail(proc.stderr)}; "
            "raw pipe takes keys and indexes from the SQLite catalog")
        return {}


def _sqlite_post_load(path: Path, tables: Sequence[str]) -> dict[str, list[str]]:
    """PRIMARY KEY, UNIQUE and CREATE INDEX statements read from the SQLite catalog."""
    out: dict[str, list[str]] = {}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        for table in tables:
            qualified = f'"public".{_qi(table)}'
            stmts = []
            info = con.execute(f"PRAGMA table_info({_qi(table)})").fetchall()
            pk = [c[1] for c in sorted((c for c in info if c[5]), key=lambda c: c[5])]
            if pk:
                stmts.append(f"ALTER TABLE {qualified} ADD PRIMARY KEY "
                             f"({', '.join(map(_qi, pk))})")
            for _seq, name, _unique, origin, _partial in con.execute(
                    f"PRAGMA index_list({_qi(table)})"):
                if origin == "u":
                    cols = [r[2] for r in con.execute(f"PRAGMA index_info({_qi(name)})")]
                    stmts.append(f"ALTER TABLE {qualified} ADD UNIQUE "
                                 f"({', '.join(map(_qi, cols))})")
                elif origin == "c":
                    row = con.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                                      (name,)).fetchone()
                    if row and row[0]:
                        stmts.append(row[0])
            out[table] = stmts
    return out


def _psql(conninfo: str, *commands: str) -> list[str]:
    args = [_SYSTEM_PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    for command in commands:
        args += ["-c", command]
    return args


@dataclass
class _Stage:
    """Bookkeeping shared by the raw pipe's worker threads."""

    cpu: float = 0.0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cpu: float, error: str | None = None) -> None:
        with self.lock:
            self.cpu += cpu
            if error:
                self.errors.append(error)


def _copy_one(table: RawTable, conninfo: str, env: dict[str, str], stage: _Stage,
              sqlite: Path, logs: Path) -> None:
    """``sqlite3 -csv DB SELECT | psql -c COPY`` for one table."""
    err_path = logs / f"raw-copy-{table.name}.stderr"
    with err_path.open("wb") as err:
        reader = subprocess.Popen(
            [_SYSTEM_SQLITE3, "-init", "/dev/null", "-batch", "-csv", "-noheader",
             "-readonly", str(sqlite), table.select],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert reader.stdout is not None
        try:
            writer = subprocess.Popen(_psql(conninfo, table.copy), stdin=reader.stdout,
                                      stdout=subprocess.DEVNULL, stderr=err, env=env)
        except BaseException:
            reader.kill()
            reader.wait()
            raise
        finally:
            reader.stdout.close()  # the writer holds the read end now
        try:
            w_code, w_cpu = wait_cpu(writer)
        finally:
            r_code, r_cpu = wait_cpu(reader)
    error = None
    if w_code or r_code:
        error = (f"{table.name}: sqlite3 exit {r_code}, psql exit {w_code}: "
                 f"{_tail(err_path.read_text(errors='replace'), 2)}")
    stage.add(w_cpu + r_cpu, error)


def _keys_one(table: RawTable, conninfo: str, env: dict[str, str], stage: _Stage,
              logs: Path) -> None:
    """One table's keys and indexes, in order, in one psql."""
    if not table.post_load:
        return
    err_path = logs / f"raw-keys-{table.name}.stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(_psql(conninfo, *table.post_load), stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL, env=env)
        code, cpu = wait_cpu(proc)
    error = None
    if code:
        error = (f"{table.name} keys: psql exit {code}: "
                 f"{_tail(err_path.read_text(errors='replace'), 2)}")
    stage.add(cpu, error)


def run_raw(bench: Bench, dsn: Dsn, tables: list[RawTable]) -> Run:
    """Bare tables (untimed), then timed: COPY pipes ``jobs`` at a time, then keys the same way."""
    conninfo, env = libpq_env(dsn)
    setup = subprocess.run(_psql(conninfo, *(t.create for t in tables)), env=env,
                           capture_output=True, text=True, check=False)
    if setup.returncode:
        raise SystemExit(f"raw pipe: CREATE TABLE failed: {_tail(setup.stderr)}")
    stage = _Stage()
    with TreeRssSampler(os.getpid(), include_root=False) as sampler:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=bench.jobs) as pool:
            list(pool.map(lambda t: _copy_one(t, conninfo, env, stage, bench.sqlite,
                                              bench.logs), tables))
        copied = time.perf_counter()
        with ThreadPoolExecutor(max_workers=bench.jobs) as pool:
            list(pool.map(lambda t: _keys_one(t, conninfo, env, stage, bench.logs), tables))
        finished = time.perf_counter()
    run = Run(finished - started, sampler.peak, stage.cpu, None,
              not stage.errors)
    run.steps = [{"step": "copy", "seconds": round(copied - started, 3)},
                 {"step": "keys and indexes", "seconds": round(finished - copied, 3)}]
    run.notes.extend(stage.errors[:3])
    return run


# --------------------------------------------------------------------------- report


def _fmt_rows(c: Contestant) -> str:
    rows = [r.rows for r in c.runs if r.rows is not None]
    return f"{rows[-1]:,}" if rows else "-"


def _median_steps(c: Contestant) -> list[tuple[str, float]]:
    """(step, median seconds over the runs), in the first run's order."""
    if not c.runs or not c.runs[0].steps:
        return []
    return [(name, median([s["seconds"] for r in c.runs for s in r.steps if s["step"] == name]))
            for name in (s["step"] for s in c.runs[0].steps)]


def _notes(c: Contestant) -> str:
    """The notes cell: verdict, runs, noise, the raw pipe's split, then per-run findings."""
    if not c.ran:
        return c.status
    notes: list[str] = ["rows OK" if c.ok else "FAILED"]
    if c.status != "ok":
        notes.append(c.status)
    if len(c.runs) > 1:
        notes.append("runs " + "/".join(f"{r.seconds:.1f}" for r in c.runs) + " s")
    if any(r.other_load >= NOISY_LOAD for r in c.runs):
        loads = "/".join(f"{r.other_load:.0%}" for r in c.runs)
        notes.append(f"NOISY: other processes took {loads} of the CPU")
    if c.key == "raw":
        split = " + ".join(f"{name.split()[0]} {sec:.1f} s" for name, sec in _median_steps(c))
        notes.append(f"{split}; no FK/CHECK by design")
    for r in c.runs:
        notes.extend(n for n in r.notes if n not in notes)
    return "; ".join(notes)


def table_rows(contestants: Sequence[Contestant]) -> list[list[str]]:
    """The comparison table's rows."""
    raw = next((c for c in contestants if c.key == "raw"), None)
    base = raw.wall if raw is not None and raw.ok else None
    out = []
    for c in contestants:
        wall = c.wall
        ratio = f"{wall / base:.2f}x" if wall is not None and base else "-"
        out.append([c.label, f"{wall:.1f}" if wall is not None else "-", ratio,
                    mib(c.peak_rss), _fmt_rows(c), _notes(c)])
    return out


@dataclass
class Target:
    """One target: its description, whether it holds (None: could not be checked), the figures."""

    name: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"[{mark}] {self.name}: {self.detail}"


def targets(contestants: Sequence[Contestant]) -> list[Target]:
    """pgshift wall <= 1.2x raw, pgshift < 0.5x pgloader, pgshift peak RSS < 256 MiB."""
    by = {c.key: c for c in contestants}
    pgs, pgl, raw = by.get("pgshift"), by.get("pgloader"), by.get("raw")
    out = []

    def versus(other: Contestant | None, limit: float, name: str, strict: bool) -> Target:
        if pgs is None or not pgs.ok or pgs.wall is None:
            return Target(name, None, "pgshift did not complete")
        if other is None or not other.ran or other.wall is None:
            return Target(name, None, f"{other.label if other else 'other'} not measured: "
                          f"{other.status if other else 'absent'}")
        ratio = pgs.wall / other.wall
        ok = ratio < limit if strict else ratio <= limit
        note = "" if other.ok else f" ({other.key} did not finish cleanly)"
        return Target(name, ok, f"{pgs.wall:.1f} s vs {other.wall:.1f} s = {ratio:.2f}x{note}")

    out.append(versus(raw, TARGET_VS_RAW, f"pgshift wall <= {TARGET_VS_RAW}x raw pipe", False))
    out.append(versus(pgl, TARGET_VS_PGLOADER, f"pgshift wall < {TARGET_VS_PGLOADER}x pgloader",
                      True))
    name = f"pgshift peak RSS < {TARGET_RSS_MIB} MiB"
    if pgs is None or pgs.peak_rss is None:
        out.append(Target(name, None, "pgshift not measured"))
    else:
        out.append(Target(name, pgs.peak_rss < TARGET_RSS_MIB * 2**20,
                          f"{mib(pgs.peak_rss)} MiB"))
    return out


def pgshift_steps(contestants: Sequence[Contestant]) -> list[str]:
    """Each pgshift contestant's step timings (median over runs), one line each."""
    lines = []
    for pgs in contestants:
        if pgs.key not in ("pgshift", "baseline") or not pgs.ran:
            continue
        steps = _median_steps(pgs)
        if not steps:
            continue
        label = "median " if len(pgs.runs) > 1 else ""
        lines.append(f"{pgs.label} steps ({label}s): "
                     + ", ".join(f"{n} {sec:.2f}" for n, sec in steps)
                     + f"; sum {sum(sec for _, sec in steps):.2f}")
    return lines


@dataclass
class Doubled:
    """pgshift at twice the scale: is its peak memory flat?"""

    scale: int
    rows: int
    run: Run | None = None
    status: str = "not run"


def doubled_target(contestants: Sequence[Contestant], doubled: Doubled | None) -> Target | None:
    """Peak RSS at twice the scale within 10 % of the peak at the scale (None: not run)."""
    if doubled is None:
        return None
    name = f"pgshift peak RSS flat as the scale doubles (x2 <= {1 + RSS_GROWTH:.2f} x1)"
    pgs = next((c for c in contestants if c.key == "pgshift"), None)
    if doubled.run is None or pgs is None or pgs.peak_rss is None:
        return Target(name, None, doubled.status)
    grown = doubled.run.peak_rss / pgs.peak_rss
    return Target(name, grown <= 1 + RSS_GROWTH and doubled.run.ok,
                  f"{mib(pgs.peak_rss)} MiB at scale x1, {mib(doubled.run.peak_rss)} MiB at "
                  f"scale {doubled.scale:,} ({doubled.rows:,} rows, {doubled.run.seconds:.1f} s"
                  f"{'' if doubled.run.ok else ', FAILED'}) = {grown:.2f}x")


def all_targets(contestants: Sequence[Contestant], doubled: Doubled | None) -> list[Target]:
    """The targets, with the doubled-scale memory check when it ran."""
    flat = doubled_target(contestants, doubled)
    return targets(contestants) + ([flat] if flat is not None else [])


def text_report(meta: dict[str, Any], contestants: Sequence[Contestant],
                doubled: Doubled | None = None) -> str:
    """The results as printed on the terminal: header, table, pgshift steps, targets."""
    m = meta["machine"]
    lines = [
        "",
        f"scale {meta['scale']:,}: {meta['rows']:,} rows, SQLite {mib(meta['sqlite_bytes'])} "
        f"MiB; PostgreSQL {m['postgres']} (fsync on); nproc {m['nproc']}, RAM "
        f"{m['ram_gib']} GiB; pgshift {m['pgshift_rev']}; --jobs {meta['jobs']}, "
        f"runs {meta['runs']}",
        "",
        text_table(HEADERS, table_rows(contestants)),
    ]
    steps = pgshift_steps(contestants)
    if steps:
        lines += ["", *steps]
    lines += ["", "targets:", *(f"  {t.line()}" for t in all_targets(contestants, doubled))]
    return "\n".join(lines)


def markdown_section(meta: dict[str, Any], contestants: Sequence[Contestant],
                     doubled: Doubled | None = None) -> str:
    """The results as a Markdown section, with the machine and the data set."""
    m = meta["machine"]
    lines = [
        f"## migrate: pgshift vs pgloader vs raw pipe, scale {meta['scale']:,} "
        f"({meta['rows']:,} rows)",
        "",
        f"- date: {m['date']}",
        f"- machine: nproc {m['nproc']} ({m['cpu']}), RAM {m['ram_gib']} GiB, {m['os']}",
        f"- PostgreSQL {m['postgres']} (embedded, durable: fsync on), one server for all",
        f"- SQLite file: {mib(meta['sqlite_bytes'])} MiB, scale {meta['scale']:,}; "
        f"--jobs {meta['jobs']}, runs {meta['runs']} (wall = median, RSS = max)",
        f"- tools: pgloader {m['pgloader'] or 'not installed'}, sqlite3 {m['sqlite3_cli']}, "
        f"psql {m['psql']}, Python {m['python']}, pgshift {m['pgshift_rev']}",
        "",
        markdown_table(HEADERS, table_rows(contestants)),
        "",
    ]
    steps = pgshift_steps(contestants)
    if steps:
        lines += [*(f"{line}  " for line in steps), ""]
    lines += [f"- {t.line()}" for t in all_targets(contestants, doubled)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time pgshift migrate, pgloader and a raw sqlite3|psql pipe on one "
                    "durable PostgreSQL.")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="print (and with --markdown append) the report of an earlier "
                             "--json output instead of running anything")
    parser.add_argument("--scale", type=int, default=0,
                        help="jobs in the seeded database (1000000 = 2.2 M rows)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="pgshift --jobs and the raw pipe's concurrency (default 2)")
    parser.add_argument("--runs", type=int, default=1,
                        help="rounds; wall = median, RSS = max (default 1)")
    parser.add_argument("--skip-pgloader", action="store_true", help="do not run pgloader")
    parser.add_argument("--only", action="append", choices=CONTESTANTS,
                        help="run only this contestant (repeatable)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "pgshift-bench",
                        help="seeded files, the PostgreSQL data directory and logs "
                             "(default $TMPDIR/pgshift-bench)")
    parser.add_argument("--quiet-timeout", type=float, default=120.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to "
                             "leave the CPU (0: do not wait; default 120)")
    parser.add_argument("--baseline-src", type=Path, metavar="DIR",
                        help="also run pgshift from another checkout's src/ (PYTHONPATH), "
                             "alternating with this one: before/after in one invocation")
    parser.add_argument("--double", action="store_true",
                        help="after the rounds, run pgshift once at twice the scale and "
                             "check that its peak RSS stays flat")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="append the results as a Markdown section to FILE")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results on stdout instead of the table")
    args = parser.parse_args(argv)
    if args.from_json is None and (args.scale < 1 or args.jobs < 1 or args.runs < 1):
        parser.error("--scale, --jobs and --runs must be >= 1")
    return args


def _run_dict(r: Run) -> dict[str, Any]:
    return {"seconds": round(r.seconds, 3), "peak_rss_bytes": r.peak_rss,
            "cpu_seconds": round(r.cpu_seconds, 3), "rows": r.rows, "ok": r.ok,
            "notes": r.notes, "steps": r.steps, "shape": r.shape,
            "other_load": round(r.other_load, 3)}


def _run_from(d: dict[str, Any]) -> Run:
    return Run(d["seconds"], d["peak_rss_bytes"], d["cpu_seconds"], d["rows"], d["ok"],
               list(d["notes"]), list(d["steps"]), dict(d["shape"]), d["other_load"])


def _doubled_dict(doubled: Doubled | None) -> dict[str, Any] | None:
    if doubled is None:
        return None
    return {"scale": doubled.scale, "rows": doubled.rows, "status": doubled.status,
            "run": _run_dict(doubled.run) if doubled.run is not None else None}


def rerender(path: Path, markdown: Path | None) -> int:
    """The report of an earlier ``--json`` output, again (``--from-json``)."""
    data = json.loads(path.read_text())
    contestants = [Contestant(c["key"], c["label"], c["status"],
                              [_run_from(r) for r in c["runs"]]) for c in data["results"]]
    d = data.get("doubled")
    doubled = None
    if d:
        doubled = Doubled(d["scale"], d["rows"], _run_from(d["run"]) if d["run"] else None,
                          d["status"])
    print(text_report(data, contestants, doubled))
    if markdown:
        with markdown.open("a") as fh:
            fh.write("\n" + markdown_section(data, contestants, doubled))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the targets (or JSON)."""
    args = parse_args(argv)
    if args.from_json is not None:
        return rerender(args.from_json, args.markdown)
    workdir: Path = args.workdir.absolute()
    selected = set(args.only or CONTESTANTS)
    if args.skip_pgloader:
        selected.discard("pgloader")
    has_pgloader = shutil.which("pgloader") is not None
    for tool in (_SYSTEM_SQLITE3, _SYSTEM_PSQL):
        if "raw" in selected and not Path(tool).is_file():
            raise SystemExit(f"{tool} not found (apt-get install sqlite3 postgresql-client)")

    contestants = [
        Contestant("pgshift", f"pgshift migrate --jobs {args.jobs}"),
        Contestant("baseline", f"pgshift {_revision(args.baseline_src)} (baseline)"),
        Contestant("pgloader", "pgloader (defaults)"),
        Contestant("raw", f"raw pipe sqlite3|psql x{args.jobs}"),
    ]
    if args.baseline_src is None:
        contestants = [c for c in contestants if c.key != "baseline"]
    for c in contestants:
        if c.key not in selected:
            c.status = ("skipped (--skip-pgloader)" if c.key == "pgloader" and args.skip_pgloader
                        else "skipped (--only)")
        elif c.key == "pgloader" and not has_pgloader:
            c.status = "not installed"

    sqlite, source_rows = seeded_sqlite(workdir, args.scale)
    tables = sqlite_tables(sqlite)
    log_dir = workdir / "logs" / f"scale-{args.scale}"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = start_server(workdir / "pg", durable=True)
    try:
        bench = Bench(server, sqlite, workdir, log_dir, args.jobs,
                      {t: source_rows[t] for t in tables}, source_shape(sqlite, tables),
                      args.quiet_timeout)
        meta: dict[str, Any] = {
            "scale": args.scale,
            "rows": bench.total_rows,
            "sqlite_bytes": sqlite.stat().st_size,
            "jobs": args.jobs,
            "runs": args.runs,
            "machine": machine_info(server),
            "source_shape": bench.source.as_dict(),
        }
        if meta["machine"]["pgloader"]:
            # "3.6.7~devel (Debian package 3.6.9-1)": the package's version is the one people
            # install by; the binary's own string lags behind it.
            version = re.findall(r"[\w.~+-]+", meta["machine"]["pgloader"])[-1]
            for c in contestants:
                if c.key == "pgloader":
                    c.label = f"pgloader {version}"
        log(f"PostgreSQL {meta['machine']['postgres']} on port {server.port} (fsync on); "
            f"{bench.total_rows:,} rows in {sqlite}")
        raw_plan = raw_tables(bench) if "raw" in selected else []
        runners: dict[str, Callable[[str, Dsn], Run]] = {
            "pgshift": lambda label, dsn: run_pgshift(bench, dsn, label),
            "baseline": lambda label, dsn: run_pgshift(bench, dsn, label,
                                                       src=_baseline_src(args.baseline_src)),
            "pgloader": lambda label, dsn: run_pgloader(bench, dsn, label),
            "raw": lambda _label, dsn: run_raw(bench, dsn, raw_plan),
        }
        for round_no in range(1, args.runs + 1):
            for c in contestants:
                if c.status != "ok":
                    continue
                label = f"{c.key}-run{round_no}"
                log(f"run {round_no}/{args.runs}: {c.label}")
                by_design = ("foreign_keys", "checks") if c.key == "raw" else ()
                try:
                    run = _measure(bench, c.key, partial(runners[c.key], label), by_design)
                except Exception as exc:  # reported in the table; the other contestants go on
                    c.status = f"benchmark error in run {round_no}: {_redact(str(exc), bench)}"
                    log(f"  {c.status}")
                    continue
                c.runs.append(run)
                log(f"  {run.seconds:.1f} s, peak RSS {mib(run.peak_rss)} MiB, "
                    f"{run.rows or 0:,} rows{'' if run.ok else ' (FAILED)'}, other load "
                    f"{run.other_load:.0%}; logs in {log_dir}")
        doubled = _run_doubled(args, bench, workdir) if args.double else None
    finally:
        server.stop()

    checks = all_targets(contestants, doubled)
    # With --json the human report still goes to stderr, so a run is never wasted.
    report = sys.stderr if args.json else sys.stdout
    print(text_report(meta, contestants, doubled), file=report, flush=True)
    if args.json:
        print(json.dumps({**meta, "results": [c.to_dict() for c in contestants],
                          "doubled": _doubled_dict(doubled),
                          "targets": [{"name": t.name, "passed": t.passed, "detail": t.detail}
                                      for t in checks]}, indent=2))
    if args.markdown:
        with args.markdown.open("a") as fh:
            fh.write("\n" + markdown_section(meta, contestants, doubled))
        log(f"appended the results to {args.markdown}")
    return 0


def _baseline_src(path: Path | None) -> Path | None:
    if path is None:
        return None
    return path / "src" if (path / "src" / "pgshift").is_dir() else path


def _revision(path: Path | None) -> str:
    if path is None:
        return "-"
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or path.name


def _run_doubled(args: argparse.Namespace, bench: Bench, workdir: Path) -> Doubled:
    """pgshift once on a file seeded at twice the scale (its peak RSS against the x1 runs)."""
    sqlite, rows = seeded_sqlite(workdir, args.scale * 2)
    doubled = Doubled(args.scale * 2, sum(rows.values()))
    log(f"scale x2: pgshift on {doubled.rows:,} rows")
    try:
        doubled.run = _measure(
            Bench(bench.server, sqlite, workdir, bench.logs, bench.jobs, rows,
                  source_shape(sqlite, list(rows)), bench.quiet_timeout),
            "pgshift", lambda dsn: run_pgshift(bench, dsn, "pgshift-x2", sqlite=sqlite))
        doubled.status = "ok"
        log(f"  {doubled.run.seconds:.1f} s, peak RSS {mib(doubled.run.peak_rss)} MiB")
    except Exception as exc:  # reported as the target's detail; the rest of the report stands
        doubled.status = f"benchmark error: {_redact(str(exc), bench)}"
    return doubled


if __name__ == "__main__":
    sys.exit(main())
