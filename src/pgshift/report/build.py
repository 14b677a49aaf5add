"""``pgshift report``: the deployment report of a cutover, from its state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pgshift.report import content, html, markdown
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

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "output": self.output, "status": self.facts.status,
                "facts": self.facts.to_dict()}


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
                  approvals_required=list(cfg.finalize.approvals))
    return read_facts(StateDir.for_name(base, cfg.name), setup, cfg.name)


def render(facts: ReportFacts, fmt: Format = "md") -> str:
    """The report text in ``md`` or ``html`` (one self-contained file)."""
    sections = content.build(facts)
    return html.render(facts, sections) if fmt == "html" else markdown.render(facts, sections)


def make_report(cutover: Path, fmt: Format = "md", output: Path | None = None) -> Report:
    """Render the report; written atomically to ``output`` when given."""
    facts = load_facts(cutover)
    text = render(facts, fmt)
    if output is not None:
        atomic_write(output, text)
    return Report(fmt, text, facts, str(output) if output else None)
