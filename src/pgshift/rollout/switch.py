"""The two moves that change the system of record: the flip (SQLite -> PostgreSQL) and the
rollback (anything -> blue on SQLite, green's writes carried back).

Both hold writes at the router (the embedded proxy's WriteFence; routers without one get
a declared short write pause: writes are not held, and sync's conflict detection covers
the moment), drain sync behind a fence marker with a deadline, switch, and release. Each
stage is journaled before it is taken so a resumed engine knows where a killed one
stopped (:func:`reconcile_fence`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pgshift.errors import PgshiftError
from pgshift.rollout import syncing
from pgshift.rollout.context import Context
from pgshift.rollout.series import Recorder
from pgshift.rollout.watch import probe
from pgshift.sync.results import DrainResult
from pgshift.traffic.embedded import EmbeddedRouter
from pgshift.traffic.router import WriteFence, WritePause, WriteRouting


class FlipFailed(PgshiftError):
    """The flip could not complete; writes were released on the old system of record."""


def _fence(ctx: Context) -> WriteFence | WritePause | None:
    """What stops writes during the flip and the rollback: the router's fence (writes
    held), else its write pause (writes refused with 503 Retry-After), else nothing."""
    r = ctx.router
    if ctx.cfg.router.fence.mode == "hold" and isinstance(r, WriteFence):
        return r
    if isinstance(r, WritePause):
        return r
    return None


def _hold(ctx: Context, fence: WriteFence | WritePause) -> None:
    f = ctx.cfg.router.fence
    if isinstance(fence, EmbeddedRouter):
        fence.hold(wait=ctx.secs(f.max_hold))  # returns once earlier writes are answered
    elif isinstance(fence, WriteFence):
        fence.hold()
    else:
        fence.pause_writes()
        # the router cannot see writes it already forwarded: give them time to commit on
        # the old system of record before the fence marker goes in behind them
        time.sleep(ctx.secs(f.settle))


def _release(fence: WriteFence | WritePause) -> None:
    if isinstance(fence, WriteFence):
        fence.release()
    else:
        fence.resume_writes()


def flip(ctx: Context) -> dict[str, Any]:
    """Hold writes, drain SQLite -> PostgreSQL to a fence marker, switch the system of
    record and sync's direction, release. Figures include ``fence_hold_ms``."""
    j, r = ctx.journal, ctx.router
    if j.get("flipped") and j.get("flip_stage") == "released":
        # a resumed engine whose flip had completed (reconcile_fence finishes a half-done
        # one): holding writes and draining again would be for nothing, and the tail
        # check compares the to-postgres direction, which no longer runs
        if syncing.running_direction(ctx) != syncing.TO_SQLITE:
            syncing.start_applier(ctx, syncing.TO_SQLITE)
        return {"fence_hold_ms": j.get("fence_hold_ms"), "fence": True,
                "resumed": "the flip had completed before the engine stopped"}
    if ctx.cfg.apps.blue.stop_workers:
        ctx.hook("flip", ctx.cfg.apps.blue.stop_workers)
    fence = _fence(ctx)
    j.set(flip_stage="holding")
    started = time.monotonic()
    if fence is not None:
        _hold(ctx, fence)
    j.set(flip_stage="held")
    tail: dict[str, Any] = {}
    try:
        out = syncing.flip(ctx, ctx.secs(ctx.cfg.flip.drain_timeout),
                           check=lambda drain: tail.update(_tail_check(ctx, fence, drain)))
    except BaseException:
        _release_back(ctx, fence)
        raise
    if not out["flipped"]:
        _release_back(ctx, fence)
        stranded = out["drain"].get("stranded", {})
        raise FlipFailed(f"the drain did not reach the fence marker in "
                         f"{ctx.secs(ctx.cfg.flip.drain_timeout):g}s ({stranded.get('count')} "
                         "changes behind); writes released on blue",
                         hint="pgshift status CUTOVER shows the sync lag; resume to retry")
    j.set(flip_stage="flipped", flipped=True, sor="green")
    if isinstance(r, WriteRouting):
        r.set_system_of_record("green")
    if fence is not None:
        _release(fence)
    hold_ms = (time.monotonic() - started) * 1000
    j.set(flip_stage="released", fence_hold_ms=round(hold_ms, 1))
    drain = out["drain"]
    late: dict[str, Any] | None = None
    if fence is None or isinstance(fence, WritePause):
        # no hold: a write blue took after the marker (slower than fence.settle) missed
        # the drain; it is named here, never silently left behind
        late = syncing.blue_writes_after(ctx, int(drain.get("fence_seq") or 0))
        if late.get("count"):
            ctx.event("flip", "late-blue-writes", f"{late['count']} write(s) committed on "
                      f"blue after the flip's fence marker were not carried to PostgreSQL: "
                      f"{late}", {"late_blue_writes": late}, notify=True)
    syncing.start_applier(ctx, syncing.TO_SQLITE)
    if ctx.cfg.apps.green.start_workers:
        ctx.hook("flip", ctx.cfg.apps.green.start_workers)
    return {"fence_hold_ms": round(hold_ms, 1), "fence": fence is not None,
            "drained_to": drain.get("fence_seq"), "drain_seconds": drain.get("seconds"),
            "rebased": out.get("rebased"), "identities": out.get("identities"),
            "privileges_granted_back": out.get("privileges_granted_back"),
            "late_blue_writes": late, "tail_check": tail or None}


def _tail_check(ctx: Context, fence: WriteFence | WritePause | None,
                drain: DrainResult) -> dict[str, Any]:
    """Once the flip's drain reached its marker (nothing switched yet): compare the rows
    of the latest changes since the snapshot on both engines (``flip.verify_tail``);
    ``FlipFailed`` on a difference sync did not record (parked, conflict lost). Writes
    are held, so nothing moves meanwhile. The summary; empty when turned off."""
    limit = ctx.cfg.flip.verify_tail
    if not limit:
        return {}
    if fence is None:
        # ALB, Gateway API: writes keep flowing, so a row blue changes again after the
        # marker would differ for no fault of sync; the conflict detection covers the moment
        return {"skipped": "the router neither holds nor pauses writes: rows would move "
                           "under the check"}
    from pgshift.verify.tail import verify_tail

    result = verify_tail(ctx.cfg.source.sqlite, ctx.dsn(), ctx.schema,
                         after=int(ctx.journal.get("hwm") or 0), upto=drain.fence_seq,
                         limit=limit)
    summary = {"checked": result.checked, "tables": len(result.keys),
               "differences": len(result.diffs), "explained": len(result.explained),
               "not_checked": result.not_checked, "seconds": round(result.seconds, 3)}
    ctx.journal.set(tail_check=result.to_dict())
    if not result.ok:
        shown = "; ".join(f"{d.table} {d.key} {d.kind}" for d in result.diffs[:3])
        ctx.event("flip", "tail-check-failed", f"{len(result.diffs)} of the {result.checked} "
                  f"latest changed rows differ between SQLite and PostgreSQL: {shown}",
                  summary, notify=True)
        raise FlipFailed(f"the tail check found {len(result.diffs)} differing row(s) among the "
                         f"{result.checked} changed last ({shown}); writes released on blue",
                         hint=f"pgshift verify {ctx.cfg.source.sqlite} {ctx.cfg.target.dsn} "
                              f"--tables {result.diffs[0].table} shows them; pgshift rollout "
                              f"{ctx.cutover_path} --resume retries the flip")
    return summary


def _release_back(ctx: Context, fence: WriteFence | WritePause | None) -> None:
    """Back to the state before the fence: blue is the system of record, writes flow."""
    r = ctx.router
    if isinstance(r, WriteRouting):
        r.set_system_of_record("blue")
    if fence is not None:
        _release(fence)
    ctx.journal.set(flip_stage=None)
    if ctx.cfg.apps.blue.start_workers:
        ctx.hook("flip", ctx.cfg.apps.blue.start_workers)


def reconcile_fence(ctx: Context) -> str | None:
    """After a crash during the flip: finish it (the system of record had switched) or
    return to the state before the fence (it had not). What was done, or None."""
    stage = ctx.journal.get("flip_stage")
    if stage in (None, "released"):
        if stage == "released" and syncing.running_direction(ctx) != syncing.TO_SQLITE:
            syncing.start_applier(ctx, syncing.TO_SQLITE)
            return "restarted the to-sqlite applier after the flip"
        return None
    r = ctx.router
    sor = r.system_of_record() if isinstance(r, WriteRouting) else None
    fence = _fence(ctx)
    if stage == "flipped" or sor == "green":
        ctx.journal.set(flipped=True, sor="green")
        if isinstance(r, WriteRouting):
            r.set_system_of_record("green")
        if fence is not None:
            _release(fence)
        ctx.journal.set(flip_stage="released")
        syncing.start_applier(ctx, syncing.TO_SQLITE)
        return "the flip had switched the system of record: completed it and released writes"
    _release_back(ctx, fence)
    syncing.start_applier(ctx, syncing.TO_POSTGRES)
    return "the flip had not switched: writes released on blue; the flip will run again"


@dataclass
class RollbackResult:
    reason: str
    after_flip: bool
    drill: bool
    traffic_back_ms: float | None = None
    seconds: float = 0.0
    fence_hold_ms: float | None = None
    drain: dict[str, Any] | None = None
    stranded: dict[str, Any] | None = None
    blue_healthy: bool | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rollback(ctx: Context, reason: str, *, drill: bool = False) -> RollbackResult:
    """Everything back to blue, green's writes carried into SQLite.

    Hold writes; move reads to blue at once (weight 0: the fence still holds writes);
    drain green's captured writes into SQLite behind a fence marker with the deadline
    ``rollback.drain_deadline``; system of record blue; release. What could not be
    drained (PostgreSQL down, deadline passed) is the *stranded range*, recorded and
    reported, never hidden. Works without a running engine or sync process. Every step
    is attempted even when an earlier one failed: traffic goes back to blue regardless.
    """
    started = time.monotonic()
    j = ctx.journal
    after_flip = bool(j.get("flipped", False))
    res = RollbackResult(reason, after_flip, drill)
    j.set(rollback_stage="started", rollback_reason=reason, rollback_drill=drill)
    ctx.event("rollback", "rollback-started", f"rolling back: {reason}",
              {"after_flip": after_flip, "drill": drill}, notify=not drill)
    fence = None
    try:
        fence = _fence(ctx)
        if fence is not None:
            _hold(ctx, fence)
    except PgshiftError as exc:
        res.problems.append(f"hold: {exc.message}")
    try:
        ctx.router.set_weight(0)
        res.traffic_back_ms = round((time.monotonic() - started) * 1000, 1)
        j.set(weight=0)
    except PgshiftError as exc:
        res.problems.append(f"weight 0: {exc.message}")
    if j.get("capture_postgres"):
        try:
            # the rollback drain, and SQLite's AUTOINCREMENT marks past green's ids
            d = syncing.flip_back(ctx, ctx.secs(ctx.cfg.rollback.drain_deadline))["drain"]
            res.drain = {k: d.get(k) for k in ("fence_seq", "drained", "seconds", "applied",
                                               "conflicts", "parked")}
            if not d.get("drained"):
                res.stranded = d.get("stranded")
        except PgshiftError as exc:
            res.stranded = {"count": None, "reason": exc.message,
                            "note": "green's writes since the to-sqlite checkpoint were not "
                                    "carried back; see pgshift.pg_changes when PostgreSQL "
                                    "is back"}
            res.problems.append(f"drain: {exc.message}")
    try:
        r = ctx.router
        if isinstance(r, WriteRouting):
            r.set_system_of_record("blue")
        if fence is not None:
            _release(fence)
        res.fence_hold_ms = round((time.monotonic() - started) * 1000, 1)
    except PgshiftError as exc:
        res.problems.append(f"release: {exc.message}")
    j.set(flipped=False, sor="blue", flip_stage=None)
    if after_flip:
        for cmd in (ctx.cfg.apps.green.stop_workers, ctx.cfg.apps.blue.start_workers):
            if cmd:
                ctx.hook("rollback", cmd)
    if j.get("capture_postgres"):
        try:
            # blue is the system of record again: keep PostgreSQL current (a re-advance
            # starts from here) -- the applier retries while PostgreSQL is down
            syncing.start_applier(ctx, syncing.TO_POSTGRES)
        except OSError as exc:
            res.problems.append(f"to-postgres applier: {exc}")
    if not drill and ctx.cfg.apps.green.stop:
        ctx.hook("rollback", ctx.cfg.apps.green.stop)
    res.blue_healthy = probe(ctx.cfg.apps.blue.url.rstrip("/") + ctx.cfg.apps.blue.health)
    res.seconds = round(time.monotonic() - started, 3)
    Recorder(ctx).record()  # the traffic series goes on past the rollback (the report's charts)
    j.set(rollback_stage="done", last_rollback=res.to_dict())
    ctx.event("rollback", "rolled-back",
              f"{'drill: ' if drill else ''}traffic on blue after {res.traffic_back_ms} ms, "
              f"rollback complete in {res.seconds:.2f}s" +
              (f"; STRANDED: {res.stranded}" if res.stranded else "") +
              (f"; problems: {'; '.join(res.problems)}" if res.problems else ""),
              res.to_dict(), notify=not drill)
    return res
