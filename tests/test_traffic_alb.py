"""The ALB router against moto's server mode: the API requests it makes and the state they
leave. Verified against an emulator only (no live AWS from here)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pgshift.errors import UsageError
from pgshift.traffic.router import Router, WriteFence, WriteRouting
from traffic_conformance import free_port

boto3 = pytest.importorskip("boto3", reason="boto3 is the [aws] extra")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")

from pgshift.traffic.alb import AlbRouter, _weights  # noqa: E402

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing",
         "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class Env:
    def __init__(self, endpoint: str) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.elbv2 = boto3.client("elbv2", endpoint_url=endpoint, **CREDS)
        self.cw = boto3.client("cloudwatch", endpoint_url=endpoint, **CREDS)
        ec2 = boto3.client("ec2", endpoint_url=endpoint, **CREDS)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                     AvailabilityZone=f"us-east-1{z}")["Subnet"]["SubnetId"]
                   for i, z in ((1, "a"), (2, "b"))]
        tag = uuid.uuid4().hex[:8]
        lb = self.elbv2.create_load_balancer(Name=f"app-{tag}", Subnets=subnets)["LoadBalancers"][0]
        self.lb_arn = lb["LoadBalancerArn"]
        self.tg = {side: self.elbv2.create_target_group(
            Name=f"{tag}-{side}", Protocol="HTTP", Port=80, VpcId=vpc)["TargetGroups"][0][
            "TargetGroupArn"] for side in ("blue", "green")}
        self.listener = self.elbv2.create_listener(
            LoadBalancerArn=self.lb_arn, Protocol="HTTP", Port=80,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": self.tg["blue"]}],
        )["Listeners"][0]["ListenerArn"]
        self.elbv2.meta.events.register("provide-client-params.elastic-load-balancing-v2",
                                        self._record)

    def _record(self, params: dict[str, Any], model: Any, **kw: Any) -> None:
        self.calls.append((model.name, params))

    def router(self) -> AlbRouter:
        return AlbRouter(self.listener, self.tg["blue"], self.tg["green"], elbv2=self.elbv2,
                         cloudwatch=self.cw)

    def forward(self) -> dict[str, Any]:
        listener = self.elbv2.describe_listeners(ListenerArns=[self.listener])["Listeners"][0]
        return listener["DefaultActions"][0]["ForwardConfig"]

    def close(self) -> None:
        self.elbv2.close()
        self.cw.close()


@pytest.fixture
def env(endpoint: str) -> Iterator[Env]:
    e = Env(endpoint)
    try:
        yield e
    finally:
        e.close()


def test_alb_router_capabilities(env: Env) -> None:
    r = env.router()
    assert isinstance(r, Router) and isinstance(r, WriteRouting)
    assert not isinstance(r, WriteFence)


def test_set_weight_sends_a_sticky_weighted_forward(env: Env) -> None:
    r = env.router()
    r.set_weight(12.5)
    name, params = env.calls[-1]
    assert name == "ModifyListener"
    cfg = params["DefaultActions"][0]["ForwardConfig"]
    assert cfg["TargetGroups"] == [{"TargetGroupArn": env.tg["blue"], "Weight": 875},
                                   {"TargetGroupArn": env.tg["green"], "Weight": 125}]
    assert cfg["TargetGroupStickinessConfig"] == {"Enabled": True, "DurationSeconds": 3600}
    assert r.weight() == 12.5
    for pct in (0, 33.3, 100):
        r.set_weight(pct)
        assert r.weight() == pytest.approx(pct)
    with pytest.raises(UsageError):
        r.set_weight(-5)


def test_drain_to_blue_disables_stickiness(env: Env) -> None:
    r = env.router()
    r.install_write_rule()
    r.set_weight(100)
    r.set_system_of_record("green")
    r.drain_to_blue()
    fwd = env.forward()
    weights = {g["TargetGroupArn"]: g["Weight"] for g in fwd["TargetGroups"]}
    assert weights == {env.tg["blue"]: 1, env.tg["green"]: 0}
    assert fwd["TargetGroupStickinessConfig"]["Enabled"] is False
    assert r.weight() == 0 and r.system_of_record() == "blue"


def test_write_rule_follows_the_system_of_record(env: Env) -> None:
    r = env.router()
    with pytest.raises(UsageError, match="no write rule"):
        r.system_of_record()
    arn = r.install_write_rule(priority=7)
    rule = env.elbv2.describe_rules(RuleArns=[arn])["Rules"][0]
    assert rule["Conditions"][0]["HttpRequestMethodConfig"]["Values"] == [
        "POST", "PUT", "PATCH", "DELETE"]
    assert r.system_of_record() == "blue"
    r.set_system_of_record("green")
    assert env.calls[-1][0] == "ModifyRule"
    assert r.system_of_record() == "green"


def test_figures_read_cloudwatch_per_target_group(env: Env) -> None:
    r = env.router()
    lb_dim = env.lb_arn.split(":loadbalancer/", 1)[1]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    for side, (req, five, ok) in {"blue": (1000, 2, 998), "green": (200, 10, 190)}.items():
        dims = [{"Name": "TargetGroup", "Value": env.tg[side].split(":", 5)[5]},
                {"Name": "LoadBalancer", "Value": lb_dim}]
        env.cw.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
            {"MetricName": name, "Dimensions": dims, "Timestamp": now, "Value": v}
            for name, v in (("RequestCount", req), ("HTTPCode_Target_5XX_Count", five),
                            ("HTTPCode_Target_2XX_Count", ok),
                            ("TargetResponseTime", 0.05 if side == "green" else 0.02))])
    f = r.figures(300)
    assert (f.blue.requests, f.blue.status["5xx"], f.blue.status["2xx"]) == (1000, 2, 998)
    assert (f.green.requests, f.green.errors) == (200, 10)
    assert f.green.mean_ms == pytest.approx(50.0)
    assert f.lag >= 60 and f.source == "aws-alb-cloudwatch"


@pytest.mark.parametrize(("pct", "expected"), [(0, (1, 0)), (100, (0, 1)), (50, (500, 500)),
                                               (0.1, (999, 1)), (99.9, (1, 999))])
def test_weights_stay_in_alb_range(pct: float, expected: tuple[int, int]) -> None:
    assert _weights(pct) == expected


def test_cli_drives_the_alb_router(env: Env, endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pgshift.cli.main import main

    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    opts = ["--router", "alb"] + [x for kv in (
        f"listener={env.listener}", f"blue={env.tg['blue']}", f"green={env.tg['green']}",
        f"endpoint={endpoint}", "region=us-east-1") for x in ("--router-option", kv)]
    assert main(["traffic", "set-weight", "40", *opts]) == 0
    assert "green weight 40 %" in capsys.readouterr().out
    weights = {g["TargetGroupArn"]: g["Weight"] for g in env.forward()["TargetGroups"]}
    assert weights == {env.tg["blue"]: 600, env.tg["green"]: 400}
    assert main(["traffic", "status", "--router", "alb", "--router-option", "oops"]) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err
