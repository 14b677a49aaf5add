"""The runbook's section 5.10 template, filled from :class:`ReportFacts`.

The result is a format-neutral list of :class:`Section` that ``markdown.py`` and
``html.py`` both render, so the two formats cannot disagree. Every value is a measured
one from the journal or the audit trail; what was not recorded says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pgshift.report.facts import ReportFacts, parse_ts

NR = "not recorded"
PASSING = ("pass", "promoted")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A heading with ``label: value`` items, plain bullets, tables, a code block and
    the names of the charts (HTML only) that belong under it."""

    title: str
    items: list[tuple[str, str]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    code: str | None = None
    charts: list[str] = field(default_factory=list)
    code_lang: str = "bash"  # "text": a message to send, wrapped when shown


def when(epoch: float | None) -> str:
    if epoch is None:
        return NR
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def clock(ts: str | None) -> str:
    """An audit timestamp as ``MM-DD HH:MM:SS`` (UTC): a monitoring window spans days."""
    t = parse_ts(ts)
    return time.strftime("%m-%d %H:%M:%S", time.gmtime(t)) if t is not None else NR


def dur(seconds: float | None) -> str:
    if seconds is None:
        return NR
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def num(v: Any, unit: str = "") -> str:
    if v is None:
        return NR
    if isinstance(v, float):
        # one decimal from 10 up, two from 1, three significant digits below (0.213 ms)
        text = (f"{v:,.1f}" if abs(v) >= 10 or v == 0 else f"{v:.2f}" if abs(v) >= 1
                else f"{v:.3g}")
    else:
        text = f"{v:,}" if isinstance(v, int) else str(v)
    return f"{text} {unit}".strip()


def pct(v: Any) -> str:
    return NR if v is None else f"{float(v) * 100:.2f} %"


def _status(f: ReportFacts) -> str:
    if f.status == "rolled_back" and f.kv.get("rehearsal") and f.kv.get("rehearsed"):
        return (f"REHEARSED: cut over, monitored and swapped back to blue at "
                f"{when(f.kv['rehearsed'])}; `pgshift rollout {f.setup.cutover} --resume` "
                "runs the real cutover")
    if f.status == "running" and f.phase == "finalize" and f.kv.get("finalize_progress"):
        # finalize's own report: every step before it is done, and so is finalize's work
        return "SUCCESS (written by finalize as its last act)"
    return {"done": "SUCCESS", "rolled_back": "ROLLBACK", "aborted": "ABORTED",
            "failed": f"FAILED at {f.phase}", None: NR}.get(
        f.status, f"IN PROGRESS ({f.status} at {f.phase})")


def _step_line(f: ReportFacts, name: str, what: str) -> str:
    s = f.step(name)
    if s is None:
        return f"{NR} (the {name} step did not run)"
    if s.figures.get("skipped"):
        return f"skipped: {s.figures.get('why', '')}".rstrip(": ")
    return f"{s.status} in {dur(s.seconds)}{what}"


def summary(f: ReportFacts) -> Section:
    total = (f.last_ts - f.first_ts) if f.first_ts and f.last_ts else None
    shifted = [w for w in f.weights if w.why.startswith("shift-")]
    span = (parse_ts(shifted[-1].ts) or 0) - (parse_ts(shifted[0].ts) or 0) if shifted else None
    progression = (" → ".join(f"{w.weight:g}" for w in shifted) + f" % in {dur(span)} "
                   f"(first step at {clock(shifted[0].ts)})" if shifted else
                   f"{NR}: no traffic moved")
    fence = ("writes held at the router" if f.setup.fence_mode == "hold"
             else "writes refused with 503 Retry-After")
    hold = (f"the flip's write fence lasted {f.fence_hold_ms:g} ms ({fence}, reads kept "
            "flowing)" if f.fence_hold_ms is not None else "no flip recorded, so no write fence")
    return Section("Deployment Summary", items=[
        ("Date", when(f.first_ts)),
        ("Duration", f"{dur(total)} ({when(f.first_ts)} – {when(f.last_ts)})"),
        ("Traffic Switch", f"{f.setup.router} router, sticky cohorts by weight, writes to the "
                           f"system of record; {progression}"),
        ("Downtime", downtime(f, hold)),
        ("Requests and failures", requests_line(f)),
        ("Status", _status(f)),
    ])


def requests_line(f: ReportFacts) -> str:
    """What the router counted over the recorded series, per environment."""
    t = f.traffic
    if not t.recorded:
        return (f"{NR}: the engine journaled no traffic samples (a journal from before "
                "pgshift recorded them)")
    b, g = t.total("blue"), t.total("green")
    start = ("since the engine started the router" if t.first is not None
             else f"from {when(t.rows[0][0])}")
    own = f.router_checks_until(t.rows[-1][0])
    return (f"the router saw {num(b[0] + g[0])} requests {start} to {when(t.rows[-1][0])}: "
            f"blue {num(b[0])} ({num(b[1])} failed), green {num(g[0])} ({num(g[1])} failed)"
            f"; {num(t.refused)} answered by the router itself (503: no backend, fence "
            f"timeout); pgshift's own critical-path checks among them: {num(own)}; so "
            f"clients sent {num(b[0] + g[0] + t.refused - own)}" +
            ("" if t.source == "counters" else " (summed from the router's windowed figures: "
             "as exact as its windows)"))


def downtime(f: ReportFacts, hold: str) -> str:
    """Failed requests and the longest stretch without a successful answer, measured by
    the router; the fence hold."""
    t = f.traffic
    if not t.recorded:
        errors = sum(int(s.get("errors") or 0) for s in f.shift_results)
        requests = sum(int(s.get("requests") or 0) for s in f.shift_results)
        return (f"{hold}. Failed client requests: {NR} (no traffic samples in the journal); "
                f"green answered {num(errors)} error(s) in {num(requests)} request(s) in the "
                "analysis windows")
    failed = t.total("blue")[1] + t.total("green")[1] + t.refused
    out = t.longest_outage()
    gap = (f"longest stretch with failures and no successful answer: {dur(out[0])} from "
           f"{when(out[1])}" if out else "no stretch without a successful answer")
    return (f"{num(failed)} failed request(s) (5xx, no answer, or refused by the router); "
            f"{gap} (samples about every {dur(t.resolution)}); {hold}")


def pre_deployment(f: ReportFacts) -> Section:
    mig = f.step("migrate")
    snap = f.step("snapshot")
    ver = f.step("verify")
    m = mig.figures if mig else {}
    sec = Section("Pre-Deployment", items=[
        ("Blue environment prepared", _step_line(f, "preflight", _preflight(f))),
        ("Green environment prepared",
         f"deploy-green {_step_line(f, 'deploy-green', '')}; wait-healthy "
         f"{_step_line(f, 'wait-healthy', '')}"),
        ("Data migration completed", _step_line(
            f, "migrate", f": {num(m.get('rows'))} rows, {num(m.get('rejects'))} rejects"
                          f"{_snap(snap.figures if snap else {})}")),
        ("Validation", _step_line(f, "verify", "" if ver is None or ver.figures.get("skipped")
                                  else f": identical={ver.figures.get('identical')}, "
                                       f"{num(ver.figures.get('tables'))} tables, "
                                       f"{num(ver.figures.get('rows'))} rows compared")),
        ("Integration tests passed", _step_line(f, "integration-tests", _hook_tail(f))),
    ])
    tables = m.get("tables") or {}
    if tables:
        sec.tables.append(migration_table(m))
        sec.charts.append("rows")
    return sec


def migration_table(m: dict[str, Any]) -> Table:
    """Rows, COPY bytes, copy time and rejects per table, as migrate counted them."""
    per: dict[str, Any] = m.get("table_figures") or {}
    missing = "not recorded by migrate"
    rows = []
    for t, n in sorted((m.get("tables") or {}).items()):
        p = per.get(t) or {}
        rows.append([t, num(n), num(p.get("bytes")) if "bytes" in p else missing,
                     dur(p.get("seconds")) if "seconds" in p else missing,
                     num(p.get("rejects")) if "rejects" in p else missing])
    note = " (this run's chunks; resumed)" if m.get("resumed") else ""
    return Table(["table", "rows migrated", f"COPY bytes{note}", f"copy time, chunks summed{note}",
                  "rejects"], rows)


def _preflight(f: ReportFacts) -> str:
    s = f.step("preflight")
    if s is None:
        return ""
    gates = s.figures.get("prerequisites") or []
    return (f": journal mode {s.figures.get('journal_mode', NR)}, "
            f"{len(gates)} prerequisite gate(s)")


def _snap(fig: dict[str, Any]) -> str:
    if not fig.get("bytes"):
        return ""
    return f", from an online snapshot of {num(fig['bytes'])} bytes ({dur(fig.get('seconds'))})"


def _hook_tail(f: ReportFacts) -> str:
    s = f.step("integration-tests")
    hook = (s.figures.get("hook") if s else None) or {}
    return f": exit {hook.get('exit_code')}" if hook else ""


def execution(f: ReportFacts) -> Section:
    sec = Section("Deployment Execution", charts=["traffic", "errors", "latency", "lag"])
    sec.items.append(("Traffic switching progression", " → ".join(
        f"{w.weight:g} % at {clock(w.ts)} ({w.why})" for w in f.weights) or NR))
    flip = f.step("flip")
    if flip is not None:
        fig = flip.figures
        sec.items.append(("Fence and flip",
                          f"{flip.status}: writes held {num(fig.get('fence_hold_ms'), 'ms')}, "
                          f"drain {num(fig.get('drain_seconds'), 's')} to fence marker "
                          f"{num(fig.get('drained_to'))}"))
    sec.tables.append(Table(
        ["step", "window", "green requests", "green errors", "error rate", "upper bound",
         "green p99", "blue p99", "blue requests", "sync lag", "decision"],
        [[f"{s.get('weight', 0):g} %", num(s.get("window_s"), "s"), num(s.get("requests")),
          num(s.get("errors")), pct(s.get("error_rate")), pct(s.get("error_rate_upper")),
          num(s.get("p99_ms"), "ms"), num(s.get("blue_p99_ms"), "ms"),
          num(s.get("blue_requests")), num(s.get("sync_lag_ms"), "ms"),
          str(s.get("decision", NR))] for s in f.shift_results]
        or [[NR] + [""] * 10]))
    sec.tables.append(Table(["time", "step", "decision", "reason"],
                            [[clock(d.ts), d.step, d.decision, d.reason] for d in f.decisions]
                            or [[NR, "", "", ""]]))
    phases = phase_table(f)
    if phases is not None:
        sec.tables.append(phases)
    issues = issue_rows(f)
    sec.items.append(("Issues encountered", f"{len(issues)} (table below)" if issues
                      else "none recorded"))
    if issues:
        sec.tables.append(Table(["time", "step", "issue", "resolution"], issues))
    return sec


def phase_table(f: ReportFacts) -> Table | None:
    """The router's figures per phase, per environment (from the time series)."""
    spans = f.traffic.by_phase()
    if not spans:
        return None
    rows = []
    for s in spans:
        when_ = (f"before {clock_epoch(s.t1)} (since the router started)" if s.t0 == s.t1
                 else f"{clock_epoch(s.t0)} – {clock_epoch(s.t1)}")
        row = [s.phase or NR, when_]
        for side in ("blue", "green"):
            row += [num(s.requests(side)), num(s.errors(side)),
                    num(s.quantile(side, 0.5), "ms"), num(s.quantile(side, 0.99), "ms")]
        rows.append([*row, num(s.refused)])
    return Table(["phase", "time", "blue requests", "blue failed", "blue p50", "blue p99",
                  "green requests", "green failed", "green p50", "green p99",
                  "refused by the router"], rows)


def clock_epoch(t: float) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.gmtime(t))


def issue_rows(f: ReportFacts) -> list[list[str]]:
    """Every recorded anomaly with what followed it."""
    rows = []
    for d in f.decisions:
        if d.decision not in PASSING:
            rows.append([clock(d.ts), d.step, f"{d.decision}: {d.reason}", _after(f, d.step)])
    for e in f.events:
        if e.kind in ("late-blue-writes", "notify-failed", "optimize-failed", "step-failed",
                      "journal-broken") or (e.kind == "critical-path" and "FAILED" in e.message):
            rows.append([clock(e.ts), e.step, e.message, _after(f, e.step)])
        elif e.kind == "rolled-back" and (not e.figures.get("drill") or e.figures.get(
                "stranded") or e.figures.get("problems")):  # a clean drill is no issue
            stranded = e.figures.get("stranded")
            rows.append([clock(e.ts), e.step, e.message,
                         f"STRANDED range: {stranded}" if stranded
                         else "nothing stranded; " + _drain_words(e.figures.get("drain"))])
    return rows


def _after(f: ReportFacts, step: str) -> str:
    later = [d for d in f.decisions if d.step == step and d.decision in PASSING]
    if later:
        return f"{later[-1].decision} at {clock(later[-1].ts)}: {later[-1].reason}"
    return {"rolled_back": "rolled back to blue", "aborted": "aborted: traffic on the system "
            "of record", "done": "the rollout went on"}.get(f.status or "", f"status {f.status}")


def _drain_words(d: dict[str, Any] | None) -> str:
    if not d:
        return "no green writes to carry back (no PostgreSQL capture yet)"
    return (f"green's writes drained into SQLite to fence marker {d.get('fence_seq')} in "
            f"{num(d.get('seconds'), 's')} (applied {num(d.get('applied'))}, conflicts "
            f"{num(d.get('conflicts'))}, parked {num(d.get('parked'))})")


def final_sync_words(fs: dict[str, Any] | None) -> str:
    """Finalize's last word on sync: its figures, then the final drain into SQLite."""
    if fs is None:
        return NR
    known = {"lag_ms", "pending", "to_sqlite_lag_ms", "to_sqlite_pending", "conflicts",
             "parked", "final_drain"}
    parts = []
    if "lag_ms" in fs or "pending" in fs:
        parts.append(f"to PostgreSQL lag {num(fs.get('lag_ms'), 'ms')}, "
                     f"{num(fs.get('pending'))} pending")
    if "to_sqlite_lag_ms" in fs or "to_sqlite_pending" in fs:
        parts.append(f"to SQLite lag {num(fs.get('to_sqlite_lag_ms'), 'ms')}, "
                     f"{num(fs.get('to_sqlite_pending'))} pending")
    parts.append(f"{num(fs.get('conflicts'))} conflict(s), {num(fs.get('parked'))} parked")
    parts += [f"{k} {v}" for k, v in fs.items() if k not in known]  # e.g. an error
    text = "; ".join(parts)
    d = fs.get("final_drain")
    if d:
        text += "; final drain into SQLite: " + (
            f"to fence marker {d.get('fence_seq')} in {num(d.get('seconds'), 's')} ("
            + ("by the running applier" if d.get("by_running_applier") else
               f"applied {num(d.get('applied'))}") + ")" if d.get("drained") else
            f"incomplete ({d.get('error') or str(d.get('stranded')) + ' change(s) stranded'})")
    return text


def final_sync_ok(fs: dict[str, Any] | None) -> bool:
    """Nothing parked, and blue's archive holds green's changes: drained up to a marker
    (a run before the final drain existed: nothing pending at the last status)."""
    if not fs or fs.get("parked"):
        return False
    d = fs.get("final_drain")
    return bool(d.get("drained")) if d else not fs.get("to_sqlite_pending")


def post_deployment(f: ReportFacts) -> Section:
    rounds = f.monitor_rounds
    mon = f.step("monitor")
    sec = Section("Post-Deployment", items=[
        ("Monitoring", f"{len(rounds)} check round(s) over {dur(f.setup.monitor_window_s)} "
                       f"configured (interval {dur(f.setup.monitor_interval_s)}); monitor step "
                       f"{mon.status if mon else NR}"),
        ("Performance validation", _perf(f)),
        ("User feedback", f"{len(f.notes)} operator note(s) (below)" if f.notes else
         "none recorded (`pgshift note CUTOVER \"...\"` adds it)"),
        ("Database optimization", _optimize(f)),
        ("Final sync", final_sync_words(f.final_sync)),
    ])
    if rounds:
        sec.tables.append(Table(["time", "green requests", "green errors", "green p99",
                                 "reverse lag", "PostgreSQL probe"],
                                [[clock(e.ts), num(e.figures.get("green_requests")),
                                  num(e.figures.get("green_errors")),
                                  num(e.figures.get("p99_ms"), "ms"),
                                  num(e.figures.get("to_sqlite_lag_ms"), "ms"),
                                  num(e.figures.get("db_probe_ms"), "ms")] for e in rounds]))
    if f.notes:
        sec.tables.append(Table(["time", "by", "step", "note"],
                                [[clock(e.ts), e.actor, e.step, e.message] for e in f.notes]))
    return sec


def _perf(f: ReportFacts) -> str:
    if not f.shift_results:
        return NR
    last = f.shift_results[-1]
    return (f"at {last.get('weight', 0):g} %: green p99 {num(last.get('p99_ms'), 'ms')} vs blue "
            f"{num(last.get('blue_p99_ms'), 'ms')}, error rate {pct(last.get('error_rate'))}")


def _optimize(f: ReportFacts) -> str:
    fin = f.finalize_figures()
    if fin is None:
        return f"{NR} (finalize did not run)"
    o = fin.get("optimize") or {}
    if o.get("skipped"):
        return f"skipped: {o.get('why')}"
    applied = o.get("applied") or o.get("built") or []
    return (f"{len(o.get('proposals') or [])} proposal(s), {len(applied)} applied"
            if o else NR)


def lessons(f: ReportFacts) -> Section:
    went_well = []
    passed = [s for s in f.shift_results if s.get("decision") == "pass"]
    if passed:
        went_well.append("steps passed on evidence: " + ", ".join(
            f"{s['weight']:g} % ({num(s.get('requests'))} green requests)" for s in passed))
    if f.drill and not f.drill.get("stranded"):
        went_well.append("rollback drill: traffic back in "
                         f"{num(f.drill.get('traffic_back_ms'), 'ms')}, nothing stranded")
    if f.fence_hold_ms is not None:
        went_well.append(f"flip: writes held {f.fence_hold_ms:g} ms")
    improve = [f"{d.step}: {d.decision} — {d.reason}" for d in f.decisions
               if d.decision not in PASSING]
    # an extension repeats its decision's reason: counted per step, not quoted again
    extended: dict[str, int] = {}
    for e in f.of_kind("extend"):
        extended[e.step] = extended.get(e.step, 0) + 1
    improve += [f"{step}: bake extended {n} time(s)" for step, n in extended.items()]
    improve += [f"{e.step}: {e.message}" for e in f.of_kind("late-blue-writes")]
    recommend = []
    if any(d.decision in ("inconclusive", "insufficient-data") for d in f.decisions):
        recommend.append("longer bakes or more traffic per step: `pgshift plan CUTOVER` gives "
                         "the requests each step needs")
    if any(d.decision in ("fail", "failed") for d in f.decisions):
        recommend.append("reproduce the failing step's errors on green before the next run")
    if not f.drill:
        recommend.append("enable `shift.drill: true` so the rollback path is timed before most "
                         "traffic moves")
    return Section("Lessons Learned", items=[
        ("What went well", "; ".join(went_well) or NR),
        ("What could be improved", "; ".join(improve) or "no step needed more than one verdict"),
        ("Future recommendations", "; ".join(recommend) or "none from this run's anomalies"),
    ])


def rollback_capability(f: ReportFacts) -> Section:
    real = f.last_rollback if f.last_rollback and not f.last_rollback.get("drill") else None
    tested = f.drill or real
    items = [("Rollback procedures tested",
              ("yes: a drill at " + clock(_event_ts(f, True)) if f.drill else "no drill") +
              (f"; a real rollback ({real.get('reason')})" if real else ""))]
    for label, r in (("drill", f.drill), ("rollback", real)):
        if r:
            items.append((f"Time to rollback ({label})",
                          f"traffic on blue after {num(r.get('traffic_back_ms'), 'ms')}, complete "
                          f"in {num(r.get('seconds'), 's')}, writes held "
                          f"{num(r.get('fence_hold_ms'), 'ms')}, blue healthy afterwards: "
                          f"{r.get('blue_healthy')}"))
            items.append((f"Data preservation ({label})",
                          f"STRANDED: {r['stranded']}" if r.get("stranded")
                          else _drain_words(r.get("drain"))))
    if not tested:
        items.append(("Time to rollback", f"{NR}: no drill and no rollback ran"))
    return Section("Rollback Capability", items=items)


def _event_ts(f: ReportFacts, drill: bool) -> str | None:
    for e in f.of_kind("rolled-back"):
        if bool(e.figures.get("drill")) == drill:
            return e.ts
    return None


def approvals(f: ReportFacts) -> Section:
    sec = Section("Approvals")
    need = f.setup.approvals_required
    missing = [r for r in need if r not in f.approvals]
    sec.items.append(("Required", ", ".join(need) or "none configured"))
    if missing:
        sec.items.append(("Missing", ", ".join(missing)))
    sec.tables.append(Table(["role", "approved by", "time", "note"],
                            [[role, a["actor"], when(parse_ts(a["ts"])), a["note"]]
                             for role, a in f.approvals.items()]
                            or [["none recorded", "", "", ""]]))
    verbs = f.commands
    if verbs:
        sec.tables.append(Table(["time", "operator verb", "by", "reason", "outcome"],
                                [[clock(c["ts"]), c["verb"], c["actor"], c["reason"],
                                  c["outcome"] or "pending"] for c in verbs]))
    return sec


def build(f: ReportFacts) -> list[Section]:
    """The report's template sections (the operational documents follow them:
    ``documents.py``)."""
    return [summary(f), pre_deployment(f), execution(f), post_deployment(f), lessons(f),
            rollback_capability(f), approvals(f)]
