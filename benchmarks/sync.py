"""Benchmark: ``pgshift sync`` SQLite -> PostgreSQL (to-postgres).

On a seeded hyperpage-shaped file (``--scale`` jobs) with capture installed and migrated
into a fresh database of a durable embedded PostgreSQL, it measures:

1. **capture overhead**: the latency of single-row writes (updates of ``users``, inserts into
   ``job_history``), each in its own transaction (WAL, ``synchronous=NORMAL``, as an app
   runs) and all in one transaction (the trigger's CPU cost alone), with and without the
   triggers; p50/p99 and the difference per row write;
2. **lag at a fixed rate**: a writer at ``--rate`` writes/s (updates, inserts, deletes
   across the seeded tables) for ``--seconds`` while ``sync run --follow`` applies, and a
   trickle of green's incidental writes on PostgreSQL (``--green-rate``/s: ``users``
   updates, new ``user_sessions``; PostgreSQL capture installed after migrate); the lag
   of every change is commit-in-PostgreSQL time minus capture time (p50/p99); the
   conflicts (a key both sides changed before the applier saw either) are counted;
3. **drain**: the same writer for ``--backlog-seconds`` with the applier stopped, then the
   time the applier takes to apply that backlog (and its changes/s);
4. **the flip** (``sync flip``: drain behind a fence, green's early writes rebased), the
   to-sqlite applier carries green's writes back, and ``pgshift verify``: identical,
   nothing lost or duplicated;
5. after the flip: PostgreSQL single-row update TPS with and without the capture trigger
   (on a second copy, so the measurement's writes stay out of the first), then the
   to-sqlite drain of a backlog of such updates on the first copy, and verify again.

Targets (issue 4, 2-core machine, 500 writes/s): lag p50 < 200 ms, p99 < 1 s; capture
< 50 µs per row write at p99; drain of a 5 s backlog < 5 s; verify identical.

Usage (from the repository root)::

    .venv/bin/python benchmarks/sync.py --scale 2000
    .venv/bin/python benchmarks/sync.py --scale 20000 --rate 500 --seconds 20 --json
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import fresh_database, log, scratch_dir, seeded_sqlite, start_server, text_table
from pgshift.dsn import connect
from pgshift.migrate import MigrateOptions, migrate
from pgshift.sync import ops, verbs
from pgshift.sync.apply import SyncOptions, SyncResult, run
from pgshift.sync.apply_sqlite import run_to_sqlite
from pgshift.sync.tables import Change
from pgshift.verify.run import VerifyOptions, verify


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def app_con(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None, timeout=10, check_same_thread=False)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")
    con.execute("pragma foreign_keys=on")
    return con


def write_latency(db: Path, n: int, *, one_txn: bool) -> dict[str, float]:
    """Per-write latency (µs) of n user updates and n history inserts."""
    con = app_con(db)
    users = [r[0] for r in con.execute("select id from users")]
    jobs = [r[0] for r in con.execute("select id from jobs limit 1000")]
    rnd = random.Random(1)
    lat: list[float] = []
    if one_txn:
        con.execute("begin")
    for i in range(n):
        t0 = time.perf_counter()
        if not one_txn:
            con.execute("begin")
        if i % 2:
            con.execute("update users set name = ?, updated_at = ? where id = ?",
                        (f"bench {i}", i, rnd.choice(users)))
        else:
            con.execute("insert into job_history(job_id, status, message, created_at) "
                        "values (?, 'bench', 'm', ?)", (rnd.choice(jobs), i))
        if not one_txn:
            con.execute("commit")
        lat.append((time.perf_counter() - t0) * 1e6)
    if one_txn:
        con.execute("rollback")
    con.close()
    return {"p50_us": pct(lat, 50), "p99_us": pct(lat, 99), "mean_us": statistics.fmean(lat)}


class Writer(threading.Thread):
    """Writes at a fixed rate across the seeded tables until stopped."""

    def __init__(self, db: Path, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.db, self.rate, self.seconds = db, rate, seconds
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            con = app_con(self.db)
            rnd = random.Random(2)
            users = [r[0] for r in con.execute("select id from users")]
            jobs = [r[0] for r in con.execute("select id from jobs limit 2000")]
            start = time.perf_counter()
            while True:
                due = start + self.done / self.rate
                now = time.perf_counter()
                if now - start >= self.seconds:
                    break
                if due > now:
                    time.sleep(due - now)
                r = rnd.random()
                if r < 0.4:
                    con.execute("update users set updated_at = ? where id = ?",
                                (self.done, rnd.choice(users)))
                elif r < 0.7:
                    con.execute("insert into job_history(job_id, status, message, created_at) "
                                "values (?, 'bench', 'm', ?)", (rnd.choice(jobs), self.done))
                elif r < 0.85:
                    con.execute("update jobs set attempts = attempts + 1 where id = ?",
                                (rnd.choice(jobs),))
                elif r < 0.95:
                    con.execute("insert into app_state(key, value, updated_at) values (?, ?, ?) "
                                "on conflict(key) do update set value = excluded.value",
                                (f"k{rnd.randrange(200)}", "v", self.done))
                else:
                    con.execute("delete from job_history where id = (select max(id) from "
                                "job_history where status = 'bench')")
                self.done += 1
            con.close()
        except BaseException as exc:  # reported by the caller
            self.error = exc


class Green(threading.Thread):
    """Green's incidental writes on PostgreSQL (before the flip) at a fixed rate."""

    def __init__(self, dsn: Any, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rate, self.seconds = dsn, rate, seconds
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = connect(self.dsn, autocommit=True)
            rnd = random.Random(4)
            users = [r[0] for r in conn.execute("select id from users")]
            start = time.perf_counter()
            while time.perf_counter() - start < self.seconds:
                due = start + self.done / self.rate
                if due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
                if self.done % 2:
                    conn.execute("update users set updated_at = %s where id = %s",
                                 (-self.done, rnd.choice(users)))
                else:
                    conn.execute("insert into user_sessions (id, user_id, user_agent, ip, "
                                 "created_at, expires_at) values (%s, %s, 'green', "
                                 "'127.0.0.1', %s, %s)", (f"green-{self.done}",
                                                          rnd.choice(users), self.done,
                                                          self.done + 3600))
                self.done += 1
            conn.close()
        except BaseException as exc:  # reported by the caller
            self.error = exc


def conflicts(dsn: Any) -> int:
    """Conflicts recorded so far (both directions)."""
    conn = connect(dsn, autocommit=True)
    try:
        row = conn.execute("select count(*) from pgshift.sync_conflicts").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def follow_with_lag(db: Path, dsn: Any, stop: threading.Event,
                    lags: list[float]) -> threading.Thread:
    def on_batch(_r: SyncResult, batch: list[Change]) -> None:
        now_ms = time.time() * 1000
        lags.extend(now_ms - ch.ts for ch in batch)

    t = threading.Thread(target=run, args=(SyncOptions(sqlite_path=db, dsn=dsn, follow=True,
                                                       poll=0.02),),
                         kwargs={"stop": stop, "on_batch": on_batch}, daemon=True)
    t.start()
    return t


def pg_write_latency(dsn: Any, n: int) -> dict[str, float]:
    """Per-transaction latency (µs) of n single-row updates of users on PostgreSQL."""
    conn = connect(dsn, autocommit=True)
    try:
        users = [r[0] for r in conn.execute("select id from users")]
        rnd = random.Random(3)
        lat: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("update users set updated_at = %s where id = %s",
                         (i, rnd.choice(users)))
            lat.append((time.perf_counter() - t0) * 1e6)
    finally:
        conn.close()
    return {"p50_us": pct(lat, 50), "p99_us": pct(lat, 99), "tps": n / (sum(lat) / 1e6)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backlog-seconds", type=float, default=5.0)
    ap.add_argument("--green-rate", type=float, default=5.0,
                    help="green's incidental writes/s on PostgreSQL before the flip")
    ap.add_argument("--writes", type=int, default=5000, help="writes per latency series")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pgshift-bench-sync"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"scale": args.scale, "rate": args.rate}
    server = start_server(args.workdir / "pg", durable=True)
    try:
        seeded, _ = seeded_sqlite(args.workdir, args.scale)
        with scratch_dir(args.workdir, "sync-") as tmp:
            db = tmp / "app.db"
            db.write_bytes(seeded.read_bytes())
            log("capture overhead")
            for mode in ("per-txn", "one-txn"):
                base = write_latency(db, args.writes, one_txn=mode == "one-txn")
                ops.install(db)
                cap = write_latency(db, args.writes, one_txn=mode == "one-txn")
                verbs.uninstall(db)
                out[f"capture_{mode}"] = {"without": base, "with": cap,
                                          "overhead_p50_us": cap["p50_us"] - base["p50_us"],
                                          "overhead_p99_us": cap["p99_us"] - base["p99_us"]}
            ops.install(db)
            dsn = fresh_database(server, "bench_sync")
            log("migrate")
            migrate(MigrateOptions(sqlite_path=db, dsn=dsn, state_dir=tmp / "state"))
            ops.install(db, dsn=dsn)  # PostgreSQL capture: green's incidental writes
            log(f"lag at {args.rate:.0f} writes/s for {args.seconds:.0f}s, green "
                f"{args.green_rate:g}/s")
            lags: list[float] = []
            stop = threading.Event()
            applier = follow_with_lag(db, dsn, stop, lags)
            w = Writer(db, args.rate, args.seconds)
            g = Green(dsn, args.green_rate, args.seconds)
            w.start()
            g.start()
            w.join()
            g.join()
            for t in (w, g):
                if t.error is not None:
                    raise t.error
            deadline = time.monotonic() + 30
            while verbs.status(db, dsn).pending != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            applier.join()
            out["lag"] = {"writes": w.done, "achieved_rate": round(w.done / args.seconds, 1),
                          "green_writes": g.done,
                          "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99),
                          "max_ms": max(lags) if lags else None}
            log(f"drain of a {args.backlog_seconds:.0f}s backlog")
            w = Writer(db, args.rate, args.backlog_seconds)
            w.start()
            w.join()
            pending = verbs.status(db, dsn).pending
            t0 = time.perf_counter()
            res = run(SyncOptions(sqlite_path=db, dsn=dsn))
            drain = time.perf_counter() - t0
            out["drain"] = {"backlog_changes": pending, "seconds": round(drain, 3),
                            "changes_per_s": round(res.applied / drain, 1),
                            "parked": res.parked}
            log("flip, green's writes carried back, verify")
            flipped = verbs.flip(SyncOptions(sqlite_path=db, dsn=dsn), timeout=30)
            back = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=dsn))
            v = verify(VerifyOptions(sqlite_path=db, dsn=dsn))
            out["flip"] = {"flipped": flipped.flipped, "carried_back": back.applied,
                           "parked": back.parked, "conflicts": conflicts(dsn)}
            out["verify_identical"] = v.identical
            log("after the flip: PostgreSQL TPS without and with capture (second copy)")
            dsn2 = fresh_database(server, "bench_sync_tps")
            migrate(MigrateOptions(sqlite_path=db, dsn=dsn2, state_dir=tmp / "state2"))
            off = pg_write_latency(dsn2, args.writes)
            ops.install(db, dsn=dsn2)
            on = pg_write_latency(dsn2, args.writes)
            out["pg_capture"] = {"without": off, "with": on,
                                 "tps_ratio": round(on["tps"] / off["tps"], 3)}
            log("to-sqlite drain of a backlog")
            pg_write_latency(dsn, args.writes)
            t0 = time.perf_counter()
            back = run_to_sqlite(SyncOptions(sqlite_path=db, dsn=dsn))
            secs = time.perf_counter() - t0
            out["to_sqlite_drain"] = {"changes": back.applied, "seconds": round(secs, 3),
                                      "changes_per_s": round(back.applied / secs, 1),
                                      "parked": back.parked}
            v = verify(VerifyOptions(sqlite_path=db, dsn=dsn))
            out["verify_identical_after_back"] = v.identical
    finally:
        server.stop()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        rows = []
        for mode in ("per-txn", "one-txn"):
            c = out[f"capture_{mode}"]
            rows.append([f"SQLite write, {mode}", f"{c['without']['p50_us']:.1f}",
                         f"{c['with']['p50_us']:.1f}", f"{c['without']['p99_us']:.1f}",
                         f"{c['with']['p99_us']:.1f}", f"{c['overhead_p99_us']:.1f}"])
        print(text_table(["µs per row write", "p50 off", "p50 on", "p99 off", "p99 on",
                          "Δp99"], rows))
        lag = out["lag"]
        print(f"lag at {lag['achieved_rate']} writes/s: p50 {lag['p50_ms']:.0f} ms, "
              f"p99 {lag['p99_ms']:.0f} ms, max {lag['max_ms']:.0f} ms")
        d = out["drain"]
        print(f"drain: {d['backlog_changes']} changes in {d['seconds']} s "
              f"({d['changes_per_s']} changes/s), parked {d['parked']}")
        f = out["flip"]
        print(f"green wrote {lag['green_writes']} rows on PostgreSQL before the flip; flipped "
              f"{f['flipped']}, {f['carried_back']} changes carried back, conflicts "
              f"{f['conflicts']}, parked {f['parked']}; verify identical: "
              f"{out['verify_identical']}")
        p = out["pg_capture"]
        print(f"PostgreSQL single-row update, autocommit: {p['without']['tps']:.0f} tps "
              f"without capture, {p['with']['tps']:.0f} with (x{p['tps_ratio']}); p99 "
              f"{p['without']['p99_us']:.0f} -> {p['with']['p99_us']:.0f} µs")
        b = out["to_sqlite_drain"]
        print(f"to-sqlite drain: {b['changes']} changes in {b['seconds']} s "
              f"({b['changes_per_s']} changes/s), parked {b['parked']}; verify identical: "
              f"{out['verify_identical_after_back']}")
    return 0 if out["verify_identical"] and out["verify_identical_after_back"] else 1


if __name__ == "__main__":
    sys.exit(main())
