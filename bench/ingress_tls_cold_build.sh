#!/usr/bin/env bash
# The cold build time of cert-manager (controller, webhook, cainjector) and Traefik, one module graph
# (tests/cluster/gomod/ingress-tls, docs/benchmarks.md): the steps of tests/cluster/toolchain.sh on a copy of the
# module, with empty Go caches of its own (module downloads included), removed afterwards. Then the same with
# cert-manager alone and Traefik alone, each cold, for what the shared graph saves; pass --together-only to skip.
# Usage: bash bench/ingress_tls_cold_build.sh [--together-only]
set -euo pipefail
mod="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/cluster/gomod/ingress-tls"
cold() {  # cold LABEL PACKAGE...: one cold `go build` of PACKAGEs; prints its wall time
    local label="$1"; shift
    local root; root="$(mktemp -d /tmp/ingress-tls-cold.XXXXXX)"
    cp -r "$mod" "$root/src" && rm -rf "$root/src/build"
    local start end
    start=$(date +%s.%N)
    (
        export GOCACHE=$root/cache GOMODCACHE=$root/mod GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
        cd "$root/src" && bash prepare.sh
        nice -n 10 go build -trimpath -ldflags "-s -w" -o "$root/out/" "$@"
    )
    end=$(date +%s.%N)
    awk -v a="$end" -v b="$start" -v l="$label" 'BEGIN { printf "%s cold build: %.0f s\n", l, a - b }'
    chmod -R u+w "$root"
    rm -rf "$root"
}
cold "cert-manager + traefik (one graph)" ./controller ./webhook ./cainjector github.com/traefik/traefik/v3/cmd/traefik
[[ "${1:-}" == "--together-only" ]] && exit 0
cold "cert-manager alone" ./controller ./webhook ./cainjector
cold "traefik alone" github.com/traefik/traefik/v3/cmd/traefik
