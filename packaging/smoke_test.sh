#!/usr/bin/env bash
# Launch the frozen app offscreen: its self-test (a tiny prune end to end on the app's own worker),
# then the main window, saved as a screenshot (exit 0 = works).
set -euo pipefail
cd "$(dirname "$0")/.."
app=dist/prunestudio/prunestudio
[ -x "$app" ] || { echo "no build at $app: run 'make package' first" >&2; exit 1; }
export QT_QPA_PLATFORM=offscreen PRUNESTUDIO_DATA="$(mktemp -d)"
"$app" --self-test
echo "frozen app self-test passed"
# the main window opens with its resources, and closes cleanly
shot=dist/prunestudio-smoke.png
rm -f "$shot"
"$app" --smoke-test --screenshot "$shot"
[ -s "$shot" ] || { echo "the frozen app's window did not open" >&2; exit 1; }
echo "frozen app window opened (screenshot: $shot)"
