"""`python -m trainop`: the operator in the foreground, standalone (one replica, no peering objects), namespaced
to WATCH_NAMESPACE, with the liveness endpoint on HEALTH_PORT (/healthz) and Prometheus metrics on METRICS_PORT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

import kopf
from lightkube import AsyncClient, KubeConfig
from prometheus_client import start_http_server

from trainop.handlers import Reconciler, follow, register
from trainop.kube import Kube
from trainop.progress import ProgressCache
from trainop.settings import SettingsError, from_env
from workloads.trainingjob import HEALTH_PATH


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per API call drowns the transitions
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # "Handler succeeded" on every event
    try:
        settings = from_env()
    except SettingsError as err:
        print(f"trainop: {err}", file=sys.stderr)
        return 2
    start_http_server(settings.metrics_port, addr=settings.listen_host)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod its ServiceAccount; elsewhere KUBECONFIG (what lightkube's KubeConfig.from_env reads too)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    kopf_settings = kopf.OperatorSettings()
    # Kopf's own bookkeeping stays off the resource: the handlers are level-triggered and keep no progress.
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.watching.server_timeout = 120
    # One fixed namespace and a CRD installed before the operator: no cluster-wide list of namespaces or CRDs
    # (which a namespaced Role cannot grant).
    kopf_settings.scanning.disabled = True

    async def run() -> None:
        client = AsyncClient(KubeConfig.from_env(), namespace=settings.platform.namespace, field_manager="trainop")
        reconciler = Reconciler(
            Kube(client, settings.platform.namespace), settings, ProgressCache(settings.platform.tracking_uri)
        )
        register(registry, reconciler)
        follower = asyncio.create_task(follow(reconciler))
        try:
            await kopf.operator(
                registry=registry,
                settings=kopf_settings,
                standalone=True,
                clusterwide=False,
                namespaces=[settings.platform.namespace],
                liveness_endpoint=f"http://{settings.listen_host}:{settings.health_port}{HEALTH_PATH}",
            )
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await client.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
