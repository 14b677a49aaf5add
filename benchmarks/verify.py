"""Benchmark ``pgshift verify`` on the hyperpage-shaped database after migration.

One run, one PostgreSQL:

1. seed (cached) and ``pgshift migrate`` into a fresh database;
2. full ``pgshift verify`` of the identical copy (must exit 0);
3. plant one single-cell difference (a job's payload) and delete one row
   (a job_history row) in PostgreSQL; ``pgshift verify`` again: must exit 1 and
   name both keys;
4. reladiff, when installed (``--reladiff PATH``, or ``reladiff`` on PATH): the same
   tables PostgreSQL-vs-PostgreSQL (the migrated database against a copy of it),
   which is the yardstick of the target (pgshift <= 1.5x reladiff's time).

    .venv/bin/python benchmarks/verify.py --scale 1000000 --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    fresh_database,
    libpq_env,
    log,
    markdown_table,
    pgshift_exe,
    run_measured,
    seeded_sqlite,
    server_pid,
    start_server,
    text_table,
    wait_for_quiet,
)
from pgshift.dsn import connect

# reladiff compares the columns it is told; these are every column of each table.
RELADIFF_TABLES = {
    "jobs": ("id", ["type", "status", "priority", "payload", "result", "attempts",
                    "max_attempts", "user_id", "scheduled_at", "started_at", "completed_at",
                    "created_at", "updated_at"]),
    "job_history": ("id", ["job_id", "status", "message", "created_at"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pgshift-bench")
    ap.add_argument("--reladiff", default=shutil.which("reladiff"),
                    help="path of the reladiff executable (default: on PATH)")
    ap.add_argument("--markdown", type=Path, help="append the result table to this file")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args()

    db, rows = seeded_sqlite(args.workdir, args.scale)
    total_rows = sum(rows.values())
    server = start_server(args.workdir / "pg-verify", durable=True)
    out = args.workdir / "verify-out"
    results: list[dict[str, object]] = []
    try:
        dsn = fresh_database(server, "verify_a")
        conninfo, env = libpq_env(dsn)
        log("migrating")
        m = run_measured([pgshift_exe(), "migrate", str(db), conninfo, "--json", "--state-dir",
                          str(args.workdir / "verify-state")], out_dir=out, label="migrate",
                         env=env)
        if m.returncode != 0:
            log(f"migrate failed ({m.returncode}): {m.stderr[-2000:]}")
            return 1
        wait_for_quiet(server_pid(server.datadir))
        log("verify (identical)")
        v1 = run_measured([pgshift_exe(), "verify", str(db), conninfo, "--json"],
                          out_dir=out, label="verify-identical", env=env)
        ok1 = v1.returncode == 0
        results.append({"run": "pgshift verify, identical copy", "seconds": v1.seconds,
                        "peak_rss": v1.peak_rss, "rows": total_rows,
                        "found": "exit 0" if ok1 else f"exit {v1.returncode}"})

        with connect(dsn, autocommit=True) as pg:
            job = pg.execute("SELECT id FROM jobs ORDER BY id OFFSET %s LIMIT 1",
                             (rows["jobs"] // 2,)).fetchone()[0]
            hist = pg.execute("SELECT id FROM job_history ORDER BY id OFFSET %s LIMIT 1",
                              (rows["job_history"] // 3,)).fetchone()[0]
            pg.execute("UPDATE jobs SET priority = priority + 1 WHERE id = %s", (job,))
            pg.execute("DELETE FROM job_history WHERE id = %s", (hist,))
        wait_for_quiet(server_pid(server.datadir))
        log(f"verify (planted: jobs.priority of {job}, missing job_history {hist})")
        v2 = run_measured([pgshift_exe(), "verify", str(db), conninfo, "--json"],
                          out_dir=out, label="verify-planted", env=env)
        found = _found(v2.stdout, str(job), str(hist))
        results.append({"run": "pgshift verify, 1 changed cell + 1 missing row",
                        "seconds": v2.seconds, "peak_rss": v2.peak_rss, "rows": total_rows,
                        "found": found})

        if args.reladiff:
            fresh_database(server, "verify_b")
            with connect(server.dsn(), autocommit=True) as admin:
                admin.execute("DROP DATABASE verify_b")
                admin.execute("CREATE DATABASE verify_b TEMPLATE verify_a")
            uri_a = _uri(server, "verify_a")
            uri_b = _uri(server, "verify_b")
            spent, compared = 0.0, 0
            for table, (key, cols) in RELADIFF_TABLES.items():
                argv = [args.reladiff, uri_a, table, uri_b, table, "-k", key, "--stats"]
                for c in cols:
                    argv += ["-c", c]
                wait_for_quiet(server_pid(server.datadir))
                r = run_measured(argv, out_dir=out, label=f"reladiff-{table}")
                spent += r.seconds
                compared += rows[table]
                if r.returncode not in (0, 1):
                    log(f"reladiff {table} failed: {r.stderr[-800:]}")
            results.append({"run": "reladiff PG-vs-PG (jobs + job_history)", "seconds": spent,
                            "peak_rss": 0, "rows": compared, "found": "-"})
            # pgshift's time for the same two tables, from its own per-table timings.
            same = sum(t["seconds"] for t in json.loads(v1.stdout)["tables"]
                       if t["table"] in RELADIFF_TABLES)
            results.append({"run": "pgshift verify, same two tables (from its timings)",
                            "seconds": same, "peak_rss": 0, "rows": compared,
                            "found": f"{same / spent:.2f}x reladiff" if spent else "-"})
        else:
            log("reladiff not installed: its row is skipped (pip install reladiff "
                "psycopg2-binary, then --reladiff PATH)")
    finally:
        server.stop()

    headers = ["run", "rows", "wall s", "rows/s", "peak RSS MB", "result"]
    table_rows = [[str(r["run"]), f"{r['rows']:,}", f"{r['seconds']:.1f}",
                   f"{int(r['rows']) / max(float(r['seconds']), 1e-9):,.0f}",
                   f"{int(r['peak_rss']) / 1e6:.0f}" if r["peak_rss"] else "-", str(r["found"])]
                  for r in results]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(text_table(headers, table_rows))
    if args.markdown:
        with args.markdown.open("a") as fh:
            fh.write(f"\n### verify, scale {args.scale:,} ({time.strftime('%Y-%m-%d')})\n\n")
            fh.write(markdown_table(headers, table_rows) + "\n")
    return 0


def _found(stdout: str, job: str, hist: str) -> str:
    try:
        data = json.loads(stdout)
    except ValueError:
        return "no JSON output"
    keys = {(d["table"], str(next(iter(d["key"].values()))), d["kind"])
            for t in data["tables"] for d in t["differences"]}
    got_job = ("jobs", job, "changed") in keys
    got_hist = ("job_history", hist, "missing_in_postgres") in keys
    return f"changed cell {'found' if got_job else 'MISSED'}, missing row " \
           f"{'found' if got_hist else 'MISSED'}"


def _uri(server: object, db: str) -> str:
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(server.dsn(db).conninfo)  # type: ignore[attr-defined]
    return (f"postgresql://{params['user']}:{params['password']}@{params['host']}:"
            f"{params['port']}/{db}")


if __name__ == "__main__":
    sys.exit(main())
