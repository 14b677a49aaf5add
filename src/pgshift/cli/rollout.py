"""``pgshift rollout | plan | status | promote | pause | resume | abort | rollback | approve |
note``: the cutover and its operator verbs (library: ``pgshift.rollout``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pgshift.cli.output import out_console, print_json
from pgshift.errors import ExitCode, UsageError

Cutover = Annotated[Path, typer.Argument(help="The cutover file (cutover.yaml).",
                                         show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Reason = Annotated[str, typer.Option("--reason", "-m", help="Why (goes to the audit trail).")]
As = Annotated[str | None, typer.Option("--actor", help="Who (default: the login name).")]


def rollout_command(
    cutover: Cutover,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a rollout from its "
                                         "journal after reconciling router and sync.")] = False,
    confirm: Annotated[list[str] | None, typer.Option(
        "--confirm", help="NAME=TEXT for a typed-confirmation prerequisite (repeatable).")
    ] = None,
    rehearse: Annotated[bool, typer.Option(
        "--rehearse", help="The whole cutover, flip and monitoring (rehearsal.monitor) "
        "included, then back to blue as a rollback goes; --resume afterwards runs the real "
        "one.")] = False,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Serve the live dashboard "
                                            "(`pgshift dashboard`) while the rollout runs.")
                         ] = False,
    dashboard_port: Annotated[int, typer.Option("--dashboard-port", help="Its port (0: a "
                                                "free one, printed).")] = 0,
    json_output: Json = False,
) -> None:
    """Run the whole blue-green cutover the cutover file describes, step by step.

    Durable: every step is journaled in .pgshift/<name>/ before it acts; a killed run
    continues with --resume. Exit 0 done (or rehearsed), 6 rolled back or aborted, 1 a
    step's check failed (nothing after it ran), 2 bad input, 4/5 SQLite/PostgreSQL
    failures.

      pgshift rollout cutover.yaml

      pgshift rollout cutover.yaml --rehearse     (then: --resume for the real cutover)

      pgshift rollout cutover.yaml --resume

      pgshift rollout cutover.yaml --dashboard --dashboard-port 8765

      pgshift rollout cutover.yaml --confirm backups-checked="yes, restored yesterday"
    """
    from pgshift.cli import dashboard as dashboard_cli
    from pgshift.rollout import engine
    from pgshift.rollout.verbs import open_context

    confirmations = {}
    for item in confirm or []:
        name, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--confirm {item!r} is not NAME=TEXT",
                             hint='--confirm backups-checked="yes"')
        confirmations[name] = text
    dash = dashboard_cli.start(cutover, port=dashboard_port) if dashboard else None
    ctx = open_context(cutover, confirmations=confirmations)
    try:
        outcome = engine.run(ctx, resume=resume, rehearse=rehearse)
    finally:
        ctx.close()
        if dash is not None:
            dash.stop(grace=3.0)  # open pages get the final state
    if json_output:
        print_json(outcome.to_dict())
    else:
        out_console().print(f"rollout {outcome.status}: {outcome.message}")
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def plan_command(
    cutover: Cutover,
    data: Annotated[bool, typer.Option(
        "--data", help="Also the data plan from the same code the rollout runs: migrate's "
                       "dry run (DDL, type decisions, anomalies) and sync's write topology "
                       "per table. Reads the source and the target.")] = False,
    json_output: Json = False,
) -> None:
    """What a rollout of this cutover file would do; changes nothing.

      pgshift plan cutover.yaml

      pgshift plan cutover.yaml --data --json
    """
    from pgshift.rollout.verbs import plan

    out = plan(cutover, data=data)
    if json_output:
        print_json(out)
        return
    con = out_console()
    con.print(f"cutover {out['cutover']}: {out['source']} -> {out['target']} via "
              f"{out['router']} router; state in {out['state_dir']}")
    con.print("phases: " + " -> ".join(out["phases"]))
    g = out["gates"]
    con.print(f"gates: error rate <= {g['max_error_rate']:.3%} at {g['confidence']:.0%} "
              f"confidence, >= {g['min_requests']} green requests per step; on failure "
              f"{out['on_failure']}, inconclusive -> {out['on_inconclusive']}")
    for s in out["steps"]:
        con.print(f"  {s['weight']:>5g} %  bake {s['bake_s']:g}s  needs "
                  f"{s['requests_needed_to_pass']:,} green requests "
                  f"(~{s['green_rps_needed']} req/s to green)"
                  + ("  [manual approval]" if s["approval"] == "required" else ""))
    con.print(f"approvals before finalize: {', '.join(out['approvals']) or 'none'}; "
              f"estimated duration {out['eta_s']:g}s")
    for w in out["warnings"]:
        con.print(f"warning: {w}")
    if data:
        _print_data_plan(out)


def _print_data_plan(out: dict[str, Any]) -> None:
    con = out_console()
    m = out["migrate"]["plan"] or {"tables": []}
    for t in m.get("tables", []):
        cols = ", ".join(f"{c.get('name')} {c.get('pg_type') or c.get('type', '')}".strip()
                         for c in t.get("columns", []))
        con.print(f"table {t.get('name')} ({t.get('rows', '?')} rows): {cols}")
    for n in out["migrate"]["notes"] or []:
        con.print(f"  {n.get('level')}: {n.get('object')}: {n.get('message')}")
    for r in out["sync"]["tables"]:
        con.print(f"sync {r['table']}: kind {r['kind']}, {r['writes']}, conflict "
                  f"{r['conflict']}, green writes {r['green_writes']}"
                  + (f"; REFUSED: {'; '.join(r['refusals'])}" if r["refusals"] else ""))


def status_command(
    cutover: Cutover,
    watch: Annotated[float | None, typer.Option(
        "--watch", help="Redraw every this many seconds until Ctrl-C (a live view on a "
                        "terminal, one block per interval in a log).")] = None,
    json_output: Json = False,
) -> None:
    """The rollout's state: phase, weight, blue/green figures, sync lag, next decision.

      pgshift status cutover.yaml

      pgshift status cutover.yaml --watch 2

      pgshift status cutover.yaml --json
    """
    from pgshift.rollout.verbs import open_context, status

    if watch is not None and watch <= 0:
        raise UsageError("--watch must be a positive number of seconds", hint="--watch 2")
    ctx = open_context(cutover, say=lambda _: None)
    try:
        while True:
            out = status(ctx)
            if json_output:
                print_json(out)
            else:
                if watch is not None and out_console().is_terminal:
                    out_console().clear()
                _print_status(out)
            if watch is None:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        return
    finally:
        ctx.close()


def _n(v: Any, digits: int = 1) -> str:
    """A figure for people: grouped, rounded, ``-`` when unknown."""
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    try:
        return f"{float(v):,.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _print_status(out: dict[str, Any]) -> None:
    con = out_console()
    lease = out["controller"]
    weight = out["weight"]
    con.print(f"{out['cutover']}: {out['status']} at {out['phase']}, green weight "
              f"{'-' if weight is None else f'{float(weight):g}'} %, system of record "
              f"{out['system_of_record']}"
              + (" (PAUSED)" if out["paused"] else "")
              + (f"; controller pid {lease['pid']}" if lease["alive"] else
                 "; no controller running"))
    if out.get("waiting_for"):
        con.print(f"waiting for `pgshift {out['waiting_for']}`: {out['waiting_reason']}")
    fig = (out.get("router") or {}).get("figures")
    if fig:
        for side in ("blue", "green"):
            f = fig[side]
            con.print(f"  {side:5} {_n(f['requests']):>7} requests, {_n(f.get('errors', 0))} "
                      f"errors, p99 {_n(f.get('p99_ms'))} ms (last 60 s)")
    sync = out.get("sync")
    if sync:
        con.print(f"  sync: lag {_n(sync.get('lag_ms'), 0)} ms to PostgreSQL, "
                  f"{_n(sync.get('to_sqlite_pending'))} pending to SQLite")
    for s in out["steps"]:
        rate = s.get("error_rate")
        con.print(f"  step {s['weight']:g} %: {_n(s['requests'])} green requests, error rate "
                  f"{'-' if rate is None else f'{100 * float(rate):.2f} %'}, p99 "
                  f"{_n(s['p99_ms'])} ms -> {s['decision']}")
    for d in out["decisions"][-5:]:
        con.print(f"  {d['ts']} {d['step']}: {d['decision']} ({d['reason']})")


def _verb(verb: str, cutover: Path, reason: str, actor: str | None, json_output: bool) -> None:
    from pgshift.rollout.verbs import open_context, open_for_rollback, request

    opener = open_for_rollback if verb == "rollback" else open_context
    ctx = opener(cutover)
    try:
        res = request(ctx, verb, reason=reason, actor=actor)
    finally:
        ctx.close()
    if json_output:
        print_json(res.to_dict())
    else:
        out_console().print(f"{verb}: {res.outcome}")
        rb = res.figures.get("rollback")
        if rb:
            out_console().print(f"rollback: traffic on blue after {rb['traffic_back_ms']} ms, "
                                f"complete in {rb['seconds']}s; stranded: "
                                f"{rb['stranded'] or 'nothing'}")
    if verb == "rollback" and (res.figures.get("rollback") or {}).get("stranded"):
        raise typer.Exit(int(ExitCode.DIFFERENCES))


def promote_command(cutover: Cutover, reason: Reason = "", actor: As = None,
                    json_output: Json = False) -> None:
    """Approve a held step (manual gate, inconclusive analysis) or end a bake early.

      pgshift promote cutover.yaml -m "dashboards look fine"
    """
    _verb("promote", cutover, reason, actor, json_output)


def pause_command(cutover: Cutover, reason: Reason = "", actor: As = None,
                  json_output: Json = False) -> None:
    """Hold the current weight (checks and automatic rollback keep running).

      pgshift pause cutover.yaml -m "investigating a latency blip"
    """
    _verb("pause", cutover, reason, actor, json_output)


def resume_command(cutover: Cutover, reason: Reason = "", actor: As = None,
                   json_output: Json = False) -> None:
    """Continue after `pgshift pause`.

      pgshift resume cutover.yaml
    """
    _verb("resume", cutover, reason, actor, json_output)


def abort_command(cutover: Cutover, reason: Reason = "", actor: As = None,
                  json_output: Json = False) -> None:
    """Stop advancing: all traffic to the current system of record; sync keeps running.

      pgshift abort cutover.yaml -m "wrong release on green"
    """
    _verb("abort", cutover, reason, actor, json_output)


def rollback_command(cutover: Cutover, reason: Reason = "", actor: As = None,
                     json_output: Json = False) -> None:
    """Everything back to blue, green's writes carried into SQLite (emergency).

    Works while `pgshift rollout` runs (it takes the rollback), when it does not, and
    with a broken journal. Exit 1 when some changes could not be carried back (the
    stranded range is printed).

      pgshift rollback cutover.yaml -m "p99 doubled"
    """
    _verb("rollback", cutover, reason, actor, json_output)


def approve_command(cutover: Cutover,
                    role: Annotated[str, typer.Option("--as", help="The role approving, as "
                                                      "named in finalize.approvals.",
                                                      show_default=False)],
                    note: Reason = "", actor: As = None, json_output: Json = False) -> None:
    """Record an approval (with who and when) that finalize requires.

      pgshift approve cutover.yaml --as ops-lead -m "monitoring clean for 48 h"
    """
    from pgshift.rollout.verbs import approve, open_context

    ctx = open_context(cutover)
    try:
        done = approve(ctx, role, actor=actor, note=note)
    finally:
        ctx.close()
    if json_output:
        print_json(done.to_dict())
    else:
        out_console().print(f"{role} approved; still missing: {', '.join(done.missing) or 'none'}")


def note_command(cutover: Cutover,
                 text: Annotated[str, typer.Argument(help="The remark.", show_default=False)],
                 actor: As = None) -> None:
    """Add an operator remark or user feedback to the audit trail (and the report).

      pgshift note cutover.yaml "support saw no tickets during the 50 % step"
    """
    from pgshift.rollout.verbs import note, open_context

    ctx = open_context(cutover)
    try:
        note(ctx, text, actor=actor)
    finally:
        ctx.close()
    print("noted", file=sys.stderr)


def register(app: typer.Typer) -> None:
    for name, fn in (("rollout", rollout_command), ("plan", plan_command),
                     ("status", status_command), ("promote", promote_command),
                     ("pause", pause_command), ("resume", resume_command),
                     ("abort", abort_command), ("rollback", rollback_command),
                     ("approve", approve_command), ("note", note_command)):
        app.command(name=name, no_args_is_help=True)(fn)
