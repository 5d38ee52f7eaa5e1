#!/usr/bin/env bash
# Trainer acceptance: a tiny model's loss falls on a tiny corpus within a few hundred steps;
# --resume continues exactly (same losses as an uninterrupted run); SIGTERM writes a checkpoint;
# fine-tuning from weights on a FASTA works; `performer eval` prints its JSON; export works;
# the warm-up-stable-decay schedule and its branch checkpoint; checkpoints keep the training kernel
# (export, --resume; conflicting options refused), an unreadable checkpoint stops --resume, and
# checkpoint metadata is parsed strictly; the progress line shows no figure before the first evaluation.
set -euo pipefail
BIN=${BIN:-bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# A tiny corpus with strong structure: 120 sequences cut from a repeated 12-residue motif.
python3 - "$T/tiny.fasta" <<'PY'
import random, sys
random.seed(5)
motif = "MKTAYIAKQRQISFVKSHFSRQ"
with open(sys.argv[1], "w") as f:
    for i in range(120):
        n = random.randint(40, 90); off = random.randint(0, len(motif) - 1)
        s = (motif * 10)[off:off + n]
        f.write(f">seq{i} synthetic\n{s[:50]}\n{s[50:]}\n")
PY
ARCH="--layers 2 --d-model 32 --heads 4 --d-ff 64 --features 16 --kernel favor-relu --crop 96 --batch-tokens 1024 --eval-every 0 --quiet --threads 1"

# 1. loss falls
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/m.safetensors" --log "$T/a.csv" \
    $ARCH --steps 1200 --warmup 20 --lr 3e-3 --seed 3
python3 - "$T/a.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
loss = [float(r["loss"]) for r in rows]
first, last = sum(loss[:10]) / 10, sum(loss[-20:]) / 20
print(f"loss first 10 steps {first:.3f} -> last 20 steps {last:.3f} ({len(loss)} steps)")
assert len(loss) == 1200, len(loss)
assert last < 0.5 * first, "loss did not fall by half"
PY

# 2. resume is exact: 60 steps straight vs 25 + resume
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/u.safetensors" --log "$T/u.csv" --ckpt "$T/u.ckpt" \
    $ARCH --steps 60 --warmup 5 --lr 3e-3 --seed 9
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/r.safetensors" --log "$T/r.csv" --ckpt "$T/r.ckpt" \
    $ARCH --steps 60 --warmup 5 --lr 3e-3 --seed 9 --stop-after 25
[ -f "$T/r.ckpt" ] || fail "no checkpoint after --stop-after"
[ -f "$T/r.safetensors" ] && fail "final weights written by an interrupted run"
# a run killed after its last checkpoint has logged steps that the resume computes again: those rows
# (26-28 here, the last one cut short) are dropped on --resume, so the log has each step once
printf '26,1,1,1e-3,9.9,1,1,,,\n27,1,1,1e-3,9.9,1,1,,,\n28,1,1' >> "$T/r.csv"
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/r.safetensors" --log "$T/r.csv" --ckpt "$T/r.ckpt" \
    $ARCH --steps 60 --warmup 5 --lr 3e-3 --seed 9 --resume 2>"$T/r.err"
grep -q "dropped 3 rows after step 25" "$T/r.err" || fail "the log's rows after the checkpoint were not dropped: $(cat "$T/r.err")"
u=$(cut -d, -f1,2,5 "$T/u.csv"); r=$(cut -d, -f1,2,5 "$T/r.csv")
[ "$u" = "$r" ] || { diff <(echo "$u") <(echo "$r") | head; fail "resumed losses differ from the uninterrupted run"; }
cmp <($BIN/performer info --weights "$T/u.safetensors" | grep -v -e provenance -e file -e sha256) \
    <($BIN/performer info --weights "$T/r.safetensors" | grep -v -e provenance -e file -e sha256) || fail "info differs"
echo "resume: 60 logged steps identical to the uninterrupted run"

# 3. SIGTERM writes a checkpoint and exits 0
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/s.safetensors" --ckpt "$T/s.ckpt" \
    $ARCH --steps 100000 --warmup 5 --lr 3e-3 --ckpt-minutes 100 &
pid=$!
for _ in $(seq 50); do sleep 0.1; done
kill -TERM $pid
wait $pid || fail "trainer exited non-zero after SIGTERM"
[ -f "$T/s.ckpt" ] || fail "no checkpoint after SIGTERM"
$BIN/performer export --ckpt "$T/s.ckpt" --out "$T/s_export.safetensors" | grep -q "trained:     yes" || fail "export"
echo "SIGTERM: checkpoint written and exported"

# 4. fine-tuning from shipped-style weights on a FASTA
$BIN/performer train --init "$T/m.safetensors" --fasta "$T/tiny.fasta" --out "$T/ft.safetensors" \
    --crop 96 --batch-tokens 1024 --eval-every 0 --quiet --threads 1 --steps 20 --warmup 2 --lr 1e-3
$BIN/performer info --weights "$T/ft.safetensors" | grep -q "trained:     yes" || fail "fine-tuned weights"

# 5. eval prints one JSON object with the documented fields; the trained model beats unigram here
$BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --seed 2 > "$T/eval.json"
python3 - "$T/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("eval:", r)
for k in ("perplexity", "accuracy", "residues", "unigram"):
    assert k in r, k
assert r["residues"] > 100
assert r["perplexity"] < r["unigram"]["perplexity"], "model no better than unigram on its training motif"
assert r["accuracy"] > r["unigram"]["accuracy"]
# top-5 and calibration: 10 bins of the top-1 probability that account for every scored residue,
# whose accuracies average to the top-1 accuracy and whose gaps give the ECE
assert r["accuracy"] <= r["top5_accuracy"] <= 1
bins = r["calibration"]["bins"]
assert len(bins) == 10 and [b["from"] for b in bins] == [k / 10 for k in range(10)], bins
assert sum(b["residues"] for b in bins) == r["residues"]
full = [b for b in bins if b["residues"]]
assert all(b["mean_probability"] is None and b["accuracy"] is None for b in bins if not b["residues"])
assert all(b["from"] - 1e-4 <= b["mean_probability"] <= b["to"] + 1e-4 for b in full), full
acc = sum(b["residues"] * b["accuracy"] for b in full) / r["residues"]
assert abs(acc - r["accuracy"]) < 2e-4, (acc, r["accuracy"])
ece = sum(b["residues"] * abs(b["accuracy"] - b["mean_probability"]) for b in full) / r["residues"]
assert 0 <= r["calibration"]["ece"] <= 1 and abs(ece - r["calibration"]["ece"]) < 2e-4, (ece, r["calibration"])
PY
# deterministic masks: same seed, same numbers
cmp "$T/eval.json" <($BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --seed 2) || fail "eval not deterministic"
# --window: a window longer than every sequence is the whole-sequence pass; shorter windows score the
# same masked positions (the masks do not depend on the window), with less context
$BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --seed 2 --window 1000 > "$T/w1000.json"
$BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --seed 2 --window 7 > "$T/w7.json"
$BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --seed 2 --window 1 > "$T/w1.json"
python3 - "$T/eval.json" "$T/w1000.json" "$T/w7.json" "$T/w1.json" <<'PY'
import json, sys
whole, w1000, w7, w1 = (json.load(open(f)) for f in sys.argv[1:])
assert whole["window"] == 0 and w1000["window"] == 1000 and w7["window"] == 7, (whole["window"], w7["window"])
w1000["window"] = 0
assert w1000 == whole, (w1000, whole)
for w in (w7, w1):
    assert (w["sequences"], w["residues"]) == (whole["sequences"], whole["residues"]), w
    assert w["unigram"] == whole["unigram"], w["unigram"]
# the motif is learned from context: 7 residues of it are worse than the whole, 1 residue is no context at all
assert whole["perplexity"] < w7["perplexity"] < w1["perplexity"], (whole["perplexity"], w7["perplexity"], w1["perplexity"])
print("eval --window ok:", whole["perplexity"], w7["perplexity"], w1["perplexity"])
PY

# 6. overlap: a set against itself shares every k-mer; a sequence absent from it shares none; bad k refused
printf '>novel one\nWWWWWWWWWWWWWWWWWWWW\n>half\nMKTAYIAKQRQIWWWWWWWWWWWW\n>short\nMKT\n' > "$T/q.fasta"
$BIN/performer overlap --train "$T/tiny.fasta" --fasta "$T/tiny.fasta" > "$T/self.tsv" 2> "$T/ov.err"
$BIN/performer overlap --train "$T/tiny.fasta" --fasta "$T/q.fasta" --k 10 > "$T/q.tsv" 2>> "$T/ov.err"
python3 - "$T/self.tsv" "$T/q.tsv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
assert len(rows) == 120 and rows[0]["name"] == "seq0", rows[:2]
for r in rows:
    assert int(r["windows"]) == int(r["length"]) - 9 and r["shared"] == r["windows"] and float(r["fraction"]) == 1, r
q = {r["name"]: r for r in csv.DictReader(open(sys.argv[2]), delimiter="\t")}
assert list(q) == ["novel", "half", "short"], q
assert q["novel"]["shared"] == "0" and q["novel"]["windows"] == "11", q["novel"]
# MKTAYIAKQRQI occurs in the motif: its 3 windows of 10 are shared, the 12 touching the W run are not
assert (q["half"]["windows"], q["half"]["shared"]) == ("15", "3"), q["half"]
assert (q["short"]["windows"], q["short"]["shared"], q["short"]["fraction"]) == ("0", "0", "0.0000"), q["short"]
print("overlap ok")
PY
grep -q "120 sequences" "$T/ov.err" || fail "overlap summary missing: $(cat "$T/ov.err")"
if $BIN/performer overlap --train "$T/tiny.fasta" --fasta "$T/q.fasta" --k 13 > /dev/null 2>&1; then fail "k 13 accepted"; fi
# 7. --precision: bf16 products train like fp32 (same losses to bfloat16 rounding) and evaluate alike
if $BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --precision fp16 > /dev/null 2>&1; then
    fail "--precision fp16 accepted"
fi
if grep -qw avx512_bf16 /proc/cpuinfo; then
    $BIN/performer train --precision bf16 --fasta "$T/tiny.fasta" --out "$T/b.safetensors" --log "$T/b.csv" \
        $ARCH --steps 60 --warmup 5 --lr 3e-3 --seed 9
    $BIN/performer eval --weights "$T/m.safetensors" --fasta "$T/tiny.fasta" --seed 2 --precision bf16 > "$T/e16.json"
    python3 - "$T/u.csv" "$T/b.csv" "$T/eval.json" "$T/e16.json" <<'PY'
import csv, json, sys
u = [float(r["loss"]) for r in csv.DictReader(open(sys.argv[1]))]
b = [float(r["loss"]) for r in csv.DictReader(open(sys.argv[2]))]
assert len(u) == len(b) == 60, (len(u), len(b))
worst = max(abs(x - y) / x for x, y in zip(u, b))
print(f"bf16 vs fp32 training, 60 steps: losses {u[0]:.4f} -> {u[-1]:.4f} vs {b[0]:.4f} -> {b[-1]:.4f}, worst relative step difference {worst:.2e}")
assert worst < 0.02, worst
assert u != b, "bf16 run identical to fp32: the precision option did nothing"
e32, e16 = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
assert e32["precision"] == "fp32" and e16["precision"] == "bf16", (e32["precision"], e16["precision"])
assert e16["residues"] == e32["residues"], (e16["residues"], e32["residues"])
rel = abs(e16["perplexity"] - e32["perplexity"]) / e32["perplexity"]
print(f"eval perplexity fp32 {e32['perplexity']:.4f}, bf16 {e16['perplexity']:.4f}")
assert rel < 0.01, rel
PY
else
    echo "no AVX-512 BF16 here: bf16 training not checked"
fi
# 8. warm-up-stable-decay: lr held, then 1 - sqrt down to lr/10 over --decay-steps; --branch-ckpt
#    saves the state where the decay starts, and resuming it with more --steps goes on with the
#    stable phase exactly as a longer run does
WSD="$ARCH --warmup 5 --lr 3e-3 --seed 4 --decay-steps 10"
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/w40.safetensors" --log "$T/w40.csv" $WSD --steps 40 \
    --branch-ckpt "$T/w_branch.ckpt" 2>"$T/w40.err"
[ -f "$T/w_branch.ckpt" ] || fail "no --branch-ckpt written"
grep -q "decay starts at step 30" "$T/w40.err" || fail "the branch was not announced at step 30"
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/w60.safetensors" --log "$T/w60.csv" $WSD --steps 60
cp "$T/w_branch.ckpt" "$T/w_cont.ckpt"
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/wc.safetensors" --log "$T/wc.csv" --ckpt "$T/w_cont.ckpt" \
    $WSD --steps 60 --resume 2>"$T/wc.err"
grep -q "resumed from .* at step 30" "$T/wc.err" || fail "the branch checkpoint did not resume at step 30"
python3 - "$T/w40.csv" "$T/w60.csv" "$T/wc.csv" <<'PY'
import csv, sys
w40, w60, wc = ([r for r in csv.DictReader(open(f))] for f in sys.argv[1:4])
lr = [float(r["lr"]) for r in w40]
assert len(lr) == 40, len(lr)
assert all(abs(x - 3e-3) < 1e-9 for x in lr[5:30]), "lr not held from the warm-up to step 29: %s" % lr[5:30]
assert all(a > b for a, b in zip(lr[29:], lr[30:])), "lr does not fall over the decay: %s" % lr[29:]
assert abs(lr[39] - 3e-4) < 1e-9, "the decay does not end at lr/10: %g" % lr[39]
assert abs(lr[34] - (3e-4 + 2.7e-3 * (1 - 0.5 ** 0.5))) < 1e-8, "step 34 is not 1 - sqrt(1/2) of the way: %g" % lr[34]
assert [r["loss"] for r in w40[:30]] == [r["loss"] for r in w60[:30]], "the stable phases of 40 and 60 steps differ"
key = lambda rows: [(r["step"], r["tokens"], r["loss"], r["lr"]) for r in rows]  # noqa: E731
assert [r["step"] for r in wc] == [str(i) for i in range(31, 61)], [r["step"] for r in wc][:3]
assert key(wc) == key(w60[30:]), "resuming the branch checkpoint differs from the 60-step run"
print("wsd: lr held for steps 5-29, 1 - sqrt decay to lr/10 by step 39; the branch checkpoint resumed with "
      "--steps 60 gives the 60-step run's 30 losses exactly")
PY
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/x.safetensors" $ARCH --steps 10 --warmup 5 --decay-steps 8 \
    2>"$T/x.err" && fail "--decay-steps longer than steps - warm-up accepted"
grep -q "leaves no room" "$T/x.err" || fail "no message for --decay-steps too long"
$BIN/performer train --fasta "$T/tiny.fasta" --out "$T/x.safetensors" $ARCH --steps 10 --branch-ckpt "$T/x.ckpt" \
    2>"$T/x.err" && fail "--branch-ckpt without --decay-steps accepted"
grep -q "needs --decay-steps" "$T/x.err" || fail "no message for --branch-ckpt alone"
# 9. the training kernel is stored in checkpoints: a stopped run's export names it, and --resume goes
#    on with it without --train-kernel (exactly as the uninterrupted run); another --train-kernel,
#    architecture option than the checkpoint's is refused with the checkpoint untouched (another --seed is
#    taken with a note: it draws only projection redraws); a
#    checkpoint from before the key resumes as then (--train-kernel, else the weights' kernel)
edit_meta() {  # checkpoint key value ("-" removes the key): rewrites a safetensors header
    python3 - "$@" <<'PY'
import json, struct, sys
path, key, val = sys.argv[1:4]
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
if val == "-":
    del h["__metadata__"][key]
else:
    h["__metadata__"][key] = val
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(path, "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])
PY
}
K="--fasta $T/tiny.fasta $ARCH --steps 12 --warmup 2 --lr 3e-3 --seed 7"
$BIN/performer train $K --train-kernel exact --out "$T/ke.safetensors" --log "$T/ke.csv"
$BIN/performer train $K --train-kernel exact --out "$T/k.safetensors" --log "$T/k.csv" --ckpt "$T/k.ckpt" --stop-after 4
$BIN/performer export --ckpt "$T/k.ckpt" --out "$T/k_export.safetensors" > "$T/k.info"
grep -q "^kernel: *exact" "$T/k.info" || fail "export of a run trained with exact: $(grep kernel "$T/k.info")"
cp "$T/k.ckpt" "$T/k_old.ckpt"
cp "$T/k.csv" "$T/k_old.csv"
for args in "--train-kernel favor-softmax" "--layers 3" "--d-model 64" "--conv 3" "--local 5" "--kernel exact"; do
    # shellcheck disable=SC2086
    if $BIN/performer train $K $args --out "$T/k.safetensors" --log "$T/k.csv" --ckpt "$T/k.ckpt" --resume \
        2>"$T/k.err"; then fail "--resume with $args accepted"; fi
    grep -q -- "--resume: ${args% *} ${args#* }, but the .*checkpoint $T/k.ckpt" "$T/k.err" || fail "--resume $args: $(cat "$T/k.err")"
    cmp -s "$T/k.ckpt" "$T/k_old.ckpt" && cmp -s "$T/k.csv" "$T/k_old.csv" || fail "--resume $args changed the checkpoint or log"
done
$BIN/performer train $K --out "$T/k.safetensors" --log "$T/k.csv" --ckpt "$T/k.ckpt" --resume 2>"$T/k.err"
grep -q "kernel exact" "$T/k.err" || fail "resumed without --train-kernel, not with exact: $(cat "$T/k.err")"
[ "$(cut -d, -f1,2,5 "$T/k.csv")" = "$(cut -d, -f1,2,5 "$T/ke.csv")" ] || fail "resumed exact run differs from the uninterrupted one"
$BIN/performer info --weights "$T/k.safetensors" | grep -q "^kernel: *exact" || fail "final weights' kernel"
cp "$T/k_old.ckpt" "$T/k.ckpt"; cp "$T/k_old.csv" "$T/k.csv"
edit_meta "$T/k.ckpt" train_kernel -                        # as the checkpoints of before
$BIN/performer export --ckpt "$T/k.ckpt" --out "$T/k_export.safetensors" | grep -q "^kernel: *favor-relu" \
    || fail "export of a checkpoint without train_kernel: not the weights' kernel"
$BIN/performer train $K --train-kernel exact --out "$T/k.safetensors" --log "$T/k.csv" --ckpt "$T/k.ckpt" --resume
[ "$(cut -d, -f1,2,5 "$T/k.csv")" = "$(cut -d, -f1,2,5 "$T/ke.csv")" ] || fail "old checkpoint resumed with --train-kernel differs"
# another --seed on --resume is taken, with a note (a new stage warm-started from a copied checkpoint)
cp "$T/k_old.ckpt" "$T/k.ckpt"; cp "$T/k_old.csv" "$T/k.csv"
$BIN/performer train $K --seed 8 --out "$T/k.safetensors" --log "$T/k.csv" --ckpt "$T/k.ckpt" --resume 2>"$T/k.err" \
    || fail "--resume with another --seed refused: $(cat "$T/k.err")"
grep -q -- "--seed 8 replaces the checkpoint's seed 7" "$T/k.err" || fail "no note for another --seed: $(cat "$T/k.err")"
echo "training kernel: stored in checkpoints, exported, resumed; conflicting options refused; old checkpoints resume"

# 10. --resume with a checkpoint that exists but cannot be read stops with an error before anything is
#     trained or changed (it started from step 0, dropped every row of the log and replaced the file)
ln -s "$T/nowhere/k.ckpt" "$T/dangling.ckpt"
cp "$T/k_old.csv" "$T/d.csv"
if $BIN/performer train $K --out "$T/d.safetensors" --log "$T/d.csv" --ckpt "$T/dangling.ckpt" --resume 2>"$T/d.err"; then
    fail "--resume with an unreadable checkpoint trained"
fi
grep -q "the checkpoint exists but cannot be used" "$T/d.err" || fail "no message: $(cat "$T/d.err")"
grep -q "^training " "$T/d.err" && fail "training started"
[ -L "$T/dangling.ckpt" ] && cmp -s "$T/d.csv" "$T/k_old.csv" || fail "the checkpoint link or the log changed"
if [ "$(id -u)" != 0 ]; then                                # root reads a mode-000 file
    cp "$T/k_old.ckpt" "$T/noread.ckpt"; chmod 000 "$T/noread.ckpt"
    if $BIN/performer train $K --out "$T/d.safetensors" --log "$T/d.csv" --ckpt "$T/noread.ckpt" --resume 2>"$T/d.err"; then
        fail "--resume with an unreadable checkpoint trained"
    fi
    grep -q "Permission denied" "$T/d.err" || fail "no message: $(cat "$T/d.err")"
    cmp -s "$T/d.csv" "$T/k_old.csv" || fail "the log changed"
fi
echo "--resume: an unreadable checkpoint stops the run"

# 11. checkpoint metadata is parsed strictly: a negative, overflowing, malformed or non-finite value
#     is refused naming the key and the checkpoint (n_layers 2^32 + 2 was read as 2, "nan" elapsed
#     time became invalid JSON in the exported provenance)
for kv in "step=-1" "cursor=-5" "tokens=12x" "n_layers=4294967298" "d_model=0" "norm_eps=1e-5x" "norm_eps=inf" \
          "elapsed=nan" "elapsed=-3" "rng2=zz" "seed=-1" "train_kernel=softmax"; do
    cp "$T/k_old.ckpt" "$T/bad.ckpt"
    edit_meta "$T/bad.ckpt" "${kv%%=*}" "${kv#*=}"
    if $BIN/performer export --ckpt "$T/bad.ckpt" --out "$T/bad.safetensors" > /dev/null 2>"$T/bad.err"; then
        fail "checkpoint with $kv exported: $($BIN/performer info --weights "$T/bad.safetensors" | grep provenance)"
    fi
    grep -q "$T/bad.ckpt: checkpoint metadata '${kv%%=*}' = \"${kv#*=}\" is not" "$T/bad.err" || fail "$kv: $(cat "$T/bad.err")"
done
cp "$T/k_old.ckpt" "$T/bad.ckpt"
edit_meta "$T/bad.ckpt" step -
if $BIN/performer train $K --out "$T/bad.safetensors" --ckpt "$T/bad.ckpt" --resume 2>"$T/bad.err"; then fail "no step resumed"; fi
grep -q "checkpoint metadata 'step' is missing" "$T/bad.err" || fail "missing step: $(cat "$T/bad.err")"
echo "checkpoint metadata: bad values refused, naming the key"

# 9. the progress line (stderr, not a tty: every 50 steps and at each evaluation) shows "-" for the
#    validation figures until the run has evaluated, then the figures
P="${ARCH/--quiet /}"
P="${P/--eval-every 0/--eval-every 60}"
$BIN/performer train --fasta "$T/tiny.fasta" --valid "$T/tiny.fasta" --eval-seqs 20 --out "$T/p.safetensors" $P \
    --steps 60 --warmup 5 --lr 3e-3 --seed 2 2>"$T/p.err"
grep -q "step 50/60 | .* | val ppl - acc - | ETA" "$T/p.err" || fail "step 50 before any evaluation: $(cat "$T/p.err")"
grep -q "step 60/60 | .* | val ppl [0-9][0-9]*\.[0-9]\{3\} acc 0\.[0-9]\{3\} | ETA" "$T/p.err" || fail "step 60: $(cat "$T/p.err")"
grep -q nan "$T/p.err" && fail "nan in the progress lines: $(cat "$T/p.err")"
echo "progress line: '-' until the first evaluation, then its figures"
echo "train tests ok"
