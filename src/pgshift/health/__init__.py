"""Health: analysis gates that judge a traffic step from a router's figures."""

from pgshift.health.gates import GateResult, GateThresholds, Sample, SustainedRule, judge

__all__ = ["GateResult", "GateThresholds", "Sample", "SustainedRule", "judge"]
