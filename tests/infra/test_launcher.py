"""The task launcher component alone under mocks: its children, their links, least privilege."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pulumi
import pytest

from infra.config.schema import load_schema
from infra.launcher import TaskLauncher, TaskLauncherArgs
from infra.render import RecordingMocks
from workloads.pod import Resources
from workloads.quota import quota_problems
from workloads.task import launcher_cluster_role_rules, launcher_role_rules

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
        "ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget", "Role",
        "RoleBinding", "Service", "ServiceAccount",
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


def test_rbac_is_the_namespaced_rules_plus_only_the_two_reviews(component: Run) -> None:
    _, objects = render(component)
    account = find(objects, "ServiceAccount")["metadata"]["name"]
    assert find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account
    role = find(objects, "Role")
    assert role["metadata"]["namespace"] == "team-a"
    write = ["get", "list", "watch", "create", "update", "patch", "delete"]
    granted = {(group, resource): rule["verbs"] for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}  # fmt: skip
    assert granted == {
        ("batch", "jobs"): write, ("", "services"): write, ("", "configmaps"): write,
        ("", "persistentvolumeclaims"): write, ("networking.k8s.io", "networkpolicies"): write,
        ("", "pods"): ["get", "list", "watch", "delete"], ("", "pods/log"): ["get"],
        ("", "events"): ["get", "list", "watch"], ("", "resourcequotas"): ["get", "list"],
        ("apps", "deployments"): ["get"],
    }  # fmt: skip
    # The launcher's engine tier (tests/launcher/harness.py) runs the server bound to exactly these rules.
    assert role["rules"] == launcher_role_rules(NAME)
    cluster_role = find(objects, "ClusterRole")
    assert cluster_role["rules"] == launcher_cluster_role_rules()
    assert {v for rule in cluster_role["rules"] for v in rule["verbs"]} == {"create"}
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "tokenreviews", "subjectaccessreviews",
    }  # fmt: skip
    for binding, ref in (("RoleBinding", role), ("ClusterRoleBinding", cluster_role)):
        b = find(objects, binding)
        assert b["roleRef"]["name"] == ref["metadata"]["name"]
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "team-a"}]


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


def test_the_server_owns_tasks_by_its_own_deployment_and_may_read_only_that_one(component: Run) -> None:
    _, objects = render(component)
    deployment = find(objects, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SKYRUN_DEPLOYMENT"] == deployment["metadata"]["name"] == NAME
    rules = [r for r in find(objects, "Role")["rules"] if "deployments" in r["resources"]]
    assert rules == [{"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [NAME], "verbs": ["get"]}]
    quota_rules = [r for r in find(objects, "Role")["rules"] if "resourcequotas" in r["resources"]]
    assert [r["verbs"] for r in quota_rules] == [["get", "list"]]


def test_the_launcher_checks_every_key_of_the_platform_quota_and_names_its_config_key(
    gpu_objects: list[dict[str, Any]],
) -> None:
    quota = find(gpu_objects, "ResourceQuota")
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
