"""A task's logs: `node-{i} | line` from every node, interleaved as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2
from lightkube import ApiError

from skyrun.kube import Kube
from skyrun.manifests import task_object_name
from workloads.task import CONTAINER, NODE_INDEX_LABEL, TASK_ID_LABEL, TASK_LABEL


async def follow_logs(kube: Kube, ns: str, task_id: str, num_nodes: int, follow: bool) -> AsyncIterator[str]:
    """Every node's lines; with follow, until every pod ends."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)

    async def node(index: int) -> None:
        try:
            pod = await started_pod(kube, ns, task_id, index, wait=follow)
            if pod is not None:
                async for line in kube.log_lines(ns, pod, CONTAINER, follow=follow):
                    await queue.put(f"node-{index} | {line}\n")
        except ApiError as err:
            await queue.put(f"node-{index} | (logs unavailable: {err.status.message})\n")
        except httpx2.HTTPError as err:
            await queue.put(f"node-{index} | (log stream broken: {err})\n")
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(node(i)) for i in range(num_nodes)]
    ended = 0
    try:
        while ended < num_nodes:
            item = await queue.get()
            if item is None:
                ended += 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


async def started_pod(kube: Kube, ns: str, task_id: str, index: int, *, wait: bool) -> str | None:
    """The pod of node `index` once its container started (or ended); None if the task ends first."""
    while True:
        selector = {TASK_LABEL: "true", TASK_ID_LABEL: task_id, NODE_INDEX_LABEL: str(index)}
        pods = await kube.objects(ns, "Pod", selector)
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
            if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
                return str(pod["metadata"]["name"])
        record = await kube.get(ns, "ConfigMap", task_object_name(task_id))
        if not wait or record is None or (record.get("data") or {}).get("status"):
            return None
        await asyncio.sleep(1.0)
