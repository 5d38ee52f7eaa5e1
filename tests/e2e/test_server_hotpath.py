"""The cache-hit fast path of performerd: the in-memory hot-result map (server/hot.c) in front of
SQLite and the request log queue (server/reqlog.c).

Checks: a repeated body, another spelling of the same request and GET by id are answered from
memory with the stored bytes ("cached": true, ETag, 304); hits served from memory still refresh the
database's LRU order, and what SQLite evicts under --cache-max-mb is gone from memory too; with
--hot-cache-mb 0 hits come from SQLite as before; request log rows appear within moments while
running, and a clean stop (SIGTERM) right after a burst of requests writes the row of every answered
request; a grown WAL is checkpointed by the request-log thread (performerd_db_checkpoints_total) and
stays bounded; --result-fsync 1 works and every acknowledged result is in the database after SIGKILL."""
import os
import random
import signal
import sqlite3
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import Daemon, check, done, make_model, poll, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"), layers=2, d_model=32, heads=4, d_ff=64, features=16)
RES = "ACDEFGHIKLMNPQRSTVWY"


def rand_seq(n, rng=random.Random(7)):
    return "".join(rng.choice(RES) for _ in range(n))


def metric(d, name):
    for line in d.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return -1


def rows(db, sql):
    c = sqlite3.connect(db)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


# ---- hits from memory -----------------------------------------------------------------------------
DB = os.path.join(T, "hot.sqlite")
d = Daemon(W, DB).start()
body = {"sequence": "MKTAYIAKQR<mask>ISFVKSHFSRQ", "top_k": 3}
r1 = d.post(body)
check(r1.status == 200 and r1.header("X-Cache") == "MISS", "first request computed")
ID = r1.json()["id"]
hits0 = metric(d, "performerd_hot_cache_hits_total")
r2 = d.post(body)
check(r2.status == 200 and r2.header("X-Cache") == "HIT" and r2.json()["cached"] is True, "repeated body: HIT")
check(r2.json()["results"] == r1.json()["results"] and r2.json()["id"] == ID, "same results and id")
check(r2.header("ETag") == '"%s"' % ID and r2.header("X-Request-Id"), "ETag and X-Request-Id on a memory hit")
check(metric(d, "performerd_hot_cache_hits_total") == hits0 + 1, "served from the hot map")
r3 = d.post({"top_k": 3, "sequence": "mktayiakqr<MASK>isfvkshfsrq"})   # another spelling, same request
check(r3.status == 200 and r3.header("X-Cache") == "HIT" and r3.json()["id"] == ID, "another spelling: HIT, same id")
r4 = d.get("/predict/" + ID)
check(r4.status == 200 and r4.json()["cached"] is True and r4.json()["results"] == r1.json()["results"], "GET by id")
r5 = d.get("/predict/" + ID, headers={"If-None-Match": '"%s"' % ID})
check(r5.status == 304, "If-None-Match: 304 (%d)" % r5.status)
check(d.request("HEAD", "/predict/" + ID).status == 200, "HEAD by id")
check(metric(d, "performerd_hot_cache_hits_total") >= hits0 + 4, "all of them from memory")
check(metric(d, "performerd_hot_cache_entries") >= 1 and metric(d, "performerd_hot_cache_bytes") > 0, "hot map gauges")
bad = d.post({"sequence": "MKT1"})
check(bad.status == 422 and d.post({"sequence": "MKT1"}).status == 422, "an invalid body is never a hit")
# the request log: rows appear within moments, the memory hits among them
n = poll(lambda: rows(DB, "select count(*) from requests where result_id = '%s' and cache_hit = 1" % ID)[0][0],
         lambda n: n >= 4, timeout=3)
check(n >= 4, "request log rows of the memory hits written while running (%d)" % n)
check(rows(DB, "select hits from results where id = '%s'" % ID)[0][0] >= 4, "hits counted in the database")
check(metric(d, "performerd_request_log_dropped_total") == 0, "no log row dropped")

# a burst of requests on keep-alive connections, then SIGTERM at once: every answered request logged
answered = [0]
lock = threading.Lock()


def burst(k):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    for i in range(150):
        c.request("POST", "/predict", body='{"sequence":"MKTAYIAKQR<mask>ISFVKSHFSRQ","top_k":3}',
                  headers={"Content-Type": "application/json", "X-Request-Id": "burst-%d-%d" % (k, i)})
        r = c.getresponse()
        r.read()
        if r.status == 200:
            with lock:
                answered[0] += 1
    c.close()


before = rows(DB, "select count(*) from requests")[0][0]
ths = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
for t in ths:
    t.start()
for t in ths:
    t.join()
rc, _ = d.stop()
check(rc == 0, "clean stop")
logged = rows(DB, "select count(*) from requests where request_id like 'burst-%'")[0][0]
check(logged == answered[0] == 600, "SIGTERM right after the burst: all %d answered requests logged (%d)" % (answered[0], logged))
check(rows(DB, "pragma integrity_check")[0][0] == "ok", "database intact")

# ---- LRU order with hits from memory; evictions leave memory too ------------------------------------
DB = os.path.join(T, "lru.sqlite")
d = Daemon(W, DB, ["--cache-max-mb", "1"]).start()
bodies, ids = [], []
for i in range(3):   # ~300 kB each (1000 positions, top 5): three fit in 1 MiB
    bodies.append({"sequence": rand_seq(1000)})
    r = d.post(bodies[-1])
    check(r.status == 200, "lru fill %d" % i)
    ids.append(r.json()["id"])
    time.sleep(0.02)
r = d.post(bodies[0])   # a hit from memory: refreshes the first result's LRU time
check(r.header("X-Cache") == "HIT", "first result hit from memory")
time.sleep(0.02)
r = d.post({"sequence": rand_seq(1000)})
ids.append(r.json()["id"])
check(d.get("/predict/" + ids[1]).status == 404, "least recently used result evicted (from memory too)")
check(d.post(bodies[1]).header("X-Cache") == "MISS", "its body is computed again")
check(d.get("/predict/" + ids[0]).status == 200, "the result hit in memory was kept")
check(metric(d, "performerd_cache_evictions_total") >= 1, "eviction counted")
d.stop()

# ---- a grown WAL is checkpointed by the request-log thread, not by a request's commit -------------
DB = os.path.join(T, "wal.sqlite")
d = Daemon(W, DB).start()
big = 0


def store(k):
    global big
    rng = random.Random(100 + k)
    for i in range(175):
        r = d.post({"sequence": "".join(rng.choice(RES) for _ in range(200)), "mask_positions": list(range(1, 201, 4))})
        with lock:
            big += r.status == 200


ths = [threading.Thread(target=store, args=(k,)) for k in range(4)]
for t in ths:
    t.start()
for t in ths:
    t.join()
poll(lambda: metric(d, "performerd_db_checkpoints_total"), lambda n: n >= 1, interval=0.1)
wal = os.path.getsize(DB + "-wal")
stored = rows(DB, "select count(*), sum(length(response)) from results")[0]
check(big == 700 and stored[0] == 700, "700 results of 200 residues stored (%d answered, %d stored)" % (big, stored[0]))
check(stored[1] > 6 << 20, "more than 1,000 WAL pages written (%d bytes of results)" % stored[1])
check(metric(d, "performerd_db_checkpoints_total") >= 1,
      "the request-log thread checkpointed (%d)" % metric(d, "performerd_db_checkpoints_total"))
# bounded by DB_CHECKPOINT_INLINE_PAGES (4,000 pages, 16.5 MB) plus what commits add meanwhile
check(wal < 24 << 20, "the WAL stays bounded: %d bytes after %d bytes of results" % (wal, stored[1]))
d.stop()

# ---- hot map off: hits from SQLite ----------------------------------------------------------------
DB = os.path.join(T, "off.sqlite")
d = Daemon(W, DB, ["--hot-cache-mb", "0"]).start()
r1 = d.post(body)
r2 = d.post(body)
check(r2.header("X-Cache") == "HIT" and r2.json()["results"] == r1.json()["results"], "hit from SQLite")
OID = r1.json()["id"]
g = d.get("/predict/" + OID)
check(g.status == 200 and g.json()["cached"] is True and g.json()["results"] == r1.json()["results"]
      and g.header("ETag") == '"%s"' % OID and g.header("X-Cache") == "HIT", "GET by id from SQLite")
check(d.get("/predict/" + OID, headers={"If-None-Match": '"%s"' % OID}).status == 304, "304 from SQLite")
check(d.get("/predict/" + "0" * 64).status == 404, "unknown id: 404")
check(metric(d, "performerd_hot_cache_hits_total") == 0 and metric(d, "performerd_hot_cache_entries") == 0,
      "hot map off")
d.stop()
# the map on again, empty after the restart: the first hit comes from SQLite and fills the map
d = Daemon(W, DB).start()
check(metric(d, "performerd_hot_cache_entries") == 0, "restart: map empty")
g = d.get("/predict/" + OID)
check(g.status == 200 and g.json()["cached"] is True and g.json()["results"] == r1.json()["results"],
      "GET by id from SQLite (map on)")
check(metric(d, "performerd_hot_cache_entries") == 1 and metric(d, "performerd_hot_cache_hits_total") == 0,
      "that hit put the result into the map")
r = d.post(body)
check(r.status == 200 and r.header("X-Cache") == "HIT" and r.json()["id"] == OID, "POST: HIT")
check(metric(d, "performerd_hot_cache_hits_total") == 1, "... from the map")
d.stop()

# ---- --result-fsync 1, and SIGKILL: acknowledged results are in the database ------------------------
DB = os.path.join(T, "fsync.sqlite")
for mode in ("1", "0"):
    d = Daemon(W, DB, ["--result-fsync", mode]).start()
    acked = []
    for i in range(20):
        r = d.post({"sequence": rand_seq(40) + "<mask>"})
        if r.status == 200:
            acked.append(r.json()["id"])
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    stored = {x[0] for x in rows(DB, "select id from results")}
    check(len(acked) == 20 and all(i in stored for i in acked),
          "--result-fsync %s: every acknowledged result stored after SIGKILL" % mode)
    check(rows(DB, "pragma integrity_check")[0][0] == "ok", "--result-fsync %s: intact after SIGKILL" % mode)

# ---- a batch of more than 256 jobs (--batch-tokens and --max-batch raised): every request answered and
# stored (the completion of a batch once kept per-job arrays on the worker's stack, sized by the batch)
DB3 = os.path.join(T, "big-batch.sqlite")
d = Daemon(W, DB3, ["--batch-tokens", "1000000", "--max-batch", "5000", "--queue", "5000", "--max-length", "300000",
                    "--http-threads", "64", "--threads", "1"]).start()
slow_s = [0.0]


def slow_pass():
    t0 = time.time()
    d.post({"sequence": rand_seq(250000)})
    slow_s[0] = time.time() - t0


slow = threading.Thread(target=slow_pass)
slow.start()      # a long pass the short requests queue behind (alone: its tokens fill the batch)
time.sleep(0.3)
short = [rand_seq(12) for _ in range(400)]
codes = [None] * len(short)


def one(i):
    codes[i] = d.post({"sequence": short[i]}).status


ths = [threading.Thread(target=one, args=(i,)) for i in range(len(short))]
for t in ths:
    t.start()
for t in ths:
    t.join()
slow.join()
big = metric(d, "performerd_batch_sequences_count") - metric(d, 'performerd_batch_sequences_bucket{le="256"}')
stored = rows(DB3, "select count(*) from results")[0][0]
check(codes.count(200) == 400 and stored >= 400, "400 short requests behind a long pass: all 200 and stored (%s, %d stored)"
      % ({c: codes.count(c) for c in set(codes)}, stored))
check(big >= 1, "and some ran in batches of more than 256 (%d such batches; the long pass took %.1fs)" % (big, slow_s[0]))
print("note: %d batches of more than 256 sequences; the long pass took %.1fs" % (big, slow_s[0]))
d.stop()

# ---- the requests table: probes are not logged; rows past --request-log-days are deleted ------------------
DBR = os.path.join(T, "retention.sqlite")
d = Daemon(W, DBR).start()
check(d.post({"sequence": "MKT<mask>LLV"}).status == 200, "a prediction")
for _ in range(5):
    for path in ("/health", "/ready", "/metrics"):
        d.get(path)
check(d.get("/nope").status == 404, "an unknown route")
d.stop()
logged = [r[0] for r in rows(DBR, "select route from requests")]
check("/predict" in logged and not any(r in ("/health", "/ready", "/metrics") for r in logged) and len(logged) == 2,
      "2xx probes and scrapes are not written to the requests table (only /predict and the 404): %s" % logged)
now = time.time()
c = sqlite3.connect(DBR)
c.executemany("insert into requests (time, request_id, result_id, method, route, status, duration_ms, cache_hit, client)"
              " values (?, ?, null, 'POST', '/predict', 200, 1.0, 0, '127.0.0.1')",
              [(now - 40 * 86400 + i, "old-%d" % i) for i in range(25000)] +
              [(now - 86400 * k, "recent-%d" % k) for k in (1, 2, 29)])
c.commit()
c.close()
d = Daemon(W, DBR, ["--request-log-days", "30"]).start()
old = poll(lambda: rows(DBR, "select count(*) from requests where request_id like 'old-%'")[0][0], lambda n: n == 0,
           timeout=10, interval=0.1)
recent = rows(DBR, "select count(*) from requests where request_id like 'recent-%'")[0][0]
check(old == 0 and recent == 3, "--request-log-days 30 deletes the 25,000 rows of 40 days ago at start, keeps the "
      "3 younger ones (%d old, %d recent left)" % (old, recent))
check(metric(d, "performerd_request_log_pruned_total") == 25000, "pruned rows counted in /metrics")
d.stop()

done()
