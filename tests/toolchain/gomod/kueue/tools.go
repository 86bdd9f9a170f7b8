//go:build tools

// Package tools pins the command the toolchain builds from this module.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
