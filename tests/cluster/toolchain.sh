#!/usr/bin/env bash
# Build (or reuse) what the real-cluster tier needs beyond the engine tier's control plane, and install the
# Debian packages it runs on. The last line of output is the directory that holds the binaries
# (tests/cluster/conftest.py and `make cluster-real` read it).
#
#   tests/cluster/toolchain.sh              install missing packages, build what is missing, print the directory
#   tests/cluster/toolchain.sh --print-dir  print the directory (built or not) and exit
#   tests/cluster/toolchain.sh --packages   install the missing Debian packages and exit
#
# Built from Go modules (wrapper modules pinned by their go.mod + go.sum):
#   kubelet, kube-proxy, kubectl   k8s.io/kubernetes v1.35.4, built by tests/engine/toolchain.sh from its module
#                                  tests/engine/gomod/kubernetes together with the control plane (one module graph,
#                                  one `go build`), linked here
#   coredns                        github.com/coredns/coredns v1.14.7 (gomod/coredns); runs as a pod, from an image
#                                  the cluster writes itself (tests/cluster/images.py coredns_archive)
#   kube-network-policies          sigs.k8s.io/kube-network-policies v0.8.0 (gomod/kube-network-policies), the
#                                  NetworkPolicy enforcer kind ships, with k8s.io raised to v0.35.4 (shared compiled
#                                  packages) and one patch: its packets reach the userspace queue through the
#                                  xtables NFQUEUE target, as this machine's kernel lacks nft's queue expression
#                                  (gomod/kube-network-policies/nfqueue-target.patch; docs/cluster.md)
#   cert-manager-{controller,webhook,cainjector}, traefik
#                                  github.com/cert-manager/cert-manager v1.21.2 and github.com/traefik/traefik/v3
#                                  v3.7.13 in one module graph (gomod/ingress-tls, k8s.io v0.36.2; its README says
#                                  what is copied or trimmed and why), one `go build`; the e2e runs them as pods
#   pause                          build/pause/linux/pause.c of the k8s.io/kubernetes module, gcc -static
# Debian packages (apt-get, only when missing): containerd, runc, containernetworking-plugins, iptables,
# conntrack, socat, debootstrap, podman, uidmap, gcc + libc6-dev (for pause), patch, nftables (`nft`: the tests
# read the enforcer's table).
# The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) is tests/engine/toolchain.sh's.
#
# Environment:
#   ML_PLATFORM_TOOLCHAIN_CACHE  parent of the keyed directories, shared with tests/engine/toolchain.sh
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain)
#   NICE                         priority prefix for the builds (default "nice -n 10")
#   SKIP_APT=1                   do not install Debian packages (fail later if they are missing)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GOMOD="$HERE/gomod"

K8S_VERSION=v1.35.4
COREDNS_VERSION=v1.14.7
KNP_VERSION=v0.8.0
CERT_MANAGER_VERSION=v1.21.2  # gomod/ingress-tls/go.mod
TRAEFIK_VERSION=v3.7.13
PAUSE_VERSION=3.10
NICE="${NICE:-nice -n 10}"
APT_PACKAGES="containerd runc containernetworking-plugins iptables conntrack socat debootstrap podman uidmap gcc
libc6-dev patch nftables"

command -v go >/dev/null || { echo "cluster toolchain: go is not on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
# Bump BUILD_REV when the build flags below change; go.mod/go.sum changes change the hash by themselves.
BUILD_REV=2
K8S_MOD="$HERE/../engine/gomod/kubernetes"
SRC_HASH="$( (cat "$GOMOD"/*/go.mod "$GOMOD"/*/go.sum "$GOMOD"/*/*.patch "$K8S_MOD/go.mod" "$K8S_MOD/go.sum"
    find "$GOMOD/ingress-tls" -path "$GOMOD/ingress-tls/build" -prune -o -type f ! -name "*.md" -print | LC_ALL=C sort |
        xargs cat
    echo "pause-$PAUSE_VERSION") |
    sha256sum | cut -c1-12)"
KEY="cluster_k8s-${K8S_VERSION}_coredns-${COREDNS_VERSION}_${GO_VERSION}_r${BUILD_REV}_${SRC_HASH}"
CACHE="${ML_PLATFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain}"
DIR="$CACHE/$KEY"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$DIR"
    exit 0
fi

# --- Debian packages ----------------------------------------------------------------------------------------
missing=()
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    if [[ "${SKIP_APT:-}" == 1 ]]; then
        echo "cluster toolchain: missing Debian packages: ${missing[*]} (SKIP_APT=1: not installing)" >&2
    elif [[ "$(id -u)" != 0 ]]; then
        echo "cluster toolchain: missing Debian packages: ${missing[*]}; install them as root" >&2
        exit 1
    else
        echo "cluster toolchain: installing ${missing[*]}" >&2
        apt_start="$(date +%s.%N | cut -c1-14)"
        # Services stay stopped: the cluster starts its own containerd in its own network namespace.
        timeout 600 apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
        [[ -z "${ML_PLATFORM_PHASE_LOG:-}" ]] ||
            echo "Debian packages (${#missing[@]}) $apt_start $(date +%s.%N | cut -c1-14)" >> "$ML_PLATFORM_PHASE_LOG"
    fi
fi

if [[ "${1:-}" == "--packages" ]]; then
    exit 0
fi

# --- Go-built binaries --------------------------------------------------------------------------------------
LABEL="cluster toolchain"
source "$HERE/../toolchain/lib.sh"

record() {  # record TOOL START [PHASE]: TOOL's build time, in build-seconds.txt and as PHASE (default TOOL)
    local secs; secs="$(awk -v a="$(tc_now)" -v b="$2" 'BEGIN { printf "%d", a - b }')"
    echo "$1 $secs" >> "$DIR/build-seconds.txt"
    tc_phase "${3:-$1}" "$2"
    tc_log "$1: built in $secs s"
}

build() {  # build TOOL MODULE PACKAGE LDFLAGS
    tc_build "$GOMOD/$2" "$4" "" "$1=$3"
}

NODE_K8S_TOOLS="kubelet kube-proxy kubectl"
need=()
for tool in $NODE_K8S_TOOLS; do
    [[ -x "$DIR/$tool" ]] || need+=("$tool")
done
if (( ${#need[@]} )); then
    # Built (or found) in the engine toolchain's keyed directory, with the control plane; linked here.
    engine_dir="$(TOOLS="${need[*]}" NICE="$NICE" bash "$HERE/../engine/toolchain.sh" | tail -n 1)"
    for tool in "${need[@]}"; do
        ln -f "$engine_dir/$tool" "$DIR/.$tool.$$.tmp" 2>/dev/null || cp "$engine_dir/$tool" "$DIR/.$tool.$$.tmp"
        mv "$DIR/.$tool.$$.tmp" "$DIR/$tool"
    done
else
    tc_log "$NODE_K8S_TOOLS: cached"
fi
build coredns coredns github.com/coredns/coredns \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"

# kube-network-policies from a patched copy of its module source: a build module file (go.mod plus a replace to
# the copy) beside the wrapper's own, which stays as `go mod tidy` leaves it.
if [[ -x "$DIR/kube-network-policies" ]]; then
    tc_log "kube-network-policies: cached"
else
    start="$(tc_now)"
    knp_mod="$GOMOD/kube-network-policies"
    src_dir="$DIR/.knp-src.$$"
    rm -rf "$src_dir" && mkdir -p "$src_dir"
    (cd "$knp_mod" && go mod download sigs.k8s.io/kube-network-policies) >&2
    knp_src="$(cd "$knp_mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kube-network-policies)"
    cp -r "$knp_src" "$src_dir/src" && chmod -R u+w "$src_dir/src"
    patch -s -d "$src_dir/src" -p1 < "$knp_mod/nfqueue-target.patch"
    cp "$knp_mod/go.mod" "$src_dir/go.build.mod" && cp "$knp_mod/go.sum" "$src_dir/go.build.sum"
    echo "replace sigs.k8s.io/kube-network-policies $KNP_VERSION => $src_dir/src" >> "$src_dir/go.build.mod"
    (cd "$knp_mod" && $NICE go build -modfile "$src_dir/go.build.mod" -ldflags "-s -w" \
        -o "$src_dir/kube-network-policies" sigs.k8s.io/kube-network-policies/cmd) >&2
    mv "$src_dir/kube-network-policies" "$DIR/kube-network-policies"
    rm -rf "$src_dir"
    record kube-network-policies "$start" "go build: kube-network-policies"
fi

# cert-manager and Traefik: one module graph, one `go build` (gomod/ingress-tls/README.md).
INGRESS_TLS_TOOLS="cert-manager-controller cert-manager-webhook cert-manager-cainjector traefik"
need=()
for tool in $INGRESS_TLS_TOOLS; do
    [[ -x "$DIR/$tool" ]] || need+=("$tool")
done
[[ -f "$DIR/cert-manager-chart/Chart.yaml" ]] || need+=(cert-manager-chart)
if (( ${#need[@]} )); then
    start="$(tc_now)"
    tls_mod="$GOMOD/ingress-tls"
    out="$DIR/.ingress-tls.$$"
    rm -rf "$out" && mkdir -p "$out"
    bash "$tls_mod/prepare.sh" >&2
    (cd "$tls_mod" && CGO_ENABLED=0 $NICE go build -trimpath -o "$out/" -ldflags "-s -w
        -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION
        -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
        ./controller ./webhook ./cainjector github.com/traefik/traefik/v3/cmd/traefik) >&2
    for component in controller webhook cainjector; do
        mv "$out/$component" "$DIR/cert-manager-$component"
    done
    mv "$out/traefik" "$DIR/traefik"
    rm -rf "$out"
    # cert-manager's chart, as its module ships it (the stack's tlsCertManagerChart on the cluster tier).
    chart="$(cd "$tls_mod" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)/deploy/charts/cert-manager"
    rm -rf "$DIR/cert-manager-chart" "$DIR/.cert-manager-chart.$$"
    cp -r "$chart" "$DIR/.cert-manager-chart.$$" && chmod -R u+w "$DIR/.cert-manager-chart.$$"
    mv "$DIR/.cert-manager-chart.$$" "$DIR/cert-manager-chart"
    record cert-manager+traefik "$start" "go build: cert-manager + traefik"
else
    tc_log "$INGRESS_TLS_TOOLS: cached"
fi

# The sandbox ("pause") container's binary, from the Kubernetes module's own source; the cluster packs it into
# the image localhost/pause:$PAUSE_VERSION at start (tests/cluster/realcluster.py).
if [[ -x "$DIR/pause" ]]; then
    echo "cluster toolchain: pause: cached" >&2
else
    start="$(tc_now)"
    k8s_src="$(cd "$K8S_MOD" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
    if [[ -z "$k8s_src" || ! -f "$k8s_src/build/pause/linux/pause.c" ]]; then
        (cd "$K8S_MOD" && go mod download k8s.io/kubernetes) >&2
        k8s_src="$(cd "$K8S_MOD" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
    fi
    gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-ml-platform" \
        -o "$DIR/.pause.$$.tmp" "$k8s_src/build/pause/linux/pause.c"
    strip "$DIR/.pause.$$.tmp"
    mv "$DIR/.pause.$$.tmp" "$DIR/pause"
    record pause "$start"
fi

cat > "$DIR/versions.txt" <<EOF
kubernetes $K8S_VERSION (kubelet, kube-proxy, kubectl)
coredns $COREDNS_VERSION
kube-network-policies $KNP_VERSION (+ nfqueue-target.patch)
cert-manager $CERT_MANAGER_VERSION (controller, webhook, cainjector, chart), traefik $TRAEFIK_VERSION
pause $PAUSE_VERSION
go $GO_VERSION
EOF
echo "$DIR"
