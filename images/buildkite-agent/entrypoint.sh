#!/bin/bash
# Entrypoint of stackgen's buildkite-agent image: run the scripts in /docker-entrypoint.d
# (if any, in order; like the official image), then the agent under tini (reaps the job's
# orphans and forwards signals, so a pod's TERM reaches the agent).
set -euo pipefail
if [[ -d /docker-entrypoint.d ]] && compgen -G '/docker-entrypoint.d/*' >/dev/null; then
    for script in /docker-entrypoint.d/*; do
        [[ -x $script ]] || continue
        "$script"
    done
fi
exec /usr/bin/tini -- /usr/local/bin/buildkite-agent "$@"
