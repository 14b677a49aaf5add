"""The operational documents the runbook asks for, from the report's facts: the rollback
procedure for this deployment, the blue decommissioning checklist and the
incident-communication template. Each is a section of the report and, on its own,
``pgshift report CUTOVER --document rollback|decommission|incident``.

Measured values and this deployment's commands are filled in; a blank (``____``) is
left only for what cannot be known before an incident (when it was detected, what users
saw).
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any

from pgshift.report.content import NR, Section, dur, final_sync_ok, final_sync_words, num, when
from pgshift.report.facts import ReportFacts, parse_ts

DONE, TODO = "[x]", "[ ]"


def _q(text: str) -> str:
    return shlex.quote(text)


def _retired(f: ReportFacts) -> bool:
    """Finalize removed change capture: ``pgshift rollback`` cannot carry writes back."""
    fin = f.finalize_figures()
    return fin is not None and fin.get("capture_removed") is not None


def _current(f: ReportFacts) -> str:
    weight = f.kv.get("weight")
    sor = "green (PostgreSQL)" if f.kv.get("flipped") else "blue (SQLite)"
    return (f"green weight {NR if weight is None else f'{float(weight):g} %'}, writes to "
            f"{sor}, rollout status {f.status or NR} (phase {f.phase or NR})")


def rollback_procedure(f: ReportFacts) -> Section:
    """How to go back to blue on this deployment, with the times measured on it."""
    c = _q(f.setup.cutover)
    measured = f.drill or f.last_rollback
    times = (f"Measured on this deployment: traffic on blue after "
             f"{num(measured.get('traffic_back_ms'), 'ms')}, complete in "
             f"{num(measured.get('seconds'), 's')}, writes held "
             f"{num(measured.get('fence_hold_ms'), 'ms')}." if measured else
             "Not measured on this deployment (no drill or rollback ran).")
    fin = f.finalize_figures()
    if fin is not None and _retired(f):
        return Section("Rollback Procedure for this Deployment", bullets=[
            "Finalize ran: change capture is removed and blue was retired, so "
            "`pgshift rollback` no longer applies (blue's SQLite stopped receiving "
            f"green's writes at {when(f.last_ts)}).",
            "Going back now means restoring blue from its archive and replaying what "
            "green wrote since: a new migration in the other direction, planned as such.",
            times,
        ], code=_archive_commands(f, fin))
    return Section("Rollback Procedure for this Deployment", items=[
        ("Now", _current(f)),
    ], bullets=[
        times,
        f"Green's writes are drained into SQLite with a deadline of "
        f"{dur(f.setup.rollback_drain_deadline_s)}; anything not drained by then is printed "
        "and recorded as the stranded range, and the command exits 1.",
        "It works with the engine stopped, and with an unreadable journal (moved aside).",
    ], code=(f"pgshift status {c}\n"
             f"pgshift rollback {c} -m \"why\"   # traffic and writes back to blue\n"
             f"pgshift status {c} --json        # last_rollback: times, stranded range\n"
             f"pgshift report {c} --document incident   # the message to send"))


def _archive_commands(f: ReportFacts, fin: dict[str, Any]) -> str:
    loc = (fin.get("archive") or {}).get("location")
    if loc:
        return (f"pgshift archive verify {_q(loc)}   # blue's database and config, "
                "re-checked and restored to a temporary file\n"
                f"pgshift archive restore {_q(loc)} --to blue-restored   # written back, "
                "checked first")
    return "# no archive was made at finalize: blue's SQLite file " + f.setup.sqlite


def decommission_checklist(f: ReportFacts) -> Section:
    """Retiring blue: each item checked against what the run recorded."""
    fin = f.finalize_figures() or {}
    finalized = bool(fin)
    c, items = _q(f.setup.cutover), []

    def item(ok: bool | None, text: str) -> None:
        items.append(f"{DONE if ok else TODO} {text}")

    mon = f.step("monitor")
    checks = (mon.figures.get("checks") if mon else None) or 0
    item(mon is not None and mon.status == "done" and checks > 0,
         "Monitoring window over: " + ("the monitor step did not run" if mon is None else
                                       f"the last monitor step {mon.status} with {checks} "
                                       "check round(s)" +
                                       ("; the window was not watched" if not checks else ""))
         + f" ({dur(f.setup.monitor_window_s)} configured)")
    blue_after = _blue_after_flip(f)
    item(blue_after == 0, "Nothing reaches blue any more: " + (
        f"blue served {num(blue_after)} request(s) through the router after the flip"
        if blue_after is not None else f"{NR} (no flip, or no traffic sample taken wholly "
                                    "after it)"))
    missing = [r for r in f.setup.approvals_required if r not in f.approvals]
    item(not missing, "Approvals: " + (", ".join(
        f"{r} by {f.approvals[r]['actor']}" for r in f.setup.approvals_required
        if r in f.approvals) or "none required") + (
        f"; missing {', '.join(missing)} (`pgshift approve {c} --as {missing[0]}`)"
        if missing else ""))
    fs = f.final_sync
    item(final_sync_ok(fs), "Final sync: " + (final_sync_words(fs) if fs else
                                              f"{NR} (finalize did not run)"))
    for key, label, cmd in (("stop_blue_workers", "Blue's workers stopped",
                             f.setup.stop_blue_workers),
                            ("stop_blue", "Blue stopped", f.setup.stop_blue)):
        hook = fin.get(key)
        if hook:
            item(hook.get("exit_code") == 0, f"{label}: `{cmd}` exit {hook.get('exit_code')}")
        else:
            item(False, f"{label}: " + ("finalize did not run yet" if not finalized else
                                        "no command configured: do it by hand"))
    if fin.get("capture_removed") is not None:
        item(True, "Change capture removed from SQLite and PostgreSQL")
    else:
        item(False, "Change capture removed: " + (
            f"not yet (`pgshift sync uninstall {_q(f.setup.sqlite)} "
            f"{_q(f.setup.target_dsn)}`)" if finalized or not f.setup.remove_capture
            else "finalize removes it"))
    arch = fin.get("archive") or {}
    if arch.get("location"):
        item(bool(arch.get("verified")), f"Blue archived: {arch['location']}, "
             f"{num(arch.get('bytes'))} bytes, verified {arch.get('verified')}")
    else:
        dest = f.setup.archive_dest or "DEST"
        item(False, f"Blue archived: {NR}; `pgshift archive {_q(f.setup.sqlite)} {dest}` "
                    "then `pgshift archive verify ARCHIVE`")
    opt = fin.get("optimize") or {}
    item(bool(opt) and not opt.get("skipped"), "PostgreSQL optimized: " + (
        f"{len(opt.get('proposals') or [])} proposal(s), "
        f"{len(opt.get('applied') or opt.get('built') or [])} applied" if opt and not
        opt.get("skipped") else f"{NR} (`pgshift optimize {_q(f.setup.target_dsn)}`)"))
    item(False, f"Blue ({f.setup.blue_url}) removed from the router's configuration and "
                "DNS, its host and credentials retired (outside pgshift)")
    item(False, f"Blue's SQLite file {f.setup.sqlite} deleted once the archive's retention "
                "period is agreed (keep it until then)")
    return Section("Blue Decommissioning Checklist", bullets=items)


def _blue_after_flip(f: ReportFacts) -> int | None:
    """Requests blue served after the flip, from the traffic series."""
    flip = f.step("flip")
    if flip is None or flip.status != "done" or not f.traffic.recorded:
        return None
    t = parse_ts(flip.finished_at)
    after = [s for s in f.traffic.spans() if t is not None and s.t0 >= t]
    return sum(s.requests("blue") for s in after) if after else None


def _plain_state(f: ReportFacts) -> str:
    """Where users are, in words for people outside the team."""
    weight = f.kv.get("weight")
    if weight is None:
        return "no user has been moved to the new database yet"
    writes = ("the new database (PostgreSQL) receives all writes" if f.kv.get("flipped")
              else "all writes still go to the current database (SQLite)")
    return f"{float(weight):g} % of users read from the new database; {writes}"


def _para(text: str) -> str:
    return textwrap.fill(text, 78)


def incident_template(f: ReportFacts) -> Section:
    """What to tell users and stakeholders if this deployment goes wrong: the facts to
    quote, and three messages with only the incident's own details left blank."""
    c = _q(f.setup.cutover)
    measured = f.drill or f.last_rollback
    back = (f"on this deployment a rollback moved traffic back in "
            f"{num(measured.get('traffic_back_ms'), 'ms')} and completed in "
            f"{num(measured.get('seconds'), 's')}" if measured else
            "the rollback time was not measured on this deployment (no drill)")
    retired = _retired(f)
    people = sorted({a["actor"] for a in f.approvals.values()} |
                    {str(cmd["actor"]) for cmd in f.commands} |
                    {e.actor for e in f.notes if e.actor})
    t = f.traffic
    failed = (t.total("blue")[1] + t.total("green")[1] + t.refused) if t.recorded else None
    name = f.name
    if retired:
        rollback = ("no longer available: finalize retired blue (capture removed); "
                    "problems are fixed forward on PostgreSQL")
        mitigate = ("We have identified the cause and are fixing it on the new database; "
                    "the previous database was retired after the migration completed.")
    else:
        rollback = f"`pgshift rollback {c} -m \"why\"`; {back}"
        mitigate = ("We are moving all traffic back to the previous database. No "
                    "acknowledged write is lost: writes made on the new database are carried "
                    f"back first; {back}.")
    messages = [
        f"INVESTIGATING ({name}) - ____ UTC",
        _para(f"We are investigating ____ (what users see) affecting {name}. A planned "
              f"database migration is in progress: {_plain_state(f)}. Next update within "
              "30 minutes."), "",
        f"MITIGATING ({name}) - ____ UTC", _para(mitigate), "",
        f"RESOLVED ({name}) - ____ UTC",
        _para("Service is back to normal since ____ UTC. Requests that failed during the "
              f"incident: ____ (`pgshift report {c}`: requests and failures). A review "
              "follows."),
    ]
    return Section("Incident Communication Template", items=[
        ("Change", f"database migration of {name}: SQLite (blue, {f.setup.blue_url}) to "
                   f"PostgreSQL (green, {f.setup.green_url}), cutover file {f.setup.cutover}"),
        ("Window", f"{when(f.first_ts)} – {when(f.last_ts)}"),
        ("State when this report was made", _current(f)),
        ("Failed requests so far (router)", num(failed)),
        ("Rollback", rollback),
        ("People on this deployment", ", ".join(people) or NR),
    ], code="\n".join(messages), code_lang="text")


DOCUMENTS = {"rollback": rollback_procedure, "decommission": decommission_checklist,
             "incident": incident_template}
