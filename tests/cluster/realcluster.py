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
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests import phaselog
from tests.cluster import images
from tests.engine.cluster import (
    ADMISSION_PLUGINS,
    SERVICE_CIDR,
    Api,
    ClusterError,
    Pki,
    condition,
    free_port,
    wait_for,
    write_kubeconfig,
)

CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_TOOLS = ("kubelet", "kube-proxy", "kubectl", "coredns", "pause")
HOST_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "socat", "nsenter", "unshare", "ip",
                 "iptables", "conntrack", "mount", "umount")  # fmt: skip
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
NODE_NAME = "mlp-node-0"
NODE_IP = "10.200.0.1"
NODE_PREFIX = 24
POD_CIDR = "10.244.0.0/24"
API_PORT = 6443
CLUSTER_DOMAIN = "cluster.local"
SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
# What the kubelet would write machine-wide at start (pkg/kubelet/cm setupKernelTunables); it sees these values.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# Stopped in this order (clients before servers; containers go between the kubelet and containerd); the
# forwards (socat bridges) first.
STOP_ORDER = ("kube-proxy", "kubelet", "containerd", "coredns", "kube-scheduler", "kube-controller-manager",
              "api-bridge", "kube-apiserver", "etcd")  # fmt: skip
OWNER_FILE = "owner"
IMAGES_RECORD = "ml-platform-images.json"
HOST_STATE_FILE = "host-state.json"
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
CNI_RESULTS = Path("/var/lib/cni/results")
# Paths of the machine that a cluster creates when they are missing (`ip netns`, libcni's result cache, the shims'
# sockets, iptables' lock); removed at stop when they were missing before, are empty again and no other cluster
# runs.
SHIM_SOCKETS = Path("/run/containerd/s")
HOST_PATHS = (Path("/run/xtables.lock"), CNI_RESULTS, CNI_RESULTS.parent, SHIM_SOCKETS, SHIM_SOCKETS.parent,
              NETNS_DIR)  # fmt: skip


def cri_name(ref: str) -> str:
    """The name the CRI looks an image up by (Docker's normalization: `ml-platform:dev` is
    `docker.io/library/ml-platform:dev`)."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


@dataclass(frozen=True)
class ImageSpec:
    """A podman image to import into the cluster's containerd, also tagged there as each of `names`."""

    podman_ref: str
    names: tuple[str, ...] = ()


@dataclass
class Forward:
    """A socat bridge: 127.0.0.1:`port` on the machine to `target` inside the cluster's network namespace."""

    port: int
    target: str
    proc: subprocess.Popen[bytes]
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        _stop_process(self.proc)


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM to the process's own group (it was started in a new session), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Children left in the group (socat's per-connection forks) go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _process_identity(pid: int) -> str:
    """pid and start time: names one process, even after its pid is reused ("" when none runs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(point.encode().decode("unicode_escape"))
    return points


def _is_mount_point(path: Path) -> bool:
    return str(path) in _mount_points()


def run(args: Sequence[str], *, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


class RealCluster:
    """Start with `start()`, stop with `stop()` (also a context manager; `stop()` is idempotent and also runs at
    interpreter exit). `kubeconfig` is the admin kubeconfig for the machine's side (server on 127.0.0.1);
    `api` an admin client."""

    images: list[ImageSpec]
    keep_logs: Path | None
    image_store: Path | None

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
        self._init_state(name, workdir or Path(tempfile.mkdtemp(prefix=f"{name}-")), own_workdir=workdir is None)
        self.images = list(images)
        self.keep_logs = keep_logs
        self.image_store = image_store
        (self.workdir / OWNER_FILE).write_text(_process_identity(os.getpid()))
        atexit.register(self.stop)

    def _init_state(self, name: str, workdir: Path, *, own_workdir: bool) -> None:
        self.name = name
        self.netns_path = NETNS_DIR / name
        self.workdir = workdir
        self._own_workdir = own_workdir
        self.logs = workdir / "logs"
        self.cgroup_root = f"/{name}"
        self.containerd_dir = workdir / "containerd"
        self.containerd_sock = self.containerd_dir / "containerd.sock"
        self.kubelet_dir = workdir / "kubelet"
        self.images = []
        self.keep_logs = None
        self.image_store = None
        self._store_lock: int | None = None
        self.containerd_root = self.containerd_dir / "root"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.forwards: list[Forward] = []
        self.api: Api
        self.kubeconfig: Path
        self.api_port = 0
        self._netns_created = False
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
            if _process_identity(pid) == owner.read_text():
                continue
            cluster = cls.__new__(cls)
            cluster._init_state(name, workdir, own_workdir=True)
            cluster._netns_created = cluster.netns_path.exists()
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
        return ["nsenter", f"--net={self.netns_path}", *args]

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
        return run(self.in_netns(args), **kw)

    def _spawn(self, name: str, args: Sequence[str], *, netns: bool = True) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                self.in_netns(args) if netns else list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _wait(self, what: str, check: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
        def alive_and(c: Any = check) -> Any:
            self.check_alive()
            return c()

        return wait_for(what, alive_and, timeout_s, interval_s)

    def _netns_http_ok(self, url: str) -> bool:
        probe = "import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=3).status != 200)"
        return self.netns_run([sys.executable, "-c", probe, url], timeout=15, check=False).returncode == 0

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
        self._host_state = {str(p): p.exists() for p in HOST_PATHS}
        self._host_state["netns_dir_mounted"] = _is_mount_point(NETNS_DIR)
        (self.workdir / HOST_STATE_FILE).write_text(json.dumps(self._host_state))
        self._make_netns()
        self._make_cgroups()
        pki = Pki(self.workdir / "pki")
        self._start_control_plane(pki)
        self._start_containerd()
        self.import_oci_archive(images.pause_archive(self.node_tools / "pause", self.workdir / "pause.tar"))
        for spec in self.images:
            self.import_podman_image(spec.podman_ref, spec.names)
        self._start_coredns(pki)
        self._start_kubelet(pki)
        self._start_kube_proxy(pki)
        self._wait(
            "the default ServiceAccount (controller-manager up)",
            lambda: self.api.get("v1", "ServiceAccount", "default", "default") is not None,
            120,
        )

    def _make_netns(self) -> None:
        run(["ip", "netns", "add", self.name])
        self._netns_created = True
        ns = ["ip", "-n", self.name]
        run([*ns, "link", "set", "lo", "up"])
        # Both ends inside the namespace: the node's interface, and a peer without an address that takes the
        # default route's packets nowhere.
        run([*ns, "link", "add", "mlp0", "type", "veth", "peer", "name", "mlp1"])
        run([*ns, "addr", "add", f"{NODE_IP}/{NODE_PREFIX}", "dev", "mlp0"])
        run([*ns, "link", "set", "mlp0", "up"])
        run([*ns, "link", "set", "mlp1", "up"])
        run([*ns, "route", "add", "default", "dev", "mlp0"])
        for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
            current = self.netns_run(["cat", f"/proc/sys/{key}"]).stdout.strip()
            if current != value:
                self.netns_run(["sysctl", "-q", "-w", f"{key.replace('/', '.')}={value}"])

    def _cgroup_dirs(self) -> list[Path]:
        """The cluster's cgroup in every mounted hierarchy (v1 controllers, name=systemd, the unified one)."""
        return [h / self.name for h in sorted(CGROUP_FS.iterdir()) if h.is_dir() and not h.is_symlink()]

    def _make_cgroups(self) -> None:
        for d in self._cgroup_dirs():
            d.mkdir(exist_ok=True)
            if d.parent.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((d.parent / f).read_text())

    def _kubeconfig(self, pki: Pki, name: str, cn: str, org: str | None = None) -> Path:
        crt, key = pki.issue(name, cn, org, client=True)
        return write_kubeconfig(
            self.workdir / "configs" / f"{name}.kubeconfig", f"https://{NODE_IP}:{API_PORT}", pki.ca_cert, crt, key,
            user=cn,
        )  # fmt: skip

    def _start_control_plane(self, pki: Pki) -> None:
        ca = pki.ca_cert
        self._spawn(
            "etcd",
            [
                str(self.control_plane / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
                "--listen-metrics-urls=http://127.0.0.1:2381",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: self._netns_http_ok("http://127.0.0.1:2381/health"), 60)
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          f"kubernetes.default.svc.{CLUSTER_DOMAIN}"],
            server_ips=["127.0.0.1", NODE_IP, SERVICE_IP],
        )  # fmt: skip
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters",
                                   client=True)  # fmt: skip
        self._spawn(
            "kube-apiserver",
            [
                str(self.control_plane / "kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={ca}",
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
                f"--kubelet-certificate-authority={ca}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={pki.dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-node-port-range=30000-32767",
                "--authorization-mode=Node,RBAC",
                f"--enable-admission-plugins={ADMISSION_PLUGINS},NodeRestriction",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        # The machine's way in: socat on 127.0.0.1, each connection entering the namespace.
        self.api_port = free_port()
        self._spawn("api-bridge", self._bridge_args(self.api_port, NODE_IP, API_PORT), netns=False)
        admin = pki.issue("admin", "admin", "system:masters", client=True)
        server = f"https://127.0.0.1:{self.api_port}"
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", server, pki.ca_cert, *admin, user="admin")
        self.api = Api(server, pki.ca_cert, *admin)
        self._wait("kube-apiserver /readyz", self.api.ready, 180)

        cm = self._kubeconfig(pki, "controller-manager", "system:kube-controller-manager")
        self._spawn(
            "kube-controller-manager",
            [
                str(self.control_plane / "kube-controller-manager"),
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10257",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.dir / 'sa.key'}",
                f"--root-ca-file={ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Its default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec, would be created on the machine.
                f"--flex-volume-plugin-dir={self.workdir / 'volume-plugins'}",
                "--controllers=*",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched = self._kubeconfig(pki, "scheduler", "system:kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(self.control_plane / "kube-scheduler"),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _bridge_args(self, listen_port: int, host: str, port: int) -> list[str]:
        # socat 1.7 has no netns option: each accepted connection runs a small script that enters the namespace.
        connect = self.workdir / "bin" / "netns-connect"
        if not connect.exists():
            connect.write_text(f'#!/bin/sh\nexec nsenter --net={self.netns_path} socat STDIO "TCP:$1:$2"\n')
            connect.chmod(0o755)
        return ["socat", f"TCP-LISTEN:{listen_port},bind=127.0.0.1,fork,reuseaddr", f"EXEC:{connect} {host} {port}"]

    def _acquire_image_store(self) -> None:
        """Use the machine's image store as containerd's root when no other cluster holds it (flock, released
        when this process ends however it ends); else a root of this cluster's own, filled by imports."""
        if self.image_store is None:
            return
        self.image_store.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.image_store / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            print(f"realcluster {self.name}: image store {self.image_store} in use by another cluster; importing "
                  "images into a root of this cluster's own", file=sys.stderr)  # fmt: skip
            return
        self._store_lock = fd
        self.containerd_root = self.image_store / "root"
        # What a cluster killed without stopping left in the CRI's own directories (its containers are deleted
        # from containerd's metadata once containerd is up, before the kubelet starts).
        cri = self.containerd_root / "io.containerd.grpc.v1.cri"
        for kind in ("sandboxes", "containers"):
            if (cri / kind).is_dir():
                for d in (cri / kind).iterdir():
                    shutil.rmtree(d, ignore_errors=True)

    def _release_image_store(self) -> None:
        if self._store_lock is not None:
            cri = self.containerd_root / "io.containerd.grpc.v1.cri"
            for kind in ("sandboxes", "containers"):
                if (cri / kind).is_dir():
                    for d in (cri / kind).iterdir():
                        shutil.rmtree(d, ignore_errors=True)
            os.close(self._store_lock)
            self._store_lock = None

    def _start_containerd(self) -> None:
        self._acquire_image_store()
        root, state = self.containerd_root, self.containerd_dir / "state"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.containerd_sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.containerd_dir / "opt"}"

[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj (every sandbox fails without this).
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /run/netns of the machine.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
    max_conf_num = 1

  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        Root = "{state / "runc"}"
        SystemdCgroup = false
"""
        conf = self.workdir / "configs" / "containerd.toml"
        conf.write_text(config)
        cni = {
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "hairpinMode": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                }
            ],
        }
        (self.workdir / "cni" / "net.d" / "10-mlp.conflist").write_text(json.dumps(cni, indent=2))
        self._spawn("containerd", ["containerd", "--config", str(conf)])
        self._wait(
            "containerd",
            lambda: self.containerd_sock.exists() and self.ctr("version", check=False).returncode == 0,
            60,
        )
        if self._store_lock is not None:
            self._remove_containers()

    def ctr(self, *args: str, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", str(self.containerd_sock), "--namespace", "k8s.io", *args],
                   timeout=timeout, check=check, **kw)  # fmt: skip

    def import_oci_archive(self, path: Path) -> None:
        self.ctr("images", "import", str(path), timeout=600)

    def import_podman_image(self, ref: str, names: Sequence[str] = ()) -> float:
        """`podman save REF | ctr images import -` unless containerd's root (the image store) already holds that
        very image (same podman image ID), then tag it as each of `names`; seconds taken. In the image store,
        older images of the same repository go."""
        start = time.monotonic()
        image_id = images.podman("image", "inspect", "--format", "{{.Id}}", ref, timeout=60).stdout.strip()
        record_path = self.containerd_root / IMAGES_RECORD
        record: dict[str, str] = json.loads(record_path.read_text()) if record_path.is_file() else {}
        present = set(self.ctr("images", "list", "--quiet").stdout.split())
        if not (record.get(ref) == image_id and ref in present):
            epoch = time.time()
            self._import_stream(ref)
            phaselog.record(f"image import into containerd: {ref.rsplit(':', 1)[0]}", epoch)
            repo = ref.rsplit(":", 1)[0]
            for old_ref, old_id in list(record.items()):
                if old_ref != ref and old_ref.rsplit(":", 1)[0] == repo:
                    # The CRI names every image also by its ID (sha256:<config digest>).
                    stale = [r for r in (old_ref, f"sha256:{old_id}") if r in present and old_id != image_id]
                    if stale:
                        self.ctr("images", "remove", "--sync", *stale, timeout=600)
                    del record[old_ref]
            record[ref] = image_id
            record_path.write_text(json.dumps(record, indent=1))
        for name in names:
            if cri_name(name) != ref:
                self.ctr("images", "tag", "--force", ref, cri_name(name))
        return time.monotonic() - start

    def _import_stream(self, ref: str) -> None:
        with subprocess.Popen(["podman", "save", "--format", "docker-archive", ref], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as save:  # fmt: skip
            imported = subprocess.run(
                ["ctr", "--address", str(self.containerd_sock), "--namespace", "k8s.io", "images", "import", "-"],
                stdin=save.stdout, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
        if save.returncode != 0 or imported.returncode != 0:
            raise ClusterError(
                f"importing {ref} failed: podman save: {save_err[-2000:]} ctr: {imported.stderr[-2000:]}"
            )

    def _start_coredns(self, pki: Pki) -> None:
        rbac = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                     "verbs": ["list", "watch"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:coredns"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}],
            },
        ]  # fmt: skip
        for obj in rbac:
            self.api.apply(obj)
        kubeconfig = self._kubeconfig(pki, "coredns", "system:coredns")
        corefile = self.workdir / "configs" / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
}}
"""
        )
        self._spawn("coredns", [str(self.node_tools / "coredns"), "-conf", str(corefile)])
        self._wait("CoreDNS ready", lambda: self._netns_http_ok("http://127.0.0.1:8181/ready"), 60)

    def _start_kubelet(self, pki: Pki) -> None:
        kubeconfig = self._kubeconfig(pki, "kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        serving = pki.issue("kubelet-serving", NODE_NAME, server_names=[NODE_NAME], server_ips=[NODE_IP])
        resolv = self.workdir / "configs" / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            # cgroup v1 here (hybrid layout with an empty unified mount); containerd 1.6 cannot report its driver.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            # Images are imported, never pulled: the kubelet must not garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "maxPods": 110,
        }
        conf = self.workdir / "configs" / "kubelet.yaml"
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        # The kubelet mounts volumes (secrets, projected tokens, memory emptyDirs) under its root directory in
        # its own mount namespace; a shared mount there carries them to containerd's (the machine's) namespace.
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(self.kubelet_dir), str(self.kubelet_dir)])
        run(["mount", "--make-shared", str(self.kubelet_dir)])
        # In that namespace the kubelet also gets /var/lib and /var/log of its own: it puts the device-plugin socket
        # in /var/lib/kubelet/device-plugins and container log links in /var/log/containers whatever --root-dir
        # says (fixed paths a second cluster on the machine would fight over), and the kernel tunables it would
        # otherwise rewrite machine-wide read as already set.
        node = self.workdir / "node"
        script = ["set -e"]
        for path in ("/var/lib", "/var/log"):
            private = node / path.strip("/").replace("/", "-")
            private.mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {private} {path}")
        for key, value in KERNEL_TUNABLES.items():
            mask = node / "sysctl" / key.replace("/", ".")
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.write_text(f"{value}\n")
            script.append(f"mount --bind -o ro {mask} /proc/sys/{key}")
        script.append('exec "$@"')
        self._spawn(
            "kubelet",
            [
                "unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", "\n".join(script), "kubelet",
                str(self.node_tools / "kubelet"),
                f"--config={conf}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_dir}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
        )  # fmt: skip
        self._wait(
            f"node {NODE_NAME} Ready", lambda: condition(self.api.get("v1", "Node", NODE_NAME), "Ready") == "True", 120
        )

    def _start_kube_proxy(self, pki: Pki) -> None:
        kubeconfig = self._kubeconfig(pki, "kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": "0.0.0.0",
            "clusterCIDR": POD_CIDR,
            "mode": "iptables",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zeros: leave the machine-wide conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        conf = self.workdir / "configs" / "kube-proxy.yaml"
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn("kube-proxy", [str(self.node_tools / "kube-proxy"), f"--config={conf}", "--v=1"])
        self._wait("kube-proxy healthz", lambda: self._netns_http_ok("http://127.0.0.1:10256/healthz"), 60)

    # --- helpers for tests --------------------------------------------------------------------------------
    def forward(self, host: str, port: int) -> Forward:
        """Forward a free port on the machine's 127.0.0.1 to host:port inside the namespace (a ClusterIP, a pod
        IP, or the node IP and a NodePort)."""
        local = free_port()
        proc = subprocess.Popen(
            self._bridge_args(local, host, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        fwd = Forward(local, f"{host}:{port}", proc)
        self.forwards.append(fwd)

        def listening() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"socat for {fwd.target} exited with {proc.returncode}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", local)) == 0

        wait_for(f"forward 127.0.0.1:{local} -> {fwd.target}", listening, 10, 0.1)
        return fwd

    def forward_service(self, namespace: str, name: str, port: int, *, node_port: bool = False) -> Forward:
        """Forward to a Service's ClusterIP:port, or with `node_port` to the node IP and the NodePort that
        serves `port`."""
        svc = self.api.get("v1", "Service", name, namespace)
        if svc is None:
            raise ClusterError(f"no Service {namespace}/{name}")
        if not node_port:
            return self.forward(svc["spec"]["clusterIP"], port)
        for p in svc["spec"]["ports"]:
            if p["port"] == port and p.get("nodePort"):
                return self.forward(NODE_IP, p["nodePort"])
        raise ClusterError(f"Service {namespace}/{name} has no NodePort for port {port}")

    def node_dir(self, name: str, mode: int = 0o777) -> Path:
        """A directory on the node for hostPath volumes (in the work directory, removed at stop). Not under
        /var/lib or /var/log: the kubelet sees its own directories there (see _start_kubelet)."""
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
        for name in STOP_ORDER:
            if name == "containerd" and name in self.procs:
                step("removing containers", self._remove_containers)
            if name in self.procs:
                step(f"stopping {name}", _stop_process, self.procs.pop(name))
        for name in list(self.procs):
            step(f"stopping {name}", _stop_process, self.procs.pop(name))
        step("killing leftover container processes", self._kill_leftovers)
        step("releasing the image store", self._release_image_store)
        step("removing cgroups", self._remove_cgroups)
        step("unmounting", self._unmount_all)
        if self._netns_created:
            step("deleting the network namespace", run, ["ip", "netns", "delete", self.name])
        step("cleaning machine paths", self._clean_host_paths)
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

    def _remove_containers(self) -> None:
        if self.procs["containerd"].poll() is not None:
            return
        tasks = self.ctr("tasks", "list", "--quiet", timeout=30).stdout.split()
        if tasks:
            self.ctr("tasks", "delete", "--force", *tasks, timeout=60, check=False)
        containers = self.ctr("containers", "list", "--quiet", timeout=30).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, timeout=60, check=False)
            # A synchronous garbage collection (what deleting a lease with --sync runs) removes the containers'
            # snapshot directories now; containerd would do it later, after this cluster is gone, and in the
            # image store they would pile up.
            lease = f"{self.name}-gc"
            self.ctr("leases", "create", "--id", lease, timeout=30)
            self.ctr("leases", "delete", "--sync", lease, timeout=300)

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self._cgroup_dirs():
            if top.is_dir():
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _workdir_pids(self) -> set[int]:
        """Processes whose command line names the work directory: every component (their configs, data and
        sockets live there) and the containerd shims (`-address <workdir>/containerd/containerd.sock`)."""
        marker = str(self.workdir).encode() + b"/"
        mine = {os.getpid()}
        with contextlib.suppress(OSError):
            pid = os.getpid()
            while pid > 1:  # this process's ancestors may name the directory too (--workdir)
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                mine.add(pid)
        pids = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (entry / "cmdline").read_bytes():
                        pids.add(int(entry.name))
        return pids - mine

    def _kill_leftovers(self) -> None:
        """Processes still alive after the components stopped (containers, containerd shims, components of a
        cluster whose owner died): SIGKILL by pid, found by the cluster's cgroups and by the work directory."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = self._cgroup_pids() | self._workdir_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        raise ClusterError(f"processes survive SIGKILL: {sorted(self._cgroup_pids() | self._workdir_pids())}")

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 20
        left: list[Path] = []
        while time.monotonic() < deadline:
            left = []
            for top in self._cgroup_dirs():
                if not top.exists():
                    continue
                for d in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]:
                    try:
                        d.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left.append(d)
            if not left:
                return
            time.sleep(0.3)
        raise ClusterError(f"cgroups still busy: {left[:5]}")

    def _unmount_all(self) -> None:
        prefix = str(self.workdir) + "/"
        for _attempt in range(5):
            points = [p for p in _mount_points() if p.startswith(prefix) or p == str(self.workdir)]
            if not points:
                return
            for point in sorted(set(points), key=lambda p: -p.count("/")):
                if run(["umount", point], check=False, timeout=30).returncode != 0:
                    run(["umount", "--lazy", point], check=False, timeout=30)
        left = [p for p in _mount_points() if p.startswith(prefix)]
        if left:
            raise ClusterError(f"mounts left: {left[:5]}")

    def _clean_host_paths(self) -> None:
        """What the machine's own paths gained only because this cluster ran."""
        # libcni caches each attachment as <network>-<sandbox id>-<interface> (the pod network and containerd's
        # own "cni-loopback"); a sandbox removed by force (no CNI DEL) leaves its files behind.
        sandboxes = self.containerd_dir / "state" / "io.containerd.grpc.v1.cri" / "sandboxes"
        ids = [d.name for d in sandboxes.iterdir()] if sandboxes.is_dir() else []
        for result in CNI_RESULTS.glob("*"):
            if result.name.startswith(f"{self.name}-") or any(f"-{i}-" in result.name for i in ids):
                result.unlink()
        # A shim killed by SIGKILL leaves its socket, named sha256(<containerd address>/<namespace>/<sandbox id>)
        # (containerd 1.6 runtime/v2/shim.SocketAddress).
        for sandbox in ids:
            digest = hashlib.sha256(f"{self.containerd_sock}/k8s.io/{sandbox}".encode()).hexdigest()
            (SHIM_SOCKETS / digest).unlink(missing_ok=True)
        if NETNS_DIR.is_dir() and any(NETNS_DIR.glob("mlp-*")):
            return  # another cluster runs: what it shares with this one stays
        netns_empty = NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir())
        if not self._host_state.get("netns_dir_mounted", True) and netns_empty and _is_mount_point(NETNS_DIR):
            run(["umount", str(NETNS_DIR)], check=False)
        for path in HOST_PATHS:
            if self._host_state.get(str(path), True):
                continue
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()  # only when empty: another cluster may have started to use it meanwhile
                else:
                    path.unlink(missing_ok=True)


def default_image_store() -> Path:
    """Where imported images stay between clusters: $ML_PLATFORM_IMAGE_STORE, else a directory per containerd
    version under the user's cache (the platform image takes about 16 GB there: content plus unpacked layers)."""
    if os.environ.get("ML_PLATFORM_IMAGE_STORE"):
        return Path(os.environ["ML_PLATFORM_IMAGE_STORE"])
    version = run(["containerd", "--version"]).stdout.split()[2]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ml-platform" / "containerd-store" / f"containerd-{version.replace('~', '_')}"


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
