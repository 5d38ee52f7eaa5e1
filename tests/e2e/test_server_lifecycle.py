"""End-to-end test of performerd's configuration and lifecycle: start-up errors (one line, non-zero),
--help and environment variables, bearer auth on/off, results surviving a restart, LRU eviction,
429 when the queue is full, the per-request deadline (504), schema version checks, and SIGTERM /
SIGINT draining in-flight work and exiting 0 within 10 s with a clean database; a fatal signal
(SIGSEGV, SIGABRT) logs a "crashed" line and the stack trace, then ends the process with that signal."""
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import Daemon, check, done, error_shape, make_model, run_daemon_cmd, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"))
RES = "ACDEFGHIKLMNPQRSTVWY"
rng = random.Random(3)


def rand_seq(n):
    return "".join(rng.choice(RES) for _ in range(n))


# ---- start-up errors -----------------------------------------------------------------------------
def startup_fails(args, what, needle=None, code=None):
    p = run_daemon_cmd(["--bind", "127.0.0.1", "--port", "0"] + args)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    ok = check(p.returncode != 0 and (code is None or p.returncode == code), "%s: exit status %s" % (what, p.returncode))
    check(len(lines) == 1, "%s: one-line error, got %r" % (what, p.stderr[:500]))
    if needle:
        check(needle in p.stderr.lower(), "%s: error mentions %r: %r" % (what, needle, p.stderr[:300]))
    return ok


startup_fails(["--weights", os.path.join(T, "missing.safetensors"), "--db", os.path.join(T, "a.sqlite")],
              "missing weights", "weights")
bad = os.path.join(T, "bad.safetensors")
with open(bad, "wb") as f:
    f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
startup_fails(["--weights", bad, "--db", os.path.join(T, "a.sqlite")], "malformed weights", "weights")
blocker = os.path.join(T, "afile")
open(blocker, "w").close()
startup_fails(["--weights", W, "--db", os.path.join(blocker, "sub", "db.sqlite")], "unwritable database", "database")
ro = os.path.join(T, "ro.sqlite")
open(ro, "w").write("this is not a database file, it is text" * 100)
startup_fails(["--weights", W, "--db", ro], "corrupt database file", "database")
holder = socket.socket()
holder.bind(("127.0.0.1", 0))
holder.listen(1)
busy = holder.getsockname()[1]
p = run_daemon_cmd(["--bind", "127.0.0.1", "--port", str(busy), "--weights", W, "--db", os.path.join(T, "b.sqlite")])
check(p.returncode != 0 and "in use" in p.stderr and len(p.stderr.strip().splitlines()) == 1,
      "port in use: one line, non-zero: %r" % p.stderr)
holder.close()
startup_fails(["--weights", W, "--db", os.path.join(T, "c.sqlite"), "--max-batch", "zero"], "bad option value", "max-batch", 2)
startup_fails(["--nonsense"], "unknown option", "unknown option", 2)
p = run_daemon_cmd(["--weights", W, "--db", os.path.join(T, "c.sqlite")], env={"PERFORMERD_QUEUE": "-3"})
check(p.returncode == 2 and "PERFORMERD_QUEUE" in p.stderr, "bad environment value is named: %r" % p.stderr)
p = run_daemon_cmd(["--help"])
check(p.returncode == 0, "--help exits 0")
for opt in ["--bind", "--port", "--weights", "--db", "--threads", "--max-length", "--max-batch", "--max-body", "--queue",
            "--api-key", "--cors-origin", "--cache-max-mb", "--timeout", "PERFORMERD_PORT", "PERFORMERD_DB",
            "PERFORMERD_API_KEY", "PERFORMERD_MAX_BODY"]:
    check(opt in p.stdout, "--help documents %s" % opt)

# ---- environment configuration and auth -------------------------------------------------------------
DB = os.path.join(T, "auth.sqlite")
d = Daemon(W, DB, env={"PERFORMERD_API_KEY": "s3cret-key", "PERFORMERD_MAX_BATCH": "2", "PERFORMERD_MAX_LENGTH": "50"}).start()
check(d.get("/health").status == 200 and d.get("/ready").status == 200, "health/ready need no key")
r = d.get("/model")
error_shape(r, 401, "unauthorized")
check((r.header("WWW-Authenticate") or "").startswith("Bearer"), "401 has WWW-Authenticate")
error_shape(d.get("/model", headers={"Authorization": "Bearer wrong"}), 401)
error_shape(d.get("/model", headers={"Authorization": "Bearer s3cret-ke"}), 401)
error_shape(d.get("/model", headers={"Authorization": "Basic s3cret-key"}), 401)
error_shape(d.post({"sequence": "MKT<mask>"}), 401)
error_shape(d.get("/metrics"), 401)
error_shape(d.get("/openapi.json"), 401)
error_shape(d.get("/predict/" + "a" * 64), 401)
A = {"Authorization": "Bearer s3cret-key"}
r = d.get("/model", headers=A)
check(r.status == 200 and r.json()["limits"]["max_batch"] == 2 and r.json()["limits"]["max_length"] == 50,
      "env vars configure limits: %s" % r.body[:200])
r = d.post({"sequence": "MKT<mask>LLV"}, headers=A)
check(r.status == 200, "predict with the key")
check(d.get("/predict/" + r.json()["id"], headers=A).status == 200, "GET by id with the key")
error_shape(d.post({"sequences": ["MKT", "MKT", "MKT"]}, headers=A), 413, "batch_too_large")
e = error_shape(d.post({"sequence": "A" * 51}, headers=A), 413, "sequence_too_long")
check(e.get("limit") == 50, "length limit from the environment")
check(d.request("OPTIONS", "/predict").status == 204, "preflight needs no key")
rc, secs = d.stop(signal.SIGINT)
check(rc == 0, "SIGINT exits 0 (%s)" % rc)
d = Daemon(W, DB)
for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
    d.env.pop(k, None)
d.start()
check(d.get("/model").status == 200, "auth off without --api-key")
# started without them, performerd re-executes itself with the OpenMP settings it needs
with open("/proc/%d/environ" % d.proc.pid, "rb") as f:
    env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
check(env.get(b"OMP_WAIT_POLICY") == b"PASSIVE" and env.get(b"GOMP_SPINCOUNT") == b"10000",
      "OpenMP environment after re-exec: %r %r" % (env.get(b"OMP_WAIT_POLICY"), env.get(b"GOMP_SPINCOUNT")))
d.stop()

# ---- restart: results persist; schema version --------------------------------------------------------
DB = os.path.join(T, "restart.sqlite")
d = Daemon(W, DB).start()
r1 = d.post({"sequences": ["MKT<mask>LLV", "G<mask>SSG"], "top_k": 3})
check(r1.status == 200 and r1.header("X-Cache") == "MISS", "computed before restart")
rc, _ = d.stop()
check(rc == 0, "clean stop before restart")
check(not os.path.exists(DB + "-wal") or os.path.getsize(DB + "-wal") == 0, "WAL checkpointed on clean shutdown")
c = sqlite3.connect(DB)
check(c.execute("pragma integrity_check").fetchone()[0] == "ok", "database integrity ok")
check(c.execute("pragma user_version").fetchone()[0] == 4, "schema version 4")
check(c.execute("pragma journal_mode").fetchone()[0] == "wal", "WAL mode")
check(c.execute("select count(*) from results").fetchone()[0] == 1, "one stored result")
c.close()
d = Daemon(W, DB).start()
r = d.get("/predict/" + r1.json()["id"])
check(r.status == 200 and r.json()["cached"] is True and r.json()["results"] == r1.json()["results"], "GET by id after restart")
r = d.post({"sequences": ["MKT<mask>LLV", "G<mask>SSG"], "top_k": 3})
check(r.header("X-Cache") == "HIT" and r.json()["id"] == r1.json()["id"], "POST after restart is a HIT")
d.stop()
c = sqlite3.connect(DB)
c.execute("pragma user_version = 99")
c.commit()
c.close()
startup_fails(["--weights", W, "--db", DB], "newer schema refused", "schema")
# another program's SQLite file is refused, not written into
DB = os.path.join(T, "foreign.sqlite")
c = sqlite3.connect(DB)
c.execute("create table notes (t text)")
c.commit()
c.close()
startup_fails(["--weights", W, "--db", DB], "another program's database refused", "another program")
c = sqlite3.connect(DB)
check([r[0] for r in c.execute("select name from sqlite_master")] == ["notes"], "foreign database left untouched")
c.close()

# ---- LRU eviction --------------------------------------------------------------------------------
DB = os.path.join(T, "lru.sqlite")
d = Daemon(W, DB, ["--cache-max-mb", "1"]).start()
ids = []
for i in range(3):  # ~300 kB each (1000 positions, top 5): three fit in 1 MiB
    r = d.post({"sequence": rand_seq(1000)})
    check(r.status == 200, "lru fill %d" % i)
    ids.append(r.json()["id"])
    time.sleep(0.02)
check(d.get("/predict/" + ids[0]).status == 200, "first still stored")  # refreshes its LRU time
time.sleep(0.02)
r = d.post({"sequence": rand_seq(1000)})
ids.append(r.json()["id"])
check(d.get("/predict/" + ids[1]).status == 404, "least recently used result evicted")
check(all(d.get("/predict/" + i).status == 200 for i in (ids[0], ids[2], ids[3])), "recently used results kept")
check("performerd_cache_evictions_total 1" in d.get("/metrics").body.decode(), "eviction counted")
d.stop()

# ---- 429 when the queue is full ------------------------------------------------------------------
DB = os.path.join(T, "q.sqlite")
d = Daemon(W, DB, ["--queue", "1", "--workers", "1", "--batch-tokens", "0"]).start()
out = {}


def fire(i):
    out[i] = d.post({"sequence": rand_seq(30000), "top_k": 1})


ths = [threading.Thread(target=fire, args=(i,)) for i in range(8)]
for t in ths:
    t.start()
for t in ths:
    t.join()
codes = sorted(r.status for r in out.values())
check(429 in codes and 200 in codes and set(codes) <= {200, 429}, "queue full gives 429, others 200: %s" % codes)
for r in out.values():
    if r.status == 429:
        error_shape(r, 429, "queue_full")
        check(int(r.header("Retry-After") or 0) >= 1, "429 has Retry-After")
        break
check("performerd_queue_rejected_total" in d.get("/metrics").body.decode(), "rejections counted")
d.stop()

# ---- deadline: a request over --timeout gets 504; the result is still stored ---------------------------
BIG = os.path.join(T, "big.safetensors")
make_model(BIG, layers=4, d_model=256, heads=8, d_ff=1024, features=64)
DB = os.path.join(T, "deadline.sqlite")
d = Daemon(BIG, DB, ["--timeout", "1"]).start()
# over the 1 s deadline everywhere, yet short enough for the retries below to see it stored even on
# a loaded machine under the sanitizers (40,000 residues outlasted the retries there
# once, with the trainer running beside the tests); they run a pass several times slower
slow = rand_seq(8000 if os.environ.get("PF_SANITIZED") else 40000)
t0 = time.time()
r = d.post({"sequence": slow, "top_k": 1})
el = time.time() - t0
if r.status == 200:
    print("note: machine computed %d residues in %.2fs, under the 1 s deadline; 504 not exercised" % (len(slow), el))
else:
    error_shape(r, 504, "deadline_exceeded")
    check(el < 1.8, "504 sent at the deadline (%.2fs), not after the forward pass" % el)
    check(d.get("/health").status == 200, "healthy after a deadline")
    for _ in range(100):  # the worker finishes and stores the result for the retry
        r = d.post({"sequence": slow, "top_k": 1})
        if r.status == 200:
            break
        time.sleep(0.2)
    check(r.status == 200 and r.header("X-Cache") == "HIT", "the late result was stored and is a HIT")

d.stop()

# ---- identical requests: one queued behind the other is answered from its result, not recomputed -------
d = Daemon(BIG, os.path.join(T, "dup.sqlite")).start()


def forwards():
    for line in d.get("/metrics").body.decode().splitlines():
        if line.startswith("performerd_model_forward_seconds_count "):
            return int(float(line.split()[1]))
    return -1


f0 = forwards()
dup = rand_seq(12000)
dres = {}


def fire_dup(i):
    dres[i] = d.post({"sequence": dup, "top_k": 1})


t1 = threading.Thread(target=fire_dup, args=(1,))
t1.start()
for _ in range(200):  # wait (bounded) until the worker computes the first one
    if b"performerd_jobs_running 1" in d.get("/metrics").body:
        break
    time.sleep(0.01)
t2 = threading.Thread(target=fire_dup, args=(2,))
t2.start()
t1.join()
t2.join()
caches = sorted(r.header("X-Cache") or "" for r in dres.values())
check(all(r.status == 200 for r in dres.values()) and caches == ["HIT", "MISS"],
      "two identical requests, the second queued while the first runs: MISS and HIT (%s)" % caches)
check(forwards() - f0 == 1, "computed once (%d forward passes)" % (forwards() - f0))
check(json.loads(dres[1].body)["results"] == json.loads(dres[2].body)["results"], "the same results")
d.stop()

# ---- SIGTERM: in-flight work finishes, new connections refused, exit 0 within 10 s -----------------------
d = Daemon(BIG, DB).start()
res = {}


# long enough to be caught running, short enough to finish within the 7 s drain even on a loaded machine
# under the sanitizers (a 12,000-residue pass there took longer than 7 s once the trainer was running,
# and a 4,000-residue one did too, once, in session 47)
INFLIGHT_LEN = 2000 if os.environ.get("PF_SANITIZED") else 12000


def inflight():
    res["r"] = d.post({"sequence": rand_seq(INFLIGHT_LEN), "top_k": 1})


th = threading.Thread(target=inflight)
th.start()
running = False
for _ in range(1200):  # wait (bounded: 60 s) until a worker is computing it, however loaded the machine is
    if b"performerd_jobs_running 1" in d.get("/metrics").body:
        running = True
        break
    time.sleep(0.05)
check(running, "the long request is being computed before SIGTERM (else the drain check below means nothing)")
t0 = time.time()
d.proc.send_signal(signal.SIGTERM)
time.sleep(0.1)
refused = False
try:
    d.get("/health")
except OSError:
    refused = True
check(refused, "no new connections while draining")
th.join()
rc = d.proc.wait(12)
secs = time.time() - t0
check("r" in res and res["r"].status == 200, "in-flight request finished during drain: %s" % (res.get("r") and res["r"].status))
check(rc == 0 and secs < 10, "SIGTERM exit %s in %.2fs" % (rc, secs))
msgs = [l.get("msg") for l in d.log_lines()]
check("draining" in msgs and "stopped" in msgs, "drain logged")
c = sqlite3.connect(DB)
check(c.execute("pragma integrity_check").fetchone()[0] == "ok", "database ok after drain")
c.close()

# ---- a crash is reported in the log (one JSON line, then the stack trace) and still ends the process ----
# (sanitizer builds leave faults to AddressSanitizer's own report: the handler is not installed there)
CRASH_SIGNALS = () if os.environ.get("PF_SANITIZED") else ((signal.SIGSEGV, "SIGSEGV"), (signal.SIGABRT, "SIGABRT"))
if not CRASH_SIGNALS:
    print("crash report: not checked in a sanitizer build (performerd leaves faults to AddressSanitizer there)")
for sig, name in CRASH_SIGNALS:
    d = Daemon(W, os.path.join(T, "crash.sqlite")).start()
    d.proc.send_signal(sig)
    try:
        rc = d.proc.wait(10)
    except Exception:
        rc = None
    d.logf.close()
    lines = d.log_text().splitlines()
    crashed = [i for i, l in enumerate(d.log_lines()) if l.get("msg") == "crashed"]
    check(rc == -sig, "%s ends the process with that signal: exit status %s" % (name, rc))
    check(len(crashed) == 1 and d.log_lines()[crashed[0]] == {"level": "fatal", "msg": "crashed", "signal": name,
                                                              "detail": "stack trace follows, one frame a line"},
          "%s: one 'crashed' log line naming the signal: %s" % (name, lines[-3:]))
    frames = lines[crashed[0] + 1:] if crashed else []
    check(len(frames) >= 2 and any("performerd" in f for f in frames),
          "%s: the stack trace follows it (%d frames): %s" % (name, len(frames), frames[:3]))
done()
