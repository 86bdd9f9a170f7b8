#!/usr/bin/env bash
# Build the local control plane's binaries from Go modules into a cache directory keyed by their versions,
# or reuse that directory when a previous run completed it. The last line of output is the directory that
# holds the binaries (tests/engine/conftest.py and `make toolchain` read it).
#
#   tests/engine/toolchain.sh            build what is missing, print the directory
#   TOOLS="etcd kube-apiserver" tests/engine/toolchain.sh   build only some tools
#   tests/engine/toolchain.sh --print-dir   print the directory (built or not) and exit
#
# Environment:
#   ML_PLATFORM_TOOLCHAIN_CACHE  parent of the keyed directories
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain)
#   TOOLS                        tools to build (default: all of etcd kube-apiserver kube-controller-manager
#                                kube-scheduler kwok)
#   NICE                         priority prefix for the builds (default "nice -n 19")
#   GOPATH, GOCACHE, GOMODCACHE  as usual; point them at empty directories to measure a cold build
#
# Versions are pinned by the wrapper modules in tests/engine/gomod/*/go.mod (+ go.sum). The key includes the
# Go version and a hash of those files, so bumping a version builds a new directory.
#
# Not built here: the pulumi CLI, pulumi-language-python and pulumi-resource-kubernetes. The Go module proxy
# this project can reach refuses github.com/pulumi/pulumi/pkg/v3 at v3.261.0 and newer (3.272.0 included),
# every version of github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 and every version of
# github.com/pulumi/pulumi-kubernetes/provider/v4 (HTTP 403); see docs/engine.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GOMOD="$HERE/gomod"

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
ALL_TOOLS="etcd kube-apiserver kube-controller-manager kube-scheduler kwok"
TOOLS="${TOOLS:-$ALL_TOOLS}"
NICE="${NICE:-nice -n 19}"

command -v go >/dev/null || { echo "toolchain: go is not on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
# Bump BUILD_REV when the build flags below change; go.mod/go.sum changes change the hash by themselves.
BUILD_REV=1
SRC_HASH="$(cat "$GOMOD"/*/go.mod "$GOMOD"/*/go.sum | sha256sum | cut -c1-12)"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_${GO_VERSION}_r${BUILD_REV}_${SRC_HASH}"
CACHE="${ML_PLATFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain}"
DIR="$CACHE/$KEY"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$DIR"
    exit 0
fi

mkdir -p "$DIR"
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
export CGO_ENABLED=0

k8s_ldflags() {
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    local x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "-s -w$x"
}

build() {  # build TOOL MODULE_DIR PACKAGE LDFLAGS
    local tool="$1" mod="$2" pkg="$3" ldflags="$4"
    if [[ -x "$DIR/$tool" ]]; then
        echo "toolchain: $tool: cached" >&2
        return 0
    fi
    echo "toolchain: $tool: building $pkg" >&2
    local start end
    start=$(date +%s)
    # Build beside the target and rename: a binary in the directory is always complete, even if two runs race.
    (cd "$GOMOD/$mod" && $NICE go build -ldflags "$ldflags" -o "$DIR/.$tool.$$.tmp" "$pkg") >&2
    mv "$DIR/.$tool.$$.tmp" "$DIR/$tool"
    end=$(date +%s)
    echo "$tool $((end - start))" >> "$DIR/build-seconds.txt"
    echo "toolchain: $tool: built in $((end - start)) s" >&2
}

for tool in $TOOLS; do
    case "$tool" in
        etcd)
            build etcd etcd go.etcd.io/etcd/server/v3 \
                "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" ;;
        kube-apiserver|kube-controller-manager|kube-scheduler)
            build "$tool" kubernetes "k8s.io/kubernetes/cmd/$tool" "$(k8s_ldflags)" ;;
        kwok)
            build kwok kwok sigs.k8s.io/kwok/cmd/kwok \
                "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" ;;
        *)
            echo "toolchain: unknown tool $tool (known: $ALL_TOOLS)" >&2
            exit 2 ;;
    esac
done

# kwok's standalone controller simulates nothing without Stage objects: take the node and pod stages that ship
# in the kwok module (kustomize/stage/...) from the module cache, beside the binary.
if [[ -x "$DIR/kwok" && ! -s "$DIR/kwok-stages.yaml" ]]; then
    KWOK_SRC="$(cd "$GOMOD/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    if [[ -z "$KWOK_SRC" || ! -d "$KWOK_SRC/kustomize/stage" ]]; then
        (cd "$GOMOD/kwok" && go mod download sigs.k8s.io/kwok) >&2
        KWOK_SRC="$(cd "$GOMOD/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    fi
    {
        for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
                 pod/general/pod-create.yaml pod/general/pod-init-container-running.yaml \
                 pod/general/pod-init-container-completed.yaml pod/general/pod-ready.yaml \
                 pod/general/pod-complete.yaml pod/general/pod-delete.yaml; do
            echo "---"
            cat "$KWOK_SRC/kustomize/stage/$f"
        done
    } > "$DIR/.kwok-stages.yaml.$$.tmp"
    mv "$DIR/.kwok-stages.yaml.$$.tmp" "$DIR/kwok-stages.yaml"
fi

cat > "$DIR/versions.txt" <<EOF
kubernetes $K8S_VERSION
etcd $ETCD_VERSION
kwok $KWOK_VERSION
go $GO_VERSION
EOF
echo "$DIR"
