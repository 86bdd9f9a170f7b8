"""The TrainingJob API and its operator as both stacks declare them: the CRD is workloads/trainingjob.py's, the
operator's Role is exactly the rules its tests run it with, one Recreate replica, least privilege, reachable
MLflow and API server, and the config key that turns it all off."""

from __future__ import annotations

from typing import Any

from workloads.trainingjob import crd as engine_tier_crd
from workloads.trainingjob import operator_role_rules

from .conftest import find, objects_of, render_stack


def test_crd_is_the_one_workloads_defines(stack_objects: list[dict[str, Any]]) -> None:
    crd = find(stack_objects, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "trainingjobs.ml-platform.dev"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("ml-platform.dev", "Namespaced")
    assert spec["names"] | {"categories": None} == {
        "kind": "TrainingJob", "listKind": "TrainingJobList", "plural": "trainingjobs", "singular": "trainingjob",
        "shortNames": ["tj"], "categories": None,
    }  # fmt: skip
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}, "the operator writes status through its own subresource"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase", "Reason": ".status.reason", "Workers": ".spec.workers",
        "Progress": ".status.progress.percent", "Val loss": ".status.progress.valLoss", "Restarts": ".status.restarts",
        "Age": ".metadata.creationTimestamp", "Message": ".status.message", "Queue": ".spec.queueName",
        "Position": ".status.queuePosition",
    }  # fmt: skip
    # The operator's engine tier (tests/operator/test_engine.py) runs against workloads' CRD: the stack must declare
    # that very object, or what the engine tier validates is not what is deployed.
    assert crd["spec"] == engine_tier_crd()["spec"]


def test_operator_rbac_is_namespaced_and_exactly_the_tested_rules(stack_objects: list[dict[str, Any]]) -> None:
    role = find(stack_objects, "Role", "trainop")
    assert role["metadata"]["namespace"] == "ml-platform"
    # The operator's engine tier runs it bound to exactly these rules (tests/operator/harness.py).
    assert role["rules"] == operator_role_rules()
    granted = {(group, resource): rule["verbs"] for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}  # fmt: skip
    assert granted == {
        ("ml-platform.dev", "trainingjobs"): ["get", "list", "watch", "patch", "delete"],
        ("ml-platform.dev", "trainingjobs/status"): ["get", "patch"],
        ("batch", "jobs"): ["get", "list", "create", "patch", "delete"],
        ("", "configmaps"): ["get", "list", "create", "delete"],
        ("", "services"): ["get", "list", "create", "delete"],
        ("networking.k8s.io", "networkpolicies"): ["get", "list", "create", "delete"],
        ("", "pods"): ["get", "list"],
        ("", "pods/log"): ["get"],
        ("", "resourcequotas"): ["get", "list"],
        ("", "events"): ["list", "create", "patch"],
        ("events.k8s.io", "events"): ["create", "patch"],
        ("kueue.x-k8s.io", "localqueues"): ["get", "list"],
        ("kueue.x-k8s.io", "workloads"): ["get", "list"],
        ("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads"): ["get"],
    }  # fmt: skip
    assert not any("resourceNames" in rule for rule in role["rules"])
    binding = find(stack_objects, "RoleBinding", "trainop")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainop"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainop", "namespace": "ml-platform"}]
    # Cluster-wide, the operator only reads ClusterQueues (what a queue could ever admit); the rest is the launcher's.
    cluster_wide = [o for o in stack_objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")
                    and o["metadata"]["name"].startswith("trainop-")]  # fmt: skip
    assert sorted(o["kind"] for o in cluster_wide) == ["ClusterRole", "ClusterRoleBinding"]
    role = find(cluster_wide, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"], "verbs": ["get", "list"]}
    ]
    binding = find(cluster_wide, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "trainop-ml-platform-clusterqueues"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainop", "namespace": "ml-platform"}]


def test_with_kueue_a_trainingjob_that_names_no_queue_goes_through_the_stacks_training_queue() -> None:
    crd = find(objects_of(render_stack("dev", kueue=True, kueueQueue="training")), "CustomResourceDefinition")
    (version,) = crd["spec"]["versions"]
    assert (
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["queueName"]["default"] == "training"
    )
    plain = find(objects_of(render_stack("dev", kueueQueue="training")), "CustomResourceDefinition")
    assert (
        "default"
        not in plain["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "queueName"
        ]
    )  # without kueue the stack declares no queue: none is defaulted


def test_operator_deployment(stack_objects: list[dict[str, Any]]) -> None:
    deployment = find(stack_objects, "Deployment", "trainop")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "trainop"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "trainop"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WATCH_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.ml-platform.svc.cluster.local:5000"
    assert env["CHECKPOINT_CLAIM"]["value"] == "checkpoints"
    assert env["TRAINER_SERVICE_ACCOUNT"]["value"] == "trainer"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert (env["HEALTH_PORT"]["value"], env["METRICS_PORT"]["value"]) == ("8080", "9090"), "it listens where declared"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"] and container["resources"]["requests"]


def test_gpus_available_follows_the_accelerator() -> None:
    for stack, expected, image in (("dev", "false", "ml-platform:dev"),
                                   ("gpu", "true", "registry.example.com/ml-platform:0.1.0-cuda")):  # fmt: skip
        deployment = find(objects_of(render_stack(stack)), "Deployment", "trainop")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GPUS_AVAILABLE"] == expected, stack
        assert env["PLATFORM_IMAGE"] == image, "TrainingJobs run the stack's `image` (Pulumi.<stack>.yaml)"
        # Host-path storage puts each stack's data under <stack>/<role>: TrainingJobs use the same claim path.
        assert env.get("CHECKPOINT_SUB_PATH") == ("dev/checkpoints" if stack == "dev" else None)


def test_a_second_stack_on_the_cluster_leaves_the_crd_to_the_first() -> None:
    objects = objects_of(render_stack("gpu", trainingJobCrd=False))
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert find(objects, "Deployment", "trainop")


def test_config_key_turns_the_operator_off() -> None:
    objects = objects_of(render_stack("dev", trainingJobOperator=False))
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {n for n in names if n[1] in ("trainop", "trainop-to-kubernetes-api", "trainop-to-mlflow")}
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]
