"""Crash safety: concurrent distinct POST /predict requests, SIGKILL of the daemon mid-load, restart
on the same database; PRAGMA integrity_check must be ok and every result acknowledged with a 200
before the kill must come back from GET /predict/{id} (a 200 is sent only after the commit)."""
import os
import random
import signal
import sqlite3
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import Daemon, check, done, make_model, poll, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"), layers=2, d_model=64, heads=4, d_ff=128, features=16)
DB = os.path.join(T, "cache.sqlite")
RES = "ACDEFGHIKLMNPQRSTVWY"

acked = {}          # id -> response body of a 200
lock = threading.Lock()
stop = threading.Event()
errors = []


def client(k):
    rng = random.Random(k)
    while not stop.is_set():
        seq = "".join(rng.choice(RES) for _ in range(rng.randint(20, 400)))
        try:
            r = d.post({"sequence": seq[:10] + "<mask>" + seq[10:], "top_k": 2})
        except OSError:
            return  # the daemon died under us: expected
        if r.status == 200:
            j = r.json()
            with lock:
                acked[j["id"]] = j
        elif r.status not in (429, 503):
            errors.append(r.status)


for rnd in range(3):   # three kill/restart rounds on the same database
    d = Daemon(W, DB, ["--queue", "64"]).start()
    stop.clear()
    before = len(acked)
    threads = [threading.Thread(target=client, args=(rnd * 100 + k,)) for k in range(12)]
    for t in threads:
        t.start()
    poll(lambda: len(acked), lambda n: n >= before + 40, timeout=20)
    d.proc.send_signal(signal.SIGKILL)   # mid-load: requests are in flight
    d.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    check(len(acked) > before, "round %d: some requests acknowledged before the kill (%d)" % (rnd, len(acked) - before))

    c = sqlite3.connect(DB)
    check(c.execute("pragma integrity_check").fetchone()[0] == "ok", "round %d: integrity_check ok after SIGKILL" % rnd)
    c.close()

check(not errors, "only 200/429/503 while loaded: %s" % errors[:5])
d = Daemon(W, DB).start()
missing = 0
for rid, body in acked.items():
    r = d.get("/predict/" + rid)
    if r.status != 200:
        missing += 1
        continue
    j = r.json()
    if j.get("results") != body.get("results") or j.get("cached") is not True:
        missing += 1
check(missing == 0, "all %d acknowledged results returned after the kills (%d missing or different)" % (len(acked), missing))
c = sqlite3.connect(DB)
check(c.execute("pragma integrity_check").fetchone()[0] == "ok", "integrity_check ok at the end")
c.close()
d.stop()
print("acknowledged before kills: %d" % len(acked))
done()
