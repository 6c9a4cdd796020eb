#!/usr/bin/env bash
# tests/browser/setup.sh -- a headless Chromium (Debian's chromium package) for the dashboard tests.
#
# Idempotent: installs chromium when it is missing, then renders a blank page once to
# prove it runs. Its last line is "chromium ready".
# Exit status: 0 ready, 1 failed, 3 not root and chromium missing (the tests skip).
set -euo pipefail

if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "[mpihub-browser] not root and no chromium: the dashboard's browser tests will skip" >&2
    exit 3
  fi
  aptlog=$(mktemp)
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
      >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog"; rm -f "$aptlog"
    echo "[mpihub-browser] apt-get install chromium failed" >&2
    exit 1
  fi
  rm -f "$aptlog"
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
if ! timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --user-data-dir="$profile" \
    --dump-dom 'data:text/html,<p id="ok">ok</p>' 2>/dev/null | grep -q 'id="ok"'; then
  echo "[mpihub-browser] chromium is installed but does not render" >&2
  exit 1
fi
echo "chromium ready ($(chromium --version 2>/dev/null | head -n 1))"
