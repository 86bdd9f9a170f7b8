"""The real node's daemons, each a process in the cluster's network namespace: CoreDNS (a process with a kubeconfig,
not a pod), the kubelet (in a mount namespace of its own) and kube-proxy (iptables mode)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.harness.api import Api, condition
from tests.harness.controlplane import CLUSTER_DOMAIN, ControlPlane
from tests.harness.hostns import NODE_IP, POD_CIDR
from tests.harness.procs import Processes, run

NODE_NAME = "mlp-node-0"
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

    def start_coredns(self) -> None:
        rbac = [
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
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}],
            },
        ]  # fmt: skip
        for obj in rbac:
            self.api.apply(obj)
        kubeconfig = self.control_plane.component_kubeconfig("coredns", "system:coredns")
        corefile = self.workdir / "configs" / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
}}
"""
        )
        self.procs.spawn("coredns", [str(self.tools / "coredns"), "-conf", str(corefile)])
        self.procs.eventually("CoreDNS ready", lambda: self.http_ok("http://127.0.0.1:8181/ready"), 60)

    def start_kubelet(self) -> None:
        pki = self.control_plane.pki
        kubeconfig = self.control_plane.component_kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        serving = pki.issue("kubelet-serving", NODE_NAME, server_names=[NODE_NAME], server_ips=[NODE_IP])
        resolv = self.workdir / "configs" / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")
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
            "clusterDNS": [NODE_IP],
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
