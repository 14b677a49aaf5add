"""migrate's output in a log (issue 14): nothing cut at 80 columns when stdout is not a
terminal, and each table's copy line with its own time, not the copy step's."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn
from pgshift.progress import LineProgress
from sqlite_helpers import make_db

LONG = "a_column_name_long_enough_to_be_cut_by_an_eighty_column_table_xyz"


def test_dry_run_tables_are_full_width_off_a_terminal(tmp_path: Path, pg_dsn: Dsn,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = make_db(tmp_path / "wide.db", f"""
        CREATE TABLE job_history_with_a_long_name (id INTEGER PRIMARY KEY, {LONG} TEXT,
            amount NUMERIC DEFAULT 1234567890123);
    """, {"job_history_with_a_long_name": [(1, "x" * 120, 1)]})
    capsys.readouterr()
    code = main(["migrate", str(db), pg_dsn.conninfo, "--dry-run", "--state-dir",
                 str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert code == 0
    assert "…" not in out  # Rich's ellipsis: nothing was cut
    # Every name, type and number whole, on one line each.
    row = next(line for line in out.splitlines() if LONG in line)
    assert "TEXT" in row and "text" in row
    assert any("job_history_with_a_long_name (1 rows)" in line for line in out.splitlines())
    assert max(len(line) for line in out.splitlines()) > 80


def test_copy_line_prints_the_tables_own_time() -> None:
    out = io.StringIO()
    progress = LineProgress(out)
    progress.task("tool_configs", 200)
    progress.task("big", 1000)
    # The copy step started long ago (the clocks of every task): 100 s.
    for key in ("tool_configs", "big"):
        progress.t0[key] -= 100.0
    progress.advance("tool_configs", 200, seconds=0.25)
    progress.advance("big", 600, seconds=30.0)
    progress.advance("big", 400, seconds=20.0)
    lines = dict(re.findall(r"  (\w+): [\d,]+ rows in ([\d.]+)s", out.getvalue()))
    assert 0.2 <= float(lines["tool_configs"]) < 5, out.getvalue()
    # Two chunks of one table: from the earlier chunk's start to the last one's end.
    assert 29.9 <= float(lines["big"]) < 35, out.getvalue()


def test_copy_line_without_chunk_times_falls_back_to_the_task_clock() -> None:
    out = io.StringIO()
    progress = LineProgress(out)
    progress.task("t", 5)
    progress.t0["t"] -= 7.0
    progress.advance("t", 5)
    assert re.search(r"t: 5 rows in 7\.\ds", out.getvalue()), out.getvalue()
