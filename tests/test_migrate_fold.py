"""migrate: the profile folded into the copy scan, and keys built while other tables copy.

The plan of a fresh load comes from a sample of each table; every chunk is profiled as it
is rendered. The sources here hide their oddities at rowids the sample does not read, so
the sample's plan is wrong about them, and the run must still end exactly where a run
planned from a full profile ends: the same types, the same rejects with the same reasons,
the same stored profile (verify and sync read it), and verify finds nothing.
"""

from __future__ import annotations

import decimal
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgshift.copy.checkpoint import load_profile
from pgshift.demo.seed import seed
from pgshift.dsn import Dsn
from pgshift.errors import ExitCode
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import SAMPLE_ROWS, SAMPLE_SLICES, profile_tables, profiles_to_json
from pgshift.source.snapshot import open_source
from pgshift.verify.run import VerifyOptions, verify
from sqlite_helpers import make_db, note_messages, read_jsonl, run_migrate
from test_migrate_resume import CHILD  # the migrate child that commits chunks slowly

pytestmark = pytest.mark.data

ROWS = 50_000
# Rowids the sample skips: its slices start every ROWS / SLICES rowids and are
# SAMPLE_ROWS / SLICES wide, so the gap after the first slice is never read.
HIDDEN = SAMPLE_ROWS // SAMPLE_SLICES + 1000
assert HIDDEN < ROWS // SAMPLE_SLICES


def _source(path: Path) -> Path:
    def contra(i: int) -> tuple[object, ...]:
        n: object = "abc" if i == HIDDEN else i  # text in an INTEGER column: a reject
        s: object = None if i == HIDDEN + 1 else f"v{i}"  # the only NULL: loaded as NULL
        if i == HIDDEN + 2:
            s = "nul\x00byte"  # a NUL byte: a reject, never a truncated value
        return (i, n, s)

    def replan(i: int) -> tuple[object, ...]:
        # A non-integral real in an INTEGER column: the full profile chooses numeric.
        return (i, 1.5 if i == HIDDEN else i, f"w{i}")

    return make_db(path, """
        CREATE TABLE contra (id INTEGER PRIMARY KEY, n INTEGER, s TEXT);
        CREATE TABLE replan (id INTEGER PRIMARY KEY, r INTEGER NOT NULL, t TEXT);
        CREATE INDEX replan_r ON replan (r);
    """, {"contra": (contra(i) for i in range(1, ROWS + 1)),
          "replan": (replan(i) for i in range(1, ROWS + 1))})


def _full_profile(db: Path) -> dict[str, object]:
    con = open_source(db)
    try:
        tables = read_catalog(con).tables
    finally:
        con.close()
    return profiles_to_json(profile_tables(lambda: open_source(db), tables, 2))


def test_rows_the_sample_missed_end_as_a_full_profile_would_have_it(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = _source(tmp_path / "fold.db")
    planned = run_migrate(db, pg_dsn, tmp_path / "dry", dry_run=True)  # full profile
    result = run_migrate(db, pg_dsn, tmp_path / "state", batch_size=1000, jobs=2,
                         allow_rejects=True)
    assert [s.name for s in result.steps][:3] == ["snapshot", "catalog", "sample"]

    # The plan the run ends with is the one a full profile makes.
    assert result.plan.to_dict()["tables"] == planned.plan.to_dict()["tables"]
    anomalies = set(note_messages(planned, "anomaly"))
    assert anomalies <= set(note_messages(result, "anomaly"))
    assert ("replan", "the sampled plan did not hold for every row: table re-planned from "
            "its full profile and copied again") in note_messages(result, "info")
    # ... and so is the profile stored for verify and sync.
    assert load_profile(pg_conn, "public") == _full_profile(db)

    # Values: the real kept exactly in the re-planned table, the NULL a NULL, the rest rejects.
    assert pg_conn.execute("SELECT data_type FROM information_schema.columns WHERE "
                           "table_name = 'replan' AND column_name = 'r'").fetchone() == (
        "numeric",)
    assert pg_conn.execute("SELECT r FROM replan WHERE id = %s", (HIDDEN,)).fetchone() == (
        decimal.Decimal("1.5"),)
    assert pg_conn.execute("SELECT count(*) FROM replan").fetchone() == (ROWS,)
    assert pg_conn.execute("SELECT s IS NULL FROM contra WHERE id = %s",
                           (HIDDEN + 1,)).fetchone() == (True,)
    assert pg_conn.execute("SELECT count(*) FROM contra").fetchone() == (ROWS - 2,)
    rejects = read_jsonl(tmp_path / "state" / "rejects.jsonl")
    assert sorted((r["table"], r["key"]["id"], r["column"]) for r in rejects) == [
        ("contra", HIDDEN, "n"), ("contra", HIDDEN + 2, "s")]
    reasons = {r["column"]: r["reason"] for r in rejects}
    assert reasons["n"] == "text value in an integer column"
    assert reasons["s"].startswith("NUL byte")
    # Keys and indexes of both tables, the re-planned one's on its new column type.
    indexes = {r[0] for r in pg_conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"contra_pkey", "replan_pkey", "replan_r"} <= indexes
    assert [s.rejects for s in result.tables if s.name == "replan"] == [0]

    checked = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, tables=["replan"]))
    assert checked.exit_code == ExitCode.OK




def _keys_built_while_copying(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT to_regclass('pgshift.migrate_steps')").fetchone()[0] is None:
        return False
    row = conn.execute("SELECT count(*) FILTER (WHERE statement LIKE '%PRIMARY KEY%'), "
                       "(SELECT count(*) FROM pgshift.migrate_chunks) FROM "
                       "pgshift.migrate_steps").fetchone()
    return row is not None and row[0] > 0 and row[1] > 0


def test_kill_after_keys_overlapped_the_copy_then_resume_is_exact(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = tmp_path / "hp.db"
    seed(db, 10_000)
    argv = ["migrate", str(db), pg_dsn.conninfo, "--batch-size", "500", "--jobs", "2",
            "--state-dir", str(tmp_path / "state")]
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if _keys_built_while_copying(pg_conn):
                    break
                time.sleep(0.005)
            assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()}"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    pending = pg_conn.execute("SELECT status FROM pgshift.migrate_runs").fetchone()
    assert pending == ("copying",)
    for _ in range(200):  # the killed run's sessions (and its lock) go with the connection
        if not pg_conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                               "= 'pgshift'").fetchone()[0]:
            break
        time.sleep(0.05)
    resumed = subprocess.run([sys.executable, "-m", "pgshift.cli.main", *argv, "--resume"],
                             capture_output=True, text=True, check=False, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    checked = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    assert checked.exit_code == ExitCode.OK, [t.to_dict() for t in checked.tables]
    keys = pg_conn.execute("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON "
                           "n.oid = c.connamespace WHERE n.nspname = 'public' AND "
                           "c.contype = 'p'").fetchone()
    assert keys == (8,)
