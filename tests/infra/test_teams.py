"""Teams and queues as the stack renders them (docs/teams.md): the expected objects are written from the docs'
tables, with the numbers of the teams declared here."""

from __future__ import annotations

from typing import Any

from .conftest import find, objects_of, render_stack

TEAMS = [
    {"name": "vision", "users": ["alice"], "cpu": "2", "memory": "4Gi", "maxCpu": "3500m", "maxMemory": "6Gi",
     "storage": "100Gi", "volumes": 20, "weight": 2},
    {"name": "nlp", "users": ["*"], "cpu": "1", "memory": "2Gi", "storage": "50Gi", "volumes": 10},
]  # fmt: skip


def team_objects(**overrides: Any) -> list[dict[str, Any]]:
    return objects_of(render_stack("dev", teams=TEAMS, **overrides))


def in_namespace(objects: list[dict[str, Any]], namespace: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for o in objects:
        if o["metadata"].get("namespace") == namespace:
            out.setdefault(o["kind"], []).append(o["metadata"]["name"])
    return {kind: sorted(names) for kind, names in out.items()}


def test_each_team_gets_its_namespace_with_quota_storage_lines_pod_security_and_policies() -> None:
    objects = team_objects()
    namespace = find(objects, "Namespace", "ml-platform-vision")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert (labels["ml-platform.dev/team"], labels["ml-platform.dev/platform"]) == ("vision", "ml-platform")
    assert in_namespace(objects, "ml-platform-vision") == {
        "ConfigMap": ["skyrun-anchor"],
        "LimitRange": ["team-defaults"],
        "NetworkPolicy": ["allow-dns", "default-deny", "tasks-egress"],
        "ResourceQuota": ["team-quota"],
        "RoleBinding": ["skyrun-tasks"],
    }
    quota = find([o for o in objects if o["metadata"].get("namespace") == "ml-platform-vision"], "ResourceQuota")
    assert quota["spec"]["hard"] == {
        "requests.cpu": "3500m", "limits.cpu": "3500m", "requests.memory": "6Gi", "limits.memory": "6Gi",
        "requests.storage": "100Gi", "persistentvolumeclaims": "20",
    }  # fmt: skip
    nlp = next(o for o in objects if o["kind"] == "ResourceQuota" and o["metadata"]["namespace"] == "ml-platform-nlp")
    assert (nlp["spec"]["hard"]["requests.cpu"], nlp["spec"]["hard"]["requests.memory"]) == ("1", "2Gi")
    # Tasks reach MLflow in the platform namespace, and the platform's MLflow admits them from team namespaces.
    egress = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "tasks-egress"
                  and o["metadata"]["namespace"] == "ml-platform-vision")  # fmt: skip
    to_mlflow = egress["spec"]["egress"][0]["to"][0]
    assert to_mlflow["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ml-platform"}}
    assert to_mlflow["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}
    mlflow_in = find(objects, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"ml-platform.dev/platform": "ml-platform"}},
            "podSelector": {"matchLabels": {"skypilot-task": "true"}}} in mlflow_in  # fmt: skip
    # Without Kueue, no queue objects at all.
    assert not [o for o in objects if o["apiVersion"].startswith("kueue.x-k8s.io")]


def test_with_kueue_each_team_has_a_cluster_queue_in_the_platform_cohort_and_a_local_queue() -> None:
    objects = team_objects(kueue=True, kueueQueue="training")
    flavor = find(objects, "ResourceFlavor")
    assert (flavor["metadata"]["name"], flavor["spec"]) == ("ml-platform-cpu", {})
    cq = find(objects, "ClusterQueue", "ml-platform-vision")
    assert cq["spec"] == {
        "cohortName": "ml-platform",
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ml-platform-vision"}},
        "queueingStrategy": "BestEffortFIFO",
        "resourceGroups": [{
            "coveredResources": ["cpu", "memory"],
            "flavors": [{"name": "ml-platform-cpu", "resources": [
                {"name": "cpu", "nominalQuota": "2", "borrowingLimit": "1.5"},
                {"name": "memory", "nominalQuota": "4Gi", "borrowingLimit": str(2 * 1024**3)},
            ]}],
        }],
        "preemption": {"reclaimWithinCohort": "Any", "borrowWithinCohort": {"policy": "Never"},
                       "withinClusterQueue": "LowerPriority"},
        "fairSharing": {"weight": "2"},
    }  # fmt: skip
    assert find(objects, "ClusterQueue", "ml-platform-nlp")["spec"]["fairSharing"] == {"weight": "1"}
    training = find(objects, "ClusterQueue", "ml-platform-training")["spec"]
    # The platform namespace's quota (Pulumi.dev.yaml quotaCpu 10, quotaMemory 10Gi), in the same cohort.
    assert training["cohortName"] == "ml-platform"
    assert [(r["name"], r["nominalQuota"]) for r in training["resourceGroups"][0]["flavors"][0]["resources"]] == [
        ("cpu", "10"), ("memory", "10Gi")]  # fmt: skip
    queues = sorted((o["metadata"]["namespace"], o["metadata"]["name"], o["spec"]["clusterQueue"])
                    for o in objects if o["kind"] == "LocalQueue")  # fmt: skip
    assert queues == [
        ("ml-platform", "training", "ml-platform-training"),
        ("ml-platform-nlp", "nlp", "ml-platform-nlp"),
        ("ml-platform-vision", "vision", "ml-platform-vision"),
    ]
    assert find(objects, "Job")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"


def test_the_gpu_stack_puts_gpus_in_a_flavor_of_their_own() -> None:
    teams = [{**TEAMS[1], "gpus": 2, "maxGpus": 4}]
    objects = objects_of(render_stack("gpu", teams=teams, kueue=True))
    flavors = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "ResourceFlavor"}
    assert set(flavors) == {"ml-platform-cpu", "ml-platform-gpu"}
    assert flavors["ml-platform-gpu"]["nodeLabels"] == {"nvidia.com/gpu.present": "true"}
    (group,) = find(objects, "ClusterQueue", "ml-platform-nlp")["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    by_flavor = {f["name"]: {r["name"]: (r["nominalQuota"], r["borrowingLimit"]) for r in f["resources"]}
                 for f in group["flavors"]}  # fmt: skip
    assert by_flavor["ml-platform-cpu"]["nvidia.com/gpu"] == ("0", "0")
    assert by_flavor["ml-platform-gpu"]["nvidia.com/gpu"] == ("2", "2")
    quota = next(o for o in objects if o["kind"] == "ResourceQuota" and o["metadata"]["namespace"] == "ml-platform-nlp")
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"
