"""Analysis gates: judge one traffic step from green's and blue's figures in the same window.

A gate answers ``pass``, ``fail`` or ``inconclusive``, with one ``Check`` per rule so the
journal and the report can say why. Too little traffic is *inconclusive*, never a pass.

Rules (``GateThresholds``):

- minimum sample size: green must have answered ``min_requests`` requests in the window;
- error-rate ceiling: green's (5xx + connection errors) / requests above ``max_error_rate``
  fails;
- error-rate comparison: green worse than blue by a one-sided Fisher exact test at
  ``alpha`` fails (only when blue has enough traffic to compare with);
- latency ceiling: green's p99 above ``max_p99_ms`` fails;
- latency ratio: green's p99 over blue's above ``max_p99_ratio`` *and* green's latencies
  stochastically larger than blue's (one-sided Mann-Whitney U on the two histograms, tie
  corrected) at ``alpha`` fails. The ratio alone is noisy at small samples; the test alone
  flags differences too small to matter.

``SustainedRule`` covers triggers such as "error rate above 5 % for 10 minutes" or
"unavailable for 5 minutes" over a series of samples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy import stats

from pgshift.durations import EXAMPLES, seconds
from pgshift.errors import UsageError
from pgshift.traffic.router import BackendFigures, Figures

Outcome = Literal["pass", "fail", "inconclusive", "skipped"]
Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class GateThresholds:
    max_error_rate: float = 0.001
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = 1.5
    min_requests: int = 200
    alpha: float = 0.01


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    observed: float | None
    threshold: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": self.outcome, "observed": self.observed,
                "threshold": self.threshold, "detail": self.detail}


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> list[str]:
        """The checks that decided a non-pass verdict, as one line each."""
        return [f"{c.name}: {c.detail}" for c in self.checks if c.outcome == self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [c.to_dict() for c in self.checks]}


def judge(figures: Figures, thresholds: GateThresholds | None = None) -> GateResult:
    """Judge green against its ceilings and against blue over the same window."""
    t = thresholds or GateThresholds()
    g, b = figures.green, figures.blue
    checks: list[Check] = []
    if g.requests < t.min_requests:
        checks.append(Check("sample size", "inconclusive", g.requests, t.min_requests,
                            f"green answered {g.requests} requests, {t.min_requests} needed"))
        return GateResult("inconclusive", tuple(checks))
    checks.append(Check("sample size", "pass", g.requests, t.min_requests,
                        f"green answered {g.requests} requests"))
    rate = g.errors / g.requests
    checks.append(Check(
        "error rate", "fail" if rate > t.max_error_rate else "pass", rate, t.max_error_rate,
        f"green {g.errors}/{g.requests} = {rate:.4%} (ceiling {t.max_error_rate:.4%})"))
    comparable = b.requests >= t.min_requests
    checks.append(_compare_errors(g, b, t.alpha) if comparable else Check(
        "error rate vs blue", "skipped", None, None,
        f"blue answered {b.requests} requests, too few to compare"))
    checks.extend(_latency_checks(g, b, t, comparable))
    outcomes = {c.outcome for c in checks}
    verdict: Verdict = ("fail" if "fail" in outcomes else
                        "inconclusive" if "inconclusive" in outcomes else "pass")
    return GateResult(verdict, tuple(checks))


def _compare_errors(g: BackendFigures, b: BackendFigures, alpha: float) -> Check:
    table = [[g.errors, g.requests - g.errors], [b.errors, b.requests - b.errors]]
    p = 1.0 if g.errors == 0 else float(stats.fisher_exact(table, alternative="greater").pvalue)
    rg, rb = g.errors / g.requests, b.errors / b.requests
    worse = p < alpha
    return Check("error rate vs blue", "fail" if worse else "pass", p, alpha,
                 f"green {rg:.4%} vs blue {rb:.4%}, one-sided Fisher p={p:.3g}")


def _latency_checks(g: BackendFigures, b: BackendFigures, t: GateThresholds,
                    comparable: bool) -> list[Check]:
    out: list[Check] = []
    g99 = g.p99 if g.samples else None
    if t.max_p99_ms is not None:
        if g99 is None:
            out.append(Check("p99 latency", "inconclusive", None, t.max_p99_ms,
                             "the router reports no latency distribution for green"))
        else:
            out.append(Check("p99 latency", "fail" if g99 > t.max_p99_ms else "pass", g99,
                             t.max_p99_ms, f"green p99 {g99:.1f} ms "
                                           f"(ceiling {t.max_p99_ms:.1f} ms)"))
    if t.max_p99_ratio is not None:
        b99 = b.p99 if b.samples else None
        if not comparable or g99 is None or b99 is None or not b.samples:
            out.append(Check("p99 ratio vs blue", "skipped", None, t.max_p99_ratio,
                             "no latency distribution on both sides to compare"))
        else:
            ratio = g99 / b99 if b99 > 0 else math.inf
            p = mann_whitney_greater(g.latency_buckets, b.latency_buckets)
            slower = ratio > t.max_p99_ratio and p < t.alpha
            out.append(Check("p99 ratio vs blue", "fail" if slower else "pass", ratio,
                             t.max_p99_ratio,
                             f"green p99 {g99:.1f} ms / blue {b99:.1f} ms = {ratio:.2f}; "
                             f"one-sided Mann-Whitney p={p:.3g}"))
    return out


def mann_whitney_greater(x: Sequence[int], y: Sequence[int]) -> float:
    """One-sided p-value that samples binned as histogram ``x`` are larger than ``y``'s.

    Mann-Whitney U with every bin a tie group (normal approximation with tie correction),
    computed from the counts directly: no need to expand millions of samples.
    """
    n1, n2 = sum(x), sum(y)
    if n1 == 0 or n2 == 0:
        return 1.0
    u = 0.0
    below = 0
    for cx, cy in zip(x, y, strict=True):
        u += cx * (below + 0.5 * cy)
        below += cy
    n = n1 + n2
    ties = sum((cx + cy) ** 3 - (cx + cy) for cx, cy in zip(x, y, strict=True))
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)  # continuity correction
    return float(stats.norm.sf(z))


# -- sustained triggers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One observation of a backend: counts over a short interval ending at ``ts``."""

    ts: float
    requests: int
    errors: int
    healthy: bool | None = None  # the router's health verdict, when it has one

    @classmethod
    def of(cls, ts: float, f: BackendFigures, healthy: bool | None = None) -> Sample:
        return cls(ts, f.requests, f.errors, healthy)


_RULE = re.compile(
    r"^\s*(?:(?P<metric>error[_ ]rate)\s*(?P<op>>=|>)\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<pct>%)?"
    r"|(?P<unavailable>unavailable))\s+for\s+(?P<duration>.+?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """A rule's duration (the grammar of :mod:`pgshift.durations`); ``UsageError``."""
    try:
        return seconds(text)
    except ValueError:
        raise UsageError(f"bad duration {text!r}", hint=f"use e.g. {EXAMPLES}") from None


@dataclass(frozen=True)
class SustainedRule:
    """A condition that must hold over a continuous stretch of samples to trigger.

    ``metric``: ``error_rate`` (errors/requests of a sample above ``threshold``; samples
    without requests break the stretch) or ``unavailable`` (a sample that is down: health
    says so, or every request failed). Samples further apart than ``max_gap`` seconds
    break the stretch: missing data never triggers a rollback on its own.
    """

    metric: Literal["error_rate", "unavailable"]
    duration: float
    threshold: float = 0.0
    inclusive: bool = False
    max_gap: float = 120.0
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> SustainedRule:
        """``"error rate > 5% for 10m"``, ``"error_rate >= 0.05 for 600s"``,
        ``"unavailable for 5m"``."""
        m = _RULE.match(text)
        if not m:
            raise UsageError(f"cannot read rule {text!r}",
                             hint="e.g. 'error rate > 5% for 10m' or 'unavailable for 5m'")
        duration = parse_duration(m["duration"])
        if m["unavailable"]:
            return cls("unavailable", duration, text=text.strip())
        value = float(m["value"]) / (100.0 if m["pct"] else 1.0)
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"error rate threshold must be 0..100 %, got {m['value']}",
                             hint="e.g. 'error rate > 5% for 10m'")
        return cls("error_rate", duration, value, m["op"] == ">=", text=text.strip())

    def _bad(self, s: Sample) -> bool:
        if self.metric == "unavailable":
            if s.healthy is not None:
                return not s.healthy
            return s.requests > 0 and s.errors >= s.requests
        if s.requests == 0:
            return False
        rate = s.errors / s.requests
        return rate >= self.threshold if self.inclusive else rate > self.threshold

    def triggered(self, samples: Sequence[Sample]) -> bool:
        """True when the newest samples satisfy the condition for at least ``duration``."""
        return self.streak(samples) >= self.duration

    def streak(self, samples: Sequence[Sample]) -> float:
        """Seconds the condition has held, counting back from the newest sample."""
        ordered = sorted(samples, key=lambda s: s.ts)
        if not ordered or not self._bad(ordered[-1]):
            return 0.0
        start = ordered[-1].ts
        for prev, cur in zip(reversed(ordered[:-1]), reversed(ordered), strict=False):
            if cur.ts - prev.ts > self.max_gap or not self._bad(prev):
                break
            start = prev.ts
        return ordered[-1].ts - start


__all__ = [
    "Check",
    "GateResult",
    "GateThresholds",
    "Sample",
    "SustainedRule",
    "judge",
    "mann_whitney_greater",
    "parse_duration",
]
