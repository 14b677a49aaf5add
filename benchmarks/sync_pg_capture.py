"""Benchmark: PostgreSQL capture for the way back: none vs triggers vs logical decoding.

On a *non-durable* embedded PostgreSQL (``fsync=off``, ``synchronous_commit=off``: the
write load is CPU-bound, not fsync-bound) with a seeded, migrated copy; the load is
pgbench with 2 clients (``-c 2 -j 2``) of single-row autocommit updates of random
``job_history`` rows (pgbench's own loop: the client costs little CPU).

1. **Write path**: ``--reps`` interleaved rounds of none / trigger capture
   (``pgshift.capture()`` row trigger + ``pgshift.pg_changes`` queue) / logical
   decoding (a ``test_decoding`` slot, ``REPLICA IDENTITY FULL``), each a pgbench slice
   of ``--seconds`` / 2 on a second copy with no applier (captured changes are thrown
   away between slices); median tps per mode. Interleaving spreads the noise of other
   work on a shared machine over the three.
2. **The way back**, per capture: a backlog (the load at full speed, no applier), the
   to-sqlite applier's catch-up of it (changes/s), then the load at ``--rate`` tps
   while the applier follows and a probe writes into ``app_state`` every 250 ms and
   times its arrival in SQLite (end-to-end to-sqlite lag, p50/p99), then
   ``pgshift verify`` (identical).

Usage (from the repository root; about a minute with the defaults)::

    .venv/bin/python benchmarks/sync_pg_capture.py
    .venv/bin/python benchmarks/sync_pg_capture.py --seconds 6 --reps 2 --json
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    fresh_database,
    libpq_env,
    log,
    scratch_dir,
    seeded_sqlite,
    start_server,
    text_table,
)
from pgshift.dsn import Dsn, connect
from pgshift.embedded_pg import find_bindir
from pgshift.migrate import MigrateOptions, migrate
from pgshift.sync import ops, pg_capture, pg_logical
from pgshift.sync.apply import SyncOptions, SyncResult
from pgshift.sync.apply_sqlite import run_to_sqlite
from pgshift.verify.run import VerifyOptions, verify

SCRIPT = "\\set id random(1, {max_id})\n" \
         "UPDATE job_history SET message = 'bench ' || :id WHERE id = :id;\n"


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def pgbench(dsn: Dsn, seconds: float, max_id: int, workdir: Path,
            rate: float | None = None) -> dict[str, float]:
    """2 clients of single-row updates for ``seconds`` (at ``rate`` tps, else as fast as
    they go): tps, mean latency, transactions."""
    script = workdir / "update.sql"
    script.write_text(SCRIPT.format(max_id=max_id))
    info, env = libpq_env(dsn)
    cmd = [str(find_bindir() / "pgbench"), "-n", "-c", "2", "-j", "2", "-T",
           str(max(1, round(seconds))), "-f", str(script), info]
    if rate:
        cmd[1:1] = ["-R", str(int(rate))]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    tps = re.search(r"tps = ([\d.]+)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    n = re.search(r"number of transactions actually processed: (\d+)", out)
    return {"tps": float(tps.group(1)) if tps else 0.0,
            "latency_ms": float(lat.group(1)) if lat else 0.0,
            "transactions": int(n.group(1)) if n else 0}


class Probe(threading.Thread):
    """Every 250 ms: write a marker value in PostgreSQL, time until SQLite has it."""

    def __init__(self, db: Path, dsn: Dsn) -> None:
        super().__init__(daemon=True)
        self.db, self.dsn = db, dsn
        self.stop = threading.Event()
        self.lags: list[float] = []

    def run(self) -> None:
        pg = connect(self.dsn, autocommit=True)
        # as on a durable server: the probe's commit is flushed at once (decoding reads
        # flushed WAL only; with synchronous_commit=off the WAL writer flushes every
        # 200 ms, which would add up to that much to the logical path's lag)
        pg.execute("SET synchronous_commit = on")
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                value = f"probe-{i}"
                t0 = time.perf_counter()
                pg.execute("INSERT INTO app_state (key, value, updated_at) VALUES "
                           "('bench-probe', %s, 0) ON CONFLICT (key) DO UPDATE SET "
                           "value = EXCLUDED.value", (value,))
                while not self.stop.is_set():
                    row = con.execute("select value from app_state where key = "
                                      "'bench-probe'").fetchone()
                    if row and row[0] == value:
                        self.lags.append((time.perf_counter() - t0) * 1000)
                        break
                    time.sleep(0.002)
                self.stop.wait(0.25)
        finally:
            pg.close()
            con.close()


def caught_up(db: Path, dsn: Dsn, timeout: float = 60.0) -> float:
    """Seconds until the to-sqlite applier (running) applied everything committed now."""
    t0 = time.perf_counter()
    conn = connect(dsn, autocommit=True)
    try:
        logical = pg_logical.installed(conn, "public")
        fence = pg_logical.fence(conn, "public") if logical else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fence is not None:
                flushed = (pg_logical.lag(conn, "public") or {}).get("confirmed_flush_lsn")
                if flushed and pg_logical.lsn_int(flushed) >= fence:
                    break
            elif not conn.execute("select exists (select 1 from pgshift.pg_changes)"
                                  ).fetchone()[0]:  # type: ignore[index]
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("the to-sqlite applier did not catch up")
    finally:
        conn.close()
    return time.perf_counter() - t0


def round_with(applier: Any, db: Path, dsn: Dsn, args: argparse.Namespace, max_id: int,
               tmp: Path) -> dict[str, Any]:
    """(1) a backlog: the load at full speed with no applier, (2) the applier's catch-up
    of it, (3) the load at ``--rate`` tps with the applier following and a probe (lag),
    then verify."""
    out: dict[str, Any] = {}
    backlog = pgbench(dsn, args.seconds / 2, max_id, tmp)
    stop = threading.Event()
    results: list[SyncResult] = []
    opts = SyncOptions(sqlite_path=db, dsn=dsn, follow=True, poll=0.01)
    th = threading.Thread(target=lambda: results.append(applier(opts, stop=stop)),
                          daemon=True)
    th.start()
    catch = caught_up(db, dsn)
    out["backlog"] = backlog["transactions"]
    out["catch_up_s"] = round(catch, 3)
    out["catch_up_changes_per_s"] = round(backlog["transactions"] / catch, 1)
    probe = Probe(db, dsn)
    probe.start()
    follow = pgbench(dsn, args.seconds / 2, max_id, tmp, rate=args.rate)
    probe.stop.set()
    probe.join()
    out["following_tps"] = follow["tps"]
    out["drain_s"] = round(caught_up(db, dsn), 3)
    stop.set()
    th.join(60)
    v = verify(VerifyOptions(sqlite_path=db, dsn=dsn))
    out.update({"applied": results[0].applied if results else None,
                "lag_p50_ms": pct(probe.lags, 50), "lag_p99_ms": pct(probe.lags, 99),
                "lag_max_ms": max(probe.lags, default=None), "probes": len(probe.lags),
                "verify_identical": v.identical})
    if not v.identical:
        out["verify"] = v.to_dict()
    return out


def tps_slices(dsn: Dsn, args: argparse.Namespace, max_id: int, tmp: Path,
               tables: dict[str, list[str]]) -> dict[str, list[float]]:
    """The write path's cost alone, interleaved rounds (see the module docstring)."""
    out: dict[str, list[float]] = {"none": [], "triggers": [], "logical": []}
    conn = connect(dsn)
    try:
        for _ in range(args.reps):
            out["none"].append(pgbench(dsn, args.seconds / 2, max_id, tmp)["tps"])
            pg_capture.install(conn, "public", tables)
            out["triggers"].append(pgbench(dsn, args.seconds / 2, max_id, tmp)["tps"])
            pg_capture.uninstall(conn, "public")  # drops the queued changes too
            pg_logical.install(conn, "public", sorted(tables))
            out["logical"].append(pgbench(dsn, args.seconds / 2, max_id, tmp)["tps"])
            pg_logical.uninstall(conn, "public")  # drops the slot and what it held
    finally:
        conn.close()
    return out


def primary_keys(dsn: Dsn) -> dict[str, list[str]]:
    conn = connect(dsn, autocommit=True)
    try:
        return {t: [k] for t, k in conn.execute(
            "select c.relname, a.attname from pg_index i join pg_class c on "
            "c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace join "
            "pg_attribute a on a.attrelid = c.oid and a.attnum = i.indkey[0] where "
            "n.nspname = 'public' and i.indisprimary").fetchall()}
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=6.0,
                    help="per phase pair (each pgbench slice runs half of it)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved write-path rounds")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="tps of the load while the applier follows (lag)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pgshift-bench-pgcapture"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"scale": args.scale, "seconds": args.seconds, "reps": args.reps,
                           "rate": args.rate,
                           "server": "embedded, fsync=off, synchronous_commit=off",
                           "load": "pgbench -c 2 -j 2, single-row UPDATE job_history"}
    server = start_server(args.workdir / "pg", durable=False)
    try:
        seeded, _ = seeded_sqlite(args.workdir, args.scale)
        with scratch_dir(args.workdir, "pgcap-") as tmp:
            db = tmp / "app.db"
            db.write_bytes(seeded.read_bytes())
            ops.install(db)
            log("migrate (twice: one copy for the write path, one for the way back)")
            dsn = fresh_database(server, "bench_pgcapture")
            migrate(MigrateOptions(sqlite_path=db, dsn=dsn, state_dir=tmp / "state"))
            tps_dsn = fresh_database(server, "bench_pgcapture_tps")
            migrate(MigrateOptions(sqlite_path=db, dsn=tps_dsn, state_dir=tmp / "state2"))
            conn = connect(dsn, autocommit=True)
            max_id = int(conn.execute("select max(id) from job_history").fetchone()[0])
            conn.close()
            tables = primary_keys(dsn)
            log(f"write path: {args.reps} x none / triggers / logical, "
                f"{args.seconds / 2:.0f}s each")
            for k, v in tps_slices(tps_dsn, args, max_id, tmp, tables).items():
                out[k] = {"tps": round(statistics.median(v), 1), "tps_slices": v}
            log("trigger capture: backlog, catch-up, lag")
            conn = connect(dsn)
            pg_capture.install(conn, "public", tables)
            conn.close()
            out["triggers"].update(round_with(run_to_sqlite, db, dsn, args, max_id, tmp))
            conn = connect(dsn)
            pg_capture.uninstall(conn, "public")
            log("logical decoding: backlog, catch-up, lag")
            pg_logical.install(conn, "public", sorted(tables))
            conn.close()
            try:
                out["logical"].update(round_with(pg_logical.run_logical, db, dsn, args,
                                                 max_id, tmp))
            finally:
                conn = connect(dsn)
                pg_logical.uninstall(conn, "public")
                conn.close()
    finally:
        server.stop()
    base = out["none"]["tps"] or 1.0
    for k in ("triggers", "logical"):
        out[k]["tps_ratio"] = round(out[k]["tps"] / base, 3)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        def f(v: Any, fmt: str = "{:.0f}") -> str:
            return "-" if v is None else fmt.format(v)

        rows = [["none", f(out["none"]["tps"]), "1.00",
                 " ".join(f(v) for v in out["none"]["tps_slices"]), "-", "-", "-", "-"]]
        for k in ("triggers", "logical"):
            r = out[k]
            rows.append([k, f(r["tps"]), f(r["tps_ratio"], "{:.2f}"),
                         " ".join(f(v) for v in r["tps_slices"]),
                         f(r["catch_up_changes_per_s"]), f(r["lag_p50_ms"]),
                         f(r["lag_p99_ms"]), str(r["verify_identical"])])
        print(text_table(["PostgreSQL capture", "tps (median)", "x none", "slices",
                          "backlog applied/s", f"lag p50 ms at {args.rate:.0f} tps",
                          "p99 ms", "verify"], rows))
    ok = all(out[k]["verify_identical"] for k in ("triggers", "logical"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
