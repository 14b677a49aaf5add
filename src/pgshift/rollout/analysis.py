"""Judge one traffic step: pass, fail, inconclusive or insufficient-data.

A step passes only on positive evidence (Argo Rollouts #3850/#4479, Kayenta's NODATA
pass): green must have answered ``min_requests`` requests in the window (else
*insufficient-data*), and the one-sided upper confidence bound (Clopper-Pearson) of its
error rate must be at or under ``max_error_rate``. Zero errors in 450 requests bound the
rate near 0.66 % at 95 %: such a step cannot show it is under 0.1 %, so it is
*inconclusive*, not a pass. A step fails when the lower bound is above the ceiling (the
rate is over it with that confidence), when green is worse than blue by a one-sided
Fisher test, or on the latency rules of :mod:`pgshift.health.gates` (p99 ceiling; p99
ratio to blue confirmed by a Mann-Whitney test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy import stats

from pgshift.health.gates import Check, GateThresholds, Outcome, judge
from pgshift.rollout.config import Gates
from pgshift.traffic.router import BackendFigures, Figures

Verdict = Literal["pass", "fail", "inconclusive", "insufficient-data"]


def error_bounds(errors: int, requests: int, confidence: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds (lower, upper) of an error rate at ``confidence``."""
    if requests <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    lower = 0.0 if errors == 0 else float(stats.beta.ppf(alpha, errors, requests - errors + 1))
    upper = 1.0 if errors >= requests else float(
        stats.beta.ppf(1 - alpha, errors + 1, requests - errors))
    return lower, upper


def requests_needed(max_error_rate: float, confidence: float) -> int:
    """Requests without an error that bring the upper bound under ``max_error_rate``."""
    if max_error_rate <= 0:
        return 2**31
    # (1 - p)^n <= alpha  ->  n >= ln(alpha) / ln(1 - p)
    return math.ceil(math.log(1 - confidence) / math.log(1 - max_error_rate))


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    checks: tuple[Check, ...]
    green: dict[str, Any] = field(default_factory=dict)
    blue: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        want = "inconclusive" if self.verdict == "insufficient-data" else self.verdict
        return [f"{c.name}: {c.detail}" for c in self.checks if c.outcome == want]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [c.to_dict() for c in self.checks],
                "green": self.green, "blue": self.blue}


def _side(f: BackendFigures, confidence: float) -> dict[str, Any]:
    lower, upper = error_bounds(f.errors, f.requests, confidence)
    return {"requests": f.requests, "errors": f.errors,
            "error_rate": round(f.errors / f.requests, 6) if f.requests else None,
            "error_rate_upper": round(upper, 6), "error_rate_lower": round(lower, 6),
            "p50_ms": f.p50, "p99_ms": f.p99}


def analyse(figures: Figures, gates: Gates) -> Analysis:
    """The verdict on one step's window (green vs its ceilings and vs blue)."""
    g, b = figures.green, figures.blue
    sides = {"green": _side(g, gates.confidence), "blue": _side(b, gates.confidence)}
    if g.requests < gates.min_requests:
        check = Check("sample size", "inconclusive", g.requests, gates.min_requests,
                      f"green answered {g.requests} requests in the window, "
                      f"{gates.min_requests} needed")
        return Analysis("insufficient-data", (check,), **sides)
    base = judge(figures, GateThresholds(max_error_rate=1.0, max_p99_ms=gates.max_p99_ms,
                                         max_p99_ratio=gates.max_p99_ratio,
                                         min_requests=gates.min_requests,
                                         alpha=1.0 - gates.confidence))
    checks = [c for c in base.checks if c.name != "error rate"]
    lower, upper = sides["green"]["error_rate_lower"], sides["green"]["error_rate_upper"]
    ceiling = gates.max_error_rate
    pct = f"{gates.confidence:.0%}"
    outcome: Outcome
    if lower > ceiling:
        outcome, why = "fail", f"above the ceiling with {pct} confidence (lower bound {lower:.4%})"
    elif upper <= ceiling:
        outcome, why = "pass", f"under the ceiling with {pct} confidence (upper bound {upper:.4%})"
    else:
        need = requests_needed(ceiling, gates.confidence)
        outcome, why = "inconclusive", (
            f"upper bound {upper:.4%} is above the ceiling: not enough evidence either way "
            f"(zero errors would need {need:,} requests)")
    checks.insert(1, Check("error rate", outcome, upper, ceiling,
                           f"green {g.errors}/{g.requests}; {why}"))
    outcomes = {c.outcome for c in checks}
    verdict: Verdict = ("fail" if "fail" in outcomes else
                        "inconclusive" if "inconclusive" in outcomes else "pass")
    return Analysis(verdict, tuple(checks), **sides)
