#!/usr/bin/env bash
# Depth growth vs continued training at equal compute, at the small scale of weights/ablation.sh.
# Both continue from the same trained 2-layer model (d_model 128, conv 15) with the same fresh
# warm-up + cosine schedule:
#   continue-2L   the 2-layer model, STEPS steps of 4,096 tokens
#   grow-4L       `train --init F --layers 4` (two identity layers on top), as many steps as give
#                 the same training FLOPs (6 x parameters x tokens; the 4-layer model has about
#                 twice the parameters, so about half the steps)
# and are evaluated like the ablation (test split, seed 1).
#   BASE_STEPS=0 (default)  start from weights/ablation/favor-relu-conv15.safetensors (1,500 steps,
#                           6.0M tokens, about 14 tokens per parameter)
#   BASE_STEPS=N            start from a model trained like it for N steps (growth-base-N), e.g.
#                           5100 steps = 21M tokens = about 50 tokens per parameter, the regime of
#                           the shipped model
# Writes weights/ablation/GROWTH.md with every comparison present.
# Usage: weights/growth.sh   (STEPS=750 BASE_STEPS=0 THREADS=2 BIN=bin)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-750}
BASE_STEPS=${BASE_STEPS:-0}
THREADS=${THREADS:-2}
BIN=${BIN:-bin}
OUT=weights/ablation
ENV=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
if [ "$BASE_STEPS" = 0 ]; then
    BASE=$OUT/favor-relu-conv15.safetensors TAG=""
    [ -f "$BASE" ] || { echo "growth: $BASE missing: run VARIANTS=favor-relu-conv15 weights/ablation.sh" >&2; exit 1; }
else
    # the ablation's architecture and schedule (weights/ablation.sh), longer
    BASE=$OUT/growth-base-$BASE_STEPS.safetensors TAG="-base$BASE_STEPS"
    if [ ! -f "$BASE" ]; then
        "${ENV[@]}" $BIN/performer train --layers 2 --d-model 128 --heads 4 --d-ff 512 --features 64 \
            --kernel favor-relu --conv 15 --lr 2e-3 --data weights/data/train.bin \
            --valid weights/data/valid.bin --steps "$BASE_STEPS" --warmup 100 --crop 256 --batch-tokens 4096 \
            --eval-every 500 --eval-seqs 300 --seed 7 --threads "$THREADS" --quiet \
            --name "growth-base-$BASE_STEPS" --out "$BASE" --log "$OUT/growth-base-$BASE_STEPS.csv"
    fi
    [ -f "${BASE%.safetensors}.eval.json" ] || $BIN/performer eval --weights "$BASE" --fasta weights/data/test.fasta \
        --seed 1 --unigram weights/data/train.bin --threads "$THREADS" > "${BASE%.safetensors}.eval.json"
fi
RUN="--data weights/data/train.bin --valid weights/data/valid.bin --warmup 50 --lr 1e-3
     --crop 256 --batch-tokens 4096 --eval-every 250 --eval-seqs 300 --seed 8 --threads $THREADS --quiet"
params() { $BIN/performer info --weights "$1" | awk '$1 == "parameters:" { print $2 }'; }
P2=$(params "$BASE")
# the grown model's size, from a look at it (lr 0, one step: the same function)
# shellcheck disable=SC2086
$BIN/performer train --init "$BASE" --layers 4 $RUN --steps 1 --lr 0 --out "$OUT/growth-probe.safetensors" 2>/dev/null
P4=$(params "$OUT/growth-probe.safetensors")
rm -f "$OUT/growth-probe.safetensors"
STEPS4=$(( (STEPS * P2 + P4 / 2) / P4 ))
run() {   # name steps extra-options...
    local name=$1 steps=$2; shift 2
    if [ ! -f "$OUT/$name.safetensors" ]; then
        local t0; t0=$(date +%s)
        # shellcheck disable=SC2086
        "${ENV[@]}" $BIN/performer train --init "$BASE" "$@" $RUN \
            --steps "$steps" --name "$name" --out "$OUT/$name.safetensors" --log "$OUT/$name.csv"
        echo $(( $(date +%s) - t0 )) > "$OUT/$name.seconds"
    fi
    if [ ! -f "$OUT/$name.eval.json" ] || [ "$OUT/$name.safetensors" -nt "$OUT/$name.eval.json" ]; then
        $BIN/performer eval --weights "$OUT/$name.safetensors" --fasta weights/data/test.fasta --seed 1 \
            --unigram weights/data/train.bin --threads "$THREADS" > "$OUT/$name.eval.json"
    fi
    echo "$BASE $P2 $name $steps" >> "$OUT/growth-runs.txt.tmp"
}
rm -f "$OUT/growth-runs.txt.tmp"
run "growth-continue-2L$TAG" "$STEPS"
run "growth-grow-4L$TAG" "$STEPS4" --layers 4
# the list of comparisons made so far (one line per run: base, base parameters, run, steps)
touch "$OUT/growth-runs.txt"
sort -u "$OUT/growth-runs.txt" "$OUT/growth-runs.txt.tmp" > "$OUT/growth-runs.txt.new"
mv "$OUT/growth-runs.txt.new" "$OUT/growth-runs.txt"
rm -f "$OUT/growth-runs.txt.tmp"
/usr/bin/env python3 - "$OUT" <<'PY'
import csv, json, os, sys
out = sys.argv[1]
runs = [l.split() for l in open(f"{out}/growth-runs.txt") if l.strip()]
bases = []
for b, _, _, _ in runs:
    if b not in bases:
        bases.append(b)
L = ["# Depth growth vs continued training (small scale, equal compute)", "",
     "Produced by `weights/growth.sh`. In each comparison both continuations start from the same trained",
     "2-layer model (d_model 128, conv 15; the kernel ablation's architecture) with the same fresh",
     "schedule (warm-up 50, cosine from 1e-3, crops of 256, 4,096-token batches, seed 8); `grow-4L` is",
     "`train --init F --layers 4` (two identity layers on top of the two trained ones). Steps are set so",
     "that both spend the same training FLOPs (6 × parameters × tokens). Test = `performer eval` on",
     "weights/data/test.fasta (seed 1)."]
for b in bases:
    base_eval = json.load(open(b.replace(".safetensors", ".eval.json")))
    rows = [r for r in runs if r[0] == b]
    p2 = int(rows[0][1])
    blog = b.replace(".safetensors", ".csv")
    btok = int(list(csv.DictReader(open(blog)))[-1]["tokens"]) if os.path.exists(blog) else None
    L += ["", "## From `%s`%s" % (os.path.basename(b), " (%s tokens, %.0f per parameter)" % (f"{btok:,}", btok / p2) if btok else ""), "",
          "| model | parameters | extra steps | extra tokens | extra FLOPs | test perplexity | test accuracy | top-5 |",
          "|---|---:|---:|---:|---:|---:|---:|---:|",
          "| start | %s | – | – | – | %.3f | %.2f%% | %s |" % (f"{p2:,}", base_eval["perplexity"], 100 * base_eval["accuracy"],
              "%.2f%%" % (100 * base_eval["top5_accuracy"]) if "top5_accuracy" in base_eval else "–")]
    for _, _, name, steps in rows:
        ev = json.load(open(f"{out}/{name}.eval.json"))
        log = list(csv.DictReader(open(f"{out}/{name}.csv")))
        tok = int(log[-1]["tokens"])
        p = p2 if "continue" in name else None
        if p is None:
            import subprocess
            info = subprocess.run([os.environ.get("BIN", "bin") + "/performer", "info", "--weights",
                                   f"{out}/{name}.safetensors"], capture_output=True, text=True).stdout
            p = int([l.split()[1] for l in info.splitlines() if l.startswith("parameters:")][0])
        L.append("| %s | %s | %s | %s | %.2e | %.3f | %.2f%% | %s |" % (
            name, f"{p:,}", steps, f"{tok:,}", 6.0 * p * tok, ev["perplexity"], 100 * ev["accuracy"],
            "%.2f%%" % (100 * ev["top5_accuracy"]) if "top5_accuracy" in ev else "–"))
open(f"{out}/GROWTH.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
