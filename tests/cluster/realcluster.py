"""A real single-node Kubernetes cluster in a network namespace of its own, for the cluster tier of the tests.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (tests/engine/toolchain.sh), containerd + runc
(Debian), the kubelet, kube-proxy (iptables mode) and CoreDNS (tests/cluster/toolchain.sh), pods on a CNI bridge:
real containers, real Services, real cluster DNS. Everything runs in the network namespace `mlp-<id>` that the
cluster creates (node IP 10.200.0.1 on a veth whose peer has no address); nothing is added to the machine's own
network namespace, and no packet can leave the machine. The host reaches the API server through a socat bridge
on 127.0.0.1 (`forward` and `forward_service` make more such bridges, for Services and NodePorts).

What else the cluster owns, all removed by `stop()`: a work directory (certificates, etcd data, containerd root
and state, kubelet root, pod logs, logs), the cgroup `/mlp-<id>` in every hierarchy (the kubelet's cgroupRoot),
the mounts under the work directory, and every process it started, stopped by pid (containers and containerd
shims included). The kubelet runs in a mount namespace of its own where the kernel tunables it would otherwise
rewrite machine-wide (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...) read as already set.

Settings from ../shared/recipes/real-cluster.md: containerd's `restrict_oom_score_adj` (no CAP_SYS_RESOURCE
here), runc, cgroup v1 with the cgroupfs driver and `failCgroupV1: false`, `imageGCHighThresholdPercent: 100`
(images are imported, never pulled), a CNI config directory of the cluster's own, kube-proxy leaving conntrack
sysctls alone, CoreDNS as a process with a kubeconfig, NodeRestriction and kubelet certificates.

    python -m tests.cluster.realcluster --toolchain DIR [--node-toolchain DIR] [--image REF[=NAME]]...

prints the admin kubeconfig path on stdout and runs until Ctrl-C or SIGTERM; `--reap` removes what clusters of
SIGKILLed owners left behind. docs/cluster.md has the details.

The parts are in tests/harness: the control plane (controlplane.py, shared with the engine tier's LocalCluster),
the namespace, cgroups and mounts (hostns.py), containerd (containerd.py), the node's daemons (node.py) and the
bridges (forward.py); this module puts them together, in order, and takes them apart again.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import images
from tests.harness.api import Api
from tests.harness.containerd import CNI_BIN_DIR, CNI_PLUGINS, Containerd, default_image_store
from tests.harness.controlplane import ADMISSION_PLUGINS, CONTROL_PLANE_TOOLS, ControlPlane, ControlPlaneSpec
from tests.harness.forward import Forward, bridge_args, open_forward, service_target
from tests.harness.hostns import NODE_IP, HostNs
from tests.harness.node import Node
from tests.harness.pki import Pki
from tests.harness.procs import ClusterError, Processes, free_port, process_identity, run, stop_process

NODE_TOOLS = ("kubelet", "kube-proxy", "kubectl", "coredns", "kube-network-policies", "pause")
HOST_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "socat", "nsenter", "unshare", "ip",
                 "iptables", "nft", "conntrack", "mount", "umount")  # fmt: skip
API_PORT = 6443
# Stopped in this order (clients before servers; containers go between the kubelet and containerd); the
# forwards (socat bridges) first.
STOP_ORDER = ("kube-proxy", "kubelet", "containerd", "kube-scheduler", "kube-controller-manager", "api-bridge",
              "kube-apiserver", "etcd")  # fmt: skip
OWNER_FILE = "owner"
# "Outside the cluster": a host in a network namespace of its own behind the node, on a link of its own, reached
# by routing through the node (so an enforcer sees that traffic as it sees traffic to the internet). Nothing else
# is reachable from it: it has no other link.
OUTSIDE_NODE_SIDE, OUTSIDE_IP, OUTSIDE_PREFIX = "10.201.0.1", "10.201.0.2", 24
HOST_STATE_FILE = "host-state.json"


@dataclass(frozen=True)
class ImageSpec:
    """A podman image to import into the cluster's containerd, also tagged there as each of `names`."""

    podman_ref: str
    names: tuple[str, ...] = ()


class RealCluster:
    """Start with `start()`, stop with `stop()` (also a context manager; `stop()` is idempotent and also runs at
    interpreter exit). `kubeconfig` is the admin kubeconfig for the machine's side (server on 127.0.0.1);
    `api` an admin client."""

    images: list[ImageSpec]
    keep_logs: Path | None

    def __init__(
        self,
        control_plane: Path,
        node_tools: Path,
        workdir: Path | None = None,
        *,
        images: Sequence[ImageSpec] = (),
        keep_logs: Path | None = None,
        image_store: Path | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.node_tools = node_tools
        missing = [str(control_plane / t) for t in CONTROL_PLANE_TOOLS if not (control_plane / t).is_file()]
        missing += [str(node_tools / t) for t in NODE_TOOLS if not (node_tools / t).is_file()]
        missing += [c for c in HOST_COMMANDS if not shutil.which(c)]
        missing += [str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
        if missing:
            raise ClusterError(
                f"missing: {', '.join(missing)}: run tests/engine/toolchain.sh and tests/cluster/toolchain.sh"
            )
        if os.geteuid() != 0:
            raise ClusterError("a real cluster needs root (network namespaces, mounts, cgroups, containers)")
        name = f"mlp-{secrets.token_hex(4)}"
        workdir_ = workdir or Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self._init_state(name, workdir_, own_workdir=workdir is None, image_store=image_store)
        self.images = list(images)
        self.keep_logs = keep_logs
        (self.workdir / OWNER_FILE).write_text(process_identity(os.getpid()))
        atexit.register(self.stop)

    def _init_state(self, name: str, workdir: Path, *, own_workdir: bool, image_store: Path | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self._own_workdir = own_workdir
        self.logs = workdir / "logs"
        self.host = HostNs(name, workdir)
        self.netns_path = self.host.netns_path
        self.processes = Processes(self.logs, prefix=self.host.in_netns([]), cwd=workdir, append=True)
        self.containerd = Containerd(name, workdir, self.processes, image_store)
        self.images = []
        self.keep_logs = None
        self.forwards: list[Forward] = []
        self.api: Api
        self.kubeconfig: Path
        self.api_port = 0
        self._host_state: dict[str, bool] = {}
        self._stopped = False
        self._started = False
        self.stop_problems: list[str] = []

    @classmethod
    def stale(cls, tmp: Path | None = None) -> list[RealCluster]:
        """Clusters left behind by a process that died without stopping them (SIGKILL, a crash): those whose
        temporary work directory names an owner process that no longer runs. `stop()` on each removes it."""
        found = []
        for workdir in sorted((tmp or Path(tempfile.gettempdir())).glob("mlp-*-*")):
            name = workdir.name.rsplit("-", 1)[0]
            owner = workdir / OWNER_FILE
            if not (workdir.is_dir() and re.fullmatch(r"mlp-[0-9a-f]{8}", name) and owner.is_file()):
                continue
            pid = int(owner.read_text().split()[0])
            if process_identity(pid) == owner.read_text():
                continue
            cluster = cls.__new__(cls)
            cluster._init_state(name, workdir, own_workdir=True)
            cluster.host.created = cluster.netns_path.exists()
            with contextlib.suppress(OSError, ValueError):
                cluster._host_state = json.loads((workdir / HOST_STATE_FILE).read_text())
            cluster._started = True
            found.append(cluster)
        return found

    def __enter__(self) -> RealCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- processes ----------------------------------------------------------------------------------------
    def in_netns(self, args: Sequence[str]) -> list[str]:
        return self.host.in_netns(args)

    def netns_kubeconfig(self) -> Path:
        """The admin kubeconfig for a process inside the namespace: the API server at the node IP (`kubeconfig`'s
        127.0.0.1 bridge is the machine's)."""
        path = self.workdir / "configs" / "admin-in-netns.kubeconfig"
        config = yaml.safe_load(self.kubeconfig.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://{NODE_IP}:{API_PORT}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def netns_run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.host.netns_run(args, **kw)

    def check_alive(self) -> None:
        self.processes.check_alive()

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.processes.log_tail(name, lines)

    # --- start --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise ClusterError("a RealCluster starts once")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for d in ("pki", "etcd", "configs", "bin", "pod-logs", "cni/net.d", "cni/ipam", "volume-plugins"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self._host_state = self.host.host_state()
        (self.workdir / HOST_STATE_FILE).write_text(json.dumps(self._host_state))
        self.host.make_netns()
        self.host.make_cgroups()
        control_plane = self._start_control_plane(Pki(self.workdir / "pki"))
        self.containerd.start()
        self.import_oci_archive(images.pause_archive(self.node_tools / "pause", self.workdir / "pause.tar"))
        coredns_image = self._import_binary_image("coredns", images.COREDNS_REPO)
        enforcer_image = self._import_binary_image("kube-network-policies", images.NETWORK_POLICIES_REPO)
        for spec in self.images:
            self.import_podman_image(spec.podman_ref, spec.names)
        node = Node(
            tools=self.node_tools,
            workdir=self.workdir,
            procs=self.processes,
            control_plane=control_plane,
            api=self.api,
            http_ok=self.host.http_ok,
            containerd_sock=self.containerd.sock,
            cgroup_root=self.host.cgroup_root,
        )
        node.declare_coredns(coredns_image)
        node.declare_network_policies(enforcer_image)
        node.start_kubelet()
        node.start_kube_proxy()
        node.wait_network_policies()  # before the tests' first pod: every pod lives under enforcement
        node.wait_coredns()
        self.processes.eventually(
            "the default ServiceAccount (controller-manager up)",
            lambda: self.api.get("v1", "ServiceAccount", "default", "default") is not None,
            120,
        )

    def _start_control_plane(self, pki: Pki) -> ControlPlane:
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters",
                                   client=True)  # fmt: skip
        spec = ControlPlaneSpec(
            toolchain=self.control_plane,
            workdir=self.workdir,
            config_dir=self.workdir / "configs",
            etcd_client_port=2379,
            etcd_peer_port=2380,
            etcd_metrics_port=2381,
            api_bind="0.0.0.0",
            api_advertise=NODE_IP,
            api_port=API_PORT,
            component_server=f"https://{NODE_IP}:{API_PORT}",
            controller_manager_port=10257,
            scheduler_port=10259,
            flex_volume_dir=self.workdir / "volume-plugins",
            admission_plugins=f"{ADMISSION_PLUGINS},NodeRestriction",
            apiserver_args=(
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
                f"--kubelet-certificate-authority={pki.ca_cert}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
            ),
        )
        control_plane = ControlPlane(spec, pki, self.processes)
        control_plane.start_etcd(self.host.http_ok)
        control_plane.start_apiserver()
        # The machine's way in: socat on 127.0.0.1, each connection entering the namespace.
        self.api_port = free_port()
        self.processes.spawn("api-bridge", self._bridge_args(self.api_port, NODE_IP, API_PORT), prefix=False)
        self.kubeconfig, self.api = control_plane.connect_admin(f"https://127.0.0.1:{self.api_port}")
        control_plane.start_controllers()
        return control_plane

    def _import_binary_image(self, tool: str, repo: str) -> str:
        """Import the node tool `tool` as a one-binary image of `repo` (tests/cluster/images.py); its name."""
        binary = self.node_tools / tool
        name = images.binary_image_name(binary, repo)
        self.import_oci_archive(images.binary_archive(binary, name, self.workdir / f"{tool}.tar"))
        return name

    def import_binary_image(self, binary: Path, name: str, *, user: str = "") -> str:
        """Import `binary` as the one-binary image `name` (tests/cluster/images.py binary_archive); `name`."""
        archive = self.workdir / f"{name.rsplit('/', 1)[-1].replace(':', '_')}.tar"
        self.import_oci_archive(images.binary_archive(binary, name, archive, user=user))
        archive.unlink()
        return name

    def _bridge_args(self, listen_port: int, host: str, port: int) -> list[str]:
        return bridge_args(self.netns_path, self.workdir / "bin", listen_port, host, port)

    def ctr(self, *args: str, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.containerd.ctr(*args, timeout=timeout, check=check, **kw)

    def import_oci_archive(self, path: Path) -> None:
        self.containerd.import_oci_archive(path)

    def import_podman_image(self, ref: str, names: Sequence[str] = ()) -> float:
        """`podman save REF | ctr images import -` unless containerd's root already holds that very image, then
        tagged as each of `names` (Containerd.import_podman_image); seconds taken."""
        return self.containerd.import_podman_image(ref, names)

    # --- helpers for tests --------------------------------------------------------------------------------
    @property
    def outside_netns(self) -> str:
        return f"{self.name}-out"

    def outside_host(self) -> list[str]:
        """Create (once) the host outside the cluster at OUTSIDE_IP; the prefix that runs a command there."""
        prefix = ["ip", "netns", "exec", self.outside_netns]
        if Path(f"/run/netns/{self.outside_netns}").exists():
            return prefix
        run(["ip", "netns", "add", self.outside_netns])
        node, out = ["ip", "-n", self.name], ["ip", "-n", self.outside_netns]
        run([*node, "link", "add", "mlpo0", "type", "veth", "peer", "name", "mlpo1", "netns", self.outside_netns])
        run([*node, "addr", "add", f"{OUTSIDE_NODE_SIDE}/{OUTSIDE_PREFIX}", "dev", "mlpo0"])
        run([*node, "link", "set", "mlpo0", "up"])
        run([*out, "addr", "add", f"{OUTSIDE_IP}/{OUTSIDE_PREFIX}", "dev", "mlpo1"])
        run([*out, "link", "set", "mlpo1", "up"])
        run([*out, "link", "set", "lo", "up"])
        run([*out, "route", "add", "default", "via", OUTSIDE_NODE_SIDE])
        return prefix

    def outside_listening(self, port: int) -> bool:
        """Whether something on the outside host accepts TCP connections on `port` (asked from the node)."""
        probe = self.in_netns(["bash", "-c", f"exec 3<>/dev/tcp/{OUTSIDE_IP}/{port}"])
        return run(probe, check=False, timeout=10).returncode == 0

    def forward(self, host: str, port: int) -> Forward:
        """Forward a free port on the machine's 127.0.0.1 to host:port inside the namespace (a ClusterIP, a pod
        IP, or the node IP and a NodePort)."""
        fwd = open_forward(self.netns_path, self.workdir / "bin", host, port)
        self.forwards.append(fwd)
        return fwd

    def forward_service(self, namespace: str, name: str, port: int, *, node_port: bool = False) -> Forward:
        """Forward to a Service's ClusterIP:port, or with `node_port` to the node IP and the NodePort that
        serves `port`."""
        return self.forward(*service_target(self.api, namespace, name, port, node_port=node_port))

    def node_dir(self, name: str, mode: int = 0o777) -> Path:
        """A directory on the node for hostPath volumes (in the work directory, removed at stop). Not under
        /var/lib or /var/log: the kubelet sees its own directories there (see tests/harness/node.py, start_kubelet)."""
        path = self.workdir / "node-paths" / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        return path

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        cache = f"--cache-dir={self.workdir / 'kubectl-cache'}"
        return run([str(self.node_tools / "kubectl"), f"--kubeconfig={self.kubeconfig}", cache, *args],
                   timeout=timeout, check=check)  # fmt: skip

    def pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        return self.api.logs(namespace, name, container)

    # --- stop ---------------------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop every process by pid and remove everything the cluster created; best effort at every step (a
        stop must not hide the failure that led to it). The problems met, also printed on stderr."""
        if self._stopped:
            return self.stop_problems
        self._stopped = True
        atexit.unregister(self.stop)
        problems: list[str] = []

        def step(what: str, fn: Any, *args: Any, **kw: Any) -> None:
            try:
                fn(*args, **kw)
            except Exception as err:  # every step runs; all problems are reported together
                problems.append(f"{what}: {err}")

        for fwd in self.forwards:
            step(f"forward {fwd.target}", fwd.close)
        self.forwards.clear()
        procs = self.processes.procs
        for name in STOP_ORDER:
            if name == "containerd" and name in procs:
                step("removing containers", self.containerd.remove_containers)
            if name in procs:
                step(f"stopping {name}", stop_process, procs.pop(name))
        for name in list(procs):
            step(f"stopping {name}", stop_process, procs.pop(name))
        step("killing leftover container processes", self.host.kill_leftovers)
        step("releasing the image store", self.containerd.release_image_store)
        step("removing cgroups", self.host.remove_cgroups)
        step("unmounting", self.host.unmount_all)
        if Path(f"/run/netns/{self.outside_netns}").exists():
            step("deleting the outside host's namespace", run, ["ip", "netns", "delete", self.outside_netns])
        if self.host.created:
            step("deleting the network namespace", run, ["ip", "netns", "delete", self.name])
        step(
            "cleaning machine paths", self.host.clean_host_paths, self._host_state, self.containerd.dir,
            self.containerd.sock,
        )  # fmt: skip
        if hasattr(self, "api"):
            self.api.close()
        if self.keep_logs and self.logs.is_dir():
            step("keeping the logs", shutil.copytree, self.logs, self.keep_logs, dirs_exist_ok=True)
        if self._own_workdir:
            step("removing the work directory", shutil.rmtree, self.workdir)
        if problems:
            print(f"realcluster {self.name}: stop problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        self.stop_problems = problems
        return problems


def toolchain_dir(script: str, env: str) -> Path:
    """A toolchain directory: $`env` if set, else what `script --print-dir` prints (built or not)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    root = Path(__file__).resolve().parents[2]
    out = run(["bash", str(root / script), "--print-dir"]).stdout
    return Path(out.strip().splitlines()[-1])


def parse_image(arg: str) -> ImageSpec:
    ref, _, names = arg.partition("=")
    return ImageSpec(ref, tuple(n for n in names.split(",") if n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.realcluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--toolchain", type=Path, help="control plane binaries (tests/engine/toolchain.sh's directory)")
    parser.add_argument("--node-toolchain", type=Path, help="node binaries (tests/cluster/toolchain.sh's directory)")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        type=parse_image,
        metavar="REF[=NAME,...]",
        help="a podman image to import into the cluster, also tagged as each NAME (e.g. ml-platform:dev)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where certs, data and logs go and stay (default: a temp dir, removed at the end)"
    )
    parser.add_argument(
        "--no-image-store",
        action="store_true",
        help="import images into a containerd root of this cluster's own (default: the machine's image store, "
        "where images imported once stay; see default_image_store)",
    )
    parser.add_argument(
        "--reap",
        action="store_true",
        help="remove what clusters whose owner process died (SIGKILL, crash) left behind, then exit",
    )
    args = parser.parse_args(argv)
    if args.reap:
        status = 0
        for stale in RealCluster.stale():
            print(f"reaping {stale.name} ({stale.workdir})", file=sys.stderr)
            status |= bool(stale.stop())
        return status
    control_plane = (args.toolchain or toolchain_dir("tests/engine/toolchain.sh", "ML_PLATFORM_TOOLCHAIN")).resolve()
    node_tools = (
        args.node_toolchain or toolchain_dir("tests/cluster/toolchain.sh", "ML_PLATFORM_CLUSTER_TOOLCHAIN")
    ).resolve()
    workdir = args.workdir.resolve() if args.workdir else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    # Also when started in the background by a shell (which ignores SIGINT for it): Ctrl-C or kill -INT stops.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    store = None if args.no_image_store else default_image_store()
    cluster = RealCluster(control_plane, node_tools, workdir, images=args.image, image_store=store)
    try:
        cluster.start()
        print(f"logs: {cluster.logs}", file=sys.stderr)
        print(f"network namespace: {cluster.name} (nsenter --net={cluster.netns_path})", file=sys.stderr)
        print(f"API server: {cluster.api.server} (in the namespace https://{NODE_IP}:{API_PORT}); Ctrl-C stops it",
              file=sys.stderr)  # fmt: skip
        print(cluster.kubeconfig, flush=True)
        while True:
            time.sleep(5)
            cluster.check_alive()
    except KeyboardInterrupt:
        pass
    finally:
        problems = cluster.stop()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
