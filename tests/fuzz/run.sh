#!/usr/bin/env bash
# Runs libFuzzer targets for N seconds each: tests/fuzz/run.sh SECONDS TARGET...
# Seeds: tests/fuzz/corpus/TARGET (committed); new inputs: build/fuzz/corpus/TARGET.
set -u
cd "$(dirname "$0")/../.."
secs=$1; shift
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
rc=0
for t in "$@"; do
    mkdir -p "build/fuzz/corpus/$t" build/fuzz/artifacts
    maxlen=4096; [ "$t" = safetensors ] && maxlen=200000
    echo "fuzz_$t: ${secs}s"
    if ! build/fuzz/bin/fuzz_"$t" -max_total_time="$secs" -max_len=$maxlen -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=build/fuzz/artifacts/"$t"- -print_final_stats=1 \
        "build/fuzz/corpus/$t" "tests/fuzz/corpus/$t" > "build/fuzz/$t.log" 2>&1; then
        echo "FAIL fuzz_$t (log build/fuzz/$t.log):"; tail -40 "build/fuzz/$t.log"; rc=1
    else
        grep -E "stat::number_of_executed_units|stat::new_units_added" "build/fuzz/$t.log" | sed 's/^/    /'
    fi
done
exit $rc
