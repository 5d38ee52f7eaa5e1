#!/usr/bin/env python3
"""The model card, the training history and the README quote the shipped weights' measurements:
every figure checked here must be the one in the committed evaluation files, for the committed
weights. Fails (exit 1) naming each figure that drifted from its source; needs only files in git.

Sources: weights/model.safetensors (SHA-256, size), weights/eval/test.json and test_bf16.json (the
headline command's output, fp32 and bf16), weights/eval/breakdown.jsonl (weights/breakdown.sh),
weights/train_log.csv (the joined training log: the last row is the shipped weights' lineage)."""
import csv
import hashlib
import json
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
W = os.path.join(ROOT, "weights")
failures = []
checks = 0


def check(ok, what):
    """Records one check; prints and remembers it when it fails."""
    global checks
    checks += 1
    if not ok:
        failures.append(what)
        print("FAIL", what)


def read(path):
    """Returns the text of a file under the repository root."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def has(text, needle, where):
    """Checks that `needle` occurs verbatim in `text` (the file named by `where`)."""
    check(needle in text, "%s does not contain %r" % (where, needle))


def pct(x, digits=2):
    """0.16158 -> '16.16%'."""
    return "%.*f%%" % (digits, 100 * x)


def thousands(n):
    """1083922982 -> '1,083.9M'."""
    return "{:,.1f}M".format(n / 1e6)


card = read("weights/MODEL_CARD.md")
history = read("weights/TRAINING.md")
readme = read("README.md")
test = json.loads(read("weights/eval/test.json"))
bf16 = json.loads(read("weights/eval/test_bf16.json"))
valid = json.loads(read("weights/eval/valid.json"))
valid_prev = json.loads(read("weights/eval/valid_previous.json"))

# the weights: the card's SHA-256 and size, and every eval file is of these weights
with open(os.path.join(W, "model.safetensors"), "rb") as f:
    blob = f.read()
sha = hashlib.sha256(blob).hexdigest()
has(card, "SHA-256 `%s`, %.1f MB" % (sha, len(blob) / 1e6), "MODEL_CARD.md (weights' SHA-256 and size)")
for name, d in (("test.json", test), ("test_bf16.json", bf16), ("valid.json", valid)):
    check(d["sha256"] == sha, "eval/%s is of weights %s..., not the shipped %s..." % (name, d["sha256"][:8], sha[:8]))
check(test["precision"] == "fp32" and bf16["precision"] == "bf16", "test.json / test_bf16.json precisions")
check(valid_prev["sha256"] != sha, "eval/valid_previous.json should be the previous release's")
# the headline command's options
for name, d in (("test.json", test), ("test_bf16.json", bf16)):
    check(d["fasta"] == "weights/data/test.fasta" and d["seed"] == 1 and d["mask_rate"] == 0.15
          and d["window"] == 0 and d["unigram"]["source"] == "weights/data/train.bin",
          "eval/%s was not made with the headline's options" % name)

# headline, evaluation table, calibration, precision table
ppl, acc, top5, ece = test["perplexity"], test["accuracy"], test["top5_accuracy"], test["calibration"]["ece"]
uni = test["unigram"]
has(card, "perplexity **%.2f**,\ntop-1 accuracy **%s** (top-5 %s)" % (ppl, pct(acc), pct(top5, 1)), "MODEL_CARD.md headline")
has(card, "unigram baseline's %.2f / %s" % (uni["perplexity"], pct(uni["accuracy"])), "MODEL_CARD.md headline (unigram)")
has(card, "it measures %.2f / %s" % (bf16["perplexity"], pct(bf16["accuracy"])), "MODEL_CARD.md headline (bf16)")
has(card, "expected calibration error %.4f" % ece, "MODEL_CARD.md (ECE)")
has(card, "| **%.3f** | **%s** |" % (ppl, pct(acc)), "MODEL_CARD.md evaluation table (this model)")
has(card, "(`eval/test_bf16.json`) | %.3f | %s |" % (bf16["perplexity"], pct(bf16["accuracy"])), "MODEL_CARD.md evaluation table (bf16)")
has(card, "| unigram baseline, same masks | %.3f | %s |" % (uni["perplexity"], pct(uni["accuracy"])), "MODEL_CARD.md evaluation table (unigram)")
has(card, "%s sequences, %s masked residues scored. Top-5 accuracy %s" % ("{:,}".format(test["sequences"]), "{:,}".format(test["residues"]), pct(top5)), "MODEL_CARD.md (residues, top-5)")
for label, d in (("float32", test), ("bf16", bf16)):
    has(card, "| %s | %.4f | %s | %s | %.4f |" % (label, d["perplexity"], pct(d["accuracy"]), pct(d["top5_accuracy"]), d["calibration"]["ece"]),
        "MODEL_CARD.md precision table (%s)" % label)
has(card, "gave %.3f / %s for stage" % (valid["perplexity"], pct(valid["accuracy"])), "MODEL_CARD.md validation choice (valid.json)")
has(card, "against %.3f / %s for stage" % (valid_prev["perplexity"], pct(valid_prev["accuracy"])), "MODEL_CARD.md validation choice (valid_previous.json)")
check(valid["perplexity"] < valid_prev["perplexity"], "the release is not better than the previous one on the validation split")

# the training log: the shipped weights' stage and lineage
with open(os.path.join(W, "train_log.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
last = rows[-1]
stage = last["stage"]
tokens = int(last["tokens"])
has(card, "stage %s, %s tokens) | **%.3f**" % (stage, thousands(tokens), ppl), "MODEL_CARD.md evaluation table (stage and lineage tokens from train_log.csv)")
has(card, "descends from **%s tokens**" % thousands(tokens), "MODEL_CARD.md lineage")
has(card, "| %s | " % stage, "MODEL_CARD.md training table (a row for stage %s)" % stage)
has(card, "at the end of stage %s (%s)" % (stage, thousands(tokens)), "MODEL_CARD.md validation (last stage)")
has(card, "%.2f at the end of stage %s" % (float(last["val_ppl"]), stage), "MODEL_CARD.md validation (train_log.csv's last val_ppl)")
has(history, "| stage %s (6 layers, %s tokens) | %.3f | %s |" % (stage, thousands(tokens), ppl, pct(acc)), "TRAINING.md release table (top row)")
has(history, "\nStage %s (session" % stage, "TRAINING.md (a paragraph for stage %s)" % stage)
has(readme, "(%s tokens on its lineage, about %.1f hours)" % (thousands(tokens), float(last["elapsed_s"]) / 3600), "README.md (lineage tokens and hours)")
has(readme, "**perplexity %.2f and top-1 accuracy %s** (top-5 %s)" % (ppl, pct(acc, 1), pct(top5, 1)), "README.md (headline)")
has(readme, "expected calibration error %.4f" % ece, "README.md (ECE)")
trained = sum(int(r["tokens"]) - int(p["tokens"]) if p is not None and r["stage"] == p["stage"] else 0
              for p, r in zip([None] + rows[:-1], rows))
check(trained > tokens * 0.9, "train_log.csv: %d tokens in steps, fewer than the lineage's %d" % (trained, tokens))

# the card's training table against train_log.csv: one row per stage, its steps, tokens and wall time
# (a stage's rows follow its parent's row at the step where it branched off)
table = {}
for l in card.split("\n## Training\n", 1)[1].split("\n## ", 1)[0].splitlines():
    cells = [c.strip() for c in l.strip().strip("|").split("|")]
    if len(cells) == 7 and re.fullmatch(r"\d+[ab]?", cells[0]):
        table[cells[0]] = cells
stages, by_step, info = [], {}, {}
for r in rows:
    s = r["stage"]
    if not stages or stages[-1] != s:  # a stage's first row: find its parent's row one step before
        stages.append(s)
        parent = by_step.get(int(r["step"]) - 1)
        info[s] = {"n": 0, "base_tokens": int(parent["tokens"]) if parent else 0,
                   "base_elapsed": float(parent["elapsed_s"]) if parent else 0.0}
    info[s]["n"] += 1
    info[s]["last"] = r
    by_step[int(r["step"])] = r
check(list(table) == stages, "MODEL_CARD.md training table stages %s, train_log.csv stages %s" % (list(table), stages))
for s, cells in table.items():
    d = info.get(s)
    if d is None:
        continue  # already reported: the stages differ
    tok = (int(d["last"]["tokens"]) - d["base_tokens"]) / 1e6
    minutes = (float(d["last"]["elapsed_s"]) - d["base_elapsed"]) / 60
    check(cells[2].startswith("{:,} x ".format(d["n"])), "training table, stage %s: %r, train_log.csv has %d steps" % (s, cells[2], d["n"]))
    check(cells[3].startswith("%.1fM" % tok), "training table, stage %s: tokens %r, train_log.csv %.1fM" % (s, cells[3], tok))
    m = re.match(r"(\d+) min", cells[6])
    check(m is not None and abs(int(m.group(1)) - minutes) <= 1.5, "training table, stage %s: wall time %r, train_log.csv %.0f min" % (s, cells[6][:20], minutes))

# the breakdown tables: the card's similarity rows and this model's length columns
lines = [json.loads(l) for l in read("weights/eval/breakdown.jsonl").splitlines() if l.strip()]
for d in lines:
    check(d["eval"]["sha256"] == sha, "eval/breakdown.jsonl has rows of weights %s..." % d["eval"]["sha256"][:8])
sim = [d for d in lines if d["table"] == "similarity"]
check(len(sim) == 6, "breakdown.jsonl: %d similarity rows" % len(sim))
for d in sim:
    e = d["eval"]
    has(card, "| {:,} | {:,} | {:.3f} | {} | {:.3f} |".format(d["sequences"], e["residues"], e["perplexity"], pct(e["accuracy"]), e["unigram"]["perplexity"]),
        "MODEL_CARD.md similarity table (%s-%s)" % (d["from"], d["to"]))
length = {}
for d in lines:
    if d["table"] == "length":
        length.setdefault((d["from"], d["to"]), {})[d["window"]] = d["eval"]["perplexity"]
check(len(length) == 5, "breakdown.jsonl: %d length bins" % len(length))
for (lo, hi), w in sorted(length.items()):
    cells = "**%.3f** | %s | %s |" % (w[0], "%.3f" % w[512] if 512 in w else "", "%.3f" % w[1022] if 1022 in w else "")
    # the row of this bin by its label (its perplexity alone can match another table's cell: stage
    # 45's 512-1,024 bin and its test perplexity were both 13.133)
    label = "[{:,}, {:,})".format(lo, hi) if hi < 100000000 else "\u2265 {:,}".format(lo)
    row = [l for l in card.splitlines() if l.startswith("| %s |" % label)]
    check(len(row) == 1 and row[0].rstrip().endswith(cells),
          "MODEL_CARD.md length table: no row ends with %r (bin %s-%s)" % (cells, lo, hi))

# the limitations section quotes the headline, the latest stage and the length cost past 2,048
has(card, "At test perplexity %.2f the model" % ppl, "MODEL_CARD.md limitations (perplexity)")
has(card, "4,096 in stages 6 to %s:" % stage, "MODEL_CARD.md limitations (crops, latest stage)")
long_bin = max(length)
if 1022 in length[long_bin]:
    cost = length[long_bin][0] - length[long_bin][1022]   # as weights/release_docs.py's pieces_1022 words it
    if cost >= 0.005:
        want = "than on pieces of 1,022 (by %.2f, the length table above)" % cost
    elif cost <= -0.005:
        want = "as on pieces of 1,022 (%.2f better, a difference whose sign has changed between stages; the length table above)" % -cost
    else:
        want = "than on pieces of 1,022 (within 0.005, the length table above)"
    has(card, want, "MODEL_CARD.md limitations (length cost past 2,048)")

# the headline and the gains sentence say where the figures stand against the target (test perplexity
# <= 14, accuracy >= 20%), as weights/release_docs.py's targets_sentence() and headline_target() word it
if acc >= 0.20:
    check(ppl <= 14.0, "test accuracy %s meets its target but perplexity %.3f does not" % (pct(acc), ppl))
    has(card, "better than the unigram baseline and **meets the target** (perplexity ≤ 14, accuracy ≥ 20%)", "MODEL_CARD.md headline (targets met)")
    has(card, "Test perplexity has met the target of 14 since stage ", "MODEL_CARD.md gains (perplexity target met)")
    has(card, "(%.3f now) and accuracy the target of 20%% since stage " % ppl, "MODEL_CARD.md gains (accuracy target met)")
    has(card, "(%s now); the issue's further mark, perplexity 11, is %.3f away" % (pct(acc), ppl - 11.0), "MODEL_CARD.md gains (distance to 11)")
    check("but not the accuracy target" not in card and "points below 20%" not in card, "MODEL_CARD.md: still says the accuracy target is missed")
elif ppl <= 14.0:
    has(card, "better than the unigram baseline and **meets the perplexity target** (≤ 14) but not the accuracy target", "MODEL_CARD.md headline (perplexity target met)")
    has(card, "Test perplexity has met the target of 14 since stage ", "MODEL_CARD.md gains (perplexity target met)")
    has(card, "(%.3f now); accuracy is %.2f points below 20%%" % (ppl, 20.0 - 100 * acc), "MODEL_CARD.md gains (distance to 20%)")
else:
    has(card, "better than the unigram baseline but **far from the target**", "MODEL_CARD.md headline (target missed)")
    has(card, "Test perplexity is %.3f above the target of 14" % (ppl - 14.0), "MODEL_CARD.md gains (distance to 14)")
    has(card, "accuracy is %.2f points below 20%%" % (20.0 - 100 * acc), "MODEL_CARD.md gains (distance to 20%)")

print("%d checks, %d failed" % (checks, len(failures)))
sys.exit(1 if failures else 0)
