#!/usr/bin/env bash
# Browser test of the web page at / (tests/e2e/browser/page_test.js): headless Debian Chromium driven
# by playwright-core from npm against real daemons; screenshots go to tests/e2e/out/ (or
# $PAGE_TEST_OUT) and their paths are printed. Installs what is missing (chromium and nodejs/npm
# with apt-get when root; playwright-core with npm ci from the committed package-lock.json). Exits
# 77 (reported as SKIP by tests/run.sh) only when that cannot be done.
set -u
cd "$(dirname "$0")/../.."
export BIN=${BIN:-bin}
skip() { echo "SKIP: $*"; exit 77; }

apt_install() {  # packages...
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || return 1
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null 2>&1 || return 1; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium (apt-get)"
    apt_install chromium || skip "Chromium is not installed and cannot be installed here (needs root and the Debian archive): apt-get install chromium"
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "installing nodejs and npm (apt-get)"
    apt_install nodejs npm || skip "node/npm are not installed and cannot be installed here: apt-get install nodejs npm"
fi
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$major" -ge 18 ] || skip "node $(node --version 2>/dev/null) is older than 18 (playwright-core needs 18+)"
if [ ! -f tests/e2e/browser/node_modules/playwright-core/package.json ]; then
    echo "installing playwright-core (npm ci)"
    (cd tests/e2e/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) ||
        skip "playwright-core cannot be installed from the npm registry (cd tests/e2e/browser && npm ci)"
fi
exec timeout 120 node tests/e2e/browser/page_test.js
