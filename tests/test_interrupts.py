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
    time.sleep(0.3)
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
