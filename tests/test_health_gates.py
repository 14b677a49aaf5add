"""Analysis gates on hand-made figures: no router needed."""

from __future__ import annotations

import random

import pytest
from scipy import stats

from pgshift.errors import UsageError
from pgshift.health.gates import (
    GateThresholds,
    Sample,
    SustainedRule,
    judge,
    mann_whitney_greater,
    parse_duration,
)
from pgshift.traffic.router import LATENCY_BUCKETS_MS, BackendFigures, Figures, bucket_index


def figs(n: int, errors: int = 0, ms: float = 10.0, jitter: float = 2.0, seed: int = 1,
         conn: int = 0) -> BackendFigures:
    rng = random.Random(seed)
    return BackendFigures.from_latencies([max(0.1, rng.gauss(ms, jitter)) for _ in range(n)],
                                         errors5xx=errors, connection_errors=conn)


def window(green: BackendFigures, blue: BackendFigures) -> Figures:
    return Figures(window=60, blue=blue, green=green)


def outcome(result, name: str) -> str:
    return next(c.outcome for c in result.checks if c.name == name)


def test_healthy_green_passes() -> None:
    r = judge(window(figs(5000, seed=1), figs(5000, seed=2)))
    assert r.verdict == "pass", r.to_dict()
    assert {c.outcome for c in r.checks} == {"pass"}


def test_too_little_traffic_is_inconclusive_never_pass() -> None:
    r = judge(window(figs(50), figs(5000)), GateThresholds(min_requests=200))
    assert r.verdict == "inconclusive"
    assert "50 requests" in r.reasons[0]


def test_error_ceiling_fails() -> None:
    r = judge(window(figs(2000, errors=10), figs(2000)), GateThresholds(max_error_rate=0.001))
    assert r.verdict == "fail"
    assert outcome(r, "error rate") == "fail"
    assert outcome(r, "error rate vs blue") == "fail"


def test_connection_errors_count_as_errors() -> None:
    g = figs(2000, conn=30)
    assert g.errors == 30 and g.requests == 2030
    assert judge(window(g, figs(2000))).verdict == "fail"


def test_error_comparison_needs_significance() -> None:
    t = GateThresholds(max_error_rate=0.05)  # ceiling out of the way
    same = judge(window(figs(1000, errors=5), figs(1000, errors=4)), t)
    assert outcome(same, "error rate vs blue") == "pass"
    worse = judge(window(figs(1000, errors=30), figs(1000, errors=3)), t)
    assert outcome(worse, "error rate vs blue") == "fail"


def test_comparison_skipped_without_blue_traffic() -> None:
    r = judge(window(figs(1000), BackendFigures()))
    assert outcome(r, "error rate vs blue") == "skipped"
    assert outcome(r, "p99 ratio vs blue") == "skipped"
    assert r.verdict == "pass"


def test_latency_ceiling() -> None:
    t = GateThresholds(max_p99_ms=50)
    assert judge(window(figs(1000, ms=20), figs(1000, ms=20)), t).verdict == "pass"
    slow = judge(window(figs(1000, ms=80), figs(1000, ms=20)), t)
    assert outcome(slow, "p99 latency") == "fail"


def test_latency_ratio_needs_both_ratio_and_significance() -> None:
    t = GateThresholds(max_p99_ratio=1.5)
    slower = judge(window(figs(2000, ms=40, jitter=5), figs(2000, ms=10, jitter=2)), t)
    assert outcome(slower, "p99 ratio vs blue") == "fail"
    close = judge(window(figs(2000, ms=11, jitter=2), figs(2000, ms=10, jitter=2)), t)
    assert outcome(close, "p99 ratio vs blue") == "pass"


def test_no_latency_distribution_is_inconclusive_for_a_latency_ceiling() -> None:
    g = BackendFigures(requests=1000, status={"2xx": 1000, "3xx": 0, "4xx": 0, "5xx": 0},
                       mean_ms=12.0)  # what HAProxy's show stat gives
    r = judge(window(g, g), GateThresholds(max_p99_ms=100))
    assert outcome(r, "p99 latency") == "inconclusive"
    assert r.verdict == "inconclusive"


@pytest.mark.parametrize("shift", [0.0, 1.0, 3.0])
def test_histogram_mann_whitney_matches_scipy(shift: float) -> None:
    rng = random.Random(7)
    xs = [rng.lognormvariate(2.3, 0.5) + shift for _ in range(400)]
    ys = [rng.lognormvariate(2.3, 0.5) for _ in range(500)]
    hx = [0] * len(LATENCY_BUCKETS_MS)
    hy = [0] * len(LATENCY_BUCKETS_MS)
    for v in xs:
        hx[bucket_index(v)] += 1
    for v in ys:
        hy[bucket_index(v)] += 1
    # scipy on the binned values (bin index = the value): same ties, same answer
    bx = [i for i, n in enumerate(hx) for _ in range(n)]
    by = [i for i, n in enumerate(hy) for _ in range(n)]
    expected = stats.mannwhitneyu(bx, by, alternative="greater", method="asymptotic").pvalue
    assert mann_whitney_greater(hx, hy) == pytest.approx(expected, rel=1e-6)


def test_percentiles_interpolate_in_buckets() -> None:
    f = BackendFigures.from_latencies([4.0] * 100)
    assert 3.0 < f.p50 <= 5.0  # type: ignore[operator]
    assert BackendFigures().p99 is None


def test_figures_round_trip_through_json_dicts() -> None:
    f = window(figs(300, errors=2), figs(100, conn=1))
    assert Figures.from_dict(f.to_dict()) == f


# -- sustained rules -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "metric", "duration", "threshold"), [
    ("error rate > 5% for 10m", "error_rate", 600, 0.05),
    ("error_rate >= 0.02 for 90s", "error_rate", 90, 0.02),
    ("unavailable for 5m", "unavailable", 300, 0.0),
    ("Unavailable for 1h", "unavailable", 3600, 0.0),
])
def test_rules_parse(text: str, metric: str, duration: float, threshold: float) -> None:
    rule = SustainedRule.parse(text)
    assert (rule.metric, rule.duration, rule.threshold) == (metric, duration, threshold)


@pytest.mark.parametrize("text", ["error rate > 5 for 10m", "latency > 3 for 1m",
                                  "unavailable for ever", "error rate > 5%"])
def test_bad_rules_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        SustainedRule.parse(text)


def test_parse_duration() -> None:
    assert parse_duration("2m") == 120 and parse_duration("45") == 45


def _series(rates: list[float], step: float = 60.0, n: int = 1000) -> list[Sample]:
    return [Sample(i * step, n, round(r * n)) for i, r in enumerate(rates)]


def test_error_rate_rule_needs_the_whole_stretch() -> None:
    rule = SustainedRule.parse("error rate > 5% for 10m")
    high = [0.08] * 11  # 11 one-minute samples span 10 minutes
    assert rule.triggered(_series([0.0] * 3 + high))
    assert not rule.triggered(_series([0.0] * 3 + high[:10]))  # 9 minutes only
    broken = [0.08] * 5 + [0.01] + [0.08] * 5
    assert not rule.triggered(_series(broken))
    assert not rule.triggered(_series([*high, 0.0]))  # it recovered


def test_gaps_and_idle_samples_never_trigger() -> None:
    rule = SustainedRule.parse("error rate > 5% for 10m")
    gappy = [Sample(t, 100, 50) for t in (0, 60, 400, 460, 520, 580, 640)]
    assert not rule.triggered(gappy)  # 340 s without data breaks the stretch
    idle = [Sample(i * 60.0, 0, 0) for i in range(20)]
    assert not rule.triggered(idle)


def test_unavailable_rule_uses_health_or_total_failure() -> None:
    rule = SustainedRule.parse("unavailable for 5m")
    down = [Sample(i * 30.0, 0, 0, healthy=False) for i in range(11)]
    assert rule.triggered(down) and rule.streak(down) == 300
    failing = [Sample(i * 30.0, 10, 10) for i in range(11)]
    assert rule.triggered(failing)
    partial = [Sample(i * 30.0, 10, 9) for i in range(11)]
    assert not rule.triggered(partial)
