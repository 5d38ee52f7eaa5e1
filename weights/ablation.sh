#!/usr/bin/env bash
# The paper's protein comparison at small scale: exact-softmax Transformer vs Performer-softmax vs
# Performer-ReLU with the same size, data, seed and compute (steps x tokens), evaluated with
# `performer eval` on the held-out test split; plus FAVOR+ ReLU with the depthwise convolution on
# q, k, v (`--conv K`, variant name favor-relu-convK). Writes weights/ablation/{RESULTS.md,curves.png,*.csv}.
# usage: weights/ablation.sh   (needs `make data` first; env STEPS, THREADS, VARIANTS override;
# a variant whose .safetensors exists is not trained again, and not evaluated again while its
# .eval.json is newer than it)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1500}
THREADS=${THREADS:-2}
OUT=weights/ablation
mkdir -p "$OUT"
BIN=${BIN:-bin}
ARCH="--layers 2 --d-model 128 --heads 4 --d-ff 512 --features 64 --lr 2e-3"
RUN="--data weights/data/train.bin --valid weights/data/valid.bin --steps $STEPS --warmup 100
     --crop 256 --batch-tokens 4096 --eval-every 250 --eval-seqs 300 --seed 7 --threads $THREADS --quiet"
VARIANTS=${VARIANTS:-exact favor-softmax favor-relu favor-relu-conv3 favor-relu-conv9 favor-relu-conv15 favor-relu-conv31}
for k in $VARIANTS; do
    # a variant is a kernel name with optional suffixes: -convK (--conv K), -localK (--local K),
    # -maskNN (--mask-rate 0.NN in training; evaluation stays at 15%), -lrX (--lr X)
    case $k in exact*) kernel=exact ;; favor-softmax*) kernel=favor-softmax ;; favor-relu*) kernel=favor-relu ;;
        *) echo "unknown variant $k" >&2; exit 2 ;; esac
    conv=""; rest=${k#"$kernel"}
    while [ -n "$rest" ]; do
        rest=${rest#-}; part=${rest%%-*}; rest=${rest#"$part"}
        case $part in
            conv*) conv+=" --conv ${part#conv}" ;;
            local*) conv+=" --local ${part#local}" ;;
            mask*) conv+=" --mask-rate 0.${part#mask}" ;;
            lr*) conv+=" --lr ${part#lr}" ;;
            *) echo "unknown variant suffix $part in $k" >&2; exit 2 ;;
        esac
    done
    if [ ! -f "$OUT/$k.safetensors" ]; then
        t0=$(date +%s)
        # shellcheck disable=SC2086
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $BIN/performer train $ARCH --kernel $kernel $conv $RUN \
            --name "ablation-$k" --out "$OUT/$k.safetensors" --log "$OUT/$k.csv"
        echo $(( $(date +%s) - t0 )) > "$OUT/$k.seconds"
    fi
    if [ ! -f "$OUT/$k.eval.json" ] || [ "$OUT/$k.safetensors" -nt "$OUT/$k.eval.json" ]; then
        $BIN/performer eval --weights "$OUT/$k.safetensors" --fasta weights/data/test.fasta --seed 1 \
            --unigram weights/data/train.bin --threads "$THREADS" > "$OUT/$k.eval.json"
    fi
done
plots=()
for k in $VARIANTS; do plots+=("$k=$OUT/$k.csv"); done
weights/plot "$OUT/curves.png" "${plots[@]}" || true
/usr/bin/env python3 - "$OUT" "$STEPS" $VARIANTS <<'PY'
import json, sys, os
out, steps, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = ["# Kernel ablation (small scale)", "",
         "Same architecture (2 layers, d_model 128, 4 heads, d_ff 512, 64 random features), data",
         f"(weights/data/train.bin), seed, schedule ({steps} steps of 4,096-token batches, crops of 256,",
         "AdamW 2e-3, warm-up 100, cosine) for each attention kernel. Test = `performer eval` on",
         "weights/data/test.fasta (15% of standard residues masked, seed 1, whole sequences), unigram",
         "frequencies from train.bin. `-convK`: the same model with the depthwise convolution of",
         "width K on q, k, v (`--conv K`, identity-initialised; 3 x K x 128 more parameters per layer);",
         "`-localK`: a residual local block per layer, LayerNorm -> depthwise convolution of width K ->",
         "GELU -> linear (`--local K`, weights/FORMAT.md);",
         "`-maskNN`: trained with NN% of residues masked (evaluated at 15% like the others); `-lrX`:",
         "peak learning rate X instead of 2e-3.",
         "Produced by `weights/ablation.sh`.", "",
         "| variant | test perplexity | test accuracy | unigram perplexity | unigram accuracy | residues scored | train tokens | train seconds |",
         "|---|---|---|---|---|---|---|---|"]
for k in variants:
    r = json.load(open(f"{out}/{k}.eval.json"))
    rows = [l.split(",") for l in open(f"{out}/{k}.csv").read().split("\n")[1:] if l]
    sec = open(f"{out}/{k}.seconds").read().strip() if os.path.exists(f"{out}/{k}.seconds") else "?"
    lines.append(f"| {k} | {r['perplexity']:.3f} | {100*r['accuracy']:.2f}% | {r['unigram']['perplexity']:.3f} | "
                 f"{100*r['unigram']['accuracy']:.2f}% | {r['residues']} | {int(rows[-1][1]):,} | {sec} |")
lines += ["", "Train seconds are wall time on the shared 2-core machine: runs made at different times, loads",
          "and thread counts (THREADS) are not comparable by it; compute is equal by construction (same",
          "steps x tokens).", "",
          "Learning curves: `curves.png` (training loss and validation perplexity vs tokens).", ""]
open(f"{out}/RESULTS.md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
