#!/usr/bin/env bash
# Install Debian's chromium for the console's browser tests (driven by Playwright, which never downloads a
# browser of its own here). Best effort: without it those tests fail in CI (CI=true) and skip elsewhere.
set -u
if [ -n "${GRAFT_TEST_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "chromium could not be installed; the console browser tests cannot run" >&2
else
  echo "no chromium and no root to install it; the console browser tests cannot run" >&2
fi
