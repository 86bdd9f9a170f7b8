"""Stack config validation: every bad value is named with its key, all problems together, before any resource."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import yaml

from infra.config import PROJECT_FILE, ConfigError, StackConfig, load_schema, parse_quantity, read_raw_config

from .conftest import render_stack

TEAM = {"name": "a", "users": ["alice"], "cpu": "1", "memory": "1Gi", "storage": "1Gi", "volumes": 1}
# (stack, overrides, key the error must name, a phrase of the explanation)
BAD_CONFIGS: list[tuple[str, dict[str, Any], str, str]] = [
    ("dev", {"workers": 0}, "workers", "between 1 and 256"),
    ("dev", {"workers": "two"}, "workers", "integer"),
    ("dev", {"storageAccessMode": "ReadWriteOncePod"}, "storageAccessMode", "only one pod can mount"),
    ("dev", {"trainCpuRequest": "lots"}, "trainCpuRequest", "quantity"),
    ("dev", {"trainMemoryLimit": "4GB"}, "trainMemoryLimit", "quantity"),
    ("dev", {"trainCpuRequest": "2", "trainCpuLimit": "1"}, "trainCpuRequest", "must not exceed trainCpuLimit"),
    ("dev", {"inferenceMemoryRequest": "2Gi"}, "inferenceMemoryRequest", "must not exceed"),
    ("gpu", {"gpusPerWorker": 0}, "gpusPerWorker", "needs a GPU count"),
    ("dev", {"gpusPerWorker": 1}, "gpusPerWorker", "must be 0 with accelerator cpu"),
    ("dev", {"trainBackend": "nccl"}, "trainBackend", "nccl needs GPUs"),
    ("dev", {"trainBackend": "mpi"}, "trainBackend", "one of gloo, nccl"),
    ("dev", {"inferenceNodePort": 8092}, "inferenceNodePort", "between 30000 and 32767"),
    ("dev", {"mlflowNodePort": 40000}, "mlflowNodePort", "between 30000 and 32767"),
    ("dev", {"mlflowNodePort": 30092}, "mlflowNodePort", "must differ from inferenceNodePort"),
    ("dev", {"hpaMinReplicas": 4, "hpaMaxReplicas": 2}, "hpaMinReplicas", "must not exceed hpaMaxReplicas"),
    ("dev", {"hpaCpuUtilization": 150}, "hpaCpuUtilization", "between 1 and 100"),
    ("dev", {"storageMode": "nfs"}, "storageMode", "one of hostPath, storageClass"),
    ("dev", {"storageHostPath": "relative/dir"}, "storageHostPath", "absolute path"),
    ("dev", {"storageAccessMode": "ReadWriteSometimes"}, "storageAccessMode", "ReadWriteMany"),
    ("dev", {"mlflowBackend": "mysql"}, "mlflowBackend", "one of sqlite, postgresql"),
    ("dev", {"namespace": "ML_Platform"}, "namespace", "DNS-1123 label"),
    ("dev", {"image": "has space:1"}, "image", "image reference"),
    ("dev", {"imagePullPolicy": "Sometimes"}, "imagePullPolicy", "Always, IfNotPresent, Never"),
    ("dev", {"masterPort": 70000}, "masterPort", "between 1024 and 65535"),
    ("dev", {"backoffLimit": -1}, "backoffLimit", "between 0 and 100"),
    ("dev", {"ingressEnabled": False}, "tlsEnabled", "needs ingressEnabled=true"),
    ("dev", {"tlsIssuer": "acme", "acmeEmail": ""}, "acmeEmail", "e-mail"),
    ("dev", {"tlsIssuer": "vault"}, "tlsIssuer", "one of selfSigned, acme"),
    # Let's Encrypt refuses these contacts ("invalidContact"): the first `pulumi up` would fail at the ACME account.
    ("gpu", {"acmeEmail": "ml-platform@example.com"}, "acmeEmail", "which Let's Encrypt refuses"),
    ("gpu", {"acmeEmail": "ops@ml.example.org"}, "acmeEmail", "reserved example domain"),
    ("gpu", {"acmeEmail": "ops@cluster.local"}, "acmeEmail", "special-use top-level domain"),
    ("gpu", {"acmeEmail": "ops@team.test"}, "acmeEmail", "special-use top-level domain"),
    ("gpu", {"acmeEmail": "ops at acme-corp.io"}, "acmeEmail", "must be an e-mail address"),
    ("dev", {"ingressHost": "https://inference.example.com"}, "ingressHost", "DNS name"),
    ("dev", {"ingressHost": "Inference_Host"}, "ingressHost", "DNS name"),
    ("dev", {"ingressClassName": "Traefik Class"}, "ingressClassName", "IngressClass name"),
    ("dev", {"tlsCertManagerChart": "charts/cert-manager"}, "tlsCertManagerChart", "absolute path"),
    ("dev", {"tlsCertManagerChart": "/nonexistent/cert-manager"}, "tlsCertManagerChart", "no Chart.yaml"),
    ("dev", {"tlsCertManagerImages": "quay.io/jetstack:v1.21.2"}, "tlsCertManagerImages", "registry path"),
    ("dev", {"tlsCertManagerVersion": "latest"}, "tlsCertManagerVersion", "cert-manager release"),
    ("dev", {"trainSettings": ["model.n_layer"]}, "trainSettings", "section.key=value"),
    ("dev", {"trainSettings": ["optimizer.beta=0.9"]}, "trainSettings", "section one of"),
    ("dev", {"trainSettings": ["train.max_steps=10"]}, "trainSettings", "set trainMaxSteps instead"),
    ("dev", {"trainBatchSize": 13}, "trainBatchSize", "divisible by workers=2"),
    ("dev", {"gpuTolerations": ["nvidia.com/gpu:Sometimes"]}, "gpuTolerations", "key[=value]:Effect"),
    ("dev", {"gpuNodeSelector": ["no-equals-sign"]}, "gpuNodeSelector", "label-key=label-value"),
    ("dev", {"shmSize": "0"}, "shmSize", "greater than zero"),
    ("dev", {"modelName": "tiny gpt"}, "modelName", "registered model name"),
    ("dev", {"runName": "Run_1"}, "runName", "DNS-1123 label"),
    (
        "dev",
        {"quotaCpu": "1"},
        "quotaCpu",
        "2 workers + MLflow + the operator + 2 launcher pods + 4 inference pods",
    ),
    ("dev", {"quotaCpu": "6"}, "quotaCpu", "= 8.5"),
    (
        "gpu",
        {"quotaMemory": "100Gi"},
        "quotaMemory",
        "4 workers + MLflow + PostgreSQL + the operator + 2 launcher pods + 11 inference pods",
    ),
    ("dev", {"quotaPods": 5}, "quotaPods", "at least 10"),
    ("gpu", {"quotaGpus": 2}, "quotaGpus", "must cover workers x gpusPerWorker = 4"),
    ("dev", {"waitForTraining": "maybe"}, "waitForTraining", "true or false"),
    ("dev", {"kueueQueue": "Gpu Queue"}, "kueueQueue", "LocalQueue name"),
    ("dev", {"acmeServer": "http://acme.example.com"}, "acmeServer", "https://"),
    ("dev", {"apiServerCidrs": ["kind-control-plane:6443"]}, "apiServerCidrs", "CIDR form"),
    ("dev", {"apiServerCidrs": ["10.0.0.1/8"]}, "apiServerCidrs", "host bits zero"),
    ("dev", {"apiServerPorts": [6443, 70000]}, "apiServerPorts", "between 1 and 65535"),
    ("dev", {"apiServerPorts": []}, "apiServerPorts", "non-empty list"),
    ("dev", {"taskEgressPorts": ["https"]}, "taskEgressPorts", "port numbers"),
    ("dev", {"taskEgressCidrs": ["anywhere"]}, "taskEgressCidrs", "0.0.0.0/0 or ::/0"),
    ("dev", {"dnsCidrs": ["169.254.20.10/33"]}, "dnsCidrs", "CIDR form"),
    ("dev", {"dnsPodLabels": ["k8s-app"]}, "dnsPodLabels", "label-key=label-value"),
    ("dev", {"dnsPodLabels": [], "dnsCidrs": []}, "dnsPodLabels", "could resolve no name"),
    ("dev", {"launcherClientCidrs": ["fd00::1/64"]}, "launcherClientCidrs", "host bits zero"),
    # teams (docs/config.md "Teams and queues")
    ("dev", {"teams": "team-a"}, "teams", "must be a list of teams"),
    ("dev", {"teams": []}, "teams", "declare at least one team"),
    ("dev", {"teams": [{**TEAM, "name": "Team A"}]}, "teams[0].name", "DNS-1123 label, at most 30 characters"),
    ("dev", {"teams": [{"name": "a", "users": ["*"]}]}, "teams[0]", "missing cpu, memory, storage, volumes"),
    ("dev", {"teams": [{**TEAM, "quota": "4"}]}, "teams[0]", "unknown field(s) quota"),
    ("dev", {"teams": [{**TEAM, "cpu": "lots"}]}, "teams[a].cpu", "non-negative Kubernetes quantity"),
    ("dev", {"teams": [{**TEAM, "cpu": "2", "maxCpu": "1"}]}, "teams[a].maxCpu", "must be at least cpu='2'"),
    ("dev", {"teams": [{**TEAM, "gpus": 1}]}, "teams", "gpus/maxGpus must be 0 with accelerator cpu"),
    ("dev", {"teams": [{**TEAM, "volumes": -1}]}, "teams[a].volumes", "integer >= 0"),
    ("dev", {"teams": [{**TEAM, "weight": 0}]}, "teams[a].weight", "number > 0"),
    ("dev", {"teams": [{**TEAM, "users": []}]}, "teams[a].users", "non-empty list of Kubernetes user names"),
    ("dev", {"teams": [TEAM, {**TEAM, "name": "b"}]}, "teams[b].users", "'alice' is also in team a"),
    ("dev", {"teams": [TEAM, TEAM]}, "teams", "team 'a' is declared twice"),
    ("dev", {"teams": [{**TEAM, "name": "n" * 30}], "namespace": "p" * 40}, "teams", "longer than 63 characters"),
    ("dev", {"kueue": "yes"}, "kueue", "true or false"),
]


@pytest.mark.parametrize(
    ("stack", "overrides", "key", "phrase"), BAD_CONFIGS, ids=[c[2] + "-" + str(i) for i, c in enumerate(BAD_CONFIGS)]
)
def test_bad_config_names_key_and_declares_nothing(
    stack: str, overrides: dict[str, Any], key: str, phrase: str
) -> None:
    with pytest.raises(ConfigError) as info:
        render_stack(stack, **overrides)
    problems = [p for p in info.value.problems if p.startswith(key)]
    assert problems, f"no problem names {key}: {info.value.problems}"
    assert any(phrase in p for p in problems), problems
    assert "pulumi config set" in str(info.value)


def test_bad_configs_are_distinct() -> None:
    assert len(BAD_CONFIGS) >= 20
    assert len({(s, yaml.safe_dump(o)) for s, o, _, _ in BAD_CONFIGS}) == len(BAD_CONFIGS)


def test_bad_config_declares_no_resource() -> None:
    """ConfigError is raised before the first resource; the mocks see nothing registered."""
    from infra.render import RecordingMocks

    seen: list[RecordingMocks] = []
    original = RecordingMocks.new_resource

    def spy(self: RecordingMocks, args: Any) -> Any:
        seen.append(self)
        return original(self, args)

    RecordingMocks.new_resource = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(ConfigError):
            render_stack("dev", workers=0, hpaMinReplicas=0)
    finally:
        RecordingMocks.new_resource = original  # type: ignore[method-assign]
    assert seen == []


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        render_stack("dev", workers=0, inferenceNodePort=80, mlflowBackend="mysql", namespace="Bad")
    named = {p.split("=")[0] for p in info.value.problems}
    assert {"workers", "inferenceNodePort", "mlflowBackend", "namespace"} <= named


def test_postgres_backend_requires_secret_password() -> None:
    raw = read_raw_config({"mlflowBackend": "postgresql"}.get)
    with pytest.raises(ConfigError) as info:
        StackConfig.from_raw("gpu", raw, secrets_set=set())
    assert any(p.startswith("postgresPassword") and "--secret" in p for p in info.value.problems)
    assert StackConfig.from_raw("gpu", raw, secrets_set={"postgresPassword"}).mlflow.backend == "postgresql"


def test_secret_set_in_plain_text_is_an_error() -> None:
    raw = read_raw_config({"mlflowBackend": "postgresql"}.get)
    with pytest.raises(ConfigError) as info:
        StackConfig.from_raw("gpu", raw, secrets_set=set(), plain_secrets={"postgresPassword"})
    assert any("plain text" in p and "--secret" in p for p in info.value.problems)


def test_plain_text_secret_through_the_sdk_is_rejected() -> None:
    from infra.render import run_program, stack_config

    config, _ = stack_config("gpu")
    config["ml-platform:postgresPassword"] = "in-plain-text"
    with pytest.raises(ConfigError, match="plain text"):
        run_program("gpu", config, secret_keys=[])


def test_defaults_come_from_pulumi_yaml() -> None:
    config = StackConfig.from_raw("x", read_raw_config(lambda key: None))
    schema = load_schema()
    assert config.training.workers == schema["workers"]["default"]
    assert config.inference.node_port == schema["inferenceNodePort"]["default"]
    assert config.namespace.defaults.cpu_limit == schema["defaultCpuLimit"]["default"]


def test_schema_declares_type_default_and_description_for_every_key() -> None:
    for key, spec in load_schema().items():
        assert spec.get("type") in ("string", "integer", "boolean", "array"), key
        assert spec.get("description"), key
        # Pulumi requires a value on every stack for a declared key without a default.
        assert "default" in spec, key


def test_stack_files_only_use_declared_keys() -> None:
    declared = set(load_schema())
    for stack in ("dev", "gpu"):
        values = yaml.safe_load((PROJECT_FILE.parent / f"Pulumi.{stack}.yaml").read_text())["config"]
        unknown = {k.split(":", 1)[1] for k in values} - declared
        assert not unknown, f"Pulumi.{stack}.yaml sets undeclared keys {unknown}"


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("2", Decimal(2)), ("4Gi", Decimal(4 * 2**30)), ("1.5G", Decimal(1_500_000_000)),
     ("128Mi", Decimal(128 * 2**20)), ("1e3", Decimal(1000))],
)  # fmt: skip
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "4GB", "Gi", "1.2.3", "-1", "five"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_the_gpu_stack_as_shipped_asks_for_the_users_acme_email() -> None:
    """Pulumi.gpu.yaml leaves acmeEmail to its user (an example address would be refused by Let's Encrypt at the
    first `pulumi up`): loading it as the CLI would fails naming the key and the command that sets it."""
    values = yaml.safe_load((PROJECT_FILE.parent / "Pulumi.gpu.yaml").read_text())["config"]
    assert "ml-platform:acmeEmail" not in values
    raw = read_raw_config(lambda key: _cli_value(values.get(f"ml-platform:{key}")))
    with pytest.raises(ConfigError) as info:
        StackConfig.from_raw("gpu", raw, secrets_set={"postgresPassword"})
    assert [p for p in info.value.problems if p.startswith("acmeEmail")] == [
        "acmeEmail='': must be an e-mail address (the ACME account's contact) with tlsIssuer acme; set yours: "
        "pulumi config set acmeEmail you@your-domain -s gpu"
    ]


def _cli_value(value: Any) -> str | None:
    """A stack file's value as the CLI hands it to the program (strings as they are, the rest as JSON)."""
    import json

    return value if value is None or isinstance(value, str) else json.dumps(value)


def test_a_local_chart_that_is_not_cert_managers_is_refused(tmp_path: Any) -> None:
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: traefik\nversion: 1.0.0\n")
    with pytest.raises(ConfigError) as info:
        render_stack("dev", tlsCertManagerChart=str(tmp_path))
    assert [p for p in info.value.problems if p.startswith("tlsCertManagerChart")] == [
        f"tlsCertManagerChart={str(tmp_path)!r}: holds the chart 'traefik', not cert-manager"
    ]


@pytest.mark.parametrize("email", ["ml-team@acme-corp.io", "ops+acme@example.company", "a@sub.example.com.au"])
def test_acme_emails_that_an_acme_ca_accepts_pass(email: str) -> None:
    render_stack("gpu", acmeEmail=email)
