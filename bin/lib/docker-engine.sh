# A Docker engine for the kind path and the image builds (sourced by bin/setup,
# bin/docker-engine and bin/up; needs bin/lib/common.sh first).
#
# - When `docker info` answers, that engine is used as it is and nothing is changed.
# - Otherwise, as root only: Debian's docker.io is installed with apt-get if dockerd is
#   missing, and dockerd is started in the background with its data (--data-root), pid file,
#   log and configuration file (--config-file, so /etc/docker/daemon.json is neither read
#   nor written) under .tools/docker/. It listens on the default socket, so `docker`, kind and
#   other checkouts on the machine find it.
# - Then, only for an engine started here: when a privileged container cannot start (a VM
#   whose capability bounding set lacks CAP_SYS_RESOURCE makes runc fail with "unable to apply
#   caps: operation not permitted"), the runc wrapper (.tools/bin/stackgen-runc, built from
#   images/runc-wrapper) becomes dockerd's default runtime: written to .tools/docker's
#   daemon.json and reloaded with SIGHUP (runtimes reload without a restart).
# - docker_engine_stop stops the daemon this checkout started (its pid file, checked against
#   the process's command line) and nothing else.
# shellcheck shell=bash

DOCKER_STATE="$ROOT/.tools/docker"
DOCKER_PIDFILE="$DOCKER_STATE/dockerd.pid"
DOCKER_LOG="$DOCKER_STATE/dockerd.log"
DOCKER_CONFIG="$DOCKER_STATE/daemon.json"
DOCKER_PROBE_IMAGE=stackgen.local/probe:1

docker_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# The pid of the dockerd this checkout started, if it still runs (else nothing, status 1).
docker_engine_own_pid() {
    local pid cmd
    [[ -f $DOCKER_PIDFILE ]] || return 1
    pid=$(<"$DOCKER_PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *dockerd* && $cmd == *"--data-root $DOCKER_STATE/data"* ]] || return 1
    echo "$pid"
}

docker_engine_status() {
    local pid
    if pid=$(docker_engine_own_pid); then
        say "dockerd started by this checkout: pid $pid (data: ${DOCKER_STATE#"$ROOT"/}/data," \
            "log: ${DOCKER_STATE#"$ROOT"/}/dockerd.log); stop it with bin/docker-engine stop"
    elif docker_answers; then
        say "a Docker engine answers (not started by this checkout): $(docker_server_version)"
    else
        say "no Docker engine answers"
        return 1
    fi
}

docker_server_version() { docker version --format 'server {{.Server.Version}}' 2>/dev/null || echo unknown; }

# Install Debian's docker.io (root only). Recommends are skipped: dockerd needs only the
# package's dependencies (containerd, runc, iptables, tini).
docker_engine_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "no Docker engine answers and this is not a Debian-like system: install Docker and rerun"
    say "    apt-get install docker.io (Debian's Docker engine)"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
        install --no-install-recommends docker.io)
    if ! "${apt[@]}" >"$DOCKER_STATE/apt.log" 2>&1; then
        say "    apt-get install failed; apt-get update and once more"
        env DEBIAN_FRONTEND=noninteractive apt-get -q update >>"$DOCKER_STATE/apt.log" 2>&1 || true
        "${apt[@]}" >>"$DOCKER_STATE/apt.log" 2>&1 || {
            tail -n 20 "$DOCKER_STATE/apt.log" >&2
            die "apt-get install docker.io failed (log: $DOCKER_STATE/apt.log)"
        }
    fi
}

# Make sure a Docker engine answers; start one when none does (see the top of this file).
docker_engine_ensure() {
    if docker_answers; then
        if docker_engine_own_pid >/dev/null; then
            say "    dockerd started by this checkout answers (pid $(docker_engine_own_pid))"
            docker_engine_fix_privileged
        else
            say "    a Docker engine answers ($(docker_server_version)); using it as it is"
        fi
        return 0
    fi
    ((EUID == 0)) || die "no Docker engine answers (docker info failed) and only root may" \
        "install or start one here: start Docker yourself, or rerun as root"
    mkdir -p "$DOCKER_STATE/data"
    if ! command -v dockerd >/dev/null 2>&1; then
        docker_engine_install
    fi
    if docker_answers; then # the package's service may have started one
        say "    a Docker engine answers after installing docker.io ($(docker_server_version))"
        return 0
    fi
    command -v docker >/dev/null 2>&1 || die "no docker command after installing docker.io"
    [[ -f $DOCKER_CONFIG ]] || printf '{}\n' >"$DOCKER_CONFIG"
    say "    starting dockerd (data: ${DOCKER_STATE#"$ROOT"/}/data, log: ${DOCKER_LOG#"$ROOT"/})"
    # setsid: the daemon outlives this script and its terminal; the pid file is dockerd's own.
    # It must not inherit our other descriptors: bin/setup's lock (fd 9) would stay held for
    # as long as the daemon runs.
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec setsid dockerd --data-root "$DOCKER_STATE/data" --pidfile "$DOCKER_PIDFILE" \
            --config-file "$DOCKER_CONFIG" >>"$DOCKER_LOG" 2>&1 </dev/null
    ) &
    local deadline=$((SECONDS + 60))
    until docker_answers; do
        if ((SECONDS > deadline)) || ! kill -0 $! 2>/dev/null; then
            tail -n 20 "$DOCKER_LOG" >&2
            die "dockerd did not answer within 60s (log: $DOCKER_LOG)"
        fi
        sleep 0.5
    done
    say "    dockerd answers: pid $(docker_engine_own_pid), $(docker_server_version)"
    docker_engine_fix_privileged
}

# A tiny image made from the host's /bin/true and the libraries it loads: enough to start a
# container without any registry.
docker_probe_image() {
    docker image inspect "$DOCKER_PROBE_IMAGE" >/dev/null 2>&1 && return 0
    local tmp lib
    tmp=$(mktemp -d "$DOCKER_STATE/.probe.XXXXXX")
    mkdir -p "$tmp/root/bin"
    cp -L /bin/true "$tmp/root/bin/true"
    while read -r lib; do
        mkdir -p "$tmp/root$(dirname "$lib")"
        cp -L "$lib" "$tmp/root$lib"
    done < <(ldd /bin/true | grep -o '/[^ ]*')
    tar -C "$tmp/root" -c . | docker import --change 'CMD ["/bin/true"]' - "$DOCKER_PROBE_IMAGE" >/dev/null
    safe_rm_tree "$tmp" "$DOCKER_STATE"
}

# Can a privileged container start? (prints docker's error when not)
docker_privileged_works() { docker run --rm --privileged "$DOCKER_PROBE_IMAGE" /bin/true 2>&1; }

docker_engine_fix_privileged() {
    local pid out
    pid=$(docker_engine_own_pid) || return 0 # never reconfigure an engine we did not start
    docker_probe_image
    if out=$(docker_privileged_works); then
        say "    privileged containers start"
        return 0
    fi
    say "    a privileged container fails: ${out//$'\n'/ }"
    local wrapper="$ROOT/.tools/bin/stackgen-runc"
    [[ -x $wrapper ]] || die "the runc wrapper $wrapper is missing (bin/setup runc-wrapper)"
    if grep -q stackgen-runc "$DOCKER_CONFIG" 2>/dev/null; then
        die "privileged containers fail even with the runc wrapper as default runtime: $out"
    fi
    say "    making the runc wrapper dockerd's default runtime (${DOCKER_CONFIG#"$ROOT"/}, SIGHUP)"
    cat >"$DOCKER_CONFIG.tmp" <<EOF
{
  "runtimes": {"stackgen-runc": {"path": "$wrapper"}},
  "default-runtime": "stackgen-runc"
}
EOF
    mv "$DOCKER_CONFIG.tmp" "$DOCKER_CONFIG"
    kill -HUP "$pid"
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.5
        if docker info --format '{{.DefaultRuntime}}' 2>/dev/null | grep -qx stackgen-runc; then
            break
        fi
        ((i < 10)) || die "dockerd did not reload its runtimes (log: $DOCKER_LOG)"
    done
    out=$(docker_privileged_works) || die "privileged containers still fail: $out"
    say "    privileged containers start (runtime stackgen-runc)"
}

docker_engine_stop() {
    local pid
    if ! pid=$(docker_engine_own_pid); then
        say "no dockerd started by this checkout is running (nothing stopped)"
        return 0
    fi
    say "stopping dockerd pid $pid (its containers stop with it)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "dockerd pid $pid did not stop within 60s"
        sleep 0.5
    done
    rm -f "$DOCKER_PIDFILE"
    say "dockerd stopped"
}
