"""verify after ``migrate --into-existing``: the checks that do not trust the mapping.

The row comparison goes through the mapping, so a mapping's own mistake is
invisible to it: re-keying children with a different order than their parents
loads every row "exactly" and points them at the wrong parents. The link check
compares each loaded reference with the parent the source row pointed at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgshift.dsn import Dsn
from pgshift.verify.run import VerifyOptions, verify
from sqlite_helpers import make_db, run_migrate
from test_migrate_existing import MAPPING, SOURCE, TARGET, _source_rows


@pytest.fixture
def target(pg_conn: psycopg.Connection) -> psycopg.Connection:
    """The issue's example app schema."""
    pg_conn.execute(TARGET)
    pg_conn.commit()
    return pg_conn


def _load(tmp_path: Path, dsn: Dsn, mapping: str, rows: dict[str, Any] | None = None,
          ) -> Path:
    db = make_db(tmp_path / "app.db", SOURCE, rows or _source_rows())
    m = tmp_path / "mapping.yaml"
    m.write_text(mapping)
    result = run_migrate(db, dsn, tmp_path / "state", into_existing=True, mapping=m)
    assert result.rejects == 0 and not result.violations
    return db


def test_links_of_a_right_mapping_all_check(tmp_path: Path, pg_dsn: Dsn,
                                            target: psycopg.Connection) -> None:
    db = _load(tmp_path, pg_dsn, MAPPING)
    result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    assert result.identical, result.to_dict()
    (link,) = result.links
    assert link.to_dict() == {"table": "job_history", "constraint": "job_history_job_id_fkey",
                              "parent": "jobs", "via": "job_history.job_id -> jobs.id",
                              "rows": 900, "wrong": 0, "orphans": 0, "examples": [],
                              "skipped": None}
    counts = {c.table: c.to_dict() for c in result.sources}
    assert counts["job_history"] == {"table": "job_history", "base": "job_history",
                                     "base_rows": 900, "rows": 900, "left_out": 0}
    assert counts["tool_configs"]["base"] == "tool_configs"


def test_children_rekeyed_in_another_order_are_found(tmp_path: Path, pg_dsn: Dsn,
                                                     target: psycopg.Connection) -> None:
    # The children's lookup numbers jobs by id only; the parents are numbered by
    # (created_at, id). Every row loads "exactly", and most point at the wrong job.
    wrong = MAPPING.replace("(SELECT id, row_number() OVER (ORDER BY created_at, id)",
                            "(SELECT id, row_number() OVER (ORDER BY id)")
    assert wrong != MAPPING
    db = _load(tmp_path, pg_dsn, wrong)
    result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    assert all(t.equal for t in result.tables)  # the rows match their (wrong) feeds
    assert not result.identical and result.exit_code == 1
    (link,) = result.links
    jobs = sorted(_source_rows()["jobs"], key=lambda j: (j[3], j[0]))
    by_created = {j[0]: i + 1 for i, j in enumerate(jobs)}
    by_id = {j: i + 1 for i, j in enumerate(sorted(by_created))}
    hist = _source_rows()["job_history"]
    expected_wrong = sum(by_created[h[1]] != by_id[h[1]] for h in hist)
    assert expected_wrong > 800
    assert (link.rows, link.wrong, link.orphans) == (900, expected_wrong, 0)
    ex = link.examples[0]
    hid = ex["source_key"]["id"]
    job = next(h[1] for h in hist if h[0] == hid)
    assert ex["loaded"] == {"job_id": by_id[job]}
    assert ex["expected"] == {"job_id": by_created[job]}
    assert result.to_dict()["links"][0]["wrong"] == expected_wrong


def test_cli_prints_links_and_source_rows(tmp_path: Path, pg_dsn: Dsn,
                                          target: psycopg.Connection,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pgshift.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")
    rows = _source_rows()
    rows["job_history"] = [*rows["job_history"], (5000, "ghost", 1, None)]
    db = _load(tmp_path, pg_dsn, MAPPING, rows)
    assert main(["verify", str(db), pg_dsn.conninfo]) == 0
    out = capsys.readouterr().out
    assert "job_history_job_id_fkey" in out and "job_history.job_id -> jobs.id" in out
    assert "the rows are compared with what the mapping yields" in out
    assert "(1 of 1 foreign key(s) checked" in out
    cells = next([c.strip() for c in ln.split("│") if c.strip()] for ln in out.splitlines()
                 if "job_history" in ln and "901" in ln)
    # table, base table, base rows, loaded from it, left out (the orphan the JOIN dropped)
    assert cells == ["job_history", "job_history", "901", "900", "1"]


def test_a_source_without_foreign_keys_needs_relationships(tmp_path: Path, pg_dsn: Dsn,
                                                           target: psycopg.Connection) -> None:
    bare = SOURCE.replace(" REFERENCES jobs(id)", "")
    db = make_db(tmp_path / "app.db", bare, _source_rows())
    m = tmp_path / "mapping.yaml"
    m.write_text(MAPPING)
    assert run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m
                       ).rejects == 0
    (link,) = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn)).links
    assert link.skipped is not None and "relationships: {job_id: <source column>}" in \
        link.skipped
    # Declared in the mapping, the reference is checked (and a wrong re-key found).
    m.write_text(MAPPING.replace("  job_history:\n", "  job_history:\n"
                                 "    relationships: {job_id: job_id}\n")
                 .replace("ORDER BY created_at, id) AS new_id FROM jobs) j",
                          "ORDER BY id) AS new_id FROM jobs) j"))
    assert run_migrate(db, pg_dsn, tmp_path / "state2", into_existing=True, mapping=m,
                       truncate=True, restart=True).rejects == 0
    result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    (link,) = result.links
    assert link.skipped is None and link.via == "job_history.job_id -> jobs.id"
    assert link.wrong > 800 and not result.identical


def test_one_microsecond_in_a_mapped_epoch_ms_column_is_a_difference(
        tmp_path: Path, pg_dsn: Dsn, target: psycopg.Connection) -> None:
    db = _load(tmp_path, pg_dsn, MAPPING)
    target.execute("UPDATE job_history SET at = at + interval '1 microsecond' WHERE id = 9")
    target.execute("UPDATE tool_configs SET created_at = created_at - interval '500 microseconds'"
                   " WHERE key = 'Tool3'")
    target.commit()
    result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    diffs = {d.table: d for t in result.tables for d in t.diffs}
    hist = next(h for h in _source_rows()["job_history"] if h[0] == 9)
    assert diffs["job_history"].columns == {"at": (str(hist[2] * 1000), str(hist[2] * 1000 + 1))}
    tool = next(t for t in _source_rows()["tool_configs"] if t[1] == "Tool3")
    assert diffs["tool_configs"].columns == {
        "created_at": (str(tool[5] * 1000), str(tool[5] * 1000 - 500))}
