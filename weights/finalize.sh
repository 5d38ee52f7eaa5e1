#!/usr/bin/env bash
# weights/finalize.sh N - publishes stage N's training run (weights/runs/stageN/, started with the
# command in weights/MODEL_CARD.md) when it beats the shipped release on the whole validation split.
#
# 1. waits for the trainer to exit and checks that the run is complete (its --steps: 2,500, or S
#    given as --steps S; its stable checkpoint saved);
# 2. evaluates it on all validation sequences with the headline's options and stops (exit 2, nothing
#    changed) unless its perplexity is below weights/eval/valid.json's: releases are chosen on
#    validation, never on test;
# 3. evaluates it on the test split in float32 and bf16; the old valid.json becomes
#    valid_previous.json; the run's weights become weights/model.safetensors and its stable state
#    (where its decay began: 500 steps before its end since stage 24, 1,000 before) weights/stable.safetensors,
#    the start of the next stage;
# 4. appends the run's log to weights/train_log.csv (steps, tokens and seconds continued from the
#    parent's row where the run branched off; stage column N), redraws weights/curves.png;
# 5. runs weights/breakdown.sh and tests/e2e/test_server_precision.py, whose per-position line
#    weights/release_docs.py takes (with --session and --wall-note passed on) to rewrite the model
#    card, TRAINING.md and README; checks them with tests/e2e/test_model_card.py;
# 6. only then commits, in three commits (weights and eval files; the breakdown; the documents), so
#    that main never holds weights its documents do not describe. Where release_docs.py stops (a
#    sentence whose wording the new figures would change) or a check fails, nothing is committed: the
#    files stay in the working tree; write the sentence, rerun test_model_card.py, and commit them.
#
# Needs `make`, `make data`, python3 with numpy (the precision test) and gnuplot (weights/plot). About
# 15 minutes on 2 cores. usage: weights/finalize.sh N [--steps S] [--session S] [--wall-note TEXT]
#   --steps: the run's --steps (default 2500; more where the machine ran a longer stage in its session)
#   S: the session that trained the stage (release_docs.py's default: one more than the card's count)
#   TEXT: how it ran, for the card's training table (release_docs.py's default: "one run, not paused")
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: weights/finalize.sh N [--steps S] [--session S] [--wall-note TEXT]}
shift
DOCS=()
STEPS=2500
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) [ $# -ge 2 ] && [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "finalize: --steps needs a number of steps" >&2; exit 1; }
                 STEPS=$2; shift 2 ;;
        --session|--wall-note) [ $# -ge 2 ] || { echo "finalize: $1 needs a value" >&2; exit 1; }
                               DOCS+=("$1" "$2"); shift 2 ;;
        *) echo "finalize: unknown option $1 (usage: weights/finalize.sh N [--steps S] [--session S] [--wall-note TEXT])" >&2; exit 1 ;;
    esac
done
[ -z "$(git status --porcelain -- weights README.md)" ] || {
    echo "finalize: weights/ or README.md has uncommitted changes; commit or restore them first" >&2; exit 1; }
R=weights/runs/stage$N
W=$R/stage$N.safetensors
OPTS=(--seed 1 --unigram weights/data/train.bin)
while pgrep -f "performer trai[n]" >/dev/null; do sleep 20; done
for f in "$W" "$R/stage${N}_stable.ckpt" "$R/stage$N.csv"; do
    [ -f "$f" ] || { echo "finalize: $f is missing (did the run finish?)" >&2; exit 1; }
done
last=$(tail -1 "$R/stage$N.csv" | cut -d, -f1)
[ "$last" = "$STEPS" ] || { echo "finalize: $R/stage$N.csv ends at step $last, not $STEPS (resume the run, or give its --steps)" >&2; exit 1; }

bin/performer eval --weights "$W" --fasta weights/data/valid.fasta "${OPTS[@]}" > "$R/valid.json"
python3 - "$R/valid.json" weights/eval/valid.json <<'EOF' || { echo "finalize: stage $N is not better on validation; the release stays" >&2; exit 2; }
import json, sys
new, old = (json.load(open(p)) for p in sys.argv[1:3])
print("whole validation split: %.3f / %.2f%% against the release's %.3f / %.2f%%"
      % (new["perplexity"], 100 * new["accuracy"], old["perplexity"], 100 * old["accuracy"]))
sys.exit(0 if new["perplexity"] < old["perplexity"] else 1)
EOF
bin/performer eval --weights "$W" --fasta weights/data/test.fasta "${OPTS[@]}" > "$R/test.json"
bin/performer eval --weights "$W" --fasta weights/data/test.fasta "${OPTS[@]}" --precision bf16 > "$R/test_bf16.json"
cp weights/eval/valid.json weights/eval/valid_previous.json
cp "$R/valid.json" "$R/test.json" "$R/test_bf16.json" weights/eval/
cp "$W" weights/model.safetensors
bin/performer export --ckpt "$R/stage${N}_stable.ckpt" --out weights/stable.safetensors

# the run's rows continue its parent's: stage N-1's row where its decay began (its last row at its peak
# learning rate: step 1,500 up to stage 23, 2,000 from stage 24)
python3 - "$R/stage$N.csv" weights/train_log.csv "$N" <<'EOF'
import csv, sys
sys.path.insert(0, "weights")
from release_docs import branch_row
run, log, n = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(log, newline="")))
if any(r["stage"] == n for r in rows):
    sys.exit("finalize: train_log.csv already has rows of stage %s" % n)
parent = [r for r in rows if r["stage"] == str(int(n) - 1)]
b = branch_row(parent) if parent else None
if b is None or b is parent[-1]:
    sys.exit("finalize: no row of stage %d where its decay began in train_log.csv" % (int(n) - 1))
with open(log, "a", newline="") as out:
    for r in csv.DictReader(open(run, newline="")):
        cells = [str(int(r["step"]) + int(b["step"])), str(int(r["tokens"]) + int(b["tokens"])),
                 "%.1f" % (float(r["elapsed_s"]) + float(b["elapsed_s"]))]
        cells += [r[k] for k in ("lr", "loss", "grad_norm", "tokens_per_s", "val_ppl", "val_acc", "val_uni_ppl")] + [n]
        out.write(",".join(cells) + "\n")
print("train_log.csv: stage %s appended from global step %s" % (n, b["step"]))
EOF
weights/plot weights/curves.png performer-protein-small=weights/train_log.csv

bash weights/breakdown.sh
python3 tests/e2e/test_server_precision.py > "$R/precision.out" || { cat "$R/precision.out"; exit 1; }
LINE=$(grep "residues: max" "$R/precision.out")
echo "$LINE"
UNDONE="finalize: nothing is committed; stage $N's files are in the working tree (git status)"
python3 weights/release_docs.py --precision-line "$LINE" "${DOCS[@]}" || { echo "$UNDONE" >&2; exit 1; }
python3 tests/e2e/test_model_card.py > "$R/model_card.out" || { tail -20 "$R/model_card.out"; echo "$UNDONE" >&2; exit 1; }
tail -1 "$R/model_card.out"
rm -rf tests/e2e/__pycache__ weights/__pycache__ tests/reference/__pycache__

git add weights/model.safetensors weights/stable.safetensors weights/eval/valid.json weights/eval/valid_previous.json \
    weights/eval/test.json weights/eval/test_bf16.json weights/train_log.csv weights/curves.png
git commit -q -m "weights: stage $N (from stage $((N - 1))'s stable state) shipped: chosen on the whole validation split; test eval files, joined train log and curves"
git add weights/eval/breakdown.jsonl weights/eval/breakdown.md weights/eval/overlap.tsv
git commit -q -m "weights: stage $N's breakdown by similarity and length"
git add README.md weights/MODEL_CARD.md weights/TRAINING.md
FIGS=$(python3 -c 'import json, sys; t, v, p = (json.load(open(f)) for f in sys.argv[1:4]); print("test %.3f / %.2f%%; whole validation %.3f vs %.3f" % (t["perplexity"], 100 * t["accuracy"], v["perplexity"], p["perplexity"]))' \
    weights/eval/test.json weights/eval/valid.json weights/eval/valid_previous.json)
git commit -q -m "model card, TRAINING.md, README: stage $N ($FIGS), written by weights/release_docs.py"
git log --oneline -3
