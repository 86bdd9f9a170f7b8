"""Container images for the real-cluster tier, built on this machine without any registry.

- the sandbox image `localhost/pause:3.10`: an OCI archive written here around the statically linked `pause`
  binary that tests/cluster/toolchain.sh compiles from the Kubernetes sources;
- a base image with Python 3.11: `debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates
  bookworm` from the machine's Debian mirror, then `podman import`;
- the platform's two images, from the project's own Dockerfile with `podman --runtime runc build` FROM that base:
  its `platform` stage (torch, with PyPI as the torch index: download.pytorch.org is not reachable here, so torch
  is PyPI's CUDA build) and its `services` stage (no torch: MLflow, the operator, the launcher).

The podman images are built once per machine and found again by a content key in their tag (see `base_key` and
`image_key`); podman's layer cache keeps the torch layer when only the project's sources change.

    python -m tests.cluster.images base       build or reuse the base image, print its reference
    python -m tests.cluster.images platform   the same for the platform image (and the base it needs)
    python -m tests.cluster.images services   the same for the services image
    python -m tests.cluster.images all        both (the services image first: it is the smaller)

Builds never touch the machine's network configuration: RUN steps use `--network host` (podman's default bridge
would add a bridge and iptables rules to the machine's network namespace).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests import phaselog

ROOT = Path(__file__).resolve().parents[2]
PAUSE_IMAGE = "localhost/pause:3.10"
COREDNS_REPO = "localhost/coredns"
NETWORK_POLICIES_REPO = "localhost/kube-network-policies"
BASE_REPO = "localhost/ml-platform-python-base"
PLATFORM_REPO = "localhost/ml-platform-image"
SERVICES_REPO = "localhost/ml-platform-services-image"
# What the dev stack's manifests name (Pulumi.dev.yaml image and servicesImage, imagePullPolicy IfNotPresent).
PLATFORM_TAG = "ml-platform:dev"
SERVICES_TAG = "ml-platform-services:dev"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Bump when the way an image is built changes in a way its key does not see.
BASE_REV = 1
PLATFORM_REV = 2
# The machine reaches PyPI through a TLS-intercepting proxy whose CA is only in the machine's bundle.
HOST_CA_BUNDLE = Path(os.environ.get("ML_PLATFORM_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
BASE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TORCH_INDEX_URL = "https://pypi.org/simple"


class ImageError(RuntimeError):
    pass


# --- OCI archives written directly (the pause image needs nothing else) -------------------------------------
def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(
    path: Path,
    name: str,
    files: Mapping[str, tuple[bytes, int]],
    entrypoint: Iterable[str],
    *,
    compress: bool = True,
    user: str = "",
) -> Path:
    """Write a one-layer OCI image archive (`ctr images import` reads it) named `name` (the containerd
    `io.containerd.image.name` annotation), holding `files` {path: (content, mode)}; the layer is gzipped unless
    `compress` is false (large static binaries: gzip would cost seconds at every cluster start); `user` is the image's
    USER ("65532": non-root, as a pod under `runAsNonRoot` needs)."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for file_path, (data, mode) in sorted(files.items()):
            _tar_add(layer, file_path.lstrip("/"), data, mode)
    layer_tar = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer_blob = gzip.compress(layer_tar, mtime=0) if compress else layer_tar
    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
    blobs: dict[str, bytes] = {}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "WorkingDir": "/", **({"User": user} if user else {})},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/cluster/images.py write_oci_archive"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _blob(blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [_blob(blobs, layer_blob, layer_type)],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
    with tarfile.open(path, "w") as archive:
        _tar_add(archive, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _tar_add(archive, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            _tar_add(archive, f"blobs/sha256/{digest.split(':', 1)[1]}", data)
    return path


def pause_archive(pause_binary: Path, path: Path) -> Path:
    return write_oci_archive(path, PAUSE_IMAGE, {"/pause": (pause_binary.read_bytes(), 0o755)}, ["/pause"])


def binary_image_name(binary: Path, repo: str) -> str:
    """`repo`:<hash of the binary>: a new build is a new tag, so no pod runs a stale copy."""
    return f"{repo}:{_short_hash([binary.read_bytes()])}"


def binary_archive(binary: Path, name: str, path: Path, *, user: str = "") -> Path:
    """A one-binary image (`/<binary's name>`, its entrypoint), e.g. CoreDNS from tests/cluster/toolchain.sh."""
    target = f"/{binary.name}"
    return write_oci_archive(path, name, {target: (binary.read_bytes(), 0o755)}, [target], compress=False, user=user)


# --- podman -------------------------------------------------------------------------------------------------
def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ImageError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False, timeout=60).returncode == 0


def image_size(ref: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref, timeout=60).stdout.strip())


def debian_mirror() -> str:
    """The first Debian mirror of the machine's apt sources that serves the suite (deb822 or one-line format)."""
    candidates: list[tuple[str, list[str]]] = []
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in stanza.splitlines())
                    if not k.lstrip().startswith("#") and v
                )
                if "deb" in fields.get("types", "").split() and "uris" in fields:
                    candidates.append((fields["uris"].split()[0], fields.get("suites", "").split()))
        elif path.suffix == ".list":
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    candidates.append((parts[1], [parts[2]]))
    for uri, suites in candidates:
        if DEBIAN_SUITE in suites and "security" not in uri:
            return uri
    raise ImageError(f"no Debian mirror for {DEBIAN_SUITE} in /etc/apt/sources.list*: {candidates}")


def _short_hash(parts: Iterable[str | bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def base_key(mirror: str) -> str:
    return _short_hash([f"base-r{BASE_REV}", DEBIAN_SUITE, "minbase", *BASE_PACKAGES, mirror])


def base_image(*, log: Path | None = None) -> str:
    """Build (once per machine) or reuse the Python base image; its podman reference."""
    mirror = debian_mirror()
    ref = f"{BASE_REPO}:{base_key(mirror)}"
    if image_exists(ref):
        return ref
    for tool in ("debootstrap", "podman"):
        if not shutil.which(tool):
            raise ImageError(f"{tool} is not installed: run tests/cluster/toolchain.sh")
    start, epoch = time.monotonic(), time.time()
    work = Path(tempfile.mkdtemp(prefix="ml-platform-base-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            proc = subprocess.run(
                ["nice", "-n", "10", "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 DEBIAN_SUITE, str(rootfs), mirror],
                stdout=out, stderr=subprocess.STDOUT, timeout=1800,
            )  # fmt: skip
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise ImageError(f"debootstrap failed ({proc.returncode}):\n{tail}")
        # Package caches and lists are not part of an image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/cache/debconf"):
            for child in (rootfs / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        with subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE
        ) as tar:
            imported = subprocess.run(
                ["podman", "import", "--change", 'CMD ["/bin/bash"]', "--change", "ENV LANG=C.UTF-8",
                 "-", ref],
                stdin=tar.stdout, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        if tar.returncode != 0 or imported.returncode != 0:
            raise ImageError(f"podman import failed: {imported.stderr[-3000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    phaselog.record("image: python base (debootstrap, podman import)", epoch)
    print(f"images: built {ref} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return ref


# --- the platform image -------------------------------------------------------------------------------------
def dockerfile_sources(dockerfile: Path) -> list[str]:
    """The build-context paths the Dockerfile's COPY/ADD instructions read (those of other stages excluded)."""
    sources: list[str] = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]) or len(args) < 2:
            continue
        sources += args[:-1]
    return sources


def _context_files(root: Path, sources: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for source in sources:
        path = root / source
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(
                p for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
            )  # fmt: skip
        else:
            raise ImageError(f"the Dockerfile copies {source}, which is not in {root}")
    return files


@dataclass(frozen=True)
class Role:
    """One of the platform's images: a stage of the Dockerfile, the podman repository its builds go to, and the
    name the dev stack's manifests use for it."""

    target: str
    repo: str
    tag: str


PLATFORM = Role("platform", PLATFORM_REPO, PLATFORM_TAG)
SERVICES = Role("services", SERVICES_REPO, SERVICES_TAG)
ROLES = {role.target: role for role in (PLATFORM, SERVICES)}


def image_key(root: Path, base_ref: str, target: str = PLATFORM.target) -> str:
    """Content key of an image of the Dockerfile: the stage, the Dockerfile, every file its COPY instructions read
    (pyproject.toml, constraints.txt, trainer/, ... today), the base image's key and the build arguments."""
    dockerfile = root / "Dockerfile"
    parts: list[str | bytes] = [f"{target}-r{PLATFORM_REV}", base_ref, TORCH_INDEX_URL, dockerfile.read_bytes()]
    for path in _context_files(root, dockerfile_sources(dockerfile)):
        parts += [str(path.relative_to(root)), path.read_bytes()]
    return _short_hash(parts)


@dataclass(frozen=True)
class BuildResult:
    ref: str
    built: bool
    seconds: float


def platform_image(root: Path = ROOT, *, log: Path | None = None) -> BuildResult:
    """The platform image (torch: trainer and inference), tagged `ml-platform:dev` in podman."""
    return role_image(PLATFORM, root, log=log)


def services_image(root: Path = ROOT, *, log: Path | None = None) -> BuildResult:
    """The services image (no torch: MLflow, operator, launcher), tagged `ml-platform-services:dev` in podman."""
    return role_image(SERVICES, root, log=log)


def role_image(role: Role, root: Path = ROOT, *, log: Path | None = None) -> BuildResult:
    """Build (once per content key) or reuse the image of the Dockerfile's stage `role.target`; also tagged
    `role.tag` in podman."""
    start = time.monotonic()
    base_ref = base_image(log=log)
    ref = f"{role.repo}:{image_key(root, base_ref, role.target)}"
    built = False
    epoch = time.time()
    if not image_exists(ref):
        if not HOST_CA_BUNDLE.is_file():
            raise ImageError(f"no CA bundle at {HOST_CA_BUNDLE} (set ML_PLATFORM_CA_BUNDLE)")
        args = [
            "nice", "-n", "10", "podman", "--runtime", "runc", "build",
            # docker format: the OCI format drops the Dockerfile's SHELL (bash -o pipefail), as docker would not
            "--format", "docker",
            "--network", "host",
            "--build-arg", f"BASE_IMAGE={base_ref}",
            "--build-arg", f"TORCH_INDEX_URL={TORCH_INDEX_URL}",
            # Debian's pip (the base's venv) trusts /etc/ssl/certs/ca-certificates.crt: the machine's bundle over
            # it, for the RUN steps only. The path exists in the base, so the image keeps its own bundle and gains
            # no mount-point files; the Dockerfile needs no change.
            "-v", f"{HOST_CA_BUNDLE}:{BASE_CA_BUNDLE}:ro",
            "--target", role.target,
            "--layers", "-t", ref, "-f", str(root / "Dockerfile"), str(root),
        ]  # fmt: skip
        out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
        try:
            proc = subprocess.run(args, stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3600)
        finally:
            if out:
                out.close()
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-4000:] if log else proc.stdout.decode(errors="replace")[-4000:]
            raise ImageError(f"podman build failed ({proc.returncode}):\n{tail}")
        built = True
        phaselog.record(f"image: {role.target} (podman build)", epoch)
    podman("tag", ref, role.tag, timeout=60)
    if built:
        _remove_other_tags(role.repo, keep=ref)
    return BuildResult(ref, built, time.monotonic() - start)


def _remove_other_tags(repo: str, keep: str) -> None:
    """Remove older builds of `repo` (8 GB each). Layers the new build shares stay, and so do the build's cached
    intermediate images (`podman image prune` reclaims those; it is not run here because it would remove every
    dangling image on the machine, not only these)."""
    refs = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo, timeout=60).stdout.split()
    for old in refs:
        if old != keep and old.startswith(f"{repo}:"):
            podman("rmi", old, timeout=600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("base", *ROLES, "all"))
    parser.add_argument("--log", type=Path, help="append the build's output here")
    args = parser.parse_args(argv)
    if args.which == "base":
        print(base_image(log=args.log))
        return 0
    for role in (SERVICES, PLATFORM) if args.which == "all" else (ROLES[args.which],):
        result = role_image(role, log=args.log)
        word = "built" if result.built else "reused"
        print(f"images: {word} {result.ref} ({result.seconds:.0f} s), tagged {role.tag}", file=sys.stderr)
        print(result.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
