"""Hostile clients against a real performerd (--connection-timeout 2 to keep it short): slow headers
and slow bodies (slowloris) are cut by their deadlines while /health and predictions stay fast;
2,000 idle connections do not stop /health and are closed after the timeout; the open-file limit is
raised for --max-connections (and --max-connections lowered when the hard limit is too small);
--max-connections-per-ip; bodies far over the limit are refused without being read (Content-Length)
or after a bounded amount (chunked); deeply nested and value-heavy JSON is refused before parsing
with memory bounded."""
import json
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import PERFORMERD, Daemon, check, done, error_shape, make_model, raw_exchange, poll, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"))
TIMEOUT = 2

# The daemon inherits a low soft limit (1024) and must raise it for --max-connections 4096 itself.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
d = Daemon(W, os.path.join(T, "h.sqlite"), ["--connection-timeout", str(TIMEOUT), "--threads", "1"]).start()
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # this test opens thousands of sockets itself
with open("/proc/%d/limits" % d.proc.pid) as f:
    nofile = [l for l in f if l.startswith("Max open files")][0].split()
check(int(nofile[3]) >= 4096 + 256, "the daemon raised its open-file limit for 4096 connections: %s" % nofile[3:5])


def metric(name):
    for line in d.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return -1


def timed(fn):
    t0 = time.time()
    r = fn()
    return r, time.time() - t0


# ---- slowloris: headers and bodies trickled under the idle timeout are cut by their deadline ----------
def trickle(n, head, piece, every=0.4, limit=8.0):
    """Opens n connections that send head, then piece every `every` seconds; returns the seconds
    after which each was cut by the server (None: still open after limit)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", d.port))
        s.setblocking(False)
        s.send(head)
        socks.append(s)
    t0 = time.time()
    cut = [None] * n
    nxt = t0 + every
    while time.time() - t0 < limit and any(c is None for c in cut):
        live = [s for s, c in zip(socks, cut) if c is None]
        readable, _, _ = select.select(live, [], [], 0.05)
        for s in readable:
            i = socks.index(s)
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                cut[i] = time.time() - t0
        if time.time() >= nxt:
            nxt += every
            for i, s in enumerate(socks):
                if cut[i] is None:
                    try:
                        s.send(piece)
                    except OSError:
                        cut[i] = time.time() - t0
    for s in socks:
        s.close()
    return cut


results = {}


def run_trickle(key, *a):
    results[key] = trickle(*a)


slow = [threading.Thread(target=run_trickle, args=("headers", 40, b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-Pad: 1\r\n")),
        threading.Thread(target=run_trickle, args=("body", 40, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                                   b"application/json\r\nContent-Length: 100000\r\n\r\n{\"sequence\": \"",
                                                   b"MKTAYIAK"))]
for t in slow:
    t.start()
time.sleep(0.5)
lat = []
for _ in range(5):   # while 80 slow clients trickle, real requests are answered at once
    r, s = timed(lambda: d.get("/health"))
    check(r.status == 200, "health during slowloris")
    lat.append(s)
    r, s = timed(lambda: d.post({"sequence": "MKT<mask>LLV"}))
    check(r.status == 200, "predict during slowloris: %d" % r.status)
    lat.append(s)
    time.sleep(0.2)
check(max(lat) < 1.0, "health and predict stay fast during slowloris (max %.3fs)" % max(lat))
for t in slow:
    t.join()
for key in ("headers", "body"):
    cut = results[key]
    print("slow %s: %d connections, cut after %s s" % (key, len(cut), sorted(set(round(c, 1) for c in cut if c))))
    check(all(c is not None for c in cut), "every slow-%s connection was cut (%d of %d)" % (key, sum(c is not None for c in cut), len(cut)))
    cs = [c for c in cut if c is not None]
    if cs:
        check(TIMEOUT - 0.3 <= min(cs) and max(cs) <= TIMEOUT + 2.0,
              "slow %s cut after the %ds deadline: %.2f..%.2fs" % (key, TIMEOUT, min(cs), max(cs)))
check(metric("performerd_connections_cut_total") >= 80, "cut connections counted: %s" % metric("performerd_connections_cut_total"))
t0 = time.time()
while True:   # the server logs a cut request when its thread next runs: give it a moment
    logs = [l for l in d.log_lines() if l.get("msg") == "request" and l.get("route") == "/predict" and l.get("status") == 499]
    if len(logs) >= 40 or time.time() - t0 > 5:
        break
    time.sleep(0.1)
check(len(logs) >= 40, "cut slow bodies are logged as 499 (%d)" % len(logs))

# A slow but honest upload (8 KiB every 0.25 s = 32 KiB/s, above the 16 KiB/s floor) is not cut.
body = json.dumps({"sequence": "MKT<mask>LLV", "top_k": 3}).encode()
body = body[:-1] + b", " + b"\"pad\": \"" + b"A" * 120000 + b"\"}"   # an unknown field: 400 once read
s = socket.create_connection(("127.0.0.1", d.port), timeout=20)
s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
t0 = time.time()
for i in range(0, len(body), 8192):
    s.sendall(body[i:i + 8192])
    time.sleep(0.25)
resp = s.recv(65536)
s.close()
check(time.time() - t0 > TIMEOUT and resp.startswith(b"HTTP/1.1 400"),
      "a slow honest upload over %.1fs is read to the end and answered: %r" % (time.time() - t0, resp[:40]))

# ---- idle connections are closed after the timeout ------------------------------------------------------
idle = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(100)]
time.sleep(TIMEOUT + 1.5)
closed = 0
for c in idle:
    c.setblocking(False)
    try:
        closed += c.recv(1) == b""
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
    c.close()
check(closed == len(idle), "idle connections closed after the %ds timeout: %d of %d" % (TIMEOUT, closed, len(idle)))
# (the gauge counts the asking connection, and one just closed may linger)
n_open = poll(lambda: metric("performerd_connections"), lambda n: n <= 2, timeout=3)
check(n_open <= 2, "connection gauge back down: %s" % n_open)

# ---- bodies far over the limit -------------------------------------------------------------------------
t0 = time.time()
resp = raw_exchange(d.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1073741824\r\n\r\n")
check(resp.startswith(b"HTTP/1.1 413") and time.time() - t0 < 1.0, "1 GiB Content-Length: 413 at once: %r" % resp[:40])
check(json.loads(resp.partition(b"\r\n\r\n")[2]).get("error_type") == "payload_too_large", "413 payload_too_large")
# chunked (no length): the server stops reading after a bounded amount and closes the connection
s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
chunk = b"%x\r\n%s\r\n" % (1 << 20, b"A" * (1 << 20))
sent = 0
try:
    while sent < (256 << 20):
        s.sendall(chunk)
        sent += 1 << 20
except OSError:
    pass
s.close()
print("chunked 256 MiB body: the server closed the connection after %d MiB were sent" % (sent >> 20))
check(sent < (32 << 20), "a 256 MiB chunked body is cut off after %d MiB (limit 2 MiB, bounded discard)" % (sent >> 20))
check(d.get("/health").status == 200, "alive after oversized bodies")

# ---- hostile JSON -----------------------------------------------------------------------------------------
H = {"Content-Type": "application/json"}
e = error_shape(d.post('{"sequence": "MKT", "x": ' + "[" * 65 + "]" * 65 + "}", headers=H), 400, "json_too_deep")
check(e.get("max_depth") == 64, "json_too_deep names the limit: %s" % e)
error_shape(d.post("[" * 1000000, headers=H), 400, "json_too_deep")
error_shape(d.post('{"sequence": "MKT", "x": ' + "[" * 63 + "]" * 63 + "}", headers=H), 400, "unknown_field")
big = b'{"sequence": "MKT", "mask_positions": [' + b",".join([b"1"] * 1000000) + b"]}"
error_shape(d.post(big, headers=H), 413, "json_too_large")
with open("/proc/%d/status" % d.proc.pid) as f:
    hwm_before = int([l for l in f if l.startswith("VmHWM")][0].split()[1])
jobs_big = b'{"task": "predict", "sequences": [' + b",".join([b"0"] * (4 << 20)) + b"]}"   # 8 MiB
threads = [threading.Thread(target=lambda: results.setdefault("jobs", []).append(
    d.request("POST", "/jobs", body=jobs_big, headers=H))) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(all(r.status == 413 and r.json()["error_type"] == "json_too_large" for r in results["jobs"]),
      "8 MiB JSON jobs of 4M values refused: %s" % [r.status for r in results["jobs"]])
with open("/proc/%d/status" % d.proc.pid) as f:
    hwm = int([l for l in f if l.startswith("VmHWM")][0].split()[1])
print("peak RSS before/after 4 concurrent 8 MiB value-heavy JSON bodies: %d / %d MiB" % (hwm_before >> 10, hwm >> 10))
check(hwm - hwm_before < 200 * 1024, "4 concurrent 8 MiB value-heavy bodies raise peak RSS by %d MiB (< 200)" % ((hwm - hwm_before) >> 10))
check(d.get("/health").status == 200, "alive after hostile JSON")
rc, secs = d.stop()
check(rc == 0, "SIGTERM exits 0 after the hostile clients (%s)" % rc)

# ---- thousands of idle connections (default --connection-timeout 30): /health still answers --------------
d3 = Daemon(W, os.path.join(T, "i.sqlite"), ["--threads", "1"]).start()
idle = [socket.create_connection(("127.0.0.1", d3.port)) for _ in range(2000)]
n_open = poll(lambda: [float(l.split()[-1]) for l in d3.get("/metrics").body.decode().splitlines()
                       if l.startswith("performerd_connections ")][0],
              lambda n: n >= 2000, timeout=10)   # until accepted from the listen backlog
check(n_open >= 2000, "2000 idle connections accepted: %s" % n_open)
r, s = timed(lambda: d3.get("/health"))
print("GET /health with 2000 idle connections open: %.3fs" % s)
check(r.status == 200 and s < 1.0, "health answers with 2000 idle connections open (%.3fs)" % s)
r = d3.post({"sequence": "MKTA<mask>LV"})
check(r.status == 200, "predict answers with 2000 idle connections open: %d" % r.status)
for c in idle:
    c.close()
d3.stop()

# ---- per-IP limit, and a hard open-file limit lower than --max-connections ------------------------------
d2 = Daemon(W, os.path.join(T, "p.sqlite"), ["--max-connections-per-ip", "4", "--threads", "1"]).start()
held = [socket.create_connection(("127.0.0.1", d2.port)) for _ in range(4)]
time.sleep(0.2)
extra = socket.create_connection(("127.0.0.1", d2.port), timeout=5)
extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    got = extra.recv(100)
except OSError:
    got = b""
check(got == b"", "a 5th connection from one address is refused with --max-connections-per-ip 4: %r" % got[:30])
for c in held + [extra]:
    c.close()
time.sleep(0.2)
check(d2.get("/health").status == 200, "served again once the address's connections are closed")
d2.stop()


def low_hard_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600))


p = subprocess.Popen([PERFORMERD, "--bind", "127.0.0.1", "--port", "0", "--weights", W, "--db", os.path.join(T, "l.sqlite"),
                      "--max-connections", "4096"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=low_hard_limit)
lines = []
t0 = time.time()
while time.time() - t0 < 15:
    line = p.stdout.readline().decode()
    lines.append(line)
    if '"listening"' in line:
        break
p.terminate()
p.wait(10)
warn = [json.loads(l) for l in lines if "open-file limit" in l]
check(warn and warn[0].get("serving") == "344" and warn[0].get("nofile") == "600",
      "a hard limit of 600 lowers --max-connections to 344 with a warning: %s" % (warn or lines[:3]))
done()
