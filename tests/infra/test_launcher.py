"""The task launcher component alone under mocks: its children, their links, least privilege."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pulumi
import pytest

from infra.config.schema import load_schema
from infra.launcher import LauncherTeam, TaskLauncher, TaskLauncherArgs
from infra.render import RecordingMocks
from workloads.pod import Resources
from workloads.quota import quota_problems
from workloads.task import launcher_cluster_role_rules, launcher_team_rules

from .conftest import find, objects_of, render_stack

Run = Callable[[Callable[[], Any]], RecordingMocks]
NAME = "skyrun"
"""The launcher's Deployment, Service and ServiceAccount (docs/launcher.md)."""
ARGS = TaskLauncherArgs(
    namespace="team-a",
    instance="dev",
    image="ml-platform-services:1.0",
    task_image="ml-platform:1.0",
    image_pull_policy="IfNotPresent",
    resources=Resources(cpu_request="100m", cpu_limit="500m", memory_request="128Mi", memory_limit="256Mi"),
    max_active_tasks_per_user=4,
    ttl_seconds_after_finished=3600,
    task_service_account="default",
    audience="skyrun",
    replicas=2,
    teams=(
        LauncherTeam("vision", "team-a-vision", ("alice", "bob"), "vision"),
        LauncherTeam("nlp", "team-a-nlp", ("*",), ""),
    ),
)


def render(component: Run, args: TaskLauncherArgs = ARGS) -> tuple[RecordingMocks, list[dict[str, Any]]]:
    def build() -> Any:
        launcher = TaskLauncher("launcher", args)
        return pulumi.Output.all(launcher.deployment_name, launcher.url).apply(
            lambda out: assert_outputs(out, args.namespace)
        )

    mocks = component(build)
    return mocks, mocks.objects()


def assert_outputs(out: list[str], namespace: str) -> None:
    assert out == [NAME, f"http://{NAME}.{namespace}.svc.cluster.local:8000"]


def test_type_token_and_child_names(component: Run) -> None:
    mocks, objects = render(component)
    assert mocks.resources[0].type == "mlplatform:launcher:TaskLauncher"
    assert all(r.name.startswith("launcher") for r in mocks.resources)
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole", "ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget", "Service",
        "ServiceAccount",
    ]  # fmt: skip


def test_selectors_match_the_pods_and_the_pods_are_restricted(component: Run) -> None:
    _, objects = render(component)
    deployment = find(objects, "Deployment")
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        find(objects, "Service")["spec"]["selector"],
        find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    spec = template["spec"]
    # Pod Security Standards `restricted`, running as the image's user 10001 (the Dockerfile's USER).
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert set(container["resources"]) == {"requests", "limits"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"][0]["name"] == "http"
    assert find(objects, "Service")["spec"]["ports"][0]["targetPort"] == "http"


def test_rbac_is_task_rights_for_team_namespaces_and_only_reviews_cluster_wide(component: Run) -> None:
    """Nothing in the platform namespace (no Role, no RoleBinding): the task rights are a ClusterRole that only the
    team namespaces' RoleBindings bind (infra/teams.py); cluster-wide, the two reviews and reading ClusterQueues."""
    _, objects = render(component)
    account = find(objects, "ServiceAccount")["metadata"]["name"]
    assert find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    tasks = find(objects, "ClusterRole", "skyrun-team-a-tasks")
    write = ["get", "list", "watch", "create", "update", "patch", "delete"]
    granted = {(group, resource): rule["verbs"] for rule in tasks["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}  # fmt: skip
    assert granted == {
        ("batch", "jobs"): write, ("", "services"): write, ("", "configmaps"): write,
        ("", "persistentvolumeclaims"): write, ("networking.k8s.io", "networkpolicies"): write,
        ("", "pods"): ["get", "list", "watch", "delete"], ("", "pods/log"): ["get"],
        ("", "events"): ["get", "list", "watch"], ("", "resourcequotas"): ["get", "list"],
        ("coordination.k8s.io", "leases"): ["get", "create", "update"],
        ("kueue.x-k8s.io", "workloads"): ["get", "list", "watch"],
        ("kueue.x-k8s.io", "localqueues"): ["get", "list", "watch"],
        ("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads"): ["get"],
    }  # fmt: skip
    # The launcher's engine tier (tests/launcher/harness.py) runs the server bound to exactly these rules.
    assert tasks["rules"] == launcher_team_rules()
    reviews = find(objects, "ClusterRole", "skyrun-team-a-reviews")
    assert reviews["rules"] == launcher_cluster_role_rules()
    assert {(g, r, v) for rule in reviews["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]} == {
        ("authentication.k8s.io", "tokenreviews", "create"), ("authorization.k8s.io", "subjectaccessreviews", "create"),
        ("kueue.x-k8s.io", "clusterqueues", "get"), ("kueue.x-k8s.io", "clusterqueues", "list"),
    }  # fmt: skip
    binding = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "skyrun-team-a-reviews"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "team-a"}]


def test_team_namespaces_bind_the_task_rights_and_hold_the_anchor() -> None:
    """The stack: each team namespace has a RoleBinding of the launcher's task ClusterRole to its ServiceAccount in
    the platform namespace, and the anchor ConfigMap the launcher's SKYRUN_ANCHOR names."""
    teams = [{"name": "vision", "users": ["alice"], "cpu": "2", "memory": "4Gi", "storage": "10Gi", "volumes": 3},
             {"name": "nlp", "users": ["*"], "cpu": "1", "memory": "2Gi", "storage": "5Gi", "volumes": 2}]  # fmt: skip
    objects = objects_of(render_stack("dev", teams=teams))
    bindings = sorted(
        (o["metadata"]["namespace"], o["roleRef"]["name"], o["subjects"][0]["namespace"])
        for o in objects
        if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "skyrun-tasks"
    )
    assert bindings == [("ml-platform-nlp", "skyrun-ml-platform-tasks", "ml-platform"),
                        ("ml-platform-vision", "skyrun-ml-platform-tasks", "ml-platform")]  # fmt: skip
    anchors = sorted(o["metadata"]["namespace"] for o in objects
                     if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "skyrun-anchor")  # fmt: skip
    assert anchors == ["ml-platform-nlp", "ml-platform-vision"]
    env = {e["name"]: e.get("value") for e in
           find(objects, "Deployment", "skyrun")["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert env["SKYRUN_ANCHOR"] == "skyrun-anchor"
    assert json.loads(env["SKYRUN_TEAMS"]) == [
        {"name": "vision", "namespace": "ml-platform-vision", "users": ["alice"], "queue": ""},
        {"name": "nlp", "namespace": "ml-platform-nlp", "users": ["*"], "queue": ""},
    ]
    with_kueue = objects_of(render_stack("dev", teams=teams, kueue=True))
    env = {e["name"]: e.get("value") for e in
           find(with_kueue, "Deployment", "skyrun")["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert [t["queue"] for t in json.loads(env["SKYRUN_TEAMS"])] == ["vision", "nlp"]


def test_the_server_is_configured_from_the_args(component: Run) -> None:
    args = TaskLauncherArgs(**{**ARGS.__dict__, "max_active_tasks_per_user": 7, "ttl_seconds_after_finished": 60,
                               "task_service_account": "tasks", "audience": "ml-team", "replicas": 3})  # fmt: skip
    _, objects = render(component, args)
    deployment = find(objects, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SKYRUN_MAX_ACTIVE_TASKS_PER_USER"] == "7" and env["SKYRUN_IMAGE"] == "ml-platform:1.0"
    assert env["SKYRUN_TTL_SECONDS_AFTER_FINISHED"] == "60" and env["SKYRUN_TASK_SERVICE_ACCOUNT"] == "tasks"
    assert env["SKYRUN_AUDIENCE"] == "ml-team" and deployment["spec"]["replicas"] == 3
    assert env["SKYRUN_HOST"] == "0.0.0.0"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ml-platform-services:1.0"
    assert find(objects, "Service")["spec"]["type"] == "ClusterIP"  # the CLI reaches it by port-forward or Ingress


def test_every_launcher_knob_is_a_stack_key() -> None:
    """launcher* keys reach the launcher's env; a bad one fails before anything is declared, naming the key."""
    from infra.config import ConfigError

    objects = objects_of(render_stack("dev", launcherReplicas=3, launcherMaxActiveTasksPerUser=9, quotaCpu="20",
                                      launcherTaskTtlSeconds=120, launcherAudience="team-a",
                                      launcherTaskServiceAccount="runner"))  # fmt: skip
    deployment = find(objects, "Deployment", "skyrun")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert deployment["spec"]["replicas"] == 3
    assert (env["SKYRUN_MAX_ACTIVE_TASKS_PER_USER"], env["SKYRUN_TTL_SECONDS_AFTER_FINISHED"]) == ("9", "120")
    assert (env["SKYRUN_AUDIENCE"], env["SKYRUN_TASK_SERVICE_ACCOUNT"]) == ("team-a", "runner")
    for key, value, says in [
        ("launcherReplicas", 0, "launcherReplicas=0: must be between 1 and 10"),
        ("launcherMaxActiveTasksPerUser", 0, "launcherMaxActiveTasksPerUser=0: must be between 1 and 1000"),
        ("launcherTaskTtlSeconds", -1, "launcherTaskTtlSeconds=-1: must be between 0 and 604800"),
        ("launcherAudience", "has space", "launcherAudience='has space': must be a token audience"),
        ("launcherTaskServiceAccount", "Runner_1", "launcherTaskServiceAccount='Runner_1': must be a DNS-1123"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            render_stack("dev", **{key: value})


def test_the_launcher_checks_every_key_of_the_platform_quota_and_names_its_config_key(
    gpu_objects: list[dict[str, Any]],
) -> None:
    quota = find(gpu_objects, "ResourceQuota", "platform-quota")
    assert quota["metadata"]["name"] == "platform-quota", "the quota the launcher reads by name (docs/launcher.md)"
    hard = quota["spec"]["hard"]
    assert "requests.nvidia.com/gpu" in hard, "the gpu stack has every kind of key"
    huge = Resources(cpu_request="1000", cpu_limit="1000", memory_request="1000Ti", memory_limit="1000Ti", gpus=8)
    problems = quota_problems(huge, 64, [quota])
    assert sorted(p.message.split(":")[0] for p in problems) == sorted(hard)
    schema = load_schema()
    for problem in problems:
        config_key = problem.message.rsplit("raise ", 1)[1]
        assert config_key in schema, problem.message
