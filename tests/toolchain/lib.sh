# shellcheck shell=bash
# Sourced by the toolchain scripts (tests/engine/toolchain.sh, tests/cluster/toolchain.sh,
# tests/observability/toolchain.sh): the Go build environment, builds into the keyed directory $DIR, and the
# phase record that bench/ci_budget.py reads.
#
# The caller sets before sourcing: DIR (the keyed directory, created here), LABEL (the prefix of its messages),
# NICE (the priority prefix of the builds).
#
# Environment: ML_PLATFORM_PHASE_LOG  when set, every step timed here appends "<name> <start> <end>" (epoch
# seconds) to that file.

export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
export CGO_ENABLED=0
mkdir -p "$DIR"

tc_log() { echo "$LABEL: $*" >&2; }

tc_now() { date +%s.%N | cut -c1-14; }

tc_phase() {  # tc_phase NAME START: record a phase that ran from START (tc_now) until now
    local end; end="$(tc_now)"
    if [[ -n "${ML_PLATFORM_PHASE_LOG:-}" ]]; then
        echo "$1 $2 $end" >> "$ML_PLATFORM_PHASE_LOG"
    fi
}

tc_build() {  # tc_build MODULE_DIR LDFLAGS TAGS TOOL=PACKAGE [TOOL=PACKAGE ...]
    # Build every tool of one module that is not in $DIR yet, in one `go build` (packages they share compile
    # once, links run in parallel), beside the targets, then rename: a binary in $DIR is always complete.
    local mod="$1" ldflags="$2" tags="$3"; shift 3
    local tools=() pkgs=() spec tool
    for spec in "$@"; do
        tool="${spec%%=*}"
        if [[ -x "$DIR/$tool" ]]; then
            tc_log "$tool: cached"
        else
            tools+=("$tool"); pkgs+=("${spec#*=}")
        fi
    done
    (( ${#tools[@]} )) || return 0
    tc_log "${tools[*]}: building ${pkgs[*]}"
    local start tmp="$DIR/.build.$$"
    start="$(tc_now)"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if (( ${#tools[@]} == 1 )); then
        (cd "$mod" && $NICE go build ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$tmp/${tools[0]}" "${pkgs[0]}") >&2
    else
        # `go build -o DIR` names each binary after its package's last path element.
        (cd "$mod" && $NICE go build ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}") >&2
        local i
        for i in "${!tools[@]}"; do
            local base="${pkgs[$i]##*/}"
            [[ "$base" == "${tools[$i]}" ]] || mv "$tmp/$base" "$tmp/${tools[$i]}"
        done
    fi
    for tool in "${tools[@]}"; do
        mv "$tmp/$tool" "$DIR/$tool"
    done
    rm -rf "$tmp"
    local secs; secs="$(awk -v a="$(tc_now)" -v b="$start" 'BEGIN { printf "%d", a - b }')"
    echo "${tools[*]} $secs" >> "$DIR/build-seconds.txt"
    tc_phase "go build: ${tools[*]}" "$start"
    tc_log "${tools[*]}: built in $secs s"
}

# The -ldflags that make binaries of the k8s.io/kubernetes module report $K8S_VERSION (a module build has no git
# metadata to take it from).
k8s_ldflags() {
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    local x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "-s -w$x"
}
