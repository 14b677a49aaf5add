"""The deployment report as Markdown (the runbook's 5.10 template, filled)."""

from __future__ import annotations

from pgshift.report.content import Section, Table
from pgshift.report.facts import ReportFacts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(t: Table) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in t.header) + " |",
           "|" + "---|" * len(t.header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return [*out, ""]


def render(facts: ReportFacts, sections: list[Section], title: str) -> str:
    """Markdown text of the report (or of one operational document)."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [f"- **{label}**: {value}" for label, value in s.items]
        lines += [f"- {b}" for b in s.bullets]
        if s.items or s.bullets:
            lines.append("")
        for t in s.tables:
            lines += table(t)
        if s.code:
            lines += [f"```{s.code_lang}", s.code, "```", ""]
    lines.append(f"_From the journal and audit trail in `{facts.state_dir}`._")
    return "\n".join(lines) + "\n"
