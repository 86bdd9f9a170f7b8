"""The policy pack's rules, offline: each with passing and failing resources, and both stacks pass them all."""

from __future__ import annotations

from typing import Any

import pytest
from pulumi_policy import ResourceValidationArgs, ResourceValidationPolicy, StackValidationArgs
from pulumi_policy.policy import PolicyResource

from infra.render import RecordingMocks, normalize
from policy.policies import POLICIES

from .conftest import render_stack

BY_NAME = {p.name: p for p in POLICIES}


def resource_violations(policy_name: str, resource_type: str, props: dict[str, Any]) -> list[str]:
    policy = BY_NAME[policy_name]
    assert isinstance(policy, ResourceValidationPolicy)
    found: list[str] = []
    args = ResourceValidationArgs(resource_type, props, f"urn:{resource_type}::x", "x", None, None)  # type: ignore[arg-type]
    policy.validate(args, lambda message, urn=None: found.append(message))
    return found


def stack_violations(mocks: RecordingMocks) -> dict[str, list[str]]:
    resources = [
        PolicyResource(r.type, normalize(r.inputs), f"urn:{r.type}::{r.name}", r.name, None, None, None, [], {})  # type: ignore[arg-type]
        for r in mocks.resources
    ]
    found: dict[str, list[str]] = {}
    for policy in POLICIES:
        messages: list[str] = []
        report = lambda message, urn=None, messages=messages: messages.append(message)  # noqa: E731
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                policy.validate(
                    ResourceValidationArgs(r.resource_type, r.props, r.urn, r.name, None, None),  # type: ignore[arg-type]
                    report,
                )
        else:
            policy.validate(StackValidationArgs(resources), report)
        found[policy.name] = messages
    return found


def deployment(**container: Any) -> dict[str, Any]:
    base = {
        "name": "app",
        "image": "registry.example.com/app:1.2.3",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }  # fmt: skip
    base.update(container)
    return {"spec": {"template": {"spec": {"containers": [base]}}}}


DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def test_a_good_deployment_passes_every_resource_rule() -> None:
    for name in ("containers-have-limits", "restricted-security-context", "no-latest-image"):
        assert resource_violations(name, DEPLOYMENT, deployment()) == []


def test_resources_that_run_no_pods_are_ignored() -> None:
    assert resource_violations("containers-have-limits", "kubernetes:core/v1:ConfigMap", {"data": {}}) == []


def test_missing_limits_fail_including_init_containers() -> None:
    props = deployment(resources={"requests": {"cpu": "1"}})
    assert len(resource_violations("containers-have-limits", DEPLOYMENT, props)) == 2
    props = deployment()
    props["spec"]["template"]["spec"]["initContainers"] = [{"name": "init", "image": "busybox:1.36"}]
    assert resource_violations("containers-have-limits", DEPLOYMENT, props) == [
        "x: container 'init' sets no requests for cpu, memory",
        "x: container 'init' sets no limits for cpu, memory",
    ]


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation"),
        ({"runAsNonRoot": False}, "non-root"),
        ({"privileged": True}, "privileged"),
        ({"capabilities": {"drop": ["NET_RAW"]}}, "drop ALL"),
        ({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}, "SYS_ADMIN"),
        ({"seccompProfile": {"type": "Unconfined"}}, "seccompProfile"),
        ({"readOnlyRootFilesystem": False}, "readOnlyRootFilesystem"),
    ],
)
def test_unrestricted_security_contexts_fail(change: dict[str, Any], phrase: str) -> None:
    props = deployment()
    props["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(change)
    problems = resource_violations("restricted-security-context", DEPLOYMENT, props)
    assert any(phrase in p for p in problems), problems


def test_host_namespaces_and_host_path_volumes_fail() -> None:
    props = deployment()
    props["spec"]["template"]["spec"].update({"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {}}]})
    problems = resource_violations("restricted-security-context", DEPLOYMENT, props)
    assert any("hostNetwork" in p for p in problems) and any("hostPath" in p for p in problems)


@pytest.mark.parametrize(
    ("image", "ok"),
    [("repo/app:1.0", True), ("repo/app@sha256:" + "a" * 64, True), ("localhost:5000/app:2", True),
     ("repo/app:latest", False), ("repo/app", False), ("localhost:5000/app", False)],
)  # fmt: skip
def test_images_need_a_version(image: str, ok: bool) -> None:
    assert (resource_violations("no-latest-image", DEPLOYMENT, deployment(image=image)) == []) is ok


@pytest.mark.parametrize("stack", ["dev", "gpu"])
def test_both_stacks_pass_every_policy(stack: str) -> None:
    violations = stack_violations(render_stack(stack))
    assert violations == {p.name: [] for p in POLICIES}


def test_gpu_stack_with_nodeport_or_without_tls_fails() -> None:
    nodeport = stack_violations(render_stack("gpu", serviceType="NodePort"))
    assert len(nodeport["no-nodeport-on-gpu"]) == 2  # inference and MLflow
    plain = stack_violations(render_stack("gpu", tlsEnabled=False))
    assert plain["tls-on-gpu-ingress"] and "inference.ml.example.com" in plain["tls-on-gpu-ingress"][0]


def test_gpu_rules_do_not_apply_without_gpus() -> None:
    """dev uses NodePorts on purpose: the GPU-only rules stay quiet there."""
    violations = stack_violations(render_stack("dev", tlsEnabled=False))
    assert violations["no-nodeport-on-gpu"] == [] and violations["tls-on-gpu-ingress"] == []


def test_a_latest_image_in_a_stack_is_caught() -> None:
    violations = stack_violations(render_stack("gpu", image="registry.example.com/ml-platform:latest"))
    # The trainer and inference run `image`
    assert len(violations["no-latest-image"]) == 2
    violations = stack_violations(render_stack("gpu", servicesImage="registry.example.com/ml-platform-services:latest"))
    # MLflow, the TrainingJob operator and the task launcher run `servicesImage`
    assert len(violations["no-latest-image"]) == 3
