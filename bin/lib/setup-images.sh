# bin/setup's steps for the kind path: the Docker engine, the project's images and the kind
# node image, all built locally without a registry (sourced by bin/setup; see the step
# conventions there: key_STEP, outputs_STEP, run_STEP). Outputs of the form image:REF are
# images that must exist in the Docker engine.
# shellcheck shell=bash

KIND_NODE_BIN="$TOOLS/kind-node/bin"

# The engine must answer before an image step runs (bin/setup docker starts one if needed).
need_docker() {
    docker_answers && return 0
    docker_engine_ensure
}

# ---------------------------------------------------------------- runc-wrapper
key_runc_wrapper() { echo "go=$(go_version) src=$(hash_tree images/runc-wrapper)"; }
outputs_runc_wrapper() { echo "$BIN/stackgen-runc"; }
run_runc_wrapper() {
    require_go 24
    cd "$ROOT/images/runc-wrapper" || die "no images/runc-wrapper"
    say "    go test ./... (runc wrapper)"
    CGO_ENABLED=0 go test -count=1 ./... | sed 's/^/    /'
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$SCRATCH/stackgen-runc" .
    install_bins "$SCRATCH" stackgen-runc
}

# ---------------------------------------------------------------- docker (never cached)
key_docker() { echo "always"; }
outputs_docker() { :; }
run_docker() { docker_engine_ensure; }

# ---------------------------------------------------------------- image-debian
key_image_debian() { echo "rootfs=$(basename "$(rootfs_tar debian)") tag=$IMAGE_DEBIAN"; }
outputs_image_debian() { echo "image:$IMAGE_DEBIAN"; }
run_image_debian() {
    need_docker
    local ref
    ref=$(rootfs_image debian)
    docker tag "$ref" "$IMAGE_DEBIAN"
    docker run --rm "$IMAGE_DEBIAN" sh -c '. /etc/os-release; echo "    $PRETTY_NAME"'
    say "    $IMAGE_DEBIAN: $(image_size_mb "$IMAGE_DEBIAN") MB"
}

# ---------------------------------------------------------------- image-stackgen
STACKGEN_SOURCES=(pyproject.toml README.md Dockerfile stackgen bases components schemas)
key_image_stackgen() {
    echo "rootfs=$(basename "$(rootfs_tar stackgen)") tag=$IMAGE_STACKGEN"
    echo "sources=$(hash_tree "${STACKGEN_SOURCES[@]}") recipe=wheels-1"
}
outputs_image_stackgen() { echo "image:$IMAGE_STACKGEN"; }
run_image_stackgen() {
    need_docker
    [[ -x $VENV/bin/python ]] || die "the venv step has not run (bin/setup venv)"
    local version
    version=$("$VENV/bin/python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$ROOT/pyproject.toml")
    [[ $IMAGE_STACKGEN == *":$version" ]] ||
        die "IMAGE_STACKGEN ($IMAGE_STACKGEN) does not carry pyproject.toml's version $version"
    local ctx=$SCRATCH/ctx base
    mkdir -p "$ctx/wheels"
    cp "$ROOT/Dockerfile" "$ctx/Dockerfile"
    say "    pip wheel '.[dispatcher]' (stackgen and every dependency, on the host)"
    # A copy of the sources, so the in-tree build leaves nothing behind in the checkout.
    mkdir -p "$SCRATCH/src"
    cp -a "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/bases" "$ROOT/components" \
        "$ROOT/schemas" "$SCRATCH/src/"
    (cd "$ROOT" && tar --exclude=__pycache__ -cf - stackgen) | tar -C "$SCRATCH/src" -xf -
    "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check \
        --wheel-dir "$ctx/wheels" "$SCRATCH/src[dispatcher]"
    say "    $(find "$ctx/wheels" -name '*.whl' | wc -l) wheels"
    base=$(rootfs_image stackgen)
    # The build stage under a tag of its own, so it is replaced (not left dangling) next time.
    docker_build "$IMAGE_PREFIX/stackgen-build-stage:${IMAGE_STACKGEN##*:}" "$ctx" \
        --target build --build-arg "BASE_IMAGE=$base"
    docker_build "$IMAGE_STACKGEN" "$ctx" --build-arg "BASE_IMAGE=$base"
    local run=(docker run --rm --read-only --tmpfs /tmp --user 65532:65532 "$IMAGE_STACKGEN")
    check_version "stackgen image" "$version" "${run[@]}" --version
    "${run[@]}" dispatcher --help >/dev/null || die "stackgen dispatcher --help failed in the image"
    "${run[@]}" metrics-adapter --help >/dev/null || die "stackgen metrics-adapter --help failed in the image"
    say "    stackgen dispatcher/metrics-adapter --help run (read-only root, user 65532)"
    say "    $IMAGE_STACKGEN: $(image_size_mb "$IMAGE_STACKGEN") MB"
}

# ---------------------------------------------------------------- buildkite-agent (binary)
# Built from the Go module proxy through a generated wrapper module (.tools/src/agent-wrapper,
# never committed) whose replace points drjosh.dev/zzglob (refused by the proxy) at
# images/buildkite-agent/zzglob.
ZZGLOB_DIR=images/buildkite-agent/zzglob
key_buildkite_agent() {
    echo "agent=$BUILDKITE_AGENT_VERSION toolchain=$BUILDKITE_AGENT_GOTOOLCHAIN"
    echo "zzglob=$(hash_tree "$ZZGLOB_DIR") recipe=wrapper-1"
}
outputs_buildkite_agent() { echo "$BIN/buildkite-agent"; }
run_buildkite_agent() {
    require_go 24
    export GOTOOLCHAIN=$BUILDKITE_AGENT_GOTOOLCHAIN
    say "    go test ./... (the zzglob stand-in, $GOTOOLCHAIN)"
    (cd "$ROOT/$ZZGLOB_DIR" && CGO_ENABLED=0 go test -count=1 ./... | sed 's/^/    /')
    local work=$SCRATCH/agent-wrapper t
    mkdir -p "$work"
    cat >"$work/go.mod" <<EOF
// Generated by bin/setup: builds buildkite-agent from the Go module proxy. The proxy refuses
// drjosh.dev/zzglob, so stackgen's stand-in replaces it.
module stackgen.local/agent-wrapper

go ${BUILDKITE_AGENT_GOTOOLCHAIN#go}

require github.com/buildkite/agent/v3 $BUILDKITE_AGENT_VERSION

replace drjosh.dev/zzglob => $ROOT/$ZZGLOB_DIR
EOF
    t=$(now_ms)
    say "    go build github.com/buildkite/agent/v3@$BUILDKITE_AGENT_VERSION (slow when cold)"
    (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X github.com/buildkite/agent/v3/version.buildNumber=stackgen" \
        -o "$SCRATCH/out/buildkite-agent" github.com/buildkite/agent/v3)
    say "    go build took $(fmt_ms $(($(now_ms) - t)))"
    check_version buildkite-agent "version ${BUILDKITE_AGENT_VERSION#v}" "$SCRATCH/out/buildkite-agent" --version
    local help flag
    help=$("$SCRATCH/out/buildkite-agent" start --help)
    for flag in --acquire-job --disconnect-after-job --additional-hooks-paths --ping-mode; do
        grep -q -- "$flag " <<<"$help" || die "buildkite-agent start has no $flag"
    done
    install_bins "$SCRATCH/out" buildkite-agent
    mkdir -p "$TOOLS/src"
    rm -rf "${TOOLS:?}/src/agent-wrapper"
    mv "$work" "$TOOLS/src/agent-wrapper"
}

# ---------------------------------------------------------------- image-agent
# The docker CLI of Debian's docker.io package (only /usr/bin/docker, not the daemon).
docker_cli_deb() {
    local dir=$TOOLS/cache/debs-extra deb
    mkdir -p "$dir"
    deb=$(find "$dir" -name 'docker.io_*.deb' | sort | tail -n 1)
    if [[ -z $deb ]]; then
        (cd "$dir" && apt-get download docker.io >/dev/null 2>&1) ||
            die "apt-get download docker.io failed"
        deb=$(find "$dir" -name 'docker.io_*.deb' | sort | tail -n 1)
    fi
    echo "$deb"
}
key_image_agent() {
    echo "rootfs=$(basename "$(rootfs_tar buildkite-agent)") tag=$IMAGE_AGENT"
    echo "agent=$(file_ids "$BIN/buildkite-agent") files=$(hash_tree images/buildkite-agent/Dockerfile images/buildkite-agent/entrypoint.sh)"
}
outputs_image_agent() { echo "image:$IMAGE_AGENT"; }
run_image_agent() {
    need_docker
    [[ -x $BIN/buildkite-agent ]] || die "buildkite-agent is not built (bin/setup buildkite-agent)"
    local ctx=$SCRATCH/ctx deb base
    mkdir -p "$ctx" "$SCRATCH/deb"
    cp "$ROOT/images/buildkite-agent/Dockerfile" "$ROOT/images/buildkite-agent/entrypoint.sh" "$ctx/"
    cp "$BIN/buildkite-agent" "$ctx/buildkite-agent"
    deb=$(docker_cli_deb)
    dpkg-deb -x "$deb" "$SCRATCH/deb"
    cp "$SCRATCH/deb/usr/bin/docker" "$ctx/docker"
    say "    docker CLI from $(basename "$deb")"
    base=$(rootfs_image buildkite-agent)
    docker_build "$IMAGE_AGENT" "$ctx" --build-arg "BASE=$base"
    check_version "agent image" "version ${BUILDKITE_AGENT_VERSION#v}" docker run --rm "$IMAGE_AGENT" --version
    local help flag
    help=$(docker run --rm "$IMAGE_AGENT" start --help)
    for flag in --acquire-job --disconnect-after-job --additional-hooks-paths --ping-mode; do
        grep -q -- "$flag " <<<"$help" || die "the agent image's buildkite-agent start has no $flag"
    done
    docker run --rm --entrypoint bash "$IMAGE_AGENT" -c \
        'git --version && ssh -V 2>&1 && docker --version && jq --version && curl --version | head -n 1' |
        sed 's/^/    /'
    say "    $IMAGE_AGENT: $(image_size_mb "$IMAGE_AGENT") MB"
}

# ---------------------------------------------------------------- image-git-server
key_image_git_server() {
    echo "rootfs=$(basename "$(rootfs_tar git-server)") tag=$IMAGE_GIT_SERVER"
    echo "files=$(hash_tree images/git-server)"
}
outputs_image_git_server() { echo "image:$IMAGE_GIT_SERVER"; }
run_image_git_server() {
    need_docker
    local ctx=$SCRATCH/ctx base
    mkdir -p "$ctx"
    cp "$ROOT"/images/git-server/{Dockerfile,git-server.sh,nginx.conf} "$ctx/"
    base=$(rootfs_image git-server)
    docker_build "$IMAGE_GIT_SERVER" "$ctx" --build-arg "BASE=$base"
    git_server_smoke_test
    say "    $IMAGE_GIT_SERVER: $(image_size_mb "$IMAGE_GIT_SERVER") MB"
}

# Start the git server with a generated key and user, then clone over SSH and HTTPS from a
# container of the same image (on Docker's bridge network: nothing leaves the machine).
git_server_smoke_test() {
    local cfg=$SCRATCH/git-cfg name ip out
    mkdir -p "$cfg/ssh" "$cfg/repos/hello" "$SCRATCH/client"
    ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/client/id_ed25519"
    cp "$SCRATCH/client/id_ed25519.pub" "$cfg/ssh/authorized_keys"
    echo "hello from the test git server" >"$cfg/repos/hello/README"
    name="stackgen-git-server-check-$$"
    docker run -d --name "$name" -v "$cfg:/config:ro" -e GIT_SERVER_HOSTNAME=git-server \
        -e GIT_HTTP_USER=tester -e GIT_HTTP_PASSWORD=secret-pw "$IMAGE_GIT_SERVER" >/dev/null
    cleanup_later docker rm -f -v "$name"
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")
    out=$(docker run --rm -v "$SCRATCH/client:/client:ro" --entrypoint bash \
        -e IP="$ip" "$IMAGE_GIT_SERVER" -c '
        set -euo pipefail
        up() { timeout 1 bash -c "exec 3<>/dev/tcp/$IP/$1" 2>/dev/null; }
        for i in $(seq 100); do up 443 && up 22 && break; sleep 0.2; done
        install -m 600 /client/id_ed25519 /tmp/key
        export GIT_SSH_COMMAND="ssh -i /tmp/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        git clone -q "git@$IP:hello.git" /tmp/ssh && cat /tmp/ssh/README
        git -c http.sslVerify=false clone -q "https://tester:secret-pw@$IP/hello.git" /tmp/https && cat /tmp/https/README
        if git -c http.sslVerify=false ls-remote "https://tester:wrong@$IP/hello.git" >/dev/null 2>&1; then
            echo "a wrong password was accepted"; exit 1
        fi
        echo ok' 2>&1) || {
        docker logs "$name" 2>&1 | tail -n 20 >&2
        die "git server check failed: $out"
    }
    [[ $out == *ok ]] || die "git server check failed: $out"
    say "    git server: clone over SSH and HTTPS (basic auth) works, a wrong password is refused"
}

# ---------------------------------------------------------------- image-dind
key_image_dind() {
    echo "rootfs=$(basename "$(rootfs_tar dind)") tag=$IMAGE_DIND docker=$DIND_DOCKER_VERSION"
    echo "files=$(hash_tree images/dind)"
}
outputs_image_dind() { echo "image:$IMAGE_DIND"; }
run_image_dind() {
    need_docker
    local ctx=$SCRATCH/ctx base
    mkdir -p "$ctx"
    cp "$ROOT"/images/dind/{Dockerfile,dind-entrypoint.sh} "$ctx/"
    base=$(rootfs_image dind)
    docker_build "$IMAGE_DIND" "$ctx" --build-arg "BASE=$base"
    check_version "dind image" "$DIND_DOCKER_VERSION" docker run --rm --entrypoint dockerd "$IMAGE_DIND" --version
    # As the stack runs it: privileged, dockerd on a unix socket in a shared folder.
    local name="stackgen-dind-check-$$" i
    docker run -d --privileged --name "$name" "$IMAGE_DIND" \
        dockerd --host=unix:///var/run/dind/docker.sock >/dev/null
    cleanup_later docker rm -f -v "$name"
    for i in $(seq 60); do
        docker exec "$name" docker --host=unix:///var/run/dind/docker.sock info >/dev/null 2>&1 && break
        if ((i == 60)) || [[ $(docker inspect -f '{{.State.Running}}' "$name") != true ]]; then
            docker logs "$name" 2>&1 | tail -n 20 >&2
            die "dockerd in the dind image did not answer"
        fi
        sleep 1
    done
    say "    dind: dockerd answers on unix:///var/run/dind/docker.sock in a privileged container"
    say "    $IMAGE_DIND: $(image_size_mb "$IMAGE_DIND") MB"
}

# ---------------------------------------------------------------- image-fake-buildkite
# The fake Buildkite (tests/support/fake_buildkite: standard-library Python) on the stackgen
# image, whose Python it uses; the sandbox (bin/up --sandbox) and the kind e2e tier run it.
FAKE_BUILDKITE_SOURCES=(images/fake-buildkite tests/__init__.py tests/support/__init__.py
    tests/support/fake_buildkite)
key_image_fake_buildkite() {
    echo "tag=$IMAGE_FAKE_BUILDKITE files=$(hash_tree "${FAKE_BUILDKITE_SOURCES[@]}")"
    echo "base=$(docker image inspect -f '{{.Id}}' "$IMAGE_STACKGEN" 2>/dev/null || echo none)"
}
outputs_image_fake_buildkite() { echo "image:$IMAGE_FAKE_BUILDKITE"; }
run_image_fake_buildkite() {
    need_docker
    docker image inspect "$IMAGE_STACKGEN" >/dev/null 2>&1 ||
        die "$IMAGE_STACKGEN is missing (bin/setup image-stackgen)"
    local ctx=$SCRATCH/ctx
    mkdir -p "$ctx/tests/support"
    cp "$ROOT/images/fake-buildkite/Dockerfile" "$ctx/"
    cp "$ROOT/tests/__init__.py" "$ctx/tests/"
    cp "$ROOT/tests/support/__init__.py" "$ctx/tests/support/"
    (cd "$ROOT/tests/support" && tar --exclude=__pycache__ -cf - fake_buildkite) |
        tar -C "$ctx/tests/support" -xf -
    docker_build "$IMAGE_FAKE_BUILDKITE" "$ctx" --build-arg "BASE=$IMAGE_STACKGEN"
    # As the sandbox runs it: read-only root, user 65532; it must serve, and refuse a wrong token.
    local name="stackgen-fake-buildkite-check-$$" ip out
    docker run -d --name "$name" --read-only --tmpfs /tmp -e FAKE_BUILDKITE_TOKEN=check-token \
        "$IMAGE_FAKE_BUILDKITE" >/dev/null
    cleanup_later docker rm -f -v "$name"
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")
    out=$(docker run --rm --entrypoint python3 -e URL="http://$ip:8080" "$IMAGE_FAKE_BUILDKITE" -c '
import os, time, urllib.error, urllib.request
url = os.environ["URL"]
def status(token):
    req = urllib.request.Request(url + "/v3/token", headers={"Authorization": "Token " + token})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
for _ in range(100):
    try:
        good = status("check-token")
        break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("the fake did not answer on " + url)
print("ok" if (good, status("wrong")) == (200, 401) else f"unexpected: {good}")
' 2>&1) || true
    if [[ $out != ok ]]; then
        docker logs "$name" 2>&1 | tail -n 20 >&2
        die "fake Buildkite image check failed: $out"
    fi
    say "    fake Buildkite: serves the agent API on 0.0.0.0:8080 (read-only root, user 65532)"
    say "    $IMAGE_FAKE_BUILDKITE: $(image_size_mb "$IMAGE_FAKE_BUILDKITE") MB"
}

# ---------------------------------------------------------------- kube-node (binaries)
# kubelet, kubeadm, kubectl and kube-proxy for the node image, from the same Kubernetes
# version and with the same version ldflags as the control-plane step, through a wrapper
# module like its own (.tools/src/kube-node-wrapper).
NODE_BINS=(kubelet kubeadm kubectl kube-proxy)
key_kube_node() {
    echo "kubernetes=$KUBERNETES_VERSION go=$(go_version)"
    echo "ldflags=$(kube_ldflags)"
    echo "recipe=wrapper-module-1"
}
outputs_kube_node() { local b; for b in "${NODE_BINS[@]}"; do echo "$KIND_NODE_BIN/$b"; done; }
run_kube_node() {
    require_go 24
    local work=$SCRATCH/kube-node-wrapper t
    kube_wrapper_module "$work" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm \
        k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy
    t=$(now_ms)
    say "    go build kubelet kubeadm kubectl kube-proxy"
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags "$(kube_ldflags)" -o "$SCRATCH/out/" \
        k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm \
        k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy)
    say "    go build took $(fmt_ms $(($(now_ms) - t)))"
    check_version kubelet "Kubernetes $KUBERNETES_VERSION" "$SCRATCH/out/kubelet" --version
    check_version kubeadm "$KUBERNETES_VERSION" "$SCRATCH/out/kubeadm" version -o short
    check_version kubectl "$KUBERNETES_VERSION" "$SCRATCH/out/kubectl" version --client
    check_version kube-proxy "Kubernetes $KUBERNETES_VERSION" "$SCRATCH/out/kube-proxy" --version
    mkdir -p "$KIND_NODE_BIN"
    local b
    for b in "${NODE_BINS[@]}"; do mv -f "$SCRATCH/out/$b" "$KIND_NODE_BIN/$b"; done
    rm -rf "${TOOLS:?}/src/kube-node-wrapper"
    mv "$work" "$TOOLS/src/kube-node-wrapper"
}

# ---------------------------------------------------------------- crictl
# kind uses crictl in the node (`kind load` asks it which images are there already).
key_crictl() { echo "crictl=$CRICTL_VERSION go=$(go_version) flags=trimpath,s,w"; }
outputs_crictl() { echo "$KIND_NODE_BIN/crictl"; }
run_crictl() {
    require_go 24
    go_install "$SCRATCH" "" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    mkdir -p "$KIND_NODE_BIN"
    mv -f "$SCRATCH/crictl" "$KIND_NODE_BIN/crictl"
}

# ---------------------------------------------------------------- coredns
key_coredns() { echo "coredns=$COREDNS_VERSION go=$(go_version) flags=trimpath,s,w"; }
outputs_coredns() { echo "$KIND_NODE_BIN/coredns"; }
run_coredns() {
    require_go 24
    go_install "$SCRATCH" "" "github.com/coredns/coredns@$COREDNS_VERSION"
    check_version coredns "CoreDNS-${COREDNS_VERSION#v}" "$SCRATCH/coredns" -version
    mkdir -p "$KIND_NODE_BIN"
    mv -f "$SCRATCH/coredns" "$KIND_NODE_BIN/coredns"
}

# ---------------------------------------------------------------- kind-node (the image)
NODE_BIN_FILES=("$KIND_NODE_BIN"/{kubelet,kubeadm,kubectl,kube-proxy,coredns,crictl}
    "$BIN"/{kube-apiserver,kube-controller-manager,kube-scheduler,etcd,stackgen-runc})

# file_ids FILE...: a short key of the files' sizes and modification times (binaries are
# replaced by a rename when rebuilt, so this changes when they do; hashing them takes seconds).
file_ids() {
    local f
    for f in "$@"; do stat -c '%n %s %Y' "$f" 2>/dev/null || echo "$f none"; done | sha256sum | cut -c1-16
}
kind_module_dir() {
    (cd "$SCRATCH" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION") |
        "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}
key_kind_node() {
    echo "tag=$KIND_LOCAL_NODE_IMAGE kind=$KIND_VERSION kubernetes=$KUBERNETES_VERSION coredns=$COREDNS_VERSION"
    echo "rootfs=$(basename "$(rootfs_tar kind-node)") $(basename "$(rootfs_tar kind-node/kube-proxy)") $(basename "$(rootfs_tar debian)")"
    echo "binaries=$(file_ids "${NODE_BIN_FILES[@]}")"
    echo "files=$(hash_tree images/kind-node) recipe=1"
}
outputs_kind_node() { echo "image:$KIND_LOCAL_NODE_IMAGE"; }
run_kind_node() {
    need_docker
    require_go 24
    local b
    for b in "${NODE_BIN_FILES[@]}"; do
        [[ -x $b ]] || die "$b is missing (bin/setup control-plane runc-wrapper kube-node crictl coredns)"
    done
    local src=$ROOT/images/kind-node base debian_ref kind_dir t
    debian_ref=$(rootfs_image debian)

    # 1. The component images, named as `kubeadm config images list` says.
    local -A want=()
    local line
    while read -r line; do
        want[$(sed -E 's|^.*/([^/:]+):.*$|\1|' <<<"$line")]=$line
    done < <("$KIND_NODE_BIN/kubeadm" config images list --kubernetes-version "$KUBERNETES_VERSION")
    for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns pause; do
        [[ -n ${want[$b]:-} ]] || die "kubeadm config images list names no $b image"
    done
    say "    component images: ${want[*]}"
    # Built under our own prefix (the host's Docker never holds registry.k8s.io names), and
    # renamed inside the node's containerd.
    local -A local_ref=()
    for b in "${!want[@]}"; do local_ref[$b]="$IMAGE_PREFIX/k8s/$b:${want[$b]##*:}"; done
    local name ctx
    for name in kube-apiserver kube-controller-manager kube-scheduler etcd coredns; do
        ctx=$SCRATCH/img-$name
        mkdir -p "$ctx/bin"
        cp "$src/component.Dockerfile" "$ctx/Dockerfile"
        case $name in
        coredns) cp "$KIND_NODE_BIN/coredns" "$ctx/bin/" ;;
        etcd) cp "$BIN/etcd" "$ctx/bin/" ;;
        *) cp "$BIN/$name" "$ctx/bin/" ;;
        esac
        ln -s "$name" "$ctx/bin/entrypoint"
        docker_build "${local_ref[$name]}" "$ctx" --build-arg "BASE=$debian_ref" --build-arg "NAME=$name"
    done
    ctx=$SCRATCH/img-kube-proxy
    mkdir -p "$ctx/bin"
    cp "$src/kube-proxy/Dockerfile" "$src/kube-proxy/iptables-wrapper" "$ctx/"
    cp "$KIND_NODE_BIN/kube-proxy" "$ctx/bin/"
    docker_build "${local_ref[kube-proxy]}" "$ctx" --build-arg "BASE=$(rootfs_image kind-node/kube-proxy)"
    ctx=$SCRATCH/img-pause
    mkdir -p "$ctx"
    cp "$src/pause/Dockerfile" "$ctx/"
    say "    go test + build pause"
    (cd "$src/pause" && CGO_ENABLED=0 go test -count=1 ./... >/dev/null &&
        CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$ctx/pause" .)
    docker_build "${local_ref[pause]}" "$ctx"

    # 2. The node image: kind's base files + ours + the node binaries on the rootfs.
    kind_dir=$(kind_module_dir)
    [[ -d $kind_dir/images/base/files ]] || die "no images/base/files in $kind_dir"
    ctx=$SCRATCH/node
    mkdir -p "$ctx/kind-base" "$ctx/bin"
    cp -r --no-preserve=mode "$kind_dir/images/base/files/." "$ctx/kind-base/"
    cp -r "$src/files" "$src/Dockerfile" "$ctx/"
    cp "$KIND_NODE_BIN"/{kubelet,kubeadm,kubectl,crictl} "$BIN/stackgen-runc" "$ctx/bin/"
    echo "$KUBERNETES_VERSION" >"$ctx/version"
    base=$(rootfs_image kind-node)
    local stage="$IMAGE_PREFIX/kind-node-stage:${KUBERNETES_VERSION}"
    docker_build "$stage" "$ctx" --build-arg "BASE=$base"

    # 3. The component images into the node's containerd (k8s.io namespace, pinned, not
    # unpacked), in a container of the stage image (containerd started by hand, as kind's own
    # node-image build does), then committed as the node image.
    local previous
    previous=$(docker image inspect -f '{{.Id}}' "$KIND_LOCAL_NODE_IMAGE" 2>/dev/null || true)
    local c="stackgen-kind-node-build-$$"
    docker run -d --name "$c" --entrypoint sleep --security-opt seccomp=unconfined "$stage" infinity >/dev/null
    cleanup_later docker rm -f -v "$c"
    docker exec "$c" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &'
    local i
    for i in $(seq 30); do
        docker exec "$c" ctr version >/dev/null 2>&1 && break
        ((i < 30)) || die "containerd did not start in the build container"
        sleep 1
    done
    t=$(now_ms)
    for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns pause; do
        docker save "${local_ref[$name]}" | docker exec -i "$c" ctr --namespace=k8s.io images import \
            --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - >/dev/null ||
            die "importing ${local_ref[$name]} into the node's containerd failed"
        docker exec "$c" ctr --namespace=k8s.io images tag --force "${local_ref[$name]}" "${want[$name]}" >/dev/null
        docker exec "$c" ctr --namespace=k8s.io images rm "${local_ref[$name]}" >/dev/null
    done
    local have
    have=$(docker exec "$c" ctr --namespace=k8s.io images list -q)
    for name in "${!want[@]}"; do
        grep -qx "${want[$name]}" <<<"$have" || die "${want[$name]} is not in the node's containerd: $have"
    done
    say "    imported ${#want[@]} images into the node's containerd in $(fmt_ms $(($(now_ms) - t)))"
    docker exec "$c" bash -c 'kill "$(cat /run/containerd/containerd.pid 2>/dev/null || pidof containerd)"' || true
    for i in $(seq 30); do
        docker exec "$c" pidof containerd >/dev/null 2>&1 || break
        sleep 0.5
    done
    docker exec "$c" rm -rf /tmp/containerd.log /run/containerd
    docker stop -t 1 "$c" >/dev/null
    docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
        --change 'CMD []' "$c" "$KIND_LOCAL_NODE_IMAGE" >/dev/null
    docker rm -f -v "$c" >/dev/null
    docker rmi "$stage" >/dev/null
    # The node image this tag named before is garbage now.
    if [[ -n $previous && $previous != "$(docker image inspect -f '{{.Id}}' "$KIND_LOCAL_NODE_IMAGE")" ]]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
    say "    $KIND_LOCAL_NODE_IMAGE: $(image_size_mb "$KIND_LOCAL_NODE_IMAGE") MB"
}
