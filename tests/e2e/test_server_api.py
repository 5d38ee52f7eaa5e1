"""End-to-end test of every performerd route and error status against a real daemon with a tiny
random model: predictions, cache HIT/MISS and GET by id, batch vs single, errors and limits,
CORS, metrics, OpenAPI, the request log and the database staying clean on malformed input."""
import http.client
import json
import math
import os
import re
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import Daemon, check, done, error_shape, make_model, raw_exchange, poll, tmpdir  # noqa: E402

T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"))
DB = os.path.join(T, "cache.sqlite")
ORIGIN = "https://lab.example.org"
d = Daemon(W, DB, ["--cors-origin", ORIGIN + ", https://other.example.org", "--max-length", "40000"]).start()
RES = "ACDEFGHIKLMNPQRSTVWY"


def results_count():
    c = sqlite3.connect(DB)
    try:
        return c.execute("select count(*) from results").fetchone()[0]
    finally:
        c.close()


def close(a, b, tol=1e-5):
    return abs(a - b) <= tol


# ---- /health, /ready, /model, /openapi.json -------------------------------------------------------
r = d.get("/health")
check(r.status == 200 and r.json()["status"] == "ok", "health 200 ok: %s" % r.body)
check(len(r.header("X-Request-Id") or "") >= 16, "generated X-Request-Id")
check(r.header("X-Response-Time", ) is not None and r.header("Server-Timing") is not None, "timing headers")
r = d.get("/health", headers={"X-Request-Id": "trace-abc.123"})
check(r.header("X-Request-Id") == "trace-abc.123", "X-Request-Id echoed")
r = d.request("HEAD", "/health")
check(r.status == 200 and r.body == b"", "HEAD /health")
r = d.get("/ready")
check(r.status == 200 and r.json()["status"] == "ready", "ready: %s" % r.body)
r = d.get("/model")
m = r.json()
check(r.status == 200, "model 200")
check(m["trained"] is False and "UNTRAINED" in m.get("warning", ""), "model says untrained: %s" % m.get("warning"))
check(len(m["sha256"]) == 64 and m["config"]["d_model"] == 32 and m["config"]["n_layers"] == 2, "model config")
check(len(m["vocabulary"]) == 30 and m["vocabulary"][1] == "<mask>" and m["vocabulary"][5] == "A", "vocabulary")
check(m["limits"]["max_length"] == 40000 and m["limits"]["max_batch"] == 64 and m["limits"]["max_body_bytes"] == 2 * 1024 * 1024,
      "default limits: %s" % m["limits"])
check(m["limits"]["max_pll_length"] > 0 and m["limits"]["max_score_tokens"] > 0 and
      m["limits"]["max_job_body_bytes"] == 16 * 1024 * 1024 and m["limits"]["max_job_sequences"] == 10000,
      "the /score and /jobs limits too: %s" % m["limits"])
MODEL_SHA = m["sha256"]

r = d.get("/openapi.json")
spec = r.json()
check(r.status == 200 and spec["openapi"].startswith("3."), "openapi 3")
want = {"/predict": {"post"}, "/predict/{id}": {"get"}, "/health": {"get"}, "/ready": {"get"}, "/metrics": {"get"},
        "/model": {"get"}, "/openapi.json": {"get"}}
for p, methods in want.items():
    check(p in spec["paths"] and methods <= set(spec["paths"][p]), "openapi documents %s %s" % (methods, p))
pred_codes = set(spec["paths"]["/predict"]["post"]["responses"])
check({"200", "400", "401", "405", "413", "415", "422", "429", "503"} <= pred_codes, "openapi /predict statuses %s" % pred_codes)
check(all(spec["components"]["schemas"][k]["properties"]["sequences"]["maxItems"] == 64
          for k in ("PredictRequest", "EmbedRequest", "LogitsRequest")), "openapi batch limits")
# every documented GET path answers (no 404/405) and every documented operation exists
for p in spec["paths"]:
    if "{" in p or "get" not in spec["paths"][p]:
        continue
    check(d.get(p).status == 200, "documented GET %s answers 200" % p)

# ---- POST /predict ----------------------------------------------------------------------------------
before = results_count()
r = d.post({"sequence": "MKT<mask>LLV"}, headers={"X-Request-Id": "req-1"})
check(r.status == 200, "predict 200: %s" % r.body[:300])
j = r.json()
check(r.header("X-Cache") == "MISS" and j["cached"] is False, "first request is a MISS")
check(len(j["id"]) == 64 and r.header("ETag").strip('"') == j["id"], "ETag is the id")
check(r.header("X-Request-Id") == "req-1", "request id echoed on predict")
check(j["model"]["sha256"] == MODEL_SHA and j["model"]["name"], "model in response")
res = j["results"][0]
check(res["length"] == 7 and res["mode"] == "masked" and len(res["predictions"]) == 1, "one masked prediction")
p = res["predictions"][0]
check(p["position"] == 4 and p["residue"] == "<mask>" and len(p["top_k"]) == 5, "position 4, <mask>, top 5")
probs = [t["prob"] for t in p["top_k"]]
check(probs == sorted(probs, reverse=True), "top_k sorted by probability")
check(all(t["token"] in RES for t in p["top_k"]), "top_k tokens are residues")
check(all(close(t["prob"], math.exp(t["log_prob"]), 1e-5) for t in p["top_k"]), "prob = exp(log_prob)")
check(res["filled_sequence"] == "MKT" + p["top_k"][0]["token"] + "LLV", "filled_sequence uses the top-1 residue")
check(results_count() == before + 1, "result stored before the answer")
# Server-Timing of a computed answer: queue, forward, store (the result's commit), total, in order
st = r.header("Server-Timing") or ""
parts = dict(re.fullmatch(r"(\w+);dur=([\d.]+)", x.strip()).groups() for x in st.split(",")
             if re.fullmatch(r"(\w+);dur=([\d.]+)", x.strip()))
check([x.split(";")[0].strip() for x in st.split(",")] == ["queue", "forward", "store", "total"], "Server-Timing of a "
      "miss names queue, forward, store, total: %s" % st)
check(parts and float(parts["store"]) > 0 and float(parts["forward"]) > 0 and
      float(parts["queue"]) + float(parts["forward"]) + float(parts["store"]) <= float(parts["total"]),
      "its parts are positive and add up to at most the total: %s" % st)
ID1, BODY1 = j["id"], j

r = d.post({"sequence": "MKT<mask>LLV", "top_k": 20})
t20 = r.json()["results"][0]["predictions"][0]["top_k"]
check(len(t20) == 20 and close(sum(t["prob"] for t in t20), 1.0, 1e-4), "top_k 20 covers all residues, sums to 1")
check(all(close(a["prob"], b["prob"], 1e-6) for a, b in zip(t20, p["top_k"])), "top 5 of 20 equal the default top 5")
r = d.post({"sequence": "MKT<mask>LLV", "top_k": 25})
check(r.status == 200 and len(r.json()["results"][0]["predictions"][0]["top_k"]) == 20, "top_k 25 accepted, 20 exist")

# repeat: HIT, identical body except cached; normalisation (case, whitespace, <MASK>) gives the same id
r = d.post({"sequence": "MKT<mask>LLV"})
check(r.header("X-Cache") == "HIT" and r.json()["cached"] is True, "repeat is a HIT")
jj = r.json()
jj["cached"] = False
check(jj == BODY1, "HIT body equals the computed one")
r = d.post({"top_k": 5, "sequence": " mkt<MASK>l lv\n"})
check(r.header("X-Cache") == "HIT" and r.json()["id"] == ID1, "normalised request hits the same id")
r = d.post({"sequences": ["MKT<mask>LLV"]})
check(r.json()["id"] == ID1, "sequence and a one-element sequences are the same request")

# GET /predict/{id}
r = d.get("/predict/" + ID1)
check(r.status == 200 and r.json()["cached"] is True and r.header("X-Cache") == "HIT", "GET by id")
jj = r.json()
jj["cached"] = False
check(jj == BODY1, "GET by id returns the stored response")
check(d.get("/predict/" + ID1.upper()).status == 200, "GET by id is case-insensitive")
r = d.get("/predict/" + ID1, headers={"If-None-Match": '"%s"' % ID1})
check(r.status == 304, "If-None-Match gives 304")
# a proxy that compresses (nginx's gzip) weakens the ETag: the client sends W/"id", maybe in a list
r = d.get("/predict/" + ID1, headers={"If-None-Match": 'W/"%s"' % ID1})
check(r.status == 304, "If-None-Match W/\"id\" (weak comparison) gives 304")
r = d.get("/predict/" + ID1, headers={"If-None-Match": '"%s", W/"%s"' % ("0" * 64, ID1)})
check(r.status == 304, "If-None-Match with a list gives 304")
r = d.get("/predict/" + ID1, headers={"If-None-Match": '"%sx"' % ID1})
check(r.status == 200, "If-None-Match with a longer tag gives 200 (%d)" % r.status)
r = d.get("/")
pe = r.header("ETag") or ""
check(r.status == 200 and pe.startswith('"'), "the page has an ETag (%r)" % pe)
check(d.get("/", headers={"If-None-Match": pe}).status == 304, "the page: If-None-Match gives 304")
check(d.get("/", headers={"If-None-Match": "W/" + pe}).status == 304, "the page: weak If-None-Match gives 304")
error_shape(d.get("/predict/" + "0" * 64), 404, "not_found")
error_shape(d.get("/predict/xyz"), 400, "invalid_id")
error_shape(d.get("/predict/" + "g" * 64), 400, "invalid_id")

# mask_positions: same model input as <mask>, residue names the masked input residue
r = d.post({"sequence": "MKTALLV", "mask_positions": [4]})
j = r.json()
pp = j["results"][0]["predictions"][0]
check(pp["position"] == 4 and pp["residue"] == "A", "mask_positions predicts position 4 (was A)")
check(all(close(a["prob"], b["prob"], 1e-6) and a["token"] == b["token"] for a, b in zip(pp["top_k"], p["top_k"])),
      "mask_positions == <mask> at the same place")
r = d.post({"sequences": ["MKTALLV", "MKTAYIAKQR"], "mask_positions": [[1, 4], [10]]})
j = r.json()
check(r.status == 200 and [x["position"] for x in j["results"][0]["predictions"]] == [1, 4]
      and [x["position"] for x in j["results"][1]["predictions"]] == [10], "per-sequence mask_positions")

# no mask: every position from one unmasked pass
r = d.post({"sequence": "MKTAYIAKQR", "top_k": 3})
j = r.json()["results"][0]
check(j["mode"] == "unmasked" and len(j["predictions"]) == 10 and [x["position"] for x in j["predictions"]] == list(range(1, 11)),
      "unmasked mode predicts every position")
check(j["filled_sequence"] == "MKTAYIAKQR" and j["predictions"][0]["residue"] == "M", "unmasked keeps the input")

# batch vs single: identical results
seqs = ["MKT<mask>LLVAGH", "G<mask>SSGKTT", "ACDEFGHIK<mask>MNPQRSTVWY", "MM<mask>"]
rb = d.post({"sequences": seqs, "top_k": 7})
check(rb.status == 200 and len(rb.json()["results"]) == 4, "batch of 4")
for i, s in enumerate(seqs):
    rs = d.post({"sequence": s, "top_k": 7})
    a, b = rs.json()["results"][0], rb.json()["results"][i]
    same = a["filled_sequence"] == b["filled_sequence"] and all(
        x["token"] == y["token"] and close(x["prob"], y["prob"], 1e-5)
        for pa, pb in zip(a["predictions"], b["predictions"]) for x, y in zip(pa["top_k"], pb["top_k"]))
    check(same, "batch result %d equals the single result" % i)

# ---- errors --------------------------------------------------------------------------------------------
before = results_count()
error_shape(d.post('{"sequence": "MKT', headers={"Content-Type": "application/json"}), 400, "invalid_json")
error_shape(d.post("", headers={"Content-Type": "application/json"}), 400, "invalid_json")
error_shape(d.post([1, 2]), 400, "invalid_type")
error_shape(d.post({"sequence": 5}), 400, "invalid_type")
error_shape(d.post({"sequences": "MKT"}), 400, "invalid_type")
error_shape(d.post({"sequences": ["MKT", 3]}), 400, "invalid_type")
error_shape(d.post({"sequence": "MKT", "top_k": "5"}), 400, "invalid_type")
error_shape(d.post({"sequence": "MKT", "mask_positions": [1.5]}), 400, "invalid_type")
error_shape(d.post({"sequence": "MKT", "sequences": ["MKT"]}), 400, "invalid_request")
error_shape(d.post({}), 400, "invalid_request")
error_shape(d.post({"sequence": "MKT", "mask_position": [1]}), 400, "unknown_field")
error_shape(d.post('{"sequence": "MKT", "sequence": "MKT"}', headers={"Content-Type": "application/json"}), 400, "invalid_json")
e = error_shape(d.post({"sequence": "MKTA#LV"}), 422, "invalid_residue")
check(e.get("character") == "#" and e.get("position") == 5 and "'#'" in e["error"] and "position 5" in e["error"],
      "invalid residue names character and position: %s" % e)
e = error_shape(d.post({"sequences": ["MKT", "MKJ"]}), 422, "invalid_residue")
check(e.get("sequence_index") == 1 and e.get("position") == 3 and e.get("character") == "J", "names the sequence: %s" % e)
error_shape(d.post({"sequence": "MK\u0000T"}), 422, "invalid_residue")
e = error_shape(d.post({"sequence": "MKT\u00a0LV"}), 422, "invalid_residue")   # pasted from a PDF / Word
check(e.get("character") == "U+00A0" and "no-break space" in e["error"] and e.get("position") == 4,
      "a non-ASCII character is named by its code point (and an invisible one by its name): %s" % e)
e = error_shape(d.post({"sequence": "MKT\u00e9LV"}), 422, "invalid_residue")
check(e.get("character") == "U+00E9", "any UTF-8 character as U+XXXX: %s" % e)
e = error_shape(d.post({"sequence": "MKT<mask >LV"}), 422, "invalid_residue")
check(e.get("character") == " " and "only <mask>" in e["error"] and "allowed: " not in e["error"],
      "a space inside <mask > is explained, not listed as allowed whitespace: %s" % e)
error_shape(d.post({"sequence": "MKT<mas"}), 422, "invalid_residue")
error_shape(d.post({"sequence": ""}), 422, "empty_sequence")
error_shape(d.post({"sequence": "  \n "}), 422, "empty_sequence")
error_shape(d.post({"sequences": []}), 422, "empty_batch")
e = error_shape(d.post({"sequence": "MKT", "mask_positions": [4]}), 422, "invalid_mask_position")
check(e.get("position") == 4 and e.get("length") == 3, "bad mask position detail: %s" % e)
error_shape(d.post({"sequence": "MKT", "mask_positions": [0]}), 422, "invalid_mask_position")
error_shape(d.post({"sequences": ["MKT", "MK"], "mask_positions": [[1]]}), 422, "invalid_mask_position")
error_shape(d.post({"sequence": "MKT", "top_k": 0}), 422, "invalid_top_k")
error_shape(d.post({"sequence": "MKT", "top_k": 26}), 422, "invalid_top_k")
e = error_shape(d.post({"sequence": "A" * 40001}), 413, "sequence_too_long")
check(e.get("limit") == 40000 and "40000" in e["error"], "413 says the length limit: %s" % e.get("error"))
e = error_shape(d.post({"sequences": ["A" * 30000] * 4, "top_k": 20}), 413, "response_too_large")
check(e.get("limit") == 2000000, "413 says the response limit")
e = error_shape(d.post({"sequences": ["MKT"] * 65}), 413, "batch_too_large")
check(e.get("limit") == 64, "413 says the batch limit")
big = b'{"sequence": "' + b"A" * (3 * 1024 * 1024) + b'"}'
# Content-Length over the cap with Expect: 100-continue: answered 413 from the headers alone, no 100, the
# body is never sent
resp = raw_exchange(d.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(big))
check(resp.startswith(b"HTTP/1.1 413"), "Content-Length over the cap, Expect: 100-continue -> 413 without reading: %r"
      % resp[:60])
body = json.loads(resp.partition(b"\r\n\r\n")[2])
check(body.get("error_type") == "payload_too_large" and body.get("limit") == 2 * 1024 * 1024 and "2097152" in body["error"],
      "413 body says the limit: %s" % body)


def urllib_post(data, ctype="application/json", headers=None):
    """POSTs as Python's urllib does: the whole body written before the response is read."""
    h = {"Content-Type": ctype}
    h.update(headers or {})
    req = urllib.request.Request("http://127.0.0.1:%d/predict" % d.port, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:   # a reset or broken pipe: the answer never arrived
        return repr(e), b""


# clients that write the whole body before reading (urllib, http.client) get the refusal, not a reset
# connection: without Expect, a refused body within 4 x --max-body + 1 MiB is read and thrown away first
for k in range(3):
    st, b = urllib_post(big)
    check(st == 413 and json.loads(b or b"{}").get("error_type") == "payload_too_large",
          "urllib, 3 MiB over the cap (try %d): 413, not a reset: %s" % (k, st))
    st, b = urllib_post(b"A" * (3 << 20), ctype="text/plain")
    check(st == 415 and json.loads(b or b"{}").get("error_type") == "unsupported_media_type",
          "urllib, 3 MiB of text/plain (try %d): 415, not a reset: %s" % (k, st))
c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
c.request("POST", "/predict", body=b"x" * 100000, headers={"Content-Type": "text/plain"})
r1 = c.getresponse()
r1.read()
c.request("POST", "/predict", body=b'{"sequence": "MKT<mask>LLV"}', headers={"Content-Type": "application/json"})
r2 = c.getresponse()
r2.read()
c.close()
check(r1.status == 415 and r2.status == 200, "a refused body read to its end keeps the connection: %d then %d"
      % (r1.status, r2.status))



# a body sent at a fair pace to a route that reads none (an unknown route, a GET with a body) is read
# and thrown away, then answered: the body deadline once started from a stale time and cut it at once
for head in (b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 655360\r\n\r\n",
             b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 655360\r\n\r\n"):
    # 640 KiB in chunks of 64 KiB every 0.2 s (about 300 kB/s, far above the minimum rate)
    line = raw_exchange(d.port, head, [b"x" * 65536] * 10, pause=0.2).split(b"\r\n")[0].decode("latin-1")
    want = "404" if head.startswith(b"POST /nope") else "200"
    check(line.startswith("HTTP/1.1 " + want), "%s with 640 KiB sent over 2 s: %s, not a cut (%s)"
          % (head.split(b" HTTP")[0].decode(), want, line))


def chunked(body, chunk=65536):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk]) for i in range(0, len(body), chunk)]
    return raw_exchange(d.port, head, parts + [b"0\r\n\r\n"])


resp = chunked(big)
check(resp.startswith(b"HTTP/1.1 413"), "chunked body over the cap is refused with 413: %r" % resp[:80])
resp = chunked(b'{"sequence": "MKT<mask>LLV"}', 5)
check(resp.startswith(b"HTTP/1.1 200"), "chunked body under the cap works: %r" % resp[:80])
error_shape(d.post('{"sequence": "MKT"}', headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
error_shape(d.post("sequence=MKT", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
check(d.post('{"sequence": "MKT<mask>LLV"}', headers={"Content-Type": "application/json; charset=utf-8"}).status == 200,
      "application/json with charset accepted")
error_shape(d.get("/nope"), 404, "not_found")
error_shape(d.get("/predict/"), 404, "not_found")
r = d.get("/predict")
error_shape(r, 405, "method_not_allowed")
check("POST" in (r.header("Allow") or ""), "405 has Allow: %s" % r.header("Allow"))
r = d.request("DELETE", "/health")
error_shape(r, 405, "method_not_allowed")
check("GET" in (r.header("Allow") or ""), "405 /health Allow GET")
r = d.request("POST", "/predict/" + ID1, body="{}", headers={"Content-Type": "application/json"})
error_shape(r, 405)
check(results_count() == before, "malformed requests stored nothing (%d -> %d)" % (before, results_count()))

# garbage never crashes: random bytes, deep nesting, huge numbers, invalid UTF-8
for junk in [b"\xff\xfe\x00garbage", b"[" * 5000, b'{"sequence": "MKT", "top_k": 1e999}', b'{"sequence": "\xc3\x28"}',
             b'{"sequence": "MKT", "top_k": 99999999999999999999999}', b"null", b'"str"', b"{" + b" " * 1000]:
    r = d.post(junk, headers={"Content-Type": "application/json"})
    check(400 <= r.status < 500, "junk %r -> %d" % (junk[:20], r.status))
check(d.get("/health").status == 200, "alive after junk")
# a body saved with a UTF-8 byte-order mark (PowerShell 5.1's -Encoding UTF8, Notepad) is JSON all the same
r = d.post(b"\xef\xbb\xbf" + json.dumps({"sequence": "MKT<mask>LLV"}).encode(), headers={"Content-Type": "application/json"})
check(r.status == 200 and r.json()["results"][0]["predictions"][0]["position"] == 4, "JSON after a byte-order mark: %s"
      % r.body[:200])
# query parameters on the model routes are refused, not ignored (the answer would use top_k 5)
for route, body in (("/predict?top_k=1", {"sequence": "MKT<mask>LLV"}),
                    ("/score?method=pseudo-likelihood", {"sequence": "MKTLLV", "mutations": ["K2R"]}),
                    ("/embed?layer=1", {"sequence": "MKTLLV"}), ("/logits?x", {"sequence": "MKTLLV"})):
    e = error_shape(d.post(body, path=route), 400, "unknown_field")
    check(e.get("field") == route.split("?")[1].split("=")[0] and "JSON body" in e.get("error", ""),
          "POST %s: 400 names the parameter: %s" % (route, e))

# ---- CORS ---------------------------------------------------------------------------------------------
r = d.request("OPTIONS", "/predict", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
check(r.status == 204 and r.header("Access-Control-Allow-Origin") == ORIGIN, "preflight allowed: %s" % r.headers)
check("POST" in (r.header("Access-Control-Allow-Methods") or "") and "Content-Type" in (r.header("Access-Control-Allow-Headers") or ""),
      "preflight lists methods and headers")
r = d.request("OPTIONS", "/predict/" + "a" * 64, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                                         "Access-Control-Request-Headers": "if-none-match"})
check(r.status == 204 and "If-None-Match" in (r.header("Access-Control-Allow-Headers") or ""),
      "preflight allows If-None-Match (a web app revalidating a stored result): %s" % r.header("Access-Control-Allow-Headers"))
r = d.request("OPTIONS", "/predict", headers={"Origin": "https://other.example.org", "Access-Control-Request-Method": "POST"})
check(r.status == 204 and r.header("Access-Control-Allow-Origin") == "https://other.example.org", "second origin allowed")
r = d.request("OPTIONS", "/predict", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
check(r.status == 403 and r.header("Access-Control-Allow-Origin") is None, "other origin refused")
r = d.post({"sequence": "MKT<mask>LLV"}, headers={"Origin": ORIGIN})
check(r.header("Access-Control-Allow-Origin") == ORIGIN and "X-Cache" in (r.header("Access-Control-Expose-Headers") or ""),
      "simple request gets CORS headers")
r = d.get("/health", headers={"Origin": "https://evil.example.com"})
check(r.header("Access-Control-Allow-Origin") is None, "no CORS header for other origins")
r = d.request("OPTIONS", "/health")
check(r.status == 204 and "GET" in (r.header("Allow") or ""), "plain OPTIONS lists Allow")

# ---- concurrency: 24 clients while a 30,000-residue request runs; short ones are batched ------------
import random  # noqa: E402
rng = random.Random(7)
long_seq = "".join(rng.choice(RES) for _ in range(30000))
shorts = ["".join(rng.choice(RES) for _ in range(rng.randint(20, 60))) for _ in range(24)]
shorts = [s[:5] + "<mask>" + s[6:] for s in shorts]
refs = {}
for s in shorts:  # reference answers, one at a time (top_k 20: a different request id than below)
    refs[s] = d.post({"sequence": s, "top_k": 20}).json()["results"][0]
out = {}
long_res = {}


def run_long():
    t0 = time.time()
    long_res["r"] = d.post({"sequence": long_seq, "top_k": 1})
    long_res["t"] = time.time() - t0


def client(i):
    out[i] = d.post({"sequence": shorts[i], "top_k": 5})


lt = threading.Thread(target=run_long)
lt.start()
time.sleep(0.05)
hs = []
for _ in range(5):  # /health and a cache hit stay fast while the long request runs
    t0 = time.time()
    check(d.get("/health").status == 200, "health during long request")
    hs.append(time.time() - t0)
    t0 = time.time()
    check(d.post({"sequence": "MKT<mask>LLV"}).header("X-Cache") == "HIT", "cache hit during long request")
    hs.append(time.time() - t0)
check(max(hs) < 0.25, "health/cache hits fast during a long request (max %.3fs)" % max(hs))
ths = [threading.Thread(target=client, args=(i,)) for i in range(len(shorts))]
for t in ths:
    t.start()
for t in ths:
    t.join()
lt.join()
check(long_res["r"].status == 200 and long_res["r"].json()["results"][0]["length"] == 30000, "30,000 residues answered")
batched = max(int(out[i].header("X-Batch-Requests") or 0) for i in out)
check(batched > 1, "concurrent short requests were batched together (max batch %d)" % batched)
for i, s in enumerate(shorts):
    r = out[i]
    if not check(r.status == 200, "concurrent client %d: %d" % (i, r.status)):
        continue
    a = r.json()["results"][0]["predictions"][0]["top_k"]
    b = refs[s]["predictions"][0]["top_k"][:5]
    check(all(x["token"] == y["token"] and close(x["prob"], y["prob"], 1e-5) for x, y in zip(a, b)),
          "concurrent client %d equals its sequential answer" % i)

# ---- metrics and the request log ---------------------------------------------------------------------
# methods a client makes up (quotes, backslashes, long names) are counted under method="other": the
# exposition stays parseable and one series per (route, status) however many arrive
for meth in (b'X"Y', b'Z\\', b"PROPFIND", b"PROPFIND", b"PROPFIND", b"BREW"):
    raw_exchange(d.port, meth + b" /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
# a request is counted in its completion callback, which the daemon may run just after the client has
# read the whole response: wait (up to 5 s) until the six are counted before reading the exposition
r = poll(lambda: d.get("/metrics"),
         lambda r: 'performerd_requests_total{route="/health",method="other",status="405"} 6' in r.body.decode())
text = r.body.decode()
series_re = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? '
                       r'[-+]?([0-9.eE+-]+|Inf|NaN)$')
samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
bad = [ln for ln in samples if not series_re.match(ln)]
check(not bad, "every metrics line is valid exposition text: %s" % bad[:3])
keys = [ln.rsplit(" ", 1)[0] for ln in samples]
check(len(keys) == len(set(keys)), "no series twice: %s" % sorted(k for k in set(keys) if keys.count(k) > 1)[:3])
other = [ln for ln in samples if ln.startswith('performerd_requests_total{route="/health",method="other"')]
check(len(other) == 1 and other[0].endswith(" 6") and "PROPFIND" not in text and "BREW" not in text,
      "made-up methods count as method=\"other\": %s" % other)
check(r.status == 200 and r.header("Content-Type").startswith("text/plain"), "metrics text")
for name in ["performerd_requests_total{route=\"/predict\",method=\"POST\",status=\"200\"}",
             "performerd_requests_total{route=\"/predict\",method=\"POST\",status=\"422\"}",
             "performerd_request_duration_seconds_bucket{route=\"/predict\",le=\"+Inf\"}",
             "performerd_cache_hits_total", "performerd_cache_misses_total", "performerd_queue_depth",
             "performerd_residues_processed_total", "performerd_model_forward_seconds_sum",
             "performerd_model_forward_seconds_count", "performerd_model_trained 0"]:
    check(name in text, "metrics has %s" % name)


def metric(name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return -1


check(metric("performerd_cache_hits_total") >= 8, "cache hits counted")
# sequences per forward pass: the histogram's sum and count are the sequence and pass counters, and
# the concurrent clients above went through at least one pass of more than one sequence
check(metric("performerd_batch_sequences_sum") == metric("performerd_forward_sequences_total") > 0,
      "batch histogram sum = sequences run")
check(metric("performerd_batch_sequences_count") == metric("performerd_model_forward_seconds_count") > 0,
      "batch histogram count = forward passes")
check(metric('performerd_batch_sequences_bucket{le="+Inf"}') == metric("performerd_batch_sequences_count"),
      "batch histogram +Inf bucket = count")
check(metric('performerd_batch_sequences_bucket{le="1"}') < metric("performerd_batch_sequences_count"),
      "some forward pass ran more than one sequence")
check(metric("performerd_residues_processed_total") >= 30000, "residues counted")
time.sleep(0.2)
c = sqlite3.connect(DB)
rows = c.execute("select route, status, cache_hit, client, result_id, duration_ms, method, request_id from requests").fetchall()
c.close()
check(any(r[0] == "/predict" and r[1] == 200 and r[2] == 1 and r[4] == ID1 for r in rows), "requests table has a cache hit")
check(any(r[0] == "/predict" and r[1] == 422 for r in rows), "requests table has a 422")
check(any(r[7] == "req-1" and r[4] == ID1 and r[2] == 0 for r in rows), "requests table keeps the request id")
check(all(r[3] == "127.0.0.1" and r[5] >= 0 for r in rows), "client and duration recorded")
logs = [l for l in d.log_lines() if l.get("msg") == "request"]
check(len(logs) >= 100 and all("status" in l and "duration_ms" in l and "request_id" in l for l in logs),
      "one structured log line per request (%d)" % len(logs))
check(any(l.get("request_id") == "req-1" and l.get("cache") == "MISS" for l in logs), "log line of req-1")
l1 = [l for l in logs if l.get("request_id") == "req-1"]
PARTS = ("before_queue_ms", "queue_ms", "forward_ms", "build_ms", "store_ms", "resume_ms", "answer_ms")
check(l1 and all(isinstance(l1[0].get(k), (int, float)) and l1[0][k] >= 0 for k in PARTS) and
      l1[0]["store_ms"] > 0 and l1[0]["forward_ms"] > 0 and
      abs(sum(l1[0][k] for k in PARTS) - l1[0]["duration_ms"]) <= 0.005 * l1[0]["duration_ms"] + 0.01,
      "req-1's log line splits its duration into %s (they add up to it): %s"
      % (", ".join(PARTS), l1[:1]))
hit_log = [l for l in logs if l.get("cache") == "HIT" and l.get("route") == "/predict"]
check(hit_log and all("store_ms" not in l for l in hit_log), "a cache hit's log line has no job timings")

rc, secs = d.stop()
check(rc == 0 and secs < 10, "SIGTERM exits 0 (%s) in %.2fs" % (rc, secs))

# a model with the optional convolutions: GET /model reports their widths (0 when absent, above)
check(m["config"]["conv_kernel"] == 0 and m["config"]["local_kernel"] == 0, "no conv / local block: widths 0")
W2 = make_model(os.path.join(T, "cl.safetensors"), conv=3, local=5)
d = Daemon(W2, os.path.join(T, "cl.sqlite")).start()
c2 = d.get("/model").json()["config"]
check(c2["conv_kernel"] == 3 and c2["local_kernel"] == 5, "GET /model reports conv_kernel 3, local_kernel 5: %s" % c2)
r = d.post({"sequence": "MKT<mask>LLVAG"})
check(r.status == 200 and len(r.json()["results"]) == 1, "predict with conv + local blocks: %s" % r.status)
# JSON has one number type: 3.0 is the integer 3 (as JSON Schema's "integer" reads it)
r3 = d.post('{"sequence": "MKT<mask>LLV", "top_k": 3}', headers={"Content-Type": "application/json"})
r30 = d.post('{"sequence": "MKT<mask>LLV", "top_k": 3.0, "mask_positions": [4.0]}', headers={"Content-Type": "application/json"})
check(r3.status == 200 and r30.status == 200 and r30.json()["id"] == r3.json()["id"] and
      r30.json()["results"] == r3.json()["results"], "integral numbers (3.0, 4.0) are the integers 3 and 4: same id and result")
d.stop()
done()
