"""A local Kubernetes control plane without containers, for the engine tier of the tests.

etcd, kube-apiserver (TLS, RBAC, the admission plugins a real cluster runs: NamespaceLifecycle, LimitRanger,
ServiceAccount, PodSecurity, ResourceQuota, ...), kube-controller-manager, kube-scheduler and kwok, all on
127.0.0.1 with generated certificates and kubeconfigs. kwok simulates the nodes' kubelets: a CPU node and a
GPU node (nvidia.com/gpu capacity, the GPU label and taint of Pulumi.gpu.yaml); pods get scheduled by the
real scheduler, become Ready, and pods owned by a Job complete.

The control plane itself is tests/harness/controlplane.py (shared with the cluster tier's RealCluster); this module
adds kwok and its nodes. Binaries come from tests/engine/toolchain.sh (its cache directory). Used by
tests/engine/conftest.py and by `python -m tests.engine.cluster --toolchain DIR` (`make cluster-local`), which
prints the kubeconfig path and runs until interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.api import Api, condition
from tests.harness.controlplane import CONTROL_PLANE_TOOLS, ControlPlane, ControlPlaneSpec
from tests.harness.pki import Pki
from tests.harness.procs import ClusterError, Processes, free_port

TOOLS = (*CONTROL_PLANE_TOOLS, "kwok")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
CPU_NODE = "kwok-cpu-0"
GPU_NODE = "kwok-gpu-0"


def node_object(name: str, *, cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "kwok",
        "type": "kwok",
    }
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "200Gi"}
    spec: dict[str, Any] = {}
    if gpus:
        labels["nvidia.com/gpu.present"] = "true"
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


# Inference pods answer /readyz only once a model version carries the alias; until training registers one they
# run but stay unready. kwok's general pod-ready stage would make them Ready at once and hide what `pulumi up`
# does on a fresh cluster, so these pods get a stage of their own that starts them without readiness.
NEVER_READY_LABEL = ("app.kubernetes.io/name", "inference")


def stages_with_unready_pods(stages_yaml: str, label: tuple[str, str]) -> str:
    """kwok's stages, with pods carrying `label` moved from the pod-ready stage to a running-but-unready one."""
    key = f'.metadata.labels["{label[0]}"]'
    stages = list(yaml.safe_load_all(stages_yaml))
    out = []
    for stage in stages:
        if not stage:
            continue
        out.append(stage)
        if stage["metadata"]["name"] != "pod-ready":
            continue
        unready = json.loads(json.dumps(stage))
        stage["spec"]["selector"]["matchExpressions"].append({"key": key, "operator": "NotIn", "values": [label[1]]})
        unready["metadata"]["name"] = "pod-running-unready"
        unready["spec"]["selector"]["matchExpressions"].append({"key": key, "operator": "In", "values": [label[1]]})
        unready["spec"]["delay"] = {"durationMilliseconds": 500}
        unready["spec"].pop("weightFrom", None)
        template = unready["spec"]["next"]["statusTemplate"]
        for was, now in (('status: "True"', 'status: "False"'), ("ready: true", "ready: false")):
            assert was in template, f"kwok's pod-ready stage changed: no {was!r}"
            template = template.replace(was, now)
        unready["spec"]["next"]["statusTemplate"] = template
        out.append(unready)
    return yaml.safe_dump_all(out, sort_keys=False)


class LocalCluster:
    """Start with `start()`, stop with `stop()` (also a context manager). `kubeconfig` is the admin kubeconfig;
    `api` an admin client."""

    def __init__(self, toolchain: Path, workdir: Path | None = None, *, verbose: bool = False) -> None:
        self.toolchain = toolchain
        missing = [t for t in TOOLS if not (toolchain / t).is_file()]
        if missing or not (toolchain / "kwok-stages.yaml").is_file():
            raise ClusterError(
                f"toolchain {toolchain} lacks {', '.join(missing) or 'kwok-stages.yaml'}: run tests/engine/toolchain.sh"
            )
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="ml-platform-cluster-"))
        self.logs = self.workdir / "logs"
        self.verbose = verbose
        self.processes = Processes(self.logs)
        self.api: Api
        self.kubeconfig: Path

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.processes.log_tail(name, lines)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        api_port = free_port()
        spec = ControlPlaneSpec(
            toolchain=self.toolchain,
            workdir=self.workdir,
            config_dir=self.workdir,
            etcd_client_port=free_port(),
            etcd_peer_port=free_port(),
            api_bind="127.0.0.1",
            api_advertise="127.0.0.1",
            api_port=api_port,
            component_server=f"https://127.0.0.1:{api_port}",
            controller_manager_port=free_port(),
            scheduler_port=free_port(),
            flex_volume_dir=self.workdir / "flexvolume",
            controller_manager_args=("--concurrent-job-syncs=5", "--pvclaimbinder-sync-period=2s"),
        )
        control_plane = ControlPlane(spec, Pki(self.workdir / "pki"), self.processes)
        control_plane.start_etcd(lambda url: httpx.get(url).status_code == 200)
        control_plane.start_apiserver()
        self.kubeconfig, self.api = control_plane.connect_admin(spec.component_server)
        control_plane.start_controllers()

        stages = self.workdir / "kwok-stages.yaml"
        kwok_stages = (self.toolchain / "kwok-stages.yaml").read_text()
        stages.write_text(stages_with_unready_pods(kwok_stages, NEVER_READY_LABEL))
        self.processes.spawn(
            "kwok",
            [
                str(self.toolchain / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--node-ip=10.244.0.1",
                "--cidr=10.244.0.0/16",
                f"--node-port={free_port()}",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds=40",
            ],
        )
        for node in (node_object(CPU_NODE, cpu="16", memory="64Gi"),
                     node_object(GPU_NODE, cpu="96", memory="768Gi", gpus=8)):  # fmt: skip
            self.api.create(node)

        self.processes.eventually(
            "kwok nodes Ready",
            lambda: all(condition(self.api.get("v1", "Node", n), "Ready") == "True" for n in (CPU_NODE, GPU_NODE)),
            120,
        )
        self.processes.eventually(
            "the default ServiceAccount (controller-manager up)",
            lambda: self.api.get("v1", "ServiceAccount", "default", "default") is not None,
            120,
        )

    def stop(self) -> None:
        # One at a time, clients first (kwok, scheduler, controller-manager), then the API server, then etcd: an
        # API server told to stop while its clients still watch waits for them.
        for name in reversed(list(self.processes.procs)):
            self.processes.stop(name)
        if hasattr(self, "api"):
            self.api.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.engine.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--toolchain", type=Path, required=True, help="directory printed by toolchain.sh")
    parser.add_argument(
        "--workdir", type=Path, help="where certs, data and logs go and stay (default: a temp dir, removed at the end)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve() if args.workdir else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(args.toolchain.resolve(), workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cluster:
        print(f"logs: {cluster.logs}", file=sys.stderr)
        print(f"control plane up at {cluster.api.server}; Ctrl-C stops it", file=sys.stderr)
        print(cluster.kubeconfig, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
