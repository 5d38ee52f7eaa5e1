#!/usr/bin/env bash
# The paper's protein comparison at small scale: exact-softmax Transformer vs Performer-softmax vs
# Performer-ReLU with the same size, data, seed and compute (steps x tokens), evaluated with
# `performer eval` on the held-out test split. Writes weights/ablation/{RESULTS.md,curves.png,*.csv}.
# usage: weights/ablation.sh   (needs `make data` first; env STEPS, THREADS override)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1500}
THREADS=${THREADS:-2}
OUT=weights/ablation
mkdir -p "$OUT"
BIN=${BIN:-bin}
ARCH="--layers 2 --d-model 128 --heads 4 --d-ff 512 --features 64"
RUN="--data weights/data/train.bin --valid weights/data/valid.bin --steps $STEPS --warmup 100 --lr 2e-3
     --crop 256 --batch-tokens 4096 --eval-every 250 --eval-seqs 300 --seed 7 --threads $THREADS --quiet"
rows=()
for k in exact favor-softmax favor-relu; do
    if [ ! -f "$OUT/$k.safetensors" ]; then
        t0=$(date +%s)
        # shellcheck disable=SC2086
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $BIN/performer train $ARCH --kernel $k $RUN \
            --name "ablation-$k" --out "$OUT/$k.safetensors" --log "$OUT/$k.csv"
        echo $(( $(date +%s) - t0 )) > "$OUT/$k.seconds"
    fi
    $BIN/performer eval --weights "$OUT/$k.safetensors" --fasta weights/data/test.fasta --seed 1 \
        --unigram weights/data/train.bin --threads "$THREADS" > "$OUT/$k.eval.json"
done
weights/plot "$OUT/curves.png" exact="$OUT/exact.csv" favor-softmax="$OUT/favor-softmax.csv" favor-relu="$OUT/favor-relu.csv" || true
/usr/bin/env python3 - "$OUT" "$STEPS" <<'PY'
import json, sys, os
out, steps = sys.argv[1], sys.argv[2]
lines = ["# Kernel ablation (small scale)", "",
         "Same architecture (2 layers, d_model 128, 4 heads, d_ff 512, 64 random features), data",
         f"(weights/data/train.bin), seed, schedule ({steps} steps of 4,096-token batches, crops of 256,",
         "AdamW 2e-3, warm-up 100, cosine) for each attention kernel. Test = `performer eval` on",
         "weights/data/test.fasta (15% of standard residues masked, seed 1, whole sequences), unigram",
         "frequencies from train.bin. Produced by `weights/ablation.sh`.", "",
         "| kernel | test perplexity | test accuracy | unigram perplexity | unigram accuracy | residues scored | train tokens | train seconds |",
         "|---|---|---|---|---|---|---|---|"]
for k in ("exact", "favor-softmax", "favor-relu"):
    r = json.load(open(f"{out}/{k}.eval.json"))
    rows = [l.split(",") for l in open(f"{out}/{k}.csv").read().split("\n")[1:] if l]
    sec = open(f"{out}/{k}.seconds").read().strip() if os.path.exists(f"{out}/{k}.seconds") else "?"
    lines.append(f"| {k} | {r['perplexity']:.3f} | {100*r['accuracy']:.2f}% | {r['unigram']['perplexity']:.3f} | "
                 f"{100*r['unigram']['accuracy']:.2f}% | {r['residues']} | {int(rows[-1][1]):,} | {sec} |")
lines += ["", "Learning curves: `curves.png` (training loss and validation perplexity vs tokens).", ""]
open(f"{out}/RESULTS.md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
