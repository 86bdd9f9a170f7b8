"""The platform's images per role: build (or reuse) each stage of the Dockerfile as the cluster tier does
(tests/cluster/images.py, podman, torch from PyPI) and print its size, the seconds it took, and its largest
Python packages.

    python -m bench.image_sizes            # a Markdown table for docs/benchmarks.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.cluster import images

SITE_PACKAGES = "opt/venv/lib/python3.11/site-packages"


def largest_packages(ref: str, count: int = 4) -> list[tuple[str, int]]:
    """The biggest directories of the image's site-packages, read from the image mounted read-only (podman image
    mount: no container runs)."""
    root = Path(images.podman("image", "mount", ref, timeout=120).stdout.strip())
    try:
        site = root / SITE_PACKAGES
        sizes = {
            d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
            for d in site.iterdir()
            if d.is_dir() and not d.name.endswith((".dist-info", "__pycache__"))
        }
    finally:
        images.podman("image", "unmount", ref, timeout=120)
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:count]


def main() -> int:
    print("| image (stage) | size | built or reused in | largest packages |")
    print("|---|---|---|---|")
    for role in (images.SERVICES, images.PLATFORM):
        result = images.role_image(role)
        size = images.podman("image", "inspect", "--format", "{{.Size}}", result.ref, timeout=60).stdout.strip()
        largest = ", ".join(f"{name} {bytes_ / 1e9:.2f} GB" for name, bytes_ in largest_packages(result.ref))
        word = "built" if result.built else "reused"
        row = [f"`{role.tag}` ({role.target})", f"{int(size) / 1e9:.2f} GB", f"{word}, {result.seconds:.0f} s", largest]
        print(f"| {' | '.join(row)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
