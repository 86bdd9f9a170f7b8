#!/usr/bin/env bash
# The cold build time of kube-network-policies (docs/benchmarks.md): the steps of tests/cluster/toolchain.sh, with
# empty Go caches of its own (module downloads included), removed afterwards. Usage: bash bench/knp_cold_build.sh
set -euo pipefail
root="$(mktemp -d /tmp/knp-cold.XXXXXX)"
export GOCACHE=$root/cache GOMODCACHE=$root/mod GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
mod="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/cluster/gomod/kube-network-policies"
start=$(date +%s.%N)
(cd $mod && go mod download sigs.k8s.io/kube-network-policies)
src=$(cd $mod && go list -m -f '{{.Dir}}' sigs.k8s.io/kube-network-policies)
cp -r "$src" $root/src && chmod -R u+w $root/src && patch -s -d $root/src -p1 < $mod/nfqueue-target.patch
cp $mod/go.mod $root/go.build.mod && cp $mod/go.sum $root/go.build.sum
echo "replace sigs.k8s.io/kube-network-policies v0.8.0 => $root/src" >> $root/go.build.mod
(cd $mod && nice -n 10 go build -modfile $root/go.build.mod -ldflags "-s -w" -o $root/kube-network-policies sigs.k8s.io/kube-network-policies/cmd)
end=$(date +%s.%N)
awk -v a="$end" -v b="$start" 'BEGIN { printf "kube-network-policies cold build: %.0f s\n", a - b }'
chmod -R u+w "$root"
rm -rf $root
