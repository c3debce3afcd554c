#!/usr/bin/env bash
# The test command (README): builds what is missing, then runs vitest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ -f build/Release/remus_native.node ] || npx --no-install node-gyp rebuild -j "$(nproc)"
[ -f dist/index.js ] || npx --no-install tsc -p tsconfig.json
npx --no-install tsc -p test/tsconfig.json --noEmit
exec npx --no-install vitest run "$@"
