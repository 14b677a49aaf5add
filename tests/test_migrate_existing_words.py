"""``--into-existing``: nothing is dropped without a word (issue 15).

Source columns that feed nothing are listed per table (an error with
``--strict`` unless ``drop:`` acknowledges them); a ``query:`` source is
reported next to its base table's count, with the keys of the rows it left out;
every plan error is listed at once; a column matched by name says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgshift.dsn import Dsn
from pgshift.errors import UsageError
from pgshift.existing.plan import PlanErrors
from sqlite_helpers import make_db, run_migrate
from test_migrate_existing import MAPPING, SOURCE, TARGET, _source_rows

# tool_configs gains the two initialisation vectors of the trial: no target
# column holds them, so a load without a word about them loses them for good.
IV_SOURCE = SOURCE.replace("settings TEXT, created_at INTEGER NOT NULL);",
                           "settings TEXT, created_at INTEGER NOT NULL, token_iv BLOB, "
                           "refresh_iv BLOB);")


@pytest.fixture
def target(pg_conn: psycopg.Connection) -> psycopg.Connection:
    """The issue's example app schema, as its ORM migrations made it."""
    pg_conn.execute(TARGET)
    pg_conn.commit()
    return pg_conn


def _rows(orphans: int = 0) -> dict[str, list[tuple[Any, ...]]]:
    rows = _source_rows()
    rows["tool_configs"] = [(*r, b"iv1", b"iv2") for r in rows["tool_configs"]]
    rows["job_history"] = [*rows["job_history"],
                           *[(1000 + i, f"ghost-{i}", 1, None) for i in range(orphans)]]
    return rows


def _db(tmp_path: Path, mapping: str = MAPPING, orphans: int = 0) -> tuple[Path, Path]:
    db = make_db(tmp_path / "app.db", IV_SOURCE, _rows(orphans))
    m = tmp_path / "mapping.yaml"
    m.write_text(mapping)
    return db, m


def _acknowledge(mapping: str) -> str:
    return (mapping.replace("  tool_configs:\n",
                            "  tool_configs:\n    drop: [token_iv, refresh_iv]\n")
            .replace("  job_history:\n", "  job_history:\n    drop: [job_id]\n"))


def test_unmapped_source_columns_are_listed_per_table(tmp_path: Path, pg_dsn: Dsn,
                                                      target: psycopg.Connection) -> None:
    db, m = _db(tmp_path)
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                         dry_run=True)
    plan = result.to_dict()["plan"]
    # The dry run materialized the query sources to profile them, and cleaned up.
    assert not list((tmp_path / "state").glob("*scratch*"))
    unmapped = {t["table"]: t["unmapped"] for t in plan["tables"]}
    # job_history's text job_id only feeds the JOIN: the target gets the new integer id.
    assert unmapped == {"tool_configs": ["token_iv", "refresh_iv"], "jobs": [],
                        "job_history": ["job_id"]}
    notes = {n["object"]: n["message"] for n in plan["notes"] if n["level"] == "warning"
             and "feed no target column" in n["message"]}
    assert set(notes) == {"tool_configs", "job_history (query)"}
    assert "2 source column(s) feed no target column: token_iv, refresh_iv" in \
        notes["tool_configs"]
    assert "`drop: [token_iv, refresh_iv]` under tables.tool_configs" in notes["tool_configs"]

    # The run says it too (its summary's notes and --json), and loads all the same.
    done = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m)
    assert done.exit_code == 0
    said = [n["object"] for n in done.to_dict()["notes"] if "feed no target" in n["message"]]
    assert sorted(said) == ["job_history (query)", "tool_configs"]
    assert not list((tmp_path / "state").glob("*scratch*"))


def test_strict_refuses_unacknowledged_columns_and_drop_acknowledges(
        tmp_path: Path, pg_dsn: Dsn, target: psycopg.Connection,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.cli.main import main

    db, m = _db(tmp_path)
    with pytest.raises(PlanErrors) as info:
        run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                    dry_run=True, strict=True)
    messages = [e.message for e in info.value.errors]
    assert messages == [
        "mapping tool_configs: source column(s) of tool_configs feed nothing (--strict): "
        "token_iv, refresh_iv",
        "mapping job_history: source column(s) of job_history (query) feed nothing "
        "(--strict): job_id"]
    argv = ["migrate", str(db), pg_dsn.conninfo, "--state-dir", str(tmp_path / "s"),
            "--into-existing", "--map", str(m), "--strict", "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Error: 2 plan errors:" in err and "Traceback" not in err

    m.write_text(_acknowledge(MAPPING))
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                         strict=True)
    assert result.exit_code == 0
    assert not [n for n in result.plan.notes if "feed no target" in n.message]
    dropped = {t.name: t.dropped for t in result.plan.tables}  # type: ignore[union-attr]
    assert dropped == {"tool_configs": ["token_iv", "refresh_iv"], "jobs": [],
                       "job_history": ["job_id"]}
    # The file may ask for strictness itself; a `drop:` of no column is an error.
    m.write_text("strict: true\n" + MAPPING.replace("  tool_configs:\n",
                                                    "  tool_configs:\n    drop: [nope]\n"))
    with pytest.raises(PlanErrors) as info:
        run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                    dry_run=True)
    assert [e.message for e in info.value.errors][:1] == [
        "mapping tool_configs: `drop:` 'nope' is not a column of tool_configs"]
    assert len(info.value.errors) == 3


def test_query_source_reports_base_count_and_left_out_keys(
        tmp_path: Path, pg_dsn: Dsn, target: psycopg.Connection) -> None:
    from pgshift.report_tables import migrate_summary

    db, m = _db(tmp_path, _acknowledge(MAPPING), orphans=3)
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m)
    hist = next(t for t in result.plan.tables if t.name == "job_history")  # type: ignore[union-attr]
    assert (hist.base, hist.base_key, hist.base_rows, hist.rows, hist.left_out) == (
        "job_history", ["id"], 903, 900, 3)
    assert hist.left_out_keys == [{"id": 1000}, {"id": 1001}, {"id": 1002}]
    note = next(n for n in result.plan.notes if n.obj == "job_history")
    assert note.level == "warning"
    assert note.message == ("query source: 900 row(s) from job_history's 903; 3 of "
                            "job_history's rows left out (id=1000; id=1001; id=1002)")
    # The summary puts the base table's count next to the query's.
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(migrate_summary(result))
    text = console.export_text()
    assert "900 of 903" in text and "3 of job_history's rows left out" in text
    jobs = next(n for n in result.plan.notes if n.obj == "jobs")
    assert (jobs.level, jobs.message) == ("info", "query source: 300 row(s) from jobs's 300; "
                                                  "none left out")


def test_query_without_the_base_key_reports_counts_only(
        tmp_path: Path, pg_dsn: Dsn, target: psycopg.Connection) -> None:
    mapping = _acknowledge(MAPPING).replace("SELECT h.*, j.new_id FROM job_history h",
                                            "SELECT h.at, h.note, j.new_id FROM job_history h")
    mapping = mapping.replace("      id: id\n", "").replace("drop: [job_id]", "drop: []")
    db, m = _db(tmp_path, mapping, orphans=2)
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                         dry_run=True)
    hist = next(t for t in result.plan.tables if t.name == "job_history")  # type: ignore[union-attr]
    assert (hist.base_rows, hist.rows, hist.left_out, hist.left_out_keys) == (902, 900, 2, [])
    note = next(n for n in result.plan.notes if n.obj == "job_history")
    assert "cannot be named" in note.message


def test_a_where_filter_says_how_many_rows_it_left_out(
        tmp_path: Path, pg_dsn: Dsn, target: psycopg.Connection) -> None:
    mapping = _acknowledge(MAPPING).replace("  tool_configs:\n",
                                            "  tool_configs:\n    where: 'enabled = 1'\n")
    db, m = _db(tmp_path, mapping)
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                         dry_run=True)
    note = next(n for n in result.plan.notes if n.obj == "tool_configs")
    assert note.message == ("where: source: 20 row(s) from tool_configs's 40; 20 of "
                            "tool_configs's rows left out by the filter")


def test_column_matched_by_name_says_so_and_how_to_let_identity_assign(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    pg_conn.execute("CREATE TABLE rate_limits (id bigserial PRIMARY KEY, bucket text NOT NULL, "
                    "hits integer NOT NULL)")
    pg_conn.commit()
    db = make_db(tmp_path / "r.db", "CREATE TABLE rate_limits (id TEXT PRIMARY KEY, bucket "
                 "TEXT NOT NULL, hits INTEGER NOT NULL);",
                 {"rate_limits": [(f"rl-{i}", f"b{i}", i) for i in range(5)]})
    with pytest.raises(UsageError) as info:
        run_migrate(db, pg_dsn, tmp_path / "s", into_existing=True)
    assert info.value.message == (
        "mapping rate_limits.id: type mismatch: text values cannot become bigint: the mapping "
        "does not name this column, so it was matched by name to source column 'id'")
    assert info.value.hint == ("`id: null` lets the identity assign it: tables: {rate_limits: "
                               "{columns: {id: null}}}")
    m = tmp_path / "m.yaml"
    m.write_text("tables: {rate_limits: {columns: {id: null}, drop: [id]}}")
    result = run_migrate(db, pg_dsn, tmp_path / "s", into_existing=True, mapping=m,
                         strict=True, restart=True)
    assert result.exit_code == 0
    got = pg_conn.execute("SELECT id, bucket FROM rate_limits ORDER BY id").fetchall()
    assert got == [(i + 1, f"b{i}") for i in range(5)]
    # A rehearsal with --truncate restarts the identity: the same ids again, not 6-10.
    again = run_migrate(db, pg_dsn, tmp_path / "s", into_existing=True, mapping=m,
                        truncate=True)
    assert again.exit_code == 0
    assert pg_conn.execute("SELECT id, bucket FROM rate_limits ORDER BY id").fetchall() == got
    nxt = pg_conn.execute("INSERT INTO rate_limits (bucket, hits) VALUES ('n', 0) RETURNING id")
    assert nxt.fetchone() == (6,)


def test_every_mapping_file_problem_is_listed_at_once(tmp_path: Path, pg_dsn: Dsn,
                                                       target: psycopg.Connection) -> None:
    db, m = _db(tmp_path)
    m.write_text("tables: {jobs: {colums: {}}, job_history: {wher: x}}")
    with pytest.raises(UsageError) as info:
        run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                    dry_run=True)
    lines = info.value.message.splitlines()
    assert lines[0] == "2 problems:"
    assert [ln.rsplit(": ", 2)[1] for ln in lines[1:]] == ["tables.jobs.colums",
                                                           "tables.job_history.wher"]
    # Plan errors too: a bad expression in one table, an unknown column in another.
    m.write_text(json.dumps({"tables": {"jobs": {"columns": {"kind": "upper(kind"}},
                                        "tool_configs": {"columns": {"nope": "id"}}}}))
    with pytest.raises(PlanErrors) as plan_info:
        run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                    dry_run=True, tables=["jobs", "tool_configs"])
    found = [e.message.split(":")[0] for e in plan_info.value.errors]
    assert "mapping jobs.kind" in found and "mapping tool_configs.nope" in found


def test_rejects_name_the_source_key_and_the_conflicting_constraint(
        tmp_path: Path, pg_dsn: Dsn, target: psycopg.Connection) -> None:
    rows = _rows()
    rows["jobs"] = [(*j[:4], "{not json") if j[0] == "job-0003" else j for j in rows["jobs"]]
    mapping = _acknowledge(MAPPING).replace(
        "      legacy_id: id\n", "      legacy_id: \"iif(id = 'job-0002', 'job-0001', id)\"\n")
    db = make_db(tmp_path / "app.db", IV_SOURCE, rows)
    m = tmp_path / "mapping.yaml"
    m.write_text(mapping)
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m,
                         allow_rejects=True)
    assert result.rejects == 2
    assert result.rejects_file is not None
    got = [json.loads(ln) for ln in result.rejects_file.read_text().splitlines()]
    by_column = {r["column"]: r for r in got}
    # The query keeps jobs' TEXT primary key: rejects are named by it, not by a rowid.
    assert by_column["payload"]["key"] == {"id": "job-0003"}
    dup = by_column["legacy_id"]
    assert dup["key"] in ({"id": "job-0001"}, {"id": "job-0002"})
    assert dup["raw_value"] == "job-0001"
    assert "jobs_legacy_id_key" in dup["reason"] and "already exists" in dup["reason"]


def test_the_documented_mapping_example_is_a_valid_mapping(tmp_path: Path) -> None:
    import re

    from pgshift.existing.mapping import load_mapping

    doc = (Path(__file__).parent.parent / "docs" / "mapping.md").read_text()
    match = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert match is not None
    path = tmp_path / "example.yaml"
    path.write_text(match.group(1))
    mapping = load_mapping(path)
    assert mapping.strict and mapping.tables["job_history"].drop == ["job_id"]
    assert mapping.tables["job_history"].base == "job_history"
    assert mapping.tables["oauth_tokens"].relationships == {"user_id": "owner"}
    assert mapping.tables["tool_configs"].columns["updated_at"].default
