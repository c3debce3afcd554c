#!/usr/bin/env bash
# npm's install hook: system packages (when root with apt), CRIU, then the native addon.
# CRIU is needed for failover, not for tracking: a failure there is reported, and
# `replicate check` says what is missing, but the install goes on.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/system-deps.sh || echo "[install] warning: system packages could not be installed (see above)" >&2
bash scripts/provision-criu.sh || echo "[install] warning: no usable CRIU; run 'npx replicate check' for details" >&2
npx --no-install node-gyp rebuild -j "$(nproc)"
