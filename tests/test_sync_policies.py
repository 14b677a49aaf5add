"""Per-table settings and conflict policies, both directions; unique-key collisions as
conflicts; pause/resume; green_writes: forbid with a real role."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.sync import settings as cfg
from pgshift.sync import verbs
from pgshift.sync.apply import SyncOptions, run
from pgshift.sync.apply_sqlite import run_to_sqlite
from sync_helpers import (
    check,
    conflicts_of,
    green_role,
    pg_exec,
    small_synced,
    sqlite_rows,
    sync_once,
    write,
)

pytestmark = pytest.mark.data

CAPTURED = ["jobs", "kv", "u"]


def policy(name: str, table: str = "kv", **more: str) -> dict[str, cfg.TableSettings]:
    return cfg.parse({"tables": {table: {"conflict": name, **more}}}, CAPTURED)


# ------------------------------------------------------------ settings (no database)


def test_settings_defaults_and_the_cutover_example() -> None:
    example = Path(__file__).parent.parent / "docs" / "cutover.example.yaml"
    seeded = ["app_state", "job_history", "jobs", "oauth_tokens", "rate_limits",
              "tool_configs", "user_sessions", "users"]
    s = cfg.load(example, seeded)
    assert s["jobs"] == cfg.TableSettings(kind="queue", green_writes="forbid")
    assert s["rate_limits"].kind == "counter" and s["app_state"].green_writes == "forbid"
    assert s["users"] == cfg.DEFAULT  # not named: defaults
    assert cfg.DEFAULT.model_dump() == {"kind": "plain", "green_writes": "allow",
                                        "writes": "single-writer", "conflict": "sor-wins"}
    # a bare tables: mapping, and a mapping of table names, are both accepted
    assert cfg.parse({"tables": {"kv": None}}, CAPTURED)["kv"] == cfg.DEFAULT
    assert cfg.parse({"kv": {"writes": "dual-writer"}}, CAPTURED)["kv"].dual


@pytest.mark.parametrize(("data", "message"), [
    ({"kv": {"kind": "queue", "writes": "dual-writer"}}, "a job claimed on both sides"),
    ({"kv": {"kind": "counter", "writes": "dual-writer"}}, "lost decrement"),
    ({"kv": {"green_writes": "forbid", "writes": "dual-writer"}}, "green_writes: forbid"),
    ({"kv": {"conflict": "newest"}}, "tables.kv: conflict"),
    ({"kv": {"colour": "red"}}, "tables.kv: colour: unknown key"),
    ({"nope": {}}, "tables not captured by sync: nope"),
    ({"tables": ["kv"]}, "'tables:' must be a mapping"),
])
def test_settings_refusals_are_one_line(data: dict, message: str) -> None:
    with pytest.raises(cfg.TablesFileError, match=message) as info:
        cfg.parse(data, CAPTURED)
    assert "\n" not in str(info.value)


def test_winner_rules() -> None:
    assert cfg.winner("sor-wins", "sqlite") == ("sqlite", "sor-wins")
    assert cfg.winner("sor-wins", "postgres") == ("postgres", "sor-wins")
    assert cfg.winner("blue-wins", "postgres")[0] == "sqlite"
    assert cfg.winner("green-wins", "sqlite")[0] == "postgres"
    assert cfg.winner("last-writer-wins", "sqlite", sqlite_ts=5, postgres_ts=9)[0] == \
        "postgres"
    assert cfg.winner("last-writer-wins", "postgres", sqlite_ts=9, postgres_ts=5)[0] == \
        "sqlite"
    side, rule = cfg.winner("last-writer-wins", "postgres", sqlite_ts=9, postgres_ts=None)
    assert side == "postgres" and "time unknown" in rule


def test_cli_refuses_bad_tables_config_and_plan_says_why(
        tmp_path: Path, pg_dsn: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  jobs:\n    kind: queue\n    writes: dual-writer\n")
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--tables-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "a job claimed on both sides or a lost decrement is not a conflict" in err
    assert main(["sync", "plan", str(db), pg_dsn.conninfo, "--tables-config", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "REFUSED: writes: dual-writer is refused for kind: queue" in out
    good = tmp_path / "cutover.yaml"
    good.write_text("name: x\ntables:\n  kv:\n    writes: dual-writer\n    conflict: "
                    "last-writer-wins\n  jobs:\n    kind: queue\n    green_writes: forbid\n")
    assert main(["sync", "plan", str(db), pg_dsn.conninfo, "--tables-config", str(good),
                 "--json"]) == 0
    import json

    plan = {r["table"]: r for r in json.loads(capsys.readouterr().out)["tables"]}
    assert plan["kv"]["writes"] == "dual-writer" and plan["kv"]["key"] == ["k"]
    assert any("clocks" in n for n in plan["kv"]["notes"])
    assert any("single-writer only" in n for n in plan["jobs"]["notes"])
    assert plan["u"]["conflict"] == "sor-wins" and not plan["u"]["refusals"]
    # run stores the effective settings; status shows them
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--tables-config", str(good)]) == 0
    capsys.readouterr()
    assert main(["sync", "status", str(db), pg_dsn.conninfo, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["tables"]["kv"]["conflict"] == "last-writer-wins"
    assert status["tables"]["jobs"]["kind"] == "queue" and status["paused"] is False


# ------------------------------------------------------------ to-postgres policies


@pytest.mark.parametrize(("name", "value", "winner"), [
    ("sor-wins", "blue", "sqlite"), ("blue-wins", "blue", "sqlite"),
    ("green-wins", "green", "postgres"), ("last-writer-wins", "blue", "sqlite")])
def test_to_postgres_policies(tmp_path: Path, pg_dsn: Dsn, name: str, value: str,
                              winner: str) -> None:
    db = small_synced(tmp_path, pg_dsn)
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'a'")
    write(db, "update kv set v = 'blue' where k = 'a'",
          "update kv set v = 'other' where k = 'b'")  # no conflict: applied in any case
    result = sync_once(db, pg_dsn, settings=policy(name))
    assert result.conflicts == 1
    assert pg_exec(pg_dsn, "select k, v from kv where k in ('a', 'b') order by k") == \
        [("a", value), ("b", "other")]
    [c] = conflicts_of(pg_dsn)
    assert (c["policy"], c["winner"], c["reason"]) == (name, winner, "before")
    assert c["sqlite_ts"] > 0
    if winner == "sqlite":
        # the PostgreSQL version lost: it is the loser image, SQLite's the winner
        assert c["loser_image"] == {"k": "a", "v": "green"} and "'blue'" in c["winner_image"]
        assert c["loser_origin"] == "postgres" and c["loser_change"] is None
        check(db, pg_dsn)
    else:
        # the SQLite change lost: not applied, kept as the loser image with its seq
        assert c["loser_image"] == {"k": "a", "v": "blue"} and '"green"' in c["winner_image"]
        assert c["loser_origin"] == "sqlite" and c["loser_change"] == c["seq"]
    if name == "last-writer-wins":
        # no PostgreSQL capture: green's time is unknown, the system of record decides
        assert c["rule"] == "last-writer-wins: time unknown, sor-wins"
        assert c["postgres_ts"] is None
    # only this table was affected, and the counters count what changed PostgreSQL
    rows = dict(pg_exec(pg_dsn, "select table_name, applied_to_postgres from "
                                "pgshift.sync_tables"))
    assert rows["kv"] == (2 if winner == "sqlite" else 1)


def test_last_writer_wins_with_postgres_capture_uses_both_times(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    s = policy("last-writer-wins")
    # green first, blue later: blue is the last writer
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'a'")
    time.sleep(0.01)
    write(db, "update kv set v = 'blue' where k = 'a'")
    assert sync_once(db, pg_dsn, settings=s).conflicts == 1
    # blue first, green later: green is the last writer and keeps the row
    write(db, "update kv set v = 'blue2' where k = 'b'")
    time.sleep(0.01)
    pg_exec(pg_dsn, "update kv set v = 'green2' where k = 'b'")
    assert sync_once(db, pg_dsn, settings=s).conflicts == 1
    assert pg_exec(pg_dsn, "select k, v from kv where k in ('a', 'b') order by k") == \
        [("a", "blue"), ("b", "green2")]
    first, second = conflicts_of(pg_dsn)
    assert (first["winner"], first["rule"]) == ("sqlite", "last-writer-wins")
    assert first["postgres_ts"] < first["sqlite_ts"]
    assert (second["winner"], second["rule"]) == ("postgres", "last-writer-wins")
    assert second["postgres_ts"] > second["sqlite_ts"]
    # blue won on 'a': green's queued change of 'a' lost and left the queue (recorded)
    assert first["loser_change"] is not None
    assert pg_exec(pg_dsn, "select count(*) from pgshift.pg_changes where key_new = "
                           "'[\"a\"]'") == [(0,)]
    # green won on 'b': its queued change carries 'green2' to SQLite without a new conflict
    res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn, settings=s))
    assert res.conflicts == 0 and res.parked == 0
    check(db, pg_dsn)


def test_a_lost_change_does_not_block_the_rest_of_its_batch(tmp_path: Path,
                                                            pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn)
    pg_exec(pg_dsn, "update kv set v = 'green' where k in ('a', 'c')")
    write(db, *[f"update kv set v = 'b{i}' where k = '{k}'"
                for i, k in enumerate("abcdef")],
          "delete from kv where k = 'c'", "insert into jobs values (9, 'x')")
    result = sync_once(db, pg_dsn, settings=policy("green-wins"))
    assert result.conflicts == 3 and result.parked == 0
    assert pg_exec(pg_dsn, "select k, v from kv order by k") == [
        ("a", "green"), ("b", "b1"), ("c", "green"), ("d", "b3"), ("e", "b4"), ("f", "b5")]
    assert pg_exec(pg_dsn, "select state from jobs where id = 9") == [("x",)]
    # the delete of 'c' lost too: its before-image (b2) never was PostgreSQL's row
    assert [(c["key"], c["op"], c["winner"]) for c in conflicts_of(pg_dsn)] == [
        ("'a'", "U", "postgres"), ("'c'", "U", "postgres"), ("'c'", "D", "postgres")]


# ------------------------------------------------------------ to-sqlite policies


@pytest.mark.parametrize(("name", "value", "winner"), [
    ("sor-wins", "green", "postgres"), ("green-wins", "green", "postgres"),
    ("blue-wins", "blue", "sqlite"), ("last-writer-wins", "green", "postgres")])
def test_to_sqlite_policies(tmp_path: Path, pg_dsn: Dsn, name: str, value: str,
                            winner: str) -> None:
    """After the flip: blue's incidental write (in the SQLite log, not applied) and
    green's write of the same row meet in the to-sqlite applier."""
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    s = policy(name)
    write(db, "update kv set v = 'blue' where k = 'a'")
    time.sleep(0.01)
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'a'",
            "update kv set v = 'green-b' where k = 'b'")
    res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn, settings=s))
    assert res.conflicts == 1 and res.parked == 0
    assert sqlite_rows(db, "select k, v from kv where k in ('a', 'b') order by k") == \
        [("a", value), ("b", "green-b")]
    [c] = conflicts_of(pg_dsn)
    assert (c["direction"], c["policy"], c["winner"]) == ("to-sqlite", name, winner)
    assert c["postgres_ts"] > 0 and c["sqlite_ts"] is not None
    blue_seq = sqlite_rows(db, "select max(seq) from _pgshift_changes where op = 'U' "
                               "and key_new = '''a'''")[0][0]
    if winner == "postgres":
        assert c["loser_image"] == {"k": "a", "v": "blue"} and c["loser_origin"] == "sqlite"
        assert c["loser_change"] == blue_seq
        # blue's change lost: the to-postgres applier passes over it
        assert sqlite_rows(db, "select origin from _pgshift_changes where seq = ?",
                           (blue_seq,)) == [("lost",)]
    else:
        assert c["loser_image"] == {"k": "a", "v": "green"} and c["loser_origin"] == "postgres"
        assert c["loser_change"] == c["seq"]
    # the to-postgres side then converges without recording the conflict twice
    after = sync_once(db, pg_dsn, settings=s)
    assert after.conflicts == 0 and after.parked == 0
    check(db, pg_dsn)
    assert len(conflicts_of(pg_dsn)) == 1


# ------------------------------------------------------------ unique keys


def test_unique_key_collisions_to_postgres(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn)
    write(db, "insert into u values (7, 'y@e', 'one')", "insert into u values (9, 'z@e', 'z')")
    assert sync_once(db, pg_dsn).conflicts == 0
    # green changes row 7 (no PostgreSQL capture); SQLite then evicts it by email
    pg_exec(pg_dsn, "update u set name = 'green' where id = 7")
    write(db, "insert or replace into u values (8, 'y@e', 'two')",
          # SQLite evicting its own rows is no conflict: row 9 (logged) and row 1 (snapshot)
          "insert or replace into u values (10, 'z@e', 'ten')",
          "insert or replace into u values (11, 's1@e', 'eleven')")
    result = sync_once(db, pg_dsn)
    assert result.conflicts == 1
    [c] = conflicts_of(pg_dsn)
    assert (c["reason"], c["winner"], c["table_name"]) == ("unique", "sqlite", "u")
    assert c["loser_image"] == {"id": 7, "email": "y@e", "name": "green"}
    check(db, pg_dsn)


def test_unique_key_collision_with_a_green_insert(tmp_path: Path, pg_dsn: Dsn) -> None:
    """With PostgreSQL capture, a row green inserted is told apart from SQLite's."""
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    pg_exec(pg_dsn, "insert into u values (100, 'x@e', 'green')",
            "insert into kv values ('g', 'green')")
    write(db, "insert into u values (50, 'x@e', 'blue')",
          "insert or replace into kv values ('g', 'blue')")  # an insert over green's row
    result = sync_once(db, pg_dsn)
    assert result.conflicts == 2
    by_reason = {c["reason"]: c for c in conflicts_of(pg_dsn)}
    assert by_reason["unique"]["loser_image"] == {"id": 100, "email": "x@e", "name": "green"}
    assert by_reason["insert"]["loser_image"] == {"k": "g", "v": "green"}
    assert all(c["loser_change"] is not None for c in by_reason.values())
    # green's queued changes lost and left the queue
    assert pg_exec(pg_dsn, "select count(*) from pgshift.pg_changes") == [(0,)]
    assert pg_exec(pg_dsn, "select id, name from u where email = 'x@e'") == [(50, "blue")]


def test_unique_key_collision_green_wins(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    pg_exec(pg_dsn, "insert into u values (100, 'x@e', 'green')")
    write(db, "insert into u values (50, 'x@e', 'blue')")
    result = sync_once(db, pg_dsn, settings=policy("green-wins", table="u"))
    assert result.conflicts == 1 and result.parked == 0
    assert pg_exec(pg_dsn, "select id, name from u where email = 'x@e'") == [(100, "green")]
    [c] = conflicts_of(pg_dsn)
    assert c["winner"] == "postgres" and c["loser_image"]["name"] == "blue"


def test_unique_key_collision_to_sqlite(tmp_path: Path, pg_dsn: Dsn) -> None:
    """After the flip: green's insert evicts, in SQLite, a row blue wrote that has not
    reached PostgreSQL: a conflict (sor-wins: PostgreSQL's), and blue's change is lost."""
    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    write(db, "insert into u values (20, 'w@e', 'blue')")
    pg_exec(pg_dsn, "insert into u values (21, 'w@e', 'green')",
            "delete from u where id = 2", "insert into u values (22, 's2@e', 'green')")
    res = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert res.conflicts == 1 and res.parked == 0
    [c] = conflicts_of(pg_dsn)
    assert (c["reason"], c["winner"], c["loser_image"]) == (
        "unique", "postgres", {"id": 20, "email": "w@e", "name": "blue"})
    assert sync_once(db, pg_dsn).conflicts == 0
    check(db, pg_dsn)


# ------------------------------------------------------------ pause / resume


def test_pause_and_resume_a_following_applier(tmp_path: Path, pg_dsn: Dsn,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    db = small_synced(tmp_path, pg_dsn)
    stop = threading.Event()
    t = threading.Thread(target=run, args=(SyncOptions(sqlite_path=db, dsn=pg_dsn,
                                                       follow=True, poll=0.02),),
                         kwargs={"stop": stop})
    t.start()
    try:
        assert main(["sync", "pause", str(db), pg_dsn.conninfo]) == 0
        time.sleep(0.1)  # more than one poll
        write(db, "update kv set v = 'paused' where k = 'a'")
        time.sleep(0.3)
        assert pg_exec(pg_dsn, "select v from kv where k = 'a'") == [("seed",)]
        status = verbs.status(db, pg_dsn)
        assert status.pending == 1
        capsys.readouterr()
        assert main(["sync", "status", str(db), pg_dsn.conninfo]) == 0
        assert "PAUSED" in capsys.readouterr().out
        assert main(["sync", "resume", str(db), pg_dsn.conninfo]) == 0
        deadline = time.monotonic() + 5
        while pg_exec(pg_dsn, "select v from kv where k = 'a'") != [("paused",)]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        stop.set()
        t.join()
    # a one-shot run honours the flag too
    assert main(["sync", "pause", str(db), pg_dsn.conninfo]) == 0
    write(db, "update kv set v = 'later' where k = 'a'")
    assert sync_once(db, pg_dsn).paused
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "pause"]) == 0
    # a drain of a paused sync could only time out: refused with the way out
    assert main(["sync", "drain", str(db), pg_dsn.conninfo, "--timeout", "1"]) == 2
    assert "is paused" in capsys.readouterr().err
    assert main(["sync", "resume", str(db), pg_dsn.conninfo]) == 0
    assert sync_once(db, pg_dsn).applied == 1
    check(db, pg_dsn)


# ------------------------------------------------------------ green_writes: forbid


def test_forbid_revokes_writes_from_the_app_role_and_gives_them_back(
        tmp_path: Path, pg_dsn: Dsn, capsys: pytest.CaptureFixture[str]) -> None:
    db = small_synced(tmp_path, pg_dsn)
    cutover = tmp_path / "cutover.yaml"
    cutover.write_text("tables:\n  jobs:\n    kind: queue\n    green_writes: forbid\n")
    with green_role(pg_dsn, "green") as (role, green):
        assert main(["sync", "install", str(db), pg_dsn.conninfo, "--tables-config",
                     str(cutover), "--app-role", role]) == 0
        assert f"revoked INSERT, UPDATE on jobs from {role}" in capsys.readouterr().out
        conn = connect(green, autocommit=True)
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied"):
                conn.execute("insert into jobs values (50, 'green')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("update jobs set state = 'x'")
            conn.execute("update kv set v = 'green' where k = 'f'")  # allowed tables stay
            assert conn.execute("select count(*) from jobs").fetchone() == (3,)
        finally:
            conn.close()
        assert pg_exec(pg_dsn, "select revoked_role, revoked from pgshift.sync_tables "
                               "where table_name = 'jobs'") == [(role, ["INSERT", "UPDATE"])]
        # uninstall grants back exactly what was there (no DELETE: it never had it)
        assert main(["sync", "uninstall", str(db), pg_dsn.conninfo]) == 0
        assert pg_exec(pg_dsn, f"select has_table_privilege('{role}', 'jobs', 'INSERT'), "
                               f"has_table_privilege('{role}', 'jobs', 'UPDATE'), "
                               f"has_table_privilege('{role}', 'jobs', 'DELETE')") == \
            [(True, True, False)]


def test_forbid_refuses_a_role_that_writes_through_public(tmp_path: Path,
                                                          pg_dsn: Dsn) -> None:
    db = small_synced(tmp_path, pg_dsn)
    role = f"greenp_{abs(hash(str(tmp_path))) % 10**8}"
    pg_exec(pg_dsn, f"create role {role} login", "grant insert on jobs to public")
    cutover = tmp_path / "t.yaml"
    cutover.write_text("jobs:\n  green_writes: forbid\n")
    try:
        assert main(["sync", "install", str(db), pg_dsn.conninfo, "--tables-config",
                     str(cutover), "--app-role", role]) == 2
    finally:
        pg_exec(pg_dsn, "revoke insert on jobs from public", f"drop owned by {role}",
                f"drop role {role}")


def test_conflicts_table_of_an_older_pgshift_is_upgraded(pg_dsn: Dsn) -> None:
    from pgshift.sync import state as st

    pg_exec(pg_dsn, "create schema pgshift",
            "create table pgshift.sync_conflicts (id bigint generated always as identity "
            "primary key, target_schema text not null, direction text not null, seq bigint "
            "not null, table_name text not null, op text not null, key text, policy text not "
            "null, winner text not null, winner_image text, loser_image jsonb, detected_at "
            "timestamptz not null default now())",
            "insert into pgshift.sync_conflicts (target_schema, direction, seq, table_name, "
            "op, policy, winner) values ('public', 'to-postgres', 1, 't', 'U', 'sor-wins', "
            "'sqlite')")
    conn = connect(pg_dsn)
    try:
        st.ensure_schema(conn)
        st.ensure_schema(conn)  # idempotent
    finally:
        conn.close()
    assert pg_exec(pg_dsn, "select seq, reason, loser_change from pgshift.sync_conflicts") == \
        [(1, None, None)]


def test_a_crash_between_the_sqlite_and_the_postgres_commit_is_finished(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    """to-sqlite: SQLite committed a batch (and its conflict decisions), PostgreSQL did
    not (kill -9 in between): the next run finishes it from what SQLite stored."""
    from pgshift.sync.apply import open_sqlite
    from pgshift.sync.apply_sqlite import Context, PgChange, _apply_batch, _tables

    db = small_synced(tmp_path, pg_dsn, pg_capture=True)
    write(db, "update kv set v = 'blue' where k = 'a'")
    pg_exec(pg_dsn, "update kv set v = 'green' where k = 'a'",
            "update kv set v = 'green-b' where k = 'b'")
    opts = SyncOptions(sqlite_path=db, dsn=pg_dsn)
    con = open_sqlite(db, readonly=False)
    conn = connect(pg_dsn)
    try:
        batch = [PgChange(*r) for r in conn.execute(
            "select id, tbl, op, key_old, key_new, row, before, ts from pgshift.pg_changes "
            "order by id").fetchall()]
        checkpoint = conn.execute("select last_seq from pgshift.sync_state").fetchone()[0]
        stored = _apply_batch(con, _tables(con, conn, opts), batch,
                              Context({}, "postgres", checkpoint))
    finally:
        con.close()
        conn.close()
    assert len(stored["conflicts"]) == 1
    # the crash: nothing of it reached PostgreSQL
    assert conflicts_of(pg_dsn) == [] and pg_exec(
        pg_dsn, "select count(*) from pgshift.pg_changes") == [(2,)]
    res = run_to_sqlite(opts)
    assert (res.conflicts, res.applied, res.pending) == (1, 2, 0)
    [c] = conflicts_of(pg_dsn)
    assert c["winner"] == "postgres" and c["loser_image"] == {"k": "a", "v": "blue"}
    assert sync_once(db, pg_dsn).conflicts == 0
    check(db, pg_dsn)
    assert pg_exec(pg_dsn, "select applied_to_sqlite from pgshift.sync_tables where "
                           "table_name = 'kv'") == [(2,)]
