"""Find rank 0's pod IP through the Kubernetes API, from inside the cluster, with only urllib and ssl.

Used when `distributed.discovery: kubernetes-api` and the Job does not set MASTER_ADDR. The pod's service
account needs `list` on pods in its namespace (the trainer Role grants get/list/watch).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainer.config import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True, kw_only=True, slots=True)
class InClusterAPI:
    """How to reach the API server as this pod's service account."""

    base_url: str
    """`https://host:port` of the API server."""
    namespace: str
    """Namespace of this pod (and of the Job's other pods)."""
    token_file: Path
    """Service-account token; re-read on every request because bound tokens are rotated."""
    ssl_context: ssl.SSLContext
    """Verifies the API server against the cluster CA."""

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
        context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
        return cls(
            base_url=f"https://{host}:{port}", namespace=namespace, token_file=account_dir / "token",
            ssl_context=context,
        )


def rank0_pod_ip(api: InClusterAPI, job_name: str, timeout: float = 10.0) -> str | None:
    """Rank 0's pod IP, or None while it has none (not scheduled yet); raises OSError on HTTP or network
    errors, which callers retry."""
    selector = f"job-name={job_name},{COMPLETION_INDEX_LABEL}=0"
    query = urllib.parse.urlencode({"labelSelector": selector})
    url = f"{api.base_url}/api/v1/namespaces/{urllib.parse.quote(api.namespace)}/pods?{query}"
    token = api.token_file.read_text().strip()
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    with urllib.request.urlopen(request, context=api.ssl_context, timeout=timeout) as response:
        pods = json.load(response).get("items", [])
    # A retried index leaves its failed pods behind; use the newest live one that has an IP.
    live = [
        pod for pod in pods
        if not pod.get("metadata", {}).get("deletionTimestamp")
        and pod.get("status", {}).get("phase") in ("Pending", "Running")
        and pod.get("status", {}).get("podIP")
    ]
    if not live:
        return None
    newest = max(live, key=lambda pod: pod.get("metadata", {}).get("creationTimestamp", ""))
    return str(newest["status"]["podIP"])
