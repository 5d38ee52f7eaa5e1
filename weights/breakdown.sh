#!/usr/bin/env bash
# weights/breakdown.sh - test-split quality broken down by similarity to the training split and by
# sequence length (weights/MODEL_CARD.md, "Where the model is good and where it is not").
#
# 1. Similarity. The split removes exact duplicates only, so many test proteins have close
#    relatives in train. `performer overlap` gives each test sequence the share of its k-mers
#    (k = 10 residues: 20^10 possible, so a shared one is almost never chance) that occur anywhere in
#    train.bin; the test sequences are binned by that share and `performer eval` runs on each bin.
# 2. Length. The test sequences binned by length, each bin evaluated in one pass over every whole
#    sequence, and again in pieces of at most 512 residues (the training crop) and 1,022 residues
#    (ESM-1b/ESM-2's limit) where the bin's sequences are longer than that: the same masked
#    positions, with less context.
# All evals use the model card's options (--seed 1, 15% masks, unigram from train.bin).
#
# usage: weights/breakdown.sh [WEIGHTS]   (default weights/model.safetensors; needs `make data`)
# env:   BIN (default bin), K (default 10), THREADS (default 2)
# out:   weights/eval/breakdown.jsonl (one line per evaluation: table, bin edges, window, sequences,
#        the eval JSON), weights/eval/breakdown.md (both tables, also printed) and
#        weights/eval/overlap.tsv (the per-sequence k-mer shares).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
W=${1:-weights/model.safetensors}
K=${K:-10}
THREADS=${THREADS:-2}
SIM_EDGES="0 0.05 0.2 0.5 0.8 0.95 1"
LEN_EDGES="0 256 512 1024 2048 100000000"
D=weights/data
for f in "$D/train.bin" "$D/test.fasta" "$W" "$BIN/performer"; do
    [ -e "$f" ] || { echo "breakdown.sh: $f is missing (make data / make)" >&2; exit 1; }
done
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p weights/eval

"$BIN/performer" overlap --train "$D/train.bin" --fasta "$D/test.fasta" --k "$K" > "$T/overlap.tsv"

# split_bins COLUMN "EDGES" PREFIX: one FASTA per bin of overlap.tsv's COLUMN (2 = length,
# 5 = k-mer share), $T/PREFIX<i>.fasta; the last bin includes its upper edge
split_bins() {
    awk -v col="$1" -v edges="$2" -v out="$T/$3" '
        BEGIN { nb = split(edges, e, " ") - 1 }
        FNR == NR { if (FNR > 1) { b = nb; for (i = 1; i < nb; i++) if ($col + 0 < e[i + 1] + 0) { b = i; break }; bin[$1] = b }; next }
        /^>/ { name = substr($1, 2)
               if (!(name in bin)) { print "breakdown.sh: " name " has no overlap row" > "/dev/stderr"; exit 1 }
               f = out bin[name] ".fasta" }
        { print > f }
    ' FS='\t' "$T/overlap.tsv" FS=' ' "$D/test.fasta"
}

# eval_bins TABLE "EDGES" PREFIX "WINDOWS": evaluates every non-empty bin whole, and with each
# --window N of WINDOWS when the bin's lower edge is at least N (so that every sequence is cut)
eval_bins() {
    local table=$1 prefix=$3 windows=$4 i=1 lo hi f n win
    set -- $2
    while [ $# -ge 2 ]; do
        lo=$1; hi=$2; shift
        f="$T/$prefix$i.fasta"
        if [ -s "$f" ]; then
            n=$(grep -c '^>' "$f")
            for win in 0 $windows; do
                if [ "$win" -gt 0 ] && awk -v lo="$lo" -v w="$win" 'BEGIN { exit !(lo + 0 < w + 0) }'; then continue; fi
                printf '{"table": "%s", "k": %s, "from": %s, "to": %s, "window": %s, "sequences": %s, "eval": %s}\n' \
                    "$table" "$K" "$lo" "$hi" "$win" "$n" \
                    "$("$BIN/performer" eval --weights "$W" --fasta "$f" --seed 1 --unigram "$D/train.bin" --window "$win" --threads "$THREADS")" \
                    >> "$T/out.jsonl"
            done
        fi
        i=$((i + 1))
    done
}

: > "$T/out.jsonl"
split_bins 5 "$SIM_EDGES" sim
eval_bins similarity "$SIM_EDGES" sim ""
split_bins 2 "$LEN_EDGES" len
eval_bins length "$LEN_EDGES" len "512 1022"

cp "$T/overlap.tsv" weights/eval/overlap.tsv
cp "$T/out.jsonl" weights/eval/breakdown.jsonl

# the tables: in eval's JSON the model's perplexity/accuracy come before the unigram's
awk -v k="$K" '
    function num(key, from,   s) { s = substr($0, from); if (!match(s, "\"" key "\": [0-9.e+-]+")) return ""
                                  return substr(s, RSTART + length(key) + 4, RLENGTH - length(key) - 4) }
    function row(label,   u) { u = index($0, "\"unigram\"")
        printf "| %s | %d | %d | %.3f | %.2f%% | %.2f%% | %.3f | %.2f%% |\n", label, num("sequences", 1),
               num("residues", 1), num("perplexity", 1), 100 * num("accuracy", 1), 100 * num("top5_accuracy", 1),
               num("perplexity", u), 100 * num("accuracy", u) }
    /"table": "similarity"/ { if (!s++) { printf "Share of the sequence'"'"'s %d-mers found in the training split (whole sequences):\n\n", k
            print "| share | sequences | masked residues | perplexity | accuracy | top-5 | unigram perplexity | unigram accuracy |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|" }
        to = num("to", 1); row("[" num("from", 1) ", " to ((to + 0 >= 1) ? "]" : ")")) }
    /"table": "length"/ { if (!l++) { print "\nSequence length (residues), whole sequences in one pass or in pieces of at most N residues:\n"
            print "| length | pass | sequences | masked residues | perplexity | accuracy | top-5 | unigram perplexity | unigram accuracy |"
            print "|---|---|---:|---:|---:|---:|---:|---:|---:|" }
        to = num("to", 1); win = num("window", 1)
        label = (to + 0 >= 100000000) ? "≥ " num("from", 1) : "[" num("from", 1) ", " to ")"
        row(label " | " (win == 0 ? "whole" : "pieces of " win)) }
' "$T/out.jsonl" > weights/eval/breakdown.md
cat weights/eval/breakdown.md
