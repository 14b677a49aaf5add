"""The steps of a rollout, in DESIGN.md's order. Each is a small class with ``run`` (do
it, return its figures), ``check`` (is its effect already there? a resumed engine skips a
step whose effect it finds) and ``compensate`` (undo, when a rollout is rolled back
before traffic moved).

A step that a pgshift command does not cover yet (provision, archive, optimize, report)
runs the cutover file's hook and is recorded as a hook, or as skipped when there is
none: the journal never says a step ran that did not.
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any, Protocol

from pgshift.errors import ExitCode, PgshiftError
from pgshift.rollout import hooks, syncing
from pgshift.rollout.config import Cutover
from pgshift.rollout.context import PROXY, Context
from pgshift.rollout.procs import pgshift_argv
from pgshift.rollout.series import Recorder
from pgshift.rollout.watch import Interrupt, probe
from pgshift.source.snapshot import Snapshot, take_snapshot


class StepFailed(PgshiftError):
    """A step's own check failed (exit 1): nothing after it runs."""

    exit_code = ExitCode.DIFFERENCES


class Step(Protocol):
    name: str

    def run(self, ctx: Context) -> dict[str, Any]:
        """Do the step; its figures for the journal."""
        ...

    def check(self, ctx: Context) -> bool:
        """True when the step's effect is already in place (skip it on resume)."""
        ...

    def compensate(self, ctx: Context) -> None:
        """Undo the step's effect (before traffic moved)."""
        ...


class _Base:
    name = ""

    def check(self, ctx: Context) -> bool:
        return False

    def compensate(self, ctx: Context) -> None:
        return None


class Preflight(_Base):
    """``pgshift preflight`` (every read-only check: source, target, roles and security,
    apps, router, settings, hooks, secrets), then the prerequisite gates it only lists
    (commands, typed confirmations). A failure stops before anything changes."""

    name = "preflight"

    def run(self, ctx: Context) -> dict[str, Any]:
        from pgshift.setup.preflight import preflight
        from pgshift.source.snapshot import journal_mode

        report = preflight(ctx.cutover_path)
        for c in report.checks:
            if c.status != "pass":
                ctx.state.audit(self.name, f"check-{c.status}", f"{c.name}: {c.detail}",
                                c.to_dict())
        if report.failed:
            raise StepFailed("preflight failed: " + "; ".join(
                f"{c.name} ({c.detail})" for c in report.failed),
                hint=f"pgshift preflight {ctx.cutover_path} shows every check")
        gates = [hooks.check_prerequisite(p, ctx.values(), confirmations=ctx.confirmations)
                 for p in ctx.cfg.prerequisites]
        for g in gates:
            ctx.state.audit(self.name, "prerequisite", f"{g.name}: "
                            f"{'passed' if g.passed else 'FAILED'} ({g.detail})", g.to_dict())
        failed = [g for g in gates if not g.passed]
        if failed:
            raise StepFailed("prerequisite gates failed: " + "; ".join(
                f"{g.name} ({g.detail})" for g in failed),
                hint="fix them and run pgshift rollout CUTOVER --resume")
        counts = report.to_dict()["counts"]
        return {"journal_mode": journal_mode(ctx.cfg.source.sqlite), "checks": counts,
                "warnings": [f"{c.name}: {c.detail}" for c in report.checks
                             if c.status == "warn"],
                "prerequisites": [g.to_dict() for g in gates]}


class HookStep(_Base):
    """A runbook step done by a user command until pgshift has its own."""

    def __init__(self, name: str, command: str | None, *, what: str) -> None:
        self.name = name
        self.command = command
        self.what = what

    def run(self, ctx: Context) -> dict[str, Any]:
        if not self.command:
            return {"skipped": True, "why": f"no hook configured ({self.what})"}
        r = ctx.hook(self.name, self.command)
        if not r.ok:
            raise StepFailed(f"{self.name} hook failed (exit {r.exit_code}): "
                             f"{r.output.strip().splitlines()[-1:] or ''}",
                             hint=f"see {ctx.state.audit_log}")
        return {"hook": r.to_dict()}


class Router(_Base):
    """The router in front of both apps, at weight 0 with blue as the system of record
    (a managed embedded proxy is started here; others must already run)."""

    name = "router"

    def run(self, ctx: Context) -> dict[str, Any]:
        r = ctx.cfg.router
        if r.kind == "embedded" and r.managed:
            argv = pgshift_argv("proxy", "--blue", ctx.cfg.apps.blue.url,
                                "--green", ctx.cfg.apps.green.url, "--listen", r.listen,
                                "--admin", r.admin, "--token", r.token,
                                "--health-path", ctx.cfg.apps.green.health,
                                "--weight", str(ctx.journal.get("weight", 0)))
            if r.cohort_header:
                argv += ["--cohort-header", r.cohort_header]
            for p in r.write_paths:
                argv += ["--write-path", p]
            ctx.procs.start(PROXY, argv, env={r.token[4:]: ctx.admin_token()})
        deadline = time.monotonic() + 15
        while True:
            try:
                weight = ctx.router.weight()
                break
            except PgshiftError:
                if time.monotonic() > deadline:
                    raise StepFailed("the router does not answer", hint=(
                        f"see {ctx.procs.log(PROXY)}" if r.managed else
                        "start it first (pgshift proxy ...)")) from None
                time.sleep(0.1)
        if ctx.journal.get("weight") is None:
            ctx.journal.set(weight=0, sor="blue")
            ctx.router.set_weight(0)
        return {"kind": r.kind, "weight": weight, "url": ctx.public_url}


class Capture(_Base):
    name = "capture"

    def run(self, ctx: Context) -> dict[str, Any]:
        out = syncing.install_sqlite(ctx)
        ctx.journal.set(capture_sqlite=True)
        return {"tables": len(out.get("tables", [])), "created": out.get("created")}

    def compensate(self, ctx: Context) -> None:
        syncing.stop_appliers(ctx)
        syncing.uninstall(ctx)


def _snapshot(ctx: Context) -> Snapshot:
    meta = ctx.journal.get("snapshot")
    if meta is None:
        raise StepFailed("no snapshot recorded in the journal", hint="pgshift rollout "
                         "CUTOVER --resume runs the snapshot step again")
    return Snapshot.load(Path(meta))


class TakeSnapshot(_Base):
    """One online backup of the live file (capture installed, so it carries the change
    log's high-water mark): migrate copies it, verify compares it, sync starts after it."""

    name = "snapshot"

    def check(self, ctx: Context) -> bool:
        meta = ctx.journal.get("snapshot")
        return meta is not None and Path(meta).exists()

    def run(self, ctx: Context) -> dict[str, Any]:
        snap = take_snapshot(ctx.cfg.source.sqlite, ctx.state.snapshots,
                             require_wal=ctx.cfg.source.require_wal)
        ctx.journal.set(snapshot=str(snap.meta_path), hwm=snap.hwm)
        return {"path": str(snap.path), "bytes": snap.bytes, "hwm": snap.hwm,
                "seconds": round(snap.seconds, 3)}


class Migrate(_Base):
    """Schema and data from the snapshot (resumed, exactly once, after a crash)."""

    name = "migrate"

    def run(self, ctx: Context) -> dict[str, Any]:
        from pgshift.migrate import MigrateOptions, migrate

        Recorder(ctx).record()  # the traffic series starts here: blue's load during the copy
        cfg = ctx.cfg
        attempted = bool(ctx.journal.get("migrate_attempted"))
        ctx.journal.set(migrate_attempted=True)
        result = migrate(MigrateOptions(
            sqlite_path=cfg.source.sqlite, dsn=ctx.dsn(), schema=ctx.schema,
            jobs=cfg.migrate.jobs, allow_rejects=cfg.migrate.allow_rejects,
            state_dir=ctx.state.root, require_wal=cfg.source.require_wal,
            resume=attempted, into_existing=cfg.mapping is not None, mapping=cfg.mapping,
            snapshot=_snapshot(ctx)))
        figures = result.to_dict()
        return {"rows": sum(t.rows for t in result.tables), "rejects": result.rejects,
                "migrate_seconds": figures.get("seconds"), "resumed": attempted,
                "tables": {t.name: t.rows for t in result.tables},
                # per table as migrate counted it: COPY bytes sent (text format), copy
                # seconds summed over its chunks (parallel chunks add up), rejects; a
                # resumed run counts only the chunks it copied itself
                "table_figures": {t.name: {"rows": t.rows, "bytes": t.bytes,
                                           "seconds": round(t.seconds, 3),
                                           "rejects": t.rejects,
                                           "source_rows": t.source_rows}
                                  for t in result.tables}}


class Verify(_Base):
    """The snapshot migrate copied against PostgreSQL, every row."""

    name = "verify"

    def run(self, ctx: Context) -> dict[str, Any]:
        from pgshift.verify.run import VerifyOptions, verify

        if ctx.cfg.mapping is not None:
            return {"skipped": True, "why": "a mapped load is verified through the mapping: "
                    "pgshift verify --live after sync"}
        snap = _snapshot(ctx)
        result = verify(VerifyOptions(sqlite_path=ctx.cfg.source.sqlite, dsn=ctx.dsn(),
                                      schema=ctx.schema, snapshot=snap))
        if not result.identical:
            raise StepFailed("verify found differences between the snapshot and PostgreSQL",
                             hint=f"pgshift verify {snap.path} {ctx.cfg.target.dsn}")
        return {"identical": True, "tables": len(result.tables),
                "rows": sum(t.sqlite_rows for t in result.tables)}


class Sync(_Base):
    """PostgreSQL capture for the way back, then the to-postgres applier as a service."""

    name = "sync"

    def run(self, ctx: Context) -> dict[str, Any]:
        out = syncing.install_postgres(ctx)
        ctx.journal.set(capture_postgres=True)
        syncing.start_applier(ctx, syncing.TO_POSTGRES)
        deadline = time.monotonic() + max(30.0, ctx.secs(ctx.cfg.flip.drain_timeout))
        alert_ms = ctx.secs(ctx.cfg.sync.lag_alert) * 1000
        while True:  # caught up once (under live writes "caught up" is a lag, not zero)
            s = syncing.status(ctx)
            if s.get("pending", 1) == 0 or (s.get("lag_ms") is not None and
                                            s["lag_ms"] < min(alert_ms, 1000)):
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"sync did not catch up: {s.get('pending')} changes pending, "
                                 f"lag {s.get('lag_ms')} ms",
                                 hint="pgshift sync status SQLITE PG; then --resume")
            if ctx.procs.find(syncing.SERVICE[syncing.TO_POSTGRES]) is None:
                raise StepFailed("the sync applier exited: " +
                                 ctx.procs.tail(syncing.SERVICE[syncing.TO_POSTGRES], 300),
                                 hint="pgshift sync status SQLITE PG")
            time.sleep(0.2)
        from pgshift.rollout.watch import probe_db_ms

        baseline = probe_db_ms(ctx, samples=10)  # before any traffic moves to green
        ctx.journal.set(db_probe_baseline_ms=baseline)
        return {"postgres_capture": out.get("postgres_capture"), "pending": s.get("pending"),
                "lag_ms": s.get("lag_ms"), "revoked": out.get("revoked"),
                "db_probe_baseline_ms": baseline}


class Deploy(_Base):
    name = "deploy-green"

    def run(self, ctx: Context) -> dict[str, Any]:
        return HookStep(self.name, ctx.cfg.apps.green.deploy,
                        what="green is already running").run(ctx)


class WaitHealthy(_Base):
    name = "wait-healthy"

    def run(self, ctx: Context) -> dict[str, Any]:
        url = ctx.cfg.apps.green.url.rstrip("/") + ctx.cfg.apps.green.health
        started = time.monotonic()
        deadline = started + max(10.0, ctx.secs(300))
        while not probe(url):
            if time.monotonic() > deadline:
                raise StepFailed(f"green never became healthy: GET {url}",
                                 hint="check green's logs; pgshift rollout CUTOVER --resume")
            time.sleep(0.2)
        return {"url": url, "seconds": round(time.monotonic() - started, 3)}


class IntegrationTests(_Base):
    name = "integration-tests"

    def run(self, ctx: Context) -> dict[str, Any]:
        return HookStep(self.name, ctx.cfg.apps.green.integration_tests,
                        what="no integration tests configured").run(ctx)


class Approvals(_Base):
    """Every role in ``finalize.approvals`` approved (``pgshift approve --as ROLE``) while
    the monitoring checks keep running; refused after ``approval_timeout``."""

    name = "approvals"

    def run(self, ctx: Context) -> dict[str, Any]:
        from pgshift.rollout.watch import Watcher

        need = list(ctx.cfg.finalize.approvals)
        watcher = Watcher(ctx)
        deadline = time.monotonic() + ctx.secs(ctx.cfg.finalize.approval_timeout)
        told: set[str] = set()
        while True:
            have, expired = current_approvals(ctx)
            for role in sorted(set(expired) - told):
                told.add(role)
                ctx.event("approvals", "approval-expired",
                          f"the approval of {role} ({expired[role]['actor']}, "
                          f"{expired[role]['ts']}) is older than "
                          f"{ctx.cfg.finalize.approval_valid_for:g}s: asked for again",
                          {"role": role, **expired[role]}, notify=True)
            missing = [r for r in need if r not in have]
            if not missing:
                return {"approvals": {r: have[r] for r in need}}
            if time.monotonic() > deadline:
                raise StepFailed(f"finalize refused: no valid approval from "
                                 f"{', '.join(missing)}" +
                                 (f" ({', '.join(sorted(expired))} expired)" if expired else ""),
                                 hint=f"pgshift approve CUTOVER --as {missing[0]}, then "
                                      "pgshift rollout CUTOVER --resume")
            watcher.wait(watcher.interval)


def current_approvals(ctx: Context, now: float | None = None
                      ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """The recorded approvals split into (valid, expired) by ``approval_valid_for``
    (compared in wall-clock time: an approval is a human's act at a date)."""
    limit = ctx.cfg.finalize.approval_valid_for  # (not time-scaled: people do not speed up)
    now = time.time() if now is None else now
    valid: dict[str, dict[str, str]] = {}
    expired: dict[str, dict[str, str]] = {}
    for role, a in ctx.journal.approvals().items():
        at = calendar.timegm(time.strptime(a["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
        (valid if now - at <= limit else expired)[role] = a
    return valid, expired


class Finalize(_Base):
    """Blue retired (runbook 5.7, 5.9, 5.10): appliers stopped, blue's workers and blue
    stopped, capture removed from both sides, blue's database and config archived (and the
    archive verified), PostgreSQL optimized, then the report hook."""

    name = "finalize"

    def run(self, ctx: Context) -> dict[str, Any]:
        f, hooks_ = ctx.cfg.finalize, ctx.cfg.hooks
        out: dict[str, Any] = {}
        Recorder(ctx).record()  # the traffic series' last row, before blue is stopped
        # the last word on sync before its state goes with the capture; first the final
        # drain, so that blue's archive below holds every change green committed up to it
        drain = syncing.final_drain(ctx)
        if not drain.get("drained"):
            ctx.state.audit(self.name, "final-drain-incomplete", "blue's archive may miss "
                            "green's latest changes: " + (drain.get("error") or
                            f"{drain.get('stranded')} change(s) not in SQLite"), drain)
        out["sync"] = {**syncing.brief(ctx), "final_drain": drain}
        ctx.journal.set(final_sync=out["sync"])
        syncing.stop_appliers(ctx)
        for key, cmd in (("stop_blue_workers", ctx.cfg.apps.blue.stop_workers),
                         ("stop_blue", ctx.cfg.apps.blue.stop)):
            if cmd:
                out[key] = ctx.hook(self.name, cmd).to_dict()
        if f.remove_capture:
            out["capture_removed"] = syncing.uninstall(ctx)
            ctx.journal.set(capture_postgres=False, capture_sqlite=False)
        out["archive"] = self._archive(ctx) if f.archive else HookStep(
            "finalize-archive", hooks_.archive, what="no archive configured").run(ctx)
        out["optimize"] = self._optimize(ctx) if f.optimize else HookStep(
            "finalize-optimize", hooks_.optimize, what="no optimize configured").run(ctx)
        # the report written now is finalize's last act: it shows what finalize did so far
        # (the step's own figures are journaled only once it returns)
        ctx.journal.set(finalize_progress=out)
        out["report"] = HookStep("finalize-report", hooks_.report, what="").run(ctx) \
            if hooks_.report else write_report(ctx)
        return out

    def _archive(self, ctx: Context) -> dict[str, Any]:
        from pgshift.ops.archive import archive, verify_archive

        a = ctx.cfg.finalize.archive
        assert a is not None
        made = archive(ctx.cfg.source.sqlite, a.dest, config_files=a.files, keep=a.keep,
                       include_secrets=a.include_secrets)
        checked = verify_archive(made.location)
        if not checked.ok:
            raise StepFailed(f"the archive {made.location} does not verify",
                             hint=f"pgshift archive verify {made.location}")
        return {"location": made.location, "bytes": made.bytes, "verified": True,
                "row_counts": made.row_counts}

    def _optimize(self, ctx: Context) -> dict[str, Any]:
        from pgshift.ops.optimize import optimize

        o = ctx.cfg.finalize.optimize
        assert o is not None
        result = optimize(ctx.dsn(), apply=o.apply, planned_sql=o.planned_sql,
                          schema=ctx.schema, lock_timeout=o.lock_timeout)
        out = result.to_dict()
        if getattr(result, "failed", None):
            ctx.state.audit(self.name, "optimize-failed", f"{len(result.failed)} index "
                            "build(s) failed (cleaned up); see the figures", out)
        return out


class Provision(_Base):
    """``pgshift provision``: the app role and database, idempotently (runbook 5.1);
    then the provision hook, when one is given too."""

    name = "provision"

    def run(self, ctx: Context) -> dict[str, Any]:
        import os

        from pgshift.dsn import resolve
        from pgshift.ops.provision import provision

        p = ctx.cfg.provision
        out: dict[str, Any] = {}
        if p is not None:
            password = os.environ.get(p.password_env) if p.password_env else None
            if p.password_env and password is None:
                raise StepFailed(f"provision.password_env: ${p.password_env} is not set",
                                 hint=f"export {p.password_env}=...")
            result = provision(resolve(p.admin_dsn), p.app_user, p.database,
                               password=password, connection_limit=p.connection_limit,
                               extensions=p.extensions, schema=ctx.schema)
            out["provision"] = result.to_dict()
        hook = HookStep(self.name, ctx.cfg.hooks.provision,
                        what="no provision configured").run(ctx)
        return {**out, **hook} if p is None or ctx.cfg.hooks.provision else out


def pre_traffic(cfg: Cutover) -> list[Step]:
    """The steps before any traffic moves, in order."""
    h = cfg.hooks
    return [Preflight(), Provision(),
            Router(), HookStep("backup", h.backup, what="the snapshot is the backup"),
            Capture(), TakeSnapshot(), Migrate(), Verify(), Sync(), Deploy(), WaitHealthy(),
            IntegrationTests()]


__all__ = ["Interrupt", "Step", "StepFailed", "pre_traffic"]


def write_report(ctx: Context) -> dict[str, Any]:
    """``pgshift report`` in both formats into ``.pgshift/<name>/report/`` (runbook 5.10):
    finalize's last act, and the rehearsal's (``swap-back``). Finalize writes it before it
    is journaled done, so the report says finalize started."""
    from pgshift.report.build import make_report

    written = {}
    for fmt in ("md", "html"):
        path = ctx.state.report / f"deployment-report.{fmt}"
        make_report(ctx.cutover_path, fmt, path)
        written[fmt] = str(path)
    return {"written": written}
