"""bad_inputs.py - the catalogue of bad (and borderline) inputs performerd is tested with, and what
each returns. One list of cases is both the test data (tests/e2e/test_bad_inputs.py sends every case
to a real daemon and asserts the status and error_type) and the table of server/BAD_INPUTS.md:

    python3 tests/e2e/bad_inputs.py --markdown > server/BAD_INPUTS.md

(the test fails when the committed file differs from what this prints)."""
import json
import sys

SEQ = "MKTAYIAKQR"            # the sequence most cases use (A at 4, K at 2 and 8)
HEX = "0123456789abcdef" * 4  # a well-formed id that names nothing
KEY = "catalogue-key"         # the daemon of the test runs with --api-key KEY
ORIGIN = "https://lab.example.org"   # and --cors-origin ORIGIN
FASTA = {"Content-Type": "text/x-fasta"}


def case(group, what, method, path, body=None, status=200, error_type=None, headers=None, auth=True, show=None,
         raw=None):
    """One case: the request (body: bytes, str, or an object sent as JSON; raw: bytes sent as they are
    instead of an HTTP request) and the expected answer (error_type None: not the JSON error shape)."""
    return {"group": group, "what": what, "method": method, "path": path, "body": body, "status": status,
            "error_type": error_type, "headers": headers or {}, "auth": auth, "show": show, "raw": raw}


P = "/predict"
CASES = [
    # ---- HTTP: routes, methods, auth, content types, sizes -------------------------------------------
    case("HTTP", "unknown route", "GET", "/nope", status=404, error_type="not_found"),
    case("HTTP", "path traversal", "GET", "/predict/../../etc/passwd", status=400, error_type="invalid_id"),
    case("HTTP", "wrong method on a POST route", "GET", P, status=405, error_type="method_not_allowed"),
    case("HTTP", "wrong method on a GET route", "DELETE", "/health", status=405, error_type="method_not_allowed"),
    case("HTTP", "no bearer token (--api-key set)", "POST", P, {"sequence": SEQ}, 401, "unauthorized", auth=False),
    case("HTTP", "wrong bearer token", "POST", P, {"sequence": SEQ}, 401, "unauthorized", auth=False,
         headers={"Authorization": "Bearer " + KEY[:-1]}),
    case("HTTP", "key in another scheme (Basic)", "GET", "/model", status=401, error_type="unauthorized", auth=False,
         headers={"Authorization": "Basic " + KEY}),
    case("HTTP", "/health needs no key", "GET", "/health", auth=False),
    case("HTTP", "Content-Type text/plain", "POST", P, '{"sequence": "MKT"}', 415, "unsupported_media_type",
         headers={"Content-Type": "text/plain"}),
    case("HTTP", "form-encoded body", "POST", P, "sequence=MKT", 415, "unsupported_media_type",
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    case("HTTP", "no Content-Type (a cross-site request without preflight)", "POST", P, '{"sequence": "MKT"}', 415,
         "unsupported_media_type", headers={"Content-Type": None}),
    case("HTTP", "FASTA job as text/plain (a cross-site request without preflight)", "POST", "/jobs?task=logits",
         ">a\nMKT\n", 415, "unsupported_media_type", headers={"Content-Type": "text/plain"}),
    case("HTTP", "gzip-compressed body (Content-Encoding: gzip)", "POST", P,
         b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\x56\x2a\x4e\x2d\x2c\x4d\xcd\x4b\x4e\x55\xb2\x52\x50\xf2\xf5\x0e\x51\xaa\x05\x00",
         415, "unsupported_media_type", headers={"Content-Encoding": "gzip"}, show="(gzip of a JSON body)"),
    case("HTTP", "Content-Length over --max-body (1 GiB announced, nothing sent)", "POST", P, None, 413,
         "payload_too_large", headers={"Content-Length": str(1 << 30)}),
    case("HTTP", "chunked body over --max-body (3 MiB sent, no length)", "POST", P,
         b'{"sequence": "' + b"A" * (3 << 20) + b'"}', 413, "payload_too_large",
         headers={"Transfer-Encoding": "chunked"}, show='{"sequence": "AAAA... (3 MiB)"}'),
    case("HTTP", "CORS preflight from an origin not allowed", "OPTIONS", P, status=403, error_type="cors_origin_denied",
         headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}),
    case("HTTP", "SQL in an X-Request-Id header (replaced by a generated id)", "GET", "/health",
         headers={"X-Request-Id": "x'; DROP TABLE requests;--"}),
    case("HTTP", "a header over 64 KiB (libmicrohttpd's own HTML page)", "GET", "/health", status=431,
         headers={"X-Big": "a" * 70000}, show="X-Big: aaaa... (70,000)"),
    case("HTTP", "a URL over 64 KiB (libmicrohttpd's own HTML page)", "GET", "/predict/" + "a" * 70000, status=414,
         show="/predict/aaaa... (70,000)"),
    case("HTTP", "not HTTP: a TLS hello on the plain port (libmicrohttpd's own HTML page)", "", "", status=400,
         raw=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n"),
    case("HTTP", "Content-Length headers that disagree (request smuggling)", "", "", status=400,
         error_type="bad_request",
         raw=b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 0\r\n"
             b"Content-Length: 19\r\n\r\n{\"sequence\": \"MKT\"}GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
    case("HTTP", "an HTTP/1.1 request without Host", "", "", status=400, error_type="bad_request",
         raw=b"GET /health HTTP/1.1\r\n\r\n"),
    case("HTTP", "Content-Length and Transfer-Encoding together", "", "", status=400, error_type="bad_request",
         raw=b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n13\r\n{\"sequence\": \"MKT\"}\r\n0\r\n\r\n"),
    case("HTTP", "a transfer coding other than chunked", "", "", status=501, error_type="not_implemented",
         raw=b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Transfer-Encoding: gzip, chunked\r\n\r\n13\r\n{\"sequence\": \"MKT\"}\r\n0\r\n\r\n"),
    case("HTTP", "Transfer-Encoding 'chunked ' (a trailing blank libmicrohttpd would not read as chunked)", "", "",
         status=501, error_type="not_implemented",
         raw=b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Transfer-Encoding: chunked \r\n\r\n13\r\n{\"sequence\": \"MKT\"}\r\n0\r\n\r\n"),
    case("HTTP", "Transfer-Encoding in HTTP/1.0", "", "", status=400, error_type="bad_request",
         raw=b"POST /predict HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n13\r\n{\"sequence\": \"MKT\"}\r\n0\r\n\r\n"),
    case("HTTP", "two Host headers", "", "", status=400, error_type="bad_request",
         raw=b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),

    # ---- JSON syntax and shape -------------------------------------------------------------------------
    case("JSON", "empty body", "POST", P, "", 400, "invalid_json"),
    case("JSON", "truncated JSON", "POST", P, '{"sequence": "MKT', 400, "invalid_json"),
    case("JSON", "invalid UTF-8 inside a string", "POST", P, b'{"sequence": "MK\xc3\x28T"}', 400, "invalid_json"),
    case("JSON", "binary garbage", "POST", P, b"\xff\xfe\x00garbage", 400, "invalid_json"),
    case("JSON", "raw NUL byte in the text", "POST", P, b'{"sequence": "MK\x00T"}', 400, "invalid_json"),
    case("JSON", "duplicate key", "POST", P, '{"sequence": "MKT", "sequence": "MKV"}', 400, "invalid_json"),
    case("JSON", "top-level array", "POST", P, [SEQ], 400, "invalid_type"),
    case("JSON", "top-level null", "POST", P, "null", 400, "invalid_json"),
    case("JSON", "top-level string", "POST", P, '"MKT"', 400, "invalid_json"),
    case("JSON", "nested 65 deep", "POST", P, '{"sequence": "MKT", "x": ' + "[" * 64 + "]" * 64 + "}", 400,
         "json_too_deep", show='{"sequence": "MKT", "x": [[[[...64 deep...]]]]}'),
    case("JSON", "a million opening brackets", "POST", P, "[" * 1000000, 400, "json_too_deep", show="[[[[... (1 MB)"),
    case("JSON", "nested 64 deep (parsed; then the unknown field)", "POST", P,
         '{"sequence": "MKT", "x": ' + "[" * 63 + "]" * 63 + "}", 400, "unknown_field",
         show='{"sequence": "MKT", "x": [[[...63 deep...]]]}'),
    case("JSON", "a million values in 2 MB", "POST", P,
         '{"sequence": "MKT", "mask_positions": [' + ",".join(["1"] * 1000000) + "]}", 413, "json_too_large",
         show='{"sequence": "MKT", "mask_positions": [1,1,1,... x 1,000,000]}'),
    case("JSON", "number too large for a double", "POST", P, '{"sequence": "MKT", "top_k": 1e999}', 400, "invalid_json"),
    case("JSON", "integer too large for 64 bits", "POST", P, '{"sequence": "MKT", "top_k": 99999999999999999999999}',
         400, "invalid_json"),

    # ---- fields and types --------------------------------------------------------------------------------
    case("fields", "sequence is a number", "POST", P, {"sequence": 5}, 400, "invalid_type"),
    case("fields", "sequence is null", "POST", P, {"sequence": None}, 400, "invalid_type"),
    case("fields", "sequences is a string", "POST", P, {"sequences": SEQ}, 400, "invalid_type"),
    case("fields", "sequences holds a number", "POST", P, {"sequences": [SEQ, 3]}, 400, "invalid_type"),
    case("fields", "top_k is a string", "POST", P, {"sequence": SEQ, "top_k": "5"}, 400, "invalid_type"),
    case("fields", "top_k is a fraction", "POST", P, {"sequence": SEQ, "top_k": 2.5}, 400, "invalid_type"),
    case("fields", "top_k is true", "POST", P, {"sequence": SEQ, "top_k": True}, 400, "invalid_type"),
    case("fields", "top_k 3.0 (an integral number: JSON has one number type)", "POST", P,
         '{"sequence": "%s", "top_k": 3.0}' % SEQ, 200),
    case("fields", "top_k 1e300 (integral, but not an integer a client means)", "POST", P,
         '{"sequence": "%s", "top_k": 1e300}' % SEQ, 400, "invalid_type"),
    case("fields", "mask_positions holds 2.0", "POST", P, '{"sequence": "%s", "mask_positions": [2.0]}' % SEQ, 200),
    case("fields", "mask_positions holds a fraction", "POST", P, {"sequence": SEQ, "mask_positions": [1.5]}, 400,
         "invalid_type"),
    case("fields", "mask_positions is a number", "POST", P, {"sequence": SEQ, "mask_positions": 2}, 400,
         "invalid_type"),
    case("fields", "both sequence and sequences", "POST", P, {"sequence": SEQ, "sequences": [SEQ]}, 400,
         "invalid_request"),
    case("fields", "neither sequence nor sequences", "POST", P, {"top_k": 3}, 400, "invalid_request"),
    case("fields", "unknown field (typo)", "POST", P, {"sequence": SEQ, "mask_position": [1]}, 400, "unknown_field"),
    case("fields", "a parameter in the query string instead of the body", "POST", P + "?top_k=1", {"sequence": SEQ},
         400, "unknown_field"),

    # ---- sequences -----------------------------------------------------------------------------------------
    case("sequence", "empty string", "POST", P, {"sequence": ""}, 422, "empty_sequence"),
    case("sequence", "whitespace only", "POST", P, {"sequence": " \n\t "}, 422, "empty_sequence"),
    case("sequence", "lower case (accepted: case-insensitive)", "POST", P, {"sequence": SEQ.lower()}),
    case("sequence", "spaces, tabs and newlines inside (accepted: ignored)", "POST", P, {"sequence": "MKT AYI\tAK\nQR"}),
    case("sequence", "<MASK> in upper case (accepted)", "POST", P, {"sequence": "MKT<MASK>YIAKQR"}),
    case("sequence", "FASTA header line in the sequence", "POST", P, {"sequence": ">sp|P12345|TEST\n" + SEQ}, 422,
         "invalid_residue"),
    case("sequence", "digits (numbered GenBank style)", "POST", P, {"sequence": "1 MKTAYIAKQR"}, 422, "invalid_residue"),
    case("sequence", "stop codon *", "POST", P, {"sequence": SEQ + "*"}, 422, "invalid_residue"),
    case("sequence", "gap character -", "POST", P, {"sequence": "MKT-AYIAKQR"}, 422, "invalid_residue"),
    case("sequence", "letter that is no residue (J)", "POST", P, {"sequence": "MKJAYIAKQR"}, 422, "invalid_residue"),
    case("sequence", "non-ASCII letter", "POST", P, {"sequence": "MK\u00c4AYIAKQR"}, 422, "invalid_residue"),
    case("sequence", "escaped NUL (\\u0000)", "POST", P, {"sequence": "MK\u0000T"}, 422, "invalid_residue"),
    case("sequence", "unterminated <mas", "POST", P, {"sequence": "MKT<mas"}, 422, "invalid_residue"),
    case("sequence", "other tag <unk>", "POST", P, {"sequence": "MKT<unk>LLV"}, 422, "invalid_residue"),
    case("sequence", "ambiguity codes X B U Z O (accepted)", "POST", P, {"sequence": "MKXBUZOAK"}),
    case("sequence", "one residue over --max-length", "POST", P, {"sequence": "A" * 40001}, 413, "sequence_too_long",
         show='{"sequence": "AAAA... (40,001)"}'),
    case("sequence", "sequences is empty", "POST", P, {"sequences": []}, 422, "empty_batch"),
    case("sequence", "one sequence over --max-batch", "POST", P, {"sequences": ["MKT"] * 65}, 413, "batch_too_large",
         show='{"sequences": ["MKT", ... x 65]}'),
    case("sequence", "one empty sequence among good ones", "POST", P, {"sequences": [SEQ, ""]}, 422, "empty_sequence"),

    # ---- top_k and mask_positions ----------------------------------------------------------------------------
    case("predict", "top_k 0", "POST", P, {"sequence": SEQ, "top_k": 0}, 422, "invalid_top_k"),
    case("predict", "negative top_k", "POST", P, {"sequence": SEQ, "top_k": -1}, 422, "invalid_top_k"),
    case("predict", "top_k 26 (over 25)", "POST", P, {"sequence": SEQ, "top_k": 26}, 422, "invalid_top_k"),
    case("predict", "huge top_k (2^62)", "POST", P, {"sequence": SEQ, "top_k": 1 << 62}, 422, "invalid_top_k"),
    case("predict", "mask position 0 (positions are 1-based)", "POST", P, {"sequence": SEQ, "mask_positions": [0]}, 422,
         "invalid_mask_position"),
    case("predict", "negative mask position", "POST", P, {"sequence": SEQ, "mask_positions": [-3]}, 422,
         "invalid_mask_position"),
    case("predict", "mask position past the end", "POST", P, {"sequence": SEQ, "mask_positions": [11]}, 422,
         "invalid_mask_position"),
    case("predict", "huge mask position (2^62)", "POST", P, {"sequence": SEQ, "mask_positions": [1 << 62]}, 422,
         "invalid_mask_position"),
    case("predict", "duplicate mask positions (accepted: a set, same id as [2])", "POST", P,
         {"sequence": SEQ, "mask_positions": [2, 2]}),
    case("predict", "mask_positions for fewer sequences than given", "POST", P,
         {"sequences": [SEQ, SEQ], "mask_positions": [[1]]}, 422, "invalid_mask_position"),

    # ---- /score, /embed ------------------------------------------------------------------------------------
    case("score", "mutation without a mutant residue (A4)", "POST", "/score", {"sequence": SEQ, "mutations": ["A4"]},
         422, "invalid_mutation"),
    case("score", "mutation to a non-residue (A4J)", "POST", "/score", {"sequence": SEQ, "mutations": ["A4J"]}, 422,
         "invalid_mutation"),
    case("score", "wild type does not match (G4A)", "POST", "/score", {"sequence": SEQ, "mutations": ["G4A"]}, 422,
         "wild_type_mismatch"),
    case("score", "position past the end (A99G)", "POST", "/score", {"sequence": SEQ, "mutations": ["A99G"]}, 422,
         "invalid_mutation_position"),
    case("score", "position 0 (A0G)", "POST", "/score", {"sequence": SEQ, "mutations": ["A0G"]}, 422,
         "invalid_mutation_position"),
    case("score", "the same mutant twice", "POST", "/score", {"sequence": SEQ, "mutations": ["A4G", "a4g"]}, 422,
         "duplicate_mutation"),
    case("score", "one site twice in a mutant (A4G:A4C)", "POST", "/score", {"sequence": SEQ, "mutations": ["A4G:A4C"]},
         422, "invalid_mutation"),
    case("score", "mutations is a string", "POST", "/score", {"sequence": SEQ, "mutations": "A4G"}, 400, "invalid_type"),
    case("score", "no mutations field", "POST", "/score", {"sequence": SEQ}, 400, "invalid_request"),
    case("score", "unknown method", "POST", "/score", {"sequence": SEQ, "mutations": ["A4G"], "method": "magic"}, 422,
         "invalid_method"),
    case("score", "unknown format", "POST", "/score", {"sequence": SEQ, "mutations": ["A4G"], "format": "table"}, 422,
         "invalid_format"),
    case("score", "format is not a string", "POST", "/score", {"sequence": SEQ, "mutations": ["A4G"], "format": 2}, 400,
         "invalid_type"),
    case("score", "format matrix with a multi-site mutant", "POST", "/score",
         {"sequence": SEQ, "mutations": ["K2R:A4G"], "format": "matrix"}, 422, "invalid_format"),
    case("score", "<mask> in the wild type", "POST", "/score", {"sequence": "MKT<mask>YIAKQR", "mutations": ["K2R"]},
         422, "invalid_residue"),
    case("score", "offset out of range", "POST", "/score", {"sequence": SEQ, "mutations": ["A4G"], "offset": 10 ** 12},
         422, "invalid_offset"),
    case("embed", "layer past the last", "POST", "/embed", {"sequence": SEQ, "layer": 99}, 422, "invalid_layer"),
    case("embed", "layer -2", "POST", "/embed", {"sequence": SEQ, "layer": -2}, 422, "invalid_layer"),
    case("embed", "unknown representation", "POST", "/embed", {"sequence": SEQ, "representations": ["max"]}, 422,
         "invalid_representation"),

    # ---- ids -----------------------------------------------------------------------------------------------------
    case("id", "short id", "GET", "/predict/xyz", status=400, error_type="invalid_id"),
    case("id", "64 characters, not hex", "GET", "/predict/" + "g" * 64, status=400, error_type="invalid_id"),
    case("id", "65 hex digits", "GET", "/predict/" + HEX + "0", status=400, error_type="invalid_id"),
    case("id", "SQL in the id", "GET", "/predict/x'%20OR%20'1'='1", status=400, error_type="invalid_id"),
    case("id", "well-formed id of nothing", "GET", "/predict/" + HEX, status=404, error_type="not_found"),
    case("id", "upper-case id (accepted: same id)", "GET", "/predict/" + HEX.upper(), status=404, error_type="not_found"),
    case("id", "empty id", "GET", "/predict/", status=404, error_type="not_found"),
    case("id", "malformed job id", "GET", "/jobs/abc", status=400, error_type="invalid_id"),
    case("id", "job sub-resource that does not exist", "GET", "/jobs/" + HEX + "/nope", status=404,
         error_type="not_found"),
    case("id", "DELETE of a malformed job id", "DELETE", "/jobs/xyz", status=400, error_type="invalid_id"),
    case("id", "DELETE with a traversal path", "DELETE", "/jobs/../results", status=404, error_type="not_found"),

    # ---- jobs ----------------------------------------------------------------------------------------------------
    case("jobs", "unknown task", "POST", "/jobs", {"task": "fold", "sequences": [SEQ]}, 422, "invalid_task"),
    case("jobs", "no task", "POST", "/jobs", {"sequences": [SEQ]}, 400, "invalid_request"),
    case("jobs", "FASTA without a > header", "POST", "/jobs?task=predict", SEQ + "\n", 422, "invalid_fasta",
         headers=FASTA),
    case("jobs", "FASTA record with a bad residue", "POST", "/jobs?task=predict", ">a\nMKT\n>b\nMK1T\n", 422,
         "invalid_residue", headers=FASTA),
    case("jobs", "FASTA with an unknown query parameter", "POST", "/jobs?task=predict&topk=3", ">a\nMKT\n", 400,
         "unknown_field", headers=FASTA),
    case("jobs", "FASTA as application/json", "POST", "/jobs", ">a\nMKT\n", 400, "invalid_json"),
    case("jobs", "one sequence over --max-job-sequences", "POST", "/jobs",
         {"task": "predict", "sequences": ["MKT"] * 10001}, 413, "too_many_sequences",
         show='{"task": "predict", "sequences": ["MKT", ... x 10,001]}'),
    case("jobs", "limit=0", "GET", "/jobs?limit=0", status=422, error_type="invalid_limit"),
    case("jobs", "limit=abc", "GET", "/jobs?limit=abc", status=422, error_type="invalid_limit"),
]


def request_text(c):
    """The request as shown in the table (abbreviated)."""
    if c["raw"] is not None:
        return "".join(chr(b) if 0x20 <= b < 0x7f else "\\x%02x" % b for b in c["raw"])
    if c["show"] is not None and c["show"].startswith("X-Big"):
        return "%s %s (%s)" % (c["method"], c["path"], c["show"])
    if c["show"] is not None and c["show"].startswith("/"):
        return "%s %s" % (c["method"], c["show"])
    if c["show"] is not None:
        body = c["show"]
    elif c["body"] is None:
        body = ""
    elif isinstance(c["body"], (dict, list)):
        body = json.dumps(c["body"])
    elif isinstance(c["body"], bytes):
        body = "".join(chr(b) if 0x20 <= b < 0x7f else "\\x%02x" % b for b in c["body"])
    else:
        body = c["body"].encode("unicode_escape").decode("ascii")
    if len(body) > 70:
        body = body[:66] + " ..."
    text = "%s %s" % (c["method"], c["path"])
    extra = [k + ": " + v if v is not None else "no " + k for k, v in c["headers"].items()
             if k not in ("Content-Length",) or c["body"] is None]
    if extra:
        text += " (" + "; ".join(extra) + ")"
    if body:
        text += " " + body
    return text.replace("|", "\\|").replace("`", "'")


def markdown():
    """The whole of server/BAD_INPUTS.md."""
    out = ["# Bad inputs: what performerd answers",
           "",
           "Every row is an automated test: `tests/e2e/test_bad_inputs.py` sends each request to a real daemon",
           "(a tiny model, `--api-key`, `--cors-origin %s`; the bearer token is sent unless the row is about" % ORIGIN,
           "it) and checks the status and `error_type`. Errors are the one JSON shape",
           "`{\"error\", \"error_type\", \"request_id\", ...details}` with the `X-Request-Id` header equal to",
           "`request_id`; none of them stores anything or reaches the model. The rows come from",
           "`tests/e2e/bad_inputs.py`; regenerate this file with",
           "`python3 tests/e2e/bad_inputs.py --markdown > server/BAD_INPUTS.md` (the test fails when it is stale).",
           "Rows answered 200 are borderline inputs that are accepted on purpose. Three rows (a header or URL",
           "over 64 KiB, bytes that are not HTTP) are answered by libmicrohttpd itself before any routing, with",
           "its own small HTML page and `Connection: close`, not the JSON shape: it offers no hook for them.",
           "",
           "Not in the table, tested by `tests/e2e/test_hostile.py`: slow headers and slow bodies (cut after",
           "`--connection-timeout`), thousands of idle connections, a chunked body far over the limit (the",
           "connection is closed after a bounded read), and `--max-connections-per-ip`.",
           "",
           "| # | group | input | request | status | error_type |",
           "|---|---|---|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        out.append("| %d | %s | %s | `%s` | %d | %s |" % (i, c["group"], c["what"].replace("|", "\\|"), request_text(c),
                                                       c["status"], "`%s`" % c["error_type"] if c["error_type"] else "-"))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown())
    else:
        sys.exit("usage: python3 tests/e2e/bad_inputs.py --markdown > server/BAD_INPUTS.md")
