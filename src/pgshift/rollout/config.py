"""The cutover file (``cutover.yaml``) as pydantic models.

One file describes a whole cutover: where the data is, the two environments, the router,
what must be true before traffic moves, the steps and how each is judged, what triggers
an emergency rollback, the monitoring window, approvals, and what finalize does. The
documented example is ``docs/cutover.example.yaml`` (the tests load it).

Secrets never live in the file: the target DSN and router tokens are ``env:VAR``
references (or libpq's own ``PG*`` variables); a literal password is refused.
Durations are strings (``500ms``, ``30s``, ``10m``, ``48h``, ``2d``) or seconds; error
rates are fractions or percentages (``0.1%``). ``time_scale`` divides every duration so
a rehearsal runs the same cutover faster (the demo uses it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from pgshift.durations import seconds
from pgshift.errors import UsageError


def parse_rate(value: Any) -> float:
    """``"0.1%"`` -> 0.001; ``0.001`` -> 0.001 (a fraction in 0..1)."""
    if isinstance(value, bool):
        raise ValueError(f"not a rate: {value!r}")
    text = str(value).strip()
    rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= rate <= 1:
        raise ValueError(f"a rate must be within 0..100 %: {value!r}")
    return rate


Duration = Annotated[float, BeforeValidator(seconds)]  # pgshift.durations' grammar
Rate = Annotated[float, BeforeValidator(parse_rate)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    sqlite: Path
    require_wal: bool = True


class Target(_Model):
    dsn: str = Field(description="env:VAR, or a DSN without a password")
    schema_: str = Field(default="public", alias="schema")
    app_role: str | None = None

    @model_validator(mode="after")
    def _no_secret(self) -> Target:
        if not self.dsn.startswith("env:") and re.search(
                r"(://[^/@]*:[^@/]*@)|password\s*=", self.dsn, re.IGNORECASE):
            raise ValueError("target.dsn holds a password: use env:VAR (the variable holds "
                             "the DSN) or ~/.pgpass")
        return self


class App(_Model):
    url: str
    health: str = "/health"
    deploy: str | None = None
    stop: str | None = None
    start_workers: str | None = None
    stop_workers: str | None = None
    integration_tests: str | None = None


class Apps(_Model):
    blue: App
    green: App


class Fence(_Model):
    mode: Literal["hold", "pause"] = "hold"
    max_hold: Duration = 5.0
    # pause (routers that cannot hold): how long writes forwarded before the pause may
    # still take to commit on blue; the drain waits this long before its fence marker
    settle: Duration = 1.0


class HAProxyRouterSettings(_Model):
    socket: Path
    map_file: Path


class Router(_Model):
    kind: Literal["embedded", "haproxy", "alb", "gateway"] = "embedded"
    # embedded: the engine starts `pgshift proxy` (managed) or drives a running one
    managed: bool = True
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9180"
    token: str = "env:PGSHIFT_ADMIN_TOKEN"
    cohort_header: str | None = None
    write_paths: tuple[str, ...] = ()
    haproxy: HAProxyRouterSettings | None = None
    options: dict[str, str] = Field(default_factory=dict)  # alb / gateway keys
    fence: Fence = Fence()

    @model_validator(mode="after")
    def _complete(self) -> Router:
        if self.kind == "haproxy" and self.haproxy is None:
            raise ValueError("router.kind haproxy needs router.haproxy.socket and .map_file")
        if not self.token.startswith("env:"):
            raise ValueError("router.token must be env:VAR (secrets never go in the file)")
        return self


class Prerequisite(_Model):
    """One gate before anything changes: a command, a JUnit report, or a typed confirmation."""

    name: str
    command: str | None = None
    junit: Path | None = None
    min_pass_rate: Rate = 1.0
    confirm: str | None = None
    timeout: Duration = 600.0

    @model_validator(mode="after")
    def _one_kind(self) -> Prerequisite:
        kinds = [k for k in (self.command, self.junit, self.confirm) if k is not None]
        if len(kinds) != 1:
            raise ValueError(f"prerequisite {self.name!r}: give exactly one of command, "
                             "junit, confirm")
        return self


class Gates(_Model):
    max_error_rate: Rate = 0.001
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_requests: int = Field(default=200, ge=1)
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = 1.5


class Step(_Model):
    weight: float = Field(gt=0, le=100)
    bake: Duration = 600.0
    approval: Literal["none", "required"] = "none"


def _default_steps() -> tuple[Step, ...]:
    return tuple(Step(weight=w) for w in (10, 25, 50, 100))


class Shift(_Model):
    steps: tuple[Step, ...] = Field(default_factory=_default_steps)
    on_failure: Literal["rollback", "pause"] = "rollback"
    on_inconclusive: Literal["extend", "pause", "fail"] = "extend"
    max_extensions: int = Field(default=3, ge=0)
    # when the extensions are used up: hold for `pgshift promote` (pause) or roll back
    after_extensions: Literal["pause", "fail"] = "pause"
    drill: bool = False  # roll back once after the first step, time it, re-advance
    sample_interval: Duration = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Shift:
        weights = [s.weight for s in self.steps]
        if not weights:
            raise ValueError("shift.steps is empty")
        if weights != sorted(set(weights)):
            raise ValueError(f"shift.steps weights must strictly increase: {weights}")
        if weights[-1] != 100:
            raise ValueError(f"the last step must be weight 100 (the flip), not {weights[-1]}")
        return self


class Checks(_Model):
    critical_paths: tuple[str, ...] = ()  # shell commands; {url} {green_url} {blue_url}
    gates: Gates = Gates()
    timeout: Duration = 60.0


class Emergency(_Model):
    """Triggers that roll back at once, at any step and during monitoring (runbook 5.6)."""

    unavailable: Duration = 300.0
    error_rate: Rate = 0.05
    error_rate_for: Duration = 600.0
    p99_ratio: float = 2.0
    p99_for: Duration = 300.0
    # PostgreSQL's own round trip (SELECT 1 from the engine) against its baseline before
    # traffic: degraded when above db_probe_ratio x baseline (and 5 ms) for db_probe_for
    db_probe_ratio: float = 5.0
    db_probe_for: Duration = 300.0
    db_probe_interval: Duration = 5.0
    critical_path_failing: bool = True


class Flip(_Model):
    drain_timeout: Duration = 30.0
    # Behind the fence, after the drain: compare the rows of this many of the latest
    # changes on both engines before PostgreSQL becomes the system of record (0: off).
    verify_tail: int = Field(default=1000, ge=0, le=100_000)


class Monitor(_Model):
    window: Duration = 48 * 3600.0
    interval: Duration = 3600.0
    checks: tuple[str, ...] = ()


class Rollback(_Model):
    drain_deadline: Duration = 60.0


class Rehearsal(_Model):
    """``pgshift rollout --rehearse``: the whole cutover, then back to blue."""

    monitor: Duration = 300.0  # the monitoring window before the swap back


class Archive(_Model):
    """``pgshift archive`` of blue at finalize: the SQLite file and blue's config files."""

    dest: str  # a local directory or an fsspec URL (s3://...)
    files: tuple[Path, ...] = ()
    keep: int | None = Field(default=None, ge=1)
    include_secrets: bool = False


class Optimize(_Model):
    """``pgshift optimize`` at finalize: proposals from real usage, planned indexes."""

    apply: bool = False  # build the proposals (CONCURRENTLY); false: report them only
    planned_sql: Path | None = None  # planned CREATE INDEX statements (runbook 5.9)
    lock_timeout: str = "5s"


class Finalize(_Model):
    approvals: tuple[str, ...] = ()
    approval_timeout: Duration = 7 * 86400.0
    # An approval older than this when finalize would start has expired and is asked for
    # again: "retire blue" approved days ago approved a system the monitoring since may
    # have seen differently (the anchors: approvals survive restarts *and expire*).
    approval_valid_for: Duration = 86400.0
    remove_capture: bool = True
    archive: Archive | None = None
    optimize: Optimize | None = None


class Provision(_Model):
    """``pgshift provision`` as the rollout's first change (runbook 5.1)."""

    admin_dsn: str = Field(description="env:VAR")
    app_user: str
    database: str
    password_env: str | None = None  # the app role's password, from this variable
    extensions: tuple[str, ...] = ()
    connection_limit: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _env_only(self) -> Provision:
        if not self.admin_dsn.startswith("env:"):
            raise ValueError("provision.admin_dsn must be env:VAR")
        return self


class Hooks(_Model):
    """Commands for what pgshift does not do itself (or, where it does, in addition)."""

    provision: str | None = None  # runs after `provision:` when both are given
    backup: str | None = None
    archive: str | None = None
    optimize: str | None = None
    report: str | None = None


class Sync(_Model):
    capture: Literal["triggers", "logical"] = "triggers"
    green_ids: Literal["keep", "negative"] = "keep"
    lag_alert: Duration = 5.0


class MigrateSettings(_Model):
    jobs: int = Field(default=2, ge=1)
    allow_rejects: bool = False


class Notify(_Model):
    webhook: str | None = None  # URL or env:VAR; JSON POST per event
    apprise: tuple[str, ...] = ()


class Cutover(_Model):
    """The whole cutover file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: Source
    target: Target
    mapping: Path | None = None
    apps: Apps
    router: Router = Router()
    prerequisites: tuple[Prerequisite, ...] = ()
    provision: Provision | None = None
    hooks: Hooks = Hooks()
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    migrate: MigrateSettings = MigrateSettings()
    sync: Sync = Sync()
    checks: Checks = Checks()
    shift: Shift = Shift()
    emergency: Emergency = Emergency()
    flip: Flip = Flip()
    monitor: Monitor = Monitor()
    rollback: Rollback = Rollback()
    rehearsal: Rehearsal = Rehearsal()
    finalize: Finalize = Finalize()
    notify: Notify = Notify()
    time_scale: float = Field(default=1.0, gt=0)

    def seconds(self, value: float) -> float:
        """A configured duration as it runs (divided by ``time_scale``)."""
        return value / self.time_scale


def load(path: Path) -> tuple[Cutover, Path]:
    """Read and validate a cutover file; relative paths in it are taken from its folder.

    Returns the model and the base directory (where ``.pgshift/<name>/`` lives).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"cutover file {path} does not exist",
                         hint="pgshift init SQLITE writes one; see docs/cutover.example.yaml"
                         ) from None
    except OSError as exc:
        raise UsageError(f"cannot read cutover file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path} is not a YAML file: {str(exc).splitlines()[0]}",
                         hint="see docs/cutover.example.yaml") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level",
                         hint="see docs/cutover.example.yaml")
    try:
        model = Cutover.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UsageError(f"{path}: {where}: {err['msg']}"
                         + (f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""),
                         hint="see docs/cutover.example.yaml for every key") from exc
    base = path.resolve().parent
    return _absolute(model, base), base


def _absolute(model: Cutover, base: Path) -> Cutover:
    def rel(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    updates: dict[str, Any] = {"source": model.source.model_copy(
        update={"sqlite": rel(model.source.sqlite)})}
    if model.mapping is not None:
        updates["mapping"] = rel(model.mapping)
    f = model.finalize
    if f.archive is not None or f.optimize is not None:
        updates["finalize"] = f.model_copy(update={
            "archive": f.archive and f.archive.model_copy(
                update={"files": tuple(rel(p) for p in f.archive.files)}),
            "optimize": f.optimize and f.optimize.model_copy(
                update={"planned_sql": rel(f.optimize.planned_sql)})})
    return model.model_copy(update=updates)


def dump(model: Cutover) -> str:
    """The model as YAML (aliases and all), for files the demo and tests write."""
    data = model.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False)
