#!/usr/bin/env bash
# The test command (README: `npm test`): builds what is missing, type-checks, runs vitest
# on real processes, and ends with one summary line "N passed, N failed, N skipped".
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
set -e
[ -f build/Release/remus_native.node ] || npx --no-install node-gyp rebuild -j "$(nproc)"
npx --no-install tsc -p tsconfig.json
npx --no-install tsc -p test/tsconfig.json --noEmit
set +e
report=$(mktemp -t remus-vitest-XXXXXX.json)
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
rc=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' "$report" 2>/dev/null || echo "0 passed, 1 failed"
rm -f "$report"
exit $rc
