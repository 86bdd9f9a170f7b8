"""Invariants of both stacks, whole, under mocks: what must hold for the platform to work on a real cluster."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
import yaml

from infra.config import parse_quantity

from .conftest import containers, find, objects_of, pod_specs, render_stack

RECOMMENDED = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_pod_labels(stack_objects: list[dict[str, Any]]) -> None:
    for workload, _ in pod_specs(stack_objects):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        if workload["kind"] != "Job":  # the Job controller manages its own selector
            assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels), workload["metadata"]["name"]
    pods = [w["spec"]["template"]["metadata"]["labels"] for w, _ in pod_specs(stack_objects)]
    for service in (o for o in stack_objects if o["kind"] == "Service"):
        matched = [p for p in pods if selects(service["spec"]["selector"], p)]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} workloads"


def test_every_object_has_recommended_labels_and_namespace(stack_objects: list[dict[str, Any]]) -> None:
    cluster_scoped = {"Namespace", "PersistentVolume"}
    for obj in stack_objects:
        meta = obj["metadata"]
        assert set(meta.get("labels", {})) >= RECOMMENDED, (obj["kind"], meta["name"])
        assert meta.get("name"), obj["kind"]
        if obj["kind"] not in cluster_scoped:
            assert meta.get("namespace") == "ml-platform", (obj["kind"], meta["name"])
    for workload, _ in pod_specs(stack_objects):
        assert set(workload["spec"]["template"]["metadata"]["labels"]) >= RECOMMENDED


def test_job_is_indexed_with_headless_subdomain_and_env_contract(stack_objects: list[dict[str, Any]]) -> None:
    job = find(stack_objects, "Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    workers = spec["completions"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == workers >= 1
    assert pod["restartPolicy"] == "Never"
    service = find(stack_objects, "Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert selects(service["spec"]["selector"], spec["template"]["metadata"]["labels"])
    env = env_of(pod["containers"][0])
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert env["WORLD_SIZE"] == str(workers)  # one GPU (or none) per pod: one rank per pod
    assert pod["containers"][0]["command"][:4] == ["python", "-m", "trainer", "train"]
    assert int(env["MASTER_PORT"]) == service["spec"]["ports"][0]["port"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml-platform.svc.cluster.local:5000"
    # `pulumi up` returns once the Job exists; skipAwait would also skip waiting for its deletion on replacement.
    annotations = job["metadata"]["annotations"]
    assert annotations["pulumi.com/waitFor"] == "jsonpath={.metadata.uid}"
    assert "pulumi.com/skipAwait" not in annotations


def test_several_gpus_per_pod_run_one_rank_per_gpu() -> None:
    job = find(objects_of(render_stack("gpu", gpusPerWorker=2, quotaGpus=8)), "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    workers = job["spec"]["completions"]
    assert container["command"] == [
        "python", "-m", "trainer", "launch", "--nproc", "2", "--nnodes", str(workers),
        "--node-rank", "$(JOB_COMPLETION_INDEX)", "--config", "/etc/trainer/train.yaml",
    ]  # fmt: skip
    env = env_of(container)
    assert env["WORLD_SIZE"] == str(workers * 2)
    # The pod's cpus are shared by its ranks: 8 cpus (gpu stack limit), 2 ranks -> 4 threads each.
    assert env["OMP_NUM_THREADS"] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_job_failure_policy_ignores_disruption_and_fails_on_config_error(stack_objects: list[dict[str, Any]]) -> None:
    job = find(stack_objects, "Job")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    ignore = next(r for r in rules if r["action"] == "Ignore")
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [2]}
    # Failures are counted per rank (an incident takes all ranks down once), and any rank over its limit fails
    # the Job.
    assert isinstance(job["spec"]["backoffLimitPerIndex"], int)
    assert job["spec"]["maxFailedIndexes"] == 0
    assert "backoffLimit" not in job["spec"]


def test_job_mounts_config_checkpoints_and_memory_shm(stack_objects: list[dict[str, Any]]) -> None:
    job = find(stack_objects, "Job")
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm"
    claim = volumes[mounts["/checkpoints"]]["persistentVolumeClaim"]["claimName"]
    find(stack_objects, "PersistentVolumeClaim", claim)
    config_map = find(stack_objects, "ConfigMap", volumes[mounts["/etc/trainer"]]["configMap"]["name"])
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["checkpoint"]["dir"].startswith("/checkpoints/")
    assert train["tracking"]["alias"] == "champion"
    assert pod["containers"][0]["command"][-1] == "/etc/trainer/train.yaml"


def test_dev_uses_gloo_and_no_gpus(dev_objects: list[dict[str, Any]]) -> None:
    job = find(dev_objects, "Job")
    train = yaml.safe_load(find(dev_objects, "ConfigMap")["data"]["train.yaml"])
    assert train["distributed"]["backend"] == "gloo"
    assert train["train"]["device"] == "cpu"
    for _, pod in pod_specs(dev_objects):
        for c in containers(pod):
            assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]
    assert "requests.nvidia.com/gpu" not in find(dev_objects, "ResourceQuota")["spec"]["hard"]


def test_gpu_uses_nccl_requests_gpus_and_tolerates_taints(gpu_objects: list[dict[str, Any]]) -> None:
    job = find(gpu_objects, "Job")
    pod = job["spec"]["template"]["spec"]
    train = yaml.safe_load(find(gpu_objects, "ConfigMap")["data"]["train.yaml"])
    assert train["distributed"]["backend"] == "nccl"
    assert train["train"]["device"] == "cuda"
    assert train["model"] == {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 256}
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert find(gpu_objects, "ResourceQuota")["spec"]["hard"]["requests.nvidia.com/gpu"] == "8"
    assert find(gpu_objects, "PersistentVolumeClaim", "checkpoints")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_container_has_requests_limits_and_restricted_context(stack_objects: list[dict[str, Any]]) -> None:
    for workload, pod in pod_specs(stack_objects):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in containers(pod):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{c['name']}"
            for kind in ("cpu", "memory"):
                request = parse_quantity(c["resources"]["requests"][kind])
                limit = parse_quantity(c["resources"]["limits"][kind])
                assert 0 < request <= limit, where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounted, f"{where} has a read-only root and no writable /tmp"


def test_only_trainer_pods_may_mount_a_token(stack_objects: list[dict[str, Any]]) -> None:
    for workload, pod in pod_specs(stack_objects):
        if workload["kind"] == "Job":
            assert pod["serviceAccountName"] == "trainer"
            assert pod["automountServiceAccountToken"] is False  # dns discovery needs no API access
        else:
            assert pod["automountServiceAccountToken"] is False, workload["metadata"]["name"]


def test_kubernetes_api_discovery_mounts_token_and_drops_master_addr() -> None:
    objects = objects_of(render_stack("dev", rankDiscovery="kubernetes-api"))
    pod = find(objects, "Job")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert "MASTER_ADDR" not in env_of(pod["containers"][0])
    assert env_of(pod["containers"][0])["TRAINER_JOB_NAME"] == "run-1-train"


def test_rbac_is_namespaced_read_only_on_pods(stack_objects: list[dict[str, Any]]) -> None:
    assert not [o for o in stack_objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = find(stack_objects, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = find(stack_objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainer", "namespace": "ml-platform"}]


def test_inference_deployment_hpa_and_pdb(stack_objects: list[dict[str, Any]]) -> None:
    deployment = find(stack_objects, "Deployment", "inference")
    spec = deployment["spec"]
    assert "replicas" not in spec, "the HPA owns the replica count"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = spec["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert env_of(container)["INFERENCE_MODEL_URI"] == "models:/tiny-gpt@champion"
    hpa = find(stack_objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 30
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 180
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = find(stack_objects, "PodDisruptionBudget")
    # maxUnavailable, not minAvailable 1: with one replica, minAvailable 1 would block every node drain.
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])


def test_service_exposure_per_stack(dev_objects: list[dict[str, Any]], gpu_objects: list[dict[str, Any]]) -> None:
    dev_inference = find(dev_objects, "Service", "inference")["spec"]
    assert dev_inference["type"] == "NodePort" and dev_inference["ports"][0]["nodePort"] == 30092
    assert find(dev_objects, "Service", "mlflow")["spec"]["ports"][0]["nodePort"] == 30500
    for name in ("inference", "mlflow"):
        spec = find(gpu_objects, "Service", name)["spec"]
        assert spec["type"] == "ClusterIP" and "nodePort" not in spec["ports"][0]


def test_ingress_tls_certificate_and_issuer(stack_objects: list[dict[str, Any]]) -> None:
    ingress = find(stack_objects, "Ingress")
    cert = find(stack_objects, "Certificate", "inference")
    assert ingress["spec"]["tls"][0]["secretName"] == cert["spec"]["secretName"]
    assert ingress["spec"]["tls"][0]["hosts"] == cert["spec"]["dnsNames"] == [ingress["spec"]["rules"][0]["host"]]
    issuers = {o["metadata"]["name"]: o for o in stack_objects if o["kind"] == "Issuer"}
    assert cert["spec"]["issuerRef"]["name"] in issuers
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "inference"


def test_dev_issuer_is_self_signed_ca_and_gpu_is_acme(dev_objects: Any, gpu_objects: Any) -> None:
    dev_issuers = {o["metadata"]["name"]: o["spec"] for o in dev_objects if o["kind"] == "Issuer"}
    assert dev_issuers["selfsigned-bootstrap"] == {"selfSigned": {}}
    ca_cert = find(dev_objects, "Certificate", "ml-platform-ca")
    assert ca_cert["spec"]["isCA"] is True
    assert dev_issuers["ml-platform-ca"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
    gpu_issuer = find(gpu_objects, "Issuer")
    assert gpu_issuer["spec"]["acme"]["email"] == "ml-platform@example.com"


def test_mlflow_backends(dev_objects: list[dict[str, Any]], gpu_objects: list[dict[str, Any]]) -> None:
    dev_cmd = find(dev_objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--serve-artifacts" in dev_cmd
    assert dev_cmd[dev_cmd.index("--backend-store-uri") + 1].startswith("sqlite:////mlflow/")
    hosts = dev_cmd[dev_cmd.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow:*", "mlflow.ml-platform.svc.cluster.local:*", "mlflow.ml-platform.svc:*"} <= set(hosts)
    mlflow = find(gpu_objects, "Deployment", "mlflow")
    assert mlflow["spec"]["replicas"] == 1 and mlflow["spec"]["strategy"]["type"] == "Recreate"
    gpu_pod = mlflow["spec"]["template"]["spec"]
    gpu_cmd = gpu_pod["containers"][0]["command"]
    assert gpu_cmd[:2] == ["sh", "-c"] and "postgresql://mlflow:$PGPASS@postgres:5432/mlflow" in gpu_cmd[2]
    assert "$(" not in gpu_cmd[2], "the kubelet would expand $(...)"
    password_volume = next(v for v in gpu_pod["volumes"] if v["name"] == "postgres-password")
    assert password_volume["secret"]["secretName"] == "postgres"
    statefulset = find(gpu_objects, "StatefulSet", "postgres")
    pg_container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert env_of(pg_container)["POSTGRES_PASSWORD_FILE"] == "/etc/postgres/password"
    for _, pod in pod_specs(gpu_objects):
        for c in containers(pod):
            assert not any("secretKeyRef" in str(e.get("valueFrom", "")) for e in c.get("env", [])), c["name"]
    assert find(gpu_objects, "Secret", "postgres")["stringData"] == {"password": "<secret:password>"}


def test_no_secret_value_outside_a_secret() -> None:
    """Render gpu with a recognisable password; it may appear only inside the Secret (and only there unredacted
    in the raw mock inputs, which is what the engine would encrypt)."""
    password = "pw-7f3a9c-do-not-leak"
    from infra.render import run_program, stack_config

    config, secret_keys = stack_config("gpu")
    config["ml-platform:postgresPassword"] = password
    mocks = run_program("gpu", config, secret_keys)
    for resource in mocks.resources:
        text = repr(resource.inputs)
        if password in text:
            assert resource.type == "kubernetes:core/v1:Secret", resource.name
    # And the rendered objects never show it, not even in the Secret.
    assert password not in yaml.safe_dump_all(objects_of(mocks))


def test_changed_training_config_changes_the_pod_template() -> None:
    """Pulumi replaces a Job whose pod template changes; a new train.yaml must change it (checksum annotation)."""

    def template_annotation(**overrides: Any) -> str:
        job = find(objects_of(render_stack("dev", **overrides)), "Job")
        return job["spec"]["template"]["metadata"]["annotations"]["ml-platform/train-config-sha256"]

    assert template_annotation() == template_annotation()
    assert template_annotation() != template_annotation(trainMaxSteps=10)


def test_wait_for_training_awaits_job_and_inference(dev_objects: list[dict[str, Any]]) -> None:
    objects = objects_of(render_stack("dev", waitForTraining=True))
    assert not {"pulumi.com/skipAwait", "pulumi.com/waitFor"} & set(find(objects, "Job")["metadata"]["annotations"])
    awaits = {"pulumi.com/skipAwait", "pulumi.com/waitFor"}
    assert not awaits & set(find(objects, "Deployment", "inference")["metadata"]["annotations"])
    assert "pulumi.com/skipAwait" not in (find(objects, "Service", "inference")["metadata"].get("annotations") or {})
    # Without it, nothing waits for the inference pods, which stay unready until training registers a model: the
    # provider would wait for the Deployment to become Available and for the Service to get ready endpoints.
    # The Deployment returns once created, but not by skipAwait, which would also skip awaiting its deletion.
    deployment = find(dev_objects, "Deployment", "inference")["metadata"]["annotations"]
    assert deployment["pulumi.com/waitFor"] == "jsonpath={.metadata.uid}" and "pulumi.com/skipAwait" not in deployment
    assert find(dev_objects, "Service", "inference")["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"


def test_kueue_queue_label() -> None:
    job = find(objects_of(render_stack("gpu", kueueQueue="gpu-queue")), "Job")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_stack_outputs() -> None:
    from infra.config import StackConfig
    from infra.program import build
    from infra.render import stack_config

    config, secret_keys = stack_config("dev")
    pulumi.runtime.set_all_config(config, secret_keys)
    from infra.render import RecordingMocks

    pulumi.runtime.set_mocks(RecordingMocks(), project="ml-platform", stack="dev", preview=False)

    @pulumi.runtime.test
    def check() -> Any:
        outputs = build(StackConfig.load())

        def verify(values: list[Any]) -> None:
            got = dict(zip(outputs, values, strict=True))
            assert got["namespace"] == "ml-platform"
            assert got["jobName"] == "run-1-train"
            assert got["rank0Address"] == "run-1-train-0.run-1-workers.ml-platform.svc.cluster.local:29500"
            assert got["inferenceUrl"] == "https://inference.ml-platform.localtest.me"
            assert got["mlflowUrl"] == "http://mlflow.ml-platform.svc.cluster.local:5000"
            assert got["inferenceNodePort"] == 30092

        return pulumi.Output.all(*outputs.values()).apply(verify)

    check()


@pytest.mark.parametrize("stack", ["dev", "gpu"])
def test_names_that_matter_for_dns_are_explicit(stack: str) -> None:
    objects = objects_of(render_stack(stack))
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Service", "mlflow"),
        ("Service", "inference"),
        ("Job", "run-1-train"),
        ("Service", "run-1-workers"),
    } <= names


def test_mlflow_runs_without_its_job_workers(stack_objects: list[dict[str, Any]]) -> None:
    # They take ~1.1 GB beside the server: over the pod's limit (OOMKilled on the real cluster, tests/cluster).
    container = find(stack_objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
