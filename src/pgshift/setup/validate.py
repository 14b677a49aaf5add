"""Each generated file checked by the tool that reads it.

``haproxy -c`` for ``haproxy.cfg``; ``docker compose config`` for compose files when the
Compose plugin works (skipped with a note otherwise), plus a structural check that does
not need Docker; YAML parse plus a small schema check for Kubernetes manifests (kubectl's
own dry run needs a cluster); ``pgshift.rollout.config.load`` for the cutover file.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pgshift.errors import PgshiftError
from pgshift.setup.templates import HAPROXY_MAP

Status = Literal["ok", "failed", "skipped"]
HAPROXY_BINS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


@dataclass(frozen=True)
class Validation:
    """One file's check: which tool, the outcome, and why (a failure's first lines)."""

    tool: str
    status: Status
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _haproxy() -> str | None:
    return shutil.which("haproxy") or next((b for b in HAPROXY_BINS if Path(b).exists()), None)


def _tail(text: str, lines: int = 4) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])


def cutover_file(path: Path) -> Validation:
    from pgshift.rollout import config

    try:
        config.load(path)
    except PgshiftError as exc:
        return Validation("pgshift.rollout.config.load", "failed", exc.message)
    return Validation("pgshift.rollout.config.load", "ok", "loads")


def haproxy_cfg(path: Path, map_text: str) -> Validation:
    """``haproxy -c``; the map file HAProxy opens is placed in a temporary directory (the
    real one is only at its production path once installed)."""
    binary = _haproxy()
    if binary is None:
        return Validation("haproxy -c", "skipped", "haproxy is not installed")
    with tempfile.TemporaryDirectory(prefix="pgshift-init-") as tmp:
        mapped = Path(tmp) / "pgshift.map"
        mapped.write_text(map_text)
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(path.read_text().replace(HAPROXY_MAP, str(mapped)))
        proc = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True,
                              timeout=30, check=False)
    if proc.returncode == 0:
        return Validation("haproxy -c", "ok", "Configuration file is valid")
    return Validation("haproxy -c", "failed", _tail(proc.stderr or proc.stdout))


def _compose_structure(doc: Any, *, green: bool, dsn_var: str) -> list[str]:
    problems: list[str] = []
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or "app" not in services:
        return ["no services.app"]
    app = services["app"]
    engine = app.get("environment", {}).get("DB_ENGINE")
    if engine != ("postgres" if green else "sqlite"):
        problems.append(f"app DB_ENGINE is {engine!r}")
    if green:
        pg = services.get("postgres") or {}
        if "healthcheck" not in pg:
            problems.append("postgres has no healthcheck")
        if not any(str(v).startswith("pgdata:") for v in pg.get("volumes", [])):
            problems.append("postgres has no data volume")
        cond = app.get("depends_on", {}).get("postgres", {}).get("condition")
        if cond != "service_healthy":
            problems.append("app does not wait for a healthy postgres")
        if dsn_var not in app.get("environment", {}):
            problems.append(f"app has no {dsn_var}")
    elif not app.get("volumes"):
        problems.append("blue has no data volume")
    return problems


def compose_file(path: Path, *, green: bool, dsn_var: str) -> Validation:
    """Structure first (always), then ``docker compose config`` where Compose works."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return Validation("yaml", "failed", str(exc).splitlines()[0])
    problems = _compose_structure(doc, green=green, dsn_var=dsn_var)
    if problems:
        return Validation("compose structure", "failed", "; ".join(problems))
    docker = shutil.which("docker")
    if docker is None:
        return Validation("docker compose config", "skipped",
                          "docker is not installed; structure checked")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           timeout=30, check=False)
    if probe.returncode != 0:
        return Validation("docker compose config", "skipped",
                          "`docker compose` does not work here (no Compose plugin); "
                          "structure checked")
    # required ${VAR:?} interpolations need values to render; these never leave the check
    env = {**os.environ, "POSTGRES_PASSWORD": "x", dsn_var: "postgresql://check@localhost/x"}
    proc = subprocess.run([docker, "compose", "-f", str(path), "config", "-q"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    if proc.returncode == 0:
        return Validation("docker compose config", "ok", "valid")
    return Validation("docker compose config", "failed", _tail(proc.stderr or proc.stdout))


def _k8s_problems(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return ["a document is not a mapping"]
    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    problems = [f"{where}: missing {k}" for k in ("apiVersion", "kind") if not doc.get(k)]
    if not name:
        problems.append(f"{kind}: missing metadata.name")
    spec = doc.get("spec") or {}
    if kind == "Deployment":
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        tpl = spec.get("template") or {}
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{where}: selector does not match the pod labels")
        containers = (tpl.get("spec") or {}).get("containers") or []
        if not containers:
            problems.append(f"{where}: no containers")
        for c in containers:
            if not c.get("name") or not c.get("image"):
                problems.append(f"{where}: a container without name or image")
            for p in ("readinessProbe", "livenessProbe"):
                if not ((c.get(p) or {}).get("httpGet") or {}).get("path"):
                    problems.append(f"{where}: {c.get('name')} has no {p} on a path")
    elif kind == "Service":
        if not spec.get("selector") or not spec.get("ports"):
            problems.append(f"{where}: needs a selector and ports")
    elif kind == "HTTPRoute":
        if not spec.get("parentRefs"):
            problems.append(f"{where}: no parentRefs")
        for rule in spec.get("rules") or [{}]:
            refs = rule.get("backendRefs") or []
            if len(refs) != 2:
                problems.append(f"{where}: a rule needs the blue and the green backendRef")
            for ref in refs:
                w = ref.get("weight")
                if not isinstance(w, int) or not 0 <= w <= 1_000_000:
                    problems.append(f"{where}: backendRef {ref.get('name')} weight {w!r}")
    elif kind == "PersistentVolumeClaim" and not spec.get("accessModes"):
        problems.append(f"{where}: no accessModes")
    return problems


def k8s_file(path: Path) -> Validation:
    """YAML parse of every document and the fields each kind cannot do without."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        return Validation("yaml + schema", "failed", str(exc).splitlines()[0])
    problems = [p for d in docs for p in _k8s_problems(d)]
    if not docs:
        problems.append("no documents")
    if problems:
        return Validation("yaml + schema", "failed", "; ".join(problems))
    kinds = ", ".join(str(d["kind"]) for d in docs)
    return Validation("yaml + schema", "ok", f"{len(docs)} documents ({kinds})")


def systemd_file(path: Path) -> Validation:
    """The unit's sections and keys (``systemd-analyze verify`` needs a running systemd)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(path.read_text())
    except configparser.Error as exc:
        return Validation("unit sections", "failed", str(exc).splitlines()[0])
    missing = [f"[{sec}] {key}" for sec, key in (("Unit", "Description"),
                                                 ("Service", "ExecStart"),
                                                 ("Install", "WantedBy"))
               if not parser.has_option(sec, key)]
    if missing:
        return Validation("unit sections", "failed", "missing " + ", ".join(missing))
    return Validation("unit sections", "ok", "[Unit] [Service] [Install]")
