"""Invariants of both stacks, whole, under mocks: what must hold for the platform to work on a real cluster."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
import yaml

from infra.config import PROJECT_FILE, parse_quantity
from workloads.pod import container_security_context, pod_security_context

from .conftest import containers, find, objects_of, pod_specs, render_stack

RECOMMENDED = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
}


def stack_file(stack: str) -> dict[str, Any]:
    """The stack file's settings of the program, by key (what the rendered objects must reflect)."""
    values = yaml.safe_load((PROJECT_FILE.parent / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {key.split(":", 1)[1]: value for key, value in values.items() if key.startswith("ml-platform:")}


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
    cluster_scoped = {"Namespace", "PersistentVolume", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in stack_objects:
        meta = obj["metadata"]
        assert set(meta.get("labels", {})) >= RECOMMENDED, (obj["kind"], meta["name"])
        assert meta.get("name"), obj["kind"]
        if obj["kind"] not in cluster_scoped:
            # The platform's namespace, or a team's (infra/teams.py): <namespace>-<team>.
            assert meta.get("namespace") in ("ml-platform", "ml-platform-default"), (obj["kind"], meta["name"])
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
    command = container["command"]
    assert command[:4] == ["python", "-m", "trainer", "launch"]
    flags = dict(zip(command[4::2], command[5::2], strict=True))
    assert flags["--nproc"] == container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert flags["--nnodes"] == str(workers) and flags["--node-rank"] == "$(JOB_COMPLETION_INDEX)"
    env = env_of(container)
    assert env["WORLD_SIZE"] == str(workers * 2)
    # The pod's cpus are shared by its ranks: each gets its whole share of the limit.
    cpus = parse_quantity(container["resources"]["limits"]["cpu"])
    assert int(env["OMP_NUM_THREADS"]) == cpus // 2 >= 1


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
    train = yaml.safe_load(find(dev_objects, "ConfigMap", "run-1-train-config")["data"]["train.yaml"])
    assert train["distributed"]["backend"] == "gloo"
    assert train["train"]["device"] == "cpu"
    for _, pod in pod_specs(dev_objects):
        for c in containers(pod):
            assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]
    assert "requests.nvidia.com/gpu" not in find(dev_objects, "ResourceQuota", "platform-quota")["spec"]["hard"]


def test_gpu_uses_nccl_requests_gpus_and_tolerates_taints(gpu_objects: list[dict[str, Any]]) -> None:
    settings = stack_file("gpu")
    job = find(gpu_objects, "Job")
    pod = job["spec"]["template"]["spec"]
    train = yaml.safe_load(find(gpu_objects, "ConfigMap", "run-1-train-config")["data"]["train.yaml"])
    assert train["distributed"]["backend"] == "nccl"
    assert train["train"]["device"] == "cuda"
    for entry in settings["trainSettings"]:  # section.key=value, the value YAML-typed
        path, _, value = entry.partition("=")
        section, _, key = path.partition(".")
        assert train[section][key] == yaml.safe_load(value), entry
    resources = pod["containers"][0]["resources"]
    gpus = str(settings["gpusPerWorker"])
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    assert pod["nodeSelector"] == dict(e.split("=", 1) for e in settings["gpuNodeSelector"])
    assert [f"{t['key']}:{t['effect']}" for t in pod["tolerations"] if t["operator"] == "Exists"] == settings[
        "gpuTolerations"
    ]
    quota = find(gpu_objects, "ResourceQuota", "platform-quota")["spec"]["hard"]["requests.nvidia.com/gpu"]
    assert int(quota) == settings["quotaGpus"] >= job["spec"]["completions"] * int(gpus)
    checkpoints = find(gpu_objects, "PersistentVolumeClaim", "checkpoints")
    assert checkpoints["spec"]["accessModes"] == [settings["storageAccessMode"]] == ["ReadWriteMany"]


def test_every_container_has_requests_limits_and_a_writable_tmp(stack_objects: list[dict[str, Any]]) -> None:
    for workload, pod in pod_specs(stack_objects):
        for c in containers(pod):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{c['name']}"
            for kind in ("cpu", "memory"):
                request = parse_quantity(c["resources"]["requests"][kind])
                limit = parse_quantity(c["resources"]["limits"][kind])
                assert 0 < request <= limit, where
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounted, f"{where} has a read-only root and no writable /tmp"


def test_every_pod_has_the_one_definition_of_the_restricted_contexts(stack_objects: list[dict[str, Any]]) -> None:
    """Components built from pulumi_kubernetes' classes (infra.common) and from the pure builders (workloads) give
    pods the same security contexts; test_security.py checks that these are `restricted`."""
    for workload, pod in pod_specs(stack_objects):
        assert pod["securityContext"] == pod_security_context(), workload["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"] == container_security_context(), (workload["metadata"]["name"], c["name"])


def test_only_the_operator_and_the_launcher_mount_a_token(stack_objects: list[dict[str, Any]]) -> None:
    for workload, pod in pod_specs(stack_objects):
        if workload["kind"] == "Job":
            assert pod["serviceAccountName"] == "trainer"
            assert pod["automountServiceAccountToken"] is False  # dns discovery needs no API access
        elif workload["metadata"]["name"] in ("trainop", "skyrun"):
            # The operator and the task launcher create Jobs: the API is their job; their Roles bound them.
            assert pod["serviceAccountName"] == workload["metadata"]["name"]
            assert pod.get("automountServiceAccountToken", True) is True
        else:
            assert pod["automountServiceAccountToken"] is False, workload["metadata"]["name"]


def test_kubernetes_api_discovery_mounts_token_and_drops_master_addr() -> None:
    objects = objects_of(render_stack("dev", rankDiscovery="kubernetes-api"))
    pod = find(objects, "Job")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert "MASTER_ADDR" not in env_of(pod["containers"][0])
    assert env_of(pod["containers"][0])["TRAINER_JOB_NAME"] == find(objects, "Job")["metadata"]["name"]


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
    pdb = find(stack_objects, "PodDisruptionBudget", "inference")
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
    # The gpu stack leaves the ACME account's e-mail to its user (test_config.py); it reaches the Issuer as set.
    gpu_issuer = find(objects_of(render_stack("gpu", acmeEmail="ml-team@acme-corp.io")), "Issuer")
    assert gpu_issuer["spec"]["acme"]["email"] == "ml-team@acme-corp.io"


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
    assert gpu_cmd[:2] == ["python", "-c"] and gpu_cmd[3:5] == ["mlflow", "server"], gpu_cmd
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


def test_stack_outputs_name_the_declared_objects(dev_objects: list[dict[str, Any]]) -> None:
    from infra.config import StackConfig
    from infra.program import build
    from infra.render import RecordingMocks, stack_config

    config, secret_keys = stack_config("dev")
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(RecordingMocks(), project="ml-platform", stack="dev", preview=False)
    job = find(dev_objects, "Job")
    namespace = job["metadata"]["namespace"]
    workers = find(dev_objects, "Service", job["spec"]["template"]["spec"]["subdomain"])
    inference = find(dev_objects, "Service", "inference")
    ingress = find(dev_objects, "Ingress")

    @pulumi.runtime.test
    def check() -> Any:
        outputs = build(StackConfig.load())

        def verify(values: list[Any]) -> None:
            got = dict(zip(outputs, values, strict=True))
            assert got["namespace"] == namespace == find(dev_objects, "Namespace", namespace)["metadata"]["name"]
            assert got["jobName"] == job["metadata"]["name"]
            port = workers["spec"]["ports"][0]["port"]
            assert got["rank0Address"] == (
                f"{env_of(job['spec']['template']['spec']['containers'][0])['MASTER_ADDR']}.{namespace}"
                f".svc.cluster.local:{port}"
            )
            assert got["inferenceUrl"] == f"https://{ingress['spec']['rules'][0]['host']}"
            assert got["mlflowUrl"] == env_of(job["spec"]["template"]["spec"]["containers"][0])["MLFLOW_TRACKING_URI"]
            assert got["inferenceNodePort"] == inference["spec"]["ports"][0]["nodePort"]
            assert got["mlflowNodePort"] == find(dev_objects, "Service", "mlflow")["spec"]["ports"][0]["nodePort"]

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


def test_the_postgres_password_reaches_mlflow_intact_whatever_its_characters(
    gpu_objects: list[dict[str, Any]], tmp_path: Any
) -> None:
    """The rendered MLflow command, run as the container runs it (a stand-in `mlflow` on PATH records what it got):
    a password with the URI's own delimiters must arrive percent-encoded, so the URI parses back to it."""
    import os
    import subprocess
    import sys

    from sqlalchemy.engine import make_url

    password = "p@ss:w/rd#1?x%20 &$HOME"
    secrets = tmp_path / "postgres"
    secrets.mkdir()
    (secrets / "password").write_text(password + "\n")  # as a Secret written by hand often is
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text(f'#!/bin/sh\nprintf "%s" "$MLFLOW_BACKEND_STORE_URI" > {tmp_path}/uri\n')
    fake.chmod(0o755)
    os.symlink(sys.executable, bin_dir / "python")
    command = find(gpu_objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["command"]
    command = [part.replace("/etc/postgres", str(secrets)) for part in command]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/tmp"}
    subprocess.run(command, env=env, check=True, timeout=60)
    url = make_url((tmp_path / "uri").read_text())
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql", "mlflow", password, "postgres", 5432, "mlflow")  # fmt: skip


def test_ranks_share_one_node_only_on_a_read_write_once_volume(
    dev_objects: list[dict[str, Any]], gpu_objects: list[dict[str, Any]]
) -> None:
    """dev (ReadWriteOnce, 2 workers): pods of two nodes cannot both mount the volume, so the ranks keep to one node;
    gpu (ReadWriteMany): they may spread."""
    dev_pod = find(dev_objects, "Job")["spec"]["template"]
    term = dev_pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "trainer", "app.kubernetes.io/instance": "run-1"}  # runName's default  # fmt: skip
    assert term["labelSelector"]["matchLabels"].items() <= dev_pod["metadata"]["labels"].items()
    assert "affinity" not in find(gpu_objects, "Job")["spec"]["template"]["spec"]


def test_what_must_already_be_in_the_cluster_is_read_before_anything_depends_on_it() -> None:
    """The IngressClass and (when the stack does not install it) cert-manager are read, not created: a missing one
    fails `pulumi preview`, so `pulumi up` stops before creating anything (docs/tls.md)."""
    ingress_class = "kubernetes:networking.k8s.io/v1:IngressClass"
    crd = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
    dev = render_stack("dev")  # installs cert-manager itself
    assert {(r.type, r.name) for r in dev.reads} == {(ingress_class, "inference-ingressClassName=traefik")}
    ingress = dev.options_of("kubernetes:networking.k8s.io/v1:Ingress", "inference-ingress")
    assert "inference-ingressClassName=traefik" in ingress.dependencies
    gpu = render_stack("gpu", acmeEmail="ml-team@acme-corp.io")  # cert-manager already in the cluster
    assert {(r.type, r.name) for r in gpu.reads} == {
        (ingress_class, "inference-ingressClassName=nginx"),
        (crd, "tls-tlsInstallCertManager=false:cert-manager-crd"),
    }
    issuer = gpu.options_of("kubernetes:cert-manager.io/v1:Issuer", "tls-issuer")
    assert "tls-tlsInstallCertManager=false:cert-manager-crd" in issuer.dependencies
    assert render_stack("dev", ingressEnabled=False, tlsEnabled=False).reads == []
