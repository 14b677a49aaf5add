"""The rollout engine: DESIGN.md's step order as a journaled, resumable state machine.

    preflight -> provision -> router -> backup -> capture -> migrate (online snapshot)
    -> verify -> sync -> deploy green -> wait healthy -> integration tests
    -> shift (per weight: set, bake, critical paths, analyse) -> fence + flip
    -> monitor -> approvals -> finalize

The journal records each phase before it acts. ``--resume`` takes the lease (a new
epoch), reconciles the world with the journal (router weight and system of record, a
fence left held by a killed flip, the services), then continues from the recorded phase.
Operator verbs reach a running engine through the journal's command queue; interrupts
(abort, rollback, an emergency trigger, a failed step) end in :func:`_interrupted`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from pgshift.errors import ExitCode, PgshiftError, UsageError
from pgshift.rollout import steps, switch, syncing
from pgshift.rollout.analysis import analyse
from pgshift.rollout.config import Cutover, Step
from pgshift.rollout.context import PROXY, Context
from pgshift.rollout.hooks import run_hook
from pgshift.rollout.journal import StaleEpoch
from pgshift.rollout.watch import Interrupt, Watcher
from pgshift.traffic.router import Side, StaleRouterEpoch, WriteRouting

Phase = tuple[str, Callable[[], dict[str, Any]]]


@dataclass
class Outcome:
    status: str  # done | rolled_back | aborted | failed
    exit_code: int
    message: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "exit_code": self.exit_code, "message": self.message,
                **self.figures}


def phase_names(cfg: Cutover, *, rehearsal: bool = False) -> list[str]:
    """The phases' names in order, from the cutover file alone (``pgshift plan``)."""
    return [*(s.name for s in steps.pre_traffic(cfg)),
            *(f"shift-{s.weight:g}" for s in cfg.shift.steps),
            "flip", "monitor", *(["swap-back"] if rehearsal else ["approvals", "finalize"])]


def phases(ctx: Context) -> list[Phase]:
    """Every phase of this cutover in order (the journal's ``phase_index`` counts these)."""
    out: list[Phase] = [(s.name, _guarded(ctx, s)) for s in steps.pre_traffic(ctx.cfg)]
    for i, step in enumerate(ctx.cfg.shift.steps):
        out.append((f"shift-{step.weight:g}", _shift_phase(ctx, i, step)))
    out.append(("flip", lambda: switch.flip(ctx)))
    out.append(("monitor", lambda: monitor(ctx)))
    if ctx.journal.get("rehearsal"):
        out.append(("swap-back", lambda: swap_back(ctx)))
    else:
        out.append(("approvals", lambda: steps.Approvals().run(ctx)))
        out.append(("finalize", lambda: steps.Finalize().run(ctx)))
    return out


def _shift_phase(ctx: Context, index: int, step: Step) -> Callable[[], dict[str, Any]]:
    return lambda: shift(ctx, index, step)


def first_shift(ctx: Context) -> int:
    return len(steps.pre_traffic(ctx.cfg))


def _guarded(ctx: Context, step: steps.Step) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        if step.check(ctx):
            return {"skipped": True, "why": "already in place"}
        return step.run(ctx)
    return run


def run(ctx: Context, *, resume: bool = False, rehearse: bool = False) -> Outcome:
    """Run (or resume) the rollout to its end: done, rolled back, aborted or failed.

    ``rehearse``: the whole cutover, flip and monitoring included, then swap back to blue
    the way a rollback does (status ``rehearsed``); the system is left as after a
    rollback, so ``resume`` then runs the real cutover from the first traffic step."""
    j = ctx.journal
    status = j.get("status")
    if rehearse and resume and status not in ("rolled_back", None) and not j.get("rehearsal"):
        raise UsageError("--rehearse starts a rehearsal, or one after a rollback; this "
                         f"rollout is {status} and not a rehearsal",
                         hint=f"pgshift rollout {ctx.cutover_path} --resume")
    if status is not None and not resume:
        raise UsageError(f"this cutover already has a rollout ({status}, phase "
                         f"{j.get('phase')})", hint=f"pgshift rollout {ctx.cutover_path} "
                                                    "--resume")
    if resume and status is None:
        raise UsageError("nothing to resume: this cutover has no rollout yet",
                         hint=f"pgshift rollout {ctx.cutover_path}")
    if status == "done":
        raise UsageError("this rollout is complete", hint=f"pgshift status {ctx.cutover_path}")
    j.acquire()
    started = time.monotonic()
    try:
        if status is None or (resume and status == "rolled_back"):
            # a new run, or a re-advance after a rollback (or after a rehearsal: then the
            # real cutover, unless --rehearse asks for another rehearsal)
            j.set(rehearsal=rehearse)
        if resume:
            for note in reconcile(ctx):
                ctx.event("resume", "reconciled", note)
            if status in ("rolled_back",):  # re-advance from the first traffic step
                # a new pass over the traffic steps: the monitoring window starts again
                # when it is reached (kept, a rehearsal's or an earlier pass's start would
                # leave the real run's window already over)
                j.set(phase_index=first_shift(ctx), monitor_started=None)
        j.set(status="running", run_started=j.get("run_started") or time.time())
        plan = phases(ctx)
        idx = int(j.get("phase_index", 0))
        while idx < len(plan):
            name, fn = plan[idx]
            j.set(phase=name, phase_index=idx)
            sid = j.step_started(name)
            ctx.say(f"[{name}] ...")
            t0 = time.monotonic()
            try:
                figures = fn()
            except Interrupt as it:
                j.step_finished(sid, name, "failed", {"interrupt": it.kind, "reason": it.reason})
                return _interrupted(ctx, it, started)
            except (StaleEpoch, StaleRouterEpoch):
                # another controller took over (e.g. `pgshift rollback` past a hung engine):
                # this one stops without touching anything (Argo Rollouts #2117)
                ctx.say(f"[{name}] superseded by another controller: stopping, hands off")
                raise
            except PgshiftError as exc:
                j.step_finished(sid, name, "failed", {"error": exc.message},
                                message=f"{name} failed: {exc.message}")
                if name.startswith("shift-") or name == "monitor":
                    # green serves part of the traffic: a broken step is not left half done
                    return _interrupted(ctx, Interrupt("failed", f"{name}: {exc.message}"),
                                        started)
                # before traffic moves, and at the flip (released on blue), approvals and
                # finalize, the state is consistent: stop here, --resume retries the step
                j.set(status="failed", failed_reason=exc.message)
                raise
            figures = {**figures, "seconds": round(time.monotonic() - t0, 3)}
            j.step_finished(sid, name, "done", figures)
            ctx.say(f"[{name}] done in {figures['seconds']:.1f}s")
            if ctx.on_event is not None:
                ctx.on_event("step-done", {"step": name, **figures})
            idx += 1
            j.set(phase_index=idx)
        if j.get("rehearsal"):
            j.set(status="rolled_back", rehearsed=time.time())
            message = ("rehearsal complete: cut over, monitored and swapped back to blue; "
                       f"`pgshift rollout {ctx.cutover_path} --resume` runs the real cutover")
            ctx.event("rollout", "rehearsed", message, notify=True)
            return Outcome("rehearsed", int(ExitCode.OK), message,
                           {"seconds": round(time.monotonic() - started, 3),
                            "swap_back": j.get("last_rollback")})
        j.set(status="done", finished=time.time())
        ctx.event("rollout", "done", f"rollout complete in {time.monotonic() - started:.1f}s",
                  notify=True)
        return Outcome("done", int(ExitCode.OK), "rollout complete",
                       {"seconds": round(time.monotonic() - started, 3)})
    finally:
        j.release()


def _interrupted(ctx: Context, it: Interrupt, started: float) -> Outcome:
    j = ctx.journal
    j.decide(j.get("phase", "?"), it.kind, it.reason)
    if it.kind == "abort":
        abort(ctx, it.reason)
        return Outcome("aborted", int(ExitCode.ABORTED), it.reason)
    res = switch.rollback(ctx, it.reason)
    j.set(status="rolled_back")
    return Outcome("rolled_back", int(ExitCode.ABORTED), it.reason,
                   {"rollback": res.to_dict(), "seconds": round(time.monotonic() - started, 3)})


def abort(ctx: Context, reason: str) -> dict[str, Any]:
    """Stop advancing; all traffic to the current system of record; sync keeps running."""
    flipped = bool(ctx.journal.get("flipped", False))
    weight = 100 if flipped else 0
    ctx.journal.set(weight=weight, status="aborted")
    ctx.router.set_weight(weight)
    ctx.event("abort", "aborted", f"aborted ({reason}): all traffic on "
              f"{'green' if flipped else 'blue'}, the system of record; sync keeps running",
              {"weight": weight}, notify=True)
    return {"weight": weight, "system_of_record": "green" if flipped else "blue"}


# -- traffic steps -------------------------------------------------------------------------------


_HTTP_CHECK = re.compile(r"^(GET|HEAD)\s+(/\S*)$")


def _critical_paths(ctx: Context, checks: tuple[str, ...]) -> list[dict[str, Any]]:
    """Run each check against the live mix: ``GET /path`` through the router (2xx/3xx
    passes), anything else as a shell command (exit 0 passes). The failures."""
    failed = []
    for check in checks:
        m = _HTTP_CHECK.match(check.strip())
        if m:
            url = ctx.public_url.rstrip("/") + m[2]
            try:
                code: int | None = httpx.request(m[1], url, timeout=ctx.cfg.checks.timeout
                                                 ).status_code
            except httpx.HTTPError:
                code = None
            figures: dict[str, Any] = {"command": check, "url": url, "status": code}
            ok = code is not None and code < 400
        else:
            r = run_hook(check, ctx.values(), timeout=ctx.cfg.checks.timeout)
            figures, ok = r.to_dict(), r.ok
        ctx.state.audit(ctx.journal.get("phase", "?"), "critical-path",
                        f"`{check}` {'passed' if ok else 'FAILED'}", figures)
        if not ok:
            failed.append(figures)
    return failed


def shift(ctx: Context, index: int, step: Step) -> dict[str, Any]:
    """Set the weight, bake (watching), run the critical paths, analyse; decide."""
    j, r, cfg = ctx.journal, ctx.router, ctx.cfg
    name = f"shift-{step.weight:g}"
    j.set(weight=step.weight)  # journal first: a resumed engine re-applies it
    r.set_weight(step.weight)
    actual = r.weight()
    if abs(actual - step.weight) > 0.01:
        raise steps.StepFailed(f"the router reports weight {actual:g} after setting "
                               f"{step.weight:g}", hint="pgshift status CUTOVER")
    ctx.event(name, "weight", f"green weight {step.weight:g} %", {"weight": step.weight})
    watcher = Watcher(ctx)
    t0 = time.time()
    try:
        decision, extensions = _bake_and_judge(ctx, step, watcher, t0)
    except Interrupt as it:
        # the step's figures up to the interrupt, for the summary and the report
        window = min(3600.0, max(1.0, time.time() - t0))
        try:
            a = analyse(r.figures(window), cfg.checks.gates)
            _record_step(ctx, step, a.to_dict(), f"interrupted: {it.kind}", window)
        except PgshiftError:
            pass
        raise
    if step.approval == "required":
        _hold_for_operator(ctx, watcher, name, "manual approval required for this step")
    out: dict[str, Any] = {"weight": step.weight, "decision": decision,
                           "extensions": extensions}
    if index == 0 and cfg.shift.drill and not j.get("drill"):
        out["drill"] = drill(ctx, step)
    return out


def _bake_and_judge(ctx: Context, step: Step, watcher: Watcher,
                    t0: float) -> tuple[str, int]:
    """Bake, check, analyse until a verdict: (decision, extensions used)."""
    j, r, cfg = ctx.journal, ctx.router, ctx.cfg
    name = f"shift-{step.weight:g}"
    extensions = 0
    bake = ctx.secs(step.bake)
    decision = "pass"
    while True:
        if watcher.wait(bake) == "promoted":
            decision = "promoted"
            j.decide(name, "promoted", "bake cut short by an operator")
            break
        failed = _critical_paths(ctx, cfg.checks.critical_paths)
        if failed:
            why = f"critical-path check failed: `{failed[0]['command']}`"
            j.decide(name, "fail", why, {"critical_paths": failed})
            if cfg.emergency.critical_path_failing or cfg.shift.on_failure == "rollback":
                raise Interrupt("failed", f"{name}: {why}")
            decision = _hold_for_operator(ctx, watcher, name, why)
            break
        window = min(3600.0, max(1.0, time.time() - t0))
        a = analyse(r.figures(window), cfg.checks.gates)
        j.decide(name, a.verdict, "; ".join(a.reasons) or "every check passed",
                 {"analysis": a.to_dict(), "window_s": round(window, 1),
                  "extensions": extensions})
        _record_step(ctx, step, a.to_dict(), a.verdict, window)
        if a.verdict == "pass":
            break
        if a.verdict == "fail":
            if cfg.shift.on_failure == "rollback":
                raise Interrupt("failed", f"{name}: " + "; ".join(a.reasons))
            decision = _hold_for_operator(ctx, watcher, name, "failed: " + "; ".join(a.reasons))
            break
        policy = cfg.shift.on_inconclusive
        if policy == "extend" and extensions < cfg.shift.max_extensions:
            extensions += 1
            ctx.event(name, "extend", f"{a.verdict}: bake extended ({extensions}/"
                      f"{cfg.shift.max_extensions}): " + "; ".join(a.reasons),
                      {"router": _router_details(ctx)})
            continue
        if policy == "fail" or (policy == "extend" and cfg.shift.after_extensions == "fail"):
            raise Interrupt("failed", f"{name}: {a.verdict}: " + "; ".join(a.reasons))
        decision = _hold_for_operator(ctx, watcher, name, f"{a.verdict}: " +
                                      "; ".join(a.reasons))
        break
    return decision, extensions


def _router_details(ctx: Context) -> dict[str, Any] | None:
    """The router's own status (backend health, ejections) for the audit trail."""
    status = getattr(ctx.router, "status", None)
    try:
        return status() if callable(status) else None
    except PgshiftError as exc:
        return {"error": exc.message}


def _hold_for_operator(ctx: Context, watcher: Watcher, name: str, why: str) -> str:
    """Hold the weight until ``pgshift promote`` (or abort / rollback); checks keep running.
    An expiring timer is never a pass (Argo Rollouts #3850)."""
    ctx.event(name, "waiting", f"holding at {ctx.journal.get('weight')} %: {why}; "
              "`pgshift promote` to go on, `pgshift rollback` to go back", notify=True)
    ctx.journal.set(waiting_for="promote", waiting_reason=why)
    watcher.wait(0, until_promoted=True)
    ctx.journal.set(waiting_for=None, waiting_reason=None)
    ctx.journal.decide(name, "promoted", f"an operator promoted past: {why}")
    return "promoted"


def _record_step(ctx: Context, step: Step, analysis: dict[str, Any], verdict: str,
                 window: float) -> None:
    results = [s for s in ctx.journal.get("shift_results", []) if s["weight"] != step.weight]
    g = analysis["green"]
    sync = syncing.brief(ctx)
    results.append({"sync_lag_ms": sync.get("lag_ms"), "conflicts": sync.get("conflicts"),
                    "weight": step.weight, "requests": g["requests"],
                    "errors": g["errors"], "error_rate": g["error_rate"],
                    "error_rate_upper": g["error_rate_upper"], "p99_ms": g["p99_ms"],
                    "blue_p99_ms": analysis["blue"]["p99_ms"],
                    "blue_requests": analysis["blue"]["requests"],
                    "decision": verdict, "window_s": round(window, 1)})
    ctx.journal.set(shift_results=results)


def drill(ctx: Context, step: Step) -> dict[str, Any]:
    """Roll back once on the real system (timed), then re-advance to ``step``'s weight."""
    res = switch.rollback(ctx, "rollback drill", drill=True)
    ctx.journal.set(drill=res.to_dict(), status="running")
    ctx.journal.set(weight=step.weight)
    ctx.router.set_weight(step.weight)
    ctx.event("drill", "re-advanced", f"drill done (traffic back in {res.traffic_back_ms} ms, "
              f"complete in {res.seconds:.2f}s); green weight {step.weight:g} % again")
    return res.to_dict()


def monitor(ctx: Context) -> dict[str, Any]:
    """The window after the flip: checks every interval, emergency triggers throughout;
    reverse sync keeps blue current so a rollback stays lossless. Resumable: the window
    is measured from its recorded start."""
    j, cfg = ctx.journal, ctx.cfg
    start = j.get("monitor_started") or time.time()
    j.set(monitor_started=start)
    window, interval = ctx.secs(cfg.monitor.window), ctx.secs(cfg.monitor.interval)
    if j.get("rehearsal"):
        window = ctx.secs(cfg.rehearsal.monitor)
        interval = min(interval, window)
    watcher = Watcher(ctx)
    rounds = []
    while (left := window - (time.time() - start)) > 0:
        if watcher.wait(min(interval, left)) == "promoted":
            j.decide("monitor", "promoted", "monitoring window cut short by an operator")
            break
        failed = _critical_paths(ctx, cfg.monitor.checks + cfg.checks.critical_paths)
        if failed:
            raise Interrupt("failed", f"monitor: check `{failed[0]['command']}` failed")
        f = ctx.router.figures(min(3600.0, max(1.0, interval)))
        lag = syncing.brief(ctx).get("to_sqlite_lag_ms")
        rounds.append({"ts": time.time(), "green_requests": f.green.requests,
                       "green_errors": f.green.errors, "p99_ms": f.green.p99,
                       "to_sqlite_lag_ms": lag, "db_probe_ms": watcher.db.latest_ms})
        ctx.state.audit("monitor", "check", f"monitor check {len(rounds)}: green "
                        f"{f.green.errors}/{f.green.requests} errors, reverse lag {lag} ms",
                        rounds[-1])
    return {"checks": len(rounds), "window_s": window, "last": rounds[-1] if rounds else None}


def swap_back(ctx: Context) -> dict[str, Any]:
    """The rehearsal's end: back to blue exactly as a rollback goes (writes held, green's
    writes drained into SQLite, sequences past green's ids, to-postgres sync restarted),
    green left running; then the deployment report of the rehearsal."""
    res = switch.rollback(ctx, "rehearsal: swapping back to blue", drill=True)
    out: dict[str, Any] = {"rollback": res.to_dict()}
    try:
        out["report"] = steps.write_report(ctx)
    except PgshiftError as exc:  # the rehearsal itself succeeded; the report is named
        out["report"] = {"error": exc.message}
    return out


# -- resume ---------------------------------------------------------------------------------------


def reconcile(ctx: Context) -> list[str]:
    """Make the world agree with the journal before acting (Argo Rollouts #4841): the
    router and the services are read back, not assumed."""
    j, notes = ctx.journal, []
    if j.get("weight") is not None and ctx.cfg.router.kind == "embedded" and \
            ctx.cfg.router.managed and ctx.procs.find(PROXY) is None:
        steps.Router().run(ctx)
        notes.append("the embedded proxy was not running: restarted at the journal's weight")
    if j.get("rollback_stage") == "started":
        if j.get("rollback_drill"):
            # the drill's rollback: complete it as a drill (green keeps running) and let
            # the step re-advance, rather than end a healthy rollout rolled back
            res = switch.rollback(ctx, "completing a rollback drill a killed controller "
                                  "started", drill=True)
            j.set(drill=res.to_dict())
            notes.append("completed an interrupted rollback drill")
        else:
            switch.rollback(ctx, "completing a rollback a killed controller started")
            j.set(status="rolled_back")
            notes.append("completed an interrupted rollback")
    if j.get("weight") is not None:
        note = switch.reconcile_fence(ctx)
        if note:
            notes.append(note)
        r = ctx.router
        want = float(j.get("weight", 0))
        have = r.weight()
        if abs(have - want) > 0.01:
            r.set_weight(want)
            notes.append(f"router weight was {have:g} %, the journal's is {want:g} %: set")
        sor: Side = "green" if j.get("flipped") else "blue"
        if isinstance(r, WriteRouting) and r.system_of_record() != sor:
            r.set_system_of_record(sor)
            notes.append(f"router's system of record set back to {sor}")
    if j.get("capture_postgres") and j.get("phase") != "finalize":
        want_dir = syncing.TO_SQLITE if j.get("flipped") else syncing.TO_POSTGRES
        if syncing.running_direction(ctx) != want_dir:
            syncing.start_applier(ctx, want_dir)
            notes.append(f"the {want_dir} applier was not running: restarted")
    return notes
