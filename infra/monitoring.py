"""Observability of the platform: how Prometheus scrapes it, its alerts, its Grafana dashboards, and the
NetworkPolicies that let Prometheus in.

The content is built in `workloads.monitoring` (plain data, also what the promtool tests read); this component
declares it. With the Prometheus Operator (`prometheusOperator`), one PodMonitor per component and one
PrometheusRule; without it, the rules as a plain rule file in a ConfigMap (mount it into Prometheus and list it
under `rule_files:`), while the pods carry the `prometheus.io/*` annotations (set by their own components, see
`scrape_annotations`). Dashboards are ConfigMaps labelled for Grafana's dashboard sidecar. The namespace's default
deny stays: one NetworkPolicy per component admits the Prometheus namespace to that component's metrics port and
to nothing else. docs/observability.md describes all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import labels
from infra.network import NAMESPACE_LABEL
from workloads.monitoring import dashboards
from workloads.monitoring.rules import AlertThresholds, prometheus_rule_spec, rule_file_text
from workloads.monitoring.scrape import NAME_LABEL, ScrapeTarget, pod_monitor_spec, scrape_annotations
from workloads.pod import PART_OF

DASHBOARD_LABEL = "grafana_dashboard"
"""The label Grafana's dashboard sidecar (grafana Helm chart, kube-prometheus-stack) looks for, with value "1"."""
FOLDER_ANNOTATION = "grafana_folder"
"""The annotation the sidecar reads the folder from (its `folderAnnotation` setting)."""
RULES_CONFIG_MAP = "ml-platform-prometheus-rules"
RULE_FILE = "ml-platform.rules.yaml"
PROMETHEUS_RULE = "ml-platform-alerts"


@dataclass(frozen=True)
class MonitoringArgs:
    namespace: str
    """The platform namespace: every object here, and the namespace the rules watch."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    targets: Sequence[ScrapeTarget]
    """The components whose pods serve metrics."""
    prometheus_operator: bool
    """PodMonitors and a PrometheusRule; else a rule-file ConfigMap (the pods carry scrape annotations)."""
    prometheus_namespace: str
    """Where Prometheus runs: the NetworkPolicies admit only this namespace, only to the metrics ports."""
    selector_labels: dict[str, str]
    """Extra labels on the PodMonitors and the PrometheusRule (the Prometheus's selectors)."""
    grafana_dashboards: bool
    """Declare the dashboard ConfigMaps."""
    grafana_folder: str
    """Grafana folder of the dashboards."""
    thresholds: AlertThresholds
    """The alerts' tunable numbers."""


def pod_annotations(target: ScrapeTarget, prometheus_operator: bool) -> dict[str, str]:
    """What a component puts on its pod template: the scrape annotations, unless PodMonitors find the pods."""
    return {} if prometheus_operator else scrape_annotations(target)


def _policy_port(target: ScrapeTarget) -> k8s.networking.v1.NetworkPolicyPortArgs:
    """`target`'s metrics port for a NetworkPolicy: the range of its slots' ports (endPort) when it has several."""
    end_port = target.last_port if target.slots > 1 else None
    return k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=target.port, end_port=end_port)


class Monitoring(pulumi.ComponentResource):
    """PodMonitors or a rule file, the PrometheusRule, dashboards and the metrics NetworkPolicies (see the module
    docstring)."""

    pod_monitor_names: list[pulumi.Output[str]]
    """Names of the PodMonitors (empty without the Prometheus Operator)."""
    rules_name: pulumi.Output[str]
    """Name of the PrometheusRule, or of the ConfigMap holding the rule file."""
    dashboard_names: list[pulumi.Output[str]]
    """Names of the dashboard ConfigMaps."""
    policy_names: list[pulumi.Output[str]]
    """Names of the NetworkPolicies admitting Prometheus."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:monitoring:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("monitoring", args.instance, "observability")
        selected = {**meta_labels, **args.selector_labels}

        def metadata(
            object_name: str, object_labels: dict[str, str], annotations: dict[str, str] | None = None
        ) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(
                name=object_name, namespace=args.namespace, labels=object_labels, annotations=annotations
            )

        # CustomResource declares no typed outputs: each name is the one it was given, once the object exists.
        self.pod_monitors: list[k8s.apiextensions.CustomResource] = []
        self.pod_monitor_names: list[pulumi.Output[str]] = []
        if args.prometheus_operator:
            for target in args.targets:
                monitor_name = f"{target.component}-metrics"
                monitor = k8s.apiextensions.CustomResource(
                    f"{name}-{target.component}-podmonitor",
                    api_version="monitoring.coreos.com/v1",
                    kind="PodMonitor",
                    metadata=metadata(monitor_name, selected),
                    spec=pod_monitor_spec(target, PART_OF),
                    opts=child,
                )
                self.pod_monitors.append(monitor)
                self.pod_monitor_names.append(pulumi.Output.all(monitor.urn, monitor_name).apply(lambda v: str(v[1])))
            rules = k8s.apiextensions.CustomResource(
                f"{name}-rules",
                api_version="monitoring.coreos.com/v1",
                kind="PrometheusRule",
                metadata=metadata(PROMETHEUS_RULE, selected),
                spec=prometheus_rule_spec(args.namespace, args.thresholds),
                opts=child,
            )
            self.rules_name = rules.urn.apply(lambda _: PROMETHEUS_RULE)
        else:
            rules_file = k8s.core.v1.ConfigMap(
                f"{name}-rules",
                metadata=metadata(RULES_CONFIG_MAP, meta_labels),
                data={RULE_FILE: rule_file_text(args.namespace, args.thresholds)},
                opts=child,
            )
            self.rules_name = rules_file.metadata.name

        self.dashboards: list[k8s.core.v1.ConfigMap] = []
        if args.grafana_dashboards:
            for file_name, dashboard in dashboards.dashboards().items():
                config_map_name = f"grafana-dashboard-{file_name.removesuffix('.json')}"
                self.dashboards.append(
                    k8s.core.v1.ConfigMap(
                        f"{name}-{config_map_name}",
                        metadata=metadata(
                            config_map_name,
                            {**meta_labels, DASHBOARD_LABEL: "1"},
                            annotations={FOLDER_ANNOTATION: args.grafana_folder},
                        ),
                        data={file_name: dashboards.dashboard_json(dashboard)},
                        opts=child,
                    )
                )

        # NetworkPolicies add up: each admits Prometheus to one component's metrics port; the default deny of
        # infra/network.py keeps everything else shut.
        np = k8s.networking.v1
        prometheus = np.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={NAMESPACE_LABEL: args.prometheus_namespace})
        )
        self.policies: list[k8s.networking.v1.NetworkPolicy] = []
        for target in args.targets:
            self.policies.append(
                np.NetworkPolicy(
                    f"{name}-{target.component}-netpol",
                    metadata=metadata(f"prometheus-to-{target.component}", meta_labels),
                    spec=np.NetworkPolicySpecArgs(
                        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={NAME_LABEL: target.pod_name}),
                        policy_types=["Ingress"],
                        ingress=[np.NetworkPolicyIngressRuleArgs(from_=[prometheus], ports=[_policy_port(target)])],
                    ),
                    opts=child,
                )
            )

        self.dashboard_names = [d.metadata.name for d in self.dashboards]
        self.policy_names = [p.metadata.name for p in self.policies]
        self.register_outputs(
            {
                "pod_monitor_names": self.pod_monitor_names,
                "rules_name": self.rules_name,
                "dashboard_names": self.dashboard_names,
                "policy_names": self.policy_names,
            }
        )
