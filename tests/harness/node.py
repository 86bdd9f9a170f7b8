"""The real node's daemons, each a process in the cluster's network namespace: the kubelet (in a mount namespace of
its own), kube-proxy (iptables mode) and kube-network-policies (the NetworkPolicy enforcer kind ships); and the
cluster DNS, CoreDNS, as a pod behind the kube-dns Service, as kind and kubeadm run it."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.api import Api, condition
from tests.harness.controlplane import CLUSTER_DOMAIN, SERVICE_CIDR, ControlPlane
from tests.harness.hostns import NODE_IP, POD_CIDR
from tests.harness.procs import Processes, run

NODE_NAME = "mlp-node-0"
# The cluster DNS Service's address (kubeadm's choice: the tenth of the Service range).
DNS_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR).network_address + 10)
NFQUEUE_ID = 100
NETWORK_POLICIES_METRICS_PORT = 9080
# What the kubelet would write machine-wide at start (pkg/kubelet/cm setupKernelTunables); it sees these values.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


@dataclass
class Node:
    """The daemons of the node `NODE_NAME`: binaries from `tools`, configs under `workdir/configs`, client
    certificates from the control plane's `Pki`; `http_ok` asks a URL from inside the network namespace."""

    tools: Path
    workdir: Path
    procs: Processes
    control_plane: ControlPlane
    api: Api
    http_ok: Callable[[str], bool]
    containerd_sock: Path
    cgroup_root: str

    @property
    def kubelet_dir(self) -> Path:
        return self.workdir / "kubelet"

    def declare_coredns(self, image: str) -> None:
        """CoreDNS as kind and kubeadm run it: a Deployment `coredns` in kube-system (pods labelled
        k8s-app=kube-dns) behind the Service `kube-dns` at `DNS_SERVICE_IP`, with its own ServiceAccount and
        ClusterRole; the image `image` holds only the CoreDNS binary (tests/cluster/images.py coredns_archive).
        Declared before the kubelet starts; `wait_coredns` waits for it to serve."""
        ns = "kube-system"
        corefile = f""".:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    prometheus :9153
    cache 5
    reload
}}
"""
        dns_labels = {"k8s-app": "kube-dns"}
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": ns}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                     "verbs": ["list", "watch"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:coredns"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
                "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}],
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": ns},
             "data": {"Corefile": corefile}},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": ns, "labels": {**dns_labels,
                             "kubernetes.io/name": "CoreDNS"}},
                "spec": {
                    "clusterIP": DNS_SERVICE_IP,
                    "selector": dns_labels,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                        {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                    ],
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": ns, "labels": dns_labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": dns_labels},
                    "template": {
                        "metadata": {"labels": dns_labels},
                        "spec": {
                            "serviceAccountName": "coredns",
                            "priorityClassName": "system-cluster-critical",
                            "dnsPolicy": "Default",
                            "containers": [
                                {
                                    "name": "coredns",
                                    "image": image,
                                    "imagePullPolicy": "Never",
                                    "args": ["-conf", "/etc/coredns/Corefile"],
                                    "ports": [
                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                        {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                                    ],
                                    "resources": {"requests": {"cpu": "50m", "memory": "70Mi"},
                                                  "limits": {"memory": "170Mi"}},
                                    "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns",
                                                      "readOnly": True}],
                                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                                      "periodSeconds": 10, "failureThreshold": 5},
                                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                                       "periodSeconds": 1},
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                        "readOnlyRootFilesystem": True,
                                    },
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                        },
                    },
                },
            },
        ]  # fmt: skip
        for obj in objects:
            self.api.apply(obj)

    def wait_coredns(self) -> None:
        def serving() -> bool:
            slices = self.api.items("discovery.k8s.io/v1", "EndpointSlice", "kube-system",
                                    selector="kubernetes.io/service-name=kube-dns")  # fmt: skip
            return any(e.get("conditions", {}).get("ready") for s in slices for e in s.get("endpoints") or [])

        self.procs.eventually("CoreDNS serving behind kube-dns", serving, 120)

    def declare_network_policies(self, image: str) -> None:
        """kube-network-policies as kind runs it: a DaemonSet in kube-system on the node's network, privileged,
        with the ServiceAccount and ClusterRole of its install.yaml; `image` holds only its binary. Fail-open is
        off: while it is down, packets of pods under a policy are dropped. NRI is off (containerd 1.6 has none):
        a pod's IP comes from the API, so the first packets of a pod that just started may be judged as coming
        from an unknown address. Declared before the kubelet starts; `wait_network_policies` waits for its
        nftables table."""
        ns = "kube-system"
        app = {"app": "kube-network-policies"}
        objects: list[dict[str, Any]] = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "kube-network-policies"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
                    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "kube-network-policies"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "kube-network-policies"},
                "subjects": [{"kind": "ServiceAccount", "name": "kube-network-policies", "namespace": ns}],
            },
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kube-network-policies",
                                                                       "namespace": ns}},
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "kube-network-policies", "namespace": ns, "labels": app},
                "spec": {
                    "selector": {"matchLabels": app},
                    "template": {
                        "metadata": {"labels": app},
                        "spec": {
                            "hostNetwork": True,
                            "priorityClassName": "system-node-critical",
                            "serviceAccountName": "kube-network-policies",
                            "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                            "containers": [
                                {
                                    "name": "kube-network-policies",
                                    "image": image,
                                    "imagePullPolicy": "Never",
                                    "args": [
                                        f"--hostname-override={NODE_NAME}",
                                        "--fail-open=false",
                                        "--disable-nri",
                                        f"--nfqueue-id={NFQUEUE_ID}",
                                        f"--metrics-bind-address=127.0.0.1:{NETWORK_POLICIES_METRICS_PORT}",
                                        "--v=2",
                                    ],
                                    "resources": {"requests": {"cpu": "50m", "memory": "50Mi"},
                                                  "limits": {"memory": "300Mi"}},
                                    "securityContext": {"privileged": True,
                                                        "capabilities": {"add": ["NET_ADMIN"]}},
                                }
                            ],
                        },
                    },
                },
            },
        ]  # fmt: skip
        for obj in objects:
            self.api.apply(obj)

    def wait_network_policies(self) -> None:
        url = f"http://127.0.0.1:{NETWORK_POLICIES_METRICS_PORT}/metrics"
        self.procs.eventually("kube-network-policies serving metrics", lambda: self.http_ok(url), 120)
        self.procs.eventually("kube-network-policies' nftables table", self._knp_table, 60)

    def _knp_table(self) -> bool:
        out = run([*self.procs.prefix, "nft", "list", "tables"], check=False).stdout
        return "kube-network-policies" in out

    def start_kubelet(self) -> None:
        pki = self.control_plane.pki
        kubeconfig = self.control_plane.component_kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        serving = pki.issue("kubelet-serving", NODE_NAME, server_names=[NODE_NAME], server_ips=[NODE_IP])
        resolv = self.workdir / "configs" / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")  # pods with dnsPolicy Default; nothing answers there
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            # cgroup v1 here (hybrid layout with an empty unified mount); containerd 1.6 cannot report its driver.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            # Images are imported, never pulled: the kubelet must not garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "maxPods": 110,
        }
        conf = self.workdir / "configs" / "kubelet.yaml"
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        # The kubelet mounts volumes (secrets, projected tokens, memory emptyDirs) under its root directory in
        # its own mount namespace; a shared mount there carries them to containerd's (the machine's) namespace.
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(self.kubelet_dir), str(self.kubelet_dir)])
        run(["mount", "--make-shared", str(self.kubelet_dir)])
        # In that namespace the kubelet also gets /var/lib and /var/log of its own: it puts the device-plugin socket
        # in /var/lib/kubelet/device-plugins and container log links in /var/log/containers whatever --root-dir
        # says (fixed paths a second cluster on the machine would fight over), and the kernel tunables it would
        # otherwise rewrite machine-wide read as already set.
        node = self.workdir / "node"
        script = ["set -e"]
        for path in ("/var/lib", "/var/log"):
            private = node / path.strip("/").replace("/", "-")
            private.mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {private} {path}")
        for key, value in KERNEL_TUNABLES.items():
            mask = node / "sysctl" / key.replace("/", ".")
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.write_text(f"{value}\n")
            script.append(f"mount --bind -o ro {mask} /proc/sys/{key}")
        script.append('exec "$@"')
        self.procs.spawn(
            "kubelet",
            [
                "unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", "\n".join(script), "kubelet",
                str(self.tools / "kubelet"),
                f"--config={conf}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_dir}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
        )  # fmt: skip
        self.procs.eventually(
            f"node {NODE_NAME} Ready", lambda: condition(self.api.get("v1", "Node", NODE_NAME), "Ready") == "True", 120
        )

    def start_kube_proxy(self) -> None:
        kubeconfig = self.control_plane.component_kubeconfig("kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": "0.0.0.0",
            "clusterCIDR": POD_CIDR,
            "mode": "iptables",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zeros: leave the machine-wide conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        conf = self.workdir / "configs" / "kube-proxy.yaml"
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        self.procs.spawn("kube-proxy", [str(self.tools / "kube-proxy"), f"--config={conf}", "--v=1"])
        self.procs.eventually("kube-proxy healthz", lambda: self.http_ok("http://127.0.0.1:10256/healthz"), 60)
