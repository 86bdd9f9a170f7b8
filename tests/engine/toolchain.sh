#!/usr/bin/env bash
# Build the engine tier's binaries from Go modules into a cache directory keyed by their versions, or reuse that
# directory when a previous run completed it. The last line of output is the directory that holds the binaries
# (tests/engine/conftest.py and `make toolchain` read it).
#
#   tests/engine/toolchain.sh            build what is missing, print the directory
#   TOOLS="etcd kube-apiserver" tests/engine/toolchain.sh   build only some tools
#   tests/engine/toolchain.sh --print-dir   print the directory (built or not) and exit
#
# Tools: the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) and the Pulumi
# engine (pulumi, pulumi-language-python + pulumi-language-python-exec, pulumi-resource-kubernetes).
# The Go module proxy serves the pulumi CLI (through the wrapper module gomod/pulumi) but refuses the modules of
# the language host and of the kubernetes provider; their sources come from
# ../shared/vendor/pulumi-engine/pulumi-engine-src.tar.xz (checked against VENDOR_SHA256 below). Without that
# file (a user's machine) the two are skipped with a message, and the engine tests use the pulumi CLI and
# plugins installed on the machine instead (tests/engine/conftest.py says which).
#
# Environment:
#   ML_PLATFORM_TOOLCHAIN_CACHE  parent of the keyed directories
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain)
#   TOOLS                        tools to build (default: all of ALL_TOOLS below)
#   PULUMI_ENGINE_SRC            the vendored source tarball (default: ../shared/vendor/pulumi-engine/... beside
#                                the checkout)
#   NICE                         priority prefix for the builds (default "nice -n 19")
#   GOPATH, GOCACHE, GOMODCACHE  as usual; point them at empty directories to measure a cold build
#
# Versions are pinned by the wrapper modules in tests/engine/gomod/*/go.mod (+ go.sum) and by the vendored
# tarball's hash. The key includes the Go version and a hash of those, so bumping a version builds a new
# directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GOMOD="$HERE/gomod"

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
# The CLI and language host must be one release; the provider must match the Python SDK pulumi-kubernetes pin
# in infra/requirements.txt (the SDK asks the engine for exactly its own version of the plugin).
PULUMI_VERSION=v3.259.0
PULUMI_K8S_VERSION=4.32.0
VENDOR_SHA256=06067d8a49ddaaf028fc73d01b7d43fa9532a473f4ae0c6e217485a48ce82f95
# The Kubernetes binaries (control plane and node) come from one module graph (gomod/kubernetes) in one
# `go build`: the packages they share compile once and the links run side by side.
K8S_TOOLS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
ALL_TOOLS="etcd $K8S_TOOLS kwok pulumi pulumi-language-python pulumi-resource-kubernetes"
TOOLS="${TOOLS:-$ALL_TOOLS}"
PULUMI_ENGINE_SRC="${PULUMI_ENGINE_SRC:-$HERE/../../../shared/vendor/pulumi-engine/pulumi-engine-src.tar.xz}"
NICE="${NICE:-nice -n 19}"

command -v go >/dev/null || { echo "toolchain: go is not on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
# Bump BUILD_REV when the build flags below change; go.mod/go.sum changes change the hash by themselves.
BUILD_REV=3
SRC_HASH="$( (cat "$GOMOD"/*/go.mod "$GOMOD"/*/go.sum; echo "$VENDOR_SHA256") | sha256sum | cut -c1-12)"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_pulumi-${PULUMI_VERSION}_k8sprov-${PULUMI_K8S_VERSION}"
KEY+="_${GO_VERSION}_r${BUILD_REV}_${SRC_HASH}"
CACHE="${ML_PLATFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain}"
DIR="$CACHE/$KEY"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$DIR"
    exit 0
fi

LABEL=toolchain
source "$HERE/../toolchain/lib.sh"

build() {  # build TOOL MODULE_DIR PACKAGE LDFLAGS  (MODULE_DIR: under gomod/, or an absolute path)
    local mod="$2"
    [[ "$mod" == /* ]] || mod="$GOMOD/$mod"
    tc_build "$mod" "$4" "" "$1=$3"
}

# The vendored sources, unpacked once per tarball hash beside the keyed directories (the provider's schema
# generator writes into its tree, so it cannot build from a read-only place).
vendor_src() {
    local src="$CACHE/src-$VENDOR_SHA256"
    if [[ ! -f "$src/.complete" ]]; then
        [[ -f "$PULUMI_ENGINE_SRC" ]] || return 1
        local got
        got="$(sha256sum "$PULUMI_ENGINE_SRC" | cut -d' ' -f1)"
        if [[ "$got" != "$VENDOR_SHA256" ]]; then
            echo "toolchain: $PULUMI_ENGINE_SRC has sha256 $got, expected $VENDOR_SHA256" >&2
            return 2
        fi
        local start; start="$(tc_now)"
        rm -rf "$src" && mkdir -p "$src"
        tar -xJf "$PULUMI_ENGINE_SRC" -C "$src"
        touch "$src/.complete"
        tc_phase "unpack the vendored pulumi sources" "$start"
    fi
    echo "$src"
}

no_vendor() {
    echo "toolchain: $1: skipped: its Go module is refused by the module proxy and the vendored sources" \
        "($PULUMI_ENGINE_SRC) are not here; the engine tests will use the $1 installed on this machine" >&2
}

PULUMI_VERSION_LDFLAGS="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"

k8s_tools=()
for tool in $TOOLS; do
    case "$tool" in
        etcd)
            build etcd etcd go.etcd.io/etcd/server/v3 \
                "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" ;;
        kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl)
            k8s_tools+=("$tool=k8s.io/kubernetes/cmd/$tool") ;;
        kwok)
            build kwok kwok sigs.k8s.io/kwok/cmd/kwok \
                "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" ;;
        pulumi)
            # Served by the proxy, but of no use to the tests without the language host and provider.
            vendor_src >/dev/null || { [[ $? == 1 ]] && { no_vendor "$tool"; continue; }; exit 1; }
            build pulumi pulumi github.com/pulumi/pulumi/pkg/v3/cmd/pulumi "$PULUMI_VERSION_LDFLAGS" ;;
        pulumi-language-python)
            src="$(vendor_src)" || { [[ $? == 1 ]] && { no_vendor "$tool"; continue; }; exit 1; }
            build pulumi-language-python "$src/langhost" . "$PULUMI_VERSION_LDFLAGS"
            # The language host runs this script to start the program; it ships in the sdk/v3 module.
            if [[ ! -x "$DIR/pulumi-language-python-exec" ]]; then
                sdk="$(cd "$src/langhost" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)"
                install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$DIR/pulumi-language-python-exec"
            fi ;;
        pulumi-resource-kubernetes)
            src="$(vendor_src)" || { [[ $? == 1 ]] && { no_vendor "$tool"; continue; }; exit 1; }
            if [[ ! -x "$DIR/$tool" ]]; then
                # Embeds the schema (shipped as schema.json) into the provider's Go sources.
                start="$(tc_now)"
                (cd "$src/k8s/provider/cmd/pulumi-resource-kubernetes" && VERSION=$PULUMI_K8S_VERSION \
                    GOFLAGS="-mod=readonly -buildvcs=false" $NICE go run ./generate.go) >&2
                tc_phase "go run: pulumi-resource-kubernetes schema generator" "$start"
            fi
            build pulumi-resource-kubernetes "$src/k8s/provider" ./cmd/pulumi-resource-kubernetes \
                "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$PULUMI_K8S_VERSION" ;;
        *)
            echo "toolchain: unknown tool $tool (known: $ALL_TOOLS)" >&2
            exit 2 ;;
    esac
done

if (( ${#k8s_tools[@]} )); then
    tc_build "$GOMOD/kubernetes" "$(k8s_ldflags)" "" "${k8s_tools[@]}"
fi

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
pulumi $PULUMI_VERSION
pulumi-resource-kubernetes $PULUMI_K8S_VERSION
go $GO_VERSION
EOF
echo "$DIR"
