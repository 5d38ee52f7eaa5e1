#!/usr/bin/env bash
# Runs every test program and script; prints one line per test and "N passed, N failed, N skipped"
# at the end. A test that exits 77 could not run here (e.g. a browser it cannot install) and is
# reported as SKIP with its reason, not as a pass. BIN selects the build (bin/ or build/asan/bin/).
# Exit status is non-zero when any test failed.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
export BIN
# the daemon reads PERFORMERD_* (an API key exported for daily use would turn the tests' requests into
# 401s): the tests start every daemon with the options they mean
for v in $(compgen -e | grep '^PERFORMERD_'); do unset "$v"; done
pass=0; fail=0; skip=0; failed=()
run_one() {  # name, command...
    local name=$1; shift
    local log; log=$(mktemp)
    local t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        pass=$((pass+1)); printf 'PASS %-40s (%ds)\n' "$name" $((SECONDS-t0))
        grep '^screenshot: ' "$log" | sed 's/^/    | /'   # where a browser test saved its pictures
    elif [ $rc -eq 77 ]; then
        skip=$((skip+1)); printf 'SKIP %-40s %s\n' "$name" "$(grep -m1 '^SKIP' "$log" | cut -c7-)"
    else
        fail=$((fail+1)); failed+=("$name"); printf 'FAIL %-40s (%ds)\n' "$name" $((SECONDS-t0))
        sed 's/^/    | /' "$log" | tail -60
    fi
    [ -n "${VERBOSE:-}" ] && sed 's/^/    | /' "$log"
    rm -f "$log"
}
for t in "$BIN"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for t in tests/e2e/test_*.sh tests/e2e/test_*.py; do
    [ -f "$t" ] || continue
    case "$t" in
        *.sh) run_one "$(basename "$t")" bash "$t" ;;
        *.py) run_one "$(basename "$t")" python3 "$t" ;;
    esac
done
[ $fail -gt 0 ] && printf 'failed: %s\n' "${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
