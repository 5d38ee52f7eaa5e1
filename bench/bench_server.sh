#!/usr/bin/env bash
# bench_server.sh - performerd under wrk on loopback (part of `make bench`, see bench/run.sh).
#
# Prints JSON lines on stdout (bench/report.py reads them):
#   titin     one uncached 34,350-residue request on a fresh daemon: wall time, daemon peak RSS
#   server    wrk runs: cache hits and uncached unique short sequences at each concurrency, with
#             batching on (default --batch-tokens) and off (--batch-tokens 0): requests/s,
#             latency percentiles, the daemon's own counters (hits, misses, forward passes, mean
#             batch, forward seconds), the daemon's CPU seconds (utime + stime from /proc/PID/stat,
#             robust to a busy machine when divided by the requests) and the raw model throughput
#             at the same length and mean batch (bench_forward in its own process) for the server
#             overhead. Every line has "precision": "fp32", or "bf16" for the runs below
#   server_rss  the daemon's peak RSS after its runs (the default daemon; with BF16=1 also the bf16 one)
#
# With BF16=1 (bench/run.sh passes it when the CPU has AVX-512 BF16), after the float32 runs: the
# uncached load at BATCH_CONNS on a daemon with --precision bf16 (default batching) and on one with
# --precision bf16 --batch-tokens 0, its raw model throughput from bench_forward --precision bf16.
# Best effort: when they fail, the float32 lines stand and the script still succeeds.
#
# Environment: BIN (bin), BENCH_FORWARD ($BIN/bench/bench_forward), WEIGHTS
# (weights/model.safetensors), THREADS (nproc), DURATION (seconds per wrk run, 10),
# CONNS (concurrency levels, "1 8 64"), BATCH_CONNS (concurrency of the batching on/off
# comparison, 16), SHORT_LEN (residues of the uncached short sequences, 62), TITIN (1 = run the
# titin request), TITIN_LEN (34350), WRK (wrk), BF16 (1 = also the bf16 runs above; 0).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
BENCH_FORWARD=${BENCH_FORWARD:-$BIN/bench/bench_forward}
WEIGHTS=${WEIGHTS:-weights/model.safetensors}
THREADS=${THREADS:-$(nproc)}
DURATION=${DURATION:-10}
CONNS=${CONNS:-1 8 64}
BATCH_CONNS=${BATCH_CONNS:-16}
SHORT_LEN=${SHORT_LEN:-62}
TITIN=${TITIN:-1}
TITIN_LEN=${TITIN_LEN:-34350}
WRK=${WRK:-wrk}
BF16=${BF16:-0}
# the weight products' precision of the daemon being measured and of its raw model runs
PRECISION=fp32
LUA=bench/wrk_post.lua

T=$(mktemp -d /tmp/bench_server.XXXXXX)
PID=
stop_if_running() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; fi
}
cleanup() {
    stop_if_running
    rm -rf "$T"
}
trap cleanup EXIT
log() { echo "bench_server: $*" >&2; }

SALT_BASE=$(( (RANDOM << 8 | RANDOM) % 1000 ))   # per invocation; run_wrk adds 2 per run
SALT_SEQ=0

# start_server NAME [performerd options...]: fresh database, free port; sets PID, PORT, URL
start_server() {
    local name=$1; shift
    "$BIN/performerd" --port 0 --bind 127.0.0.1 --db "$T/$name.sqlite" --weights "$WEIGHTS" \
        --threads "$THREADS" --workers 1 --timeout 600 "$@" 2>"$T/$name.log" &
    PID=$!
    PORT=
    for _ in $(seq 300); do
        PORT=$(grep -m1 '"msg": *"listening"' "$T/$name.log" 2>/dev/null |
               sed -n 's/.*"port": *"\([0-9]*\)".*/\1/p' || true)
        [ -n "$PORT" ] && break
        kill -0 "$PID" 2>/dev/null || { cat "$T/$name.log" >&2; log "performerd exited"; exit 1; }
        sleep 0.1
    done
    [ -n "$PORT" ] || { log "performerd did not report its port"; exit 1; }
    URL=http://127.0.0.1:$PORT
    for _ in $(seq 300); do
        curl -sf "$URL/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "performerd not ready"; exit 1
}

stop_server() {
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
}

# metric NAME: value of an unlabelled metric from /metrics
metrics_snapshot() { curl -sf "$URL/metrics" >"$T/metrics.$1"; }
metric() { awk -v n="$2" '$1 == n { print $2 }' "$T/metrics.$1"; }
proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
CLK=$(getconf CLK_TCK)
# CPU seconds (user + system) of process $1 so far
proc_cpu() { awk -v hz="$CLK" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
# sets CH_CPU to the CPU seconds of this shell's finished children so far (wrk, curl); not in $(...),
# where `times` would describe the subshell
children_cpu() {
    times >"$T/times"
    CH_CPU=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$T/times")
}

# wait_idle: waits (at most 10 s) until the daemon has no queued or running inference, so that a raw
# model run right after a wrk run does not share the cores with the daemon finishing the requests
# that were still in flight when wrk stopped (two OpenMP teams on two cores slow both by up to 10x)
wait_idle() {
    local i
    for i in $(seq 200); do
        metrics_snapshot idle
        [ "$(metric idle performerd_queue_depth)" = 0 ] && [ "$(metric idle performerd_jobs_running)" = 0 ] && return 0
        sleep 0.05
    done
    log "the daemon did not go idle within 10 s"
}

# mean_batch A B: sequences per forward pass between metrics snapshots A and B (at least 1)
mean_batch() {
    awk "BEGIN{n = $(metric "$2" performerd_model_forward_seconds_count) - $(metric "$1" performerd_model_forward_seconds_count);
         s = $(metric "$2" performerd_forward_sequences_total) - $(metric "$1" performerd_forward_sequences_total);
         b = n > 0 ? int(s / n + 0.5) : 1; print (b < 1 ? 1 : b)}"
}

# raw_forward BATCH: bench_forward's JSON for BATCH sequences of the request length (own process),
# in the daemon's precision
raw_forward() {
    local prec=()
    [ "$PRECISION" = fp32 ] || prec=(--precision "$PRECISION")
    "$BENCH_FORWARD" forward --weights "$WEIGHTS" --len $((SHORT_LEN + 2)) --batch "$1" \
        --threads "$THREADS" --min-time "${RAW_MIN_TIME:-1}" --min-reps 3 "${prec[@]}"
}

# run_wrk CASE BATCHING CONNS: one wrk run, one JSON line. For uncached runs the raw model
# throughput is measured right before and right after the timed run (at the mean batch the server
# formed: before, from a short untimed warm-up run at the same concurrency), so that a drift of the
# shared machine's speed shows as two different raw figures instead of as server overhead.
run_wrk() {
    local case=$1 batching=$2 c=$3 t=2
    [ "$c" -lt 2 ] && t=1
    # a salt of its own for each run (and its warm-up) on this daemon: with a random salt per run,
    # two runs could draw the same one and a "unique" run re-sent an earlier run's sequences (697
    # cache hits in a --batch-tokens 0 run at c = 16 once)
    SALT_SEQ=$((SALT_SEQ + 2))
    local salt=$(( (SALT_BASE + SALT_SEQ) % 1000 ))
    local raw_before="null"
    if [ "$case" = miss ]; then
        metrics_snapshot w0
        BENCH_MODE=unique BENCH_LEN=$SHORT_LEN BENCH_SALT=$(( (salt + 1) % 1000 )) \
            "$WRK" -t"$t" -c"$c" -d"${WARMUP_DURATION:-2}s" --timeout 60s -s "$LUA" "$URL/predict" \
            >/dev/null 2>&1 || { log "warm-up wrk failed"; exit 1; }
        metrics_snapshot w1
        wait_idle
        raw_before=$(raw_forward "$(mean_batch w0 w1)")
    fi
    metrics_snapshot a
    local scpu0 wcpu0 scpu wcpu
    scpu0=$(proc_cpu "$PID"); children_cpu; wcpu0=$CH_CPU
    BENCH_MODE=$([ "$case" = hit ] && echo hit || echo unique) BENCH_LEN=$SHORT_LEN BENCH_SALT=$salt \
        BENCH_BODY="${HIT_BODY:-}" \
        "$WRK" -t"$t" -c"$c" -d"${DURATION}s" --timeout 60s --latency -s "$LUA" "$URL/predict" \
        >"$T/wrk.out" 2>&1 || { cat "$T/wrk.out" >&2; log "wrk failed"; exit 1; }
    scpu=$(awk "BEGIN{printf \"%.3f\", $(proc_cpu "$PID") - $scpu0}")
    children_cpu
    wcpu=$(awk "BEGIN{printf \"%.3f\", $CH_CPU - $wcpu0}")
    metrics_snapshot b
    sed -n 's/^BENCHJSON //p' "$T/wrk.out" >"$T/wrk.json"
    [ -s "$T/wrk.json" ] || { cat "$T/wrk.out" >&2; log "no wrk summary"; exit 1; }
    local hits misses fseq fcnt fsum rej
    hits=$(awk "BEGIN{print $(metric b performerd_cache_hits_total) - $(metric a performerd_cache_hits_total)}")
    misses=$(awk "BEGIN{print $(metric b performerd_cache_misses_total) - $(metric a performerd_cache_misses_total)}")
    fseq=$(awk "BEGIN{print $(metric b performerd_forward_sequences_total) - $(metric a performerd_forward_sequences_total)}")
    fcnt=$(awk "BEGIN{print $(metric b performerd_model_forward_seconds_count) - $(metric a performerd_model_forward_seconds_count)}")
    fsum=$(awk "BEGIN{printf \"%.6f\", $(metric b performerd_model_forward_seconds_sum) - $(metric a performerd_model_forward_seconds_sum)}")
    rej=$(awk "BEGIN{print $(metric b performerd_queue_rejected_total) - $(metric a performerd_queue_rejected_total)}")
    local raw="null"
    if [ "$case" = miss ] && [ "$fcnt" -gt 0 ]; then
        wait_idle
        raw=$(raw_forward "$(mean_batch a b)")
    fi
    local w
    w=$(cat "$T/wrk.json")
    echo "{\"bench\":\"server\",\"case\":\"$case\",\"batching\":\"$batching\",\"precision\":\"$PRECISION\",\"conns\":$c,\"wrk_threads\":$t,\"residues\":$SHORT_LEN,\"server_threads\":$THREADS,\"wrk\":$w,\"cache_hits\":$hits,\"cache_misses\":$misses,\"forward_sequences\":$fseq,\"forward_passes\":$fcnt,\"forward_seconds\":$fsum,\"queue_rejected\":$rej,\"server_cpu_s\":$scpu,\"wrk_cpu_s\":$wcpu,\"raw\":$raw,\"raw_before\":$raw_before,\"command\":\"$WRK -t$t -c$c -d${DURATION}s --timeout 60s --latency -s $LUA URL/predict (BENCH_MODE=$([ "$case" = hit ] && echo hit || echo unique))\"}"
    local nreq cpu_us
    nreq=$(sed -n 's/.*"requests":\([0-9]*\).*/\1/p' "$T/wrk.json")
    cpu_us=$(awk "BEGIN{printf \"%.1f\", (${nreq:-0} > 0 ? $scpu / ${nreq:-1} * 1e6 : 0)}")
    log "$case batching=$batching precision=$PRECISION c=$c: $(sed 's/.*"rps":\([0-9.]*\).*"lat_p50_ms":\([0-9.]*\).*"lat_p99_ms":\([0-9.]*\).*/\1 req\/s, p50 \2 ms, p99 \3 ms/' "$T/wrk.json"), daemon CPU $cpu_us us/req"
}

# a deterministic random sequence of n residues (LCG), with <mask> at the middle
make_seq() {
    awk -v n="$1" -v seed="$2" 'BEGIN { a = "ACDEFGHIKLMNPQRSTVWY"; s = seed; out = "";
        for (i = 1; i <= n; i++) { s = (s * 48271) % 2147483647;
            if (i == int(n / 2)) out = out "<mask>"; else out = out substr(a, s % 20 + 1, 1) }
        print out }'
}

# ---- titin: one uncached request of TITIN_LEN residues on a fresh daemon ----------------------
if [ "$TITIN" = 1 ]; then
    start_server titin
    rss0=$(proc_kb "$PID" VmRSS)
    printf '{"sequence":"%s"}' "$(make_seq "$TITIN_LEN" 4242)" >"$T/titin.json"
    out=$(curl -s -o "$T/titin.out" -D "$T/titin.hdr" -w '%{http_code} %{time_total}' \
          -H 'Content-Type: application/json' --data-binary @"$T/titin.json" "$URL/predict")
    code=${out% *}; secs=${out#* }
    hwm=$(proc_kb "$PID" VmHWM)
    st=$(grep -i '^server-timing:' "$T/titin.hdr" | tr -d '\r' | cut -d' ' -f2- || true)
    echo "{\"bench\":\"titin\",\"residues\":$TITIN_LEN,\"http_status\":$code,\"seconds\":$secs,\"server_timing\":\"$st\",\"rss_before_kb\":$rss0,\"peak_rss_kb\":$hwm,\"server_threads\":$THREADS,\"command\":\"curl -d @titin.json URL/predict (fresh performerd --threads $THREADS)\"}"
    log "titin: HTTP $code in ${secs}s, daemon peak RSS $((hwm / 1024)) MB"
    stop_server
fi

# ---- default daemon: cache hits and uncached short sequences ----------------------------------
start_server main
HIT_BODY=$(printf '{"sequence":"%s"}' "$(make_seq "$SHORT_LEN" 777)")
export HIT_BODY
curl -s -o /dev/null -H 'Content-Type: application/json' -d "$HIT_BODY" "$URL/predict"
xc=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' -d "$HIT_BODY" "$URL/predict" |
     tr -d '\r' | awk 'tolower($1) == "x-cache:" { print $2 }')
[ "$xc" = HIT ] || { log "warm-up request was not cached (X-Cache: $xc)"; exit 1; }
for c in $CONNS; do run_wrk hit on "$c"; done
for c in $CONNS; do run_wrk miss on "$c"; done
case " $CONNS " in *" $BATCH_CONNS "*) ;; *) run_wrk miss on "$BATCH_CONNS" ;; esac
echo "{\"bench\":\"server_rss\",\"config\":\"default\",\"precision\":\"fp32\",\"peak_rss_kb\":$(proc_kb "$PID" VmHWM)}"
stop_server

# ---- batching off: the same uncached load computed one request at a time ---------------------
start_server nobatch --batch-tokens 0
run_wrk miss off 1
run_wrk miss off "$BATCH_CONNS"
stop_server

# ---- bf16: the same uncached load at BATCH_CONNS, batching on and off, --precision bf16 ----------
# In a subshell with its own errexit, so that a failure ends only this section (the daemon it
# started is stopped by the subshell's EXIT trap; the float32 lines above are already printed).
if [ "$BF16" = 1 ]; then
    set +e
    (
        set -e
        trap stop_if_running EXIT
        PRECISION=bf16
        start_server bf16 --precision bf16
        run_wrk miss on "$BATCH_CONNS"
        echo "{\"bench\":\"server_rss\",\"config\":\"bf16\",\"precision\":\"bf16\",\"peak_rss_kb\":$(proc_kb "$PID" VmHWM)}"
        stop_server
        start_server bf16_nobatch --precision bf16 --batch-tokens 0
        run_wrk miss off "$BATCH_CONNS"
        stop_server
    )
    rc=$?
    set -e
    [ "$rc" = 0 ] || log "the bf16 runs failed (exit $rc): no bf16 server figures"
fi
