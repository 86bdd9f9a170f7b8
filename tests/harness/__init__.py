"""The test harness shared by the engine tier (tests/engine: LocalCluster, kwok nodes) and the cluster tier
(tests/cluster: RealCluster, a real node in a network namespace of its own), one small module per job:

- wait: `eventually`, the one polling wait;
- procs: the processes a cluster starts (logs, liveness, stopping), `run`, free ports;
- pki: the certificates and kubeconfigs;
- api: the tests' Kubernetes client (`Api`) and small helpers over its dicts;
- controlplane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, written once for both clusters;
- hostns: the real cluster's network namespace, cgroups and mounts, and what its teardown removes of them;
- containerd, node: the real node's container runtime and daemons (kubelet, kube-proxy, CoreDNS);
- forward: socat bridges from the machine into the real cluster's network namespace.
"""
