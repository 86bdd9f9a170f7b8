"""The TrainingJob API and its operator as both stacks declare them: the CRD is workloads/trainingjob.py's, the
operator's Role is exactly the rules its tests run it with, one Recreate replica, least privilege, reachable
MLflow and API server, and the config key that turns it all off."""

from __future__ import annotations

from typing import Any

from workloads import trainingjob as tj

from .conftest import find, objects_of, render_stack


def test_crd_is_the_one_workloads_defines(stack_objects: list[dict[str, Any]]) -> None:
    crd = find(stack_objects, "CustomResourceDefinition")
    expected = tj.crd()
    assert crd["metadata"]["name"] == expected["metadata"]["name"] == f"{tj.PLURAL}.{tj.GROUP}"
    assert crd["spec"] == expected["spec"]


def test_operator_rbac_is_namespaced_and_exactly_the_tested_rules(stack_objects: list[dict[str, Any]]) -> None:
    role = find(stack_objects, "Role", "trainop")
    assert role["metadata"]["namespace"] == "ml-platform"
    assert role["rules"] == tj.operator_role_rules()
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert "*" not in verbs and not any("*" in r for rule in role["rules"] for r in rule["resources"])
    binding = find(stack_objects, "RoleBinding", "trainop")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainop"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainop", "namespace": "ml-platform"}]
    cluster_wide = [o for o in stack_objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert all(o["metadata"]["name"].startswith("skyrun-") for o in cluster_wide)  # the launcher's reviews only


def test_operator_deployment(stack_objects: list[dict[str, Any]]) -> None:
    deployment = find(stack_objects, "Deployment", "trainop")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "trainop"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "trainop"]
    env = {e["name"]: e for e in container["env"]}
    assert env[tj.ENV_WATCH_NAMESPACE]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env[tj.ENV_MLFLOW_TRACKING_URI]["value"].startswith("http://mlflow.ml-platform.svc")
    assert env[tj.ENV_CHECKPOINT_CLAIM]["value"] == "checkpoints"
    assert env[tj.ENV_TRAINER_SERVICE_ACCOUNT]["value"] == "trainer"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": tj.HEALTH_PORT, "metrics": tj.METRICS_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": tj.HEALTH_PATH, "port": "health"}
    assert container["resources"]["limits"] and container["resources"]["requests"]


def test_gpus_available_follows_the_accelerator() -> None:
    for stack, expected in (("dev", "false"), ("gpu", "true")):
        deployment = find(objects_of(render_stack(stack)), "Deployment", "trainop")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env[tj.ENV_GPUS_AVAILABLE] == expected, stack
        # Host-path storage puts each stack's data under <stack>/<role>: TrainingJobs use the same claim path.
        assert env.get(tj.ENV_CHECKPOINT_SUB_PATH) == ("dev/checkpoints" if stack == "dev" else None)


def test_a_second_stack_on_the_cluster_leaves_the_crd_to_the_first() -> None:
    objects = objects_of(render_stack("gpu", trainingJobCrd=False))
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert find(objects, "Deployment", "trainop")


def test_config_key_turns_the_operator_off() -> None:
    objects = objects_of(render_stack("dev", trainingJobOperator=False))
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {n for n in names if n[1] in ("trainop", "trainop-to-kubernetes-api", "trainop-to-mlflow")}
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]
