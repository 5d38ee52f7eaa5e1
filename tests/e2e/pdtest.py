"""pdtest.py - helpers for the performerd end-to-end tests (python3 standard library only).

Daemon starts the real bin/performerd on 127.0.0.1 with --port 0 (the kernel picks a free port; the
daemon logs it) and a temporary database; every test script kills its daemons at exit."""
import atexit
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
PERFORMERD = os.path.join(BIN, "performerd")
PERFORMER = os.path.join(BIN, "performer")

_daemons = []
_failures = []
_checks = [0]


_tmpdirs = []


def _cleanup():
    for d in _daemons:
        d.kill()
    if not os.environ.get("KEEP_TMP"):
        import shutil
        for t in _tmpdirs:
            shutil.rmtree(t, ignore_errors=True)


atexit.register(_cleanup)
for _s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_s, lambda *a: sys.exit(1))


def check(cond, what):
    """Records one check; prints it when it fails."""
    _checks[0] += 1
    if not cond:
        _failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


def poll(fetch, until=bool, timeout=5.0, interval=0.05):
    """Calls fetch() until until(value) holds or timeout seconds have passed; returns the last value
    (so the caller checks it and reports what it saw). For state the daemon reaches a moment after
    the response, e.g. counters updated in MHD's completion callback or rows written by a logger."""
    t0 = time.time()
    while True:
        v = fetch()
        if until(v) or time.time() - t0 >= timeout:
            return v
        time.sleep(interval)


def done():
    """Prints the summary and exits non-zero when a check failed."""
    print("%d checks, %d failed" % (_checks[0], len(_failures)))
    sys.exit(1 if _failures else 0)


def tmpdir():
    d = tempfile.mkdtemp(prefix="performerd-e2e-")
    _tmpdirs.append(d)
    return d


def make_model(path, seed=1, **kw):
    """Writes a tiny random model with bin/performer init."""
    args = {"layers": 2, "d-model": 32, "heads": 4, "d-ff": 64, "features": 16}
    args.update({k.replace("_", "-"): v for k, v in kw.items()})
    cmd = [PERFORMER, "init", "--out", path, "--seed", str(seed)]
    for k, v in args.items():
        cmd += ["--" + k, str(v)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())


class Daemon:
    """One performerd process."""

    def __init__(self, weights, db, args=(), env=None, workdir=None):
        self.weights, self.db, self.args = weights, db, list(args)
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.dir = workdir or os.path.dirname(db)
        self.proc = None
        self.port = None
        self.log_path = None

    def start(self, timeout=15):
        self.log_path = os.path.join(self.dir, "daemon-%d.log" % int(time.time() * 1e6))
        self.logf = open(self.log_path, "wb")
        cmd = [PERFORMERD, "--bind", "127.0.0.1", "--port", "0", "--weights", self.weights, "--db", self.db] + self.args
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=self.logf, env=self.env)
        _daemons.append(self)
        t0 = time.time()
        while time.time() - t0 < timeout:
            for line in self.log_lines():
                if line.get("msg") == "listening":
                    self.port = int(line["port"])
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError("performerd exited with %s:\n%s" % (self.proc.returncode, self.log_text()))
            time.sleep(0.02)
        raise RuntimeError("performerd did not start:\n" + self.log_text())

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        out = []
        for raw in self.log_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"raw": raw})
        return out

    def request(self, method, path, body=None, headers=None, timeout=60):
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            c.close()

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def post(self, body, headers=None, path="/predict"):
        return self.request("POST", path, body=body, headers=headers)

    def stop(self, sig=signal.SIGTERM, timeout=12):
        """Sends sig and waits; returns (exit status, seconds)."""
        if self.proc is None:
            return (None, 0.0)
        t0, name = time.time(), signal.Signals(sig).name
        if self.proc.poll() is not None:   # it had already exited: a stop cannot be clean
            rc, when = self.proc.returncode, "before the %s was sent" % name
        else:
            self.proc.send_signal(sig)
            when = "after %s" % name
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc, when = None, "not within %ss of %s (killed)" % (timeout, name)
        self.logf.close()
        if rc != 0 and sig in (signal.SIGTERM, signal.SIGINT):   # a stop that should be clean was not: show why
            print("performerd exited with status %s %s; the end of its log:\n%s"
                  % (rc, when, "\n".join(self.log_text().splitlines()[-20:])), flush=True)
        return rc, time.time() - t0

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_daemon_cmd(args, env=None, timeout=15):
    """Runs performerd with args to completion (for start-up failures); returns CompletedProcess."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([PERFORMERD] + list(args), capture_output=True, text=True, env=e, timeout=timeout)


def error_shape(r, status, error_type=None):
    """Checks the one JSON error shape, the status and the X-Request-Id match."""
    ok = check(r.status == status, "status %s, expected %s: %s" % (r.status, status, r.body[:300]))
    try:
        j = r.json()
    except ValueError:
        return check(False, "error body is not JSON: %r" % r.body[:200])
    ok &= check(isinstance(j.get("error"), str) and bool(j["error"]), "error message present: %s" % j)
    ok &= check(isinstance(j.get("error_type"), str), "error_type present: %s" % j)
    ok &= check(j.get("request_id") == r.header("X-Request-Id"), "request_id matches the header: %s" % j)
    if error_type:
        ok &= check(j.get("error_type") == error_type, "error_type %s, expected %s" % (j.get("error_type"), error_type))
    return j


def raw_exchange(port, head, body_chunks=(), timeout=30, pause=0.0):
    """Sends raw request bytes (head, then each chunk, pause seconds after each; send errors ignored:
    the server may answer and close early) and returns the raw response bytes (status line + headers
    + some body)."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    try:
        s.sendall(head)
        for c in body_chunks:
            s.sendall(c)
            if pause:
                time.sleep(pause)
    except OSError:
        pass
    try:
        while True:
            more = s.recv(65536)
            if not more:
                break
            data += more
            if b"\r\n\r\n" in data:
                hdr, _, rest = data.partition(b"\r\n\r\n")
                cl = [l for l in hdr.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if cl and len(rest) >= int(cl[0].split(b":")[1]):
                    break
    except OSError:
        pass
    s.close()
    return data
