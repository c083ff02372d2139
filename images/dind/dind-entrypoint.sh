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
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    # cgroup v2: move ourselves out of the root cgroup, then hand every controller down.
    mkdir -p /sys/fs/cgroup/init
    for _ in 1 2 3 4 5 6 7 8 9 10; do # processes may come and go while they are moved
        xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null && break
    done
    sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control || true
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
