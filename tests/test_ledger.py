"""The write ledger's checker: it must catch every kind of lost write, and nothing else.

Writes go through the real app (uvicorn + SQLite file); the damage is done to the database
file afterwards, the way a broken sync or a bad rollback would do it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from app_helpers import config_for, running_app
from pgshift.cli.main import main
from pgshift.demo.app import AppConfig, AppServer
from pgshift.demo.ledger import Entry, LedgerWriter, check_ledger, read_ledger
from pgshift.demo.seed import create_schema
from pgshift.errors import UsageError


class Recorder:
    """Sends requests and records them as the load generator does."""

    def __init__(self, url: str, ledger: Path) -> None:
        self.client = httpx.Client(base_url=url, trust_env=False, timeout=30)
        self.ledger = LedgerWriter(ledger)

    def write(self, op: str, table: str, method: str, path: str, body: Any = None, *,
              key: Any = None, values: dict[str, Any] | None = None,
              delta: dict[str, int] | None = None) -> dict[str, Any]:
        sent = time.time()
        r = self.client.request(method, path, json=body)
        ts = time.time()
        data = r.json() if r.content else {}
        self.ledger.record(Entry(op=op, table=table, key=data.get("id") if key is None else key,
                                 sent=sent, ts=ts, values=values or {}, delta=delta or {},
                                 ack=r.is_success, status=r.status_code, response=data))
        self.ledger.flush()
        return data

    def close(self) -> None:
        self.client.close()
        self.ledger.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppServer]:
    with running_app(config_for("sqlite", tmp_path)) as server:
        yield server


@pytest.fixture
def rec(app: AppServer, tmp_path: Path) -> Iterator[Recorder]:
    r = Recorder(app.url, tmp_path / "ledger.jsonl")
    try:
        yield r
    finally:
        r.close()


def _db(app: AppServer) -> Path:
    assert app.config.database_path is not None
    return app.config.database_path


def _sql(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(db)) as con:  # foreign keys off: damage exactly one row
        con.execute(sql, params)
        con.commit()


def _check(rec: Recorder, db: Path) -> Any:
    rec.ledger.flush()
    return check_ledger(read_ledger(rec.ledger.path), sqlite_path=db)


def _enqueue(rec: Recorder, **payload: Any) -> dict[str, Any]:
    return rec.write("job.enqueue", "jobs", "POST", "/jobs",
                     {"type": "t", "payload": payload, "priority": 5},
                     values={"type": "t", "payload": payload, "priority": 5,
                             "status": "pending"})


def test_clean_ledger_passes(app: AppServer, rec: Recorder) -> None:
    job = _enqueue(rec, n=1)
    rec.write("user.create", "users", "POST", "/users", {"email": "a@x.test", "name": "A"},
              values={"email": "a@x.test", "name": "A"})
    rec.write("tool.put", "tool_configs", "PUT", "/tools/slack", {"config": {"v": 1}},
              key="slack", values={"config": {"v": 1}})
    rec.write("tool.toggle", "tool_configs", "POST", "/tools/slack/toggle", key="slack",
              values={"enabled": 0})
    result = _check(rec, _db(app))
    assert result.ok, result.violations
    assert result.keys_checked == 3 and result.columns_checked >= 6
    assert job["status"] == "pending"


def test_deleted_acknowledged_write_is_missing(app: AppServer, rec: Recorder,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    job = _enqueue(rec, n=1)
    _enqueue(rec, n=2)
    _sql(_db(app), "DELETE FROM jobs WHERE id = ?", (job["id"],))
    result = _check(rec, _db(app))
    assert [(v.kind, v.key) for v in result.violations] == [("missing", job["id"])]
    assert main(["load", "check-ledger", str(rec.ledger.path), "--sqlite", str(_db(app))]) == 1
    out, err = capsys.readouterr()
    assert f"missing: 1 acknowledged write(s) to jobs '{job['id']}'" in out
    assert "Error: 1 violation(s): 1 missing" in err


def test_reverted_and_lost_updates(app: AppServer, rec: Recorder) -> None:
    for v in (1, 2):
        rec.write("tool.put", "tool_configs", "PUT", "/tools/jira", {"config": {"v": v}},
                  key="jira", values={"config": {"v": v}})
    assert _check(rec, _db(app)).ok
    _sql(_db(app), "UPDATE tool_configs SET config = ? WHERE tool_name = 'jira'", ('{"v":1}',))
    [v] = _check(rec, _db(app)).violations
    assert (v.kind, v.key, v.column, v.expected, v.actual) == (
        "reverted-update", "jira", "config", {"v": 2}, '{"v":1}')
    _sql(_db(app), "UPDATE tool_configs SET config = ? WHERE tool_name = 'jira'", ('{"v":9}',))
    assert [v.kind for v in _check(rec, _db(app)).violations] == ["lost-update"]
    # A job whose completion was rolled back: status reverted to an older acknowledged value.
    job = _enqueue(rec, n=3)
    for _ in range(100):  # claim until ours (priority 5 beats most seeded jobs)
        claimed = rec.write("job.claim", "jobs", "POST", "/jobs/claim",
                            values={"status": "processing"})
        if claimed.get("id") == job["id"]:
            break
    _sql(_db(app), "UPDATE jobs SET status = 'pending' WHERE id = ?", (job["id"],))
    kinds = {(v.kind, v.column) for v in _check(rec, _db(app)).violations}
    assert ("reverted-update", "status") in kinds


def test_concurrent_writes_may_land_in_either_order(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with closing(sqlite3.connect(db)) as con:
        create_schema(con)
        con.execute("INSERT INTO tool_configs (tool_name, config, updated_at) "
                    "VALUES ('x', '{\"v\":1}', 0)")
        con.commit()

    def put(v: int, sent: float, ts: float) -> Entry:
        return Entry(op="tool.put", table="tool_configs", key="x", sent=sent, ts=ts,
                     values={"config": {"v": v}})

    # v2 was sent before v1 was acknowledged: either may be last.
    assert check_ledger([put(1, 10.0, 12.0), put(2, 11.0, 13.0)], sqlite_path=db).ok
    # v2 was sent after v1 was acknowledged: v2 must win; finding v1 is a reverted update.
    seq = check_ledger([put(1, 10.0, 11.0), put(2, 12.0, 13.0)], sqlite_path=db)
    assert [v.kind for v in seq.violations] == ["reverted-update"]
    # An unacknowledged later write does not excuse anything.
    late = put(3, 14.0, 15.0)
    late.ack = False
    assert not check_ledger([put(1, 10.0, 11.0), put(2, 12.0, 13.0), late],
                            sqlite_path=db).ok


def test_double_claim_on_two_databases(app: AppServer, rec: Recorder, tmp_path: Path) -> None:
    """Split brain: blue and green each claim the same job; the ledger sees both claims."""
    job = rec.write("job.enqueue", "jobs", "POST", "/jobs",
                    {"type": "t", "payload": {}, "priority": 100},
                    values={"type": "t", "status": "pending"})
    copy = tmp_path / "green.db"
    with closing(sqlite3.connect(_db(app))) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    with AppServer(AppConfig(engine="sqlite", database_path=copy)) as green:
        other = Recorder(green.url, rec.ledger.path)
        try:
            first = rec.write("job.claim", "jobs", "POST", "/jobs/claim",
                              values={"status": "processing"})
            second = other.write("job.claim", "jobs", "POST", "/jobs/claim",
                                 values={"status": "processing"})
        finally:
            other.close()
    assert first["id"] == second["id"] == job["id"]
    result = _check(rec, _db(app))
    assert [(v.kind, v.key) for v in result.violations] == [("double-claim", job["id"])]


def test_lost_and_extra_decrements(app: AppServer, rec: Recorder) -> None:
    key = "gh:user:42"
    rec.write("rate_limit.set", "rate_limits", "PUT", f"/rate-limits/{key}",
              {"remaining": 100}, key=key, values={"remaining": 100, "limit_total": 100})
    for _ in range(3):
        rec.write("rate_limit.take", "rate_limits", "POST", f"/rate-limits/{key}/take",
                  {"cost": 2}, key=key, delta={"remaining": -2})
    for _ in range(2):  # the GET that writes
        rec.write("rate_limit.read", "rate_limits", "GET", f"/rate-limits/{key}", key=key,
                  delta={"remaining": -1})
    result = _check(rec, _db(app))
    assert result.ok and result.counters_checked == 1
    _sql(_db(app), "UPDATE rate_limits SET remaining = 94 WHERE key = ?", (key,))
    [v] = _check(rec, _db(app)).violations
    assert (v.kind, v.expected, v.actual) == ("lost-decrement", 92, 94)
    _sql(_db(app), "UPDATE rate_limits SET remaining = 90 WHERE key = ?", (key,))
    assert [v.kind for v in _check(rec, _db(app)).violations] == ["extra-decrement"]


def test_counter_without_initial_value_is_unverifiable(app: AppServer, rec: Recorder) -> None:
    rec.write("rate_limit.set", "rate_limits", "PUT", "/rate-limits/k", {"remaining": 5},
              key="k", values={"remaining": 5})
    # A ledger that lost its first line: nothing proves the initial value.
    lines = rec.ledger.path.read_text().splitlines()
    rec.write("rate_limit.take", "rate_limits", "POST", "/rate-limits/k/take", key="k",
              delta={"remaining": -1})
    rec.ledger.path.write_text("\n".join(rec.ledger.path.read_text().splitlines()[len(lines):])
                               + "\n")
    result = check_ledger(read_ledger(rec.ledger.path), sqlite_path=_db(app))
    assert result.ok and result.unverifiable[0]["key"] == "k"


def test_cli_exit_codes_and_json(app: AppServer, rec: Recorder, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _enqueue(rec, n=1)
    rec.ledger.flush()
    ledger, db = str(rec.ledger.path), str(_db(app))
    assert main(["load", "check-ledger", ledger, "--sqlite", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["acknowledged"] == 1
    assert main(["load", "check-ledger", ledger]) == 2
    assert main(["load", "check-ledger", ledger, "--sqlite", db, "--postgres", "x"]) == 2
    assert main(["load", "check-ledger", str(tmp_path / "none.jsonl"), "--sqlite", db]) == 2
    assert main(["load", "check-ledger", ledger, "--sqlite", str(tmp_path / "no.db")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": "x"}\n')
    assert main(["load", "check-ledger", str(bad), "--sqlite", db]) == 2
    assert "line 1 is not a ledger entry" in capsys.readouterr().err
    bad.write_text('{"op":"x","table":"nope","key":1,"sent":1,"ts":2}\n')
    with pytest.raises(UsageError, match="unknown table"):
        read_ledger(bad)


def test_writer_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    writers = [LedgerWriter(path, flush_every=3) for _ in range(3)]
    for i in range(30):
        writers[i % 3].record(Entry(op="o", table="jobs", key=f"k{i}", sent=i, ts=i + 0.5,
                                    values={"note": "é" * (i * 50)}))
    for w in writers:
        w.close()
    entries = read_ledger(path)
    assert sorted(e.key for e in entries) == sorted(f"k{i}" for i in range(30))
