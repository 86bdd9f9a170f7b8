//go:build tools

// Package tools pins the command tests/cluster/toolchain.sh builds from this module (go build github.com/coredns/coredns).
package tools

import (
	_ "github.com/coredns/coredns"
)
