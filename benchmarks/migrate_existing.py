"""Benchmark: ``pgshift migrate --into-existing`` vs the base ``pgshift migrate``.

Issue 7's target: loading into an existing schema runs within 1.3x of the base
command on the same data. One durable embedded PostgreSQL, one seeded SQLite
file, three fresh databases:

1. ``base``: ``pgshift migrate SQLITE DSN --jobs J --drop --json`` (creates the schema,
   loads into bare tables, then builds keys, indexes and constraints);
2. ``by-name``: the same schema created first (``--schema-only``, as an application's
   migrations would: keys, indexes, foreign keys and checks already there, not timed),
   then ``pgshift migrate SQLITE DSN --into-existing --map M`` with a mapping that only
   declares the epoch units the base plan chose (the one thing a by-name load may not
   guess);
3. ``into-existing``: as 2, and the mapping also feeds one column per table through an
   expression, so the mapped path (a scan of its own in the plan) is what is measured;
4. ``rekeyed`` (issue 15): the schema an ORM migration makes of it: ``jobs`` gets bigint
   ids in creation order (``legacy_id`` keeps the text id, UNIQUE) and ``job_history``
   references them: both fed by ``query:`` sources, the children through a JOIN that
   looks the new ids up (docs/mapping.md's example). Its ``--dry-run`` is timed too and
   compared with the base command's profile step.

Usage (from the repository root)::

    .venv/bin/python benchmarks/migrate_existing.py --scale 200000
    .venv/bin/python benchmarks/migrate_existing.py --scale 1000000 --runs 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

from _common import (
    checkpoint,
    fresh_database,
    libpq_env,
    log,
    machine_info,
    markdown_table,
    median,
    mib,
    pgshift_exe,
    run_measured,
    scratch_dir,
    seeded_sqlite,
    start_server,
    text_table,
)

TARGET_RATIO = 1.3
REKEY_RATIO = 2.0  # issue 15: a mapped run with re-keying queries <= 2x the base command
DRY_RUN_RATIO = 1.5  # issue 15: its --dry-run <= 1.5x the base command's profile step

NEW_ID = "row_number() OVER (ORDER BY created_at, id)"
REKEY_DDL = """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = 'job_history'::regclass
           AND contype = 'f' LOOP
    EXECUTE format('ALTER TABLE job_history DROP CONSTRAINT %I', r.conname);
  END LOOP;
END $$;
ALTER TABLE jobs ALTER COLUMN id TYPE bigint USING id::bigint;
ALTER TABLE jobs ADD COLUMN legacy_id text NOT NULL UNIQUE;
ALTER TABLE job_history ALTER COLUMN job_id TYPE bigint USING job_id::bigint;
ALTER TABLE job_history ADD FOREIGN KEY (job_id) REFERENCES jobs (id);
"""


def _pgshift(argv: list[str], dsn_conninfo: str, env: dict[str, str], out: Path, label: str,
             ) -> tuple[Any, dict[str, Any]]:
    m = run_measured([pgshift_exe(), *argv[:1], argv[1], dsn_conninfo, *argv[2:]], out_dir=out,
                     label=label, env=env)
    if m.returncode not in (0, 3):
        sys.exit(f"{label} failed ({m.returncode}):\n{m.stderr_path.read_text()[-2000:]}")
    return m, json.loads(m.stdout_path.read_text())


def _steps(res: dict[str, Any]) -> str:
    return ", ".join(f"{s['step']} {s['seconds']:.2f}" for s in res["steps"])


def _mapping(plan: dict[str, Any], *, expressions: bool) -> str:
    """Declared epoch units, plus (``expressions``) one column per table fed through an
    expression."""
    tables: dict[str, Any] = {}
    for t in plan["tables"]:
        cols: dict[str, Any] = {}
        for c in t["columns"]:
            if c["conversion"].startswith("epoch_"):
                cols[c["name"]] = {"expr": c["name"], "convert": c["conversion"]}
        text = next((c["name"] for c in t["columns"] if c["conversion"] == "text"
                     and c["name"] not in cols), None)
        if text and expressions:
            cols[text] = f"coalesce({text}, NULL)"
        tables[t["name"]] = {"columns": cols}
    return yaml.safe_dump({"tables": tables}, sort_keys=False)


def _rekeyed_mapping(plan: dict[str, Any]) -> str:
    """jobs re-keyed in creation order; job_history looks the new ids up with a JOIN."""
    data = yaml.safe_load(_mapping(plan, expressions=False))
    jobs = data["tables"]["jobs"]
    jobs["query"] = f"SELECT {NEW_ID} AS new_id, * FROM jobs"
    jobs["columns"].update({"id": "new_id", "legacy_id": "id"})
    hist = data["tables"]["job_history"]
    hist["query"] = (f"SELECT h.*, j.new_id FROM job_history h JOIN (SELECT id, {NEW_ID} AS "
                     "new_id FROM jobs) j ON j.id = h.job_id")
    hist["columns"]["job_id"] = "new_id"
    hist["drop"] = ["job_id"]
    return yaml.safe_dump(data, sort_keys=False)


# by-name: only the epoch units declared (the one thing a by-name load may not guess);
# into-existing: plus one column per table through an expression (a scan of its own).
VARIANTS = ("by-name", "into-existing", "rekeyed")


def _load_existing(server: Any, source: Path, out: Path, run: int, jobs: int, *,
                   name: str) -> tuple[Any, dict[str, Any], float | None]:
    """Create the schema first (as an app's migrations would; not timed), then load it.

    Returns the load's measurement, its JSON result and (``rekeyed``) its dry run's wall
    seconds.
    """
    tag = {"into-existing": "mapped", "by-name": "byname"}.get(name, name)
    app_dsn = fresh_database(server, f"bench_{tag}")
    info, env = libpq_env(app_dsn)
    _, plan = _pgshift(["migrate", str(source), "--dry-run", "--json",
                        "--state-dir", str(out / f"state-plan-{tag}")],
                       info, env, out, f"plan-{tag}-{run}")
    _pgshift(["migrate", str(source), "--schema-only", "--json",
              "--state-dir", str(out / f"state-schema-{tag}")], info, env, out,
             f"schema-{tag}-{run}")
    mapping = out / f"mapping-{tag}.yaml"
    dry = None
    if name == "rekeyed":
        with psycopg.connect(app_dsn.conninfo, autocommit=True) as conn:
            conn.execute(REKEY_DDL)
        mapping.write_text(_rekeyed_mapping(plan["plan"]))
        checkpoint(server)
        _, res = _pgshift(["migrate", str(source), "--into-existing", "--map", str(mapping),
                           "--jobs", str(jobs), "--dry-run", "--json",
                           "--state-dir", str(out / f"state-dry-{tag}")],
                          info, env, out, f"dry-{tag}-{run}")
        # The plan step: what the dry run adds to the process start, snapshot and catalog
        # the base command pays too (compared with the base command's profile step).
        dry = next(s["seconds"] for s in res["steps"] if s["step"] == "plan")
    else:
        mapping.write_text(_mapping(plan["plan"], expressions=name == "into-existing"))
    # The schema-only run is recorded as finished: --restart makes the load a fresh run
    # into the tables it created (an app's migrations leave none).
    checkpoint(server)
    m, res = _pgshift(["migrate", str(source), "--into-existing", "--map", str(mapping),
                       "--jobs", str(jobs), "--restart", "--json",
                       "--state-dir", str(out / f"state-existing-{tag}")],
                      info, env, out, f"existing-{tag}-{run}")
    return m, res, dry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=200_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--markdown", type=Path, help="append the table to this file")
    args = ap.parse_args()

    source, counts = seeded_sqlite(args.workdir, args.scale)
    total_rows = sum(counts.values())
    server = start_server(args.workdir / "pg-existing")
    results: dict[str, list[float]] = {n: [] for n in ("base", *VARIANTS)}
    rss: dict[str, list[int]] = {n: [] for n in ("base", *VARIANTS)}
    profile: list[float] = []  # the base command's profile step
    dry_runs: list[float] = []  # the rekeyed mapping's --dry-run
    try:
        with scratch_dir(args.workdir, "existing-") as out:
            for run in range(args.runs):
                base_dsn = fresh_database(server, "bench_base")
                info, env = libpq_env(base_dsn)
                checkpoint(server)
                m, res = _pgshift(["migrate", str(source), "--jobs", str(args.jobs), "--drop",
                                   "--json", "--state-dir", str(out / "state-base")],
                                  info, env, out, f"base-{run}")
                results["base"].append(m.seconds)
                rss["base"].append(m.peak_rss)
                step = next((s["seconds"] for s in res["steps"] if s["step"] == "profile"), None)
                if step is None:
                    # The fresh load plans from a sample and profiles while it copies (issue
                    # 14): its --dry-run still profiles every row up front, as issue 15 meant.
                    _, dry_res = _pgshift(["migrate", str(source), "--dry-run", "--json",
                                           "--jobs", str(args.jobs), "--state-dir",
                                           str(out / "state-base-dry")],
                                          info, env, out, f"base-dry-{run}")
                    step = next(s["seconds"] for s in dry_res["steps"] if s["step"] == "profile")
                profile.append(step)
                log(f"base run {run}: {m.seconds:.1f}s, {res['rows']:,} rows; {_steps(res)}")

                for name in VARIANTS:
                    m, res, dry = _load_existing(server, source, out, run, args.jobs, name=name)
                    if dry is not None:
                        dry_runs.append(dry)
                        log(f"{name} dry run {run}: plan step {dry:.2f}s")
                    results[name].append(m.seconds)
                    rss[name].append(m.peak_rss)
                    log(f"{name} run {run}: {m.seconds:.1f}s, {res['rows']:,} rows, "
                        f"{res['rejects']} rejects; {_steps(res)}")
                    if res["rows"] != total_rows:
                        sys.exit(f"{name} loaded {res['rows']} of {total_rows} rows")
            machine = machine_info(server)
    finally:
        server.stop()

    base = median(results["base"])
    rows = []
    for name in ("base", *VARIANTS):
        wall = median(results[name])
        rows.append([name, f"{wall:.1f}", f"{total_rows / wall:,.0f}", f"{wall / base:.2f}x",
                     mib(max(rss[name]))])
    headers = ["contestant", "wall s (median)", "rows/s", "vs base", "peak RSS MiB"]
    print(text_table(headers, rows))
    ratio = median(results["into-existing"]) / base
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"target: into-existing <= {TARGET_RATIO}x base: {ratio:.2f}x ({verdict})")
    rekey = median(results["rekeyed"]) / base
    print(f"target: rekeyed <= {REKEY_RATIO}x base: {rekey:.2f}x "
          f"({'met' if rekey <= REKEY_RATIO else 'MISSED'})")
    dry_ratio = median(dry_runs) / median(profile)
    print(f"target: rekeyed --dry-run's plan step {median(dry_runs):.2f}s <= {DRY_RUN_RATIO}x "
          f"base profile step {median(profile):.2f}s: {dry_ratio:.2f}x "
          f"({'met' if dry_ratio <= DRY_RUN_RATIO else 'MISSED'})")
    print(f"scale {args.scale:,} ({total_rows:,} rows), runs {args.runs}, jobs {args.jobs}, "
          f"{machine.get('cpu', '')}")
    if args.markdown:
        with args.markdown.open("a") as fh:
            fh.write(markdown_table(headers, rows) + "\n")


if __name__ == "__main__":
    main()
