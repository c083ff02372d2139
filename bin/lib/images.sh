# Building the project's container images without a registry (sourced by bin/setup after
# bin/lib/common.sh and bin/lib/docker-engine.sh).
#
# Every image starts from a Debian root file system made on the host:
#   1. `debootstrap --variant=minbase` of DEBIAN_SUITE from the Debian mirror, once, cached as
#      a tarball under .tools/cache/rootfs/ (its .debs under .tools/cache/debs/);
#   2. per image, that tarball unpacked and `apt-get install --no-install-recommends` of the
#      image's package list (images/NAME/packages) in a chroot, run in a private mount
#      namespace (unshare) so its /proc and /dev mounts vanish with it; cached as a tarball
#      keyed by the package list;
#   3. `docker import` of that tarball, then `docker build` (the legacy builder, which never
#      pulls a FROM that exists locally) of images/NAME/Dockerfile with BASE set to it.
# Nothing runs apt or pip inside a container: containers never need the network.
# shellcheck shell=bash

DEBIAN_MIRROR=${STACKGEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${STACKGEN_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
IMAGES_CACHE="$TOOLS/cache"
ROOTFS_CACHE="$IMAGES_CACHE/rootfs"
DEBS_CACHE="$IMAGES_CACHE/debs"
# Bump when the rootfs recipe below changes in a way that changes its output.
ROOTFS_RECIPE=2

need_root() { ((EUID == 0)) || die "$1 needs root (debootstrap, chroot and mount namespaces)"; }

# host_packages PKG...: install Debian packages on the host when a command is missing.
host_packages() {
    local missing=() p
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    need_root "installing ${missing[*]}"
    say "    apt-get install ${missing[*]} (on the host)"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
        install --no-install-recommends "${missing[@]}")
    "${apt[@]}" >/dev/null 2>&1 || {
        env DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null 2>&1 || true
        "${apt[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    }
}

# The minbase tarball's path (its name carries its recipe key).
minbase_tar() {
    local key
    key=$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$ROOTFS_RECIPE" | sha256sum | cut -c1-12)
    echo "$ROOTFS_CACHE/minbase-$DEBIAN_SUITE-$key.tar"
}

# Make the minbase tarball unless it is cached.
ensure_minbase() {
    local out
    out=$(minbase_tar)
    [[ -f $out ]] && return 0
    need_root "debootstrap"
    host_packages debootstrap
    mkdir -p "$ROOTFS_CACHE" "$DEBS_CACHE"
    local tmp t
    tmp=$(mktemp -d "$ROOTFS_CACHE/.tmp.minbase.XXXXXX")
    t=$(now_ms)
    say "    debootstrap --variant=minbase $DEBIAN_SUITE $DEBIAN_MIRROR (log: ${tmp#"$ROOT"/}.log)"
    if ! unshare --mount --propagation private -- \
        debootstrap --variant=minbase --cache-dir="$DEBS_CACHE" \
        "$DEBIAN_SUITE" "$tmp/root" "$DEBIAN_MIRROR" >"$tmp.log" 2>&1; then
        tail -n 20 "$tmp.log" >&2
        safe_rm_tree "$tmp" "$ROOTFS_CACHE"
        die "debootstrap failed (log: $tmp.log)"
    fi
    say "    debootstrap took $(fmt_ms $(($(now_ms) - t)))"
    # What debian:*-slim does: no documentation, manual pages or translations in images.
    cat >"$tmp/root/etc/dpkg/dpkg.cfg.d/stackgen-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
    find "$tmp/root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "${tmp:?}/root/usr/share/man/"* "${tmp:?}/root/usr/share/info/"* "${tmp:?}/root/usr/share/locale/"*
    find "$tmp/root/var/cache/apt/archives" -name '*.deb' -delete
    cat >"$tmp/root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main
EOF
    tar --numeric-owner -C "$tmp/root" --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' -cf "$tmp/out.tar" .
    mv "$tmp/out.tar" "$out"
    safe_rm_tree "$tmp" "$ROOTFS_CACHE"
    rm -f "$tmp.log"
    # Older minbase tarballs (another recipe) are of no use any more.
    find "$ROOTFS_CACHE" -maxdepth 1 -name "minbase-*.tar" ! -path "$out" -delete
}

# The package list of an image: images/NAME/packages without comments, sorted.
image_packages() {
    local f="$ROOT/images/$1/packages"
    [[ -f $f ]] || return 0
    sed -e 's/#.*//' "$f" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u
}

# rootfs_tar NAME: the path of NAME's root file system tarball (its name carries its key:
# the minbase tarball, the package list and this recipe).
rootfs_tar() {
    local key
    key=$({
        basename "$(minbase_tar)"
        image_packages "$1"
        echo "recipe=$ROOTFS_RECIPE"
    } | sha256sum | cut -c1-12)
    echo "$ROOTFS_CACHE/${1//\//-}-$key.tar"
}

# ensure_rootfs NAME: make NAME's root file system tarball unless it is cached: the minbase
# tarball, upgraded (security fixes), plus images/NAME/packages.
ensure_rootfs() {
    local name=$1 out
    out=$(rootfs_tar "$name")
    [[ -f $out ]] && return 0
    ensure_minbase
    need_root "a root file system"
    local tmp pkgs t
    mapfile -t pkgs < <(image_packages "$name")
    tmp=$(mktemp -d "$ROOTFS_CACHE/.tmp.${name//\//-}.XXXXXX")
    mkdir "$tmp/root"
    tar --numeric-owner -C "$tmp/root" -xf "$(minbase_tar)"
    cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
    printf '#!/bin/sh\n# no services start while an image is built\nexit 101\n' >"$tmp/root/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/root/usr/sbin/policy-rc.d"
    t=$(now_ms)
    say "    rootfs $name: apt-get upgrade + install ${pkgs[*]:-(nothing)} (log: ${tmp#"$ROOT"/}.log)"
    # A private mount namespace: /proc, /dev and the .deb cache are mounted for the chroot only
    # and disappear with the namespace, whatever happens.
    # shellcheck disable=SC2016 # the script is expanded by the inner bash
    if ! unshare --mount --propagation private -- bash -euo pipefail -c '
        r=$1 debs=$2; shift 2
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount --bind "$debs" "$r/var/cache/apt/archives"
        apt=(chroot "$r" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -q
             -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0)
        "${apt[@]}" update
        "${apt[@]}" upgrade
        if (($#)); then "${apt[@]}" install --no-install-recommends "$@"; fi
    ' rootfs "$tmp/root" "$DEBS_CACHE" "${pkgs[@]}" >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        safe_rm_tree "$tmp" "$ROOTFS_CACHE"
        die "installing packages into the $name root file system failed (log: $tmp.log)"
    fi
    rm -f "$tmp/root/usr/sbin/policy-rc.d" "$tmp/root/etc/resolv.conf"
    : >"$tmp/root/etc/resolv.conf"
    # (the .deb cache was mounted over var/cache/apt/archives in the namespace only)
    find "$tmp/root/var/cache/apt/archives" -name '*.deb' -delete
    rm -rf "${tmp:?}/root/var/lib/apt/lists/"* "${tmp:?}/root/var/cache/apt/"*.bin \
        "${tmp:?}/root/var/log/"*.log "${tmp:?}/root/var/log/apt/"* "${tmp:?}/root/tmp/"*
    tar --numeric-owner -C "$tmp/root" --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' -cf "$tmp/out.tar" .
    mv "$tmp/out.tar" "$out"
    safe_rm_tree "$tmp" "$ROOTFS_CACHE"
    rm -f "$tmp.log"
    say "    rootfs $name: $(du -m "$out" | cut -f1) MB in $(fmt_ms $(($(now_ms) - t)))"
    # Tarballs of NAME made with another key are stale.
    find "$ROOTFS_CACHE" -maxdepth 1 -name "${name//\//-}-????????????.tar" ! -path "$out" -delete
}

# rootfs_image NAME: `docker import` NAME's rootfs tarball (once) and print the image's name,
# stackgen.local/rootfs-NAME:<key>.
rootfs_image() {
    local name=$1 tar ref
    ensure_rootfs "$name" >&2 # (progress on stderr: stdout is the image's name)
    tar=$(rootfs_tar "$name")
    ref="$IMAGE_PREFIX/rootfs-${name//\//-}:$(basename "$tar" .tar | sed "s/^${name//\//-}-//")"
    if ! docker image inspect "$ref" >/dev/null 2>&1; then
        docker import "$tar" "$ref" >/dev/null
        # Root file systems of this image with another key are stale.
        local stale
        docker images --format '{{.Repository}}:{{.Tag}}' "${ref%:*}" | while read -r stale; do
            [[ $stale == "$ref" ]] || docker rmi "$stale" >/dev/null 2>&1 || true
        done
    fi
    echo "$ref"
}

# docker_build TAG CONTEXT [docker build args...]: the legacy builder (never pulls a local FROM).
docker_build() {
    local tag=$1 ctx=$2
    shift 2
    local log old
    say "    docker build -t $tag"
    old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    log=$(mktemp)
    if ! DOCKER_BUILDKIT=0 docker build --force-rm -t "$tag" "$@" "$ctx" >"$log" 2>&1; then
        grep -v -e '^DEPRECATED' -e '^ *BuildKit is' -e '^ *environment-variable' "$log" | tail -n 25 >&2
        rm -f "$log"
        die "docker build of $tag failed"
    fi
    rm -f "$log"
    # The image this tag named before is garbage now (unless something else uses it).
    if [[ -n $old && $old != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
}

# image_exists REF
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# image_size_mb REF
image_size_mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%d", $1 / 1000000 }'; }

# hash_tree PATH...: a hash of the files below PATH (names and contents), for stamp keys.
hash_tree() {
    (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
        sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}
