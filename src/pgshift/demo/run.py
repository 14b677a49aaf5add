"""``pgshift demo``: a real rollout on this machine, under live load.

Blue is the reference app on a seeded SQLite file, green the same app on an embedded
PostgreSQL; the demo writes a ``cutover.yaml`` for them (embedded proxy in front,
compressed timings) and runs the rollout engine on it -- the same engine
``pgshift rollout`` runs -- while the load generator drives the proxy and records every
acknowledged write in its ledger. At the end the ledger is checked against the system
of record: zero lost writes is measured, not assumed.

``fault="green-errors"`` makes green fail a share of its requests once the rollout
reaches 25 %: the step's analysis fails and the engine rolls back on its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pgshift.demo.ledger import check_ledger, read_ledger
from pgshift.demo.load import LoadOptions, LoadSummary, run_load
from pgshift.demo.seed import SeedResult, seed
from pgshift.dsn import resolve
from pgshift.embedded_pg import EmbeddedPostgres
from pgshift.errors import UsageError
from pgshift.progress import NullProgress, Progress
from pgshift.rollout import config as cfgmod
from pgshift.rollout import engine, syncing
from pgshift.rollout.context import PROXY, Context

FAULTS = ("green-errors", "green-errors-after-flip")
DSN_ENV = "PGSHIFT_DEMO_DSN"
FAULT_AT = 25.0  # the weight at which --fault green-errors starts failing green


@dataclass
class DemoResult:
    seed: SeedResult
    postgres_version: str
    outcome: engine.Outcome
    load: LoadSummary | None
    lost_writes: int | None
    ledger_checked_against: str | None
    journal: dict[str, Any]
    seconds: float
    fault: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    cutover: Path | None = None

    @property
    def rolled_back(self) -> bool:
        return self.outcome.status == "rolled_back"

    @property
    def ok(self) -> bool:
        """The demo did what it set out to: a clean rollout (or, with a fault, an automatic
        rollback) with every acknowledged write present."""
        wanted = "rolled_back" if self.fault else "done"
        failed = self.load.total.errors if self.load else 0
        return (self.outcome.status == wanted and self.lost_writes == 0
                and (self.fault is not None or failed == 0))

    def to_dict(self) -> dict[str, Any]:
        j, load = self.journal, self.load
        rb = j.get("last_rollback") or {}
        t = load.total if load else None
        return {
            "ok": self.ok, "fault": self.fault, "status": self.outcome.status,
            "message": self.outcome.message, "seconds": round(self.seconds, 1),
            "requests": t.done if t else 0,
            "failed_requests": t.errors if t else 0,
            "statuses": dict(sorted(t.statuses.items())) if t else {},
            "failures": list(t.failures) if t else [],
            "achieved_rps": round(load.achieved_rps, 1) if load else 0,
            "p99_ms": t.percentile_ms(0.99) if t else None,
            "writes_acknowledged": t.writes_acked if t else 0,
            "lost_writes": self.lost_writes, "ledger_checked_against":
                self.ledger_checked_against,
            "steps": self.steps, "flipped": bool(j.get("fence_hold_ms") is not None
                                                 and not self.rolled_back),
            "rolled_back": self.rolled_back,
            "rollback_seconds": rb.get("seconds"),
            "rollback_traffic_back_ms": rb.get("traffic_back_ms"),
            "rollback_was_drill": rb.get("drill"),
            "stranded": rb.get("stranded"),
            "fence_hold_ms": j.get("fence_hold_ms"),
            "tail_check": {k: (j.get("tail_check") or {}).get(k)
                           for k in ("ok", "checked", "seconds")}
            if j.get("tail_check") else None,
            "sync_lag_ms_max": max((s.get("sync_lag_ms") or 0 for s in self.steps),
                                   default=None),
            "conflicts": (j.get("final_sync") or {}).get("conflicts",
                                                          self.steps[-1].get("conflicts")
                                                          if self.steps else None),
            "seed": {"rows": self.seed.rows, "scale": self.seed.scale},
            "postgres_version": self.postgres_version,
            "cutover": str(self.cutover) if self.cutover else None,
            "report": str(report) if (report := self._report()) else None,
        }

    def _report(self) -> Path | None:
        """The deployment report finalize wrote (a clean rollout only)."""
        if self.cutover is None:
            return None
        path = self.cutover.parent / ".pgshift" / "demo" / "report" / "deployment-report.html"
        return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_app(name: str, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgshift.demo.app", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise UsageError(f"the {name} app did not start (see {log})")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def demo_cutover(workdir: Path, db: Path, *, blue: str, green: str, listen: int, admin: int,
                 bake: float, monitor: float) -> cfgmod.Cutover:
    """The cutover file the demo runs: compressed timings, thresholds a 300 req/s load can
    prove (1 % error-rate ceiling at 95 % confidence needs 299 clean green requests)."""
    return cfgmod.Cutover.model_validate({
        "name": "demo",
        "source": {"sqlite": str(db)},
        "target": {"dsn": f"env:{DSN_ENV}"},
        "apps": {"blue": {"url": blue, "health": "/health"},
                 "green": {"url": green, "health": "/health"}},
        "router": {"kind": "embedded", "listen": f"127.0.0.1:{listen}",
                   "admin": f"127.0.0.1:{admin}", "token": "env:PGSHIFT_DEMO_ADMIN_TOKEN",
                   # reading a rate limit consumes a token: a write inside a GET
                   "write_paths": ["/rate-limits/*"], "cohort_header": "X-User-Id",
                   "fence": {"max_hold": "5s"}},
        "tables": {"jobs": {"kind": "queue"}, "rate_limits": {"kind": "counter"}},
        "checks": {"critical_paths": ["GET /health", "GET /jobs?limit=5"],
                   "gates": {"max_error_rate": "1%", "confidence": 0.95,
                             "min_requests": 300, "max_p99_ms": 2000,
                             "max_p99_ratio": 5.0}},
        "shift": {"steps": [{"weight": w, "bake": bake} for w in (10, 25, 50, 100)],
                  "on_failure": "rollback", "on_inconclusive": "extend",
                  "max_extensions": 4, "after_extensions": "fail", "drill": True,
                  "sample_interval": 0.5},
        "emergency": {"unavailable": "10s", "error_rate": "5%", "error_rate_for": "5s",
                      "p99_ratio": 10, "p99_for": "10s"},
        "flip": {"drain_timeout": "10s"},
        "monitor": {"window": monitor, "interval": max(1.0, monitor / 3)},
        "rollback": {"drain_deadline": "10s"},
        "finalize": {"remove_capture": True},
    })


def run_demo(workdir: Path, scale: int, *, jobs: int = 2, keep: bool = False,
             rps: float = 300.0, bake: float = 12.0, monitor: float = 10.0,
             fault: str | None = None, progress: Progress | None = None) -> DemoResult:
    """The full rehearsal in ``workdir`` (recreated)."""
    if fault is not None and fault not in FAULTS:
        raise UsageError(f"--fault {fault!r}: known faults are {', '.join(FAULTS)}",
                         hint="pgshift demo --fault green-errors")
    progress = progress or NullProgress()
    # The cutover file names the database; a relative path in it is read relative to the
    # file's own directory (as any cutover file's), not to where the demo was started.
    workdir = workdir.absolute()
    started = time.monotonic()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the apps, proxy, appliers and PostgreSQL stop
        signal.signal(signal.SIGTERM, _interrupt)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    db = workdir / "hyperpage.db"
    progress.step(f"seed {db} at scale {scale:,}")
    seeded = seed(db, scale)
    with sqlite3.connect(db) as con:  # a live app's file: WAL, as the snapshot requires
        con.execute("PRAGMA journal_mode=WAL")
    progress.step("start the embedded PostgreSQL")
    server = EmbeddedPostgres(workdir / "pg")
    server.start()
    apps: list[subprocess.Popen[bytes]] = []
    ctx: Context | None = None
    stop_load = threading.Event()
    loader: threading.Thread | None = None
    summary: list[LoadSummary] = []
    try:
        dsn = server.create_database("hyperpage")
        os.environ[DSN_ENV] = dsn.conninfo
        os.environ.setdefault("PGSHIFT_DEMO_ADMIN_TOKEN", os.urandom(12).hex())
        blue_port, green_port = _free_port(), _free_port()
        progress.step("start blue (the app on SQLite) and green (the app on PostgreSQL)")
        apps.append(_start_app("blue", {"DB_ENGINE": "sqlite", "DATABASE_PATH": str(db)},
                               blue_port, workdir / "blue.log"))
        apps.append(_start_app("green", {"DB_ENGINE": "postgres",
                                         "DATABASE_URL": f"env:{DSN_ENV}"},
                               green_port, workdir / "green.log"))
        green = f"http://127.0.0.1:{green_port}"
        cut = demo_cutover(workdir, db, blue=f"http://127.0.0.1:{blue_port}", green=green,
                           listen=_free_port(), admin=_free_port(), bake=bake,
                           # long enough for the emergency trigger (5 s over 5 %) to fire
                           monitor=max(monitor, 30.0) if fault == "green-errors-after-flip"
                           else monitor)
        cutover_path = workdir / "cutover.yaml"
        cutover_path.write_text(cfgmod.dump(cut))
        cfg, base = cfgmod.load(cutover_path)
        ledger = workdir / "ledger.jsonl"

        def start_load() -> None:
            nonlocal loader

            def go() -> None:
                summary.append(run_load(LoadOptions(url=f"http://{cfg.router.listen}",
                                                    rps=rps, duration=None, ledger=ledger,
                                                    users=100, seed=1, run_id="demo"),
                                        stop=stop_load))  # 9 of these 100 users are green at 10 %
            loader = threading.Thread(target=go, name="demo-load", daemon=True)
            loader.start()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "step-done" and data.get("step") == "router" and loader is None:
                start_load()
            if ((fault == "green-errors" and kind == "weight" and data.get("weight") == FAULT_AT)
                    or (fault == "green-errors-after-flip" and kind == "step-done"
                    and data.get("step") == "flip")):
                httpx.post(f"{green}/_admin/faults", json={"spec": "error_rate=0.3"},
                           timeout=5).raise_for_status()

        ctx = Context.open(cutover_path, cfg, base, say=progress.step, on_event=on_event)
        progress.step(f"rollout {cutover_path} (load {rps:g} requests/s through the proxy)")
        outcome = engine.run(ctx)
        time.sleep(1.0)  # the last answers of the final seconds reach the ledger
        stop_load.set()
        if loader is not None:
            loader.join(timeout=60)
        load = summary[0] if summary else None
        journal = ctx.journal.dump()
        lost, against = None, None
        if load is not None:
            entries = read_ledger(ledger)
            if outcome.status == "done":
                check = check_ledger(entries, postgres_dsn=resolve(f"env:{DSN_ENV}"))
                against = "postgresql"
            else:
                syncing.stop_appliers(ctx)
                check = check_ledger(entries, sqlite_path=db)
                against = "sqlite"
            lost = len(check.violations)
        return DemoResult(seeded, server.version, outcome, load, lost, against, journal,
                          time.monotonic() - started, fault,
                          journal.get("shift_results", []), cutover_path)
    finally:
        stop_load.set()
        if ctx is not None:
            for name in list(ctx.procs.services()):
                ctx.procs.stop(name)
            ctx.close()
        for p in apps:
            p.terminate()
        for p in apps:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not keep:
            server.stop()


__all__ = ["FAULTS", "PROXY", "DemoResult", "demo_cutover", "run_demo"]
