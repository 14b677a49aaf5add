"""The Prometheus endpoint of `sync run --follow` and `sync status --serve`, over real HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pgshift.dsn import Dsn
from pgshift.sync.metrics import MetricsServer, RunMetrics, prometheus, render
from sync_helpers import captured_seed, check, migrate_to, write

pytestmark = pytest.mark.data

CLI = [sys.executable, "-c", "from pgshift.cli.main import run; run()", "sync"]


def sample(text: str, name: str, direction: str | None = None) -> float | None:
    """The value of one sample (schema public, the direction's label when given)."""
    labels = 'schema="public"' + (f',direction="{direction}"' if direction else "")
    m = re.search(rf"^pgshift_sync_{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start a pgshift process with --metrics-port 0 / --serve 0; its metrics URL."""
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.match(r"metrics: (http://\S+)", line)
    if not m:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no metrics address: {line!r} {err}")
    return proc, m.group(1)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def wait_for(url: str, cond, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(url)
        if cond(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, then its exit code (the pipes are drained and closed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc.returncode


def test_sync_run_follow_serves_metrics(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = captured_seed(tmp_path, scale=100)
    migrate_to(db, pg_dsn, tmp_path)
    proc, url = start(["run", str(db), pg_dsn.conninfo, "--follow", "--metrics-port", "0"])
    try:
        first = wait_for(url, lambda t: sample(t, "checkpoint_seq", "to-postgres") is not None)
        assert sample(first, "up") == 1
        assert sample(first, "pending", "to-postgres") == 0
        assert "# TYPE pgshift_sync_applied_total counter" in first
        write(db, *[f"update users set name = 'm{i}' where id = 1" for i in range(5)])
        write(db, "update users set name = 'last' where id = 2")
        text = wait_for(url, lambda t: sample(t, "applied_total", "to-postgres") == 6)
        assert sample(text, "applied_total", "to-postgres") == 6
        assert sample(text, "run_applied_total", "to-postgres") == 6
        assert (sample(text, "batches_total", "to-postgres") or 0) >= 1
        assert 0 < (sample(text, "last_batch_seconds", "to-postgres") or 0) < 10
        assert sample(text, "lag_seconds", "to-postgres") == 0
        assert sample(text, "conflicts_total", "to-postgres") is None  # none recorded
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
    finally:
        code = stop(proc)
    assert code == 0
    check(db, pg_dsn)


def test_status_serve_reports_backlog_and_both_directions(tmp_path: Path, pg_dsn: Dsn
                                                          ) -> None:
    from pgshift.sync import ops
    from sync_helpers import pg_exec, sync_once

    db = captured_seed(tmp_path, scale=100)
    migrate_to(db, pg_dsn, tmp_path)
    ops.install(db, dsn=pg_dsn)
    sync_once(db, pg_dsn)
    write(db, "update users set name = 'pending' where id = 1")
    pg_exec(pg_dsn, "update users set name = 'green' where id = 2",
            "update users set name = 'green' where id = 3")
    proc, url = start(["status", str(db), pg_dsn.conninfo, "--serve", "0"])
    try:
        text = scrape(url)
    finally:
        assert stop(proc) == 0
    assert sample(text, "pending", "to-postgres") == 1
    assert sample(text, "pending", "to-sqlite") == 2
    assert (sample(text, "lag_seconds", "to-sqlite") or 0) > 0
    assert sample(text, "batches_total", "to-postgres") is None  # no applier in this process


def test_render_without_databases_and_the_text_format(tmp_path: Path) -> None:
    def away() -> dict:
        raise OSError("connection refused")

    run = RunMetrics()
    text = render("public", away, run)
    assert sample(text, "up") == 0 and "process_start_time_seconds" in text
    text = prometheus({"schema": "public", "max_seq": 7, "pending": 2, "lag_ms": 1500,
                       "to_postgres": {"last_seq": 5, "applied": 5, "parked": 0},
                       "conflicts_by_direction": {"to-postgres": 3, "to-sqlite": 1},
                       "parked_by_direction": {"to-sqlite": 4}})
    assert sample(text, "lag_seconds", "to-postgres") == 1.5
    assert sample(text, "conflicts_total", "to-sqlite") == 1
    assert sample(text, "parked_total", "to-sqlite") == 4
    assert text.count("# TYPE pgshift_sync_pending gauge") == 1
    # the server answers in-process too (used by both CLI entry points)
    server = MetricsServer("127.0.0.1", 0, lambda: "x 1\n").start()
    try:
        assert scrape(f"http://127.0.0.1:{server.port}/metrics") == "x 1\n"
    finally:
        server.stop()
