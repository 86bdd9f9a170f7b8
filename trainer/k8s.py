"""Find rank 0's pod IP through the Kubernetes API, from inside the cluster, with lightkube.

Used when `distributed.discovery: kubernetes-api` and the Job does not set MASTER_ADDR. The pod's service
account needs `list` on pods in its namespace (the trainer Role grants get/list/watch). lightkube is the
project's one Kubernetes client (docs/trainer.md says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.resources.core_v1 import Pod

from trainer.config import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
REQUEST_TIMEOUT_S = 10.0
_NEVER = datetime.min.replace(tzinfo=UTC)


class KubernetesAPIError(OSError):
    """The API server could not be reached or refused the request. An OSError, like any network error, so the
    rendezvous retries it: RBAC and the API server's endpoints may still be settling while the Job starts."""


@dataclass(frozen=True, kw_only=True, slots=True)
class InClusterAPI:
    """How to reach the API server as this pod's service account."""

    client: Client
    """lightkube client for the API server, verifying it against the cluster CA and authenticating with the
    service-account token file (re-read when the API server answers 401, as bound tokens are rotated)."""
    namespace: str
    """Namespace of this pod (and of the Job's other pods)."""

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> InClusterAPI:
        """The in-cluster settings: KUBERNETES_SERVICE_HOST/PORT and the mounted service account."""
        host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
        port = environ.get("KUBERNETES_SERVICE_PORT", "443").strip()
        if not host:
            raise ConfigError(
                "distributed.discovery='kubernetes-api' needs KUBERNETES_SERVICE_HOST (set in every pod); "
                "outside a cluster set MASTER_ADDR instead"
            )
        for name in ("token", "ca.crt"):
            if not (account_dir / name).is_file():
                raise ConfigError(
                    f"distributed.discovery='kubernetes-api' needs the service account file {account_dir / name}; "
                    "is automountServiceAccountToken disabled?"
                )
        namespace = environ.get("POD_NAMESPACE", "").strip()
        if not namespace:
            namespace_file = account_dir / "namespace"
            namespace = namespace_file.read_text().strip() if namespace_file.is_file() else ""
        if not namespace:
            raise ConfigError("POD_NAMESPACE is not set and the service account has no namespace file")
        if ":" in host:  # an IPv6 address needs brackets in a URL
            host = f"[{host}]"
        # What KubeConfig.from_service_account builds, but from `environ` (not os.environ) and with the
        # POD_NAMESPACE override, so that the checks above decide the error messages.
        config = KubeConfig.from_one(
            cluster=Cluster(server=f"https://{host}:{port}", certificate_auth=str(account_dir / "ca.crt")),
            user=User(token_file=str(account_dir / "token")),
            namespace=namespace,
        )
        client = Client(config, namespace=namespace, timeout=httpx2.Timeout(REQUEST_TIMEOUT_S))
        return cls(client=client, namespace=namespace)


def rank0_pod_ip(api: InClusterAPI, job_name: str) -> str | None:
    """Rank 0's pod IP, or None while it has none (not scheduled yet); raises KubernetesAPIError (an OSError)
    on HTTP or network errors, which callers retry."""
    try:
        pods = list(
            api.client.list(Pod, namespace=api.namespace, labels={"job-name": job_name, COMPLETION_INDEX_LABEL: "0"})
        )
    except ApiError as exc:
        detail = f": {exc.status.message}" if exc.status.message else ""
        raise KubernetesAPIError(f"HTTP {exc.response.status_code} {exc.response.reason_phrase}{detail}") from exc
    except httpx2.HTTPError as exc:
        raise KubernetesAPIError(f"{type(exc).__name__}: {exc}") from exc
    # A retried index leaves its failed pods behind; use the newest live one that has an IP.
    live = [
        (pod.metadata.creationTimestamp or _NEVER, pod.status.podIP)
        for pod in pods
        if pod.metadata is not None and pod.metadata.deletionTimestamp is None
        and pod.status is not None and pod.status.phase in ("Pending", "Running") and pod.status.podIP
    ]  # fmt: skip
    return max(live)[1] if live else None
