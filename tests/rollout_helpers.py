"""A rollout rig for the engine's tests (no tests here).

Everything is real: blue is the reference app on a seeded SQLite file (WAL), green the
same app on a fresh PostgreSQL database, the engine starts a real ``pgshift proxy`` and
real ``pgshift sync run`` processes, and the load generator drives the proxy at ~50
requests/s with its write ledger. Timings are short; the thresholds are loose enough for
that traffic (the statistics have their own unit tests).
"""

from __future__ import annotations

import copy
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from pgshift.demo.app import AppConfig, AppServer
from pgshift.demo.ledger import LedgerCheck, check_ledger, read_ledger
from pgshift.demo.load import LoadOptions, LoadSummary, run_load
from pgshift.demo.seed import seed
from pgshift.dsn import Dsn
from pgshift.rollout import config as cfgmod
from pgshift.rollout.context import Context
from pgshift.rollout.procs import Supervisor
from pgshift.traffic.router import LATENCY_BUCKETS_MS, bucket_index

DSN_ENV = "PGSHIFT_TEST_ROLLOUT_DSN"
TOKEN_ENV = "PGSHIFT_TEST_ADMIN_TOKEN"


def latency_counts(requests: int, errors: int, ms: float) -> list[int]:
    """A traffic-series side, ``[requests, errors, *latency buckets]``, with every answer
    at ``ms`` (what the engine journals per environment)."""
    hist = [0] * len(LATENCY_BUCKETS_MS)
    hist[bucket_index(ms)] = requests
    return [requests, errors, *hist]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Rig:
    tmp: Path
    db: Path
    dsn: Dsn
    blue: AppServer
    green: AppServer
    cutover: Path
    ledger: Path
    data: dict[str, Any]

    def context(self, **kw: Any) -> Context:
        cfg, base = cfgmod.load(self.cutover)
        kw.setdefault("say", lambda line: None)
        return Context.open(self.cutover, cfg, base, **kw)

    @property
    def state_root(self) -> Path:
        return self.tmp / ".pgshift" / "t"

    @contextmanager
    def load(self, rps: float = 50.0, run_id: str = "t1") -> Iterator[list[LoadSummary]]:
        """The load generator through the proxy in a thread for the ``with`` block; the
        list it yields gets this run's summary. A second run against the same app needs
        another ``run_id`` (its users would exist already: every create a 409)."""
        stop = threading.Event()
        mine: list[LoadSummary] = []
        url = f"http://{self.data['router']['listen']}"

        def go() -> None:
            while not stop.is_set():  # the engine starts the proxy: wait for it
                try:
                    httpx.get(f"{url}/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            if stop.is_set():
                return
            # run_id t1: 24 of 100 users are green at 25 %; t2: 22
            mine.append(run_load(LoadOptions(
                url=url, rps=rps, duration=None, users=100, workers=1, ledger=self.ledger,
                seed=3, run_id=run_id), stop=stop))

        t = threading.Thread(target=go, daemon=True)
        t.start()
        try:
            yield mine
        finally:
            time.sleep(0.5)
            stop.set()
            t.join(timeout=60)

    def rewrite(self, over: dict[str, Any]) -> None:
        """Change the cutover file (before the rollout starts)."""
        self.data = merge(self.data, over)
        self.cutover.write_text(yaml.safe_dump(self.data))

    def check_ledger(self, against: str) -> LedgerCheck:
        entries = read_ledger(self.ledger)
        if against == "sqlite":
            return check_ledger(entries, sqlite_path=self.db)
        return check_ledger(entries, postgres_dsn=self.dsn)

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgshift.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.tmp / "engine.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "pgshift.cli.main", *args],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})

    def stop_services(self) -> None:
        sup = Supervisor(self.state_root)
        for name in list(sup.services()):
            sup.stop(name)

    def journal_value(self, key: str) -> Any:
        if not (self.state_root / "journal.sqlite").exists():
            return None
        con = sqlite3.connect(self.state_root / "journal.sqlite", timeout=5)
        try:
            row = con.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            con.close()
        import json

        return json.loads(row[0]) if row else None

    def proxy_warnings(self) -> list[dict[str, Any]]:
        """The proxy's log events above info (ejections, health, refusals): beside a failed
        request, they say what the proxy saw at that moment."""
        import json

        out = []
        log = self.state_root / "procs" / "proxy.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("level") not in (None, "info"):
                out.append(event)
        return out

    def wait_for(self, key: str, pred: Callable[[Any], bool], timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.journal_value(key)
            if pred(v):
                return v
            time.sleep(0.1)
        raise AssertionError(f"journal {key} never satisfied the condition "
                             f"(last {self.journal_value(key)!r})")


def base_cutover(db: Path, blue: str, green: str) -> dict[str, Any]:
    return {
        "name": "t",
        "source": {"sqlite": str(db)},
        "target": {"dsn": f"env:{DSN_ENV}"},
        "apps": {"blue": {"url": blue}, "green": {"url": green}},
        "router": {"kind": "embedded", "listen": f"127.0.0.1:{free_port()}",
                   "admin": f"127.0.0.1:{free_port()}", "token": f"env:{TOKEN_ENV}",
                   "write_paths": ["/rate-limits/*"], "cohort_header": "X-User-Id",
                   "fence": {"max_hold": "5s"}},
        "tables": {"jobs": {"kind": "queue"}, "rate_limits": {"kind": "counter"}},
        "checks": {"critical_paths": ["GET /health"],
                   "gates": {"max_error_rate": "20%", "confidence": 0.9,
                             "min_requests": 10, "max_p99_ms": 5000, "max_p99_ratio": None}},
        "shift": {"steps": [{"weight": w, "bake": "3s"} for w in (25, 50, 100)],
                  "on_failure": "rollback", "max_extensions": 3,
                  "after_extensions": "fail", "sample_interval": 0.25},
        "emergency": {"unavailable": "5s", "error_rate": "60%", "error_rate_for": "3s",
                      "p99_ratio": 50},
        "flip": {"drain_timeout": "10s"},
        "monitor": {"window": "2s", "interval": "1s"},
        "rollback": {"drain_deadline": "10s"},
    }


@contextmanager
def rig(tmp: Path, dsn: Dsn, monkeypatch: Any, over: dict[str, Any] | None = None,
        scale: int = 300) -> Iterator[Rig]:
    monkeypatch.setenv(DSN_ENV, dsn.conninfo)
    monkeypatch.setenv(TOKEN_ENV, "test-admin-token")
    db = tmp / "app.db"
    seed(db, scale, seed=11)
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA journal_mode=WAL")
    blue = AppServer(AppConfig(engine="sqlite", database_path=db, name="blue")).start()
    green = AppServer(AppConfig(engine="postgres", database_url=dsn.conninfo,
                                name="green")).start()
    data = merge(base_cutover(db, blue.url, green.url), over or {})
    cutover = tmp / "cutover.yaml"
    cutover.write_text(yaml.safe_dump(data))
    r = Rig(tmp, db, dsn, blue, green, cutover, tmp / "ledger.jsonl", data)
    try:
        yield r
    finally:
        r.stop_services()
        blue.stop()
        green.stop()
