#!/usr/bin/env bash
# Depth growth vs continued training at equal compute, at the small scale of weights/ablation.sh.
# Both continue from the same trained model (weights/ablation/favor-relu-conv15.safetensors: 2
# layers, d_model 128, conv 15, 6.0M tokens) with the same fresh warm-up + cosine schedule:
#   continue-2L   the 2-layer model, STEPS steps of 4,096 tokens
#   grow-4L       `train --init F --layers 4` (two identity layers on top), as many steps as give
#                 the same training FLOPs (6 x parameters x tokens; the 4-layer model has about
#                 twice the parameters, so about half the steps)
# and are evaluated like the ablation (test split, seed 1). Writes weights/ablation/GROWTH.md.
# Usage: weights/growth.sh   (STEPS=750 THREADS=2 BIN=bin)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-750}
THREADS=${THREADS:-2}
BIN=${BIN:-bin}
OUT=weights/ablation
BASE=$OUT/favor-relu-conv15.safetensors
[ -f "$BASE" ] || { echo "growth: $BASE missing: run VARIANTS=favor-relu-conv15 weights/ablation.sh first" >&2; exit 1; }
RUN="--data weights/data/train.bin --valid weights/data/valid.bin --warmup 50 --lr 1e-3
     --crop 256 --batch-tokens 4096 --eval-every 250 --eval-seqs 300 --seed 8 --threads $THREADS --quiet"
params() { $BIN/performer info --weights "$1" | awk '$1 == "parameters:" { print $2 }'; }
P2=$(params "$BASE")
# the grown model's size, from a zero-step look at it (lr 0, one step: the same function)
$BIN/performer train --init "$BASE" --layers 4 $RUN --steps 1 --lr 0 --out "$OUT/growth-probe.safetensors" 2>/dev/null
P4=$(params "$OUT/growth-probe.safetensors")
rm -f "$OUT/growth-probe.safetensors"
STEPS4=$(( (STEPS * P2 + P4 / 2) / P4 ))
run() {   # name steps extra-options...
    local name=$1 steps=$2; shift 2
    if [ ! -f "$OUT/$name.safetensors" ]; then
        local t0; t0=$(date +%s)
        # shellcheck disable=SC2086
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $BIN/performer train --init "$BASE" "$@" $RUN \
            --steps "$steps" --name "$name" --out "$OUT/$name.safetensors" --log "$OUT/$name.csv"
        echo $(( $(date +%s) - t0 )) > "$OUT/$name.seconds"
    fi
    if [ ! -f "$OUT/$name.eval.json" ] || [ "$OUT/$name.safetensors" -nt "$OUT/$name.eval.json" ]; then
        $BIN/performer eval --weights "$OUT/$name.safetensors" --fasta weights/data/test.fasta --seed 1 \
            --unigram weights/data/train.bin --threads "$THREADS" > "$OUT/$name.eval.json"
    fi
}
run growth-continue-2L "$STEPS"
run growth-grow-4L "$STEPS4" --layers 4
/usr/bin/env python3 - "$OUT" "$P2" "$P4" "$STEPS" "$STEPS4" <<'PY'
import csv, json, sys
out, p2, p4, s2, s4 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
base = json.load(open(f"{out}/favor-relu-conv15.eval.json"))
rows = [("start: favor-relu-conv15 (2 layers, 6.0M tokens)", p2, None, base)]
for name, p, s in (("growth-continue-2L", p2, s2), ("growth-grow-4L", p4, s4)):
    log = list(csv.DictReader(open(f"{out}/{name}.csv")))
    rows.append((name, p, (int(log[-1]["tokens"]), s), json.load(open(f"{out}/{name}.eval.json"))))
L = ["# Depth growth vs continued training (small scale, equal compute)", "",
     "Produced by `weights/growth.sh`. Both rows below the start continue from the same trained model",
     "(`favor-relu-conv15` of the kernel ablation) with the same fresh schedule (warm-up 50, cosine from",
     "1e-3, crops of 256, 4,096-token batches, seed 8); `grow-4L` is `train --init F --layers 4` (two",
     "identity layers on top of the two trained ones). Steps are set so that both spend the same",
     "training FLOPs (6 × parameters × tokens). Test = `performer eval` on weights/data/test.fasta (seed 1).",
     "",
     "| model | parameters | extra steps | extra tokens | extra FLOPs | test perplexity | test accuracy | top-5 |",
     "|---|---:|---:|---:|---:|---:|---:|---:|"]
for name, p, extra, ev in rows:
    t5 = "%.2f%%" % (100 * ev["top5_accuracy"]) if "top5_accuracy" in ev else "–"
    if extra:
        tok, s = extra
        L.append("| %s | %s | %d | %s | %.2e | %.3f | %.2f%% | %s |" % (name, f"{p:,}", s, f"{tok:,}", 6.0 * p * tok,
                 ev["perplexity"], 100 * ev["accuracy"], t5))
    else:
        L.append("| %s | %s | – | – | – | %.3f | %.2f%% | %s |" % (name, f"{p:,}", ev["perplexity"], 100 * ev["accuracy"], t5))
open(f"{out}/GROWTH.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
