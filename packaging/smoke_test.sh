#!/usr/bin/env bash
# Launch the frozen app offscreen and run its self-test: a tiny prune end to end (exit 0 = works).
set -euo pipefail
cd "$(dirname "$0")/.."
app=dist/prunestudio/prunestudio
[ -x "$app" ] || { echo "no build at $app: run 'make package' first" >&2; exit 1; }
export QT_QPA_PLATFORM=offscreen PRUNESTUDIO_DATA="$(mktemp -d)"
"$app" --self-test
echo "frozen app self-test passed"
