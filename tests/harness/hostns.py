"""The real cluster's footprint on the machine: a network namespace of its own (the node's address on a veth whose
peer has no address: no packet leaves the machine), a cgroup in every hierarchy (the kubelet's cgroupRoot), mounts
under its work directory; and the teardown of all of it: processes found by cgroup and by work directory killed,
cgroups removed, mounts unmounted, what the machine's own paths gained only because the cluster ran removed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.harness.procs import ClusterError, run

NODE_IP = "10.200.0.1"
NODE_PREFIX = 24
POD_CIDR = "10.244.0.0/24"
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
CNI_RESULTS = Path("/var/lib/cni/results")
# Paths of the machine that a cluster creates when they are missing (`ip netns`, libcni's result cache, the shims'
# sockets, iptables' lock); removed at stop when they were missing before, are empty again and no other cluster
# runs.
SHIM_SOCKETS = Path("/run/containerd/s")
HOST_PATHS = (Path("/run/xtables.lock"), CNI_RESULTS, CNI_RESULTS.parent, SHIM_SOCKETS, SHIM_SOCKETS.parent,
              NETNS_DIR)  # fmt: skip


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(point.encode().decode("unicode_escape"))
    return points


def is_mount_point(path: Path) -> bool:
    return str(path) in mount_points()


class HostNs:
    """The network namespace, cgroups and mounts of the cluster `name` whose files are in `workdir`."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.netns_path = NETNS_DIR / name
        self.cgroup_root = f"/{name}"
        self.created = False

    def in_netns(self, args: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", *args]

    def netns_run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(self.in_netns(args), **kw)

    def http_ok(self, url: str) -> bool:
        """Whether `url` answers 200 from inside the namespace."""
        probe = "import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=3).status != 200)"
        return self.netns_run([sys.executable, "-c", probe, url], timeout=15, check=False).returncode == 0

    @staticmethod
    def host_state() -> dict[str, bool]:
        """Which of the machine's paths a cluster may create exist now (and whether /run/netns is a mount point):
        what `clean_host_paths` leaves."""
        state = {str(p): p.exists() for p in HOST_PATHS}
        state["netns_dir_mounted"] = is_mount_point(NETNS_DIR)
        return state

    def make_netns(self) -> None:
        run(["ip", "netns", "add", self.name])
        self.created = True
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

    def cgroup_dirs(self) -> list[Path]:
        """The cluster's cgroup in every mounted hierarchy (v1 controllers, name=systemd, the unified one)."""
        return [h / self.name for h in sorted(CGROUP_FS.iterdir()) if h.is_dir() and not h.is_symlink()]

    def make_cgroups(self) -> None:
        for d in self.cgroup_dirs():
            d.mkdir(exist_ok=True)
            if d.parent.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((d.parent / f).read_text())

    def cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.cgroup_dirs():
            if top.is_dir():
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
        return pids

    def workdir_pids(self) -> set[int]:
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

    def kill_leftovers(self) -> None:
        """Processes still alive after the components stopped (containers, containerd shims, components of a
        cluster whose owner died): SIGKILL by pid, found by the cluster's cgroups and by the work directory."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = self.cgroup_pids() | self.workdir_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        raise ClusterError(f"processes survive SIGKILL: {sorted(self.cgroup_pids() | self.workdir_pids())}")

    def remove_cgroups(self) -> None:
        deadline = time.monotonic() + 20
        left: list[Path] = []
        while time.monotonic() < deadline:
            left = []
            for top in self.cgroup_dirs():
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

    def unmount_all(self) -> None:
        prefix = str(self.workdir) + "/"
        for _attempt in range(5):
            points = [p for p in mount_points() if p.startswith(prefix) or p == str(self.workdir)]
            if not points:
                return
            for point in sorted(set(points), key=lambda p: -p.count("/")):
                if run(["umount", point], check=False, timeout=30).returncode != 0:
                    run(["umount", "--lazy", point], check=False, timeout=30)
        left = [p for p in mount_points() if p.startswith(prefix)]
        if left:
            raise ClusterError(f"mounts left: {left[:5]}")

    def clean_host_paths(self, host_state: dict[str, bool], containerd_dir: Path, containerd_sock: Path) -> None:
        """What the machine's own paths gained only because this cluster ran."""
        # libcni caches each attachment as <network>-<sandbox id>-<interface> (the pod network and containerd's
        # own "cni-loopback"); a sandbox removed by force (no CNI DEL) leaves its files behind.
        sandboxes = containerd_dir / "state" / "io.containerd.grpc.v1.cri" / "sandboxes"
        ids = [d.name for d in sandboxes.iterdir()] if sandboxes.is_dir() else []
        for result in CNI_RESULTS.glob("*"):
            if result.name.startswith(f"{self.name}-") or any(f"-{i}-" in result.name for i in ids):
                result.unlink()
        # A shim killed by SIGKILL leaves its socket, named sha256(<containerd address>/<namespace>/<sandbox id>)
        # (containerd 1.6 runtime/v2/shim.SocketAddress).
        for sandbox in ids:
            digest = hashlib.sha256(f"{containerd_sock}/k8s.io/{sandbox}".encode()).hexdigest()
            (SHIM_SOCKETS / digest).unlink(missing_ok=True)
        if NETNS_DIR.is_dir() and any(NETNS_DIR.glob("mlp-*")):
            return  # another cluster runs: what it shares with this one stays
        netns_empty = NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir())
        if not host_state.get("netns_dir_mounted", True) and netns_empty and is_mount_point(NETNS_DIR):
            run(["umount", str(NETNS_DIR)], check=False)
        for path in HOST_PATHS:
            if host_state.get(str(path), True):
                continue
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()  # only when empty: another cluster may have started to use it meanwhile
                else:
                    path.unlink(missing_ok=True)
