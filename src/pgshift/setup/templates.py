"""What ``pgshift init`` writes: the cutover file and the deploy templates, as text.

Rendering only; no I/O (``setup/init.py`` writes, ``setup/validate.py`` checks).
Compose files and Kubernetes manifests are built as data and dumped, so they are valid
YAML by construction; the cutover file is written by hand because its comments are the
point of it (the tests load it with ``pgshift.rollout.config.load``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from pgshift.traffic.haproxy import render_config, render_map, settings_from_cli

Deploy = Literal["compose", "kubernetes", "systemd", "running"]
RouterKind = Literal["embedded", "haproxy", "alb", "gateway"]
DEPLOYS: tuple[str, ...] = ("compose", "kubernetes", "systemd", "running")
ROUTERS: tuple[str, ...] = ("embedded", "haproxy", "alb", "gateway")

HAPROXY_SOCKET = "/run/haproxy/pgshift.sock"
HAPROXY_MAP = "/etc/haproxy/pgshift.map"


@dataclass(frozen=True)
class Setup:
    """The answers ``init`` collected: everything the templates depend on."""

    name: str  # the cutover's name; also the app's name in templates
    sqlite: Path  # absolute path of the live file
    blue_url: str
    green_url: str
    deploy: Deploy
    router: RouterKind
    dsn_var: str = "DATABASE_URL"
    health: str = "/health"
    image: str = "app:latest"  # compose / kubernetes: the app's image
    app_port: int = 3000  # the port the app listens on inside its container
    app_role: str | None = None
    listen: str = "0.0.0.0:8080"  # where clients connect (embedded proxy / haproxy)
    gateway: str = "gateway"  # kubernetes: the Gateway the HTTPRoute attaches to
    namespace: str = "default"


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _port(url: str, default: int) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


def _deploy_commands(s: Setup) -> dict[str, str]:
    if s.deploy == "compose":
        f = "docker compose -f docker-compose.green.yml"
        return {"deploy": f"{f} up -d --wait", "stop": f"{f} down"}
    if s.deploy == "kubernetes":
        return {"deploy": f"kubectl apply -f k8s/green.yaml && kubectl -n {s.namespace} "
                          f"rollout status deployment/{s.name}-green --timeout=300s",
                "stop": f"kubectl -n {s.namespace} scale deployment/{s.name}-green --replicas=0"}
    if s.deploy == "systemd":
        return {"deploy": f"systemctl start {s.name}-green.service",
                "stop": f"systemctl stop {s.name}-green.service"}
    return {}


def _router_block(s: Setup) -> str:
    if s.router == "embedded":
        return f"""router:
  kind: embedded
  managed: true                   # the engine starts `pgshift proxy` (detached)
  listen: {_q(s.listen)}          # where clients connect
  admin: "127.0.0.1:9180"         # the proxy's admin API (keep it on localhost)
  token: env:PGSHIFT_ADMIN_TOKEN  # unset + managed: generated, kept 0600 in the state dir
  # cohort_header: X-User-Id      # pin each user to one side while traffic is split
  write_paths: []                 # GETs that write (e.g. /api/jobs/*/claim) go to the
                                  # system of record
  fence:
    mode: hold                    # mutating requests are held during the flip
    max_hold: 5s
"""
    if s.router == "haproxy":
        return f"""router:
  kind: haproxy                   # haproxy.cfg + pgshift.map were written next to this file
  haproxy:
    socket: {HAPROXY_SOCKET}   # the runtime API socket (stats socket ... level admin)
    map_file: {HAPROXY_MAP}    # install pgshift.map here (haproxy.cfg reads it)
  write_paths: []                 # GETs that write go to the system of record
  fence:
    mode: pause                   # haproxy cannot hold requests: 503 Retry-After: 1
    max_hold: 5s
    settle: 1s
"""
    if s.router == "alb":
        return """router:
  kind: alb                       # AWS credentials come from the usual AWS variables
  options:                        # CHANGE ME: your listener and the two target groups
    listener: "arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener/app/NAME/ID/ID"
    blue: "arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/blue/ID"
    green: "arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/green/ID"
  fence:
    mode: pause                   # an ALB cannot hold requests
"""
    return f"""router:
  kind: gateway                   # Gateway API: the HTTPRoute's backendRef weights
  options:
    api: "https://kubernetes.default.svc"   # CHANGE ME outside the cluster
    namespace: {_q(s.namespace)}
    route: {_q(s.name)}
    blue: {_q(s.name + "-blue")}
    green: {_q(s.name + "-green")}
    token: env:PGSHIFT_KUBE_TOKEN # a service account token allowed to patch the route
  fence:
    mode: pause                   # a Gateway cannot hold requests
"""


def cutover_yaml(s: Setup, *, tables: list[tuple[str, int, bool]]) -> str:
    """The commented cutover file; ``tables`` is (name, rows, has_key) from the profile."""
    cmds = _deploy_commands(s)
    green_cmds = "".join(f"    {k}: {_q(v)}\n" for k, v in cmds.items())
    if not cmds:
        green_cmds = "    # already running: no deploy/stop commands\n"
    role = f"  app_role: {_q(s.app_role)}          # green's role\n" if s.app_role else \
        "  # app_role: app                # green's role: loses writes on green_writes: forbid\n"
    nokey = "  -- NO PRIMARY KEY: sync cannot capture it"
    listing = "".join(f"  #   {n}: {rows} row{'' if rows == 1 else 's'}{'' if key else nokey}\n"
                      for n, rows, key in tables) or "  #   (no tables)\n"
    return f"""# cutover.yaml -- written by `pgshift init`; review every line before a rollout.
# Every key, with its default: docs/cutover.example.yaml. Check it with
#   pgshift plan cutover.yaml        (what a rollout would do)
#   pgshift preflight cutover.yaml   (everything checkable before touching production)
# Secrets never go in this file: DSNs and tokens are env:VAR.

name: {_q(s.name)}                # state goes to .pgshift/<name>/ next to this file

source:
  sqlite: {_q(str(s.sqlite))}
  require_wal: true               # the online snapshot needs WAL mode

target:
  dsn: env:{s.dsn_var}            # the variable holds the DSN (never the file)
  schema: public
{role}
apps:
  blue:                           # the app as it runs today (DB_ENGINE=sqlite)
    url: {_q(s.blue_url)}
    health: {_q(s.health)}
  green:                          # the same app with DB_ENGINE=postgres
    url: {_q(s.green_url)}
    health: {_q(s.health)}
{green_cmds}
{_router_block(s)}
prerequisites:                    # all must pass before anything changes
  - name: backups-verified
    confirm: "restored last night's backup"   # pgshift rollout ... --confirm backups-verified="..."

tables: {{}}                      # write topology per table (docs/sync.md); the profile:
{listing}
migrate:
  jobs: 2
  allow_rejects: false            # any reject stops the rollout before green gets traffic

checks:
  critical_paths:
    - GET {s.health}
  gates:
    max_error_rate: 0.1%
    min_requests: 200             # fewer: insufficient-data, never a pass

shift:
  steps:                          # weights strictly increase and end at 100
    - {{weight: 10, bake: 10m}}
    - {{weight: 25, bake: 10m}}
    - {{weight: 50, bake: 15m}}
    - {{weight: 100, bake: 30m, approval: required}}
  on_failure: rollback
  on_inconclusive: extend
  drill: true                     # after the first step: a timed rollback, then re-advance

monitor:
  window: 48h                     # reverse sync keeps blue current: rollback stays lossless

finalize:
  approvals: [tech-lead]          # pgshift approve cutover.yaml --as tech-lead
  remove_capture: true
"""


def _dump(header: str, *docs: dict[str, Any]) -> str:
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


def compose_blue(s: Setup) -> str:
    """``docker-compose.blue.yml``: the app on SQLite with the live file's directory."""
    data_dir = str(s.sqlite.parent)
    doc = {"name": f"{s.name}-blue", "services": {"app": {
        "image": s.image,
        "restart": "unless-stopped",
        "environment": {"DB_ENGINE": "sqlite", "SQLITE_PATH": f"/data/{s.sqlite.name}"},
        "volumes": [{"type": "bind", "source": data_dir, "target": "/data"}],
        "ports": [f"{_port(s.blue_url, s.app_port)}:{s.app_port}"]}}}
    return _dump(f"docker-compose.blue.yml -- written by `pgshift init` for {s.name}.\n"
                 "Blue: the app as it runs today, on the live SQLite file (WAL mode).\n"
                 f"pgshift reads {s.sqlite} on this host: keep the bind mount.", doc)


def compose_green(s: Setup) -> str:
    """``docker-compose.green.yml``: the app on PostgreSQL, with a ``postgres`` service."""
    db = s.name.replace("-", "_").replace(".", "_")
    doc = {"name": f"{s.name}-green", "services": {
        "postgres": {
            "image": "postgres:15",
            "restart": "unless-stopped",
            "environment": {"POSTGRES_DB": db, "POSTGRES_USER": db,
                            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"},
            "volumes": ["pgdata:/var/lib/postgresql/data"],
            "healthcheck": {"test": ["CMD-SHELL", f"pg_isready -U {db} -d {db}"],
                            "interval": "5s", "timeout": "5s", "retries": 12,
                            "start_period": "10s"}},
        "app": {
            "image": s.image,
            "restart": "unless-stopped",
            "environment": {"DB_ENGINE": "postgres",
                            s.dsn_var: f"${{{s.dsn_var}:?set {s.dsn_var}}}"},
            "depends_on": {"postgres": {"condition": "service_healthy"}},
            "ports": [f"{_port(s.green_url, s.app_port)}:{s.app_port}"]}},
        "volumes": {"pgdata": {}}}
    return _dump(f"docker-compose.green.yml -- written by `pgshift init` for {s.name}.\n"
                 "Green: the same app with DB_ENGINE=postgres. POSTGRES_PASSWORD and\n"
                 f"{s.dsn_var} come from the environment (or an .env file), never this file.",
                 doc)


def k8s_manifests(s: Setup) -> dict[str, str]:
    """``k8s/blue.yaml``, ``k8s/green.yaml``, ``k8s/route.yaml``: Deployments, Services,
    probes on the health path, and an HTTPRoute whose weights the gateway router moves."""
    probe = {"httpGet": {"path": s.health, "port": "http"}, "periodSeconds": 5,
             "failureThreshold": 3}

    def deployment(side: str, env: list[dict[str, Any]], volumes: bool) -> dict[str, Any]:
        labels = {"app": s.name, "side": side}
        container: dict[str, Any] = {
            "name": "app", "image": s.image,
            "ports": [{"name": "http", "containerPort": s.app_port}],
            "env": env, "readinessProbe": probe,
            "livenessProbe": {**probe, "initialDelaySeconds": 10}}
        spec: dict[str, Any] = {"containers": [container]}
        if volumes:
            container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
            spec["volumes"] = [{"name": "data", "persistentVolumeClaim":
                                {"claimName": f"{s.name}-data"}}]
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": f"{s.name}-{side}", "namespace": s.namespace,
                             "labels": labels},
                "spec": {"replicas": 1,
                         # SQLite has one writer: never two blue pods on the file
                         "strategy": {"type": "Recreate"} if volumes else
                         {"type": "RollingUpdate"},
                         "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": spec}}}

    def service(side: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": f"{s.name}-{side}", "namespace": s.namespace},
                "spec": {"selector": {"app": s.name, "side": side},
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}

    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": f"{s.name}-data", "namespace": s.namespace},
           "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "10Gi"}}}}
    blue_env = [{"name": "DB_ENGINE", "value": "sqlite"},
                {"name": "SQLITE_PATH", "value": f"/data/{s.sqlite.name}"}]
    green_env: list[dict[str, Any]] = [{"name": "DB_ENGINE", "value": "postgres"},
                 {"name": s.dsn_var, "valueFrom": {"secretKeyRef": {
                     "name": f"{s.name}-db", "key": "url"}}}]
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": s.name, "namespace": s.namespace},
             "spec": {"parentRefs": [{"name": s.gateway}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                 "backendRefs": [
                                     {"name": f"{s.name}-blue", "port": 80, "weight": 100},
                                     {"name": f"{s.name}-green", "port": 80, "weight": 0}]}]}}
    head = f"written by `pgshift init` for {s.name}; namespace {s.namespace}.\n"
    return {
        "k8s/blue.yaml": _dump("k8s/blue.yaml -- " + head + "Blue: the app on SQLite, one pod "
                               "(Recreate) on its volume.", pvc,
                               deployment("blue", blue_env, True), service("blue")),
        "k8s/green.yaml": _dump("k8s/green.yaml -- " + head + f"Green: DB_ENGINE=postgres; "
                                f"{s.dsn_var} from the Secret {s.name}-db (key url):\n"
                                f"  kubectl -n {s.namespace} create secret generic "
                                f"{s.name}-db --from-literal=url=postgresql://...",
                                deployment("green", green_env, False), service("green")),
        "k8s/route.yaml": _dump("k8s/route.yaml -- " + head + "All traffic on blue; pgshift "
                                "moves the weights (router kind gateway).", route),
    }


def systemd_unit(s: Setup) -> str:
    """``<name>-green.service``: green as a systemd unit (the command is the user's)."""
    return f"""# {s.name}-green.service -- written by `pgshift init`. Install it with
#   cp {s.name}-green.service /etc/systemd/system/ && systemctl daemon-reload
# The environment file holds {s.dsn_var} (mode 0600); never put it in this unit.
[Unit]
Description={s.name} (green: DB_ENGINE=postgres)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=DB_ENGINE=postgres
Environment=PORT={_port(s.green_url, s.app_port)}
EnvironmentFile=/etc/{s.name}/green.env
# CHANGE ME: the command that starts your app
ExecStart=/usr/bin/env {s.name}
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def haproxy_files(s: Setup, *, map_file: str = HAPROXY_MAP) -> dict[str, str]:
    """``haproxy.cfg`` (the traffic module's own renderer) and its initial ``pgshift.map``
    (no green traffic, blue the system of record)."""
    settings = settings_from_cli(blue=s.blue_url, green=s.green_url, listen=s.listen,
                                 socket_path=HAPROXY_SOCKET, map_file=map_file,
                                 health_path=s.health)
    return {"haproxy.cfg": render_config(settings), "pgshift.map": render_map(0, "blue")}


def templates(s: Setup) -> dict[str, str]:
    """Every deploy/router template for the setup, by relative path (not the cutover file)."""
    out: dict[str, str] = {}
    if s.deploy == "compose":
        out["docker-compose.blue.yml"] = compose_blue(s)
        out["docker-compose.green.yml"] = compose_green(s)
    elif s.deploy == "kubernetes":
        out.update(k8s_manifests(s))
    elif s.deploy == "systemd":
        out[f"{s.name}-green.service"] = systemd_unit(s)
    if s.router == "haproxy":
        out.update(haproxy_files(s))
    elif s.router == "gateway" and s.deploy != "kubernetes":
        out["k8s/route.yaml"] = k8s_manifests(s)["k8s/route.yaml"]
    return out
