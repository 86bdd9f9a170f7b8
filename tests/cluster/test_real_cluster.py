"""Smoke tests of the real cluster itself: a node, real containers, pod logs through the API server, cluster DNS
for an Indexed Job behind a headless Service, and a Service reached from the machine through a forward."""

from __future__ import annotations

import ipaddress
import secrets

import httpx
import pytest

from tests.cluster.kube import SMALL, create_namespace, diagnose, python_pod, wait_or_diagnose, wait_pod_done
from tests.cluster.realcluster import RealCluster
from tests.harness.api import condition
from tests.harness.hostns import NODE_IP, POD_CIDR
from tests.harness.node import NODE_NAME

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ns(real_cluster: RealCluster) -> str:
    return create_namespace(real_cluster, f"smoke-{secrets.token_hex(3)}")


def test_node_is_ready_with_its_namespace_ip(real_cluster: RealCluster) -> None:
    node = real_cluster.api.get("v1", "Node", NODE_NAME)
    assert condition(node, "Ready") == "True"
    assert node is not None
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.35.4"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    version = real_cluster.kubectl("version", "--output=json").stdout
    assert '"gitVersion": "v1.35.4"' in version


def test_pod_runs_in_a_container_and_its_logs_come_back(real_cluster: RealCluster, ns: str, base_image: str) -> None:
    token = secrets.token_hex(8)
    code = (
        "import os, socket, sys\n"
        f"print('token={token}')\n"
        "print('hostname=' + socket.gethostname())\n"
        "print('ip=' + socket.gethostbyname(socket.gethostname()))\n"
        "print('pid=' + str(os.getpid()))\n"
        "print('python=' + sys.version.split()[0])\n"
    )
    real_cluster.api.create(python_pod("hello", ns, base_image, code))
    assert wait_pod_done(real_cluster, ns, "hello") == "Succeeded", diagnose(real_cluster, ns)
    logs = dict(line.split("=", 1) for line in real_cluster.pod_logs(ns, "hello").splitlines() if "=" in line)
    assert logs["token"] == token
    assert logs["hostname"] == "hello"
    assert ipaddress.ip_address(logs["ip"]) in ipaddress.ip_network(POD_CIDR)
    assert logs["pid"] == "1", "the container's process is PID 1 of its own PID namespace"
    assert logs["python"].startswith("3.11.")
    pod = real_cluster.api.get("v1", "Pod", "hello", ns)
    assert pod is not None and pod["status"]["podIP"] == logs["ip"]


RANK0 = """
import socket
server = socket.create_server(("0.0.0.0", 29500))
server.settimeout(120)
conn, peer = server.accept()
print("rank0 got " + conn.recv(100).decode() + " from " + peer[0], flush=True)
conn.sendall(b"ack")
conn.close()
"""

RANK1 = """
import socket, time
name = "{job}-0.{svc}"
deadline = time.monotonic() + 90
while True:
    try:
        address = socket.getaddrinfo(name, 29500, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        conn = socket.create_connection((address, 29500), timeout=5)
        break
    except OSError as err:
        if time.monotonic() > deadline:
            raise SystemExit("rank1 gave up on " + name + ": " + str(err))
        time.sleep(0.5)
conn.sendall(b"hello-from-rank1")
print("rank1 resolved " + name + " to " + address + "; reply " + conn.recv(10).decode(), flush=True)
"""


def test_indexed_job_pod_resolves_rank0_by_dns(real_cluster: RealCluster, ns: str, base_image: str) -> None:
    job, svc = "ddp", "ddp-workers"
    real_cluster.api.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc, "namespace": ns},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"job-name": job},
                "ports": [{"name": "rendezvous", "port": 29500}],
            },
        }
    )
    code = (
        "import os\n"
        "rank = os.environ['JOB_COMPLETION_INDEX']\n"
        f"exec({RANK0!r} if rank == '0' else {RANK1.format(job=job, svc=svc)!r})\n"
    )
    real_cluster.api.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job, "namespace": ns},
            "spec": {
                "completionMode": "Indexed",
                "completions": 2,
                "parallelism": 2,
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "subdomain": svc,
                        "restartPolicy": "Never",
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "worker",
                                "image": base_image,
                                "imagePullPolicy": "Never",
                                "command": ["python3", "-c", code],
                                "resources": SMALL,
                            }
                        ],
                    }
                },
            },
        }
    )

    def job_finished() -> str | None:
        obj = real_cluster.api.get("batch/v1", "Job", job, ns)
        if condition(obj, "Complete") == "True":
            return "Complete"
        return "Failed" if condition(obj, "Failed") == "True" else None

    result = wait_or_diagnose(real_cluster, ns, f"Job {job} to finish", job_finished, 180)
    pods = {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
        for p in real_cluster.api.items("v1", "Pod", ns, selector=f"job-name={job}")
    }
    logs = {index: real_cluster.pod_logs(ns, pod["metadata"]["name"]) for index, pod in pods.items()}
    assert result == "Complete", f"{logs}\n{diagnose(real_cluster, ns)}"
    rank0_ip, rank1_ip = pods["0"]["status"]["podIP"], pods["1"]["status"]["podIP"]
    assert f"rank1 resolved {job}-0.{svc} to {rank0_ip}; reply ack" in logs["1"], logs
    assert f"rank0 got hello-from-rank1 from {rank1_ip}" in logs["0"], logs


def test_service_is_reachable_from_the_machine_through_a_forward(
    real_cluster: RealCluster, ns: str, base_image: str
) -> None:
    token = secrets.token_hex(8)
    serve = (
        "import http.server, os\n"
        "os.makedirs('/tmp/www', exist_ok=True)\n"
        f"open('/tmp/www/token', 'w').write('{token} ' + os.environ['HOSTNAME'])\n"
        "os.chdir('/tmp/www')\n"
        "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    pod = python_pod("web", ns, base_image, serve, labels={"app": "web"})
    container = pod["spec"]["containers"][0]
    container["ports"] = [{"containerPort": 8080, "name": "http"}]
    container["readinessProbe"] = {"httpGet": {"path": "/token", "port": "http"}, "periodSeconds": 1}
    pod["spec"]["restartPolicy"] = "Always"
    real_cluster.api.create(pod)
    real_cluster.api.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        }
    )

    def endpoint_ready() -> bool:
        slices = real_cluster.api.items(
            "discovery.k8s.io/v1", "EndpointSlice", ns, selector="kubernetes.io/service-name=web"
        )
        return any((e.get("conditions") or {}).get("ready") for s in slices for e in s.get("endpoints") or [])

    wait_or_diagnose(real_cluster, ns, "the web Service's endpoint to be ready", endpoint_ready, 120)
    for node_port in (False, True):
        forward = real_cluster.forward_service(ns, "web", 80, node_port=node_port)
        try:
            # kube-proxy may program the rules a moment after the endpoint turns ready.
            def fetch(url: str = forward.url) -> str | None:
                response = httpx.get(f"{url}/token", timeout=5)
                return response.text if response.status_code == 200 else None

            body = wait_or_diagnose(real_cluster, ns, f"GET {forward.target}/token", fetch, 30)
        finally:
            forward.close()
        assert body == f"{token} web", (node_port, body)
