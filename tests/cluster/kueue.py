"""Kueue on the real cluster, installed as docs/teams.md installs it: Kueue's own manifests (its release
manifests.yaml is `kustomize build config/default` of the same module; no release download here, so the module's
config/ tree, rendered with `kubectl kustomize`), `kubectl apply --server-side` (its Workload CRD is too large for a
client-side apply's annotation), with the Configuration ml-platform ships (kind/kueue-config.yaml: fair sharing on,
the batch/job integration) as the kueue-manager-config ConfigMap.

Only the image differs from a user's install: the manager built from the Go module (tests/toolchain/kueue.sh),
imported as a one-binary image at `/manager` (what Kueue's image runs), pulled IfNotPresent.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.kube import crash_looping, wait_or_diagnose
from tests.cluster.realcluster import RealCluster
from tests.harness.api import condition

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "kind" / "kueue-config.yaml"
NAMESPACE = "kueue-system"
DEPLOYMENT = "kueue-controller-manager"
CONFIG_MAP = "kueue-manager-config"
CONFIG_KEY = "controller_manager_config.yaml"
VISIBILITY = "v1beta2.visibility.kueue.x-k8s.io"
# Kueue's defaults ask for 500m and 512Mi with a 2-core limit; on the tier's 2-core node that starves the rest.
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


def manifests(cluster: RealCluster, config_tree: Path, image: str) -> list[dict[str, Any]]:
    """Kueue's manifests from `config_tree` (the module's config/), with `image` and the shipped Configuration."""
    rendered = cluster.kubectl("kustomize", str(config_tree / "default"), timeout=120).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    found = {"Deployment": 0, "ConfigMap": 0}
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Deployment" and name == DEPLOYMENT:
            (container,) = (c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "manager")
            container.update({"image": image, "imagePullPolicy": "IfNotPresent", "resources": RESOURCES})
            found["Deployment"] += 1
        elif obj["kind"] == "ConfigMap" and name == CONFIG_MAP:
            obj["data"] = {CONFIG_KEY: SHIPPED_CONFIG.read_text()}
            found["ConfigMap"] += 1
    assert found == {"Deployment": 1, "ConfigMap": 1}, f"{config_tree}/default no longer renders {found}"
    return objects


def install(cluster: RealCluster, config_tree: Path, image: str) -> None:
    """Apply Kueue's manifests and wait until it admits: the manager Available, its certificate rotator's CA in
    every webhook configuration (until then the API server refuses every Job), its visibility API Available."""
    path = cluster.workdir / "kueue-manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests(cluster, config_tree, image)))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=300)

    def ready() -> bool:
        if crashing := crash_looping(cluster, NAMESPACE):
            raise AssertionError(f"Kueue's manager keeps failing: {crashing}")
        deployment = cluster.api.get("apps/v1", "Deployment", DEPLOYMENT, NAMESPACE)
        if condition(deployment, "Available") != "True":
            return False
        kinds = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        hooks = [hook for kind in kinds for config in cluster.api.items("admissionregistration.k8s.io/v1", kind)
                 if config["metadata"]["name"].startswith("kueue-") for hook in config["webhooks"]]  # fmt: skip
        if not hooks or not all(base64.b64decode(h["clientConfig"].get("caBundle") or "") for h in hooks):
            return False
        return condition(cluster.api.get("apiregistration.k8s.io/v1", "APIService", VISIBILITY), "Available") == "True"

    wait_or_diagnose(cluster, NAMESPACE, "Kueue Available with its webhooks' CA injected", ready, 300)
