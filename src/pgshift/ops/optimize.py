"""``pgshift optimize``: indexes from real usage, built without blocking writers; tuning.

One call reads the statistics (see :mod:`pgshift.ops.usage`), judges a file of planned
indexes (see :mod:`pgshift.ops.planned`), and with ``apply`` builds everything
proposed concurrently (see :mod:`pgshift.ops.index_build`), timing a representative
query before and after each build. The post-go-live tuning report
(:mod:`pgshift.ops.tuning`) comes with every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pgshift.dsn import Dsn, connect
from pgshift.errors import TargetError, UsageError
from pgshift.ops.index_build import BuildOutcome, build, probe_query, run_probe
from pgshift.ops.planned import PlannedIndex, check_planned
from pgshift.ops.server import Finding, server_info
from pgshift.ops.tuning import tuning_findings
from pgshift.ops.usage import (
    IndexProposal,
    QueryStat,
    foreign_key_proposals,
    has_pg_stat_statements,
    seq_scan_proposals,
    top_statements,
    unused_index_findings,
)

# Tables smaller than this are read faster by a sequential scan than through an index.
DEFAULT_MIN_ROWS = 10_000


@dataclass
class OptimizeResult:
    """Proposals and why, the planned file's verdicts, what was built, the tuning report."""

    database: str
    pg_stat_statements: bool
    proposals: list[IndexProposal]
    planned: list[PlannedIndex]
    findings: list[Finding]
    applied: bool
    builds: list[BuildOutcome] = field(default_factory=list)
    top_queries: list[QueryStat] = field(default_factory=list)

    @property
    def refused(self) -> list[PlannedIndex]:
        return [p for p in self.planned if p.refused]

    @property
    def failed(self) -> list[BuildOutcome]:
        return [b for b in self.builds if b.status == "failed"]

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "pg_stat_statements": self.pg_stat_statements,
                "applied": self.applied, "proposals": [p.to_dict() for p in self.proposals],
                "planned": [p.to_dict() for p in self.planned],
                "findings": [f.to_dict() for f in self.findings],
                "builds": [b.to_dict() for b in self.builds],
                "top_queries": [q.to_dict() for q in self.top_queries[:10]]}


def optimize(dsn: Dsn, *, apply: bool = False, planned_sql: Path | None = None,
             schema: str = "public", min_rows: int = DEFAULT_MIN_ROWS,
             lock_timeout: str = "5s", app_instances: int | None = None,
             pool_size: int | None = None, auto: bool = True) -> OptimizeResult:
    """Propose indexes (and with ``apply``, build them concurrently); report tuning.

    ``planned_sql`` is a file of named CREATE INDEX statements; a statement PostgreSQL
    would refuse (e.g. a predicate that is not IMMUTABLE) is refused here with an
    explanation and, where one exists, a checked alternative, and then nothing at all
    is built. ``auto=False`` builds only the planned file. ``lock_timeout`` bounds every
    wait for a lock. A build that fails is cleaned up (its INVALID index dropped) and
    reported in ``result.failed``; the others still run.

    Raises UsageError (exit 2) for a bad file or a missing privilege, ConnectError for
    an unreachable server.
    """
    with connect(dsn, autocommit=True, application_name="pgshift-optimize") as conn:
        statements = has_pg_stat_statements(conn)
        top = top_statements(conn) if statements else []
        proposals: list[IndexProposal] = []
        findings: list[Finding] = []
        if auto:
            proposals, findings = seq_scan_proposals(conn, schema, min_rows, top)
            names = {p.name for p in proposals}
            proposals += [p for p in foreign_key_proposals(conn, schema, min_rows)
                          if p.name not in names]
            findings += unused_index_findings(conn, schema)
        planned = check_planned(conn, planned_sql, schema) if planned_sql else []
        planned_ok = [p.proposal for p in planned if p.proposal is not None]
        info = server_info(conn)
        planned_pools = app_instances * pool_size if app_instances and pool_size else None
        findings += tuning_findings(conn, info, schema, planned_pools)
        if not statements:
            findings.append(Finding("setting", "pg_stat_statements",
                                    "the extension is not installed in this database: "
                                    "proposals come from table statistics only",
                                    "CREATE EXTENSION pg_stat_statements"))
        result = OptimizeResult(str(conn.info.dbname), statements, proposals, planned, findings,
                                applied=False, top_queries=top)
        if apply and not result.refused:
            result.applied = True
            for proposal in [*proposals, *planned_ok]:
                result.builds.append(_build_with_probes(conn, proposal, lock_timeout))
    return result


def _build_with_probes(conn: psycopg.Connection, proposal: IndexProposal,
                       lock_timeout: str) -> BuildOutcome:
    try:
        probe = probe_query(conn, proposal)
        before = run_probe(conn, probe) if probe is not None else None
        outcome = build(conn, proposal, lock_timeout)
        if probe is not None and outcome.status == "built":
            outcome.after = run_probe(conn, probe)
        outcome.before = before
    except psycopg.errors.InsufficientPrivilege as exc:
        raise UsageError(
            f"insufficient privilege to index {proposal.schema}.{proposal.table}: "
            f"{exc.diag.message_primary}",
            hint=f"run optimize as the table's owner (or a superuser): {proposal.definition()}",
            operation="optimize", table=proposal.table) from exc
    except psycopg.Error as exc:
        raise TargetError(f"optimize failed on {proposal.name}: {exc.diag.message_primary}",
                          operation="optimize", table=proposal.table) from exc
    return outcome
