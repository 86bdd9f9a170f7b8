"""What the task launcher (skyrun/) shares with the stack and the tests: the labels, annotations and exit codes of a
task's objects, and the launcher's RBAC rules (`launcher_role_rules()`: what its ServiceAccount may do in the
platform namespace; the Pulumi component and the tests both use it). The SkyPilot task model and the objects of a
task are the launcher's own: skyrun/task_spec.py and skyrun/manifests.py.
"""

from __future__ import annotations

import re
from typing import Any

MANAGED_BY = "skyrun"
# Labels on every object of a task (and its pods). `username` is the user name made label-safe (lossy: for
# display and selectors a person types); ownership is decided on USER_HASH_LABEL and the exact name in
# USER_ANNOTATION.
TASK_LABEL = "skypilot-task"
TASK_ID_LABEL = "task-id"
TASK_NAME_LABEL = "task-name"
USERNAME_LABEL = "username"
USER_HASH_LABEL = "skyrun.ml-platform.dev/user-hash"
# Kubernetes sets this on every pod of an Indexed Job: the node index of the label list.
NODE_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
NODE_INDEX_FIELD = f"metadata.labels['{NODE_INDEX_LABEL}']"
# The record ConfigMap's labels: what kind of object (task or volume) and whether the task still counts
# against its user's cap on running tasks.
KIND_LABEL = "skyrun.ml-platform.dev/kind"
STATE_LABEL = "skyrun.ml-platform.dev/state"
STATE_ACTIVE, STATE_DONE = "active", "done"
USER_ANNOTATION = "skyrun.ml-platform.dev/user"
NAME_ANNOTATION = "skyrun.ml-platform.dev/name"
CONTAINER = "task"
LAUNCHER_HTTP_PORT = 8000
"""The launcher API's port: skyrun's default SKYRUN_PORT, the container port the stack declares and its
NetworkPolicy admits."""
LAUNCHER_METRICS_PORT = 9090
"""The launcher's Prometheus port (`/metrics`, no token): skyrun's default SKYRUN_METRICS_PORT."""
SETUP_FAILED_EXIT_CODE = 100
TASK_ID_LENGTH = 8
TASK_ID_RE = re.compile(r"^[a-z][a-z0-9]{7}$")
# SkyPilot's own node label for the accelerator type on Kubernetes (values lower-case, e.g. `h100`).
ACCELERATOR_NODE_LABEL = "skypilot.co/accelerator"
# Job conditions' FailJob rules, in podFailurePolicy order (their index is in the Job's Failed message).
SETUP_RULE_INDEX = 1
RUN_RULE_INDEX = 2

def launcher_role_rules(deployment: str) -> list[dict[str, Any]]:
    """What the launcher's ServiceAccount may do in the platform namespace: run tasks (Jobs, their Services,
    NetworkPolicies and record ConfigMaps), own volumes (PVCs), read pods, their logs and events (statuses,
    pending reasons), read the namespace's ResourceQuotas (refusing a task no quota can admit), and read its own
    Deployment `deployment` (the uid its tasks' ownerReferences name)."""
    write = ["get", "list", "watch", "create", "update", "patch", "delete"]
    return [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": write},
        {"apiGroups": [""], "resources": ["services", "configmaps", "persistentvolumeclaims"], "verbs": write},
        # Each task's nodes reach each other through a NetworkPolicy of the task's own.
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": write},
        # Stop deletes a task's pods with its Job (propagation) and also directly, so they end at once.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [deployment], "verbs": ["get"]},
    ]


def launcher_cluster_role_rules() -> list[dict[str, Any]]:
    """The only cluster-scoped rights: checking bearer tokens and asking whether a user may act for all users."""
    return [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
