#!/usr/bin/env bash
# Make ./build/lego5, the copy of lego v5 this module's go.mod replaces github.com/go-acme/lego/v5 with: the
# module's own source (from the module cache) with its DNS-provider switch trimmed to the providers that need no
# cloud SDK (third_party/lego5/zz_gen_dns_providers.go), and the requirements only the dropped providers had, whose
# versions the Go module proxy refuses, removed from its go.mod. Run before `go build` or `go mod tidy` here
# (tests/cluster/toolchain.sh does). Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LEGO_VERSION=v5.4.1
dest="$HERE/build/lego5"
stamp="$dest/.prepared-$LEGO_VERSION-$(sha256sum "$HERE/third_party/lego5/zz_gen_dns_providers.go" "$0" | sha256sum | cut -c1-12)"
[[ -f "$stamp" ]] && exit 0
src="$(cd / && go mod download -json "github.com/go-acme/lego/v5@$LEGO_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$src" ]] || { echo "prepare: lego $LEGO_VERSION not in the module cache" >&2; exit 1; }
rm -rf "$dest" && mkdir -p "$HERE/build" && cp -r "$src" "$dest" && chmod -R u+w "$dest"
cp "$HERE/third_party/lego5/zz_gen_dns_providers.go" "$dest/providers/dns/zz_gen_dns_providers.go"
sed -i -E '/^[[:space:]]*github.com\/(akamai\/AkamaiOPEN-edgegrid-golang|huaweicloud\/huaweicloud-sdk-go-v3|nrdcg\/oci-go-sdk|sacloud\/sacloud-sdk-go|ucloud\/ucloud-sdk-go|yandex-cloud\/go-sdk\/services\/dns)[ \/]/d' "$dest/go.mod"
touch "$stamp"
