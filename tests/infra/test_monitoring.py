"""Monitoring under mocks (infra/monitoring.py and its wiring): what each config declares, that every PodMonitor,
scrape annotation and NetworkPolicy points at a real container port of real pods, and that Prometheus gets in to
the metrics ports and nowhere else."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pulumi
import pytest
import yaml

from infra.config import ConfigError
from infra.monitoring import Monitoring, MonitoringArgs
from infra.render import RecordingMocks
from tests.netpol import Cluster, Endpoint
from trainer.metrics import metrics_port
from workloads.monitoring.dashboards import panel_queries
from workloads.monitoring.rules import AlertThresholds
from workloads.monitoring.scrape import ScrapeTarget
from workloads.training import metrics_ports

from .conftest import containers, find, objects_of, pod_specs, render_stack

Run = Callable[[Callable[[], Any]], RecordingMocks]
NAMESPACE = "ml-platform"
SCRAPED = {"trainer", "inference", "mlflow", "trainop", "skyrun"}
"""app.kubernetes.io/name of every component whose pods serve metrics."""
METRICS_PORT_NAMES = {"trainer": "metrics", "inference": "http", "mlflow": "http", "trainop": "metrics",
                      "skyrun": "metrics"}  # fmt: skip
PROMETHEUS = Endpoint("prometheus", "10.244.1.2", "monitoring", {"app.kubernetes.io/name": "prometheus"})
OTHER_TEAM = Endpoint("other-team", "10.244.1.3", "team-b", {"app": "x"})
# What Grafana's dashboard sidecar looks for (Pulumi.yaml: grafanaDashboards, grafanaFolder) and the key of the rule
# file a plain Prometheus loads (docs/observability.md).
DASHBOARD_LABEL = "grafana_dashboard"
FOLDER_ANNOTATION = "grafana_folder"
RULE_FILE = "ml-platform.rules.yaml"
DASHBOARD_FILES = {"ml-platform-training.json", "ml-platform-inference.json", "ml-platform-controllers.json"}
MAX_RANKS_PER_POD = 16
"""gpusPerWorker's upper bound (Pulumi.yaml): a training pod declares, and Prometheus may reach, 9400..9415."""
# Every alert of docs/observability.md by group, with its `for` and severity.
ALERTS = {
    "ml-platform.training": {"TrainingStalled": ("2m", "warning"), "TrainingLossNaN": ("1m", "critical")},
    "ml-platform.inference": {"InferenceLatencyP99High": ("10m", "warning"),
                              "Inference5xxRatioHigh": ("5m", "critical"),
                              "Inference429RatioSustained": ("15m", "warning")},
    "ml-platform.platform": {"PodCrashLooping": ("15m", "warning"), "PersistentVolumeNearlyFull": ("5m", "warning")},
}  # fmt: skip


def alert_rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every alerting rule by name, after checking the groups hold exactly the platform's alerts."""
    assert {g["name"]: {r["alert"]: (r["for"], r["labels"]["severity"]) for r in g["rules"]} for g in groups} == ALERTS
    return {r["alert"]: r for g in groups for r in g["rules"]}


def assert_thresholds(groups: list[dict[str, Any]], namespace: str, **thresholds: str) -> None:
    """The alerts select only `namespace`'s series and end in the comparison each threshold asks for, e.g.
    TrainingStalled="> 900" (what the defaults of Pulumi.yaml give unless overridden)."""
    rules = alert_rules(groups)
    expected = {"TrainingStalled": ") > 900", "InferenceLatencyP99High": "> 10", "Inference5xxRatioHigh": "> 0.05",
                "Inference429RatioSustained": "> 0.1", "PersistentVolumeNearlyFull": "< 0.1", **thresholds}  # fmt: skip
    for name, comparison in expected.items():
        assert comparison in rules[name]["expr"], (name, rules[name]["expr"])
    for rule in rules.values():
        assert set(re.findall(r'namespace=~?"([^"]*)"', rule["expr"])) == {namespace}, rule


def allowed(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, proto: str, port: int) -> bool:
    return Cluster(policies, {NAMESPACE: {}, "monitoring": {}, "team-b": {}}).allowed(src, dst, proto, port)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def monitoring_crs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]


def workloads_of(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """app.kubernetes.io/name -> (pod template metadata, pod spec) of every workload."""
    return {
        obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: (
            obj["spec"]["template"]["metadata"],
            spec,
        )
        for obj, spec in pod_specs(objects)
    }


def container_port(pod_spec: dict[str, Any], name: str) -> int:
    ports = [p["containerPort"] for c in containers(pod_spec) for p in c.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"expected one container port named {name!r}, found {ports}"
    return int(ports[0])


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.fixture(scope="module")
def annotated() -> list[dict[str, Any]]:
    """The dev stack as it is: no Prometheus Operator."""
    return objects_of(render_stack("dev"))


@pytest.fixture(scope="module")
def operated() -> list[dict[str, Any]]:
    return objects_of(
        render_stack("gpu", prometheusOperator=True, prometheusSelectorLabels=["release=kube-prometheus-stack"])
    )


def test_without_the_operator_pods_carry_scrape_annotations_for_their_metrics_port(
    annotated: list[dict[str, Any]],
) -> None:
    assert monitoring_crs(annotated) == []
    pods = workloads_of(annotated)
    assert set(pods) >= SCRAPED
    for name, (metadata, spec) in pods.items():
        annotations = metadata.get("annotations", {})
        if name not in SCRAPED:
            assert "prometheus.io/scrape" not in annotations, name
            continue
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics", name
        assert int(annotations["prometheus.io/port"]) == container_port(spec, METRICS_PORT_NAMES[name]), name


def test_without_the_operator_the_rules_are_a_rule_file_config_map(annotated: list[dict[str, Any]]) -> None:
    config_map = find(annotated, "ConfigMap", "ml-platform-prometheus-rules")
    assert set(config_map["data"]) == {RULE_FILE}
    rules = yaml.safe_load(config_map["data"][RULE_FILE])
    assert set(rules) == {"groups"}
    assert_thresholds(rules["groups"], NAMESPACE)  # Pulumi.yaml's defaults: dev sets no alert key


def test_with_the_operator_a_pod_monitor_selects_each_components_pods_by_their_metrics_port(
    operated: list[dict[str, Any]],
) -> None:
    pods = workloads_of(operated)
    monitors = by_kind(operated, "PodMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {f"{name}-metrics" for name in SCRAPED}
    for monitor in monitors:
        assert monitor["metadata"]["namespace"] == NAMESPACE
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selected = [name for name, (meta, _) in pods.items() if matches(monitor["spec"]["selector"], meta["labels"])]
        assert len(selected) == 1, (monitor["metadata"]["name"], selected)
        endpoints = monitor["spec"]["podMetricsEndpoints"]
        assert endpoints[0]["port"] == METRICS_PORT_NAMES[selected[0]]
        container_port(pods[selected[0]][1], endpoints[0]["port"])  # the named port exists on those pods
        assert all(e["path"] == "/metrics" for e in endpoints)
        # Training pods have one metrics port per local rank (gpu: 1 GPU per pod here); the others, one port.
        expected = MAX_RANKS_PER_POD if selected[0] == "trainer" else 1
        assert len({e["port"] for e in endpoints}) == len(endpoints) == expected
    # No double scraping: the annotations are off where PodMonitors find the pods.
    assert all("prometheus.io/scrape" not in meta.get("annotations", {}) for meta, _ in pods.values())


def test_training_pods_get_the_job_name_label_the_stall_alert_joins_on(operated: list[dict[str, Any]]) -> None:
    for endpoint in find(operated, "PodMonitor", "trainer-metrics")["spec"]["podMetricsEndpoints"]:  # every rank's
        job_name = next(r for r in endpoint["relabelings"] if r["targetLabel"] == "job_name")
        # The Job controller labels its pods job-name=<job>; Prometheus exposes that as this meta label.
        assert job_name["sourceLabels"] == ["__meta_kubernetes_pod_label_job_name"]
    job = find(operated, "Job")
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "trainer"
    stalled = alert_rules(find(operated, "PrometheusRule", "ml-platform-alerts")["spec"]["groups"])["TrainingStalled"]
    assert "on (namespace, job_name)" in stalled["expr"] and "kube_job_status_active" in stalled["expr"]


def test_with_the_operator_the_prometheus_rule_holds_every_alert(operated: list[dict[str, Any]]) -> None:
    rule = find(operated, "PrometheusRule", "ml-platform-alerts")
    assert set(rule["spec"]) == {"groups"}
    assert_thresholds(rule["spec"]["groups"], NAMESPACE)  # gpu sets no alert key either
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [o for o in by_kind(operated, "ConfigMap") if o["metadata"]["name"] == "ml-platform-prometheus-rules"] == []


@pytest.mark.parametrize("fixture", ["annotated", "operated"])
def test_network_policies_admit_prometheus_to_each_metrics_port_only(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(fixture)
    policies = by_kind(objects, "NetworkPolicy")
    pods = workloads_of(objects)
    for name in SCRAPED:
        metadata, spec = pods[name]
        target = Endpoint(name, "10.244.0.9", NAMESPACE, metadata["labels"])
        metrics_port = container_port(spec, METRICS_PORT_NAMES[name])
        assert allowed(policies, PROMETHEUS, target, "TCP", metrics_port), name
        # Every other port of the pod stays shut to Prometheus unless it was open to everyone already.
        for container in containers(spec):
            for port in container.get("ports", []):
                if port["containerPort"] != metrics_port:
                    open_to_prometheus = allowed(policies, PROMETHEUS, target, "TCP", port["containerPort"])
                    assert open_to_prometheus == allowed(policies, OTHER_TEAM, target, "TCP", port["containerPort"])
        assert not allowed(policies, PROMETHEUS, target, "TCP", 41234), name
    own = [p for p in policies if p["metadata"]["name"].startswith("prometheus-to-")]
    assert len(own) == len(SCRAPED)
    for policy in own:
        (rule,) = policy["spec"]["ingress"]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        name = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        port = {"protocol": "TCP", "port": container_port(pods[name][1], METRICS_PORT_NAMES[name])}
        if name == "trainer":  # every local rank's port: 9400 .. 9400 + MAX_RANKS_PER_POD - 1
            port["endPort"] = port["port"] + MAX_RANKS_PER_POD - 1
        assert rule["ports"] == [port]


def test_every_local_rank_of_a_multi_gpu_pod_is_scraped() -> None:
    """gpusPerWorker 4: four ranks per pod, each serving its own port (trainer.metrics.metrics_port); the pod
    declares them all by name, the PodMonitor has an endpoint for each, and Prometheus may reach each."""
    objects = objects_of(render_stack("gpu", gpusPerWorker=4, quotaGpus=16, prometheusOperator=True))
    _, spec = workloads_of(objects)["trainer"]
    declared = {p["name"]: p["containerPort"] for c in containers(spec) for p in c.get("ports", [])
                if p["name"].startswith("metrics")}  # fmt: skip
    ranks = 4
    assert declared == {"metrics": 9400, "metrics-1": 9401, "metrics-2": 9402, "metrics-3": 9403}
    # The other side of the contract: the trainer's ranks 4..7 (pod 1) bind 9400 + their local rank.
    assert sorted(declared.values()) == [metrics_port(9400, rank=ranks + i, local_world_size=ranks)
                                         for i in range(ranks)]  # fmt: skip
    (command,) = [c["command"] for c in containers(spec) if c["name"] == "trainer"]
    assert command[command.index("--nproc") + 1] == str(ranks)
    scraped = {e["port"] for e in find(objects, "PodMonitor", "trainer-metrics")["spec"]["podMetricsEndpoints"]}
    assert set(declared) <= scraped
    policies = by_kind(objects, "NetworkPolicy")
    trainer = Endpoint("trainer", "10.244.0.9", NAMESPACE, {"app.kubernetes.io/name": "trainer"})
    for port in declared.values():
        assert allowed(policies, PROMETHEUS, trainer, "TCP", port), port
        assert not allowed(policies, OTHER_TEAM, trainer, "TCP", port), port
    assert not allowed(policies, PROMETHEUS, trainer, "TCP", 9400 + MAX_RANKS_PER_POD)


def test_a_pod_cannot_run_more_ranks_than_the_scrape_covers() -> None:
    with pytest.raises(ConfigError, match="gpusPerWorker"):
        render_stack("gpu", gpusPerWorker=MAX_RANKS_PER_POD + 1, quotaGpus=64)
    with pytest.raises(ValueError, match=f"between 1 and {MAX_RANKS_PER_POD}"):
        metrics_ports(MAX_RANKS_PER_POD + 1)


def test_metrics_ports_stay_shut_to_other_namespaces(operated: list[dict[str, Any]]) -> None:
    """gpu has ClusterIP Services: only Prometheus reaches the metrics ports from outside the namespace."""
    policies = by_kind(operated, "NetworkPolicy")
    for name, (metadata, spec) in workloads_of(operated).items():
        if name in SCRAPED and METRICS_PORT_NAMES[name] == "metrics":
            target = Endpoint(name, "10.244.0.9", NAMESPACE, metadata["labels"])
            assert not allowed(policies, OTHER_TEAM, target, "TCP", container_port(spec, "metrics")), name


def test_prometheus_namespace_is_configurable() -> None:
    objects = objects_of(render_stack("dev", prometheusNamespace="observability"))
    policies = by_kind(objects, "NetworkPolicy")
    trainer = Endpoint("trainer", "10.244.0.9", NAMESPACE, {"app.kubernetes.io/name": "trainer"})
    other_prometheus = Endpoint("p", "10.244.1.4", "observability", {})
    assert Cluster(policies, {NAMESPACE: {}, "observability": {}}).allowed(other_prometheus, trainer, "TCP", 9400)
    assert not allowed(policies, PROMETHEUS, trainer, "TCP", 9400)


def test_dashboards_are_sidecar_config_maps_whose_queries_are_templated_by_namespace(
    annotated: list[dict[str, Any]],
) -> None:
    config_maps = [o for o in by_kind(annotated, "ConfigMap") if o["metadata"]["labels"].get(DASHBOARD_LABEL) == "1"]
    assert sorted(next(iter(c["data"])) for c in config_maps) == sorted(DASHBOARD_FILES)
    for config_map in config_maps:
        assert config_map["metadata"]["annotations"][FOLDER_ANNOTATION] == "ml-platform"  # grafanaFolder's default
        ((file_name, text),) = config_map["data"].items()
        dashboard = json.loads(text)
        assert dashboard["uid"] and dashboard["title"], file_name
        assert dashboard["schemaVersion"] >= 39
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["namespace"]["query"]["query"].startswith("label_values(")
        queries = panel_queries(dashboard)
        assert queries
        assert [q for q in queries if "$namespace" not in q] == []
        assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_dashboards_can_be_turned_off() -> None:
    objects = objects_of(render_stack("dev", grafanaDashboards=False, grafanaFolder="ML"))
    assert [o for o in by_kind(objects, "ConfigMap") if DASHBOARD_LABEL in o["metadata"]["labels"]] == []


def test_thresholds_come_from_config() -> None:
    objects = objects_of(
        render_stack(
            "dev",
            alertTrainingStallMinutes=30,
            alertInferenceP99Seconds=4,
            alertInference5xxPercent=2,
            alertInference429Percent=25,
            alertInference429Minutes=45,
            alertVolumeFreePercent=20,
        )
    )
    got = yaml.safe_load(find(objects, "ConfigMap", "ml-platform-prometheus-rules")["data"][RULE_FILE])
    groups = got["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule["alert"] == "Inference429RatioSustained":
                assert rule["for"] == "45m"
                rule["for"] = "15m"  # the one `for` a key sets; every other stays as documented
    assert_thresholds(groups, NAMESPACE, TrainingStalled=") > 1800", InferenceLatencyP99High="> 4",
                      Inference5xxRatioHigh="> 0.02", Inference429RatioSustained="> 0.25",
                      PersistentVolumeNearlyFull="< 0.2")  # fmt: skip


BAD = [
    ({"prometheusOperator": "sometimes"}, "prometheusOperator", "true or false"),
    ({"prometheusNamespace": "Monitoring"}, "prometheusNamespace", "DNS-1123 label"),
    ({"prometheusSelectorLabels": ["release"]}, "prometheusSelectorLabels", "label-key=label-value"),
    ({"grafanaDashboards": "yes please"}, "grafanaDashboards", "true or false"),
    ({"grafanaFolder": " "}, "grafanaFolder", "non-empty folder name"),
    ({"alertTrainingStallMinutes": 0}, "alertTrainingStallMinutes", "between 1 and 1440"),
    ({"alertInferenceP99Seconds": "fast"}, "alertInferenceP99Seconds", "integer"),
    ({"alertInference5xxPercent": 101}, "alertInference5xxPercent", "between 1 and 100"),
    ({"alertInference429Percent": 0}, "alertInference429Percent", "between 1 and 100"),
    ({"alertInference429Minutes": 2000}, "alertInference429Minutes", "between 1 and 1440"),
    ({"alertVolumeFreePercent": 100}, "alertVolumeFreePercent", "between 1 and 99"),
]


@pytest.mark.parametrize(("overrides", "key", "phrase"), BAD, ids=[b[1] for b in BAD])
def test_bad_monitoring_config_names_the_key(overrides: dict[str, Any], key: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_stack("dev", **overrides)
    problems = [p for p in info.value.problems if p.startswith(key)]
    assert problems and any(phrase in p for p in problems), info.value.problems


@pytest.mark.parametrize("operator", [True, False])
def test_component_alone_declares_and_outputs_what_its_args_ask_for(component: Run, operator: bool) -> None:
    args = MonitoringArgs(
        namespace="team-a",
        instance="team-a",
        targets=[
            ScrapeTarget("inference", "inference", "http", 8080),
            ScrapeTarget("trainop", "trainop", "metrics", 9090),
        ],
        prometheus_operator=operator,
        prometheus_namespace="prom",
        selector_labels={"release": "kps"},
        grafana_dashboards=True,
        grafana_folder="Team A",
        thresholds=AlertThresholds(),
    )

    def build() -> Any:
        monitoring = Monitoring("monitoring", args)
        return pulumi.Output.all(
            pulumi.Output.all(*monitoring.pod_monitor_names),
            monitoring.rules_name,
            pulumi.Output.all(*monitoring.dashboard_names),
            pulumi.Output.all(*monitoring.policy_names),
        ).apply(check)

    def check(out: list[Any]) -> None:
        monitors, rules_name, dashboard_names, policies = out
        assert monitors == (["inference-metrics", "trainop-metrics"] if operator else [])
        assert rules_name == ("ml-platform-alerts" if operator else "ml-platform-prometheus-rules")
        assert len(dashboard_names) == len(DASHBOARD_FILES)
        assert policies == ["prometheus-to-inference", "prometheus-to-trainop"]

    mocks = component(build)
    assert mocks.resources[0].type == "mlplatform:monitoring:Monitoring"
    assert all(r.name.startswith("monitoring") for r in mocks.resources)
    objects = mocks.objects()
    assert all(o["metadata"]["namespace"] == "team-a" for o in objects)
    rules = find(objects, "PrometheusRule" if operator else "ConfigMap", "ml-platform-alerts" if operator
                 else "ml-platform-prometheus-rules")  # fmt: skip
    exprs = [r["expr"] for g in (rules["spec"] if operator else yaml.safe_load(rules["data"][RULE_FILE]))["groups"]
             for r in g["rules"]]  # fmt: skip
    assert all('namespace="team-a"' in e and 'namespace="ml-platform"' not in e for e in exprs)


@pytest.mark.parametrize("fixture", ["annotated", "operated"])
def test_mlflow_serves_metrics_to_a_scrape_by_pod_ip(fixture: str, request: pytest.FixtureRequest) -> None:
    """MLflow refuses Host headers outside its allow list (403); Prometheus scrapes it as <pod IP>:5000."""
    _, spec = workloads_of(request.getfixturevalue(fixture))["mlflow"]
    (container,) = spec["containers"]
    command = container["command"]
    assert command[command.index("--expose-prometheus") + 1].startswith("/tmp/")
    assert "$(POD_IP):*" in command[command.index("--allowed-hosts") + 1].split(",")
    pod_ip = next(e for e in container["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
