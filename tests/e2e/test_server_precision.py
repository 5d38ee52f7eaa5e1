"""End-to-end test of performerd --precision: a bad value and (on a CPU without AVX-512 BF16) bf16
are refused at start-up with a message; with the shipped weights, bf16 /logits agree with fp32 to
bfloat16 rounding on a real 350-residue protein and pick the same top residue almost everywhere,
and its bf16 numbers are the same alone and after another sequence in one request;
the two precisions never share a cached result (different ids, MISS after a restart on the same
database, both ids still served), and /model, every response and the start-up log name the
precision; the CLI's run-jobs gives the daemon's ids and numbers in each precision; --threads
holds in bf16 too (the daemon's worker threads size their OpenMP teams by it). Exits 77 (skip) after the refusal checks on a CPU without AVX-512 BF16."""
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import json  # noqa: E402
import subprocess  # noqa: E402

from pdtest import PERFORMER, ROOT, Daemon, check, done, run_daemon_cmd, tmpdir  # noqa: E402

T = tmpdir()
W = os.path.join(ROOT, "weights", "model.safetensors")
DB = os.path.join(T, "cache.sqlite")

r = run_daemon_cmd(["--weights", W, "--db", DB, "--port", "0", "--precision", "fp16"])
check(r.returncode == 2 and "--precision takes fp32 or bf16" in r.stderr, "fp16 refused: %s" % r.stderr)

flags = open("/proc/cpuinfo").read().split()
if "avx512_bf16" not in flags:
    r = run_daemon_cmd(["--weights", W, "--db", DB, "--port", "0", "--precision", "bf16"])
    check(r.returncode == 2 and "AVX-512 BF16" in r.stderr, "bf16 refused without AVX-512 BF16: %s" % r.stderr)
    if r.returncode != 2 or "AVX-512 BF16" not in r.stderr:
        done()   # a failed refusal fails the test
    print("SKIP this CPU has no AVX-512 BF16 (the refusals were checked)")
    sys.exit(77)

# a real protein of the test split (not in training), 300-400 residues
seq, name = None, None
TEST_FASTA = os.path.join(ROOT, "weights", "data", "test.fasta")
with open(TEST_FASTA if os.path.exists(TEST_FASTA) else os.devnull) as f:
    cur = []
    for line in f:
        if line.startswith(">"):
            if cur and 300 <= len("".join(cur)) <= 400:
                seq = "".join(cur)
                break
            cur = []
        else:
            cur.append(line.strip())
if seq is None:   # the data split is built by `make data`; without it, a fixed human sequence
    seq = ("MEEPQSDPSVEPPLSQETFSDLWKLLPENNVLSPLPSQAMDDLMLSPDDIEQWFTEDPGPDEAPRMPEAAPPVAPAPAAPTPAAPAPAPS"
           "WPLSSSVPSQKTYQGSYGFRLGFLHSGTAKSVTCTYSPALNKMFCQLAKTCPVQLWVDSTPPPGTRVRAMAIYKQSQHMTEVVRRCPHH"
           "ERCSDSDGLAPPQHLIRVEGNLRVEYLDDRNTFRHSVVVPYEPPEVGSDCTTIHYNYMCNSSCMGGMNRRPILTIITLEDSSGNLLGRN"
           "SFEVRVCACPGRDRRTEEENLRKKGEPHHELPPGSTKRALPNNTSSSPQPKKKPLDGEYFTLQIRGRERFEMFRELNEALELKDAQAGK"
           "EPGGSRAHSSHLKSKKGQSTSRHKKLMFKTEGPDSD")
seq = "".join(c for c in seq.upper() if c.isalpha())


def logits(d):
    r = d.post({"sequence": seq}, path="/logits")
    check(r.status == 200, "logits 200: %s" % r.body[:200])
    return r


d = Daemon(W, DB).start()
m = d.get("/model").json()
check(m["precision"] == "fp32", "/model precision fp32 by default: %s" % m.get("precision"))
check('performerd_model_info{precision="fp32"} 1' in d.get("/metrics").body.decode(), "/metrics names fp32")
r32 = logits(d)
j32 = r32.json()
check(j32["model"]["precision"] == "fp32", "fp32 response names its precision")
check(r32.header("X-Cache") == "MISS", "fp32 first request MISS")
check(logits(d).header("X-Cache") == "HIT", "fp32 second request HIT")
d.stop()

d = Daemon(W, DB, ["--precision", "bf16"]).start()
check(any(l.get("msg") == "listening" and l.get("precision") == "bf16" for l in d.log_lines()),
      "start-up log names bf16")
check(d.get("/model").json()["precision"] == "bf16", "/model precision bf16")
check('performerd_model_info{precision="bf16"} 1' in d.get("/metrics").body.decode(), "/metrics names bf16")
r16 = logits(d)
j16 = r16.json()
check(r16.header("X-Cache") == "MISS", "bf16 does not reuse the fp32 result: %s" % r16.header("X-Cache"))
check(j16["id"] != j32["id"], "different ids per precision")
check(j16["model"]["precision"] == "bf16" and j16["model"]["sha256"] == j32["model"]["sha256"],
      "bf16 response: same weights, precision bf16")
check(logits(d).header("X-Cache") == "HIT", "bf16 second request HIT")
old = d.get("/logits/" + j32["id"])
check(old.status == 200 and old.json()["model"]["precision"] == "fp32", "the fp32 result stays retrievable by id")

# the CLI computes the same results under the same ids as the daemon of the same precision
FA = os.path.join(T, "one.fasta")
with open(FA, "w") as f:
    f.write(">p\n%s\n" % seq)


def cli_logits(precision):
    out = subprocess.run([PERFORMER, "run-jobs", "--precision", precision, "--weights", W, "--fasta", FA,
                          "--task", "logits"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[0])["result"]


c32, c16 = cli_logits("fp32"), cli_logits("bf16")
check(c32["id"] == j32["id"] and c32["model"]["precision"] == "fp32", "CLI fp32 id = daemon fp32 id")
check(c16["id"] == j16["id"] and c16["model"]["precision"] == "bf16", "CLI bf16 id = daemon bf16 id")
check(c16["results"][0]["log_probs"] == j16["results"][0]["log_probs"], "CLI bf16 numbers = daemon bf16 numbers")

a = j32["results"][0]["log_probs"]
b = j16["results"][0]["log_probs"]
check(len(a) == len(b) == len(seq), "one row per residue")
diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
same = sum(max(range(20), key=ra.__getitem__) == max(range(20), key=rb.__getitem__) for ra, rb in zip(a, b))
pa = [math.exp(x) for x in a[10]]
print("%d residues: max |log p(fp32) - log p(bf16)| %.4f; same top-1 residue at %d of %d positions"
      % (len(seq), diff, same, len(seq)))
check(0 < diff < 0.05, "bf16 log-probabilities within 0.05 of fp32 (bfloat16 rounding, not a different model)")
check(same >= 0.97 * len(seq), "same top-1 residue at >= 97% of positions")
check(abs(sum(pa) - 1) < 1e-3, "bf16 probabilities still sum to 1")

# a bf16 result does not depend on its batch: the protein after a short one in one request (one
# forward pass; its rows fall elsewhere in the products' tiles, at least one of the two placements
# in a partial tile) gets the numbers it got alone
rb = d.post({"sequences": ["MKTAYIAKQRQISFVKSHFSRQ", seq]}, path="/logits")
check(rb.status == 200, "bf16 two-sequence logits 200: %s" % rb.body[:200])
if rb.status == 200:
    check(rb.json()["results"][1]["log_probs"] == b, "bf16: the protein's numbers in a batch = alone")
d.stop()


def threads_around_request(extra):
    """Starts a daemon with --threads 1 (and extra); returns its thread counts before and after one
    uncached request (a team of 1 starts no OpenMP threads)."""
    dd = Daemon(W, os.path.join(T, "t%d.sqlite" % len(extra)), ["--threads", "1", "--workers", "1"] + extra).start()
    before = len(os.listdir("/proc/%d/task" % dd.proc.pid))
    r = dd.post({"sequence": seq[:200]}, path="/logits")
    check(r.status == 200, "logits 200 (%s)" % extra)
    after = len(os.listdir("/proc/%d/task" % dd.proc.pid))
    dd.stop()
    return before, after


for extra in ([], ["--precision", "bfloat16"]):
    b, a_ = threads_around_request(extra)
    print("--threads 1 %s: %d threads before a request, %d after" % (" ".join(extra) or "(fp32)", b, a_))
    check(a_ == b, "--threads 1 %s: no OpenMP threads started by a forward pass (%d -> %d)" % (extra, b, a_))
done()
