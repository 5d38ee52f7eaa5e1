#!/usr/bin/env bash
# Load test (not part of `make test`): wrk with 64 connections for 60 s against bin/performerd on
# the shipped weights, with the route mix of tests/load.lua (health, model, cached GET by id, cached
# POST /predict, new short predictions). Passes when every response is 200 or 429, wrk saw no socket
# errors (timeouts included), the daemon is alive afterwards and stops cleanly, and its peak RSS
# stays under RSS_LIMIT_MB (default 256). Prints the numbers.
#
#   bash tests/load.sh                     # DURATION=60 CONNECTIONS=64 WRK_THREADS=2 RSS_LIMIT_MB=256
#   DURATION=10 bash tests/load.sh         # a quick run
# Needs wrk (Debian package wrk; installed when missing) and curl. Run on an otherwise idle machine
# for meaningful throughput; the pass criteria do not depend on speed.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DURATION=${DURATION:-60}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-256}
WEIGHTS=${WEIGHTS:-weights/model.safetensors}
command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null || { echo "wrk is not installed"; exit 1; }
[ -x "$BIN/performerd" ] || make -s "$BIN/performerd" || exit 1
[ -f "$WEIGHTS" ] || { echo "no weights at $WEIGHTS (make weights/model.safetensors)"; exit 1; }

T=$(mktemp -d /tmp/performerd-load-XXXXXX)
P=
cleanup() { [ -n "$P" ] && kill -9 "$P" 2>/dev/null; [ -z "${KEEP_TMP:-}" ] && rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$BIN"/performerd --bind 127.0.0.1 --port 0 --weights "$WEIGHTS" --db "$T/cache.sqlite" "$@" 2>"$T/d.log" &
P=$!
PORT=
for _ in $(seq 100); do
    PORT=$(grep -o '"msg":"listening".*"port":"[0-9]*"' "$T/d.log" | grep -o '"port":"[0-9]*"' | grep -o '[0-9]*')
    [ -n "$PORT" ] && break
    sleep 0.1
done
[ -n "$PORT" ] || fail "performerd did not start: $(cat "$T/d.log")"
U="http://127.0.0.1:$PORT"

# seed the cache: 16 sequences, their ids
RES=ACDEFGHIKLMNPQRSTVWY
IDS=; SEQS=
for i in $(seq 16); do
    s=""
    for _ in $(seq 40); do s="$s${RES:$((RANDOM % 20)):1}"; done
    s="${s:0:10}<mask>${s:11}"
    id=$(curl -s -H 'Content-Type: application/json' -d "{\"sequence\": \"$s\", \"top_k\": 3}" "$U/predict" |
         grep -o '"id":"[0-9a-f]*"' | head -1 | grep -o '[0-9a-f]\{64\}')
    [ -n "$id" ] || fail "seeding the cache failed"
    IDS="$IDS$id,"; SEQS="$SEQS$s,"
done

# sample the RSS once a second while wrk runs
( peak=0; while kill -0 $P 2>/dev/null; do
      r=$(awk '/^VmRSS/ {print $2}' /proc/$P/status 2>/dev/null); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
      echo "$peak" > "$T/rss"; sleep 1; done ) &
SAMPLER=$!
echo "wrk: ${CONNECTIONS} connections, ${WRK_THREADS} threads, ${DURATION}s, mix of tests/load.lua"
PF_IDS=$IDS PF_SEQS=$SEQS PF_KEY=${PERFORMERD_API_KEY:-} \
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s tests/load.lua "$U" > "$T/wrk.out" 2>&1
cat "$T/wrk.out"
alive=$(curl -s -o /dev/null -w '%{http_code}' "$U/health")
hwm=$(awk '/^VmHWM/ {print $2}' /proc/$P/status)
metrics=$(curl -s "$U/metrics")
kill -TERM $P
wait $P
rc=$?
P=
kill $SAMPLER 2>/dev/null
wait $SAMPLER 2>/dev/null
peak=$(cat "$T/rss" 2>/dev/null || echo 0)
echo "daemon: /health after the run $alive, exit status after SIGTERM $rc, peak RSS $((hwm / 1024)) MiB" \
     "(VmHWM; sampled max $((peak / 1024)) MiB), limit ${RSS_LIMIT_MB} MiB"
echo "$metrics" | grep -E '^performerd_(cache_hits_total|cache_misses_total|queue_rejected_total|forward_sequences_total) '
bad=$(awk '$1 == "bad" {print $2}' "$T/wrk.out")
reqs=$(awk '$1 == "requests" {print $2}' "$T/wrk.out")
sock=$(awk '$1 == "socket_errors" {print $3 + $5 + $7 + $9}' "$T/wrk.out")
[ -n "$reqs" ] && [ "$reqs" -gt 0 ] || fail "wrk made no requests"
[ "$bad" = 0 ] || fail "$bad responses other than 200/429"
[ "$sock" = 0 ] || fail "wrk reported socket errors"
[ "$alive" = 200 ] || fail "the daemon did not answer /health after the run"
[ $rc -eq 0 ] || fail "performerd exit status $rc after SIGTERM"
[ $((hwm / 1024)) -le "$RSS_LIMIT_MB" ] || fail "peak RSS $((hwm / 1024)) MiB over ${RSS_LIMIT_MB} MiB"
echo "PASS: $reqs requests, only 200/429, no socket errors, clean exit, peak RSS $((hwm / 1024)) MiB <= ${RSS_LIMIT_MB} MiB"
