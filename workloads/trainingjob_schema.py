"""The OpenAPI schema of the TrainingJob resource (spec and status), for `workloads.trainingjob.crd()`."""

from __future__ import annotations

from typing import Any

from workloads.quantity import QUANTITY_PATTERN

_DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def _str(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


def _int(minimum: int, maximum: int | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": minimum, **kw}
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _compute(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["cpu", "memory"],
        "properties": {"cpu": _str(pattern=QUANTITY_PATTERN), "memory": _str(pattern=QUANTITY_PATTERN)},
    }


def _immutable(field: str) -> dict[str, str]:
    old, new = (f"(has({s}.{field}) ? {s}.{field} : '')" for s in ("oldSelf", "self"))
    return {"rule": f"{new} == {old}", "message": f"spec.{field} is immutable", "fieldPath": f".{field}"}


def spec_schema(run_name_max: int) -> dict[str, Any]:
    """spec: types, ranges, enums and patterns; CEL rules for what must not change while the run runs."""
    frozen_unless_suspended = " && ".join(
        [f"self.{f} == oldSelf.{f}" for f in ("workers", "gpusPerWorker", "backend", "train")]
        + ["(has(self.image) ? self.image : '') == (has(oldSelf.image) ? oldSelf.image : '')"]
    )
    return {
        "type": "object",
        "properties": {
            "image": _str(minLength=1, description="Training image (default: the platform's)."),
            "workers": _int(1, 64, default=1, description="Pods of the gang (Indexed Job completions)."),
            "gpusPerWorker": _int(0, 8, default=0, description="nvidia.com/gpu per pod; one rank per GPU."),
            "resources": {
                "type": "object",
                "description": "cpu and memory of each worker.",
                "required": ["requests", "limits"],
                "properties": {"requests": _compute("Requests."), "limits": _compute("Limits.")},
                "x-kubernetes-validations": [
                    {
                        "rule": f"quantity(self.limits.{r}).compareTo(quantity(self.requests.{r})) >= 0",
                        "message": f"resources.limits.{r} must be >= resources.requests.{r}",
                    }
                    for r in ("cpu", "memory")
                ],
            },
            "backend": _str(enum=["gloo", "nccl"], default="gloo", description="torch.distributed backend."),
            "train": {
                "type": "object",
                "default": {},
                "x-kubernetes-preserve-unknown-fields": True,
                "description": "train.yaml sections (data, model, train, checkpoint, distributed); validated by "
                "the operator with the trainer's own rules.",
            },
            "runName": _str(maxLength=run_name_max, pattern=_DNS_LABEL, description="Default: metadata.name."),
            "checkpointDir": _str(
                maxLength=200,
                pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$",
                description="Directory on the checkpoint volume (default: trainingjobs/<runName>).",
            ),
            "tracking": {
                "type": "object",
                "properties": {
                    "experiment": _str(minLength=1, maxLength=200),
                    "modelName": _str(minLength=1, maxLength=200),
                    "alias": _str(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", maxLength=100),
                },
            },
            "suspend": {"type": "boolean", "default": False},
            "activeDeadlineSeconds": _int(1),
            "ttlSecondsAfterFinished": _int(0),
            "maxRestarts": _int(0, 100, default=3, description="Whole-gang restarts after retriable failures."),
            "nodeSelector": {"type": "object", "additionalProperties": _str()},
            "tolerations": {
                "type": "array",
                "maxItems": 20,
                "items": {
                    "type": "object",
                    "required": ["key", "effect"],
                    "properties": {
                        "key": _str(minLength=1),
                        "value": _str(description="Absent: tolerate any value (operator Exists)."),
                        "effect": _str(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                    },
                },
            },
            "priorityClassName": _str(maxLength=253),
            "queueName": _str(maxLength=63, pattern=_DNS_LABEL, description="Kueue LocalQueue."),
            "podAnnotations": {"type": "object", "additionalProperties": _str()},
        },
        "x-kubernetes-validations": [
            _immutable("runName"),
            _immutable("checkpointDir"),
            {
                "rule": f"oldSelf.suspend || ({frozen_unless_suspended})",
                "message": "workers, gpusPerWorker, backend, train and image change only while suspended",
            },
            {
                "rule": "self.backend != 'nccl' || self.gpusPerWorker > 0",
                "message": "backend nccl needs GPUs",
                "fieldPath": ".backend",
            },
        ],
    }


def status_schema(phases: tuple[str, ...]) -> dict[str, Any]:
    """status, as the operator writes it (docs/operator.md)."""
    num = {"type": "number"}
    return {
        "type": "object",
        "properties": {
            "phase": _str(enum=list(phases)),
            "reason": _str(),
            "message": _str(),
            "attempt": _int(0),
            "jobName": _str(),
            "restarts": _int(0),
            "preemptions": _int(0),
            "queueWorkload": _str(description="Kueue's Workload of the current attempt's Job."),
            "queueEvictions": _int(0, description="Evictions of that Workload already counted in preemptions."),
            "queueReason": _str(description="Why Kueue has not admitted the Job, in one word (Quota, Flavor, ...)."),
            "queuePosition": _int(0, description="Position in the LocalQueue (visibility API; 0 = next)."),
            "startTime": _str(format="date-time"),
            "completionTime": _str(format="date-time"),
            "restartAfter": _str(format="date-time"),
            "observedGeneration": {"type": "integer"},
            "mlflowRunId": _str(),
            "modelVersion": _str(),
            "latestCheckpoint": {"type": "object", "properties": {"path": _str(), "step": {"type": "integer"}}},
            "progress": {
                "type": "object",
                "properties": {
                    "step": {"type": "integer"},
                    "maxSteps": {"type": "integer"},
                    "percent": {"type": "integer"},
                    "trainLoss": num,
                    "valLoss": num,
                    "tokensPerSecond": num,
                    "eta": _str(format="date-time"),
                },
            },
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": _str(),
                        "status": _str(enum=["True", "False", "Unknown"]),
                        "reason": _str(),
                        "message": _str(),
                        "lastTransitionTime": _str(format="date-time"),
                    },
                },
            },
        },
    }
