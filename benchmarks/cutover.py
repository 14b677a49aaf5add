"""The whole cutover under load: `pgshift demo` runs, each a real rollout, side by side.

Contestants (one invocation, run in turn, each on a fresh seed, PostgreSQL and proxy):

- ``clean``: the full rollout 10 -> 25 -> 50 -> 100 %, a rollback drill after the first
  step (rolled back and re-advanced on the live system), the flip, monitoring, finalize;
- ``green-errors``: green fails 30 % of its requests from the 25 % step: the engine must
  roll back by itself, before the flip;
- ``green-errors-after-flip``: green fails once it is the system of record (during
  monitoring): the rollback must hold writes, drain green's writes into SQLite and put
  everything back on blue.

The load generator drives the embedded proxy at ``--rps`` (>= 300) for the whole rollout
and its write ledger is checked against the system of record afterwards.

Targets (issue 13): zero failed requests (clean run), zero lost acknowledged writes,
write-fence hold under 1 s, traffic back on blue within 1 s of a rollback decision,
complete rollback including drain under 10 s.

    .venv/bin/python benchmarks/cutover.py --rps 300 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import markdown_table
from pgshift.demo.run import run_demo

FAULTS = {"clean": None, "green-errors": "green-errors",
          "green-errors-after-flip": "green-errors-after-flip"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rps", type=float, default=300.0)
    ap.add_argument("--scale", type=int, default=20_000)
    ap.add_argument("--bake", type=float, default=12.0)
    ap.add_argument("--runs", type=int, default=1, help="runs per contestant")
    ap.add_argument("--only", choices=list(FAULTS), action="append")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) /
                    "pgshift-bench" / "cutover")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for _ in range(args.runs):
        for name, fault in FAULTS.items():
            if args.only and name not in args.only:
                continue
            print(f"== {name}", file=sys.stderr, flush=True)
            r = run_demo(args.workdir / name, args.scale, rps=args.rps, bake=args.bake,
                         fault=fault).to_dict()
            rows.append({"run": name, **r})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    header = ["run", "status", "seconds", "requests", "req/s", "failed", "acked writes",
              "lost", "fence hold ms", "tail check", "traffic back ms", "rollback s",
              "stranded", "ok"]
    table = [[r["run"], r["status"], r["seconds"], r["requests"], r["achieved_rps"],
              r["failed_requests"], r["writes_acknowledged"], r["lost_writes"],
              r["fence_hold_ms"],
              (f"{r['tail_check']['checked']} rows, {r['tail_check']['seconds'] * 1000:.0f} ms"
               if r.get("tail_check") else "-"),
              r["rollback_traffic_back_ms"], r["rollback_seconds"],
              "none" if not r["stranded"] else r["stranded"], "yes" if r["ok"] else "NO"]
             for r in rows]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}; --rps {args.rps:g}, --scale {args.scale}, --bake "
          f"{args.bake:g}")
    cells = [[str(c) for c in row] for row in table]
    print(markdown_table(header, cells) if args.markdown else
          "\n".join("  ".join(row) for row in [header, *cells]))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
