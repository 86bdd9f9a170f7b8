"""A task as the API shows it, from its record ConfigMap, its Job (while it exists) and its pods."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from skyrun.models import NodeInfo, TaskInfo
from skyrun.status import Derived
from workloads.task import NAME_ANNOTATION, NODE_INDEX_LABEL, TASK_ID_LABEL, USER_ANNOTATION


def task_info(
    record: Mapping[str, Any], derived: Derived, job: Mapping[str, Any] | None, pods: list[dict[str, Any]]
) -> TaskInfo:
    meta, data = record["metadata"], record.get("data") or {}
    summary = json.loads(data.get("summary") or "{}")
    volumes = {}
    for line in (data.get("volumes") or "").splitlines():
        path, _, claim = line.partition("=")
        volumes[path] = claim
    nodes = sorted(
        (
            NodeInfo(
                index=int(p["metadata"]["labels"].get(NODE_INDEX_LABEL, -1)),
                pod=p["metadata"]["name"],
                phase=(p.get("status") or {}).get("phase", ""),
            )
            for p in pods
        ),
        key=lambda n: (n.index, n.pod),
    )
    container = ((job or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}])[0]
    limits = (container.get("resources") or {}).get("limits") or {}
    selector = (job or {}).get("spec", {}).get("template", {}).get("spec", {}).get("nodeSelector") or {}
    gpus = limits.get("nvidia.com/gpu", "")
    accel = ":".join(x for x in (next(iter(selector.values()), ""), gpus) if x)
    return TaskInfo(
        task_id=meta["labels"][TASK_ID_LABEL],
        name=meta["annotations"].get(NAME_ANNOTATION, ""),
        user=meta["annotations"].get(USER_ANNOTATION, ""),
        status=derived.status,
        message=derived.message,
        num_nodes=int(data.get("num_nodes") or 1),
        submitted_at=data.get("submitted_at", ""),
        finished_at=data.get("finished_at", ""),
        cpus=summary.get("cpus", limits.get("cpu", "")),
        memory=summary.get("memory", limits.get("memory", "")),
        accelerators=summary.get("accelerators", accel),
        image=summary.get("image", container.get("image", "")),
        volumes=volumes,
        ignored=[x for x in (data.get("ignored") or "").splitlines() if x],
        nodes=nodes,
        namespace=meta.get("namespace", ""),
        queue=data.get("queue", ""),
        queue_position=derived.queue_position,
        waiting_reason=derived.waiting_reason,
    )
