"""The fault switch, /health's 503, configuration errors, and the app as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app_helpers import config_for, running_app
from pgshift.demo.app import AppConfig, AppServer
from pgshift.demo.app_faults import Faults, parse_faults
from pgshift.dsn import Dsn, connect
from pgshift.errors import UsageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_parse_faults() -> None:
    assert parse_faults(None) == Faults()
    assert parse_faults(" off ") == Faults()
    f = parse_faults("error_rate=0.05, latency_ms=200,db=dead")
    assert f == Faults(0.05, 200.0, True)
    assert f.describe() == "error_rate=0.05,latency_ms=200,db=dead"
    assert parse_faults(f.describe()) == f
    for bad in ("error_rate=2", "latency_ms=-1", "db=sleepy", "boom=1", "error_rate"):
        with pytest.raises(UsageError):
            parse_faults(bad)


def test_config_from_env() -> None:
    c = AppConfig.from_env({"DB_ENGINE": "postgres", "DATABASE_URL": "env:X",
                            "PGSHIFT_DEMO_FAULTS": "latency_ms=5"})
    assert c.engine == "postgres" and c.faults.latency_ms == 5
    for env in ({"DB_ENGINE": "mysql"}, {"DB_ENGINE": "sqlite"}, {"DB_ENGINE": "postgres"},
                {"DB_ENGINE": "sqlite", "DATABASE_PATH": "x.db", "DB_POOL_SIZE": "many"}):
        with pytest.raises(UsageError):
            AppConfig.from_env(env)


def test_error_rate_and_latency(tmp_path: Path) -> None:
    config = config_for("sqlite", tmp_path, faults=parse_faults("error_rate=1"))
    with running_app(config) as app, httpx.Client(base_url=app.url, trust_env=False) as c:
        r = c.get("/tools/github")
        assert r.status_code == 500 and r.headers["x-pgshift-fault"] == "error"
        before = c.post("/jobs", json={"type": "x", "payload": {}})
        assert before.status_code == 500
        assert c.get("/health").status_code == 200  # probes see the database, not the dice
        app.set_faults(parse_faults("error_rate=0.5"))
        codes = [c.get("/tools/github").status_code for _ in range(200)]
        assert 40 < codes.count(500) < 160 and codes.count(200) == 200 - codes.count(500)
        app.set_faults(parse_faults("latency_ms=150"))
        t0 = time.perf_counter()
        assert c.get("/tools/github").status_code == 200
        assert time.perf_counter() - t0 >= 0.15
        # Switched at run time over HTTP too.
        assert c.post("/_admin/faults", json={"spec": "off"}).json()["spec"] == "off"
        assert c.post("/_admin/faults", json={"spec": "nope=1"}).status_code == 400
        metrics = c.get("/metrics").text
        assert 'pgshift_demo_faults_injected_total{kind="error"}' in metrics
        assert 'route="/tools/{name}",method="GET",status="500"' in metrics
        # The injected 500 on POST /jobs wrote nothing.
        jobs = c.get("/jobs", params={"type": "x"}).json()["jobs"]
        assert jobs == []


def test_db_dead_fault_fails_health_and_api(tmp_path: Path) -> None:
    config = config_for("sqlite", tmp_path, faults=parse_faults("db=dead"))
    with running_app(config) as app, httpx.Client(base_url=app.url, trust_env=False) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["db"] == "down"
        assert c.get("/tools/github").status_code == 503
        assert c.post("/jobs/claim").status_code == 503
        assert 'pgshift_demo_db_errors_total{engine="sqlite",kind="fault"} 3' in c.get(
            "/metrics").text
        app.set_faults(Faults())
        assert c.get("/health").status_code == 200


def test_health_503_when_postgres_is_unreachable() -> None:
    port = _free_port()  # nothing listens there
    config = AppConfig(engine="postgres",
                       database_url=f"postgresql://nobody:secret@127.0.0.1:{port}/app")
    with AppServer(config) as app, httpx.Client(base_url=app.url, trust_env=False) as c:
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json()["db"] == "down" and r.json()["engine"] == "postgres"
        assert "secret" not in r.text  # the password never leaves the app
        assert c.post("/jobs", json={"type": "x"}).status_code == 503
        assert 'kind="unavailable"' in c.get("/metrics").text


def test_health_heals_after_postgres_comes_back(tmp_path: Path, pg_dsn: Dsn) -> None:
    config = config_for("postgres", tmp_path, pg_dsn)
    with running_app(config) as app, httpx.Client(base_url=app.url, trust_env=False) as c:
        for i in range(3):  # a few pooled connections
            assert c.post("/users", json={"email": f"before{i}@restart.test"}).status_code == 201
        # Kill the app's backends: pooled connections break, the next request reconnects.
        with connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'pgshift-demo-app'")
        # A write's BEGIN fails on the dead connection and retries on a fresh one.
        assert c.post("/users", json={"email": "after@restart.test"}).status_code == 201
        assert c.get("/health").status_code == 200


def test_serves_as_a_process(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"  # missing: the app creates the blue schema
    port = _free_port()
    env = {**os.environ, "DB_ENGINE": "sqlite", "DATABASE_PATH": str(db),
           "PGSHIFT_DEMO_FAULTS": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "pgshift.demo.app", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["engine"] == "sqlite"
        created = httpx.post(f"http://127.0.0.1:{port}/users", json={"email": "a@b.c"},
                             trust_env=False)
        assert created.status_code == 201 and created.json()["id"] == 1
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_bad_config_exits_2() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DB_ENGINE", "DATABASE_PATH", "DATABASE_URL", "PGSHIFT_DEMO_FAULTS")}
    env["DB_ENGINE"] = "postgres"
    r = subprocess.run([sys.executable, "-m", "pgshift.demo.app"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Error: DB_ENGINE=postgres needs DATABASE_URL" in r.stderr
