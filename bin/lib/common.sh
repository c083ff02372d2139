# Helpers shared by bin/setup, bin/test, bin/up, bin/down and bin/docker-engine (sourced, not run).
#
# The sourcing script sets PROG (its name in messages, e.g. "bin/up") before sourcing and
# may define ROOT; this file defines ROOT if it is unset.
# shellcheck shell=bash

: "${PROG:=$(basename "$0")}"
if [[ -z ${ROOT:-} ]]; then
    ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fi

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }

# Print the leading comment block of a script (its usage text).
usage_of() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$1"; }

# Milliseconds since the epoch, and a duration in ms formatted as "12.3s".
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
fmt_ms() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }
# Time since START_MS (set when this file is sourced; a script may reset it).
START_MS=$(now_ms)
elapsed() { fmt_ms $(($(now_ms) - START_MS)); }

# heartbeat LABEL COMMAND...: run COMMAND (its output as it comes) and, while it runs, print
# "    ... [STEP] LABEL: still running after 1m20s" every STACKGEN_HEARTBEAT_SECONDS (default
# 20), so a long `go build` or `pip install` is never silent (one short line each time:
# readable in CI logs). STEP is $HEARTBEAT_STEP when set. Returns COMMAND's exit status.
heartbeat() {
    local label=${HEARTBEAT_STEP:+[$HEARTBEAT_STEP] }$1 every=${STACKGEN_HEARTBEAT_SECONDS:-20}
    local start ticker rc=0 parent=$BASHPID
    shift
    start=${EPOCHREALTIME/./}
    # The ticker: builtins only between its naps, and a TERM that only sets a flag (it may
    # come at any moment; leaving from inside the trap upsets bash's function bookkeeping).
    (
        hb_stop=0
        hb_nap=""
        trap 'hb_stop=1; [[ -z $hb_nap ]] || kill "$hb_nap" 2>/dev/null' TERM
        while ((!hb_stop)) && kill -0 "$parent" 2>/dev/null; do
            sleep "$every" &
            hb_nap=$!
            wait "$hb_nap" || true
            ((!hb_stop)) || break
            hb_now=${EPOCHREALTIME/./}
            hb_took=$(((hb_now - start) / 1000000))
            if ((hb_took < 60)); then
                printf '    ... %s: still running after %ds\n' "$label" "$hb_took"
            else
                printf '    ... %s: still running after %dm%02ds\n' "$label" \
                    $((hb_took / 60)) $((hb_took % 60))
            fi
        done
    ) &
    ticker=$!
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    return "$rc"
}

# The cluster name bin/up and bin/down derive from an overlay folder
# (overlays/example -> stackgen-example; tests/golden/CASE/overlay -> stackgen-CASE).
derive_name() {
    local base
    base=$(basename "$1")
    [[ $base != overlay ]] || base=$(basename "$(dirname "$1")")
    base=$(tr '[:upper:]_.' '[:lower:]--' <<<"$base" | tr -cd 'a-z0-9-')
    echo "stackgen-${base:0:40}"
}

# A cluster name must be a DNS label (kind and kwok use it in container and file names).
valid_cluster_name() { [[ $1 =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]]; }

# Delete a folder this project made, refusing anything outside PREFIX and anything with a
# mount point below it (a chroot's /proc or /dev bind mount must never be followed).
#   safe_rm_tree DIR PREFIX
safe_rm_tree() {
    local dir=${1:?} prefix=${2:?}
    [[ -e $dir || -L $dir ]] || return 0
    dir=$(realpath -s "$dir")
    prefix=$(realpath -s "$prefix")
    [[ $prefix == /?* && $dir == "$prefix"/?* ]] || die "refusing to delete $dir (not under $prefix)"
    if awk -v d="$dir/" '{ if (index($5 "/", d) == 1) { found = 1 } } END { exit !found }' \
        /proc/self/mountinfo; then
        die "refusing to delete $dir: something is mounted below it (see /proc/self/mountinfo)"
    fi
    rm -rf -- "${dir:?}"
}
