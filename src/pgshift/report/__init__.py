"""The deployment report (runbook section 5.10) from a rollout's journal and audit trail."""

from pgshift.report.build import Report, load_facts, make_report, render
from pgshift.report.facts import ReportFacts

__all__ = ["Report", "ReportFacts", "load_facts", "make_report", "render"]
