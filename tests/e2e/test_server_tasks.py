"""End-to-end test of the routes beyond fill-mask against real daemons with tiny random models:
POST /score (each method checked against /predict and /logits, offsets, errors, limits, cache),
POST /embed (the final-layer embedding reproduces /logits through the head weights read from the
safetensors file; mean = average of per_residue; layers), POST /logits, asynchronous jobs (FASTA and
JSON, progress, JSON Lines results equal to the routes, deduplication, cancel/delete, a restart in
the middle resuming, interactive requests staying fast), and bin/performer score / embed / run-jobs
giving the same numbers as the daemon."""
import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import PERFORMER, Daemon, check, done, error_shape, make_model, raw_exchange, run_daemon_cmd, poll, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"), seed=5)
DB = os.path.join(T, "tasks.sqlite")
d = Daemon(W, DB, ["--max-pll-length", "40", "--max-score-tokens", "5000", "--max-job-sequences", "50",
                   "--max-job-body", "65536"]).start()
AA = "ACDEFGHIKLMNPQRSTVWY"
SEQ = "MKTAYIAKQRQISFVKSHFSRQ"


def close(a, b, tol=2e-4):
    return abs(a - b) <= tol


def post(route, body, headers=None):
    return d.post(body, headers=headers, path=route)


def masked_lp(seq, positions):
    """log-probs (dict residue -> log p) at each 1-based position, that position alone masked (/predict)."""
    r = post("/predict", {"sequences": [seq] * len(positions), "mask_positions": [[p] for p in positions], "top_k": 20})
    out = []
    for res in r.json()["results"]:
        out.append({t["token"]: t["log_prob"] for t in res["predictions"][0]["top_k"]})
    return out


# ---- POST /score ----------------------------------------------------------------------------------------
r = post("/score", {"sequence": SEQ, "mutations": ["A4G", "K2R:T3N", "q11e"]})
check(r.status == 200 and r.header("X-Cache") == "MISS", "score 200: %s" % r.body[:300])
j = r.json()
check(j["method"] == "masked-marginals" and j["offset"] == 1 and j["length"] == len(SEQ) and len(j["id"]) == 64,
      "score defaults")
check([s["mutant"] for s in j["scores"]] == ["A4G", "K2R:T3N", "Q11E"], "mutants in order, normalised")
lp = dict(zip([4, 2, 3, 11], masked_lp(SEQ, [4, 2, 3, 11])))
want = [lp[4]["G"] - lp[4]["A"], lp[2]["R"] - lp[2]["K"] + lp[3]["N"] - lp[3]["T"], lp[11]["E"] - lp[11]["Q"]]
check(all(close(s["score"], w) for s, w in zip(j["scores"], want)),
      "masked-marginals = log p(mt) - log p(wt) with the site masked, summed: %s vs %s" % ([s["score"] for s in j["scores"]], want))
site = j["scores"][1]["sites"][1]
check(site["position"] == 3 and site["wt"] == "T" and site["mt"] == "N" and close(site["wt_log_prob"], lp[3]["T"]) and
      close(site["delta"], lp[3]["N"] - lp[3]["T"]), "per-site detail: %s" % site)
SCORE_ID, SCORE_BODY = j["id"], j
r = post("/score", {"mutations": ["a4g", "T3N:K2R", "Q11E"], "sequence": SEQ.lower(), "method": "masked-marginals"})
check(r.header("X-Cache") == "HIT" and r.json()["id"] == SCORE_ID and r.json()["cached"] is True, "normalised repeat is a HIT")
r = d.get("/score/" + SCORE_ID)
jj = r.json()
jj["cached"] = False
check(r.status == 200 and jj == SCORE_BODY, "GET /score/{id}")

logits = post("/logits", {"sequence": SEQ}).json()["results"][0]["log_probs"]
r = post("/score", {"sequence": SEQ, "mutations": ["A4G", "K2R:T3N"], "method": "wt-marginals"})
w = [logits[3][AA.index("G")] - logits[3][AA.index("A")],
     logits[1][AA.index("R")] - logits[1][AA.index("K")] + logits[2][AA.index("N")] - logits[2][AA.index("T")]]
check(r.status == 200 and all(close(s["score"], x) for s, x in zip(r.json()["scores"], w)),
      "wt-marginals = the unmasked pass's log-probs: %s" % r.body[:200])

short = SEQ[:12]
r = post("/score", {"sequence": short, "mutations": ["A4G", "K2R:T3N"], "method": "pseudo-likelihood"})
check(r.status == 200, "pseudo-likelihood 200: %s" % r.body[:300])
pj = r.json()


def pll(seq):
    lps = masked_lp(seq, list(range(1, len(seq) + 1)))
    return sum(lps[i][seq[i]] for i in range(len(seq)))


p_wt, p_a, p_b = pll(short), pll(short[:3] + "G" + short[4:]), pll(short[0] + "RN" + short[3:])
check(close(pj["wild_type"]["pll"], p_wt, 1e-3) and close(pj["scores"][0]["pll"], p_a, 1e-3), "PLL values")
check(close(pj["scores"][0]["score"], p_a - p_wt, 1e-3) and close(pj["scores"][1]["score"], p_b - p_wt, 1e-3),
      "pseudo-likelihood score = PLL(mutant) - PLL(wild type): %s vs %s" % ([s["score"] for s in pj["scores"]],
                                                                           [p_a - p_wt, p_b - p_wt]))
r = post("/score", {"sequence": SEQ, "mutations": ["A27G"], "offset": 24})
check(r.status == 200 and close(r.json()["scores"][0]["score"], want[0]) and r.json()["scores"][0]["sites"][0]["position"] == 27,
      "offset shifts the numbering")
r = post("/score", {"sequence": SEQ, "mutations": ["K-1R", "T0N"], "offset": -2})   # numbering from -2
r2 = post("/score", {"sequence": SEQ, "mutations": ["K2R", "T3N"]})
check(r.status == 200 and [x["score"] for x in r.json()["scores"]] == [x["score"] for x in r2.json()["scores"]] and
      r.json()["scores"][0]["sites"][0]["position"] == -1, "positions below 1 (a negative offset) are written A-3G: %s"
      % r.body[:300])

e = error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G", "G5A"]}), 422, "wild_type_mismatch")
check(e.get("position") == 5 and e.get("expected") == "Y" and "position 5" in e["error"], "mismatch names the position: %s" % e)
e = error_shape(post("/score", {"sequence": SEQ, "mutations": ["A23G"]}), 422, "invalid_mutation_position")
check(e.get("max") == len(SEQ), "range given")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4"]}), 422, "invalid_mutation")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4X"]}), 422, "invalid_mutation")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G:A4C"]}), 422, "invalid_mutation")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G", "A4G"]}), 422, "duplicate_mutation")
error_shape(post("/score", {"sequence": SEQ, "mutations": []}), 422, "invalid_mutation")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G"], "method": "best"}), 422, "invalid_method")
error_shape(post("/score", {"sequence": "MKT<mask>", "mutations": ["K2R"]}), 422, "invalid_residue")
error_shape(post("/score", {"sequence": SEQ}), 400, "invalid_request")
error_shape(post("/score", {"sequence": SEQ, "mutations": "A4G"}), 400, "invalid_type")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G"], "top_k": 5}), 400, "unknown_field")
e = error_shape(post("/score", {"sequence": "A" * 41, "mutations": ["A1G"], "method": "pseudo-likelihood"}), 413,
                "sequence_too_long")
check(e.get("limit") == 40 and "--max-pll-length" in e["error"], "PLL length cap is named: %s" % e["error"])
e = error_shape(post("/score", {"sequence": "A" * 100, "mutations": ["A%dG" % i for i in range(1, 61)]}), 413,
                "score_too_large")
check(e.get("limit") == 5000 and e.get("tokens") == 60 * 102, "masked copies over --max-score-tokens: %s" % e)
# "mutations": "all": every single substitution (19 per standard residue), scored as the explicit list
ra = post("/score", {"sequence": SEQ, "mutations": "all"})
ALL_ID, ALL_SCORES = ra.json().get("id"), ra.json().get("scores", [])
allm = ["%s%d%s" % (w, i + 1, a) for i, w in enumerate(SEQ) for a in "ACDEFGHIKLMNPQRSTVWY" if a != w]
check(ra.status == 200 and [x["mutant"] for x in ALL_SCORES] == allm,
      "mutations all: 19 substitutions per residue, position by position (%d)" % len(ALL_SCORES))
rl = post("/score", {"sequence": SEQ, "mutations": allm})
check(rl.status == 200 and all(close(a["score"], b["score"], 1e-5) and a["sites"] == b["sites"]
                               for a, b in zip(ALL_SCORES, rl.json()["scores"])), "mutations all = the explicit list")
check(d.get("/score/" + ALL_ID).json()["scores"] == ALL_SCORES, "GET /score/{id} of a mutations-all request")
rw = post("/score", {"sequence": SEQ, "mutations": "all", "method": "wt-marginals", "offset": 10})
check(rw.status == 200 and len(rw.json()["scores"]) == 19 * len(SEQ) and rw.json()["scores"][0]["mutant"] == "M10A",
      "mutations all with wt-marginals and an offset")
rx = post("/score", {"sequence": "MKXA", "mutations": "all"})
check(rx.status == 200 and len(rx.json()["scores"]) == 57 and not any("X" in x["mutant"] for x in rx.json()["scores"]),
      "mutations all skips non-standard residues")
error_shape(post("/score", {"sequence": "XXB", "mutations": "all"}), 422, "invalid_mutation")
error_shape(post("/score", {"sequence": SEQ, "mutations": "al"}), 400, "invalid_type")
error_shape(post("/score", {"sequence": SEQ, "mutations": "all", "method": "pseudo-likelihood"}), 413, "score_too_large")
e = error_shape(post("/score", {"sequence": "A" * 5264, "mutations": "all", "method": "wt-marginals"}), 413,
                "too_many_mutations")
check(e.get("mutations") == 19 * 5264 and e.get("limit") == 100000 and "5263 residues" in e["error"],
      "mutations all over the mutant limit names the length: %s" % e["error"])
# "format": "matrix": the same scores as a length x 20 table (0 at the wild type, null where not scored)
rm = post("/score", {"sequence": SEQ, "mutations": "all", "format": "matrix"})
mj = rm.json()
MAT_ID = mj.get("id")
check(rm.status == 200 and mj.get("format") == "matrix" and mj.get("alphabet") == AA and mj.get("wt") == SEQ and
      "scores" not in mj and len(mj.get("matrix", [])) == len(SEQ) and all(len(row) == 20 for row in mj["matrix"]),
      "format matrix: a row per residue, a column per residue of the alphabet: %s" % rm.body[:200])
flat = {x["mutant"]: x["score"] for x in ALL_SCORES}
check(all(close(mj["matrix"][i][a], 0.0 if AA[a] == w else flat["%s%d%s" % (w, i + 1, AA[a])], 1e-6)
          for i, w in enumerate(SEQ) for a in range(20)), "format matrix = the list's scores, 0 at the wild type")
check(MAT_ID not in (ALL_ID, None), "format matrix has its own id")
check(post("/score", {"sequence": SEQ, "mutations": "all", "format": "list"}).json().get("id") == ALL_ID,
      "format list (the default) keeps the id of a request without format")
check(d.get("/score/" + MAT_ID).json().get("matrix") == mj["matrix"], "GET /score/{id} of a matrix request")
rs = post("/score", {"sequence": "MKXA", "mutations": ["K2R", "a4c"], "format": "matrix", "method": "wt-marginals"})
sj = rs.json()
lj = post("/score", {"sequence": "MKXA", "mutations": ["K2R", "A4C"], "method": "wt-marginals"}).json()["scores"]
check(rs.status == 200 and sj["wt"] == "MKXA" and sj["matrix"][2] is None and
      sj["matrix"][0] == [0 if a == "M" else None for a in AA] and sj["matrix"][1][AA.index("K")] == 0 and
      close(sj["matrix"][1][AA.index("R")], lj[0]["score"], 1e-6) and close(sj["matrix"][3][AA.index("C")], lj[1]["score"], 1e-6)
      and sum(x is not None for x in sj["matrix"][1]) == 2, "format matrix of a list: null where not scored and at X: %s" % sj["matrix"])
rp = post("/score", {"sequence": SEQ, "mutations": ["A4G", "K2R"], "format": "matrix", "method": "pseudo-likelihood"})
lp = post("/score", {"sequence": SEQ, "mutations": ["A4G", "K2R"], "method": "pseudo-likelihood"}).json()
check(rp.status == 200 and close(rp.json()["wild_type"]["pll"], lp["wild_type"]["pll"], 1e-6) and
      close(rp.json()["matrix"][3][AA.index("G")], lp["scores"][0]["score"], 1e-6), "format matrix with pseudo-likelihood")
e = error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G", "K2R:T3N"], "format": "matrix"}), 422, "invalid_format")
check(e.get("mutation_index") == 1 and "single substitutions" in e["error"], "format matrix refuses a multi-site mutant: %s" % e)
e = error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G"], "format": "table"}), 422, "invalid_format")
check(e.get("allowed") == ["list", "matrix"], "unknown format lists the allowed ones")
error_shape(post("/score", {"sequence": SEQ, "mutations": ["A4G"], "format": 1}), 400, "invalid_type")
error_shape(d.post("x", headers={"Content-Type": "text/plain"}, path="/score"), 415, "unsupported_media_type")
check(d.get("/score").status == 405, "GET /score is 405")

# ---- POST /embed and /logits ---------------------------------------------------------------------------


def read_tensors(path, names):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name in names:
            a, b = head[name]["data_offsets"]
            f.seek(base + a)
            out[name] = (struct.unpack("<%df" % ((b - a) // 4), f.read(b - a)), head[name]["shape"])
    return out


r = post("/embed", {"sequence": SEQ, "representations": ["mean", "per_residue", "cls"]})
check(r.status == 200, "embed 200: %s" % r.body[:200])
ej = r.json()
res = ej["results"][0]
D = ej["dim"]
check(D == 32 and ej["layer"] == -1 and len(res["per_residue"]) == len(SEQ) and len(res["mean"]) == D and len(res["cls"]) == D,
      "embed shapes")
mean = [sum(v[c] for v in res["per_residue"]) / len(SEQ) for c in range(D)]
check(all(close(a, b, 1e-4) for a, b in zip(mean, res["mean"])), "mean = average of per_residue")
t = read_tensors(W, ["head.weight", "head.bias"])
hw, hb = t["head.weight"][0], t["head.bias"][0]
ok = True
for i in (0, 7, len(SEQ) - 1):
    h = res["per_residue"][i]
    z = [sum(hw[a * D + c] * h[c] for c in range(D)) + hb[a] for a in range(20)]
    m = max(z)
    lse = m + math.log(sum(math.exp(x - m) for x in z))
    ok &= all(close(z[a] - lse, logits[i][a], 2e-3) for a in range(20))
check(ok, "final-layer embeddings through the head weights give /logits")
r0 = post("/embed", {"sequence": SEQ, "layer": 0}).json()["results"][0]["mean"]
r1 = post("/embed", {"sequence": SEQ, "layer": 2}).json()["results"][0]["mean"]
check(r0 != r1 and r1 != res["mean"], "layers differ")
rb = post("/embed", {"sequences": [SEQ, "GSSGKTT"]}).json()["results"]
rs = post("/embed", {"sequence": "GSSGKTT"}).json()["results"][0]
check(all(close(a, b, 1e-4) for a, b in zip(rb[1]["mean"], rs["mean"])) and
      all(close(a, b, 1e-4) for a, b in zip(rb[0]["mean"], res["mean"])), "batched embeddings equal single ones")
error_shape(post("/embed", {"sequence": SEQ, "layer": 3}), 422, "invalid_layer")
error_shape(post("/embed", {"sequence": SEQ, "representations": ["max"]}), 422, "invalid_representation")
error_shape(post("/embed", {"sequence": "MK#"}), 422, "invalid_residue")
r = post("/logits", {"sequence": SEQ})
lj = r.json()["results"][0]
check(lj["length"] == len(SEQ) and lj["tokens"][0] == "M" and len(lj["log_probs"]) == len(SEQ) and
      all(len(row) == 20 for row in lj["log_probs"]), "logits L x 20")
check(all(close(math.log(sum(math.exp(x) for x in row)), 0.0, 1e-4) for row in lj["log_probs"]), "rows are log-softmax")
pu = post("/predict", {"sequence": SEQ, "top_k": 20}).json()["results"][0]["predictions"]
check(all(close(dict((t["token"], t["log_prob"]) for t in pu[i]["top_k"])[AA[a]], lj["log_probs"][i][a], 1e-4)
          for i in (0, 5) for a in range(20)), "logits equal unmasked /predict")
check(post("/logits", {"sequence": SEQ}).header("X-Cache") == "HIT", "logits cached")

# ---- CLI: same numbers offline ---------------------------------------------------------------------------
out = subprocess.run([PERFORMER, "score", "--weights", W, "--mutations", "A4G,K2R:T3N,Q11E", "--json", SEQ],
                     capture_output=True, text=True)
cj = json.loads(out.stdout)
check(out.returncode == 0 and all(close(a["score"], b["score"], 1e-5) for a, b in zip(cj["scores"], SCORE_BODY["scores"]))
      and cj["id"] == SCORE_ID, "performer score = POST /score (same id)")
out = subprocess.run([PERFORMER, "score", "--weights", W, "--mutations", "all", "--json", SEQ], capture_output=True, text=True)
check(out.returncode == 0 and json.loads(out.stdout)["id"] == ALL_ID, "performer score --mutations all = POST /score (same id)")
out = subprocess.run([PERFORMER, "score", "--weights", W, "--mutations", "all", "--format", "matrix", "--json", SEQ],
                     capture_output=True, text=True)
check(out.returncode == 0 and json.loads(out.stdout)["id"] == MAT_ID, "performer score --format matrix --json = POST /score")
out = subprocess.run([PERFORMER, "score", "--weights", W, "--mutations", "all", "--format", "matrix", SEQ],
                     capture_output=True, text=True)
rows = [x.split("\t") for x in out.stdout.splitlines() if not x.startswith("#")]
check(out.returncode == 0 and rows[0] == ["position", "wt"] + list(AA) and len(rows) == len(SEQ) + 1 and
      rows[4][:2] == ["4", "A"] and all(close(float(rows[i + 1][a + 2]), mj["matrix"][i][a], 6e-5)
                                         for i in range(len(SEQ)) for a in range(20)),
      "performer score --format matrix: a table with a row per residue: %r" % out.stdout[:300])
out = subprocess.run([PERFORMER, "score", "--weights", W, "--mutations", "K2R", "--format", "matrix", "MKXA"],
                     capture_output=True, text=True)
check(out.returncode == 0 and out.stdout.splitlines()[4].split("\t") == ["3", "X"] + ["NA"] * 20,
      "performer score --format matrix writes NA where there is no score: %r" % out.stdout)
out = subprocess.run([PERFORMER, "score", "--weights", W, "--mutations", "G4A", SEQ], capture_output=True, text=True)
check(out.returncode == 1 and "position 4" in out.stderr, "performer score names a wild-type mismatch: %r" % out.stderr)
out = subprocess.run([PERFORMER, "embed", "--weights", W, "--representations", "mean,cls", SEQ], capture_output=True, text=True)
line = json.loads(out.stdout.splitlines()[0])
check(out.returncode == 0 and all(close(a, b, 1e-5) for a, b in zip(line["result"]["results"][0]["mean"], res["mean"])),
      "performer embed = POST /embed")
out = subprocess.run([PERFORMER, "--help"], capture_output=True, text=True)
check(all(c in out.stdout for c in ("score", "embed", "run-jobs")), "performer --help lists the new commands")

# ---- jobs -----------------------------------------------------------------------------------------------
FASTA = ">sp|P1|ONE first\nMKTAYIAKQR\nQISFVK*\n\n>two\nGSSGKTT\n>three\nmktayiak\n"


def wait_job(jid, states=("done",), timeout=60):
    return poll(lambda: d.get("/jobs/" + jid).json(), lambda jb: jb["state"] in states, timeout, 0.1)


def lines(jid, partial=False):
    r = d.get("/jobs/%s/result%s" % (jid, "?partial=true" if partial else ""))
    return r, [json.loads(x) for x in r.body.decode().splitlines() if x.strip()]


r = d.post(">s\n%s\n" % SEQ, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=score&mutations=all")
jb = wait_job(r.json().get("id", "x"))
_, ls = lines(jb["id"])
check(r.status == 202 and jb["params"] == {"mutations": "all"} and ls[0]["result"]["id"] == ALL_ID and
      ls[0]["result"]["scores"] == ALL_SCORES, "a FASTA job with ?mutations=all = POST /score: %s" % jb)
r = d.post(">s\n%s\n" % SEQ, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=score&mutations=all&format=matrix")
jb = wait_job(r.json().get("id", "x"))
_, ls = lines(jb["id"])
check(r.status == 202 and jb["params"] == {"mutations": "all", "format": "matrix"} and ls[0]["result"]["id"] == MAT_ID and
      ls[0]["result"]["matrix"] == mj["matrix"], "a FASTA job with ?format=matrix = POST /score: %s" % jb)
r = d.post(FASTA, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=embed&representations=mean,cls")
check(r.status == 202 and r.header("Location") == "/jobs/" + r.json()["id"], "FASTA job 202 + Location: %s" % r.body[:300])
J1 = r.json()["id"]
check(r.json()["total"] == 3 and r.json()["task"] == "embed" and r.json()["params"] == {"representations": ["mean", "cls"]},
      "job status: %s" % r.body[:300])
jb = wait_job(J1)
check(jb["state"] == "done" and jb["done"] == 3 and jb["failed"] == 0 and jb["progress"] == 1.0 and jb["finished_at"],
      "job done: %s" % jb)
check(isinstance(jb.get("elapsed_s"), float) and jb["elapsed_s"] >= 0 and "eta_s" not in jb and
      (jb["elapsed_s"] == 0 or jb.get("sequences_per_s", 0) > 0), "a done job keeps its run's elapsed_s: %s" % jb)
r, ls = lines(J1)
check(r.status == 200 and r.header("Content-Type") == "application/x-ndjson" and r.header("X-Job-State") == "done",
      "result is JSON Lines")
check([x["index"] for x in ls] == [0, 1, 2] and [x["name"] for x in ls] == ["sp|P1|ONE first", "two", "three"],
      "one line per record, in order, with names: %s" % [(x["index"], x["name"]) for x in ls])
single = post("/embed", {"sequence": "MKTAYIAKQRQISFVK", "representations": ["cls", "mean"]}).json()
check(ls[0]["status"] == 200 and ls[0]["result"]["id"] == single["id"] and
      all(close(a, b, 1e-6) for a, b in zip(ls[0]["result"]["results"][0]["mean"], single["results"][0]["mean"])),
      "a job line equals the route's response for that sequence")
r = d.post(FASTA, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=embed&representations=cls,mean")
check(r.status == 200 and r.json()["id"] == J1 and r.json()["state"] == "done", "same job again: 200, same id")

body = {"task": "score", "params": {"mutations": ["A4G"], "method": "wt-marginals"},
        "items": [{"name": "wt", "sequence": SEQ}, {"name": "other", "sequence": "MKTGYIAK", "mutations": ["G4A", "K2R"]}]}
r = d.post(body, path="/jobs")
check(r.status == 202, "JSON score job: %s" % r.body[:300])
jb = wait_job(r.json()["id"])
_, ls = lines(r.json()["id"])
direct = post("/score", {"sequence": "MKTGYIAK", "mutations": ["G4A", "K2R"], "method": "wt-marginals"}).json()
check(len(ls) == 2 and [s["score"] for s in ls[1]["result"]["scores"]] == [s["score"] for s in direct["scores"]],
      "per-item mutations scored as /score does")
check(any(x["id"] == J1 for x in d.get("/jobs").json()["jobs"]), "GET /jobs lists the job")
error_shape(d.get("/jobs/%s/result?partial=yes" % J1), 400, "invalid_type")
check(all(d.get("/jobs/%s/result?partial=%s" % (J1, v)).status == 200 for v in ("false", "True", "0", "")),
      "?partial= false / True / 0 / empty on a done job: 200")


def forward_count():
    for ln in d.get("/metrics").body.decode().splitlines():
        if ln.startswith("performerd_model_forward_seconds_count "):
            return float(ln.split()[1])
    return -1.0


# a FASTA name of 300 characters (merged NCBI deflines reach that): the same names with other
# sequences, or the same records with other parameters, are other jobs (the job's key once lost the
# result ids after 255 bytes, so these got the first job's id and results)
LONG = "sp|P00001|LONG " + "x" * 285
ra = d.post(">%s\nMKTAYIAKQR\n" % LONG, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits")
rb = d.post(">%s\nMKTGYIAKQR\n" % LONG, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits")
rc = d.post(">%s\nMKTAYIAKQR\n" % LONG, headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=embed")
ids = [x.json().get("id") for x in (ra, rb, rc)]
check([x.status for x in (ra, rb, rc)] == [202, 202, 202] and len(set(ids)) == 3,
      "long names: other sequences or another task are other jobs: %s %s" % ([x.status for x in (ra, rb, rc)], ids))
for jid, seq in ((ids[0], "MKTAYIAKQR"), (ids[1], "MKTGYIAKQR")):
    wait_job(jid)
    _, ls = lines(jid)
    direct = post("/logits", {"sequence": seq}).json()
    check(len(ls) == 1 and ls[0]["name"] == LONG[:256] and ls[0]["result"]["id"] == direct["id"],
          "long-name job %s answers its own sequence (the name cut to 256 characters)" % seq)

# a result larger than a refill of the stream (per-residue embeddings, ~350 kB a line): every line once,
# in order, whole (the stream refills about 1 MiB at a time instead of 64 lines whatever their size)
BIGS = ["".join(AA[(i * 7 + k * 3 + i * k) % 20] for i in range(1000)) for k in range(45)]
r = d.post({"task": "embed", "params": {"representations": ["per_residue"]}, "sequences": BIGS}, path="/jobs")
check(r.status == 202, "per-residue job of 45 x 1,000 residues: %s" % r.body[:200])
jb = wait_job(r.json()["id"], timeout=120)
rr, ls = lines(r.json()["id"])
check(jb["state"] == "done" and rr.status == 200 and len(rr.body) > 8 * 2 ** 20 and [x["index"] for x in ls] == list(range(45)) and
      all(len(x["result"]["results"][0]["per_residue"]) == 1000 for x in ls),
      "streamed whole: %d lines, %d bytes" % (len(ls), len(rr.body)))
direct = post("/embed", {"sequence": BIGS[44], "representations": ["per_residue"]}).json()
check(ls[44]["result"]["id"] == direct["id"] and ls[44]["result"]["results"] == direct["results"],
      "the last line equals /embed's answer")

# a mutant of 60 sites (a homolog or a design scored against the wild type) is one valid JSON object
LONGSEQ = "".join(AA[(7 * i) % 20] for i in range(240))
many = ":".join("%s%d%s" % (LONGSEQ[p - 1], p, "A" if LONGSEQ[p - 1] != "A" else "G") for p in range(100, 220, 2))
r = post("/score", {"sequence": LONGSEQ, "mutations": [many, "%s101A" % LONGSEQ[100] if LONGSEQ[100] != "A" else "A101G"],
                    "method": "wt-marginals"})
ok = r.status == 200
try:
    j = json.loads(r.body)
except ValueError:
    ok, j = False, {}
check(ok and j["scores"][0]["mutant"] == many and len(j["scores"][0]["sites"]) == 60 and
      abs(j["scores"][0]["score"] - sum(x["delta"] for x in j["scores"][0]["sites"])) < 1e-3,
      "a 60-site mutant: valid JSON, its text, sites and score: %s" % r.body[:200])
r2 = d.get("/score/" + j.get("id", "x"))
check(r2.status == 200 and json.loads(r2.body)["scores"][0]["mutant"] == many, "and the stored copy too")

# a job's sequence that a route answered before comes from the stored result (hot map), not a new pass
pre = post("/logits", {"sequence": "MKTAYIAKQRQLSFVKSHWSRQ"}).json()
f0 = forward_count()
r = d.post(">seen\nMKTAYIAKQRQLSFVKSHWSRQ\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits")
jb = wait_job(r.json()["id"])
_, ls = lines(r.json()["id"])
check(len(ls) == 1 and ls[0]["status"] == 200 and ls[0]["result"]["id"] == pre["id"] and
      ls[0]["result"]["cached"] is True and ls[0]["result"]["results"] == pre["results"],
      "a job's sequence answered before by the route is the stored result, marked cached")
check(forward_count() == f0, "and costs no forward pass (%s -> %s)" % (f0, forward_count()))

e = error_shape(d.post(">a\nMKT\n>b\nMK1T\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits"), 422,
                "invalid_residue")
check(e.get("item_index") == 1 and e.get("name") == "b" and e.get("position") == 3, "bad record named: %s" % e)
error_shape(d.post("MKT\n>a\nMKT\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits"), 422, "invalid_fasta")
error_shape(d.post(">a\nMKT\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs"), 400, "invalid_request")
error_shape(d.post(">a\nMKT\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=fold"), 422, "invalid_task")
error_shape(d.post(">a\nMKT\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits&layer=1"), 400, "unknown_field")
e = error_shape(d.post(">a\nMKT\n", headers={"Content-Type": "text/x-fasta"}, path="/jobs?task=logits&task=embed"),
                400, "unknown_field")
check(e.get("field") == "task" and "more than once" in e.get("error", ""), "a repeated query key is refused: %s" % e)
e = error_shape(d.post({"task": "predict", "sequences": ["MKT"]}, path="/jobs?top_k=3&task=embed"), 400, "unknown_field")
check(e.get("field") == "top_k" and "JSON body" in e.get("error", ""), "query parameters with a JSON body are refused: %s" % e)
error_shape(d.post({"task": "embed", "sequences": ["MKT"] * 51}, path="/jobs"), 413, "too_many_sequences")
error_shape(d.post("<xml/>", headers={"Content-Type": "application/xml"}, path="/jobs"), 415, "unsupported_media_type")
big = (">x\n" + "A" * 70000 + "\n").encode()
resp = raw_exchange(d.port, b"POST /jobs?task=logits HTTP/1.1\r\nHost: x\r\nContent-Type: text/x-fasta\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(big), [big])
check(resp.startswith(b"HTTP/1.1 413") and b"--max-job-body" in resp, "job body over --max-job-body: 413")
error_shape(d.get("/jobs/xyz"), 400, "invalid_id")
error_shape(d.get("/jobs/" + "0" * 64), 404, "not_found")
error_shape(d.get("/jobs/" + "0" * 64 + "/result"), 404, "not_found")
check(d.request("DELETE", "/jobs").status == 405, "DELETE /jobs is 405")
d.stop()

# ---- a slow job: progress, interactive requests first, restart in the middle, cancel ---------------------
BIG = make_model(os.path.join(T, "big.safetensors"), seed=2, layers=2, d_model=128, heads=4, d_ff=512, features=32)
DB2 = os.path.join(T, "jobs.sqlite")
d = Daemon(BIG, DB2, ["--threads", "1"]).start()
import random  # noqa: E402
rng = random.Random(4)
seqs = ["".join(rng.choice(AA) for _ in range(40)) for _ in range(40)]
slow = {"task": "score", "params": {"method": "pseudo-likelihood", "mutations": []},
        "items": [{"name": "s%d" % i, "sequence": s, "mutations": ["%s1A" % s[0] if s[0] != "A" else "A1G"]}
                  for i, s in enumerate(seqs)]}
r = d.post(slow, path="/jobs")
JS = r.json()["id"]
check(r.status == 202, "slow job accepted: %s" % r.body[:200])
jb = poll(lambda: d.get("/jobs/" + JS).json(), lambda jb: jb["done"] >= 2, timeout=30)
check(jb["state"] == "running" and 0 < jb["done"] < 40, "progress while running: %s/%s" % (jb["done"], jb["total"]))
t1 = time.time()
rp = d.post({"sequence": "MKT<mask>LLVAGH"})
check(rp.status == 200 and time.time() - t1 < 2.0, "an interactive request goes before the job (%.2fs)" % (time.time() - t1))
r = d.get("/jobs/%s/result" % JS)
error_shape(r, 409, "job_not_finished")
r, part = lines(JS, partial=True)
check(r.status == 200 and len(part) >= 2 and [x["index"] for x in part] == list(range(len(part))), "partial results so far")
check("performerd_background_queue_depth" in d.get("/metrics").body.decode(), "background queue in /metrics")
rc, secs = d.stop()
check(rc == 0 and secs < 10, "SIGTERM during a job exits 0 in %.1fs" % secs)
c = sqlite3.connect(DB2)
st, dn = c.execute("select state, done from jobs where id = ?", (JS,)).fetchone()
c.close()
check(st == "queued" and dn < 40, "the interrupted job is stored as queued again (%s, %d done)" % (st, dn))
d = Daemon(BIG, DB2, ["--threads", "1"]).start()
jb = wait_job(JS, timeout=90)
check(jb["state"] == "done" and jb["done"] == 40 and jb["failed"] == 0, "the job resumed after the restart: %s" % jb)
_, ls = lines(JS)
check([x["index"] for x in ls] == list(range(40)) and all(x["status"] == 200 for x in ls), "all 40 results, once each")
it = slow["items"][17]
direct = post("/score", {"sequence": it["sequence"], "mutations": it["mutations"], "method": "pseudo-likelihood"}).json()
check(close(ls[17]["result"]["scores"][0]["score"], direct["scores"][0]["score"], 1e-4), "a resumed result equals /score")

slow2 = dict(slow, items=slow["items"][:30], params={"method": "pseudo-likelihood", "mutations": [], "offset": 1})
r = d.post(slow2, path="/jobs")
J2 = r.json()["id"]
poll(lambda: d.get("/jobs/" + J2).json()["state"], lambda s: s == "running", timeout=30)
r = d.request("DELETE", "/jobs/" + J2)
check(r.status == 200 and r.json()["state"] == "cancelled", "DELETE cancels a running job: %s" % r.body[:200])
time.sleep(2.0)
jb = d.get("/jobs/" + J2).json()
check(jb["state"] == "cancelled" and jb["done"] < 30, "a cancelled job stops (%d of 30 done)" % jb["done"])
error_shape(d.get("/jobs/%s/result" % J2), 409, "job_not_finished")
_, part = lines(J2, partial=True)
check(len(part) == jb["done"] + jb["failed"], "partial result of a cancelled job")
r = d.post(slow2, path="/jobs")
check(r.status == 200 and r.json()["id"] == J2 and r.json()["state"] in ("queued", "running"),
      "submitting a cancelled job again resumes it: %s" % r.body[:200])
jb = wait_job(J2, timeout=90)
_, ls = lines(J2)
check(jb["state"] == "done" and [x["index"] for x in ls] == list(range(30)), "the resumed job finishes every sequence")
r = d.request("DELETE", "/jobs/" + J2)
check(r.status == 204 and d.get("/jobs/" + J2).status == 404, "DELETE of a finished job deletes it")

# ---- database trouble during a job (its items' table away for 2.5 s: reads and writes fail): the runner
# pauses and retries, and the job finishes (a failed read of the pending items once passed for "none
# left", and the job stayed "running" until the next start) ----------------------------------------------
slow3 = dict(slow, items=slow["items"][10:40], params={"method": "pseudo-likelihood", "mutations": [], "offset": 1})
r = d.post(slow3, path="/jobs")
J3 = r.json()["id"]
check(r.status == 202, "job for the database fault accepted: %s" % r.body[:200])
poll(lambda: d.get("/jobs/" + J3).json()["done"], lambda n: n >= 1, timeout=30)
c = sqlite3.connect(DB2, timeout=10)
c.execute("alter table job_items rename to job_items_away")
c.commit()
time.sleep(2.5)
c.execute("alter table job_items_away rename to job_items")
c.commit()
c.close()
jb = wait_job(J3, timeout=90)
_, ls = lines(J3)
check(jb["state"] == "done" and jb["done"] == 30 and [x["index"] for x in ls] == list(range(30)),
      "a job across a database fault finishes every sequence: %s" % jb)

# ---- CLI run-jobs: the same JSON Lines offline ------------------------------------------------------------
fa = os.path.join(T, "jobs.fasta")
with open(fa, "w") as f:
    f.write(FASTA)
outp = os.path.join(T, "out.jsonl")
p = subprocess.run([PERFORMER, "run-jobs", "--weights", W, "--fasta", fa, "--task", "embed", "--representations",
                    "mean,cls", "--out", outp], capture_output=True, text=True)
check(p.returncode == 0 and "sequences" in p.stderr, "run-jobs runs with a progress report: %r" % p.stderr[-200:])
with open(outp) as f:
    cl = [json.loads(x) for x in f]
check([x["name"] for x in cl] == ["sp|P1|ONE first", "two", "three"] and cl[0]["result"]["id"] == single["id"] and
      all(close(a, b, 1e-6) for a, b in zip(cl[0]["result"]["results"][0]["mean"], single["results"][0]["mean"])),
      "performer run-jobs = GET /jobs/{id}/result")
d.stop()

# ---- leases: a second daemon of the same model on the same database leaves a live daemon's running job
# alone (its owner renews the lease); once that daemon is killed, the job is taken over when its lease runs
# out, without a restart (before leases, a crashed daemon's job stayed running until a daemon of its model
# started, and that start queued again any running job, a live daemon's too) -----------------------------
DB3 = os.path.join(T, "lease.sqlite")
LEASE = ["--threads", "1", "--job-lease", "2"]
d = Daemon(BIG, DB3, LEASE).start()
# a job of about 12 s whatever the build (ASan runs these passes tens of times slower): the rate of the
# job runner measured first on a job of 8 pseudo-likelihood items of 60 residues


def pll_items(tag, n):
    out = []
    for i in range(n):
        q = "".join(rng.choice(AA) for _ in range(60))
        out.append({"name": "%s%d" % (tag, i), "sequence": q, "mutations": ["%s1A" % q[0] if q[0] != "A" else "A1G"]})
    return out


cal = d.post(dict(slow, items=pll_items("c", 8)), path="/jobs").json()["id"]
t0 = time.time()
poll(lambda: d.get("/jobs/" + cal).json()["state"], lambda st: st == "done", timeout=600, interval=0.05)
t_item = max((time.time() - t0) / 8, 1e-3)
N4 = max(48, min(2000, int(12.0 / t_item)))   # at least 3 chunks of 16 (progress is stored chunk by chunk)
slow4 = dict(slow, items=pll_items("t", N4))
r = d.post(slow4, path="/jobs")
J4 = r.json()["id"]
check(r.status == 202, "job for the lease test accepted: %s" % r.body[:200])
poll(lambda: d.get("/jobs/" + J4).json()["done"], lambda n: n >= 2, timeout=60 + 10 * t_item)


def owner_of(jid):
    c = sqlite3.connect(DB3, timeout=10)
    row = c.execute("select state, owner, lease_until from jobs where id = ?", (jid,)).fetchone()
    c.close()
    return row


st0 = owner_of(J4)
d2 = Daemon(BIG, DB3, LEASE).start()
time.sleep(3.5)   # longer than the lease: its owner keeps renewing it
st1 = owner_of(J4)
check(st0[0] == "running" and st0[1] and st1[0] == "running" and st1[1] == st0[1] and st1[2] > st0[2],
      "a second daemon of the model leaves the running job to its owner, who renews the lease: %s -> %s" % (st0, st1))
check(not any("queued again" in ln.get("msg", "") for ln in d2.log_lines()), "the second daemon queued nothing again")
ru1, ru2 = d.get("/jobs/" + J4).json().get("runner", {}), d2.get("/jobs/" + J4).json().get("runner", {})
check(ru1.get("id") == st1[1] and ru1.get("this_daemon") is True and ru2.get("id") == st1[1] and
      ru2.get("this_daemon") is False and ru1.get("lease_until", "").endswith("Z"),
      "GET /jobs/{id} of a running job names its runner, to its own daemon and to another: %s / %s" % (ru1, ru2))
check(any(ln.get("msg") == "job runner started" and ln.get("runner") == st1[1] for ln in d.log_lines()),
      "the daemon logs its job runner id at start-up")
done_at_kill = d.get("/jobs/" + J4).json()["done"]
d.kill()   # a crash: the job stays running, owned by a dead process, until its lease runs out
dead = d
d = d2
t_kill = time.time()
jb = poll(lambda: d.get("/jobs/" + J4).json(), lambda jb: jb["state"] == "done", timeout=90 + 3 * N4 * t_item,
          interval=0.1)
_, ls = lines(J4)
check(jb["done"] == N4 and jb["failed"] == 0 and [x["index"] for x in ls] == list(range(N4)) and
      all(x["status"] == 200 for x in ls), "the killed daemon's job is finished by the other one (%d done at the kill, "
      "%.1fs): %s" % (done_at_kill, time.time() - t_kill, {k: jb[k] for k in ("state", "done", "failed")}))
check(any("lease" in ln.get("msg", "") and ln.get("jobs") == "1" for ln in d.log_lines()),
      "the takeover is logged: %s" % [ln.get("msg") for ln in d.log_lines()][-6:])
check(owner_of(J4)[1:] == (None, None), "a finished job has no owner or lease")
check("runner" not in jb, "a finished job shows no runner")
mt = {ln.split()[0]: float(ln.split()[1]) for ln in d.get("/metrics").body.decode().splitlines()
      if ln.startswith("performerd_async_jobs")}
check(mt.get("performerd_async_jobs_requeued_total") == 1 and mt.get('performerd_async_jobs{state="done"}') == 2 and
      mt.get('performerd_async_jobs{state="running"}') == 0 and mt.get('performerd_async_jobs{state="queued"}') == 0,
      "/metrics: the job by state, and one job queued again after its lease ran out: %s" % mt)
d.stop()

# ---- auth on the new routes, the page without a key, --help ------------------------------------------------
d = Daemon(W, os.path.join(T, "auth.sqlite"), env={"PERFORMERD_API_KEY": "k3y"}).start()
r = d.get("/")
check(r.status == 200 and r.header("Content-Type").startswith("text/html") and b"<canvas" in r.body and
      "script-src 'sha256-" in (r.header("Content-Security-Policy") or ""), "the page needs no key and has a CSP")
for method, path in (("POST", "/score"), ("POST", "/embed"), ("POST", "/logits"), ("POST", "/jobs"), ("GET", "/jobs"),
                     ("GET", "/jobs/" + "a" * 64), ("DELETE", "/jobs/" + "a" * 64), ("GET", "/score/" + "a" * 64)):
    error_shape(d.request(method, path, body="{}" if method == "POST" else None,
                          headers={"Content-Type": "application/json"}), 401, "unauthorized")
r = d.post({"sequence": SEQ, "mutations": ["A4G"]}, headers={"Authorization": "Bearer k3y"}, path="/score")
check(r.status == 200, "score with the key")
d.stop()
p = run_daemon_cmd(["--help"])
check(all(o in p.stdout for o in ("--max-job-body", "--max-job-sequences", "--job-lease", "--max-pll-length", "--max-score-tokens",
                                  "PERFORMERD_MAX_JOB_BODY", "POST /jobs", "/score")), "--help documents the new options")
done()
