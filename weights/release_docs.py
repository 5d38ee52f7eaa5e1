#!/usr/bin/env python3
"""Updates weights/MODEL_CARD.md, weights/TRAINING.md and README.md for a new release whose stage
followed the recipe of the stages since 19: the previous stage's weights where its decay began
(`weights/stable.safetensors`), a new AdamW state, 2,500 steps of 16,384 tokens (more where the
machine is fast enough to end a longer stage within its session: `--steps`), a 100-step warm-up to
8e-5, held to the branch step, a 1 - sqrt decay to 8e-6 over the rest (stages 19 to 23: held to step
1,500, a decay of 1,000, validation every 300; from stage 24: held to step 2,000, a decay of 500,
validation every 250). Each stage's steps, branch step, decay and validation interval are read from
its rows in weights/train_log.csv.

Run it once the release's files are committed: weights/model.safetensors, weights/eval/test.json,
test_bf16.json, valid.json, valid_previous.json, the stage's rows in weights/train_log.csv and
weights/eval/breakdown.jsonl (the finalize steps in weights/TRAINING.md). Every figure comes from
those files or from the documents' current text for the previous release; every edit must match
exactly once, and a result whose wording would change (one pass overtaking pieces of 1,022, a gain
outside the stated range) stops the script with a message instead of writing a wrong sentence.
Then run tests/e2e/test_model_card.py.

usage: weights/release_docs.py --precision-line LINE [--wall-note TEXT] [--session N] [--root DIR]
  LINE: test_server_precision.py's line "367 residues: max |log p(fp32) - log p(bf16)| X; same top-1
  residue at N of 367 positions"."""
import argparse
import csv
import hashlib
import json
import math
import os
import re
import statistics
import sys

WORDS = {n: w for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    " eighteen nineteen twenty".split())}
for _t, _tw in ((20, "twenty"), (30, "thirty"), (40, "forty"), (50, "fifty"), (60, "sixty"), (70, "seventy"),
                 (80, "eighty"), (90, "ninety")):
    for _u in range(1, 10):
        WORDS[_t + _u] = "%s-%s" % (_tw, WORDS[_u])
    WORDS[_t] = _tw
NUMBERS = {w: n for n, w in WORDS.items()}


class DocError(Exception):
    """A document does not read as this script expects (the message names the place)."""


def sub1(text, pattern, repl, where, count=1, regex=True):
    """Replaces pattern (a regex, or a literal with regex=False) exactly `count` times; else DocError."""
    if not regex:
        n = text.count(pattern)
        if n != count:
            raise DocError("%s: %r found %d times, expected %d" % (where, pattern[:120], n, count))
        return text.replace(pattern, repl)
    new, n = re.subn(pattern, repl, text)
    if n != count:
        raise DocError("%s: /%s/ matched %d times, expected %d" % (where, pattern[:120], n, count))
    return new


def one(pattern, text, where, flags=0):
    """Returns the match of a regex that must occur exactly once."""
    ms = list(re.finditer(pattern, text, flags))
    if len(ms) != 1:
        raise DocError("%s: /%s/ matched %d times, expected 1" % (where, pattern[:120], len(ms)))
    return ms[0]


def pct(x, digits=2):
    """0.16158 -> '16.16%'."""
    return "%.*f%%" % (digits, 100 * x)


def mtok(n):
    """1083922982 -> '1,083.9M'."""
    return "{:,.1f}M".format(n / 1e6)


def num(n):
    """1500 -> '1,500'."""
    return "{:,}".format(n)


def branch_row(rows):
    """The row of a stage (its train_log rows) where its decay began and its stable state was saved:
    its last row at its peak learning rate (also weights/finalize.sh's and the tests' rule)."""
    peak = max(float(r["lr"]) for r in rows)
    return [r for r in rows if float(r["lr"]) == peak][-1]


def recipe(st):
    """A stage's schedule from its train_log rows: steps, branch (the step of branch_row), decay (steps
    after it), every (validation interval) and tokens, all relative to the row it continued from."""
    rows, b0 = st["rows"], int(st["parent"]["step"])
    branch = int(branch_row(rows)["step"]) - b0
    every = [int(r["step"]) - b0 for r in rows if r["val_ppl"]][0]
    return {"steps": len(rows), "branch": branch, "decay": len(rows) - branch, "every": every,
            "tokens": int(rows[-1]["tokens"]) - int(st["parent"]["tokens"])}


def same_schedule(rc, prev_rc):
    """1 when two recipe()s hold and decay for the same numbers of steps."""
    return (rc["branch"], rc["decay"]) == (prev_rc["branch"], prev_rc["decay"])


def change_sentence(n, rc, prev_rc):
    """' Its stable phase ...' when stage n's schedule differs from its parent's, else ''."""
    if same_schedule(rc, prev_rc):
        return ""
    if rc["decay"] == prev_rc["decay"]:
        # the same decay after a longer or shorter stable phase: a stage sized to its session's machine
        d = rc["branch"] - prev_rc["branch"]
        return (" Its stable phase was %s steps %s than stage %d's (%s steps in all instead of %s), so that the stage adds"
                " %s steps instead of %s to the lineage the next stage continues%s."
                % (num(abs(d)), "longer" if d > 0 else "shorter", n - 1, num(rc["steps"]), num(prev_rc["steps"]),
                   num(rc["branch"]), num(prev_rc["branch"]),
                   "; the machine was fast enough to end the longer stage within its session" if d > 0
                   else ", so that the stage would end within its session"))
    if (n, prev_rc["branch"], rc["branch"]) != (24, 1500, 2000):
        raise DocError("stage %d changed its schedule (branch step %d, decay %d; stage %d: %d, %d): the reason given is"
                       " stage 24's, write this stage's sentence by hand" % (n, rc["branch"], rc["decay"], n - 1,
                                                                              prev_rc["branch"], prev_rc["decay"]))
    return (" Its stable phase was %s steps longer and its decay %s steps shorter than stage %d's (%s and %s), so that the"
            " stage adds %s steps instead of %s to the lineage the next stage continues"
            % (num(rc["branch"] - prev_rc["branch"]), num(prev_rc["decay"] - rc["decay"]), n - 1, num(prev_rc["branch"]),
               num(prev_rc["decay"]), num(rc["branch"]), num(prev_rc["branch"])) + "; the decays of stages 22 and 23 had"
            " given most of their gain in their first 300 steps.")


def stage_paragraph(n, session, seed, prev, stable, decay, prev_stable, prev_end, current, rc, prev_rc):
    """The history's narrative of a stage of this recipe (current: its stable state is the one in git;
    rc, prev_rc: its and its parent's recipe())."""
    tail = " are the new `weights/stable.safetensors`" + (" (the current one)" if current == "history" else "") \
        if current else " were the next `weights/stable.safetensors`"
    return ("Stage %d (session %d) went on from `weights/stable.safetensors`, stage %d's weights at its step %s where"
            " its decay began, with a new AdamW state and data order (seed %d): a 100-step warm-up to 8e-5, held to step"
            " %s, then decayed over the last %s steps; its weights at step %s%s. Validation (400 sequences)"
            " through the stable phase: %s (steps %s to %s, every %s; stage %d's stable phase ended at %.3f); then"
            " with the decay %s at the end (stage %d: %.3f).%s"
            % (n, session, prev, num(prev_rc["branch"]), seed, num(rc["branch"]), num(rc["decay"]), num(rc["branch"]), tail,
               ", ".join("%.3f" % v for v in stable), num(rc["every"]), num(rc["branch"]), num(rc["every"]), prev, prev_stable,
               ", ".join("%.3f" % v for v in decay), prev, prev_end, change_sentence(n, rc, prev_rc)))


def gain_sentence(n, prev, prev_ppl, ppl, dacc, prev_stable, stable_end, end, rc, prev_rc):
    """TRAINING.md's sentence on what a stage of this recipe gained (rc, prev_rc: as stage_paragraph)."""
    how = "the same way" if same_schedule(rc, prev_rc) else \
        "with a %s stable phase" % ("longer" if rc["branch"] > prev_rc["branch"] else "shorter")
    return ("Stage %d (%.1fM tokens: stage %d's stable state continued %s, %s steps at 8e-5 after a"
            " 100-step warm-up, then a decay of %s) gained %.3f on the test split (%.3f → %.3f) and %.2f points of"
            " accuracy: validation went from %.3f (stage %d's stable phase) to %.3f at the end of this stable phase,"
            " and the decay gave %.2f more (%.3f → %.3f)."
            % (n, rc["tokens"] / 1e6, prev, how, num(rc["branch"] - 100), num(rc["decay"]), prev_ppl - ppl, prev_ppl, ppl,
               dacc, prev_stable, prev, stable_end, stable_end - end, stable_end, end))


TRAIN = ("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE bin/performer train --precision bf16 \\\n"
         "  --init weights/stable.safetensors --data weights/data/train.bin --valid weights/data/valid.bin \\\n"
         "  --out stage{n}.safetensors --ckpt stage{n}.ckpt --log stage{n}.csv --resume --name performer-protein-small \\\n"
         "  --steps {steps} --warmup 100 --lr 8e-5 --decay-steps {decay} --branch-ckpt stage{nb}_stable.ckpt \\\n"
         "  --crop 4096 --batch-tokens 16384 \\\n"
         "  --eval-every {every} --eval-seqs 400 --ckpt-minutes 5 --seed {n} --threads 2 --max-minutes 160\n"
         "bin/performer export --ckpt stage{nb}_stable.ckpt --out weights/stable.safetensors\n"
         "cp stage{n}.safetensors weights/model.safetensors   # {what}\n")   # a stage of this recipe; {n}: its number


def command_block(n, rc, prev_rc):
    """The card's command for the current stage n (rc, prev_rc: as stage_paragraph)."""
    p = n - 1
    return ("# stage %d: from stage %d's weights at its step %s (weights/stable.safetensors, exported from\n"
            "# stage%d_stable.ckpt), new optimiser state, seed %d, decaying over the last %s steps; the weights at\n"
            "# step %s exported as the new weights/stable.safetensors\n"
            % (n, p, num(prev_rc["branch"]), p, n, num(rc["decay"]), num(rc["branch"]))
            + TRAIN.format(n=n, nb=n, steps=rc["steps"], decay=rc["decay"], every=rc["every"], what="the release"))


def loop_block(first, last, rc):
    """TRAINING.md's one command for stages first..last, which all followed the schedule rc (a recipe())."""
    body = TRAIN.format(n="$N", nb="${N}", steps=rc["steps"], decay=rc["decay"], every=rc["every"], what="stage N's release")
    return ("# stages %d to %d, one after another: each from weights/stable.safetensors (the previous stage's\n"
            "# weights where its decay began), new optimiser state, seed N, held at 8e-5 to step %s and decaying\n"
            "# over the last %s steps; its weights at step %s exported as the next weights/stable.safetensors\n"
            "for N in $(seq %d %d); do\n" % (first, last, num(rc["branch"]), num(rc["decay"]), num(rc["branch"]), first, last)
            + "".join("  " + line + "\n" for line in body.splitlines()) + "done\n")


LOOP = r"# stages (\d+) to %d, one after another: "   # finds loop_block()'s header for a last stage


def history_commands(h, p, rc_p, rc_pp):
    """TRAINING.md (h) with stage p (no longer the card's current one; rc_p, rc_pp: its and its parent's
    recipe()) added to its commands: the last loop_block() extended when p followed the same schedule as
    it shows, else a new loop_block() for p alone appended."""
    end = "```\nStage %d's command, the current one, is in `weights/MODEL_CARD.md`." % p
    new_end = "```\nStage %d's command, the current one, is in `weights/MODEL_CARD.md`." % (p + 1)
    m = re.search(LOOP % (p - 1), h)
    if m and loop_block(0, 0, rc_p) == loop_block(0, 0, rc_pp) and loop_block(int(m.group(1)), p - 1, rc_pp) + end in h:
        first = int(m.group(1))
        return sub1(h, loop_block(first, p - 1, rc_pp) + end, loop_block(first, p, rc_p) + new_end, "history commands", regex=False)
    return sub1(h, end, loop_block(p, p, rc_p) + new_end, "history commands", regex=False)


def length_phrase(whole, other):
    """'0.11 better' / '0.03 behind' (perplexity of one pass against pieces)."""
    d = other - whole
    return "%.2f %s" % (abs(d), "better" if d > 0 else "behind")


TIE = 0.005   # perplexity differences smaller than this are worded as level


def versus(whole, other):
    """Prose for one pass (whole) against pieces (other): '0.15 better than', '0.03 behind' or 'level with' (within 0.005)."""
    d = other - whole
    if abs(d) < TIE:
        return "level with"
    return "%.2f better than" % d if d > 0 else "%.2f behind" % -d


VERSUS = r"(?:[\d.]+ better than|[\d.]+ behind|level with)"   # what versus() writes, for the next release's regexes


SMALL = 0.05   # a one-pass edge over pieces of 1,022 past 2,048 residues below this is not worded as a gain from long context
FLIPPED = "a difference whose sign has changed between stages"   # stage 41: one pass 0.007 behind; stage 42: 0.009 ahead


def pieces_1022(cost):
    """The card's, limitations' and README's phrases for what one pass costs against pieces of 1,022 past
    2,048 residues (cost: their perplexity difference; negative when one pass is better); DocError once one
    pass is better by SMALL or more, since the card then must say that the model gains from long context."""
    if cost <= -SMALL:
        raise DocError("past 2,048 residues one pass now beats pieces of 1,022 by %.3f: the card's sentence that the"
                       " model does not yet clearly gain from context beyond about a thousand residues is wrong; rewrite"
                       " it and these phrases by hand" % -cost)
    if cost <= -TIE:
        return ("costs nothing in perplexity", "only as good in one pass as on pieces of 1,022 (%.2f better, %s; the"
                " length table above)" % (-cost, FLIPPED), "are worse by %.2f, %s" % (-cost, FLIPPED))
    if cost >= TIE:
        return ("costs at most %.2f in perplexity" % cost, "slightly worse in one pass than on pieces of 1,022 (by %.2f,"
                " the length table above)" % cost, "are better by %.2f" % cost)
    return ("costs nothing in perplexity", "no better in one pass than on pieces of 1,022 (within 0.005, the length"
            " table above)", "are level (within 0.005)")


PPL_TARGET, ACC_TARGET = 14.0, 20.0   # the target: test perplexity <= 14, accuracy >= 20%


def sessions(gap, rates):
    """'1 more session' / '9 to 25 more sessions': sessions to close gap at the fastest and slowest of
    rates (gains per session; a rate <= 0 counts as the smallest positive one, or 0.01)."""
    pos = [r for r in rates if r > 0] or [0.01]
    lo, hi = max(pos), min(pos)
    a, b = max(1, math.ceil(gap / lo - 1e-9)), max(1, math.ceil(gap / hi - 1e-9))
    return "%d more session%s" % (a, "" if a == 1 else "s") if a == b else "%d to %d more sessions" % (a, b)


FURTHER = 11.0   # the further mark for test perplexity ("every step beyond that (toward <= 11) is worth reporting")


def targets_sentence(ppl, acc, met_in, acc_met_in, last5, last5_acc):
    """The card's sentence on how far the test figures are from the target (ppl, acc: the release's
    test perplexity and accuracy, a fraction; met_in / acc_met_in: the stage whose release first met the
    perplexity / accuracy target, or None; last5, last5_acc: the last five stages' gains in perplexity and
    accuracy points). Once both are met it says so and how far perplexity is from the further mark of 11;
    DocError where a target met before is missed again, or 11 is reached: those sentences need a hand."""
    acc_gap = ACC_TARGET - 100 * acc
    if acc_gap <= 0:
        if acc_met_in is None:
            raise DocError("accuracy %.2f%% meets the target but no stage is named as the first to meet it" % (100 * acc))
        if ppl > PPL_TARGET or met_in is None:
            raise DocError("accuracy %.2f%% meets its target but perplexity %.3f does not: rewrite the gains sentence by hand"
                           % (100 * acc, ppl))
        if ppl <= FURTHER:
            raise DocError("test perplexity %.3f reaches the issue's further mark of 11: rewrite the target sentences by hand" % ppl)
        return ("Test perplexity has met the target of 14 since stage %d (%.3f now) and accuracy the target of 20%% since stage"
                " %d (%s now); the issue's further mark, perplexity 11, is %.3f away (at the last five stages' %.2f–%.2f a"
                " session, %s)" % (met_in, ppl, acc_met_in, pct(acc), ppl - FURTHER, min(last5), max(last5),
                                   sessions(ppl - FURTHER, last5)))
    if acc_met_in is not None:
        raise DocError("accuracy %.2f%% is below 20%% again after stage %d met it: rewrite the gains sentence by hand"
                       % (100 * acc, acc_met_in))
    acc_part = ("accuracy is %.2f points below 20%% (at the last five stages' %.2f–%.2f points a session, %s)"
                % (acc_gap, min(last5_acc), max(last5_acc), sessions(acc_gap, last5_acc)))
    if ppl <= PPL_TARGET:
        if met_in is None:
            raise DocError("perplexity %.3f meets the target but no stage is named as the first to meet it" % ppl)
        return "Test perplexity has met the target of 14 since stage %d (%.3f now); %s" % (met_in, ppl, acc_part)
    if met_in is not None:
        raise DocError("perplexity %.3f is above 14 again after stage %d met it: rewrite the gains sentence by hand" % (ppl, met_in))
    return ("Test perplexity is %.3f above the target of 14 (at the last five stages' %.2f–%.2f a session, %s) and %s"
            % (ppl - PPL_TARGET, min(last5), max(last5), sessions(ppl - PPL_TARGET, last5), acc_part))


# the card's gains sentence after its list of gains per session, in every form targets_sentence() writes
# (group 2: the stage that first met the perplexity target; group 3: the accuracy target)
SESSIONS = r"\d+(?: to \d+)? more sessions?"
ACC_BELOW = r"accuracy is -?[\d.]+ points below 20% \(at the last five stages' -?[\d.]+–-?[\d.]+ points a session, " + SESSIONS + r"\)"
GAINS = (r"session \(([\d., ]+)\) have been 0.05–0.11 a session since stage 7\. Test perplexity"
         r" (?:has met the target of 14 since stage (\d+) \([\d.]+ now\)(?:; " + ACC_BELOW + r"| and accuracy the target of 20% since"
         r" stage (\d+) \([\d.]+% now\); the issue's further mark, perplexity 11, is [\d.]+ away \(at the last five stages'"
         r" -?[\d.]+–-?[\d.]+ a session, " + SESSIONS + r"\))|is [\d.]+ above the target of 14 \(at the last five"
         r" stages' -?[\d.]+–-?[\d.]+ a session, " + SESSIONS + r"\) and " + ACC_BELOW + ")")

# the card headline's words on the target, every way (headline_target() writes them)
HEADLINE_TARGET = (r"The model is better than the unigram baseline (?:but \*\*far from the target\*\* \(perplexity\n≤ 14, accuracy"
                   r" ≥ 20%\) and from|and \*\*meets the perplexity target\*\* \(≤ 14\) but not the accuracy target \(≥ 20%\);\n"
                   r"it is far from|and \*\*meets the target\*\* \(perplexity ≤ 14, accuracy ≥ 20%\);\nit is far from) the paper's")


def headline_target(ppl, acc):
    """The headline's words on the target for a release with test perplexity ppl and accuracy acc (a
    fraction; targets_sentence() has checked that a met accuracy target comes with a met perplexity one)."""
    if 100 * acc >= ACC_TARGET:
        return "The model is better than the unigram baseline and **meets the target** (perplexity ≤ 14, accuracy ≥ 20%);\nit is far from the paper's"
    if ppl <= PPL_TARGET:
        return ("The model is better than the unigram baseline and **meets the perplexity target** (≤ 14) but not the accuracy"
                " target (≥ 20%);\nit is far from the paper's")
    return "The model is better than the unigram baseline but **far from the target** (perplexity\n≤ 14, accuracy ≥ 20%) and from the paper's"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision-line", required=True)
    ap.add_argument("--wall-note", default="one run, not paused")
    ap.add_argument("--session", type=int, default=None, help="default: one more than the card's count of sessions")
    ap.add_argument("--root", default=os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
    a = ap.parse_args()
    R = a.root
    rd = lambda p: open(os.path.join(R, p), encoding="utf-8").read()  # noqa: E731
    card, hist, readme = rd("weights/MODEL_CARD.md"), rd("weights/TRAINING.md"), rd("README.md")
    test, bf16 = json.loads(rd("weights/eval/test.json")), json.loads(rd("weights/eval/test_bf16.json"))
    valid, valid_prev = json.loads(rd("weights/eval/valid.json")), json.loads(rd("weights/eval/valid_previous.json"))
    lines = [json.loads(x) for x in rd("weights/eval/breakdown.jsonl").splitlines() if x.strip()]
    rows = list(csv.DictReader(open(os.path.join(R, "weights/train_log.csv"), newline="")))
    blob = open(os.path.join(R, "weights/model.safetensors"), "rb").read()
    sha = hashlib.sha256(blob).hexdigest()
    for name, d in (("test.json", test), ("test_bf16.json", bf16), ("valid.json", valid)):
        if d["sha256"] != sha:
            raise DocError("eval/%s is not of weights/model.safetensors" % name)
    for d in lines:
        if d["eval"]["sha256"] != sha:
            raise DocError("eval/breakdown.jsonl is not of weights/model.safetensors (run weights/breakdown.sh)")

    # ---- the training log: this stage, its parent, their validation points ------------------------
    stages, info, by_step = [], {}, {}
    for r in rows:
        s = r["stage"]
        if not stages or stages[-1] != s:
            stages.append(s)
            parent = by_step.get(int(r["step"]) - 1)
            info[s] = {"rows": [], "parent": parent}
        info[s]["rows"].append(r)
        by_step[int(r["step"])] = r
    N = int(stages[-1])
    P = N - 1
    if stages[-2] != str(P):
        raise DocError("train_log.csv: the last stages are %s, expected %d then %d" % (stages[-2:], P, N))
    me, pa = info[str(N)], info[str(P)]
    # this session's number: --session, else one more than the card's count of sessions so far
    m_count = one(r"([A-Z][a-z-]+) stages over ([a-z-]+) sessions", card, "card training")
    session = a.session or NUMBERS[m_count.group(2)] + 1
    base = me["parent"]
    if base is None or base["stage"] != str(P):
        raise DocError("train_log.csv: stage %d's first row does not follow a row of stage %d" % (N, P))
    rc, rc_p, rc_pp = recipe(me), recipe(pa), recipe(info[str(P - 1)])
    vals = [(int(r["step"]) - int(base["step"]), float(r["val_ppl"])) for r in me["rows"] if r["val_ppl"]]
    want = list(range(rc["every"], rc["steps"] + 1, rc["every"])) + ([rc["steps"]] if rc["steps"] % rc["every"] else [])
    if [s for s, _ in vals] != want or rc["steps"] < 2500 or rc["branch"] % rc["every"] or rc["decay"] < 100:
        raise DocError("stage %d is not this recipe's %s steps (at least 2,500) with validation every %d through its branch"
                       " step %d: %s" % (N, num(rc["steps"]), rc["every"], rc["branch"], [s for s, _ in vals]))
    stable, decay = [v for s, v in vals if s <= rc["branch"]], [v for s, v in vals if s > rc["branch"]]
    prev_stable, prev_end = float(base["val_ppl"]), float(pa["rows"][-1]["val_ppl"])
    last = me["rows"][-1]
    lineage, prev_lineage = int(last["tokens"]), int(pa["rows"][-1]["tokens"])
    minutes = round((float(last["elapsed_s"]) - float(base["elapsed_s"])) / 60)
    tps = statistics.median([float(r["tokens_per_s"]) for r in me["rows"][50:]])
    branch_tokens = int(pa["rows"][-1]["tokens"]) - int(base["tokens"])   # the parent's decay, now a branch
    hours = float(last["elapsed_s"]) / 3600

    # ---- test results ------------------------------------------------------------------------------
    ppl, acc, top5, ece = test["perplexity"], test["accuracy"], test["top5_accuracy"], test["calibration"]["ece"]
    m = one(r"\| stage %d \(6 layers, ([\d,.]+M) tokens\) \| ([\d.]+) \| ([\d.]+)%% \|" % P, hist, "TRAINING.md release table")
    if m.group(1) != mtok(prev_lineage):
        raise DocError("TRAINING.md says stage %d had %s tokens, train_log.csv %s" % (P, m.group(1), mtok(prev_lineage)))
    prev_ppl, prev_acc = float(m.group(2)), float(m.group(3)) / 100
    gain, dacc = prev_ppl - ppl, 100 * (acc - prev_acc)
    if gain <= 0:
        raise DocError("the release is not better on test (%.3f vs %.3f): write its text by hand" % (ppl, prev_ppl))
    # the files hold 4 decimals: compare the difference as written (13.9486 - 13.9484 is 0.0002, not
    # the 0.00020000000000042 of binary floating point)
    if round(abs(bf16["perplexity"] - ppl), 4) > 0.0002:
        raise DocError("bf16 differs from float32 by more than 0.0002: the card's 'Within 0.0002' needs rewriting")
    pm = re.search(r"(\d+) residues: max \|log p\(fp32\) - log p\(bf16\)\| ([\d.]+); same top-1 residue at (\d+) of (\d+)",
                   a.precision_line)
    if not pm:
        raise DocError("--precision-line does not read as test_server_precision.py's line")
    p_res, p_diff, p_same = int(pm.group(1)), pm.group(2), int(pm.group(3))

    # ---- breakdown ---------------------------------------------------------------------------------
    sim = [d for d in lines if d["table"] == "similarity"]
    length = {}
    for d in lines:
        if d["table"] == "length":
            length.setdefault((d["from"], d["to"]), {})[d["window"]] = d
    bins = sorted(length)
    if len(sim) != 6 or len(bins) != 5:
        raise DocError("breakdown.jsonl: %d similarity rows and %d length bins, expected 6 and 5" % (len(sim), len(bins)))
    L = lambda b, w: length[bins[b]][w]["eval"]["perplexity"]  # noqa: E731
    # (one pass against pieces of 1,022 past 2,048 residues is pieces_1022's to check: it may be level)
    if not (L(3, 0) < L(3, 1022) and L(2, 0) < L(2, 512) and L(3, 0) < L(3, 512) and L(4, 0) < L(4, 512)):
        raise DocError("the length results changed sides (one pass vs pieces): write the length sentences by hand")
    long_vs_512, long_vs_1022 = length_phrase(L(4, 0), L(4, 512)), length_phrase(L(4, 0), L(4, 1022))
    pass_vs_512, pass_vs_1022 = versus(L(4, 0), L(4, 512)), versus(L(4, 0), L(4, 1022))   # the same, as prose
    cost_card, cost_limits, cost_readme = pieces_1022(L(4, 0) - L(4, 1022))

    # ================================ MODEL_CARD.md =================================================
    c = card
    c = sub1(c, r"SHA-256 `[0-9a-f]{64}`, [\d.]+ MB", "SHA-256 `%s`, %.1f MB" % (sha, len(blob) / 1e6), "card SHA")
    c = sub1(c, r"perplexity \*\*[\d.]+\*\*,\ntop-1 accuracy \*\*[\d.]+%\*\* \(top-5 [\d.]+%\)",
             "perplexity **%.2f**,\ntop-1 accuracy **%s** (top-5 %s)" % (ppl, pct(acc), pct(top5, 1)), "card headline")
    c = sub1(c, r"\(the previous release: [\d.]+ / [\d.]+% after [\d,.]+M tokens;",
             "(the previous release: %.2f / %s after %s tokens;" % (prev_ppl, pct(prev_acc), mtok(prev_lineage)),
             "card headline (previous release)")
    c = sub1(c, r"it measures [\d.]+ / [\d.]+% \(section", "it measures %.2f / %s (section" % (bf16["perplexity"], pct(bf16["accuracy"])),
             "card headline (bf16)")
    c = sub1(c, r"expected calibration error [\d.]+", "expected calibration error %.4f" % ece, "card ECE", count=2)
    c = sub1(c, r"1,022 \([\d.]+ vs [\d.]+ at 1,024–2,048 residues\); past 2,048 residues one pass is %s pieces of 1,022" % VERSUS,
             "1,022 (%.2f vs %.2f at 1,024–2,048 residues); past 2,048 residues one pass is %s pieces of 1,022"
             % (L(3, 0), L(3, 1022), pass_vs_1022), "card headline (length)")
    n_stages = NUMBERS[m_count.group(1).lower()] + 1
    c = sub1(c, re.escape(m_count.group(0)), "%s stages over %s sessions" % (WORDS[n_stages].capitalize(), WORDS[session]), "card training")
    # the earlier stages of the chain, in ascending order
    c = sub1(c, r"\(stage %d from stage %d's weights where its decay began, `weights/stable.safetensors`; stages 19 to %d"
                r" the same from stage 18's to stage %d's;" % (P, P - 1, P - 1, P - 2),
             "(stage %d from stage %d's weights where its decay began, `weights/stable.safetensors`; stages 19 to %d the same"
             " from stage 18's to stage %d's;" % (N, P, P, P - 1), "card training (lineage)")
    row_p = one(r"\n\| %d \| [^\n]*\|\n" % P, c, "card training table (stage %d row)" % P)
    new_row = ("| %d | stage %d at its step %s (before its decay; `weights/stable.safetensors`), a new optimiser state | %s x 16,384 |"
               " %.1fM | 8e-5 after a 100-step warm-up, held to step %s, 1 - sqrt decay to 8e-6 over the last %s | %d |"
               " %d min (%s) |\n" % (N, P, num(rc_p["branch"]), num(rc["steps"]), rc["tokens"] / 1e6, num(rc["branch"]), num(rc["decay"]), N, minutes,
                                     a.wall_note))
    c = c[:row_p.end()] + new_row + c[row_p.end():]
    c = sub1(c, r"descends from \*\*[\d,.]+M tokens\*\*", "descends from **%s tokens**" % mtok(lineage), "card lineage")
    c = sub1(c, r", and stage %d's, its last ([\d,]+) steps and ([\d.]+M) tokens, are branches" % (P - 1),
             r", stage %d's, its last \1 steps and \2 tokens, and stage %d's, its last %s steps and %.1fM tokens, are branches"
             % (P - 1, P, num(rc_p["decay"]), branch_tokens / 1e6), "card branches")
    m = one(r"([\d,.]+)M tokens were trained in all", c, "card (trained in all)")
    c = sub1(c, re.escape(m.group(0)), "{:,.1f}M tokens were trained in all".format(float(m.group(1).replace(",", "")) + rc["tokens"] / 1e6),
             "card (trained in all)")
    pv = [(int(r["step"]) - int(pa["parent"]["step"]), float(r["val_ppl"])) for r in pa["rows"] if r["val_ppl"]]
    pp = info[str(P - 1)]
    # the previous stage's session as the card wrote it (a session can end without a stage)
    prev_session = int(one(r"Stage %d \(session (\d+)\) went on" % P, c, "card stage %d paragraph (session)" % P).group(1))
    old_args = (P, prev_session, P, P - 1, [v for s, v in pv if s <= rc_p["branch"]], [v for s, v in pv if s > rc_p["branch"]],
                float(pa["parent"]["val_ppl"]), float(pp["rows"][-1]["val_ppl"]))
    new_args = (N, session, N, P, stable, decay, prev_stable, prev_end)
    c = sub1(c, stage_paragraph(*old_args, current="card", rc=rc_p, prev_rc=rc_pp),
             stage_paragraph(*new_args, current="card", rc=rc, prev_rc=rc_p),
             "card stage paragraph", regex=False)
    c = sub1(c, "# stages 1 to %d: weights/TRAINING.md\n" % (P - 1) + command_block(P, rc_p, rc_pp),
             "# stages 1 to %d: weights/TRAINING.md\n" % P + command_block(N, rc, rc_p), "card command block", regex=False)
    c = sub1(c, r"gave [\d.]+ / [\d.]+%% for stage %d against [\d.]+ / [\d.]+%% for stage %d \(" % (P, P - 1),
             "gave %.3f / %s for stage %d against %.3f / %s for stage %d (" % (valid["perplexity"], pct(valid["accuracy"]), N,
                                                                            valid_prev["perplexity"], pct(valid_prev["accuracy"]), P),
             "card validation choice")
    c = sub1(c, r"4,096 in stages 6 to %d([):])" % P, r"4,096 in stages 6 to %d\1" % N, "card crops (training, limitations)", count=2)
    c = sub1(c, "kept in stages 7 to %d)" % P, "kept in stages 7 to %d)" % N, "card crops (length)", regex=False)
    c = sub1(c, r"in stage %d a median of [\d,]+ tokens/s \(steps 51–[\d,]+, per-step" % P,
             "in stage %d a median of {:,.0f} tokens/s (steps 51–%s, per-step".format(tps) % (N, num(rc["steps"])), "card compute")
    c = sub1(c, "decays of stages 11 to 16 and 18 to %d," % (P - 1), "decays of stages 11 to 16 and 18 to %d," % P, "card curves", regex=False)
    c = sub1(c, r"stage %d, [\d,.]+M tokens\) \| \*\*[\d.]+\*\* \| \*\*[\d.]+%%\*\* \|" % P,
             "stage %d, %s tokens) | **%.3f** | **%s** |" % (N, mtok(lineage), ppl, pct(acc)), "card eval table (this model)")
    c = sub1(c, r"\(`eval/test_bf16.json`\) \| [\d.]+ \| [\d.]+% \|",
             "(`eval/test_bf16.json`) | %.3f | %s |" % (bf16["perplexity"], pct(bf16["accuracy"])), "card eval table (bf16)")
    c = sub1(c, r"\| the previous release \(6 layers, stage %d, [\d,.]+M tokens\) \| [\d.]+ \| [\d.]+%% \|" % (P - 1),
             "| the previous release (6 layers, stage %d, %s tokens) | %.3f | %s |" % (P, mtok(prev_lineage), prev_ppl, pct(prev_acc)),
             "card eval table (previous release)")
    cal = test["calibration"]["bins"]
    under = (cal[0]["residues"] + cal[1]["residues"]) / test["residues"]
    c = sub1(c, r"Top-5 accuracy [\d.]+%\.", "Top-5 accuracy %s." % pct(top5), "card top-5")
    c = sub1(c, r"\n\d+% of the positions get a top-1 probability under 0.2", "\n%.0f%% of the positions get a top-1 probability under 0.2" % (100 * under),
             "card calibration share")
    c = sub1(c, r"\([\d.]+ vs [\d.]+ in the 0.1–0.2 bin, [\d.]+ vs [\d.]+ in the top one\)",
             "(%.4f vs %.4f in the 0.1–0.2 bin, %.3f vs %.4f in the top one)" % (cal[1]["accuracy"], cal[1]["mean_probability"],
                                                                                 cal[-1]["accuracy"], cal[-1]["mean_probability"]),
             "card calibration bins")
    c = sub1(c, r"and [\d.]+ at the end of stage %d \([\d,.]+M\);" % P,
             "and %.2f at the end of stage %d (%s);" % (float(last["val_ppl"]), N, mtok(lineage)), "card validation")
    m = one(r"Stage %d\n\([\d.]+M tokens: .*?more \([\d.]+ → [\d.]+\)\." % P, c, "card stage sentence", re.S)
    c = c[:m.start()] + (
        "Stage %d\n(%.1fM tokens: stage %d's stable state continued, %s steps at 8e-5 after a 100-step warm-up, then a\n"
        "decay of %s) gained %.3f on the test split (%.3f → %.3f) and %.2f points of accuracy: validation went\n"
        "from %.3f (stage %d's stable phase) to %.3f at the end of this stable phase, and the decay gave %.2f\n"
        "more (%.3f → %.3f)." % (N, rc["tokens"] / 1e6, P, num(rc["branch"] - 100), num(rc["decay"]), gain, prev_ppl, ppl, dacc,
                                 prev_stable, P, stable[-1], stable[-1] - decay[-1], stable[-1], decay[-1])) + c[m.end():]
    m = one(GAINS, c, "card gains")
    if not 0.045 <= gain < 0.115:
        raise DocError("the gain %.3f is outside 0.05–0.11: rewrite the gains sentence by hand" % gain)
    rel, rel_acc = {}, {}
    for x in re.finditer(r"\| stage (\d+) \(6 layers, [\d,.]+M tokens\) \| ([\d.]+) \| ([\d.]+)% \|", hist):
        rel[int(x.group(1))], rel_acc[int(x.group(1))] = float(x.group(2)), float(x.group(3))
    rel[N], rel_acc[N] = ppl, 100 * acc
    last5 = [rel[s - 1] - rel[s] for s in range(N - 4, N + 1)]
    last5_acc = [rel_acc[s] - rel_acc[s - 1] for s in range(N - 4, N + 1)]
    met_in = int(m.group(2)) if m.group(2) else (N if ppl <= PPL_TARGET else None)
    acc_met_in = int(m.group(3)) if m.group(3) else (N if 100 * acc >= ACC_TARGET else None)
    c = c[:m.start()] + "session (%s, %.2f) have been 0.05–0.11 a session since stage 7. %s" % (
        m.group(1), gain, targets_sentence(ppl, acc, met_in, acc_met_in, last5, last5_acc)) + c[m.end():]
    c = sub1(c, HEADLINE_TARGET, headline_target(ppl, acc), "card headline (target)")
    for d in sim:
        e = d["eval"]
        label = "[%g, %g%s" % (d["from"], d["to"], "]" if d["to"] == 1 else ")")
        c = sub1(c, r"\n\| %s \| [^\n]*" % re.escape(label), "\n| {} | {:,} | {:,} | {:.3f} | {} | {:.3f} |".format(
            label, d["sequences"], e["residues"], e["perplexity"], pct(e["accuracy"]), e["unigram"]["perplexity"]), "card similarity " + label)
    c = sub1(c, "| stage %d (6 layers, crops of 4,096), whole | stage %d, pieces of 512 | stage %d, pieces of 1,022 | **this model (stage %d, 6 layers,"
                " crops of 4,096), whole** |" % (P - 1, P - 1, P - 1, P),
             "| stage %d (6 layers, crops of 4,096), whole | stage %d, pieces of 512 | stage %d, pieces of 1,022 | **this model (stage %d, 6 layers,"
             " crops of 4,096), whole** |" % (P, P, P, N), "card length header", regex=False)
    lines_c = c.split("\n")
    for b in range(5):
        w = length[bins[b]]
        hits = [i for i, l in enumerate(lines_c) if l.startswith("| ") and len(l.split(" | ")) == 15
                and l.split(" | ")[1:3] == ["{:,}".format(w[0]["sequences"]), "{:,}".format(w[0]["eval"]["residues"])]]
        if len(hits) != 1:
            raise DocError("card length table: %d rows for the bin %s" % (len(hits), bins[b]))
        cells = [x.strip() for x in lines_c[hits[0]].strip().strip("|").split("|")]
        f = lambda win: "%.3f" % w[win]["eval"]["perplexity"] if win in w else ""  # noqa: E731
        cells[9:15] = [cells[12].strip("*"), cells[13], cells[14], "**%.3f**" % w[0]["eval"]["perplexity"], f(512), f(1022)]
        lines_c[hits[0]] = "| " + " | ".join(cells) + " |"
    c = "\n".join(lines_c)
    c = sub1(c, r"\(by\n[\d.]+ at 512–1,024 and [\d.]+ at 1,024–2,048\) and better than pieces of 1,022 at 1,024–2,048\n\([\d.]+ vs [\d.]+\);",
             "(by\n%.2f at 512–1,024 and %.2f at 1,024–2,048) and better than pieces of 1,022 at 1,024–2,048\n(%.3f vs %.3f);"
             % (L(2, 512) - L(2, 0), L(3, 512) - L(3, 0), L(3, 0), L(3, 1022)), "card length paragraph")
    c = sub1(c, r"one\npass is %s pieces of 512 \([\d.]+ vs [\d.]+\) and %s pieces of 1,022 \([\d.]+\)" % (VERSUS, VERSUS),
             "one\npass is %s pieces of 512 (%.3f vs %.3f) and %s pieces of 1,022 (%.3f)"
             % (pass_vs_512, L(4, 0), L(4, 512), pass_vs_1022, L(4, 1022)),
             "card length paragraph (past 2,048)")
    c = sub1(c, r"costs (?:at most [\d.]+|nothing) in perplexity", cost_card, "card length (cost)")
    c = sub1(c, r"(?:slightly worse|no better|only as good) in one pass (?:than|as) on pieces of 1,022 \([^()]*the length table above\)",
             cost_limits, "card limitations (length)")
    c = sub1(c, r"At test perplexity [\d.]+ the model", "At test perplexity %.2f the model" % ppl, "card limitations (perplexity)")
    for label, d in (("float32", test), ("bf16", bf16)):
        c = sub1(c, r"\n\| %s \| [\d.]+ \| [\d.]+%% \| [\d.]+%% \| [\d.]+ \|" % label,
                 "\n| %s | %.4f | %s | %s | %.4f |" % (label, d["perplexity"], pct(d["accuracy"]), pct(d["top5_accuracy"]), d["calibration"]["ece"]),
                 "card precision table (%s)" % label)
    c = sub1(c, r"within [\d.]+ of float32's and\nthe top residue was the same at \d+ of the \d+ positions",
             "within %s of float32's and\nthe top residue was the same at %d of the %d positions" % (p_diff, p_same, p_res), "card per-position precision")

    # ================================ TRAINING.md ===================================================
    h = hist
    h = sub1(h, stage_paragraph(*old_args, current="history", rc=rc_p, prev_rc=rc_pp),
             stage_paragraph(*old_args, current=None, rc=rc_p, prev_rc=rc_pp), "history stage %d paragraph" % P, regex=False)
    h = sub1(h, "## Stages, newest first\n\n", "## Stages, newest first\n\n" + stage_paragraph(*new_args, current="history", rc=rc, prev_rc=rc_p)
             + "\n\n", "history stages", regex=False)
    h = sub1(h, "\n| stage %d (6 layers," % P, "\n| stage %d (6 layers, %s tokens) | %.3f | %s |\n| stage %d (6 layers," % (N, mtok(lineage), ppl, pct(acc), P),
             "history release table", regex=False)
    h = sub1(h, r"at the end of stage %d \(%s\)\. In stage 2b" % (P, re.escape(mtok(prev_lineage))),
             "at the end of stage %d (%s), %.2f at the end of stage %d (%s). In stage 2b" % (P, mtok(prev_lineage), float(last["val_ppl"]), N, mtok(lineage)),
             "history validation list")
    prev_dacc = 100 * (prev_acc - float(one(r"\| stage %d \(6 layers, [\d,.]+M tokens\) \| [\d.]+ \| ([\d.]+)%% \|" % (P - 1), hist,
                                                "TRAINING.md release table").group(1)) / 100)
    old_gain = gain_sentence(P, P - 1, rel[P - 1], rel[P], prev_dacc, float(pa["parent"]["val_ppl"]), prev_stable, prev_end, rc_p, rc_pp)
    h = sub1(h, old_gain, old_gain + " " + gain_sentence(N, P, prev_ppl, ppl, dacc, prev_stable, stable[-1], decay[-1], rc, rc_p),
             "history gains", regex=False)
    h = sub1(h, "(the headline's options) gave %.3f / %s for stage %d against " % (valid_prev["perplexity"], pct(valid_prev["accuracy"]), P),
             "(the headline's options) gave %.3f / %s for stage %d against %.3f / %s for stage %d, %.3f / %s for stage %d against "
             % (valid["perplexity"], pct(valid["accuracy"]), N, valid_prev["perplexity"], pct(valid_prev["accuracy"]), P,
                valid_prev["perplexity"], pct(valid_prev["accuracy"]), P), "history validation chain", regex=False)
    h = sub1(h, r"(in stage %d [\d,]+ \(steps 51–[\d,]+, per-step median\))\." % P,
             r"\1, in stage %d {:,.0f} (steps 51–%s, per-step median).".format(tps) % (N, num(rc["steps"])), "history throughput")
    h = sub1(h, r"(stage %d: [\d.]+ (?:better|behind) / [\d.]+ (?:better|behind))\.\n" % P,
             r"\1, stage %d: %s / %s.\n" % (N, long_vs_512, long_vs_1022), "history past 2,048")
    h = sub1(h, "with each stage's weights: stage %d's weights:" % P,
             "with each stage's weights: stage %d's weights: %.4f / %.4f; stage %d's weights:" % (N, ppl, bf16["perplexity"], P),
             "history bf16 list", regex=False)
    h = sub1(h, "where the top residue agreed: stage %d's weights:" % P,
             "where the top residue agreed: stage %d's weights: %s, the same top residue at %d of %d; stage %d's weights:" % (N, p_diff, p_same, p_res, P),
             "history per-position list", regex=False)
    h = history_commands(h, P, rc_p, rc_pp)

    # ================================ README.md =====================================================
    r = readme
    m = one(r"in ([a-z-]+) stages \([\d,.]+M tokens on its lineage, about [\d.]+ hours\)", r, "README lineage")
    r = sub1(r, re.escape(m.group(0)), "in %s stages (%s tokens on its lineage, about %.1f hours)" % (WORDS[n_stages], mtok(lineage), hours), "README lineage")
    r = sub1(r, r"\*\*perplexity [\d.]+ and top-1 accuracy [\d.]+%\*\* \(top-5 [\d.]+%\)",
             "**perplexity %.2f and top-1 accuracy %s** (top-5 %s)" % (ppl, pct(acc, 1), pct(top5, 1)), "README headline")
    r = sub1(r, r"with `--precision bf16` the same\n[\d.]+ / [\d.]+%", "with `--precision bf16` the same\n%.2f / %s" % (bf16["perplexity"], pct(bf16["accuracy"], 1)),
             "README bf16")
    r = sub1(r, r"expected calibration error [\d.]+", "expected calibration error %.4f" % ece, "README ECE")
    r = sub1(r, r"\([\d.]+ vs [\d.]+ in perplexity at 1,024–2,048 residues; past 2,048 residues one pass\nis %s pieces of 512 and"
                r" pieces of 1,022 are (?:better by [\d.]+|level \(within 0\.005\)|worse by [\d.]+, %s)\)" % (VERSUS, FLIPPED),
             "(%.2f vs %.2f in perplexity at 1,024–2,048 residues; past 2,048 residues one pass\nis %s pieces of 512 and pieces of 1,022"
             " %s)" % (L(3, 0), L(3, 1022), pass_vs_512, cost_readme), "README length")

    for path, text in (("weights/MODEL_CARD.md", c), ("weights/TRAINING.md", h), ("README.md", r)):
        with open(os.path.join(R, path), "w", encoding="utf-8") as f:
            f.write(text)
    print("stage %d: test %.3f / %s (from %.3f), lineage %s, %d min, median %.0f tokens/s; documents updated"
          % (N, ppl, pct(acc), prev_ppl, mtok(lineage), minutes, tps))


if __name__ == "__main__":
    try:
        main()
    except DocError as e:
        print("release_docs: %s" % e, file=sys.stderr)
        sys.exit(1)
