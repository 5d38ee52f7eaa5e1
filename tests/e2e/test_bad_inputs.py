"""Sends every case of tests/e2e/bad_inputs.py to a real daemon and checks its status, error_type and
the error shape; checks that the bad inputs stored no result and left the database intact, and
that server/BAD_INPUTS.md is what `python3 tests/e2e/bad_inputs.py --markdown` prints."""
import os
import socket
import sqlite3
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bad_inputs  # noqa: E402
from pdtest import ROOT, Daemon, check, done, make_model, poll, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"))
DB = os.path.join(T, "cache.sqlite")
d = Daemon(W, DB, ["--cors-origin", bad_inputs.ORIGIN, "--threads", "1"], env={"PERFORMERD_API_KEY": bad_inputs.KEY}).start()


def send(c):
    """Sends case c; returns (status, headers, body) or raises."""
    headers = dict(c["headers"])
    if c["auth"]:
        headers.setdefault("Authorization", "Bearer " + bad_inputs.KEY)
    body = c["body"]
    if c["method"] == "POST" and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    headers = {k: v for k, v in headers.items() if v is not None}   # None: the header is not sent
    if c["raw"] is not None:      # bytes as they are; the answer closes the connection
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(c["raw"])
        data = b""
        while True:
            more = s.recv(65536)
            if not more:
                break
            data += more
        s.close()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        check(c["error_type"] is None or hdrs.get("connection") == "close", "%s: the answer closes the connection"
              % c["what"])
        check(b"HTTP/1.1 404" not in rest, "%s: nothing after the request was read as another one" % c["what"])
        return int(lines[0].split()[1]), hdrs, rest
    chunked = headers.get("Transfer-Encoding") == "chunked"
    if ("Content-Length" in headers and body is None) or chunked:
        # announced but never sent (the answer must come from the headers alone), or chunked
        head = "%s %s HTTP/1.1\r\nHost: x\r\n" % (c["method"], c["path"])
        head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(head.encode())
        if chunked:
            for k in range(0, len(body), 65536):
                s.sendall(b"%x\r\n%s\r\n" % (len(body[k:k + 65536]), body[k:k + 65536]))
            s.sendall(b"0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            data += more
        s.close()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        return int(lines[0].split()[1]), hdrs, rest
    r = d.request(c["method"], c["path"], body=body, headers=headers)
    return r.status, r.headers, r.body


import json  # noqa: E402

before = sqlite3.connect(DB).execute("select count(*) from results").fetchone()[0]
ok_ids = {}
for i, c in enumerate(bad_inputs.CASES, 1):
    label = "#%d %s: %s" % (i, c["group"], c["what"])
    try:
        status, headers, body = send(c)
    except OSError as e:
        check(False, "%s: no answer (%s)" % (label, e))
        continue
    check(status == c["status"], "%s: status %d, expected %d: %r" % (label, status, c["status"], body[:200]))
    if c["error_type"] is None:
        if status == 200 and c["method"] == "POST":
            ok_ids[c["what"]] = json.loads(body)["id"]
        continue
    try:
        j = json.loads(body)
    except ValueError:
        check(False, "%s: error body is not JSON: %r" % (label, body[:200]))
        continue
    check(j.get("error_type") == c["error_type"], "%s: error_type %s, expected %s (%s)" % (label, j.get("error_type"),
                                                                                         c["error_type"], j.get("error")))
    check(isinstance(j.get("error"), str) and j["error"] and j.get("request_id") == headers.get("x-request-id"),
          "%s: one error shape, request_id = X-Request-Id: %s" % (label, j))
    check(d.get("/health").status == 200, "%s: alive afterwards" % label)

# accepted spellings are the same request as their plain form
same = {"lower case (accepted: case-insensitive)": {"sequence": bad_inputs.SEQ},
        "duplicate mask positions (accepted: a set, same id as [2])": {"sequence": bad_inputs.SEQ, "mask_positions": [2]}}
for what, plain in same.items():
    r = d.post(plain, headers={"Authorization": "Bearer " + bad_inputs.KEY})
    check(r.status == 200 and r.json()["id"] == ok_ids.get(what), "%s: same id as %s" % (what, plain))

# the X-Request-Id with SQL in it was replaced, and nothing odd reached the request log
r = d.get("/health", headers={"X-Request-Id": "x'; DROP TABLE requests;--"})
check(r.header("X-Request-Id") != "x'; DROP TABLE requests;--" and len(r.header("X-Request-Id")) == 32,
      "unsafe X-Request-Id replaced by a generated one")
c = sqlite3.connect(DB)
after = c.execute("select count(*) from results").fetchone()[0]
check(after - before == len(set(ok_ids.values())),
      "only the accepted rows stored results (%d new, %d distinct accepted)" % (after - before, len(set(ok_ids.values()))))
check(c.execute("pragma integrity_check").fetchone()[0] == "ok", "database intact")
# every case writes a row, except a probe answered 2xx (/health, /ready, /metrics are counted, not logged)
# and what libmicrohttpd answers itself (its own HTML pages: no request reaches the daemon's handler)
logged = [k for k in bad_inputs.CASES
          if not (k["path"] in ("/health", "/ready", "/metrics") and 200 <= k["status"] < 300)
          and not (k["error_type"] is None and k["status"] >= 400)]
n_rows = poll(lambda: c.execute("select count(*) from requests").fetchone()[0], lambda n: n >= len(logged))
check(n_rows >= len(logged), "requests table still there, a row per case but the 2xx probes (%d >= %d)"
      % (n_rows, len(logged)))
c.close()
rc, _ = d.stop()
check(rc == 0, "SIGTERM exits 0")

with open(os.path.join(ROOT, "server", "BAD_INPUTS.md")) as f:
    committed = f.read()
check(committed == bad_inputs.markdown(), "server/BAD_INPUTS.md is current (regenerate it with "
      "`python3 tests/e2e/bad_inputs.py --markdown > server/BAD_INPUTS.md`)")
print("%d bad-input cases" % len(bad_inputs.CASES))
done()
