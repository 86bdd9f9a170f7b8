"""What the task launcher (skyrun/) shares with the stack and the tests: the labels, annotations and exit codes of a
task's objects, and the launcher's RBAC rules (the Pulumi component and the tests both use them):
`launcher_team_rules()` (a ClusterRole bound by a RoleBinding in each team namespace),
`launcher_cluster_role_rules()` (cluster-wide) and, for a launcher without teams only, `launcher_role_rules()` in the
platform namespace. The SkyPilot task model and the objects of a task are the launcher's own: skyrun/task_spec.py
and skyrun/manifests.py.
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

_WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]


def _task_rules() -> list[dict[str, Any]]:
    """Where tasks live: run tasks (Jobs, their Services, NetworkPolicies and record ConfigMaps, the anchor read
    among them), own volumes (PVCs), read pods, their logs and events (statuses, pending reasons), read the
    namespace's ResourceQuotas (refusing a task or volume no quota can admit), and the per-user cap locks."""
    return [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": _WRITE},
        {"apiGroups": [""], "resources": ["services", "configmaps", "persistentvolumeclaims"], "verbs": _WRITE},
        # Each task's nodes reach each other through a NetworkPolicy of the task's own.
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": _WRITE},
        # Stop deletes a task's pods with its Job (propagation) and also directly, so they end at once.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "list"]},
        # The per-user cap's lock (skyrun/cap_lock.py): a Lease per user, taken and freed with optimistic updates.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    ]


def launcher_team_rules() -> list[dict[str, Any]]:
    """What the launcher's ServiceAccount may do in each team namespace: one ClusterRole with these rules, bound by a
    RoleBinding in every team namespace (never cluster-wide). The tasks' rules, plus reading Kueue's Workloads and
    LocalQueues (a queued task's reason, the team queue's ClusterQueue) and the LocalQueue's pending workloads from
    Kueue's visibility API (queue positions; the resource of Kueue's own pending-workloads-lq-viewer role)."""
    return [
        *_task_rules(),
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads", "localqueues"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["visibility.kueue.x-k8s.io"], "resources": ["localqueues/pendingworkloads"], "verbs": ["get"]},
    ]


def launcher_role_rules(deployment: str) -> list[dict[str, Any]]:
    """A launcher WITHOUT teams (local development, a single-team cluster): the tasks' rules in the platform
    namespace, and reading its own Deployment `deployment` (the uid its tasks' ownerReferences name). With teams
    the launcher has no rights in the platform namespace at all."""
    return [
        *_task_rules(),
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [deployment], "verbs": ["get"]},
    ]


def launcher_cluster_role_rules() -> list[dict[str, Any]]:
    """The only cluster-scoped rights: checking bearer tokens, asking whether a user may act for all users, and
    reading Kueue's ClusterQueues (what a team's queue, with its cohort, could ever admit)."""
    return [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"], "verbs": ["get", "list"]},
    ]
