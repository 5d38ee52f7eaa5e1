#!/usr/bin/env bash
# The CLI on a lab's own files: `performer eval` and `performer train --init F --fasta F` accept the
# FASTA variants other tools write (lowercase, a final '*', CRLF, blank lines, a UTF-8 byte-order
# mark, ';' comments, X/B/Z/U/O) with the same numbers as the plain file; refuse wrong files
# (gaps, numbered lines, old Mac line endings, an empty record, an empty/binary/gzip/UTF-16 file, a
# missing path, a directory, only non-standard residues) with exit 1 and a message naming the file,
# the line and the fix; refuse bad options with exit 2; check the output paths before training
# (missing directory, a directory, an output that is an input or another output) so no run is lost
# at the end and no input is overwritten; write valid JSON (eval output, weights provenance) for
# any file name; and `performer <command> --help` prints the usage. Also: score --mutations-file with
# a final comment line, --name (UTF-8, cut between characters), score --out, options a command does
# not use refused, export onto its own checkpoint refused, eval JSON with non-finite numbers, --threads
# taken by every command. Tiny fixture model: seconds.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin}
P=$BIN/performer
W=tests/fixtures/model.safetensors
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
n=0

S=MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKAL
S2=GSSGKTTLLRALLEKGLGAEVVVIDPSFVSEEAIKAGLDASKLAEIVKDAAEKSGGRLVVLDLTALLHRSPEEVLEELLKGLNRLVDSLGLIH
printf '>a\n%s\n>b\n%s\n' "$S" "$S2" > "$T/plain.fasta"

# expect_rc RC ERRFILE command...: runs the command, checks its exit status
expect_rc() {
    local want=$1 errf=$2; shift 2
    "$@" > "$T/out" 2> "$errf"
    local rc=$?
    [ $rc -eq "$want" ] || fail "$* -> exit $rc, expected $want; stderr: $(cat "$errf")"
    n=$((n+1))
}
# has FILE TEXT...: every TEXT occurs in FILE
has() {
    local f=$1; shift
    for t in "$@"; do grep -qF -- "$t" "$f" || fail "'$t' missing from: $(cat "$f")"; done
}

# 1. accepted variants: the same sequences, so the same eval numbers as the plain file
"$P" eval --weights "$W" --fasta "$T/plain.fasta" --seed 3 > "$T/plain.json" || fail "eval of the plain file"
ppl() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["sequences"], r["residues"], r["perplexity"], r["accuracy"])' "$1"; }
want=$(ppl "$T/plain.json")
lc() { tr 'A-Z' 'a-z' <<< "$1"; }
printf '>a desc\n%s\n>b\n%s\n' "$(lc "$S")" "$(lc "$S2")" > "$T/v_lower.fasta"
printf '>a\n%s*\n>b\n%s*\n' "$S" "$S2" > "$T/v_stop.fasta"
printf '>a\r\n%s\r\n%s\r\n\r\n>b\r\n%s\r\n' "${S:0:50}" "${S:50}" "$S2" > "$T/v_crlf.fasta"
printf '\n\n>a\n\n%s\n\n%s\n\n\n>b\n%s\n\n' "${S:0:40}" "${S:40}" "$S2" > "$T/v_blank.fasta"
printf '\xef\xbb\xbf>a\n%s\n>b\n%s\n' "$S" "$S2" > "$T/v_bom.fasta"
printf ';exported by an old tool\n>a\n%s\n; a comment\n  >b\n%s\n' "$S" "$S2" > "$T/v_comment.fasta"
for v in lower stop crlf blank bom comment; do
    expect_rc 0 "$T/err" "$P" eval --weights "$W" --fasta "$T/v_$v.fasta" --seed 3
    cp "$T/out" "$T/v_$v.json"
    [ "$(ppl "$T/v_$v.json")" = "$want" ] || fail "$v: $(ppl "$T/v_$v.json") differs from the plain file's $want"
done
printf '>u\nMKUOXBZ%s\n' "$S" > "$T/uoxbz.fasta"
expect_rc 0 "$T/err" "$P" eval --weights "$W" --fasta "$T/uoxbz.fasta"
printf '>only\n%s\n' "$S" > "$T/one.fasta"
expect_rc 0 "$T/err" "$P" eval --weights "$W" --fasta "$T/one.fasta"
echo "accepted: lowercase, '*', CRLF, blank lines, BOM, ';' comments, indented headers (same numbers); U/O/X/B/Z; one sequence"

# 2. refused files: exit 1, the file, the line and the fix in the message
printf '>a\n%s---%s\n' "${S:0:30}" "${S:30}" > "$T/gaps.fasta"
printf '>a\n1 %s\n61 %s\n' "${S:0:60}" "${S:60}" > "$T/numbered.fasta"
printf '>a\r%s\r>b\r%s\r' "$S" "$S2" > "$T/mac.fasta"
printf '>a\n%s\n>empty\n>c\n%s\n' "$S" "$S2" > "$T/norec.fasta"
: > "$T/empty.fasta"
head -c 3000 /dev/urandom | sed '1s/^/\x01/' > "$T/binary.fasta"
printf '>a\n%s\n' "$S" | gzip > "$T/gz.fasta"
printf '>a\n%s\n' "$S" | iconv -f UTF-8 -t UTF-16 > "$T/utf16.fasta"
printf '>x\nXXXXXXXXBZ\n' > "$T/onlyx.fasta"
mkdir "$T/adir"
check_bad() {  # file, texts...
    local f=$1; shift
    expect_rc 1 "$T/err" "$P" eval --weights "$W" --fasta "$f"
    has "$T/err" "$f" "$@"
    expect_rc 1 "$T/err" "$P" train --init "$W" --fasta "$f" --out "$T/never.safetensors" --steps 1 --quiet
    has "$T/err" "$f" "$@"
    [ -e "$T/never.safetensors" ] && fail "weights written for $f"
    grep -q '^training ' "$T/err" && fail "training started on $f"
}
check_bad "$T/gaps.fasta" "line 2" "'-' at position 31" "alignment gaps" "sed"
check_bad "$T/numbered.fasta" "line 2" "'1' at position 1" "numbered lines"
check_bad "$T/mac.fasta" "line 1" "old Mac line endings" "tr '\\r' '\\n'"
check_bad "$T/norec.fasta" "record 2 'empty' (line 3) has no residues" "add its sequence or remove the record"
check_bad "$T/empty.fasta" "no FASTA records"
check_bad "$T/binary.fasta" "line 1" "binary data"
check_bad "$T/gz.fasta" "line 1" "gzip-compressed" "gunzip"
check_bad "$T/utf16.fasta" "line 1" "UTF-16" "iconv"
check_bad "$T/onlyx.fasta" "no standard residues"
check_bad "$T/missing.fasta" "No such file or directory"
check_bad "$T/adir" "Is a directory"
echo "refused files: gaps, numbered lines, old Mac line endings, empty record, empty, binary, gzip, UTF-16, only X, missing, directory"

# 3. bad options: exit 2 with a message; --help
for args in "--mask-rate 0" "--mask-rate nan" "--mask-rate 1.5" "--mask-rate inf"; do
    # shellcheck disable=SC2086
    expect_rc 2 "$T/err" "$P" eval --weights "$W" --fasta "$T/plain.fasta" $args
    has "$T/err" "--mask-rate expects a number"
done
TR="train --init $W --fasta $T/plain.fasta --out $T/x.safetensors --quiet --crop 96 --batch-tokens 512"
for args in "--steps 0" "--lr nan" "--lr -1" "--mask-rate 0" "--clip inf" "--weight-decay -0.1" \
            "--min-lr-frac 2" "--ckpt-minutes -1" "--resume" "--data $T/x.bin"; do
    # shellcheck disable=SC2086
    expect_rc 2 "$T/err" "$P" $TR $args
    [ -s "$T/err" ] || fail "train $args: no message"
done
has "$T/err" "give --data F.bin or --fasta F, not both"
for c in eval train info predict score embed run-jobs overlap export init; do
    expect_rc 0 "$T/err" "$P" "$c" --help
    has "$T/out" "usage: performer" "  eval    --weights F --fasta F"
done
echo "bad options refused with exit 2; every command takes --help"

# 4. output paths are checked before training; an input is never overwritten
cp "$T/plain.fasta" "$T/keep.fasta"
bad_out() {  # expected text, train options...
    local want=$1; shift
    local t0=$SECONDS
    expect_rc 1 "$T/err" "$P" train --init "$W" --fasta "$T/plain.fasta" --valid "$T/one.fasta" --steps 100000 --quiet "$@"
    has "$T/err" "$want"
    grep -q '^training ' "$T/err" && fail "training started before the path check: $*"
    [ $((SECONDS - t0)) -lt 20 ] || fail "the path check took $((SECONDS - t0)) s: $*"
    cmp -s "$T/plain.fasta" "$T/keep.fasta" || fail "--fasta file changed by: $*"
}
bad_out "create the directory" --out "$T/nodir/m.safetensors"
bad_out "--ckpt: cannot create a temporary file" --out "$T/m.safetensors" --ckpt "$T/nodir/m.ckpt"
bad_out "is a directory: give a file name in it" --out "$T/adir"
bad_out "--out $T/plain.fasta is the same file as --fasta" --out "$T/plain.fasta"
bad_out "is the same file as --fasta" --out "$T/m.safetensors" --log "$T/./plain.fasta"
bad_out "is the same file as --valid" --out "$T/m.safetensors" --ckpt "$T/../$(basename "$T")/one.fasta"
bad_out "--out and --ckpt are the same file" --out "$T/m.safetensors" --ckpt "$T/m.safetensors"
bad_out "is the same file as --init" --out "$T/m.safetensors" --ckpt "$W"
[ -e "$T/m.safetensors" ] && fail "weights written by a refused run"
ls "$T" | grep -q '\.tmp\.' && fail "temporary files left behind: $(ls "$T")"
echo "output paths: missing directory, a directory, an input or another output refused before training"

# 5. fine-tuning on one sequence, without --valid, under an awkward file name: the weights load in
#    info and eval, their provenance is valid JSON (null validation numbers), and --out may replace
#    its own --init file
cp "$T/one.fasta" "$T/we\"ird \\name.fasta"
cp "$W" "$T/init.safetensors"
expect_rc 0 "$T/err" "$P" train --init "$W" --fasta "$T/we\"ird \\name.fasta" --out "$T/ft.safetensors" \
    --log "$T/ft.csv" --steps 3 --quiet --crop 96 --batch-tokens 512 --threads 1
"$P" info --weights "$T/ft.safetensors" > "$T/info" || fail "info on the fine-tuned weights"
has "$T/info" "trained:     yes"
python3 - "$T/info" "$T/ft.csv" <<'PY' || fail "provenance or log"
import csv, json, sys
prov = [l for l in open(sys.argv[1]) if l.startswith("provenance:")][0].split(":", 1)[1].strip()
p = json.loads(prov)
assert p["data"].endswith('we"ird \\name.fasta'), p["data"]
assert p["val_perplexity"] is None and p["val_accuracy"] is None, p
assert p["steps"] == 3, p
rows = list(csv.DictReader(open(sys.argv[2])))
assert [r["step"] for r in rows] == ["1", "2", "3"], rows
PY
expect_rc 0 "$T/err" "$P" eval --weights "$T/ft.safetensors" --fasta "$T/we\"ird \\name.fasta"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["fasta"].endswith("we\"ird \\name.fasta"), r["fasta"]' \
    "$T/out" || fail "eval JSON with an awkward file name: $(head -c 300 "$T/out")"
expect_rc 0 "$T/err" "$P" train --init "$T/init.safetensors" --fasta "$T/one.fasta" --out "$T/init.safetensors" \
    --steps 2 --quiet --crop 96 --batch-tokens 512 --threads 1
"$P" info --weights "$T/init.safetensors" | grep -q "trained:     yes" || fail "--out over its own --init"
# --resume with a checkpoint that does not exist yet says so and starts from the beginning
expect_rc 0 "$T/err" "$P" train --init "$W" --fasta "$T/one.fasta" --out "$T/r.safetensors" --ckpt "$T/r.ckpt" \
    --resume --steps 2 --quiet --crop 96 --batch-tokens 512 --threads 1
has "$T/err" "no checkpoint $T/r.ckpt yet, starting from the beginning"
echo "fine-tuning: one sequence, awkward file name, no --valid: loadable weights, valid provenance JSON"

# 6. embed / run-jobs --out: replaced only by a complete output (through a temp file), never an input
cp "$T/plain.fasta" "$T/keep.fasta"
echo "old contents" > "$T/emb.jsonl"
expect_rc 0 "$T/err" "$P" run-jobs --weights "$W" --fasta "$T/plain.fasta" --task embed --out "$T/emb.jsonl" --quiet
[ "$(wc -l < "$T/emb.jsonl")" = 2 ] && ! grep -q "old contents" "$T/emb.jsonl" || fail "run-jobs --out: $(head -c 300 "$T/emb.jsonl")"
ls "$T" | grep -q '\.tmp\.' && fail "run-jobs left a temporary file: $(ls "$T")"
expect_rc 0 "$T/err" "$P" embed --weights "$W" --fasta "$T/plain.fasta" --out /dev/stdout --quiet
[ "$(wc -l < "$T/out")" = 2 ] || fail "embed --out /dev/stdout wrote $(wc -l < "$T/out") lines"
for args in "--out $T/plain.fasta" "--out $T/./plain.fasta" "--out $W"; do
    # shellcheck disable=SC2086
    expect_rc 2 "$T/err" "$P" run-jobs --weights "$W" --fasta "$T/plain.fasta" --task embed $args
    has "$T/err" "is the same file as" "would overwrite it"
done
cmp -s "$T/plain.fasta" "$T/keep.fasta" || fail "run-jobs overwrote its --fasta"
"$P" info --weights "$W" > /dev/null || fail "run-jobs damaged --weights"
expect_rc 1 "$T/err" "$P" embed --weights "$W" --fasta "$T/plain.fasta" --out "$T/adir"
has "$T/err" "is a directory"
echo "embed / run-jobs --out: atomic replacement, /dev/stdout, an input or the weights refused"

# 7. score --mutations-file whose last line is a comment without a newline: the comment is blanked up
#    to the end of the text, not past it (ASan: the bytes after the text are filled with '#', which the
#    old loop ran on through, out of the buffer)
printf 'K2A # first\nT3G\n# end' > "$T/muts.txt"
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}malloc_fill_byte=35:max_malloc_fill_size=1048576" \
    expect_rc 0 "$T/err" "$P" score --weights "$W" --mutations-file "$T/muts.txt" "$S"
has "$T/out" "K2A	" "T3G	"
[ "$(grep -c '^[A-Z][0-9]' "$T/out")" = 2 ] || fail "--mutations-file with a final comment: $(cat "$T/out")"
echo "score --mutations-file: a last comment line without a newline"

# 8. --name: not UTF-8 is refused at once (exit 2); a long name is cut between characters, so the
#    checkpoints and weights (JSON metadata) are written
for c in "init --out $T/n.safetensors" "train --init $W --fasta $T/one.fasta --out $T/n.safetensors --steps 1 --quiet"; do
    # shellcheck disable=SC2086
    expect_rc 2 "$T/err" "$P" $c --name "$(printf 'bad\xffname')"
    has "$T/err" "--name is not valid UTF-8"
done
a126=$(printf 'a%.0s' $(seq 126))
expect_rc 0 "$T/err" "$P" init --out "$T/n.safetensors" --name "${a126}é"   # a cut at 127 bytes splits the é
has "$T/out" "name:        $a126"
expect_rc 0 "$T/err" "$P" train --init "$W" --fasta "$T/one.fasta" --out "$T/n2.safetensors" --ckpt "$T/n2.ckpt" \
    --name "${a126}éxyz" --steps 2 --quiet --crop 96 --batch-tokens 512
expect_rc 0 "$T/err" "$P" export --ckpt "$T/n2.ckpt" --out "$T/n3.safetensors"
grep -qx "name: *$a126" "$T/out" || fail "exported name: $(grep '^name' "$T/out")"
echo "--name: non-UTF-8 refused, a long name cut between characters"

# 9. score --out is written (atomically) like the other commands' --out; options a command does not
#    use are refused with exit 2, not ignored (score --fasta scored the FASTA file's first record)
echo "old contents" > "$T/score.tsv"
expect_rc 0 "$T/err" "$P" score --weights "$W" --mutations K2A --out "$T/score.tsv" "$S"
[ -s "$T/out" ] && fail "score --out also wrote to stdout: $(cat "$T/out")"
has "$T/score.tsv" "mutant	score" "K2A	"
grep -q "old contents" "$T/score.tsv" && fail "score --out did not replace the file"
expect_rc 0 "$T/err" "$P" score --weights "$W" --mutations K2A --json --out "$T/score.json" "$S"
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["scores"][0]["mutant"] == "K2A"' "$T/score.json" \
    || fail "score --json --out: $(head -c 300 "$T/score.json")"
cp "$T/muts.txt" "$T/muts.keep"
for args in "--out $W" "--mutations-file $T/muts.txt --out $T/muts.txt"; do
    # shellcheck disable=SC2086
    expect_rc 2 "$T/err" "$P" score --weights "$W" --mutations K2A $args "$S"
    has "$T/err" "is the same file as" "would overwrite it"
done
cmp -s "$T/muts.txt" "$T/muts.keep" || fail "score --out overwrote its --mutations-file"
expect_rc 1 "$T/err" "$P" score --weights "$W" --mutations A2G --out "$T/score.tsv" "$S"   # K at 2, not A
has "$T/score.tsv" "K2A	"
ls "$T" | grep -q '\.tmp\.' && fail "score left a temporary file: $(ls "$T")"
refused() {  # expected text, command...
    local want=$1; shift
    expect_rc 2 "$T/err" "$P" "$@"
    has "$T/err" "$want"
    [ -s "$T/out" ] && fail "$*: wrote output: $(head -c 200 "$T/out")"
}
refused "--fasta is not used by score" score --weights "$W" --mutations K2A --fasta "$T/plain.fasta" "$S"
refused "--task is not used by score" score --weights "$W" --mutations K2A --task embed "$S"
refused "--task is not used by embed" embed --weights "$W" --task predict "$S"
refused "--json is not used by embed" embed --weights "$W" --json "$S"
refused "--mutations-file is not used by embed" embed --weights "$W" --mutations-file "$T/muts.txt" "$S"
refused "--mutations-file is not used by run-jobs" run-jobs --weights "$W" --fasta "$T/plain.fasta" --task score \
    --mutations K2A --mutations-file "$T/muts.txt"
refused "--max-pll-length is not used by embed" embed --weights "$W" --max-pll-length 10 "$S"
refused "a SEQUENCE is not used by run-jobs" run-jobs --weights "$W" --fasta "$T/plain.fasta" --task embed "$S"
refused "not both" embed --weights "$W" --fasta "$T/plain.fasta" "$S"
refused "--top-k is an option of the predict task, not of embed" embed --weights "$W" --top-k 3 "$S"
refused "--layer is an option of the embed task, not of score" score --weights "$W" --mutations K2A --layer 1 "$S"
refused "--method is an option of the score task, not of embed" run-jobs --weights "$W" --fasta "$T/plain.fasta" \
    --task embed --method wt-marginals
echo "score --out written atomically; unused options of score / embed / run-jobs refused"

# 10. export never writes over its own checkpoint
cp "$T/r.ckpt" "$T/r.keep"
for out in "$T/r.ckpt" "$T/./r.ckpt"; do
    expect_rc 2 "$T/err" "$P" export --ckpt "$T/r.ckpt" --out "$out"
    has "$T/err" "is the same file as --ckpt" "would overwrite the checkpoint"
done
cmp -s "$T/r.ckpt" "$T/r.keep" || fail "export overwrote its checkpoint"
expect_rc 0 "$T/err" "$P" export --ckpt "$T/r.ckpt" --out "$T/r_export.safetensors"
echo "export: --out naming the --ckpt file refused"

# 11. eval prints valid JSON for a model whose outputs overflow: non-finite numbers are null (a head
#     bias of 1e4 makes p(residue) ~ e^-10000 for all but one, so the perplexity is infinite)
python3 - "$W" "$T/overflow.safetensors" <<'PY' || fail "cannot write the overflow fixture"
import json, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
start = json.loads(b[8:8 + n])["head.bias"]["data_offsets"][0]
struct.pack_into("<f", b, 8 + n + start, 1e4)
open(sys.argv[2], "wb").write(b)
PY
expect_rc 0 "$T/err" "$P" eval --weights "$T/overflow.safetensors" --fasta "$T/plain.fasta"
python3 - "$T/out" <<'PY' || fail "eval JSON with non-finite numbers: $(head -c 600 "$T/out")"
import json, sys
def bad(c): raise ValueError("non-finite constant " + c)
r = json.loads(open(sys.argv[1]).read(), parse_constant=bad)
assert r["perplexity"] is None and r["residues"] > 0, r
assert isinstance(r["accuracy"], float) and isinstance(r["unigram"]["perplexity"], float), r
PY
has "$T/err" "not finite"
echo "eval: non-finite numbers are null, the output is valid JSON"

# 12. --threads (a common option) is taken by every command
expect_rc 0 "$T/err" "$P" info --weights "$W" --threads 1
expect_rc 0 "$T/err" "$P" init --out "$T/t.safetensors" --threads 1
expect_rc 0 "$T/err" "$P" export --ckpt "$T/r.ckpt" --out "$T/t2.safetensors" --threads 1
expect_rc 0 "$T/err" "$P" overlap --train "$T/plain.fasta" --fasta "$T/one.fasta" --threads 1
expect_rc 0 "$T/err" "$P" predict --weights "$W" --threads 1 "MK<mask>AY"
expect_rc 0 "$T/err" "$P" eval --weights "$W" --fasta "$T/one.fasta" --threads 1
expect_rc 0 "$T/err" "$P" score --weights "$W" --mutations K2A --threads 1 "$S"
expect_rc 0 "$T/err" "$P" embed --weights "$W" --threads 1 "$S"
expect_rc 2 "$T/err" "$P" info --weights "$W" --threads 0
has "$T/err" "--threads expects an integer in 1..256"
echo "--threads: taken by every command"
echo "cli input tests ok ($n commands)"
