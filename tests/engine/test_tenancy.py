"""The launcher's rights, proven by the API server's own answers (SubjectAccessReview), with the RBAC objects the
dev stack renders applied to a real control plane: task rights in every team namespace, nothing in the platform
namespace (not its claims, Jobs, Secrets or ConfigMaps), and cluster-wide only the two reviews and reading
ClusterQueues (docs/teams.md "The launcher's rights")."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine.cluster import LocalCluster
from tests.engine.conftest import render

pytestmark = pytest.mark.engine

PLATFORM = "ml-platform"
TEAMS = [
    {"name": "vision", "users": ["alice"], "cpu": "2", "memory": "4Gi", "storage": "10Gi", "volumes": 3},
    {"name": "nlp", "users": ["*"], "cpu": "1", "memory": "2Gi", "storage": "5Gi", "volumes": 2},
]
LAUNCHER = f"system:serviceaccount:{PLATFORM}:skyrun"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture(scope="module")
def rbac_applied(cluster: LocalCluster) -> None:
    """The dev stack's namespaces and RBAC objects (launcher, operator, trainer, teams), created for real."""
    objects = [o for o in render("dev", teams=TEAMS) if o["kind"] in RBAC_KINDS]
    order = {kind: i for i, kind in enumerate(RBAC_KINDS)}
    for obj in sorted(objects, key=lambda o: order[o["kind"]]):
        cluster.api.apply(obj)


def allowed(cluster: LocalCluster, verb: str, resource: str, namespace: str = "", *, group: str = "",
            subresource: str = "", name: str = "") -> bool:  # fmt: skip
    attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attrs["namespace"] = namespace
    if subresource:
        attrs["subresource"] = subresource
    if name:
        attrs["name"] = name
    review = cluster.api.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": LAUNCHER, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{PLATFORM}",
                                              "system:authenticated"],
                 "resourceAttributes": attrs},
    })  # fmt: skip
    return bool(review["status"].get("allowed"))


# (verb, resource, group, subresource) the launcher needs in a team namespace.
TEAM_RIGHTS = [
    ("create", "jobs", "batch", ""),
    ("delete", "jobs", "batch", ""),
    ("create", "configmaps", "", ""),
    ("patch", "configmaps", "", ""),
    ("create", "services", "", ""),
    ("create", "networkpolicies", "networking.k8s.io", ""),
    ("create", "persistentvolumeclaims", "", ""),
    ("delete", "persistentvolumeclaims", "", ""),
    ("list", "pods", "", ""),
    ("delete", "pods", "", ""),
    ("get", "pods", "", "log"),
    ("list", "events", "", ""),
    ("list", "resourcequotas", "", ""),
    ("list", "workloads", "kueue.x-k8s.io", ""),
    ("get", "localqueues", "kueue.x-k8s.io", ""),
]
# What it must never do in the platform namespace: its data, its run, its secrets, its own configuration.
PLATFORM_DENIED = [
    ("get", "persistentvolumeclaims", "", ""),
    ("delete", "persistentvolumeclaims", "", ""),
    ("list", "configmaps", "", ""),
    ("delete", "configmaps", "", ""),
    ("get", "jobs", "batch", ""),
    ("delete", "jobs", "batch", ""),
    ("create", "jobs", "batch", ""),
    ("list", "secrets", "", ""),
    ("get", "secrets", "", ""),
    ("list", "pods", "", ""),
    ("delete", "pods", "", ""),
    ("get", "pods", "", "log"),
    ("get", "deployments", "apps", ""),
    ("patch", "deployments", "apps", ""),
    ("delete", "services", "", ""),
    ("delete", "networkpolicies", "networking.k8s.io", ""),
    ("update", "resourcequotas", "", ""),
    ("get", "trainingjobs", "ml-platform.dev", ""),
]


@pytest.mark.usefixtures("rbac_applied")
@pytest.mark.parametrize("team", ["vision", "nlp"])
def test_the_launcher_may_run_tasks_in_every_team_namespace(cluster: LocalCluster, team: str) -> None:
    namespace = f"{PLATFORM}-{team}"
    refused = [r for r in TEAM_RIGHTS if not allowed(cluster, r[0], r[1], namespace, group=r[2], subresource=r[3])]
    assert refused == [], f"the launcher lacks in {namespace}: {refused}"
    # Even in a team namespace: no Secrets, no RBAC, no quota changes.
    for verb, resource, group in (("get", "secrets", ""), ("create", "rolebindings", "rbac.authorization.k8s.io"),
                                  ("update", "resourcequotas", ""), ("delete", "limitranges", "")):  # fmt: skip
        assert not allowed(cluster, verb, resource, namespace, group=group), (verb, resource, namespace)


@pytest.mark.usefixtures("rbac_applied")
def test_the_launcher_can_neither_read_nor_change_nor_delete_the_platform_objects(cluster: LocalCluster) -> None:
    granted = [r for r in PLATFORM_DENIED if allowed(cluster, r[0], r[1], PLATFORM, group=r[2], subresource=r[3])]
    assert granted == [], f"the launcher may, in the platform namespace: {granted}"
    # Not in a namespace the platform does not own either.
    assert not allowed(cluster, "create", "jobs", "default", group="batch")


@pytest.mark.usefixtures("rbac_applied")
def test_the_launcher_cluster_wide_rights_are_the_reviews_and_reading_cluster_queues(cluster: LocalCluster) -> None:
    assert allowed(cluster, "create", "tokenreviews", group="authentication.k8s.io")
    assert allowed(cluster, "create", "subjectaccessreviews", group="authorization.k8s.io")
    assert allowed(cluster, "list", "clusterqueues", group="kueue.x-k8s.io")
    for verb, resource, group in (("update", "clusterqueues", "kueue.x-k8s.io"), ("list", "namespaces", ""),
                                  ("list", "nodes", ""), ("list", "secrets", ""), ("list", "jobs", "batch"),
                                  ("create", "namespaces", ""), ("list", "persistentvolumes", "")):  # fmt: skip
        assert not allowed(cluster, verb, resource, group=group), (verb, resource)
