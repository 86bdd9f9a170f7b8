#!/usr/bin/env bash
# Build Kueue's manager (sigs.k8s.io/kueue/cmd/kueue: controllers, webhooks and the visibility API server in one
# binary) from its Go module into a cache directory keyed by its version, or reuse that directory when a previous
# run completed it; beside the binary, a writable copy of the module's config/ (kueue-config/: source/ its kustomize
# tree, crd/ and webhooks.yaml its CRDs and webhook manifests as plain YAML). The last line of output is the
# directory (tests/engine/kueue.py and tests/toolchain/setup.sh read it).
#
#   tests/toolchain/kueue.sh              build what is missing, print the directory
#   tests/toolchain/kueue.sh --print-dir  print the directory (built or not) and exit
#
# Environment:
#   ML_PLATFORM_TOOLCHAIN_CACHE  parent of the keyed directories, shared with tests/engine/toolchain.sh
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain)
#   NICE                         priority prefix for the build (default "nice -n 19")
#   GOPATH, GOCACHE, GOMODCACHE  as usual; point them at empty directories to measure a cold build
#   ML_PLATFORM_PHASE_LOG        see tests/toolchain/lib.sh
#
# The version is pinned by the wrapper module gomod/kueue (go.mod + go.sum; its k8s.io modules are those of
# tests/engine/gomod/kubernetes, so the two builds share compiled packages in GOCACHE). The key includes the Go
# version and a hash of the wrapper, so bumping a version builds a new directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/gomod/kueue"

KUEUE_VERSION=v0.17.0
# The release's date (the module proxy's .info Time): what `kueue --version`-style logs report as BuildDate.
KUEUE_BUILD_DATE=2026-03-31T10:20:15Z
NICE="${NICE:-nice -n 19}"

command -v go >/dev/null || { echo "kueue toolchain: go is not on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
# Bump BUILD_REV when the build flags or the copied files below change; go.mod/go.sum changes change the hash.
BUILD_REV=1
SRC_HASH="$(cat "$MOD/go.mod" "$MOD/go.sum" | sha256sum | cut -c1-12)"
KEY="kueue-${KUEUE_VERSION}_${GO_VERSION}_r${BUILD_REV}_${SRC_HASH}"
CACHE="${ML_PLATFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain}"
DIR="$CACHE/$KEY"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$DIR"
    exit 0
fi

LABEL="kueue toolchain"
source "$HERE/lib.sh"

# Kueue's Makefile sets these (pkg/version); a module build has no git metadata, so the commit stays empty.
VERSION_PKG=sigs.k8s.io/kueue/pkg/version
LDFLAGS="-s -w -X $VERSION_PKG.GitVersion=$KUEUE_VERSION -X $VERSION_PKG.GitCommit= -X $VERSION_PKG.BuildDate=$KUEUE_BUILD_DATE"
tc_build "$MOD" "$LDFLAGS" "" kueue=sigs.k8s.io/kueue/cmd/kueue

if [[ ! -d "$DIR/kueue-config/source/default" ]]; then
    start="$(tc_now)"
    SRC="$(cd "$MOD" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
    if [[ -z "$SRC" || ! -d "$SRC/config/default" ]]; then
        (cd "$MOD" && go mod download sigs.k8s.io/kueue) >&2
        SRC="$(cd "$MOD" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
    fi
    # The module cache is read-only; the copies are not. config/ is Kueue's kustomize tree: config/default is what
    # its release manifests.yaml is built from (the cluster tier installs Kueue from it); the CRDs and the webhook
    # manifests as plain YAML are what the engine tier registers for the manager it runs as a process.
    tmp="$DIR/.copy.$$"
    rm -rf "$tmp" && mkdir -p "$tmp/kueue-config"
    cp -r "$SRC/config" "$tmp/kueue-config/source"
    cp -r "$SRC/config/components/crd/bases" "$tmp/kueue-config/crd"
    cp "$SRC/config/components/webhook/manifests.yaml" "$tmp/kueue-config/webhooks.yaml"
    chmod -R u+w "$tmp"
    rm -rf "$DIR/kueue-chart" "$DIR/kueue-config"
    mv "$tmp/kueue-config" "$DIR/"
    rm -rf "$tmp"
    tc_phase "copy kueue's manifests" "$start"
fi

cat > "$DIR/versions.txt" <<EOF
kueue $KUEUE_VERSION
go $GO_VERSION
EOF
echo "$DIR"
