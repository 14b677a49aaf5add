"""The load generator against real servers: the app on both engines, and a recording stub."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from app_helpers import config_for, running_app
from pgshift.cli.main import main
from pgshift.demo.app_faults import parse_faults
from pgshift.demo.ledger import check_ledger, read_ledger
from pgshift.demo.load import LoadOptions, Window, run_load
from pgshift.demo.load_http import cookie_pairs
from pgshift.demo.load_options import _bucket
from pgshift.dsn import Dsn, connect


def test_window_percentiles() -> None:
    w = Window()
    for ms in range(1, 101):
        w.observe(200, ms / 1000)
    w.observe(503, 0.001)
    w.observe(None, 0.001)
    assert abs(w.percentile_ms(0.5) - 50) / 50 < 0.06
    assert abs(w.percentile_ms(0.99) - 99) / 99 < 0.06
    assert w.errors == 2 and w.transport_errors == 1 and w.statuses["503"] == 1
    other = Window()
    other.observe(200, 1.0)
    w.merge(other)
    assert w.done == 103 and w.percentile_ms(1.0) >= 1000
    assert _bucket(0) == 0 and _bucket(10**6) == len(w.hist) - 1


def test_cookie_pairs() -> None:
    assert cookie_pairs([b"a=1; Path=/; HttpOnly", b"b=; Max-Age=0", b"junk"]) == [
        ("a", "1"), ("b", None)]


def test_load_on_sqlite_with_clean_ledger(tmp_path: Path) -> None:
    with running_app(config_for("sqlite", tmp_path)) as app:
        seconds: list[Window] = []
        summary = run_load(LoadOptions(url=app.url, rps=100, duration=2.0, users=10,
                                       ledger=tmp_path / "l.jsonl", seed=3),
                           on_second=seconds.append)
    d = summary.to_dict()
    assert 170 <= d["requests"] <= 210 and d["errors"] == 0 and d["dropped"] == 0
    assert len(seconds) >= 2 and sum(w.done for w in seconds) == d["requests"]
    assert d["writes_acknowledged"] > 20 and d["latency_ms"]["p50"] > 0
    db = app.config.database_path
    assert db is not None
    with closing(sqlite3.connect(db)) as con:
        users = con.execute("SELECT COUNT(*) FROM users WHERE email LIKE 'load-%'").fetchone()[0]
    assert users == 10  # one app user per virtual user
    entries = read_ledger(tmp_path / "l.jsonl")
    # Every write names the app that acknowledged it.
    assert {e.served_by for e in entries} == {"sqlite"}
    result = check_ledger(entries, sqlite_path=db)
    assert result.ok, result.violations[:3]
    assert result.counters_checked == 8  # every rate-limit key of the run, from its set value


def test_open_loop_keeps_the_rate_when_the_server_is_slow(tmp_path: Path) -> None:
    config = config_for("sqlite", tmp_path, faults=parse_faults("latency_ms=300"))
    with running_app(config) as app:
        summary = run_load(LoadOptions(url=app.url, rps=40, duration=2.0, users=2,
                                       rate_limit_keys=1))
    d = summary.to_dict()
    # Two users waiting 300 ms per answer would send ~13 requests closed-loop.
    assert d["sent"] >= 75
    assert d["latency_ms"]["p50"] >= 290


class _Recorder:
    """A stub server recording (X-User-Id, Cookie) and setting a sticky cookie per cohort."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        user = headers.get(b"x-user-id", b"").decode()
        cookie = headers.get(b"cookie", b"").decode()
        self.seen.append((user, cookie))
        out = [(b"content-type", b"application/json")]
        if not cookie:
            out.append((b"set-cookie", f"sticky={user}; Path=/".encode()))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def stub() -> Iterator[tuple[str, _Recorder]]:
    recorder = _Recorder()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(recorder, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_each_user_keeps_its_cohort_and_cookies(stub: tuple[str, _Recorder]) -> None:
    url, recorder = stub
    run_load(LoadOptions(url=url, rps=200, duration=2.0, users=25))
    users = {u for u, _ in recorder.seen if u}
    assert len(users) == 25
    with_cookie = [(u, c) for u, c in recorder.seen if c]
    assert len(with_cookie) > 100
    assert all(c == f"sticky={u}" for u, c in with_cookie)  # never another user's jar


def test_worker_processes_share_one_ledger(tmp_path: Path) -> None:
    with running_app(config_for("sqlite", tmp_path)) as app:
        summary = run_load(LoadOptions(url=app.url, rps=120, duration=2.0, users=8, workers=2,
                                       ledger=tmp_path / "l.jsonl"))
        db = app.config.database_path
    assert summary.workers == 2 and summary.total.errors == 0
    assert summary.total.done >= 200
    entries = read_ledger(tmp_path / "l.jsonl")
    creators = {e.response["email"].split("@")[0].rsplit("-", 1)[1] for e in entries
                if e.op == "user.create"}
    assert creators == {str(i) for i in range(8)}  # users of both processes
    assert db is not None
    result = check_ledger(entries, sqlite_path=db)
    assert result.ok, result.violations[:3]


def test_load_on_migrated_postgres_and_damage_is_caught(tmp_path: Path, pg_dsn: Dsn) -> None:
    with running_app(config_for("postgres", tmp_path, pg_dsn)) as app:
        summary = run_load(LoadOptions(url=app.url, rps=80, duration=2.0, users=8,
                                       ledger=tmp_path / "l.jsonl", seed=5))
    assert summary.total.errors == 0, summary.to_dict()
    entries = read_ledger(tmp_path / "l.jsonl")
    assert check_ledger(entries, postgres_dsn=pg_dsn).ok
    job = next(e.key for e in entries if e.op == "job.enqueue")
    key = next(e.key for e in entries if e.op == "rate_limit.take")
    with connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM jobs WHERE id = %s", (job,))
        conn.execute("UPDATE rate_limits SET remaining = remaining + 1 WHERE key = %s", (key,))
    result = check_ledger(entries, postgres_dsn=pg_dsn)
    kinds = {(v.kind, v.key) for v in result.violations}
    assert ("missing", job) in kinds and ("lost-decrement", key) in kinds


def test_cli_run_json_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_app(config_for("sqlite", tmp_path)) as app:
        assert main(["load", "run", "--url", app.url, "--rps", "40", "--duration", "1.2",
                     "--users", "4", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["requests"] >= 30 and data["errors"] == 0
    assert "rps" in captured.err and "p99" in captured.err  # live figures on stderr
    assert main(["load", "run", "--url", "https://x", "--rps", "1"]) == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["load", "run", "--url", f"http://127.0.0.1:{port}", "--rps", "1",
                 "--duration", "1"]) == 2
    assert "Error: cannot reach" in capsys.readouterr().err


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.mark.slow
@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")
def test_sustains_3000_rps_against_nginx(tmp_path: Path) -> None:
    """The generator must never be an app test's bottleneck (benchmarks/load.py measures more)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {tmp_path}/nginx.pid; "
        f"error_log {tmp_path}/error.log warn; events {{ worker_connections 4096; }}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; "
        f"proxy_temp_path {tmp_path}/proxy; fastcgi_temp_path {tmp_path}/fcgi; "
        f"uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi; "
        f"keepalive_requests 1000000; server {{ listen 127.0.0.1:{port}; "
        f"location / {{ return 200 '{{}}'; }} }} }}\n")
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        summary = run_load(LoadOptions(url=f"http://127.0.0.1:{port}", rps=3000, duration=8,
                                       users=200))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    d = summary.to_dict()
    assert d["errors"] == 0
    assert d["achieved_rps"] >= 2900 and d["dropped"] <= 0.01 * d["sent"], d
