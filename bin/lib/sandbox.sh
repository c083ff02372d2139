# bin/up --sandbox (kind only): the fake Buildkite and the test git server in the cluster, and
# the stack pointed at the fake (sourced by bin/up after bin/lib/common.sh; uses its STATE, kc,
# BIN, ROOT and the IMAGE_* pins).
#
# - The sandbox's objects (namespace stackgen-sandbox: the fake Buildkite's Deployment, Service
#   and token Secret, the git server's) come from tests/support/sandbox.py, made from the built
#   stack: the fake gets the stack's own agent token (copied from the stack's Secret as base64,
#   straight into kubectl apply, never printed), the git server the stack's SSH key (its public
#   half) and, over HTTPS, the stack's git-credentials line for its host. Its SSH host key stays
#   in STATE/sandbox/ (STACKGEN_SANDBOX_GIT_HOST_KEY names another), with the known_hosts line
#   a stack needs in STATE/sandbox/known_hosts. STACKGEN_SANDBOX_QUEUES (space-separated)
#   names more queues the fake knows from the start (for stacks applied later beside it).
# - The stack itself goes through one more kustomize layer (STATE/sandbox/stack-layer/, like
#   --images local's): the agents' and the metrics adapter's BUILDKITE_AGENT_ENDPOINT (their
#   ConfigMaps, found by label) and the dispatcher's STACKGEN_BUILDKITE_ENDPOINT (which
#   overrides its config's buildkite.endpoint) become the fake's Service. The overlay is never
#   edited; without --sandbox none of this happens and the stack talks to Buildkite.
# shellcheck shell=bash

SANDBOX_NAMESPACE=stackgen-sandbox
# shellcheck disable=SC2034  # used by bin/up
SANDBOX_IMAGES=("$IMAGE_FAKE_BUILDKITE" "$IMAGE_GIT_SERVER")

sandbox_python() {
    [[ -x $ROOT/.venv/bin/python ]] || die "--sandbox needs the venv (bin/setup venv)"
    (cd "$ROOT" && "$ROOT/.venv/bin/python" -m tests.support.sandbox "$@")
}

# sandbox_layer IN OUT: the built stack, pointed at the sandbox's fake Buildkite.
sandbox_layer() {
    local dir=$STATE/sandbox/stack-layer endpoint
    endpoint=$(sandbox_python endpoint)
    rm -rf "${dir:?}"
    mkdir -p "$dir"
    cp "$1" "$dir/stack.yaml"
    cat >"$dir/kustomization.yaml" <<EOF
# Written by bin/up --sandbox: the stack as built, talking to the sandbox's fake Buildkite
# ($endpoint) instead of Buildkite.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [stack.yaml]
patches:
  - target: {kind: ConfigMap, labelSelector: "app.kubernetes.io/component=agent-config"}
    patch: |-
      - {op: replace, path: /data/BUILDKITE_AGENT_ENDPOINT, value: "$endpoint"}
  - target: {kind: ConfigMap, labelSelector: "app.kubernetes.io/component=metrics-adapter-config"}
    patch: |-
      - {op: replace, path: /data/BUILDKITE_AGENT_ENDPOINT, value: "$endpoint"}
  - target: {kind: Deployment, labelSelector: "app.kubernetes.io/component=dispatcher"}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: STACKGEN_BUILDKITE_ENDPOINT, value: "$endpoint"}
EOF
    "$BIN/kustomize" build "$dir" >"$2" || die "kustomize build of $dir failed"
    # Nothing of the stack may still name Buildkite's endpoint.
    if grep -n 'BUILDKITE_AGENT_ENDPOINT: .*agent\.buildkite\.com' "$2" >&2; then
        die "the sandbox layer left Buildkite's endpoint in the stack (above); nothing was applied"
    fi
}

# sandbox_apply STACK: the sandbox's own objects for STACK, applied and waited for.
sandbox_apply() {
    local key=() out
    if [[ -n ${STACKGEN_SANDBOX_GIT_HOST_KEY:-} ]]; then
        key=(--git-host-key "$(realpath "$STACKGEN_SANDBOX_GIT_HOST_KEY")")
    fi
    say "==> sandbox: fake Buildkite and test git server in namespace $SANDBOX_NAMESPACE"
    # The queues the running fake knows stay (another stack's), so its pod is left alone.
    local existing
    existing=$(kc -n "$SANDBOX_NAMESPACE" get deployment fake-buildkite --ignore-not-found \
        -o jsonpath='{.spec.template.spec.containers[0].args}' 2>/dev/null || true)
    # Straight from the generator into kubectl: the token Secret is never on screen or disk.
    local extra=() q
    for q in ${STACKGEN_SANDBOX_QUEUES:-}; do extra+=(--queue "$q"); done
    out=$(sandbox_python manifests "$1" --state-dir "$STATE/sandbox" \
        --fake-image "$IMAGE_FAKE_BUILDKITE" --git-image "$IMAGE_GIT_SERVER" "${key[@]}" \
        --existing-args "${existing:-[]}" "${extra[@]}" | kc apply -f -) ||
        die "applying the sandbox failed"
    local line
    while IFS= read -r line; do say "    $line"; done <<<"$out"
    local d
    for d in fake-buildkite git-server; do
        kc -n "$SANDBOX_NAMESPACE" rollout status "deployment/$d" --timeout="${TIMEOUT}s" >/dev/null ||
            die "sandbox: deployment/$d did not become available (kubectl -n $SANDBOX_NAMESPACE describe pods)"
        say "    ready: deployment/$d (namespace $SANDBOX_NAMESPACE)"
    done
}

sandbox_notes() {
    say "    sandbox:    the stack talks to the fake Buildkite at $(sandbox_python endpoint)"
    say "               enqueue a job: bin/sandbox ${SANDBOX_WHERE} enqueue --queue QUEUE --wait -- echo hello"
    say "               then:          bin/sandbox ${SANDBOX_WHERE} jobs | log UUID | agents"
    say "               git server:    git@git-server.$SANDBOX_NAMESPACE.svc.cluster.local:sandbox.git," \
        "https://git-server.$SANDBOX_NAMESPACE.svc.cluster.local/sandbox.git"
    say "               its known_hosts line: $STATE/sandbox/known_hosts"
}
