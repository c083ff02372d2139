#!/bin/bash
# Entrypoint of stackgen's dind image (Debian's docker.io). Used like docker:dind:
#   args: ["dockerd", "--host=unix:///var/run/dind/docker.sock"]   (the stack's dind sidecar)
#   args: ["--debug"]                                              (flags: dockerd is implied)
#   args: ["docker", "info"]                                       (anything else runs as is)
# For dockerd it first prepares what a privileged container needs to run Docker inside:
# securityfs (AppArmor), and on cgroup v2 a nested cgroup so containers can be created.
set -euo pipefail

if [[ $# -eq 0 || ${1:-} == -* ]]; then
    set -- dockerd "$@"
fi
if [[ $1 != dockerd || " $* " == *" --version "* || " $* " == *" --help "* ]]; then
    exec "$@"
fi

if [[ -d /sys/kernel/security ]] && ! mountpoint -q /sys/kernel/security; then
    mount -t securityfs none /sys/kernel/security 2>/dev/null ||
        echo "dind: could not mount securityfs (AppArmor profiles unavailable)" >&2
fi
cg=/sys/fs/cgroup
if [[ -f $cg/cgroup.controllers ]]; then
    # cgroup v2 allows no processes in a cgroup that hands controllers to children ("no
    # internal processes"): move every process of ours into a leaf first, then delegate.
    mkdir -p "$cg/dind-entrypoint"
    while read -r pid; do
        echo "$pid" >"$cg/dind-entrypoint/cgroup.procs" 2>/dev/null || true # it may be gone
    done <"$cg/cgroup.procs"
    read -r -a controllers <"$cg/cgroup.controllers" || true
    for c in "${controllers[@]}"; do
        echo "+$c" >"$cg/cgroup.subtree_control" 2>/dev/null || echo "dind: cannot delegate $c" >&2
    done
fi
# A restarted container keeps nothing in /run, but a restarted pod may keep /var/lib/docker.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid

have_host=0
for arg in "$@"; do
    case $arg in
    -H* | --host*)
        have_host=1
        # the folder of a unix socket (a shared emptyDir in the pod; made here otherwise)
        if [[ $arg == *unix://* ]]; then
            sock=${arg#*unix://}
            mkdir -p "$(dirname "$sock")"
        fi
        ;;
    esac
done
((have_host)) || set -- "$@" --host=unix:///var/run/docker.sock
exec "$@"
