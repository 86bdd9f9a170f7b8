"""The per-user lock that makes the cap on active tasks hold across launcher replicas.

Counting a user's active tasks and then creating one is check-then-act: two replicas (or two requests in one) can
both count 3 of 4 and both create. So a submission holds its user's lock from the count to the creation of the
task's record (the object the count reads), and the lock lives where every replica sees it: a
`coordination.k8s.io/v1` Lease `skyrun-cap-<user hash>` in the user's team namespace, taken with the API server's
optimistic concurrency:

- absent: `create` it with our holder identity; of two creators one gets 409 and waits.
- free (no holder, or `renewTime + leaseDurationSeconds` in the past: the holder died mid-submission): `replace`
  it carrying the resourceVersion we read; of two takers one gets 409 (the version moved) and waits.
- held: wait (a short, growing, bounded poll), then read again; `cap_lock_wait_s` later answer 503.

Release clears the holder with the version we wrote, so a release never frees a lease somebody else took over.
The API server orders every write of one object, and the record a winner creates is in every later (quorum) list
the next holder's count makes, so counts and creations of one user are serialized across processes.

The lease's duration (LEASE_S) outlasts a submission's count-and-create by far; a holder slower than that (an API
server stalled for 15 s) can be overtaken, and replicas' clocks are assumed to agree within a few seconds. The
Lease is owned by the namespace's task anchor, so it goes with the tasks; it is one small object per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from lightkube import ApiError

from skyrun.common import Problem, now_utc
from skyrun.kube import Kube
from skyrun.manifests import Anchor, owner_reference, user_hash
from workloads.task import KIND_LABEL, MANAGED_BY

LEASE_S = 15
"""leaseDurationSeconds: after this long without release, a holder is taken for dead."""
_FIRST_WAIT_S, _LONGEST_WAIT_S = 0.02, 0.25


def lease_name(user: str) -> str:
    return f"skyrun-cap-{user_hash(user)}"


def _micro(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _free(lease: dict[str, Any], now: dt.datetime) -> bool:
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    renewed_at = renewed if isinstance(renewed, dt.datetime) else dt.datetime.fromisoformat(str(renewed))
    return renewed_at + dt.timedelta(seconds=int(spec.get("leaseDurationSeconds") or LEASE_S)) < now


class CapLock:
    """`async with lock.hold(kube, ns, user, anchor):` around count-and-create."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.process = f"{socket.gethostname()}-{os.getpid()}"

    @contextlib.asynccontextmanager
    async def hold(self, kube: Kube, ns: str, user: str, anchor: Anchor | None) -> AsyncIterator[None]:
        holder = f"{self.process}-{secrets.token_hex(4)}"
        held = await self._acquire(kube, ns, user, holder, anchor)
        try:
            yield
        finally:
            await _release(kube, held)

    async def _acquire(self, kube: Kube, ns: str, user: str, holder: str, anchor: Anchor | None) -> dict[str, Any]:
        name = lease_name(user)
        deadline = time.monotonic() + self.wait_s
        pause = _FIRST_WAIT_S
        while True:
            lease = await kube.get(ns, "Lease", name)
            now = now_utc()
            taken = {"holderIdentity": holder, "leaseDurationSeconds": LEASE_S,
                     "acquireTime": _micro(now), "renewTime": _micro(now)}  # fmt: skip
            try:
                if lease is None:
                    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": {
                        "app.kubernetes.io/managed-by": MANAGED_BY, KIND_LABEL: "cap-lock"}}  # fmt: skip
                    if anchor is not None:
                        meta["ownerReferences"] = [owner_reference(anchor)]
                    return await kube.create(
                        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": taken}
                    )
                if _free(lease, now):
                    transitions = int((lease.get("spec") or {}).get("leaseTransitions") or 0) + 1
                    lease = {**lease, "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "spec": {**taken, "leaseTransitions": transitions}}  # fmt: skip
                    return await kube.replace(lease)  # carries the resourceVersion read above
            except ApiError as err:
                if err.status.code != 409:
                    raise
            if time.monotonic() + pause > deadline:
                raise Problem(
                    503,
                    f"too many submissions of yours at once: another one still holds your task-count lock (Lease "
                    f"{name} in namespace {ns}) after {self.wait_s:.0f}s; try again",
                )
            await asyncio.sleep(pause * (0.5 + secrets.randbelow(1000) / 1000))
            pause = min(pause * 2, _LONGEST_WAIT_S)



async def _release(kube: Kube, lease: dict[str, Any]) -> None:
    freed = {**lease, "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "spec": {**(lease.get("spec") or {}), "holderIdentity": None}}  # fmt: skip
    try:
        await kube.replace(freed)
    except ApiError as err:
        if err.status.code not in (404, 409):  # taken over after it expired, or deleted: not ours any more
            raise
