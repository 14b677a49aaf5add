"""One API suite, run against the reference app on both engines.

SQLite: a file made by ``pgshift.demo.seed``. PostgreSQL: that file migrated by
``pgshift.migrate`` (identity ids, bigint epoch-ms and flags, JSON as text) -- the green
schema the app must serve unchanged. The app is a real uvicorn server on a free port.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app_helpers import config_for, pg_database, running_app
from pgshift.demo.app import AppServer


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[AppServer]:
    tmp: Path = tmp_path_factory.mktemp(f"app-{request.param}")
    if request.param == "sqlite":
        with running_app(config_for("sqlite", tmp)) as server:
            yield server
        return
    with pg_database(request.getfixturevalue("pg_server"), "app_api") as dsn, \
            running_app(config_for("postgres", tmp, dsn)) as server:
        yield server


@pytest.fixture
def client(app: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.url, timeout=30, trust_env=False) as c:
        yield c


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def test_health_reports_engine_and_latency(app: AppServer, client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["db"] == "ok"
    assert body["engine"] == app.config.engine
    assert body["latency_ms"] >= 0
    assert r.headers["x-pgshift-served-by"] == app.config.engine


def test_job_lifecycle_with_history(client: httpx.Client) -> None:
    payload = {"repo": "acme/api", "opts": {"full": True}, "note": "café ☕ 日本"}
    r = client.post("/jobs", json={"type": "sync_github", "payload": payload, "priority": 100})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "pending" and job["payload"] == payload
    assert uuid.UUID(job["id"]).version == 4
    assert job["created_at"] > 1_700_000_000_000  # epoch milliseconds

    claimed = client.post("/jobs/claim", json={"worker": "w1"})
    assert claimed.status_code == 200
    # Priority 100 is above anything seeded: the claim must pick this job.
    assert claimed.json()["id"] == job["id"]
    assert claimed.json()["status"] == "processing" and claimed.json()["attempts"] == 1

    done = client.post(f"/jobs/{job['id']}/complete", json={"result": {"ok": True, "items": 3}})
    assert done.status_code == 200
    assert done.json()["status"] == "completed" and done.json()["result"]["items"] == 3
    again = client.post(f"/jobs/{job['id']}/fail", json={"error": "late"})
    assert again.status_code == 409

    full = client.get(f"/jobs/{job['id']}").json()
    assert [h["status"] for h in full["history"]] == ["pending", "processing", "completed"]
    assert full["history"][1]["message"] == "claimed by w1"


def test_fail_records_error(client: httpx.Client) -> None:
    job = client.post("/jobs", json={"type": "poll_sentry", "payload": {}, "priority": 100}).json()
    assert client.post("/jobs/claim").json()["id"] == job["id"]
    r = client.post(f"/jobs/{job['id']}/fail", json={"error": "HTTP 502", "message": "boom"})
    assert r.status_code == 200
    assert r.json()["status"] == "failed"
    assert r.json()["result"] == {"ok": False, "error": "HTTP 502"}


def test_list_and_filter_jobs(client: httpx.Client) -> None:
    kind = f"test_{_uid()}"
    ids = {client.post("/jobs", json={"type": kind, "payload": {"i": i}}).json()["id"]
           for i in range(3)}
    r = client.get("/jobs", params={"type": kind, "status": "pending", "limit": 10})
    assert r.status_code == 200
    assert {j["id"] for j in r.json()["jobs"]} == ids
    assert len(client.get("/jobs", params={"type": kind, "limit": 2}).json()["jobs"]) == 2
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 400
    assert client.get("/jobs", params={"limit": "x"}).status_code == 400


def test_claim_drains_queue_then_204(client: httpx.Client) -> None:
    for _ in range(500):
        r = client.post("/jobs/claim")
        if r.status_code == 204:
            break
        assert r.status_code == 200
    else:
        pytest.fail("the queue never drained")
    delayed = client.post("/jobs", json={"type": "later", "payload": {}, "delay_ms": 3_600_000})
    assert delayed.status_code == 201
    assert client.post("/jobs/claim").status_code == 204  # not due yet


def test_missing_and_bad_input(client: httpx.Client) -> None:
    assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert client.post(f"/jobs/{uuid.uuid4()}/complete").status_code == 404
    assert client.post("/jobs", json={"payload": {}}).status_code == 400
    assert client.post("/jobs", content=b"{not json").status_code == 400
    assert client.post("/jobs", json={"type": "x", "user_id": 10**9}).status_code == 404
    assert client.get("/users/999999999").status_code == 404
    assert client.get("/users/abc").status_code == 400
    assert client.get(f"/users/{10**30}").status_code == 400  # not a 503 from an overflow
    assert client.post("/jobs", json={"type": "x", "delay_ms": 2**70}).status_code == 400


def test_tool_configs(client: httpx.Client) -> None:
    seeded = client.get("/tools/github")
    assert seeded.status_code == 200 and isinstance(seeded.json()["config"], dict)
    name = f"tool-{_uid()}"
    assert client.get(f"/tools/{name}").status_code == 404
    assert client.post(f"/tools/{name}/toggle").status_code == 404
    created = client.put(f"/tools/{name}", json={"config": {"a": 1}})
    assert created.status_code == 200
    assert created.json()["enabled"] == 1 and created.json()["refresh_interval"] == 300000
    updated = client.put(f"/tools/{name}", json={"config": {"a": 2}, "refresh_interval": 60000})
    assert updated.json()["config"] == {"a": 2} and updated.json()["refresh_interval"] == 60000
    assert client.post(f"/tools/{name}/toggle").json()["enabled"] == 0
    assert client.post(f"/tools/{name}/toggle").json()["enabled"] == 1
    kept = client.put(f"/tools/{name}", json={"config": {"a": 3}}).json()
    assert kept["refresh_interval"] == 60000  # omitted settings keep their value
    assert client.put(f"/tools/{name}", json={"enabled": True}).status_code == 400


def test_rate_limit_take_and_read_decrement(client: httpx.Client) -> None:
    key = f"rl:{_uid()}"
    assert client.post(f"/rate-limits/{key}/take").status_code == 404
    assert client.put(f"/rate-limits/{key}", json={"remaining": 5}).json()["remaining"] == 5
    assert client.post(f"/rate-limits/{key}/take", json={"cost": 2}).json()["remaining"] == 3
    # A GET that writes: reading the limit consumes a token.
    read = client.get(f"/rate-limits/{key}").json()
    assert read["remaining"] == 2 and read["decremented"] == 1
    over = client.post(f"/rate-limits/{key}/take", json={"cost": 3})
    assert over.status_code == 429
    assert over.json()["rate_limit"]["remaining"] == 2
    assert client.post(f"/rate-limits/{key}/take", json={"cost": 2}).status_code == 200
    empty = client.get(f"/rate-limits/{key}").json()
    assert empty["remaining"] == 0 and empty["decremented"] == 0


def test_users_sessions_and_profile(client: httpx.Client) -> None:
    email = f"{_uid()}@example.test"
    r = client.post("/users", json={"email": email, "name": "Zoë Núñez"})
    assert r.status_code == 201
    user = r.json()
    assert isinstance(user["id"], int)
    assert client.post("/users", json={"email": email}).status_code == 409
    s = client.post(f"/users/{user['id']}/sessions", headers={"User-Agent": "pytest/1"})
    assert s.status_code == 201
    assert s.cookies.get("pgshift_session") == s.json()["id"]
    assert client.post("/users/999999999/sessions").status_code == 404
    profile = client.get(f"/users/{user['id']}").json()
    assert profile["name"] == "Zoë Núñez"
    assert [x["user_agent"] for x in profile["sessions"]] == ["pytest/1"]
    seeded = client.get("/users/1").json()
    assert "access_token" not in str(seeded["oauth"])  # never the tokens


def test_metrics_count_routes(client: httpx.Client) -> None:
    client.get("/tools/github")
    text = client.get("/metrics").text
    assert 'route="/tools/{name}",method="GET",status="200"' in text
    assert "pgshift_demo_request_duration_seconds_bucket" in text
    assert "pgshift_demo_db_errors_total" in text


def test_claim_is_atomic_under_concurrency(client: httpx.Client, app: AppServer) -> None:
    """200 jobs, 8 concurrent claimers: every job claimed exactly once."""
    while client.post("/jobs/claim").status_code == 200:  # start from an empty queue
        pass
    kind = f"atomic_{_uid()}"
    enqueued = {client.post("/jobs", json={"type": kind, "payload": {"i": i}}).json()["id"]
                for i in range(200)}
    claims: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(n: int) -> None:
        with httpx.Client(base_url=app.url, timeout=30, trust_env=False) as c:
            start.wait()
            while True:
                r = c.post("/jobs/claim", json={"worker": f"w{n}"})
                if r.status_code == 204:
                    return
                if r.status_code != 200:
                    with lock:
                        errors.append(f"{r.status_code} {r.text}")
                    return
                with lock:
                    claims.append(r.json()["id"])

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(claims) == len(set(claims)), "a job was claimed twice"
    assert set(claims) == enqueued
    # Each job has exactly one 'processing' history row.
    sample = client.get(f"/jobs/{claims[0]}").json()
    assert [h["status"] for h in sample["history"]] == ["pending", "processing"]
