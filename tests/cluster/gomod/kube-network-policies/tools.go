//go:build tools

// Package tools pins the command tests/cluster/toolchain.sh builds from this module
// (go build sigs.k8s.io/kube-network-policies/cmd, with the overlay described in nfqueue-target.patch).
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
