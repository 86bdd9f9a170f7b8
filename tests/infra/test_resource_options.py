"""Resource options, as the engine would receive them (recorded by infra.render.RecordingMonitor): what `pulumi up`
waits for, replaces first, refuses to delete, and in which order it creates things."""

from __future__ import annotations

from typing import Any

import pytest

from infra.render import RecordedOptions, RecordingMocks, is_kubernetes_object

from .conftest import render_stack

JOB = ("kubernetes:batch/v1:Job", "training-job")


@pytest.fixture(scope="module", params=["dev", "gpu"])
def stack_mocks(request: pytest.FixtureRequest) -> RecordingMocks:
    return render_stack(request.param)


def options(mocks: RecordingMocks) -> dict[tuple[str, str], RecordedOptions]:
    assert len(mocks.options) == len(mocks.resources), "every registration is recorded"
    return mocks.options


def waits_for(mocks: RecordingMocks, name: str) -> set[str]:
    """Every resource that exists before the engine creates `name`: its dependencies, and its parent's, since the
    SDK registers a resource only once its dependencies are created and its parent is registered."""
    by_name = {n: o for (_, n), o in options(mocks).items()}
    seen: set[str] = set()
    todo = [*by_name[name].dependencies, by_name[name].parent]
    while todo:
        dep = todo.pop()
        if dep in by_name and dep not in seen:  # not the stack itself, which is nobody's dependency
            seen.add(dep)
            todo.extend([*by_name[dep].dependencies, by_name[dep].parent])
    return seen


def name_of(mocks: RecordingMocks, kind: str, object_name: str) -> str:
    """Logical name of the resource that declares Kubernetes object `kind/object_name`."""
    (found,) = [r.name for r in mocks.resources if r.type.endswith(f":{kind}") and
                (r.inputs.get("metadata") or {}).get("name") == object_name]  # fmt: skip
    return found


def test_the_job_is_replaced_delete_first_and_not_awaited(stack_mocks: RecordingMocks) -> None:
    job = options(stack_mocks)[JOB]
    # A changed pod template replaces the Job; its name is fixed, so the old one must go first.
    assert job.delete_before_replace is True
    assert job.custom_timeouts == {}
    assert job.parent == "training"


def test_waiting_for_training_sets_the_jobs_timeouts_and_orders_inference_after_it() -> None:
    mocks = render_stack("dev", waitForTraining=True, trainingTimeoutMinutes=90)
    assert mocks.options_of(*JOB).custom_timeouts == {"create": "90m", "update": "90m"}
    assert "training-job" in waits_for(mocks, "inference-deployment")
    plain = render_stack("dev")
    assert "training-job" not in waits_for(plain, "inference-deployment")


def test_the_job_waits_for_everything_its_pods_use(stack_mocks: RecordingMocks) -> None:
    deps = stack_mocks.options_of(*JOB).dependencies
    job = next(r for r in stack_mocks.resources if (r.type, r.name) == JOB).inputs
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    used = {
        name_of(stack_mocks, "Namespace", job["metadata"]["namespace"]),
        name_of(stack_mocks, "ServiceAccount", pod["serviceAccountName"]),
        name_of(stack_mocks, "PersistentVolumeClaim", volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]),
        name_of(stack_mocks, "ConfigMap", volumes["config"]["configMap"]["name"]),
        name_of(stack_mocks, "Service", pod["subdomain"]),
        name_of(stack_mocks, "Service", "mlflow"),  # MLFLOW_TRACKING_URI
    }
    assert used <= deps, used - deps


def test_every_namespaced_object_waits_for_its_namespace(stack_mocks: RecordingMocks) -> None:
    checked = 0
    for r in stack_mocks.resources:
        namespace = (r.inputs.get("metadata") or {}).get("namespace")
        if not is_kubernetes_object(r.type) or namespace is None:
            continue
        assert name_of(stack_mocks, "Namespace", namespace) in waits_for(stack_mocks, r.name), r.name
        checked += 1
    assert checked >= 20


def test_every_kubernetes_object_belongs_to_a_component(stack_mocks: RecordingMocks) -> None:
    components = {r.name for r in stack_mocks.resources if r.type.startswith("mlplatform:")}
    for (type_token, name), opts in options(stack_mocks).items():
        if is_kubernetes_object(type_token):
            assert opts.parent in components, name
            assert name.startswith(f"{opts.parent}-"), f"{name} is not named after its component {opts.parent}"


@pytest.mark.parametrize("protect", [True, False])
def test_only_the_data_volumes_are_protected_and_only_when_asked(protect: bool) -> None:
    """The platform's claims and volumes, and the team namespaces (their users' volumes are in them)."""
    for stack in ("dev", "gpu"):
        mocks = render_stack(stack, protectData=protect)
        protected = {(t.rsplit(":", 1)[-1], n) for (t, n), o in mocks.options.items() if o.protect}
        kinds = (":PersistentVolumeClaim", ":PersistentVolume")
        volumes = {(r.type.rsplit(":", 1)[-1], r.name) for r in mocks.resources
                   if r.type.endswith(kinds) and r.name.startswith("storage-")}  # fmt: skip
        assert volumes, stack
        teams = {("Namespace", "teams-default-namespace")}  # Pulumi.yaml's default team
        assert protected == (volumes | teams if protect else set()), stack


def test_nothing_ignores_changes_or_survives_deletion(stack_mocks: RecordingMocks) -> None:
    """The program never hides drift: no ignoreChanges (the HPA owns replicas because the Deployment leaves them
    out), no retainOnDelete (protect is how data volumes are kept), no replaceOnChanges."""
    for key, opts in options(stack_mocks).items():
        assert (opts.ignore_changes, opts.replace_on_changes, opts.retain_on_delete) == ((), (), False), key


def test_recorder_sees_what_the_program_sets(component: Any) -> None:
    """Negative control: options set on a resource are recorded as set (so the checks above can fail)."""
    import pulumi
    import pulumi_kubernetes as k8s

    def build() -> Any:
        cm = k8s.core.v1.ConfigMap("a", metadata={"name": "a"})
        return k8s.core.v1.ConfigMap(
            "b",
            metadata={"name": "b"},
            opts=pulumi.ResourceOptions(
                depends_on=[cm], protect=True, delete_before_replace=True, ignore_changes=["data"],
                retain_on_delete=True, custom_timeouts=pulumi.CustomTimeouts(create="5m"),
            ),
        ).id  # fmt: skip

    recorded = component(build).options_of("kubernetes:core/v1:ConfigMap", "b")
    assert recorded.dependencies == {"a"}
    assert recorded.protect and recorded.delete_before_replace and recorded.retain_on_delete
    assert recorded.ignore_changes == ("data",) and recorded.custom_timeouts == {"create": "5m"}
