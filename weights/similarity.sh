#!/usr/bin/env bash
# weights/similarity.sh - test-split quality by similarity to the training split.
#
# The split removes exact duplicates only, so many test proteins have close relatives in train.
# This measures how much that matters: `performer overlap` gives each test sequence the share of
# its k-mers (default k = 10 residues; 20^10 possible, so a shared one is almost never chance)
# that occur anywhere in train.bin; the test sequences are binned by that share and
# `performer eval` (same options as the model card's headline) runs on each bin.
#
# usage: weights/similarity.sh [WEIGHTS]   (default weights/model.safetensors; needs `make data`)
# env:   BIN (default bin), K (default 10), EDGES (bin edges, default "0 0.05 0.2 0.5 0.8 0.95 1")
# out:   weights/eval/similarity.jsonl (one line per bin: edges, sequences, the eval JSON) and
#        weights/eval/similarity.md (the table), both also printed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
W=${1:-weights/model.safetensors}
K=${K:-10}
EDGES=${EDGES:-"0 0.05 0.2 0.5 0.8 0.95 1"}
D=weights/data
for f in "$D/train.bin" "$D/test.fasta" "$W" "$BIN/performer"; do
    [ -e "$f" ] || { echo "similarity.sh: $f is missing (make data / make)" >&2; exit 1; }
done
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p weights/eval

"$BIN/performer" overlap --train "$D/train.bin" --fasta "$D/test.fasta" --k "$K" > "$T/overlap.tsv"
cp "$T/overlap.tsv" weights/eval/overlap.tsv

# bin index of every test sequence (the last bin includes its upper edge), then one FASTA per bin
awk -v edges="$EDGES" -v dir="$T" '
    BEGIN { nb = split(edges, e, " ") - 1 }
    FNR == NR { if (FNR > 1) { b = nb; for (i = 1; i < nb; i++) if ($5 < e[i + 1]) { b = i; break }; bin[$1] = b }; next }
    /^>/ { name = substr($1, 2); out = (name in bin) ? dir "/bin" bin[name] ".fasta" : ""
           if (out == "") { print "similarity.sh: " name " has no overlap row" > "/dev/stderr"; exit 1 } }
    { print > out }
' FS='\t' "$T/overlap.tsv" FS=' ' "$D/test.fasta"

set -- $EDGES
: > "$T/out.jsonl"
i=1
while [ $# -ge 2 ]; do
    lo=$1; hi=$2; shift
    f="$T/bin$i.fasta"
    if [ -s "$f" ]; then
        n=$(grep -c '^>' "$f")
        ev=$("$BIN/performer" eval --weights "$W" --fasta "$f" --seed 1 --unigram "$D/train.bin")
        printf '{"k": %s, "from": %s, "to": %s, "sequences": %s, "eval": %s}\n' "$K" "$lo" "$hi" "$n" "$ev" >> "$T/out.jsonl"
    fi
    i=$((i + 1))
done
cp "$T/out.jsonl" weights/eval/similarity.jsonl

# the table: the model's perplexity/accuracy come before the unigram's in eval's JSON
awk -v k="$K" '
    function num(key, from,   s) { s = substr($0, from); if (!match(s, "\"" key "\": [0-9.e+-]+")) return ""
                                  return substr(s, RSTART + length(key) + 4, RLENGTH - length(key) - 4) }
    BEGIN { printf "| share of the sequence'"'"'s %d-mers found in train | sequences | masked residues | perplexity | accuracy | top-5 | unigram perplexity | unigram accuracy |\n", k
            print "|---|---:|---:|---:|---:|---:|---:|---:|" }
    { u = index($0, "\"unigram\"")
      to = num("to", 1); hi = (to + 0 >= 1) ? "]" : ")"
      printf "| [%s, %s%s | %d | %d | %.3f | %.2f%% | %.2f%% | %.3f | %.2f%% |\n", num("from", 1), to, hi,
             num("sequences", 1), num("residues", 1), num("perplexity", 1), 100 * num("accuracy", 1),
             100 * num("top5_accuracy", 1), num("perplexity", u), 100 * num("accuracy", u) }
' "$T/out.jsonl" > weights/eval/similarity.md
cat weights/eval/similarity.md
