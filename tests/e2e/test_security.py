"""Security properties of performerd, checked in the source where timing cannot be measured reliably
and against a daemon where it can be exercised:
- the bearer token is compared in constant time: ut_secret_equal compares SHA-256 digests of equal
  length with CRYPTO_memcmp, and the API key is compared nowhere else;
- no SQL is built from strings: every statement is a string literal (the prepared-statement table,
  fixed PRAGMAs, the migrations) and every value is bound; no sqlite3_mprintf/snprintf of SQL with
  request data;
- ids are validated as 64 hex digits before they reach the database;
- CORS answers only the configured origins (no reflection of an arbitrary Origin, no credentials);
- wrong keys of every length are refused and /health, /ready stay open.
(The container's non-root user and read-only root are checked by docker/test.sh.)"""
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdtest import ROOT, Daemon, check, done, make_model, tmpdir  # noqa: E402

SRC = {}
for name in sorted(os.listdir(os.path.join(ROOT, "server"))):
    if name.endswith(".c"):
        with open(os.path.join(ROOT, "server", name)) as f:
            SRC[name] = f.read()


def function_body(text, name):
    """The text of C function name (from its signature to the closing brace at column 0)."""
    m = re.search(r"^[a-z][^\n;]*\b%s\([^;{]*\)\s*\{\n(.*?)^\}" % re.escape(name), text, re.S | re.M)
    return m.group(1) if m else ""


def calls(fn):
    """(file, line, argument text) of every call of fn in server/*.c."""
    out = []
    for name, text in SRC.items():
        for m in re.finditer(r"\b%s\(" % re.escape(fn), text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            out.append((name, text.count("\n", 0, m.start()) + 1, text[m.end():i - 1]))
    return out


def args(a):
    """Top-level comma-separated arguments."""
    out, depth, cur = [], 0, ""
    in_str = False
    for i, ch in enumerate(a):
        if ch == '"' and (i == 0 or a[i - 1] != "\\"):
            in_str = not in_str
        if not in_str:
            depth += ch in "([{"
            depth -= ch in ")]}"
            if ch == "," and depth == 0:
                out.append(cur.strip())
                cur = ""
                continue
        cur += ch
    out.append(cur.strip())
    return out


LITERAL = re.compile(r'^("([^"\\]|\\.)*"\s*)+$', re.S)

# ---- constant-time token comparison ------------------------------------------------------------------
eq = function_body(SRC["util.c"], "ut_secret_equal")
check("CRYPTO_memcmp(" in eq and eq.count("EVP_sha256()") == 2 and ", 32)" in eq,
      "ut_secret_equal compares two SHA-256 digests (32 bytes each) with CRYPTO_memcmp")
check(not re.search(r"\b(strcmp|strncmp|memcmp|strcasecmp)\(", eq), "ut_secret_equal has no early-exit comparison")
auth = function_body(SRC["http.c"], "authorized")
check("ut_secret_equal(" in auth and "api_key" in auth, "authorized() checks the bearer token with ut_secret_equal")
for name, text in SRC.items():
    for m in re.finditer(r"[^\n]*api_key[^\n]*", text):
        line = m.group(0)
        check(not re.search(r"\b(strcmp|strncmp|memcmp|strcasecmp|strncasecmp)\([^)]*api_key", line),
              "%s: api_key is not compared with a variable-time function: %s" % (name, line.strip()))

# ---- SQL: literals and bound parameters only ----------------------------------------------------------
execs = calls("sqlite3_exec")
check(len(execs) == 1 and execs[0][0] == "cache.c" and function_body(SRC["cache.c"], "exec_sql"),
      "sqlite3_exec is called only inside exec_sql: %s" % execs)
allowed_nonliteral = {"migrations[v]": "compile-time migrations", "sql": "PRAGMA user_version = %d (an int)"}
check(len(calls("exec_sql")) >= 10, "exec_sql calls examined (%d)" % len(calls("exec_sql")))
for f, line, a in calls("exec_sql"):
    sql = args(a)[1] if len(args(a)) > 1 else ""
    if sql == "const char *sql":   # the definition
        continue
    check(LITERAL.match(sql) or sql in allowed_nonliteral, "%s:%d: exec_sql with a literal, not %r" % (f, line, sql))
check(re.search(r'snprintf\(sql, sizeof sql, "PRAGMA user_version = %d", v \+ 1\)', SRC["cache.c"]),
      "the one formatted statement is PRAGMA user_version with an integer")
# cache.c's query_int(db, sql) prepares its argument: every caller passes a literal
qi = [c for c in calls("query_int") if args(c[2])[1] != "const char *sql"]
query_int_literal = len(qi) >= 3 and all(LITERAL.match(args(a)[1]) for _, _, a in qi)
check(query_int_literal, "query_int is called with literals only: %s" % qi)
for fn in ("sqlite3_prepare_v2", "sqlite3_prepare_v3", "sqlite3_prepare"):
    for f, line, a in calls(fn):
        sql = args(a)[1]
        check(LITERAL.match(sql) or sql == "stmt_sql[i]" or (sql == "sql" and f == "cache.c" and query_int_literal),
              "%s:%d: %s of a literal, not %r" % (f, line, fn, sql))
table = re.search(r"static const char \*const stmt_sql\[ST_N\] = \{(.*?)\n\};", SRC["cache.c"], re.S).group(1)
entries = re.findall(r"\[ST_\w+\] = (.*?)(?=,\n    \[ST_|,?\n?$)", table, re.S)
check(len(entries) == len(re.findall(r"\[ST_\w+\] =", table)) >= 20, "every prepared statement examined (%d)" % len(entries))
for entry in entries:
    check(re.fullmatch(r'(\s*("([^"\\]|\\.)*"|DB_JOB_COLS)\s*)+', entry, re.S) is not None,
          "prepared statement is a literal: %s" % entry[:60])
check(len(re.findall(r"\?\d", table)) >= 40, "statements take their values as bound parameters (?1, ?2, ...)")
for fn in ("sqlite3_mprintf", "sqlite3_vmprintf", "sqlite3_snprintf"):
    for f, line, a in calls(fn):
        check(fn == "sqlite3_mprintf" and "sqlite3_column_text(st, 0)" in a and "journal_mode" in SRC[f].splitlines()[line - 2],
              "%s:%d: %s only copies the journal mode PRAGMA's answer: %s" % (f, line, fn, a))
for f, text in SRC.items():
    if f == "cache.c":
        continue
    check(not re.search(r"\bsqlite3_\w+\(", text), "%s: no SQLite calls outside cache.c" % f)

# ---- ids: validated before they reach the database ---------------------------------------------------
get_result = function_body(SRC["http.c"], "get_result")
check(get_result.find("ut_is_hex64(id)") != -1 and get_result.find("ut_is_hex64(id)") < get_result.find("hc_lookup(")
      and "db_get(" not in get_result and "db_get(" in function_body(SRC["hot.c"], "hc_lookup"),
      "GET /predict/{id} validates the id (64 hex) before hc_lookup (the map, then db_get)")
job_id_of = function_body(SRC["http.c"], "job_id_of")
check("ut_is_hex64(tmp)" in job_id_of and "n != 64" in job_id_of, "job ids are validated (64 hex) before use")
is_hex = function_body(SRC["util.c"], "ut_is_hex64")
check("i >= 64" in is_hex and "i == 64" in is_hex, "ut_is_hex64 requires exactly 64 hex digits")
for f, line, a in calls("db_get") + calls("db_job_get") + calls("db_job_delete"):
    if f in ("http.c",):
        ident = args(a)[0]
        check(ident in ("lid", "id", "req->id", "sub->id", "st->result_id", "j.id"),
              "http.c:%d: the id given to the database is a validated or computed one (%s)" % (line, ident))

# ---- against a daemon: keys, open routes, CORS --------------------------------------------------------
T = tmpdir()
W = make_model(os.path.join(T, "m.safetensors"))
KEY = "k3y-" + "x" * 40
d = Daemon(W, os.path.join(T, "s.sqlite"), ["--cors-origin", "https://lab.example.org"], env={"PERFORMERD_API_KEY": KEY}).start()
for wrong in ["", "k", KEY[:-1], KEY + "x", KEY.upper(), "x" * 4096, " " + KEY + "x", KEY[:20]]:
    r = d.get("/model", headers={"Authorization": "Bearer " + wrong})
    check(r.status == 401, "wrong key of length %d refused: %d" % (len(wrong), r.status))
check(d.get("/model", headers={"Authorization": "Bearer " + KEY}).status == 200, "the right key is accepted")
check(d.get("/model", headers={"Authorization": "bearer " + KEY}).status == 200, "the scheme is case-insensitive")
check(d.get("/health").status == 200 and d.get("/ready").status == 200, "/health and /ready need no key")
for origin in ["https://evil.example.com", "null", "https://lab.example.org.evil.com", "https://lab.example.or"]:
    r = d.get("/health", headers={"Origin": origin})
    check(r.header("Access-Control-Allow-Origin") is None and r.header("Vary") == "Origin",
          "origin %s gets no CORS header (and Vary: Origin)" % origin)
check(d.get("/health").header("Vary") == "Origin", "no Origin: Vary: Origin too (a shared cache keeps the copies apart)")
r = d.get("/health", headers={"Origin": "https://lab.example.org"})
check(r.header("Access-Control-Allow-Origin") == "https://lab.example.org" and r.header("Vary") == "Origin"
      and r.header("Access-Control-Allow-Credentials") is None, "the configured origin only, Vary: Origin, no credentials")
d.stop()
done()
