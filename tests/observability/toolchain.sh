#!/usr/bin/env bash
# Build the observability tier's tools from Go modules into a cache directory keyed by their versions, or reuse
# that directory when a previous run completed it. The last line of output is the directory
# (tests/observability/conftest.py and `make test` read it; pass it on as ML_PLATFORM_OBS_TOOLCHAIN).
#
#   tests/observability/toolchain.sh              build what is missing, print the directory
#   TOOLS=promtool tests/observability/toolchain.sh   build only some tools
#   tests/observability/toolchain.sh --print-dir  print the directory (built or not) and exit
#
# What the directory holds:
#   promtool, prometheus  from github.com/prometheus/prometheus (wrapper module gomod/prometheus), built with
#                         the tags `remove_all_sd,enable_kubernetes_sd` (static, file, http and Kubernetes
#                         service discovery: the observability tier scrapes static targets, the cluster tier
#                         finds pods through the API server as a platform's Prometheus does) and without `builtinassets` (the web UI would be read from
#                         disk; the tests use only the HTTP API)
#   crds/*.yaml           the Prometheus Operator's CustomResourceDefinitions for PodMonitor, ServiceMonitor and
#                         PrometheusRule (monitoring.coreos.com), copied from the module pinned by the wrapper
#                         module gomod/prometheus-operator (nothing is built from it)
#   build-seconds.txt     "<tool> <seconds>" for each build this directory saw
#   versions.txt
#
# Environment:
#   ML_PLATFORM_TOOLCHAIN_CACHE  parent of the keyed directories (shared with tests/engine/toolchain.sh; default
#                                ${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain)
#   TOOLS                        tools to build (default: all of ALL_TOOLS below)
#   NICE                         priority prefix for the builds (default "nice -n 19")
#   GOPATH, GOCACHE, GOMODCACHE  as usual; point them at empty directories to measure a cold build
#
# Versions are pinned by the wrapper modules in tests/observability/gomod/*/go.mod (+ go.sum). The key includes
# the Go version, the build tags and a hash of those files, so bumping a version builds a new directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GOMOD="$HERE/gomod"

# Prometheus 3.16.0: the module proxy serves Prometheus 3.x.y as v0.3xx.y.
PROMETHEUS_VERSION=v0.316.0
PROMETHEUS_RELEASE=3.16.0
PROMETHEUS_OPERATOR_VERSION=v0.88.0
BUILD_TAGS="remove_all_sd,enable_kubernetes_sd"
ALL_TOOLS="promtool prometheus"
TOOLS="${TOOLS:-$ALL_TOOLS}"
NICE="${NICE:-nice -n 19}"
CRDS="podmonitors servicemonitors prometheusrules"

command -v go >/dev/null || { echo "toolchain: go is not on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
# Bump BUILD_REV when the build flags below change; go.mod/go.sum changes change the hash by themselves.
BUILD_REV=1
SRC_HASH="$( (cat "$GOMOD"/*/go.mod "$GOMOD"/*/go.sum; echo "$BUILD_TAGS $CRDS") | sha256sum | cut -c1-12)"
KEY="obs_prometheus-${PROMETHEUS_VERSION}_operator-${PROMETHEUS_OPERATOR_VERSION}_${GO_VERSION}_r${BUILD_REV}_${SRC_HASH}"
CACHE="${ML_PLATFORM_TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ml-platform/toolchain}"
DIR="$CACHE/$KEY"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$DIR"
    exit 0
fi

LABEL=toolchain
source "$HERE/../toolchain/lib.sh"

# What `prometheus --version` and the build_info metric report (prometheus/common's version package).
PROMETHEUS_LDFLAGS="-s -w"
for kv in "Version=$PROMETHEUS_RELEASE" "Revision=$PROMETHEUS_VERSION" "Branch=HEAD" "BuildUser=ml-platform"; do
    PROMETHEUS_LDFLAGS+=" -X github.com/prometheus/common/version.$kv"
done

prom_tools=()
for tool in $TOOLS; do
    case "$tool" in
        promtool|prometheus)
            prom_tools+=("$tool=github.com/prometheus/prometheus/cmd/$tool") ;;
        *)
            echo "toolchain: unknown tool $tool (known: $ALL_TOOLS)" >&2
            exit 2 ;;
    esac
done

# Both from one module in one `go build`: the packages they share compile once.
if (( ${#prom_tools[@]} )); then
    tc_build "$GOMOD/prometheus" "$PROMETHEUS_LDFLAGS" "$BUILD_TAGS" "${prom_tools[@]}"
fi

# The CRDs ship in the operator module's zip (example/prometheus-operator-crd/monitoring.coreos.com_<plural>.yaml);
# copied into a temporary directory and renamed, so crds/ is complete whenever it exists.
if [[ ! -d "$DIR/crds" ]]; then
    (cd "$GOMOD/prometheus-operator" && go mod download github.com/prometheus-operator/prometheus-operator) >&2
    OPERATOR_SRC="$(cd "$GOMOD/prometheus-operator" && go list -m -f '{{.Dir}}' \
        github.com/prometheus-operator/prometheus-operator)"
    if [[ -z "$OPERATOR_SRC" || ! -d "$OPERATOR_SRC/example/prometheus-operator-crd" ]]; then
        echo "toolchain: the prometheus-operator module ($OPERATOR_SRC) has no example/prometheus-operator-crd" >&2
        exit 1
    fi
    rm -rf "$DIR/.crds.$$.tmp" && mkdir "$DIR/.crds.$$.tmp"
    for plural in $CRDS; do
        install -m 0644 "$OPERATOR_SRC/example/prometheus-operator-crd/monitoring.coreos.com_$plural.yaml" \
            "$DIR/.crds.$$.tmp/"
    done
    mv -T "$DIR/.crds.$$.tmp" "$DIR/crds" 2>/dev/null || rm -rf "$DIR/.crds.$$.tmp"  # a racing run won
fi

cat > "$DIR/versions.txt" <<EOF
prometheus $PROMETHEUS_RELEASE ($PROMETHEUS_VERSION)
prometheus-operator $PROMETHEUS_OPERATOR_VERSION
build-tags $BUILD_TAGS
go $GO_VERSION
EOF
echo "$DIR"
