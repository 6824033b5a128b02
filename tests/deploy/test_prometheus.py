"""deploy/prometheus: scrape config matches the compose stack, every rule expression
parses (promql-parser) and names metrics the services really export."""

from __future__ import annotations

import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from deploy_support import ROOT

PROM = ROOT / "deploy" / "prometheus"
#: TorchServe 0.12's Prometheus names (checked on a real TorchServe 0.12: the Requests*
#: counters carry no _total suffix, ts_inference_requests does).
TORCHSERVE_METRICS = {"Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total"}


def rules() -> list[dict]:
    data = yaml.safe_load((PROM / "rules" / "cdul.yml").read_text())
    return [r for group in data["groups"] for r in group["rules"]]


def clip_metric_names() -> set[str]:
    source = (ROOT / "services/cdul/clip_service/metrics.py").read_text()
    names = set()
    for kind, name in re.findall(r"(Counter|Histogram|Gauge)\(\s*\"(\w+)\"", source):
        names |= {
            "Counter": {f"{name}_total"},
            "Histogram": {f"{name}_bucket", f"{name}_count", f"{name}_sum"},
            "Gauge": {name},
        }[kind]
    return names


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_rule_expressions_parse_and_name_real_metrics(rule: dict) -> None:
    promql_parser.parse(rule["expr"])
    known = clip_metric_names() | TORCHSERVE_METRICS | {"up"}
    recorded = {r["record"] for r in rules() if "record" in r}
    for name in re.findall(r"\b(cdul_\w+|Requests\dXX|ts_\w+)\b", rule["expr"]):
        assert name in known, f"{name} is not exported by any CDUL component"
    for name in re.findall(r"\b(cdul:[\w:]+)", rule["expr"]):
        assert name in recorded, f"{name} is not recorded by any rule"
    if "alert" in rule:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_parser_rejects_bad_promql() -> None:
    with pytest.raises(Exception):  # noqa: B017 - the binding raises a plain error type
        promql_parser.parse("sum(rate(x[5m])")


def test_required_alerts() -> None:
    exprs = "\n".join(r["expr"] for r in rules())
    assert 'cdul_clip_requests_total{code!="OK"}' in exprs
    assert "cdul_clip_queue_full_total" in exprs
    assert "Requests5XX" in exprs
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert {"CdulClipServiceErrors", "CdulClipQueueFull", "CdulTorchServe5xx"} <= alerts


def test_scrape_targets_match_the_compose_stack() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())["services"]
    mount = next(v for v in compose["prometheus"]["volumes"] if v.startswith("./prometheus:"))
    container_dir = Path(mount.split(":")[1])
    for pattern in config["rule_files"]:
        local = PROM / Path(pattern).relative_to(container_dir)
        assert list(local.parent.glob(local.name)), f"rule_files {pattern} matches nothing"
    ports = {"clip-service": 9100, "torchserve": 8082, "minio": 9000, "localhost": 9090}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.split(":")
                assert host == "localhost" or host in compose, target
                assert ports[host] == int(port), target
    k8s = yaml.safe_load((PROM / "kubernetes-scrape.yml").read_text())
    assert k8s["scrape_configs"][0]["kubernetes_sd_configs"][0]["role"] == "pod"
