"""Ctrl-C and exit codes as documented: ``Interrupted.`` + exit 6 + a way to continue, no
traceback even during start-up; the audit trail records migrate's interruption."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgshift.cli.main import interrupt_hint
from pgshift.dsn import Dsn

PGSHIFT = Path(sys.executable).with_name("pgshift")


def _big_db(path: Path, rows: int = 300_000) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT, n INTEGER)")
    con.executemany("INSERT INTO items VALUES (?, ?, ?)",
                    ((i, f"item {i} " + "x" * 40, i * 7) for i in range(1, rows + 1)))
    con.commit()
    con.close()
    return path


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen([str(PGSHIFT), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    """Read stderr until ``needle`` appears (the process keeps running)."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared:\n{seen}")


def test_ctrl_c_during_migrate_exits_6_with_a_resume_hint_and_an_audit_event(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = _big_db(tmp_path / "app.db")
    args = ["migrate", str(db), pg_dsn.conninfo, "--jobs", "1", "--batch-size", "5000",
            "--state-dir", str(tmp_path / "state")]
    proc = _start(args, tmp_path)
    before = _wait_for(proc, "copy")
    # Soon: the whole copy of these rows takes ~0.3 s now that the profile is folded
    # into it (issue 14), and the interrupt must land before the run ends.
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = before + err
    assert proc.returncode == 6, err
    assert "Interrupted." in err
    assert "Traceback" not in err
    try_line = [line for line in err.splitlines() if line.startswith("Try: ")][-1]
    assert try_line.startswith(f"Try: pgshift migrate {db} DSN --jobs 1") and "--resume" in try_line
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    events = [json.loads(line) for line in audit.splitlines()]
    assert any(e["kind"] == "interrupted" for e in events)
    # The resume completes the same run.
    done = subprocess.run([str(PGSHIFT), *args, "--resume"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pg_conn.execute("select count(*) from items").fetchone() == (300_000,)


def test_ctrl_c_during_start_up_prints_no_traceback(tmp_path: Path) -> None:
    db = _big_db(tmp_path / "small.db", rows=10)
    for delay in (0.05, 0.15, 0.3):
        proc = _start(["verify", str(db), "host=127.0.0.1 port=1"], tmp_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        # Either interrupted (6) or it already finished with the connection error (2).
        assert proc.returncode in (6, 2), (delay, proc.returncode, err)
        if proc.returncode == 6:
            assert err.startswith("Interrupted."), err


def test_ctrl_c_during_sync_run_follow_exits_6(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = _big_db(tmp_path / "app.db", rows=100)
    subprocess.run([str(PGSHIFT), "sync", "install", str(db)], cwd=tmp_path,
                   check=True, capture_output=True)
    subprocess.run([str(PGSHIFT), "migrate", str(db), pg_dsn.conninfo], cwd=tmp_path,
                   check=True, capture_output=True)
    proc = _start(["sync", "run", str(db), pg_dsn.conninfo, "--follow"], tmp_path)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 6, err
    assert "Interrupted." in err and "Traceback" not in err
    assert "Try: pgshift sync run" in err and "DSN --follow" in err


@pytest.mark.parametrize("args, hint", [
    (["migrate", "a.db", "postgresql://u:pw@h/db", "--drop", "--jobs", "2"],
     "pgshift migrate a.db DSN --jobs 2 --resume"),
    (["migrate", "a.db", "env:URL", "--resume"], "pgshift migrate a.db env:URL --resume"),
    (["rollout", "c.yaml"], "pgshift rollout c.yaml --resume"),
    (["--debug", "verify", "a.db", "host=h password=pw"], "pgshift --debug verify a.db DSN"),
])
def test_interrupt_hints_name_the_command_without_its_password(args: list[str],
                                                               hint: str) -> None:
    text = interrupt_hint(args)
    assert text is not None and text.startswith(hint)
    assert "pw" not in text.replace("pgshift", "")


def test_short_commands_have_no_resume_hint() -> None:
    assert interrupt_hint(["demo", "seed", "x.db"]) is None


# --- exit codes as documented (README's table) ------------------------------------------

def _corrupt(path: Path) -> Path:
    """A file with a valid SQLite header whose b-tree pages are overwritten."""
    _big_db(path, rows=3000)
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 7):
        data[i] = 0xAB
    path.write_bytes(bytes(data))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from pgshift.cli.main import main

    code = main(argv)
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("command", [["migrate"], ["migrate", "--dry-run"], ["verify"]])
def test_corrupt_sqlite_exits_4_with_an_integrity_check_hint(
        command: list[str], tmp_path: Path, pg_dsn: Dsn,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = _corrupt(tmp_path / "bad.db")
    argv = [command[0], str(db), pg_dsn.conninfo, *command[1:],
            *(["--state-dir", str(tmp_path / "s")] if command[0] == "migrate" else [])]
    code, err = _run(argv, capsys)
    assert code == 4, err
    assert "\nError: " in "\n" + err and "malformed" in err
    assert "Try: the file is damaged: sqlite3" in err and "integrity_check" in err


def test_locked_sqlite_exits_4_with_a_lock_hint_not_integrity_check(
        tmp_path: Path, pg_dsn: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    db = _big_db(tmp_path / "app.db", rows=10)
    assert _run(["migrate", str(db), pg_dsn.conninfo, "--state-dir", str(tmp_path / "s")],
                capsys)[0] == 0
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: readers wait, then give up
    try:
        code, err = _run(["verify", str(db), pg_dsn.conninfo], capsys)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 4, err
    assert "locked" in err and "another process holds a lock" in err
    assert "integrity_check" not in err


def test_unreachable_postgresql_exits_2_as_documented(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = _big_db(tmp_path / "app.db", rows=10)
    dsn = f"host=127.0.0.1 port={port} user=u dbname=d"
    for argv in (["migrate", str(db), dsn, "--state-dir", str(tmp_path / "s")],
                 ["verify", str(db), dsn], ["sync", "status", str(db), dsn], ["optimize", dsn]):
        code, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        assert "cannot connect to PostgreSQL" in err and "Try: check that PostgreSQL" in err


def test_readme_has_one_exit_code_table_matching_exit_code() -> None:
    from pgshift.errors import ExitCode

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`" in line
            and line.split("|")[1].strip().isdigit()]
    assert sorted(int(r.split("|")[1]) for r in rows) == sorted(int(c) for c in ExitCode)


# --- hints ----------------------------------------------------------------------------

def test_hints_are_not_doubled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["demo", "seed", str(tmp_path)], ["demo", "seed", str(tmp_path / "x.db"),
                                                   "--scale", "0"]):
        code, err = _run(argv, capsys)
        assert code == 2, err
        assert "Try: Try:" not in err and "Try: " in err


def test_sample_zero_percent_says_what_is_allowed(tmp_path: Path, pg_dsn: Dsn,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = _big_db(tmp_path / "app.db", rows=10)
    code, err = _run(["verify", str(db), pg_dsn.conninfo, "--sample", "0%"], capsys)
    assert code == 2
    assert "more than 0% and at most 100% (got 0%)" in err and "Try: --sample 1%" in err


def test_check_ledger_on_an_empty_ledger_fails(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = _big_db(tmp_path / "app.db", rows=10)
    ledger = tmp_path / "w.jsonl"
    ledger.write_text("")
    code, err = _run(["load", "check-ledger", str(ledger), "--sqlite", str(db)], capsys)
    assert code == 1, err
    assert "proves nothing" in err
