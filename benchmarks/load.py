"""Benchmark: the load generator's own ceiling, and the reference app's speed on each engine.

1. **Generator ceiling**: ``pgshift.demo.load`` against nginx returning a static 200 for every
   path and method (its own tiny config in a temp dir, one worker process, on a free port).
   Target: >= 3,000 requests/s on the 2-core benchmark machine with no errors and no dropped
   requests, so the generator is never the bottleneck of an app test.
2. **App speed**: the reference app (``python -m pgshift.demo.app``, one uvicorn process) on a
   seeded SQLite file and on PostgreSQL holding that file migrated by ``pgshift migrate``, at a
   few open-loop rates; the highest rate overloads it, so its completed requests/s is the
   app's capacity. Every run keeps a ledger, checked afterwards (``ledger ok`` column).

Each measurement records how busy the machine was with *other* processes meanwhile
(``other CPU``): figures taken on a shared machine are noisy, and this says how noisy.

Usage (from the repository root; needs ``apt-get install -y nginx``)::

    .venv/bin/python benchmarks/load.py
    .venv/bin/python benchmarks/load.py --rates 3000,4000,5000 --duration 15
    .venv/bin/python benchmarks/load.py --skip-app --markdown /tmp/load.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (
    OtherLoad,
    fresh_database,
    log,
    machine_info,
    markdown_table,
    scratch_dir,
    seeded_sqlite,
    start_server,
    text_table,
    wait_for_quiet,
)
from pgshift.demo.ledger import check_ledger, read_ledger
from pgshift.demo.load import LoadOptions, run_load
from pgshift.migrate import MigrateOptions, migrate

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f}s")


@contextmanager
def running(argv: list[str], port: int, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[Any]]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def measure(url: str, rps: float, duration: float, users: int, *, ledger: Path | None,
            other_pid: int | None) -> dict[str, Any]:
    wait_for_quiet(other_pid, max_other=0.25, timeout=10, probe=1.0)
    with OtherLoad(other_pid) as other:
        summary = run_load(LoadOptions(url=url, rps=rps, duration=duration, users=users,
                                       ledger=ledger))
    d = summary.to_dict()
    d["other_cpu"] = round(other.fraction, 3)
    log(f"  {rps:>6,.0f}/s target -> {d['achieved_rps']:>8,.1f}/s, errors {d['errors']}, "
        f"dropped {d['dropped']}, p50 {d['latency_ms']['p50']} ms, "
        f"p99 {d['latency_ms']['p99']} ms, other CPU {other.fraction:.0%}")
    return d


def bench_nginx(rates: list[float], duration: float, users: int, work: Path) -> list[dict]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed: apt-get install -y nginx")
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port))
    rows = []
    with running([nginx, "-c", str(conf), "-p", str(work)], port) as proc:
        log(f"nginx on port {port}")
        for rps in rates:
            d = measure(f"http://127.0.0.1:{port}", rps, duration, users, ledger=None,
                        other_pid=proc.pid)
            rows.append({"target": "nginx (static 200)", **d})
    return rows


def bench_app(engine: str, env_db: dict[str, str], rates: list[float], duration: float,
              users: int, work: Path, check: dict[str, Any]) -> list[dict]:
    port = free_port()
    env = {**os.environ, **env_db, "PGSHIFT_DEMO_FAULTS": "off"}
    rows = []
    argv = [sys.executable, "-m", "pgshift.demo.app", "--port", str(port)]
    with running(argv, port, env) as proc:
        log(f"app on {engine}, port {port}")
        for rps in rates:
            ledger = work / f"ledger-{engine}-{int(rps)}.jsonl"
            d = measure(f"http://127.0.0.1:{port}", rps, duration, users, ledger=ledger,
                        other_pid=proc.pid)
            result = check_ledger(read_ledger(ledger), **check)
            d["ledger_ok"] = result.ok
            d["ledger_acknowledged"] = result.acknowledged
            rows.append({"target": f"app on {engine}", **d})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="3000,4000", help="nginx target rates, comma list")
    parser.add_argument("--app-rates", default="100,300,2000",
                        help="app target rates, comma list (the last should overload it)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--scale", type=int, default=10_000, help="seeded jobs for the app")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "pgshift-bench",
                        help="seeded files (cached per scale) and the PostgreSQL data dir")
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    rates = [float(x) for x in args.rates.split(",") if x]
    app_rates = [float(x) for x in args.app_rates.split(",") if x]

    rows: list[dict[str, Any]] = []
    with scratch_dir(args.workdir, "load-") as work:
        (work / "nginx").mkdir()
        rows += bench_nginx(rates, args.duration, args.users, work / "nginx")
        machine: dict[str, Any] = {"nproc": os.cpu_count()}
        if not args.skip_app:
            seeded, _ = seeded_sqlite(args.workdir, args.scale)
            db = work / "app.db"
            shutil.copy(seeded, db)
            rows += bench_app("sqlite", {"DB_ENGINE": "sqlite", "DATABASE_PATH": str(db)},
                              app_rates, args.duration, args.users, work,
                              {"sqlite_path": db})
            server = start_server(args.workdir / "pgdata-load")
            try:
                machine = machine_info(server)
                dsn = fresh_database(server, "bench_load_app")
                log("migrating the seeded file into PostgreSQL")
                migrate(MigrateOptions(sqlite_path=seeded, dsn=dsn, state_dir=work / "state"))
                rows += bench_app("postgres", {"DB_ENGINE": "postgres",
                                               "DATABASE_URL": dsn.conninfo},
                                  app_rates, args.duration, args.users, work,
                                  {"postgres_dsn": dsn})
            finally:
                server.stop()

    headers = ["target", "rate asked/s", "done/s", "errors", "dropped", "p50 ms", "p99 ms",
               "workers", "ledger ok", "other CPU"]
    table = [[r["target"], f"{r['target_rps']:,.0f}", f"{r['achieved_rps']:,.0f}",
              str(r["errors"]), str(r["dropped"]), f"{r['latency_ms']['p50']:.1f}",
              f"{r['latency_ms']['p99']:.1f}", str(r["workers"]),
              {True: "yes", False: "NO"}.get(r.get("ledger_ok"), "-"),
              f"{r['other_cpu']:.0%}"] for r in rows]
    print(text_table(headers, table))
    nginx_ok = any(r["target"].startswith("nginx") and r["achieved_rps"] >= 3000
                   and r["errors"] == 0 and r["dropped"] == 0 for r in rows)
    print(f"\ngenerator target (>= 3,000 requests/s against nginx, no errors/drops): "
          f"{'MET' if nginx_ok else 'NOT MET'}")
    if args.markdown:
        args.markdown.write_text(markdown_table(headers, table) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2,
                                        default=str))
    return 0 if nginx_ok else 1


if __name__ == "__main__":
    sys.exit(main())
