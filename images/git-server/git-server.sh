#!/bin/bash
# Test git server: git over SSH (port 22, user `git`, git-shell) and over HTTPS with basic
# auth (port 443, nginx + fcgiwrap + git-http-backend). Everything secret is given at run
# time; what is missing is generated and printed, so tests can read it from the log.
#
# Inputs (all optional; mount them from Secrets/ConfigMaps or volumes):
#   /config/ssh/authorized_keys        public keys allowed to use git@HOST:REPO.git
#   /config/ssh/ssh_host_*_key         SSH host keys (else generated: ed25519 + rsa; the
#                                      public keys are printed as known_hosts lines)
#   /config/tls/tls.crt, tls.key       the HTTPS certificate (else a self-signed one for
#                                      $GIT_SERVER_HOSTNAME, printed)
#   /config/http/htpasswd              basic-auth users (nginx/Apache htpasswd format), or
#   $GIT_HTTP_USER / $GIT_HTTP_PASSWORD one user
#   /config/repos/NAME/                a folder of files: becomes NAME.git, one commit on main
#   /config/repos/NAME.git/            a bare repository, copied as it is
#   $GIT_INIT_REPOS                    space-separated names: repositories with one commit
#                                      (a README) on main
#   /config/init.d/*.sh                run last (as root) before the servers start
# Repositories live in /srv/git (owned by git). URLs: git@HOST:NAME.git and
# https://USER:PASSWORD@HOST/NAME.git; pushes are allowed on both.
set -euo pipefail

CONFIG=${GIT_SERVER_CONFIG:-/config}
REPOS=/srv/git
RUN=/run/git-server
HOSTNAME_=${GIT_SERVER_HOSTNAME:-$(hostname -f 2>/dev/null || hostname)}
log() { printf 'git-server: %s\n' "$*"; }

mkdir -p "$RUN" /run/sshd "$REPOS"
install -d -o git -g git -m 0755 "$RUN/fcgi"
chown git:git "$REPOS"

# ---- repositories
as_git() { setpriv --reuid git --regid git --init-groups env HOME=/srv/git "$@"; }
new_repo_from_dir() { # NAME DIR
    local bare="$REPOS/$1.git" work
    [[ -e $bare ]] && return 0
    work=$(mktemp -d)
    cp -a "$2/." "$work/"
    chown -R git:git "$work"
    as_git git -C "$work" init -q -b main
    as_git git -C "$work" add -A
    as_git git -C "$work" -c user.name=git-server -c user.email=git-server@localhost \
        commit -q --allow-empty -m "Initial commit of $1"
    as_git git clone -q --bare "$work" "$bare"
    rm -rf "${work:?}"
    log "repository $1.git (from ${2})"
}
if [[ -d $CONFIG/repos ]]; then
    for src in "$CONFIG"/repos/*; do
        [[ -d $src ]] || continue
        name=$(basename "$src")
        if [[ $name == *.git ]]; then
            if [[ ! -e $REPOS/$name ]]; then
                cp -a "$src" "$REPOS/$name"
                chown -R git:git "$REPOS/$name"
                log "repository $name (copied)"
            fi
        else
            new_repo_from_dir "$name" "$src"
        fi
    done
fi
for name in ${GIT_INIT_REPOS:-}; do
    tmp=$(mktemp -d)
    printf '# %s\n\nServed by the stackgen test git server.\n' "$name" >"$tmp/README.md"
    new_repo_from_dir "$name" "$tmp"
    rm -rf "${tmp:?}"
done
for bare in "$REPOS"/*.git; do
    [[ -d $bare ]] || continue
    as_git git -C "$bare" config http.receivepack true
done

# ---- SSH
install -d -o git -g git -m 0700 /srv/git/.ssh
if [[ -f $CONFIG/ssh/authorized_keys ]]; then
    install -o git -g git -m 0600 "$CONFIG/ssh/authorized_keys" /srv/git/.ssh/authorized_keys
    log "authorized_keys: $(grep -c . /srv/git/.ssh/authorized_keys) key(s)"
else
    : >/srv/git/.ssh/authorized_keys
    chown git:git /srv/git/.ssh/authorized_keys
    log "no $CONFIG/ssh/authorized_keys: nobody can use SSH"
fi
hostkeys=()
for key in "$CONFIG"/ssh/ssh_host_*_key; do
    [[ -f $key ]] || continue
    install -m 0600 "$key" "$RUN/$(basename "$key")"
    hostkeys+=("$RUN/$(basename "$key")")
done
if ((${#hostkeys[@]} == 0)); then
    for type in ed25519 rsa; do
        ssh-keygen -q -t "$type" -N '' -f "$RUN/ssh_host_${type}_key"
        hostkeys+=("$RUN/ssh_host_${type}_key")
    done
    log "generated SSH host keys"
fi
for key in "${hostkeys[@]}"; do
    log "known_hosts: $HOSTNAME_ $(ssh-keygen -y -f "$key")"
done
{
    echo "Port 22"
    for key in "${hostkeys[@]}"; do echo "HostKey $key"; done
    cat <<'CONF'
PidFile /run/git-server/sshd.pid
AuthorizedKeysFile /srv/git/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers git
UsePAM no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY no
PrintMotd no
LogLevel INFO
CONF
} >"$RUN/sshd_config"
/usr/sbin/sshd -t -f "$RUN/sshd_config"

# ---- HTTPS
if [[ -f $CONFIG/tls/tls.crt && -f $CONFIG/tls/tls.key ]]; then
    install -m 0644 "$CONFIG/tls/tls.crt" "$RUN/tls.crt"
    install -m 0600 "$CONFIG/tls/tls.key" "$RUN/tls.key"
else
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$HOSTNAME_" \
        -addext "subjectAltName=DNS:$HOSTNAME_,DNS:localhost,IP:127.0.0.1" \
        -keyout "$RUN/tls.key" -out "$RUN/tls.crt" 2>/dev/null
    log "generated a self-signed certificate for $HOSTNAME_:"
    cat "$RUN/tls.crt"
fi
if [[ -f $CONFIG/http/htpasswd ]]; then
    install -o root -g git -m 0640 "$CONFIG/http/htpasswd" "$RUN/htpasswd"
elif [[ -n ${GIT_HTTP_USER:-} && -n ${GIT_HTTP_PASSWORD:-} ]]; then
    printf '%s:%s\n' "$GIT_HTTP_USER" "$(openssl passwd -apr1 -stdin <<<"$GIT_HTTP_PASSWORD")" >"$RUN/htpasswd"
    chgrp git "$RUN/htpasswd"
    chmod 0640 "$RUN/htpasswd"
else
    : >"$RUN/htpasswd"
    log "no htpasswd and no GIT_HTTP_USER/GIT_HTTP_PASSWORD: nobody can use HTTPS"
fi

if [[ -d $CONFIG/init.d ]]; then
    for script in "$CONFIG"/init.d/*.sh; do
        [[ -f $script ]] || continue
        log "running $script"
        bash "$script"
    done
fi

# ---- servers: if one stops, the container stops
setpriv --reuid git --regid git --init-groups env HOME=/srv/git \
    fcgiwrap -c 2 -s "unix:$RUN/fcgi/fcgiwrap.sock" &
for _ in $(seq 50); do [[ -S $RUN/fcgi/fcgiwrap.sock ]] && break; sleep 0.1; done
nginx -c /etc/git-server/nginx.conf -g 'daemon off;' &
/usr/sbin/sshd -D -e -f "$RUN/sshd_config" &
log "serving $(find "$REPOS" -mindepth 1 -maxdepth 1 -name '*.git' | wc -l) repositories: ssh://git@$HOSTNAME_/~/NAME.git (git@$HOSTNAME_:NAME.git), https://$HOSTNAME_/NAME.git"
set +e
wait -n
rc=$?
log "a server stopped (exit $rc); stopping"
exit "$rc"
