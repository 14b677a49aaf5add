"""AWS Application Load Balancer router (optional extra: ``pip install pgshift[aws]``).

Verified against moto's server mode only (AWS is not reachable from where pgshift is
built): the tests check the API requests and the state they leave, not live traffic.

- Weight: the listener's default action is a weighted ``forward`` across the blue and
  green target groups (weights out of 1000, so 0.1 % resolution) with target-group
  stickiness. ALB has no hash-based cohorts: stickiness keeps a client on its group for
  ``stickiness_seconds``, after which it is re-drawn by weight -- sticky, but monotone
  only within the stickiness duration.
- Writes: an optional listener rule matching the mutating methods (``install_write_rule``)
  forwards to the system of record's group; ``set_system_of_record`` rewrites it.
- ``drain_to_blue`` forwards 100 % to blue *and disables stickiness*: clients stuck to
  green would otherwise keep going there.
- Figures come from CloudWatch (``AWS/ApplicationELB``, 1-minute periods): the newest
  minute is usually incomplete, so ``Figures.lag`` is 120 s and the engine must bake
  steps longer than that. Latency is the average ``TargetResponseTime`` (``mean_ms``),
  no histogram. ALB cannot hold requests: not a ``WriteFence``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pgshift.errors import UsageError
from pgshift.traffic.router import (
    STATUS_CLASSES,
    BackendFigures,
    Figures,
    RouterError,
    RouterUnreachable,
    Side,
    check_side,
    check_weight,
)

WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]
SCALE = 1000  # listener weights out of 1000 (ALB allows 0..999 per group; see _weights)


class AlbError(RouterError):
    """The AWS API refused a call (exit 6)."""


class AlbUnreachable(AlbError, RouterUnreachable):
    """The AWS API cannot be reached (exit 2)."""


def _weights(pct: float) -> tuple[int, int]:
    """(blue, green) ALB weights for a green percentage; each stays within 0..999."""
    green = round(pct * SCALE / 100)
    if green >= SCALE:
        return 0, 1
    if green <= 0:
        return 1, 0
    return SCALE - green, green


class AlbRouter:
    """``Router`` + ``WriteRouting`` over the elbv2 and CloudWatch APIs."""

    def __init__(self, listener_arn: str, blue_target_group: str, green_target_group: str, *,
                 write_rule_arn: str | None = None, stickiness_seconds: int = 3600,
                 elbv2: Any = None, cloudwatch: Any = None, region: str | None = None,
                 endpoint_url: str | None = None) -> None:
        try:
            import boto3
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise UsageError("the ALB router needs boto3", hint="pip install 'pgshift[aws]'"
                             ) from exc
        self.listener_arn = listener_arn
        self.tg = {"blue": blue_target_group, "green": green_target_group}
        self.write_rule_arn = write_rule_arn
        self.stickiness_seconds = stickiness_seconds
        kw = {"region_name": region, "endpoint_url": endpoint_url}
        self.elbv2 = elbv2 or boto3.client("elbv2", **kw)
        self.cloudwatch = cloudwatch or boto3.client("cloudwatch", **kw)

    def _call(self, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return fn(**kw)
        except EndpointConnectionError as exc:
            raise AlbUnreachable(f"AWS {fn.__name__}: {exc}", operation=fn.__name__,
                                 hint="check region= and endpoint= (--router-option)") from exc
        except (ClientError, BotoCoreError) as exc:
            raise AlbError(f"AWS {fn.__name__}: {exc}", operation=fn.__name__) from exc

    def _forward(self) -> dict[str, Any]:
        listener = self._call(self.elbv2.describe_listeners,
                              ListenerArns=[self.listener_arn])["Listeners"][0]
        for action in listener["DefaultActions"]:
            if action["Type"] == "forward":
                return dict(action.get("ForwardConfig") or {})
        raise AlbError(f"listener {self.listener_arn} has no forward action",
                       hint="create it with a weighted forward to both target groups")

    def _set_forward(self, blue: int, green: int, sticky: bool) -> None:
        config = {
            "TargetGroups": [{"TargetGroupArn": self.tg["blue"], "Weight": blue},
                             {"TargetGroupArn": self.tg["green"], "Weight": green}],
            "TargetGroupStickinessConfig": {"Enabled": sticky,
                                            **({"DurationSeconds": self.stickiness_seconds}
                                               if sticky else {})},
        }
        self._call(self.elbv2.modify_listener, ListenerArn=self.listener_arn,
                   DefaultActions=[{"Type": "forward", "ForwardConfig": config}])

    # -- Router ------------------------------------------------------------------------------

    def set_weight(self, pct: float) -> None:
        blue, green = _weights(check_weight(pct))
        self._set_forward(blue, green, sticky=True)

    def weight(self) -> float:
        groups = {g["TargetGroupArn"]: int(g.get("Weight", 0))
                  for g in self._forward().get("TargetGroups", [])}
        blue, green = groups.get(self.tg["blue"], 0), groups.get(self.tg["green"], 0)
        return round(100.0 * green / (blue + green), 2) if blue + green else 0.0

    def drain_to_blue(self) -> None:
        self._set_forward(1, 0, sticky=False)
        if self.write_rule_arn:
            self.set_system_of_record("blue")

    def figures(self, window: float) -> Figures:
        end = dt.datetime.now(dt.UTC)
        start = end - dt.timedelta(seconds=max(window, 60))
        lb = self._load_balancer_dimension()
        sides = {side: self._tg_figures(arn, lb, start, end) for side, arn in self.tg.items()}
        return Figures(window=window, blue=sides["blue"], green=sides["green"], lag=120.0,
                       source="aws-alb-cloudwatch")

    def _load_balancer_dimension(self) -> str:
        listener = self._call(self.elbv2.describe_listeners,
                              ListenerArns=[self.listener_arn])["Listeners"][0]
        return str(listener["LoadBalancerArn"].split(":loadbalancer/", 1)[1])

    def _metric(self, name: str, stat: str, dims: list[dict[str, str]], start: dt.datetime,
                end: dt.datetime) -> list[float]:
        out = self._call(self.cloudwatch.get_metric_statistics, Namespace="AWS/ApplicationELB",
                         MetricName=name, Dimensions=dims, StartTime=start, EndTime=end,
                         Period=60, Statistics=[stat])
        return [float(p[stat]) for p in out.get("Datapoints", [])]

    def _tg_figures(self, tg_arn: str, lb: str, start: dt.datetime, end: dt.datetime
                    ) -> BackendFigures:
        dims = [{"Name": "TargetGroup", "Value": tg_arn.split(":", 5)[5]},
                {"Name": "LoadBalancer", "Value": lb}]
        status = {cls: int(sum(self._metric(f"HTTPCode_Target_{cls.upper()}_Count", "Sum",
                                            dims, start, end)))
                  for cls in STATUS_CLASSES}
        conn = int(sum(self._metric("TargetConnectionErrorCount", "Sum", dims, start, end)))
        requests = int(sum(self._metric("RequestCount", "Sum", dims, start, end)))
        times = self._metric("TargetResponseTime", "Average", dims, start, end)
        mean = 1000.0 * sum(times) / len(times) if times else None
        return BackendFigures(requests=max(requests, sum(status.values()) + conn),
                              status=status, connection_errors=conn, mean_ms=mean)

    # -- WriteRouting -------------------------------------------------------------------------

    def install_write_rule(self, priority: int = 10) -> str:
        """Create the rule sending mutating methods to blue (the SoR until the flip)."""
        out = self._call(
            self.elbv2.create_rule, ListenerArn=self.listener_arn, Priority=priority,
            Conditions=[{"Field": "http-request-method",
                         "HttpRequestMethodConfig": {"Values": WRITE_METHODS}}],
            Actions=[{"Type": "forward", "TargetGroupArn": self.tg["blue"]}])
        self.write_rule_arn = str(out["Rules"][0]["RuleArn"])
        return self.write_rule_arn

    def _rule(self) -> dict[str, Any]:
        if not self.write_rule_arn:
            raise UsageError("no write rule on this listener",
                             hint="AlbRouter.install_write_rule() creates it")
        rules = self._call(self.elbv2.describe_rules, RuleArns=[self.write_rule_arn])["Rules"]
        return dict(rules[0])

    def system_of_record(self) -> Side:
        for action in self._rule()["Actions"]:
            arn = action.get("TargetGroupArn") or next(
                (g["TargetGroupArn"] for g in action.get("ForwardConfig", {})
                 .get("TargetGroups", [])), None)
            for side, tg in self.tg.items():
                if arn == tg:
                    return check_side(side)
        raise AlbError(f"write rule {self.write_rule_arn} forwards to neither target group")

    def set_system_of_record(self, side: Side) -> None:
        side = check_side(side)
        self._rule()
        self._call(self.elbv2.modify_rule, RuleArn=self.write_rule_arn,
                   Actions=[{"Type": "forward", "TargetGroupArn": self.tg[side]}])
