#!/usr/bin/env bash
# Everything `make test` needs before pytest, in two tracks that run side by side (the machine has 2 cores, and
# most of the second track waits on the network or the disk, not the CPU):
#   builds     (this shell)   the Go toolchains: tests/engine/toolchain.sh (control plane, node binaries, kwok,
#                             the Pulumi engine), tests/toolchain/kueue.sh (Kueue's manager, after the engine's:
#                             it reuses the k8s.io packages that build compiled), tests/observability/toolchain.sh,
#                             tests/cluster/toolchain.sh
#                             (CoreDNS, pause; after the Debian packages it may need)
#   packages   (background)   the Debian packages (tests/cluster/toolchain.sh --packages), the virtualenvs
#                             (make install), then the container images (python -m tests.cluster.images platform:
#                             the Python base and the platform image; the cluster tier's fixture finds them again)
# Each tool is cached as before, so a warm run only checks. Writes the toolchain directories as shell assignments
# to the file named by $1 (make test sources it); the packages track's output is printed when it ends.
#
#   bash tests/toolchain/setup.sh build/test-env.sh
#
# Environment: MAKE (default make), ML_PLATFORM_PHASE_LOG (see tests/toolchain/lib.sh), SKIP_IMAGES=1 (leave the
# images to the cluster tier's fixture, e.g. on a machine without root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ENV_FILE="${1:?usage: setup.sh ENV_FILE}"
MAKE="${MAKE:-make}"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/ml-platform-setup.XXXXXX")"
trap 'rm -rf "$STATE"' EXIT

now() { date +%s.%N | cut -c1-14; }
phase() {  # phase NAME START
    [[ -z "${ML_PLATFORM_PHASE_LOG:-}" ]] || echo "$1 $2 $(now)" >> "$ML_PLATFORM_PHASE_LOG"
}

packages_track() {
    local start
    start="$(now)"
    if [[ "$(id -u)" == 0 ]]; then
        bash tests/cluster/toolchain.sh --packages
    else
        SKIP_APT=1 bash tests/cluster/toolchain.sh --packages
    fi
    touch "$STATE/packages.done"
    start="$(now)"
    "$MAKE" --no-print-directory install
    phase "virtualenvs (make install: .venv, .venv-checkov)" "$start"
    if [[ "${SKIP_IMAGES:-}" == 1 || "$(id -u)" != 0 ]]; then
        echo "setup: images left to the cluster tier's fixture (SKIP_IMAGES=1 or not root)"
        return 0
    fi
    # A failed image build does not stop the setup: the cluster tier's fixture tries again and fails with the
    # build's output.
    if ! .venv/bin/python -m tests.cluster.images all; then
        echo "setup: the platform images did not build; the cluster tier will try again"
    fi
}

packages_track > "$STATE/packages.log" 2>&1 &
packages_pid=$!
# If this shell stops early, so does the packages track, with everything it started.
killtree() {
    local child
    for child in $(pgrep -P "$1" || true); do killtree "$child"; done
    kill "$1" 2>/dev/null || true
}
trap 'killtree "$packages_pid"; rm -rf "$STATE"' EXIT

engine="$(bash tests/engine/toolchain.sh | tail -n 1)"
kueue="$(bash tests/toolchain/kueue.sh | tail -n 1)"
obs="$(bash tests/observability/toolchain.sh | tail -n 1)"
# The pause binary is compiled with gcc, one of the Debian packages: wait until the packages track has them.
while [[ ! -e "$STATE/packages.done" ]] && kill -0 "$packages_pid" 2>/dev/null; do
    sleep 1
done
node="$(SKIP_APT=1 bash tests/cluster/toolchain.sh | tail -n 1)"

rc=0
wait "$packages_pid" || rc=$?
echo "setup: packages track (Debian packages, virtualenvs, images):" >&2
cat "$STATE/packages.log" >&2
if (( rc != 0 )); then
    echo "setup: the packages track failed (exit code $rc); see its output above" >&2
    exit "$rc"
fi
trap 'rm -rf "$STATE"' EXIT
mkdir -p "$(dirname "$ENV_FILE")"
cat > "$ENV_FILE" <<ENV
ML_PLATFORM_TOOLCHAIN='$engine'
ML_PLATFORM_CLUSTER_TOOLCHAIN='$node'
ML_PLATFORM_OBS_TOOLCHAIN='$obs'
ML_PLATFORM_KUEUE_TOOLCHAIN='$kueue'
ENV
