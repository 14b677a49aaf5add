"""Operator verbs: valid in every state, persisted, idempotent, recorded with who and why.

A running engine receives ``pause``, ``resume``, ``promote``, ``abort`` and ``rollback``
through the journal's command queue and acts within one sample interval. Without a
running engine, ``rollback`` and ``abort`` act at once (taking the lease, so an engine
that comes back finds its epoch stale); ``pause``/``resume``/``promote`` wait in the
queue for ``pgshift rollout --resume``. ``approve`` and ``note`` are written directly.
``rollback`` also works with a journal that cannot be read: it is moved aside and the
router and sync are asked instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.dsn import redact_all
from pgshift.errors import PgshiftError, SourceError, UsageError
from pgshift.rollout import config as cfgmod
from pgshift.rollout import engine, steps, switch, syncing
from pgshift.rollout.analysis import requests_needed
from pgshift.rollout.context import Context
from pgshift.rollout.journal import VERBS
from pgshift.state import StateDir

HANDOFF = 15.0  # seconds a running engine has to take a rollback before we act ourselves


@dataclass
class VerbResult:
    verb: str
    outcome: str
    by_engine: bool
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verb": self.verb, "outcome": self.outcome, "by_engine": self.by_engine,
                **self.figures}


def open_context(cutover: Path, **kw: Any) -> Context:
    cfg, base = cfgmod.load(cutover)
    return Context.open(cutover, cfg, base, **kw)


def open_for_rollback(cutover: Path, **kw: Any) -> Context:
    """Like :func:`open_context`, but a broken journal is moved aside, not fatal."""
    cfg, base = cfgmod.load(cutover)
    try:
        return Context.open(cutover, cfg, base, **kw)
    except SourceError:
        journal = StateDir.for_name(base, cfg.name).journal
        aside = journal.with_name(f"journal.sqlite.broken-{int(time.time())}")
        journal.rename(aside)
        ctx = Context.open(cutover, cfg, base, **kw)
        # nothing known: ask the router; try the drain either way
        ctx.journal.set(capture_postgres=True, flipped=_router_says_flipped(ctx))
        ctx.state.audit("rollback", "journal-broken", f"the journal was unreadable; moved to "
                        f"{aside.name}; rolling back from what the router and sync report")
        return ctx


def _router_says_flipped(ctx: Context) -> bool:
    from pgshift.traffic.router import WriteRouting

    try:
        r = ctx.router
        return isinstance(r, WriteRouting) and r.system_of_record() == "green"
    except PgshiftError:
        return False


def request(ctx: Context, verb: str, *, reason: str = "", actor: str | None = None,
            wait: float = HANDOFF) -> VerbResult:
    """Send ``verb`` to the running engine, or carry it out when none runs."""
    if verb not in VERBS:
        raise UsageError(f"unknown verb {verb!r}", hint="one of: " + ", ".join(VERBS))
    j = ctx.journal
    lease = j.lease()
    if lease["alive"]:
        cid = j.enqueue(verb, actor=actor, reason=reason)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            cmd = j.command(cid)
            if cmd is not None and cmd.handled_at:
                if verb in ("rollback", "abort"):
                    _wait_status(ctx, {"rolled_back", "aborted", "failed"}, 120.0)
                return VerbResult(verb, cmd.outcome or "handled", True,
                                  {"status": j.get("status"),
                                   "rollback": j.get("last_rollback") if verb == "rollback"
                                   else None})
            time.sleep(0.1)
        if verb != "rollback":
            return VerbResult(verb, f"queued (the engine, pid {lease['pid']}, has not taken "
                              "it yet)", True)
        ctx.state.audit("rollback", "takeover", f"the engine (pid {lease['pid']}) did not take "
                        f"the rollback in {wait:g}s: rolling back without it")
    if verb == "rollback":
        j.acquire(force=True)
        try:
            res = switch.rollback(ctx, reason or f"rollback requested by {actor or 'operator'}")
            j.set(status="rolled_back")
        finally:
            j.release()
        return VerbResult(verb, "rolled back", False, {"rollback": res.to_dict()})
    if verb == "abort":
        j.acquire()
        try:
            out = engine.abort(ctx, reason or "abort requested")
        finally:
            j.release()
        return VerbResult(verb, "aborted", False, out)
    j.enqueue(verb, actor=actor, reason=reason)
    return VerbResult(verb, "queued: no engine is running; it takes effect when "
                      "`pgshift rollout CUTOVER --resume` runs", False)


def _wait_status(ctx: Context, wanted: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ctx.journal.get("status") not in wanted and time.monotonic() < deadline:
        time.sleep(0.1)


def status(ctx: Context) -> dict[str, Any]:
    """The live view: phase, weight, figures per side, sync lag, the next decision."""
    j = ctx.journal
    st = j.dump()
    valid, expired = steps.current_approvals(ctx)
    out: dict[str, Any] = {
        "cutover": ctx.cfg.name, "status": st.get("status", "not started"),
        "phase": st.get("phase"), "weight": st.get("weight"),
        "system_of_record": "green" if st.get("flipped") else "blue",
        "paused": bool(st.get("paused")), "waiting_for": st.get("waiting_for"),
        "waiting_reason": st.get("waiting_reason"), "controller": j.lease(),
        "steps": st.get("shift_results", []), "fence_hold_ms": st.get("fence_hold_ms"),
        "last_rollback": st.get("last_rollback"), "drill": st.get("drill"),
        "rehearsal": bool(st.get("rehearsal")), "rehearsed": st.get("rehearsed"),
        "approvals": valid, "expired_approvals": expired,
        "required_approvals": list(ctx.cfg.finalize.approvals),
        "decisions": j.decisions()[-10:], "services": {
            k: (v.to_dict() if v else None) for k, v in ctx.procs.services().items()},
    }
    try:
        f = ctx.router.figures(60.0)
        out["router"] = {"weight": ctx.router.weight(), "figures": f.to_dict()}
    except PgshiftError as exc:
        out["router"] = {"error": exc.message}
    if st.get("capture_postgres"):
        out["sync"] = syncing.brief(ctx)
    # decision reasons, notes and errors are free text and may quote a DSN
    return redact_all(out)


def data_plan(cfg: cfgmod.Cutover, cutover: Path) -> dict[str, Any]:
    """The data side of the plan, from the same code the engine runs: migrate's dry run
    (DDL, type decisions, anomalies; from a snapshot in a temporary directory, the target
    only read) and sync's per-table write topology (kinds, policies, keys, refusals)."""
    import tempfile

    from pgshift.dsn import resolve
    from pgshift.migrate import MigrateOptions, migrate
    from pgshift.sync import verbs as sync_verbs

    dsn = resolve(cfg.target.dsn)
    with tempfile.TemporaryDirectory(prefix="pgshift-plan-") as tmp:
        result = migrate(MigrateOptions(
            sqlite_path=cfg.source.sqlite, dsn=dsn, schema=cfg.target.schema_, dry_run=True,
            state_dir=Path(tmp), into_existing=cfg.mapping is not None, mapping=cfg.mapping))
    migrate_plan = result.to_dict()
    topology = sync_verbs.plan(cfg.source.sqlite, dsn, cfg.target.schema_, cutover)
    return {"migrate": {"plan": migrate_plan.get("plan"), "notes": migrate_plan.get("notes")},
            "sync": topology.to_dict()}


def plan(cutover: Path, *, data: bool = False) -> dict[str, Any]:
    """What a rollout would do, from the cutover file (nothing is changed); with ``data``
    also the data plan (:func:`data_plan`: reads the source and the target)."""
    cfg, base = cfgmod.load(cutover)
    g = cfg.checks.gates
    need = requests_needed(g.max_error_rate, g.confidence)
    steps, eta = [], 0.0
    for s in cfg.shift.steps:
        bake = cfg.seconds(s.bake)
        eta += bake
        steps.append({"weight": s.weight, "bake_s": bake, "approval": s.approval,
                      "requests_needed_to_pass": max(need, g.min_requests),
                      "green_rps_needed": round(max(need, g.min_requests) / bake, 2)
                      if bake else None})
    eta += cfg.seconds(cfg.monitor.window)
    warnings = []
    if need > g.min_requests:
        warnings.append(
            f"zero errors prove an error rate under {g.max_error_rate:.3%} at "
            f"{g.confidence:.0%} only after {need:,} green requests; steps with less traffic "
            f"are inconclusive (on_inconclusive: {cfg.shift.on_inconclusive})")
    if cfg.router.kind != "embedded":
        warnings.append(f"router {cfg.router.kind} cannot hold writes: the flip uses a short "
                        "write pause and sync's conflict detection")
    if cfg.router.kind == "haproxy" and (g.max_p99_ms or g.max_p99_ratio):
        warnings.append("HAProxy reports counts, not latency distributions: with "
                        "max_p99_ms or max_p99_ratio set every step is inconclusive; set "
                        "them to null")
    return {"cutover": cfg.name, "state_dir": str(StateDir.for_name(base, cfg.name).root),
            "source": str(cfg.source.sqlite), "target": cfg.target.dsn,
            "router": cfg.router.kind, "phases": engine.phase_names(cfg),
            "steps": steps, "gates": g.model_dump(), "on_failure": cfg.shift.on_failure,
            "on_inconclusive": cfg.shift.on_inconclusive, "drill": cfg.shift.drill,
            "emergency": cfg.emergency.model_dump(), "tables": cfg.tables,
            "approvals": list(cfg.finalize.approvals),
            "eta_s": round(eta, 1), "warnings": warnings,
            **(data_plan(cfg, cutover) if data else {})}


@dataclass
class Approval:
    """An approval recorded (:func:`approve`): the role, who, and the roles still missing."""

    role: str
    actor: str
    missing: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"approved": self.role, "actor": self.actor, "missing": self.missing}


def approve(ctx: Context, role: str, *, actor: str | None = None, note: str = "") -> Approval:
    """Record ``role``'s approval (who and when) for finalize; a role the cutover file
    does not name is refused (``UsageError``)."""
    known = ctx.cfg.finalize.approvals
    if role not in known:
        raise UsageError(f"no approval role {role!r} in {ctx.cutover_path}",
                         hint=f"roles: {', '.join(known) or '(none configured)'}")
    ctx.journal.approve(role, actor=actor, note=note)
    have = ctx.journal.approvals()
    return Approval(role, have[role]["actor"], [r for r in known if r not in have])


def note(ctx: Context, text: str, *, actor: str | None = None) -> None:
    """Add an operator remark or user feedback to the audit trail (the report quotes it)."""
    text = text.strip()
    if not text:
        raise UsageError("an empty note", hint='pgshift note CUTOVER "what you saw"')
    ctx.state.audit(ctx.journal.get("phase") or "operator", "note", text, actor=actor)
