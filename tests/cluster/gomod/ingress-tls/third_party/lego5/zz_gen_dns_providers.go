// Trimmed by ml-platform (tests/cluster/gomod/ingress-tls/README.md): lego v5.4.1's generated switch over its
// DNS-01 providers, keeping only the ones that need no cloud SDK. Seven of the dropped providers' SDK versions
// are refused by the Go module proxy this project builds from. Traefik serves TLS from Kubernetes Secrets here
// (cert-manager issues them); ACME HTTP-01 and TLS-ALPN-01 in Traefik are unaffected.

package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
	"github.com/go-acme/lego/v5/providers/dns/dnsupdate"
	"github.com/go-acme/lego/v5/providers/dns/exec"
	"github.com/go-acme/lego/v5/providers/dns/httpreq"
	"github.com/go-acme/lego/v5/providers/dns/manual"
)

// NewDNSChallengeProviderByName Factory for DNS providers.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	switch name {
	case "dnsupdate", "rfc2136":
		return dnsupdate.NewDNSProvider()
	case "exec":
		return exec.NewDNSProvider()
	case "httpreq":
		return httpreq.NewDNSProvider()
	case "manual":
		return manual.NewDNSProvider()
	default:
		return nil, fmt.Errorf("unrecognized DNS provider: %s (this build of Traefik keeps only dnsupdate/rfc2136, exec, httpreq and manual)", name)
	}
}
