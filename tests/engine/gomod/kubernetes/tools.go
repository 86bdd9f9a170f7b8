//go:build tools

// Package tools pins the commands tests/engine/toolchain.sh builds from this module, in one
// go build k8s.io/kubernetes/cmd/... (the control plane for the engine tier, the node for the cluster tier).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
