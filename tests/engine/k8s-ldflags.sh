# Sourced by tests/engine/toolchain.sh and tests/cluster/toolchain.sh: the -ldflags that make binaries of the
# k8s.io/kubernetes module report $K8S_VERSION (a module build has no git metadata to take it from).
k8s_ldflags() {
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    local x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "-s -w$x"
}
