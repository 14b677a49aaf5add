"""What an index build costs the app's writes: plain CREATE INDEX vs pgshift optimize --apply.

A writer thread commits one INSERT and one UPDATE per transaction against a table of
``--rows`` rows while the same index is built twice: once with a plain ``CREATE INDEX``
(SHARE lock: writes wait for the whole build), once by ``pgshift.ops.optimize`` (``CREATE
INDEX CONCURRENTLY`` under ``lock_timeout``). For each: the build's wall time, the writes
committed during it, and the writer's longest and p99 commit latency during it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import fresh_database, log, machine_info, markdown_table, start_server, text_table
from pgshift.dsn import Dsn, connect
from pgshift.ops.optimize import optimize


class Writer:
    """Commits writes in a loop; records (commit time, latency) for each."""

    def __init__(self, dsn: Dsn) -> None:
        self.dsn, self.stop = dsn, threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with connect(self.dsn, autocommit=True, application_name="bench-writer") as conn:
            i = 0
            while not self.stop.is_set():
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute("INSERT INTO events (account_id, kind) VALUES (%s, 'w')",
                                 (i % 5000,))
                    conn.execute("UPDATE events SET payload = 'u' WHERE id = %s", (i + 1,))
                self.samples.append((time.time(), time.perf_counter() - started))
                i += 1


def _build_plain(dsn: Dsn) -> tuple[float, float]:
    with connect(dsn, autocommit=True) as conn:
        start = time.time()
        conn.execute("CREATE INDEX events_plain_idx ON events (account_id)")
        end = time.time()
        conn.execute("DROP INDEX events_plain_idx")
    return start, end


def _build_optimize(dsn: Dsn, workdir: Path) -> tuple[float, float]:
    planned = workdir / "planned.sql"
    planned.write_text("CREATE INDEX events_account_idx ON events (account_id);")
    [outcome] = optimize(dsn, apply=True, planned_sql=planned, auto=False).builds
    assert outcome.status == "built", outcome
    return outcome.started_at, outcome.finished_at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pgshift-bench")
    ap.add_argument("--markdown", type=Path, help="append the result table to this file")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    server = start_server(args.workdir / "pg")
    try:
        dsn = fresh_database(server, "bench_ops_index")
        with connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, account_id int NOT NULL,"
                         " kind text NOT NULL, payload text)")
            conn.execute("INSERT INTO events (account_id, kind, payload) SELECT g %% 5000, 'k', "
                         "repeat('x', 40) FROM generate_series(1, %s) g", (args.rows,))
            conn.execute("VACUUM ANALYZE events")
        rows = []
        for name, build in (("CREATE INDEX (plain)", lambda: _build_plain(dsn)),
                            ("pgshift optimize --apply (CONCURRENTLY)",
                             lambda: _build_optimize(dsn, args.workdir))):
            writer = Writer(dsn)
            writer.thread.start()
            time.sleep(1.0)
            log(f"building: {name}")
            start, end = build()
            time.sleep(0.5)
            writer.stop.set()
            writer.thread.join()
            # Every write in flight at some point of the build (a blocked one ends after it).
            lat = sorted(lat for t, lat in writer.samples if t - lat <= end and t >= start)
            committed = sum(1 for t, _ in writer.samples if start <= t <= end)
            rows.append({"build": name, "seconds": round(end - start, 2),
                         "writes_during": committed,
                         "max_write_ms": round(max(lat) * 1000, 1) if lat else None,
                         "p99_write_ms": round(statistics.quantiles(lat, n=100)[98] * 1000, 1)
                         if len(lat) >= 100 else None})
        info = machine_info(server)
    finally:
        server.stop()
    headers = ["build", "seconds", "writes committed during", "max write ms", "p99 write ms"]
    table = [[r["build"], f"{r['seconds']:.2f}", f"{r['writes_during']:,}",
              str(r["max_write_ms"]), str(r["p99_write_ms"])] for r in rows]
    if args.json:
        print(json.dumps({"rows": args.rows, "results": rows, "machine": info}, indent=2))
    else:
        print(text_table(headers, table))
    if args.markdown:
        with args.markdown.open("a") as fh:
            fh.write(f"\n{args.rows:,} rows\n\n" + markdown_table(headers, table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
