"""Each component alone under mocks: its type token, its children, its outputs."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pulumi
import pytest

from infra.config import Resources
from infra.inference import InferenceArgs, InferenceService, IngressArgs
from infra.mlflow import Mlflow, MlflowArgs, PostgresArgs
from infra.namespace import Namespace, NamespaceArgs
from infra.rbac import TrainerRbac, TrainerRbacArgs
from infra.render import RecordingMocks, redact_secrets
from infra.storage import Storage, StorageArgs, VolumeClaim
from infra.tls import Tls, TlsArgs, wait_for_injected_ca_bundle

from .conftest import find

Run = Callable[[Callable[[], Any]], RecordingMocks]
SMALL = Resources(cpu_request="100m", cpu_limit="1", memory_request="64Mi", memory_limit="128Mi")


def types(mocks: RecordingMocks) -> list[str]:
    return [r.type for r in mocks.resources]


def children_named(mocks: RecordingMocks, prefix: str) -> None:
    for r in mocks.resources:
        assert r.name == prefix or r.name.startswith(f"{prefix}-"), f"child {r.name} does not start with {prefix}-"


def test_namespace_component(component: Run) -> None:
    def build() -> Any:
        ns = Namespace("ns", NamespaceArgs("team-a", "4", "8Gi", 10, 2, SMALL))
        return ns.name.apply(lambda name: assert_equal(name, "team-a"))

    mocks = component(build)
    assert types(mocks)[0] == "mlplatform:namespace:Namespace"
    children_named(mocks, "ns")
    objects = mocks.objects()
    ns = find(objects, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert find(objects, "ResourceQuota")["spec"]["hard"] == {
        "requests.cpu": "4", "limits.cpu": "4", "requests.memory": "8Gi", "limits.memory": "8Gi", "pods": "10",
        "requests.nvidia.com/gpu": "2",
    }  # fmt: skip
    limits = find(objects, "LimitRange")["spec"]["limits"][0]
    assert limits["default"] == {"cpu": "1", "memory": "128Mi"}
    assert limits["defaultRequest"] == {"cpu": "100m", "memory": "64Mi"}


def test_rbac_component(component: Run) -> None:
    def build() -> Any:
        rbac = TrainerRbac("rbac", TrainerRbacArgs(namespace="team-a", service_account_name="trainer", instance="r"))
        return rbac.service_account_name.apply(lambda name: assert_equal(name, "trainer"))

    mocks = component(build)
    assert types(mocks)[0] == "mlplatform:rbac:TrainerRbac"
    children_named(mocks, "rbac")
    kinds = sorted(o["kind"] for o in mocks.objects())
    assert kinds == ["Role", "RoleBinding", "ServiceAccount"]


@pytest.mark.parametrize("mode", ["hostPath", "storageClass"])
def test_storage_component(component: Run, mode: str) -> None:
    claims = (VolumeClaim("checkpoints", "5Gi", "ReadWriteMany"), VolumeClaim("mlflow", "1Gi", "ReadWriteOnce"))

    def build() -> Any:
        storage = Storage("st", StorageArgs("team-a", mode, "/var/local/x", "fast", claims, "inst", "dev"))
        expected_sub_paths = {"checkpoints": "dev/checkpoints", "mlflow": "dev/mlflow"}
        assert storage.sub_paths == (expected_sub_paths if mode == "hostPath" else dict.fromkeys(expected_sub_paths))
        return pulumi.Output.all(**storage.claim_names).apply(
            lambda names: assert_equal(names, {"checkpoints": "checkpoints", "mlflow": "mlflow"})
        )

    mocks = component(build)
    children_named(mocks, "st")
    objects = mocks.objects()
    pvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    pvs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolume"}
    assert pvcs["checkpoints"]["spec"]["accessModes"] == ["ReadWriteMany"]
    if mode == "hostPath":
        assert set(pvs) == {"inst-checkpoints", "inst-mlflow"}
        for role, pvc in pvcs.items():
            pv = pvs[pvc["spec"]["volumeName"]]
            # The mounted root itself (it must exist, world-writable); pods mount <stack>/<role> of it as subPath,
            # which the kubelet creates with the root's mode. DirectoryOrCreate would make a root-owned 0755 dir.
            assert pv["spec"]["hostPath"] == {"path": "/var/local/x", "type": "Directory"}, role
            assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""
            assert pv["spec"]["capacity"] == pvc["spec"]["resources"]["requests"]
            assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"]
    else:
        assert not pvs
        assert all(p["spec"]["storageClassName"] == "fast" and "volumeName" not in p["spec"] for p in pvcs.values())


@pytest.mark.parametrize("postgres", [False, True])
def test_mlflow_component(component: Run, postgres: bool) -> None:
    pg = PostgresArgs("postgres:17", "1Gi", "", "s3cret-pw", SMALL) if postgres else None

    def build() -> Any:
        m = Mlflow(
            "mlflow", MlflowArgs("team-a", "img:1", "IfNotPresent", "mlflow", "ClusterIP", 30500, SMALL, "i", pg)
        )
        return m.tracking_uri.apply(lambda uri: assert_equal(uri, "http://mlflow.team-a.svc.cluster.local:5000"))

    mocks = component(build)
    assert types(mocks)[0] == "mlplatform:mlflow:Mlflow"
    children_named(mocks, "mlflow")
    objects = redact_secrets(mocks.objects())
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Deployment", "Service"] + (["Secret", "Service", "StatefulSet"] if postgres else [])
    assert kinds == sorted(expected)
    deployment = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["startupProbe"]["httpGet"]["path"] == "/health"
    assert ("initContainers" in pod) == postgres
    assert "s3cret-pw" not in repr(objects)


@pytest.mark.parametrize("ingress", [None, "http", "https"])
def test_inference_component(component: Run, ingress: str | None) -> None:
    ingress_args = None
    if ingress:
        ingress_args = IngressArgs("api.example.com", "nginx", "issuer" if ingress == "https" else None)
    args = InferenceArgs(
        namespace="team-a", image="img:1", image_pull_policy="IfNotPresent", model_uri="models:/m@champion",
        tracking_uri="http://mlflow:5000", resources=SMALL, service_type="ClusterIP", node_port=30092,
        min_replicas=2, max_replicas=5, cpu_utilization=50, scale_up_window_s=10, scale_down_window_s=100,
        instance="i", ingress=ingress_args,
    )  # fmt: skip
    expected_url = {
        None: "http://inference.team-a.svc.cluster.local:8080",
        "http": "http://api.example.com",
        "https": "https://api.example.com",
    }[ingress]

    def build() -> Any:
        service = InferenceService("inf", args)
        return service.url.apply(lambda url: assert_equal(url, expected_url))

    mocks = component(build)
    assert types(mocks)[0] == "mlplatform:inference:InferenceService"
    children_named(mocks, "inf")
    objects = mocks.objects()
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert ("Ingress" in kinds) == (ingress is not None)
    assert ("Certificate" in kinds) == (ingress == "https")
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 50}


@pytest.mark.parametrize(("issuer", "install"), [("selfSigned", True), ("acme", False)])
def test_tls_component(component: Run, issuer: str, install: bool) -> None:
    args = TlsArgs(
        "team-a", install, "cert-manager", issuer, "me@example.com", "https://acme.example/dir", "nginx", "i"
    )
    expected = "ml-platform-ca" if issuer == "selfSigned" else "ml-platform-acme"

    def build() -> Any:
        return Tls("tls", args).issuer_name.apply(lambda name: assert_equal(name, expected))

    mocks = component(build)
    assert types(mocks)[0] == "mlplatform:tls:Tls"
    children_named(mocks, "tls")
    assert ("kubernetes-cert-manager:index:CertManager" in types(mocks)) == install
    issuers = [o for o in mocks.objects() if o["kind"] == "Issuer"]
    assert expected in {i["metadata"]["name"] for i in issuers}


def assert_equal(actual: Any, expected: Any) -> None:
    assert actual == expected


def test_tls_from_a_local_chart_installs_cert_managers_chart_with_its_images_and_waits_for_the_webhook(
    component: Run,
) -> None:
    args = TlsArgs(
        "team-a", True, "cert-manager", "selfSigned", "", "https://acme.example/dir", "traefik", "i",
        cert_manager_chart="/charts/cert-manager", cert_manager_images="registry.local/jetstack",
        cert_manager_version="v1.21.2",
    )  # fmt: skip
    mocks = component(lambda: Tls("tls", args).issuer_name)
    assert "kubernetes-cert-manager:index:CertManager" not in types(mocks)  # no chart download
    (chart,) = [r for r in mocks.resources if r.type == "kubernetes:helm.sh/v4:Chart"]
    assert chart.inputs["chart"] == "/charts/cert-manager"
    assert chart.inputs["namespace"] == "cert-manager"
    values = chart.inputs["values"]
    # The chart in cert-manager's module carries version v0.0.0, so every image is named in full.
    assert values["image"] == {"repository": "registry.local/jetstack/cert-manager-controller", "tag": "v1.21.2"}
    for name in ("webhook", "cainjector", "acmesolver"):
        assert values[name]["image"] == {"repository": f"registry.local/jetstack/cert-manager-{name}", "tag": "v1.21.2"}
    # The CRDs go with the cert-manager the stack installed: kept, they would fail the next `pulumi up`.
    assert values["crds"] == {"enabled": True, "keep": False}
    assert values["startupapicheck"] == {"enabled": False}  # a Helm hook: Pulumi would never run it
    # The Issuers wait for cert-manager (its webhook answers only once cainjector filled its caBundle).
    for name in ("tls-selfsigned", "tls-issuer"):
        assert "tls-cert-manager" in mocks.options_of("kubernetes:cert-manager.io/v1:Issuer", name).dependencies
    ca = next(o for o in mocks.objects() if o["kind"] == "Certificate")
    assert ca["metadata"]["annotations"] == {
        "pulumi.com/waitFor": "condition=Ready",
        "pulumi.com/timeoutSeconds": "300",
    }


def test_the_webhook_configurations_of_the_chart_wait_for_their_ca_bundle() -> None:
    def transformed(type_token: str) -> Any:
        args = SimpleNamespace(
            type_=type_token, props={"metadata": {"name": "w", "annotations": {"a": "b"}}}, opts=None
        )
        return wait_for_injected_ca_bundle(args)  # type: ignore[arg-type]

    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        result = transformed(f"kubernetes:admissionregistration.k8s.io/v1:{kind}")
        assert result.props["metadata"] == {
            "name": "w",
            "annotations": {
                "a": "b",
                "pulumi.com/waitFor": "jsonpath={.webhooks[0].clientConfig.caBundle}",
                "pulumi.com/timeoutSeconds": "300",
            },
        }
    assert transformed("kubernetes:apps/v1:Deployment") is None
