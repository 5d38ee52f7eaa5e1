#!/usr/bin/env bash
# bench/run.sh - the whole benchmark in one invocation (`make bench`): forward latency and memory
# vs length for every kernel, C vs PyTorch on the same weights (with an agreement check), FLOP
# utilisation vs the sgemm peak, trainer vs PyTorch training, and performerd under wrk. Writes
# $OUT/RESULTS.md, $OUT/forward.png and the raw measurements $OUT/results.jsonl. On a CPU with
# AVX-512 BF16 the C side of the PyTorch comparisons (forward and trainer) also runs with
# --precision bf16 (weight products in bfloat16, float32 accumulation), and the sgemm peak is also
# measured for the bf16 product; PyTorch stays float32. The server's batching on/off comparison
# (uncached short requests at SRV_BATCH_CONNS) is repeated with performerd --precision bf16.
# When OPENBLAS_CORETYPE is set (this project's machine sets Haswell: AVX2 kernels on an AVX-512
# CPU), every PyTorch run (forward and training) and the OpenBLAS sgemm peak are repeated without it
# (role "native": OpenBLAS's own choice, its AVX-512 kernels here), and the targets count the
# faster PyTorch: the C float32 products use an own AVX-512 kernel (model/gemm.c), so PyTorch must
# not be held to AVX2 while C is not.
#
# Environment (all optional):
#   WEIGHTS   weights to benchmark (weights/model.safetensors)
#   BIN       where performer, performerd and bench/bench_forward are (bin)
#   THREADS   threads for C and PyTorch alike (nproc)
#   SMOKE=1   tiny sizes and 2 s wrk runs to check the pipeline in well under a minute of CPU;
#             writes to bench/smoke/ (never to bench/RESULTS.md)
#   OUT       output directory (bench, or bench/smoke with SMOKE=1)
#   DATA      FASTA for the trainer comparison (weights/data/valid.fasta, else a synthetic one)
#   PY        Python with torch (/usr/bin/python3, Debian python3-torch)
#   BF16      1 (the default when /proc/cpuinfo has avx512_bf16) also runs C in bf16; 0 skips it
#   BF16_TOL  max |log p| difference allowed between C bf16 and PyTorch float32 (0.05; C float32
#             keeps bench_torch.py's 1e-3)
#   OMP_WAIT_POLICY  given to C and PyTorch alike (PASSIVE when unset, as the C programs use)
#   TORCH_OMP_WAIT_POLICY  PyTorch's instead (ACTIVE, PASSIVE, or "unset" for libgomp's default)
# The full run takes about 10-15 minutes on 2 cores; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=${SMOKE:-0}
[ "$SMOKE" = 1 ] || SMOKE=0
BIN=${BIN:-bin}
WEIGHTS=${WEIGHTS:-weights/model.safetensors}
THREADS=${THREADS:-$(nproc)}
PY=${PY:-/usr/bin/python3}
# the C bf16 runs: by default when the CPU has AVX-512 BF16, never without it
grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null && CPU_BF16=1 || CPU_BF16=0
BF16=${BF16:-$CPU_BF16}
[ "$BF16" = 1 ] && [ "$CPU_BF16" = 1 ] || BF16=0
# bf16 rounds the weight products' operands to 8 mantissa bits: on the shipped weights C bf16 vs
# PyTorch float32 measured 0.007-0.021 max |delta log p| (mean 0.001) over L = 128-4,096, batch
# 1-16 (float32 C: under 1e-4); 0.05 is about 2x the largest of those
BF16_TOL=${BF16_TOL:-0.05}
BF=$BIN/bench/bench_forward
if [ "$SMOKE" = 1 ]; then OUT=${OUT:-bench/smoke}; else OUT=${OUT:-bench}; fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# libgomp's spin before sleeping, for C and PyTorch alike (the C programs' default, PF_GOMP_SPINCOUNT)
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}
# PyTorch gets the same OpenMP wait policy as C unless TORCH_OMP_WAIT_POLICY says otherwise
# ("unset" = libgomp's default, spin then sleep)
TORCH_OMP_WAIT_POLICY=${TORCH_OMP_WAIT_POLICY:-$OMP_WAIT_POLICY}
if [ "$TORCH_OMP_WAIT_POLICY" = unset ]; then PYT=(env -u OMP_WAIT_POLICY "$PY")
else PYT=(env OMP_WAIT_POLICY="$TORCH_OMP_WAIT_POLICY" "$PY"); fi

if [ "$SMOKE" = 1 ]; then
    LENS="128 512 2048"                 # framed positions (residues + <cls> + <eos>)
    MIN_TIME=0.2; MIN_REPS=2; SINGLE_OVER=2
    EXACT_LIMIT_MB=8                    # so that exact refuses L = 2048 (checks that path)
    SGEMM_N=512; SGEMM_REPS=2; SHAPES_T=512
    TORCH_CASES="128:1 128:4"           # L:batch
    SEQPAR_CASES="64:4"                 # L:batch
    PROFILE_L=512
    TORCH_MIN_TIME=0.2; TORCH_MIN_REPS=1; TORCH_ROUNDS=1
    CROP=128; BATCH_TOKENS=1024; C_TRAIN_STEPS=4; TORCH_TRAIN_STEPS=3; TRAIN_SKIP=1
    SRV_DURATION=2; SRV_CONNS="1 8 64"; SRV_BATCH_CONNS=16; SRV_LEN=62; TITIN_LEN=2000
else
    LENS="128 256 512 1024 2048 4096 8192 16384 32768 34352"   # 34352 = titin, 34,350 residues
    MIN_TIME=1.5; MIN_REPS=3; SINGLE_OVER=5
    EXACT_LIMIT_MB=0                    # the library's limit (1 GiB of L x L scores)
    SGEMM_N=2048; SGEMM_REPS=5; SHAPES_T=4096
    TORCH_CASES="512:1 512:16 4096:1 4096:16"
    SEQPAR_CASES="64:9 128:32 256:16 512:16"
    PROFILE_L=4096
    TORCH_MIN_TIME=2; TORCH_MIN_REPS=3; TORCH_ROUNDS=3
    CROP=512; BATCH_TOKENS=8192; C_TRAIN_STEPS=12; TORCH_TRAIN_STEPS=7; TRAIN_SKIP=2
    SRV_DURATION=10; SRV_CONNS="1 8 64"; SRV_BATCH_CONNS=16; SRV_LEN=62; TITIN_LEN=34350
fi

die() { echo "bench: $*" >&2; exit 1; }
for f in "$BIN/performer" "$BIN/performerd" "$BF"; do [ -x "$f" ] || die "$f missing: run make first"; done
[ -f "$WEIGHTS" ] || die "$WEIGHTS missing (make weights/model.safetensors, or WEIGHTS=...)"
command -v wrk >/dev/null || die "wrk missing (apt-get install wrk)"
command -v gnuplot >/dev/null || die "gnuplot missing (apt-get install gnuplot-nox)"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch (apt-get install python3-torch)"

T=$(mktemp -d /tmp/bench.XXXXXX)
trap 'rm -rf "$T"' EXIT
R=$T/results.jsonl
: >"$R"
: >"$T/commands.txt"
T0=$(date +%s)
mkdir -p "$OUT"
log() { echo "[bench $(( $(date +%s) - T0 ))s] $*" >&2; }

# rec CMD...: runs a command that prints JSON lines, appends them to the results, logs the command
rec() {
    printf '%s\n' "$*" >>"$T/commands.txt"
    "$@" >>"$R"
}
# rec_tag TAG CMD...: as rec, adding "role": TAG to every line
rec_tag() {
    local tag=$1; shift
    printf '%s\n' "$*" >>"$T/commands.txt"
    "$@" | sed "s/^{/{\"role\":\"$tag\",/" >>"$R"
}

# ---- machine ------------------------------------------------------------------------------------
log "machine description"
{
    lscpu
    echo "---"
    free -b
} >"$T/lscpu.txt" 2>&1 || true
nproc >"$T/nproc.txt"
uname -srmv >"$T/uname.txt"
cat /etc/debian_version >"$T/debian.txt" 2>/dev/null || true
${CC:-cc} --version 2>/dev/null | head -1 >"$T/cc.txt" || true
cat /proc/loadavg >"$T/load_start.txt"
# CPU busy fraction over 3 s (all CPUs, from /proc/stat): unlike the load average it does not count
# processes that just stopped (a paused training run) and does count other tenants' steal time.
cpu_busy() {
    local a b
    a=($(head -1 /proc/stat)); sleep 3; b=($(head -1 /proc/stat))
    local tot=0 idle i
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    idle=$(( (b[4] - a[4]) + (b[5] - a[5]) ))
    awk -v t="$tot" -v i="$idle" 'BEGIN { printf "%.3f\n", (t > 0 ? (t - i) / t : 0) }'
}
cpu_busy >"$T/busy_start.txt"
ps -eo pcpu,stat,etime,comm --sort=-pcpu | head -6 >"$T/top_start.txt"   # STAT T = stopped
# the commit, read from .git without running git
if [ -f .git/HEAD ]; then
    head=$(cat .git/HEAD)
    case $head in
        ref:*) ref=${head#ref: }
               if [ -f ".git/$ref" ]; then cat ".git/$ref"; else awk -v r="$ref" '$2 == r { print $1 }' .git/packed-refs 2>/dev/null; fi
               echo "$ref" ;;
        *) echo "$head" ;;
    esac >"$T/commit.txt"
fi
# digest of the sources that were benchmarked (uncommitted edits change it)
cat model/*.c model/*.h server/*.c server/*.h bench/*.c 2>/dev/null | sha256sum | cut -c1-16 >"$T/srcdigest.txt"
sha256sum "$WEIGHTS" | cut -c1-64 >"$T/weights_sha.txt"
"$BIN/performer" info --weights "$WEIGHTS" >"$T/weights_info.txt" 2>&1 || true
printf 'SMOKE=%s WEIGHTS=%s THREADS=%s OMP_WAIT_POLICY=%s TORCH_OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s OPENBLAS_CORETYPE=%s\n' \
    "$SMOKE" "$WEIGHTS" "$THREADS" "$OMP_WAIT_POLICY" "$TORCH_OMP_WAIT_POLICY" "$GOMP_SPINCOUNT" "${OPENBLAS_CORETYPE:-}" >"$T/env.txt"
echo "MIN_REPS=$MIN_REPS MIN_TIME=$MIN_TIME SINGLE_OVER=$SINGLE_OVER" >"$T/params.txt"
# whether the C bf16 runs happen (BF16=1), and why not (CPU_BF16=0: no AVX-512 BF16; else BF16=0 given)
echo "BF16=$BF16 CPU_BF16=$CPU_BF16 BF16_TOL=$BF16_TOL" >"$T/bf16.txt"
rec "$BF" info --threads "$THREADS"
rec "${PYT[@]}" bench/bench_torch.py info --threads "$THREADS"

# ---- sgemm peak (start) -----------------------------------------------------------------------
log "sgemm peak"
rec_tag start "$BF" sgemm --threads "$THREADS" --n "$SGEMM_N" --reps "$SGEMM_REPS" --shapes-T "$SHAPES_T" \
    --d "$(awk '$1 == "d_model:" { print $2 }' "$T/weights_info.txt")" \
    --d-ff "$(awk '$1 == "d_ff:" { print $2 }' "$T/weights_info.txt")"
# NATIVE: the same command without OPENBLAS_CORETYPE (OpenBLAS picks its kernels for this CPU);
# empty when it is not set (then every run already is native)
NATIVE=()
[ -n "${OPENBLAS_CORETYPE:-}" ] && NATIVE=(env -u OPENBLAS_CORETYPE)
if [ ${#NATIVE[@]} -gt 0 ]; then
    log "sgemm peak, OpenBLAS's own kernel choice (OPENBLAS_CORETYPE unset)"
    rec_tag native "${NATIVE[@]}" "$BF" info --threads "$THREADS"
    rec_tag start_native "${NATIVE[@]}" "$BF" sgemm --threads "$THREADS" --n "$SGEMM_N" --reps "$SGEMM_REPS"
fi

# ---- forward latency and peak RSS vs L: one process per (kernel, L) ----------------------------
for k in favor-softmax favor-relu exact; do
    for L in $LENS; do
        log "forward $k L=$L"
        ex=()
        [ "$EXACT_LIMIT_MB" != 0 ] && ex=(--exact-limit-mb "$EXACT_LIMIT_MB")
        rec_tag sweep "$BF" forward --weights "$WEIGHTS" --kernel "$k" --len "$L" --batch 1 \
            --threads "$THREADS" --min-time "$MIN_TIME" --min-reps "$MIN_REPS" \
            --single-over "$SINGLE_OVER" "${ex[@]}" || log "forward $k L=$L failed (recorded)"
    done
done

# ---- where one forward pass spends its time (perf, best effort) -----------------------------------
if [ "${PROFILE:-1}" = 1 ] && command -v perf >/dev/null; then
    log "perf profile of one forward, L=$PROFILE_L"
    printf '%s\n' "perf record -F 999 -o T/perf.data -- $BF forward --weights $WEIGHTS --len $PROFILE_L --threads $THREADS --warmup 1 --min-reps 3 --min-time 0; perf report --sort dso,symbol" >>"$T/commands.txt"
    if perf record -F 999 -o "$T/perf.data" -- "$BF" forward --weights "$WEIGHTS" --len "$PROFILE_L" \
            --threads "$THREADS" --warmup 1 --min-reps 3 --min-time 0 >"$T/profile_run.json" 2>"$T/perf.log"; then
        echo "$PROFILE_L" >"$T/profile_L.txt"
        perf report -i "$T/perf.data" --stdio --sort dso,symbol --percent-limit 0.7 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed -e 's/[ -]*$//' | head -25 >"$T/profile.txt" || true
    else
        log "perf record failed (see perf_event_paranoid); no profile"
    fi
    # the same pass in bf16: what bounds the bf16 target (the products' share against the rest)
    if [ "$BF16" = 1 ] && [ -s "$T/profile.txt" ]; then
        log "perf profile of one bf16 forward, L=$PROFILE_L"
        printf '%s\n' "perf record -F 999 -o T/perf_bf16.data -- $BF forward --weights $WEIGHTS --len $PROFILE_L --threads $THREADS --warmup 1 --min-reps 3 --min-time 0 --precision bf16; perf report --sort dso,symbol" >>"$T/commands.txt"
        if perf record -F 999 -o "$T/perf_bf16.data" -- "$BF" forward --weights "$WEIGHTS" --len "$PROFILE_L" \
                --threads "$THREADS" --warmup 1 --min-reps 3 --min-time 0 --precision bf16 \
                >"$T/profile_bf16_run.json" 2>"$T/perf_bf16.log"; then
            perf report -i "$T/perf_bf16.data" --stdio --sort dso,symbol --percent-limit 0.7 2>/dev/null |
                grep -v '^#' | grep -v '^$' | sed -e 's/[ -]*$//' | head -25 >"$T/profile_bf16.txt" || true
        else
            log "perf record of the bf16 pass failed; no bf16 profile"
        fi
    fi
fi

# ---- C vs PyTorch on the same tokens, with the agreement check ---------------------------------
for round in $(seq "$TORCH_ROUNDS"); do
    for c in $TORCH_CASES; do
        L=${c%:*}; B=${c#*:}
        log "C vs PyTorch L=$L batch=$B (round $round of $TORCH_ROUNDS)"
        rm -f "$T/tok.i32" "$T/logp.f32" "$T/tok_bf16.i32" "$T/logp_bf16.f32"
        rec_tag cmp "$BF" forward --weights "$WEIGHTS" --len "$L" --batch "$B" --threads "$THREADS" \
            --min-time "$TORCH_MIN_TIME" --min-reps "$TORCH_MIN_REPS" --single-over "$SINGLE_OVER" \
            --tokens-out "$T/tok.i32" --logp-out "$T/logp.f32"
        # the same tokens (same --seed) with the weight products in bf16; PyTorch's float32 outputs
        # below are compared with both, each within its own tolerance
        bfref=()
        if [ "$BF16" = 1 ]; then
            log "C bf16 L=$L batch=$B (round $round of $TORCH_ROUNDS)"
            if rec_tag cmp_bf16 "$BF" forward --weights "$WEIGHTS" --len "$L" --batch "$B" --threads "$THREADS" \
                    --min-time "$TORCH_MIN_TIME" --min-reps "$TORCH_MIN_REPS" --single-over "$SINGLE_OVER" \
                    --precision bf16 --tokens-out "$T/tok_bf16.i32" --logp-out "$T/logp_bf16.f32"; then
                cmp -s "$T/tok.i32" "$T/tok_bf16.i32" || die "the bf16 forward ran on other tokens than the fp32 one"
                bfref=(--logp-ref-bf16 "$T/logp_bf16.f32" --tol-bf16 "$BF16_TOL")
            else
                log "C bf16 forward L=$L batch=$B failed (recorded)"
            fi
        fi
        targs=(bench/bench_torch.py forward --weights "$WEIGHTS" --tokens "$T/tok.i32" \
            --logp-ref "$T/logp.f32" --len "$L" --batch "$B" --threads "$THREADS" \
            --min-time "$TORCH_MIN_TIME" --min-reps "$TORCH_MIN_REPS" --single-over "$SINGLE_OVER" "${bfref[@]}")
        rec "${PYT[@]}" "${targs[@]}"
        if [ ${#NATIVE[@]} -gt 0 ]; then
            log "PyTorch L=$L batch=$B, OPENBLAS_CORETYPE unset (round $round of $TORCH_ROUNDS)"
            rec_tag native "${NATIVE[@]}" "${PYT[@]}" "${targs[@]}"
        fi
    done
done

# ---- batches of short sequences: sequence-parallel (the default) vs each operation on all threads
# (--seq-parallel-len 0), alternately, in each precision the CPU has ------------------------------
for round in 1 2; do
    for c in $SEQPAR_CASES; do
        L=${c%:*}; B=${c#*:}
        for p in fp32 $([ "$BF16" = 1 ] && echo bf16); do
            log "batch of short sequences L=$L batch=$B $p (round $round of 2)"
            for sp in 0 default; do
                spa=(); [ "$sp" = 0 ] && spa=(--seq-parallel-len 0)
                rec_tag "seqpar_$sp" "$BF" forward --weights "$WEIGHTS" --len "$L" --batch "$B" \
                    --threads "$THREADS" --precision "$p" --min-time "$MIN_TIME" --min-reps "$MIN_REPS" \
                    --single-over "$SINGLE_OVER" "${spa[@]}" || log "L=$L batch=$B $p failed (recorded)"
            done
        done
    done
done

# ---- trainer vs a PyTorch training step of the same configuration ------------------------------
DATA=${DATA:-weights/data/valid.fasta}
if [ ! -f "$DATA" ]; then
    DATA=$T/synthetic.fasta
    "$PY" - "$DATA" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for i in range(3000):
        n = int(min(2000, max(50, random.lognormvariate(5.8, 0.6))))
        f.write(">s%d\n%s\n" % (i, "".join(random.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n))))
PY
fi
echo "$DATA" >"$T/data.txt"
log "trainer: C, $C_TRAIN_STEPS steps"
printf '%s\n' "$BIN/performer train --fasta $DATA --init $WEIGHTS --out T/train_out.safetensors --log T/train_c.csv --steps $C_TRAIN_STEPS --crop $CROP --batch-tokens $BATCH_TOKENS --eval-every 0 --quiet --threads $THREADS --seed 1" >>"$T/commands.txt"
"$BIN/performer" train --fasta "$DATA" --init "$WEIGHTS" --out "$T/train_out.safetensors" \
    --log "$T/train_c.csv" --steps "$C_TRAIN_STEPS" --crop "$CROP" --batch-tokens "$BATCH_TOKENS" \
    --eval-every 0 --quiet --threads "$THREADS" --seed 1 2>"$T/train_c.log" ||
    { cat "$T/train_c.log" >&2; die "performer train failed"; }
"$PY" bench/report.py csv2json --csv "$T/train_c.csv" --skip "$TRAIN_SKIP" --crop "$CROP" \
    --batch-tokens "$BATCH_TOKENS" --threads "$THREADS" >>"$R"
if [ "$BF16" = 1 ]; then
    # the same run with the weight products (forward and backward) in bf16; PyTorch stays float32
    log "trainer: C --precision bf16, $C_TRAIN_STEPS steps"
    printf '%s\n' "$BIN/performer train --precision bf16 --fasta $DATA --init $WEIGHTS --out T/train_out_bf16.safetensors --log T/train_c_bf16.csv --steps $C_TRAIN_STEPS --crop $CROP --batch-tokens $BATCH_TOKENS --eval-every 0 --quiet --threads $THREADS --seed 1" >>"$T/commands.txt"
    if "$BIN/performer" train --precision bf16 --fasta "$DATA" --init "$WEIGHTS" --out "$T/train_out_bf16.safetensors" \
            --log "$T/train_c_bf16.csv" --steps "$C_TRAIN_STEPS" --crop "$CROP" --batch-tokens "$BATCH_TOKENS" \
            --eval-every 0 --quiet --threads "$THREADS" --seed 1 2>"$T/train_c_bf16.log"; then
        "$PY" bench/report.py csv2json --csv "$T/train_c_bf16.csv" --skip "$TRAIN_SKIP" --crop "$CROP" \
            --batch-tokens "$BATCH_TOKENS" --threads "$THREADS" --precision bf16 >>"$R"
    else
        cat "$T/train_c_bf16.log" >&2
        log "performer train --precision bf16 failed (no bf16 trainer figure)"
    fi
fi
log "trainer: PyTorch, $TORCH_TRAIN_STEPS steps per implementation"
rec "${PYT[@]}" bench/bench_torch.py train --weights "$WEIGHTS" --fasta "$DATA" --steps "$TORCH_TRAIN_STEPS" \
    --skip "$TRAIN_SKIP" --crop "$CROP" --batch-tokens "$BATCH_TOKENS" --threads "$THREADS"
if [ ${#NATIVE[@]} -gt 0 ]; then
    log "trainer: PyTorch, OPENBLAS_CORETYPE unset"
    rec_tag native "${NATIVE[@]}" "${PYT[@]}" bench/bench_torch.py train --weights "$WEIGHTS" --fasta "$DATA" \
        --steps "$TORCH_TRAIN_STEPS" --skip "$TRAIN_SKIP" --crop "$CROP" --batch-tokens "$BATCH_TOKENS" --threads "$THREADS"
fi

# ---- server -------------------------------------------------------------------------------------
log "server (wrk, ${SRV_DURATION}s per run)"
printf '%s\n' "BIN=$BIN BENCH_FORWARD=$BF WEIGHTS=$WEIGHTS THREADS=$THREADS DURATION=$SRV_DURATION CONNS='$SRV_CONNS' BATCH_CONNS=$SRV_BATCH_CONNS SHORT_LEN=$SRV_LEN TITIN_LEN=$TITIN_LEN BF16=$BF16 bash bench/bench_server.sh" >>"$T/commands.txt"
BIN=$BIN BENCH_FORWARD=$BF WEIGHTS=$WEIGHTS THREADS=$THREADS DURATION=$SRV_DURATION \
    CONNS="$SRV_CONNS" BATCH_CONNS=$SRV_BATCH_CONNS SHORT_LEN=$SRV_LEN TITIN_LEN=$TITIN_LEN \
    RAW_MIN_TIME=$MIN_TIME BF16=$BF16 bash bench/bench_server.sh >>"$R"

# ---- sgemm peak (end: drift check) ---------------------------------------------------------------
log "sgemm peak (end)"
rec_tag end "$BF" sgemm --threads "$THREADS" --n "$SGEMM_N" --reps "$SGEMM_REPS"
cat /proc/loadavg >"$T/load_end.txt"
cpu_busy >"$T/busy_end.txt"
echo $(( $(date +%s) - T0 )) >"$T/elapsed.txt"

# ---- report ---------------------------------------------------------------------------------------
log "report"
cp "$R" "$OUT/results.jsonl"
"$PY" bench/report.py report --results "$R" --meta "$T" --out "$OUT" --smoke "$SMOKE"
log "wrote $OUT/RESULTS.md, $OUT/forward.png, $OUT/results.jsonl"
