//go:build tools

// The binaries built from dependencies' main packages (tests/cluster/toolchain.sh), kept in go.mod by this import.
package tools

import (
	_ "github.com/traefik/traefik/v3/cmd/traefik"
)
