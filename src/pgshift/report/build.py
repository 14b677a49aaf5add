"""``pgshift report``: the deployment report of a cutover, from its state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pgshift.dsn import redact
from pgshift.errors import UsageError
from pgshift.report import content, html, markdown
from pgshift.report.documents import DOCUMENTS
from pgshift.report.facts import ReportFacts, Setup, read_facts
from pgshift.rollout import config as cfgmod
from pgshift.state import StateDir, atomic_write

Format = Literal["md", "html"]


@dataclass(frozen=True)
class Report:
    format: str
    text: str
    facts: ReportFacts
    output: str | None = None
    document: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "document": self.document, "output": self.output,
                "status": self.facts.status, "facts": self.facts.to_dict()}


def load_facts(cutover: Path) -> ReportFacts:
    """Read the cutover file and its state directory (``.pgshift/<name>/``)."""
    cfg, base = cfgmod.load(cutover)
    setup = Setup(cutover=str(cutover), router=cfg.router.kind,
                  fence_mode=cfg.router.fence.mode,
                  planned_weights=[s.weight for s in cfg.shift.steps],
                  drill_configured=cfg.shift.drill,
                  rollback_drain_deadline_s=float(cfg.rollback.drain_deadline),
                  monitor_window_s=float(cfg.monitor.window),
                  monitor_interval_s=float(cfg.monitor.interval),
                  approvals_required=list(cfg.finalize.approvals),
                  sqlite=str(cfg.source.sqlite), target_dsn=redact(cfg.target.dsn),
                  blue_url=cfg.apps.blue.url, green_url=cfg.apps.green.url,
                  stop_blue=cfg.apps.blue.stop, stop_blue_workers=cfg.apps.blue.stop_workers,
                  archive_dest=cfg.finalize.archive.dest if cfg.finalize.archive else None,
                  remove_capture=cfg.finalize.remove_capture)
    return read_facts(StateDir.for_name(base, cfg.name), setup, cfg.name)


def check_document(document: str, cutover: str) -> str:
    """``document`` if it names one of :data:`DOCUMENTS`, else ``UsageError``."""
    if document not in DOCUMENTS:
        raise UsageError(f"--document {document}: expected one of {', '.join(DOCUMENTS)}",
                         hint=f"pgshift report {cutover} --document rollback")
    return document


def render(facts: ReportFacts, fmt: Format = "md", document: str | None = None) -> str:
    """The report text in ``md`` or ``html`` (one self-contained file); with ``document``
    (``rollback``, ``decommission``, ``incident``) that operational document alone."""
    if document is None:
        sections = [*content.build(facts), *(make(facts) for make in DOCUMENTS.values())]
        title = f"Production Deployment Report - PostgreSQL Migration ({facts.name})"
    else:
        sections = [DOCUMENTS[check_document(document, facts.setup.cutover)](facts)]
        title = f"{sections[0].title} ({facts.name})"
        sections[0].title = "As of " + content.when(facts.last_ts)
    if fmt == "html":
        return html.render(facts, sections, title)
    return markdown.render(facts, sections, title)


def make_report(cutover: Path, fmt: Format = "md", output: Path | None = None,
                document: str | None = None) -> Report:
    """Render the report (or one of its documents); written atomically to ``output``
    when given."""
    if document is not None:
        check_document(document, str(cutover))
    facts = load_facts(cutover)
    text = render(facts, fmt, document)
    if output is not None:
        atomic_write(output, text)
    return Report(fmt, text, facts, str(output) if output else None, document)
