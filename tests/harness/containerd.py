"""The real node's container runtime: containerd (with runc and a CNI bridge of the cluster's own) in the cluster's
network namespace, its root in the machine's image store when no other cluster holds it, images imported into it
(never pulled), and its containers removed before it stops."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests import phaselog
from tests.cluster import images
from tests.harness.hostns import POD_CIDR
from tests.harness.procs import ClusterError, Processes, run

CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
IMAGES_RECORD = "ml-platform-images.json"


def cri_name(ref: str) -> str:
    """The name the CRI looks an image up by (Docker's normalization: `ml-platform:dev` is
    `docker.io/library/ml-platform:dev`)."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


class Containerd:
    """containerd of the cluster `name`: state under `workdir/containerd`, root there too or in `image_store`."""

    def __init__(self, name: str, workdir: Path, procs: Processes, image_store: Path | None) -> None:
        self.name = name
        self.workdir = workdir
        self.procs = procs
        self.image_store = image_store
        self.dir = workdir / "containerd"
        self.sock = self.dir / "containerd.sock"
        self.root = self.dir / "root"
        self._store_lock: int | None = None

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
        self.root = self.image_store / "root"
        # What a cluster killed without stopping left in the CRI's own directories (its containers are deleted
        # from containerd's metadata once containerd is up, before the kubelet starts).
        cri = self.root / "io.containerd.grpc.v1.cri"
        for kind in ("sandboxes", "containers"):
            if (cri / kind).is_dir():
                for d in (cri / kind).iterdir():
                    shutil.rmtree(d, ignore_errors=True)

    def release_image_store(self) -> None:
        if self._store_lock is not None:
            cri = self.root / "io.containerd.grpc.v1.cri"
            for kind in ("sandboxes", "containers"):
                if (cri / kind).is_dir():
                    for d in (cri / kind).iterdir():
                        shutil.rmtree(d, ignore_errors=True)
            os.close(self._store_lock)
            self._store_lock = None

    def start(self) -> None:
        self._acquire_image_store()
        root, state = self.root, self.dir / "state"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir / "opt"}"

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
        self.procs.spawn("containerd", ["containerd", "--config", str(conf)])
        self.procs.eventually(
            "containerd",
            lambda: self.sock.exists() and self.ctr("version", check=False).returncode == 0,
            60,
        )
        if self._store_lock is not None:
            self.remove_containers()

    def ctr(self, *args: str, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args],
                   timeout=timeout, check=check, **kw)  # fmt: skip

    def import_oci_archive(self, path: Path) -> None:
        self.ctr("images", "import", str(path), timeout=600)

    def import_podman_image(self, ref: str, names: Sequence[str] = ()) -> float:
        """`podman save REF | ctr images import -` unless containerd's root (the image store) already holds that
        very image (same podman image ID), then tag it as each of `names`; seconds taken. In the image store,
        older images of the same repository go."""
        start = time.monotonic()
        image_id = images.podman("image", "inspect", "--format", "{{.Id}}", ref, timeout=60).stdout.strip()
        record_path = self.root / IMAGES_RECORD
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
        # podman save writes a whole temporary copy of the image (image_copy_tmp_dir, /var/tmp unless TMPDIR) before
        # it streams: on a nearly full disk it stalls there, so a failure says how much room that directory had.
        tmp = os.environ.get("TMPDIR") or "/var/tmp"
        with subprocess.Popen(["podman", "save", "--format", "docker-archive", ref], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as save:  # fmt: skip
            try:
                imported = subprocess.run(
                    ["ctr", "--address", str(self.sock), "--namespace", "k8s.io", "images", "import", "-"],
                    stdin=save.stdout, capture_output=True, text=True, timeout=1800,
                )  # fmt: skip
            except subprocess.TimeoutExpired as err:
                save.kill()
                free = shutil.disk_usage(tmp).free / 2**30
                raise ClusterError(f"importing {ref} took over {err.timeout:.0f} s ({tmp} has {free:.1f} GiB free; "
                                   "podman save needs room for a copy of the image there)") from None  # fmt: skip
            finally:
                # ctr is done reading: podman must not block on a pipe nobody reads (nor this on its stderr).
                if save.stdout:
                    save.stdout.close()
            try:
                _, err_bytes = save.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                save.kill()
                _, err_bytes = save.communicate()
            save_err = (err_bytes or b"").decode(errors="replace")
        if save.returncode != 0 or imported.returncode != 0:
            free = shutil.disk_usage(tmp).free / 2**30
            raise ClusterError(
                f"importing {ref} failed ({tmp} has {free:.1f} GiB free): podman save: {save_err[-2000:]} "
                f"ctr: {imported.stderr[-2000:]}"
            )

    def remove_containers(self) -> None:
        if not self.procs.running("containerd"):
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


def default_image_store() -> Path:
    """Where imported images stay between clusters: $ML_PLATFORM_IMAGE_STORE, else a directory per containerd
    version under the user's cache (the platform image takes about 16 GB there: content plus unpacked layers)."""
    if os.environ.get("ML_PLATFORM_IMAGE_STORE"):
        return Path(os.environ["ML_PLATFORM_IMAGE_STORE"])
    version = run(["containerd", "--version"]).stdout.split()[2]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ml-platform" / "containerd-store" / f"containerd-{version.replace('~', '_')}"
