#!/usr/bin/python3
"""Turns the JSON lines of bench/run.sh into RESULTS.md and forward.png (gnuplot).

  report.py report --results results.jsonl --meta DIR --out DIR [--smoke 0|1]
  report.py csv2json --csv train.csv --skip N [--crop C --batch-tokens T --threads N]
                     [--precision fp32|bf16]
      (tokens/s of `performer train` from its CSV log, skipping the first N steps; --precision
      is the one the trainer ran with, recorded as "precision")

Standard library only (any Python 3).
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time

KERNELS = ("favor-softmax", "favor-relu", "exact")

# Targets of the benchmark issue
T_TORCH_RATIO = 5.0
T_MFU = 0.60
T_MFU_MIN_L = 1024
T_PER_RES = 1.3
T_TITIN_S = 10.0
T_TITIN_RSS_MB = 2048
T_TRAIN_RATIO = 3.0
T_HIT_RPS = 20000
T_OVERHEAD = 0.10
T_BATCH_RATIO = 2.0


def raw_rate(s):
    """(mean, before, after) raw model sequences/s of a server record: bench_forward at the
    server's mean batch right after the timed run and, when recorded, right before it (before is
    None without it); None when no raw measurement succeeded. A rate is sequences per mean pass time
    (the server's requests/s is a mean over its run, hiccups included, so the raw rate is one too;
    records without mean_s fall back to the median pass)."""
    rates = []
    for key in ("raw_before", "raw"):
        r = s.get(key) or {}
        t = r.get("mean_s") or r.get("median_s")
        rates.append(r["batch"] / t if r.get("status") == "ok" and t else None)
    before, after = rates
    if after is None:
        return None
    return ((before + after) / 2 if before else after), before, after


# a raw model run whose mean pass took this much longer than its median had hiccups (passes that
# stalled for milliseconds on a loaded host); its sequences per mean pass time understates the model
T_RAW_IRREGULAR = 1.25


def raw_irregular(s):
    """Text naming the raw measurements of a server record (before / after the timed run) whose mean
    pass time exceeded T_RAW_IRREGULAR x the median, or "" when none did. An overhead against such a
    yardstick is too low: a row within the target with one is not counted as met."""
    out = []
    for key, when in (("raw_before", "before"), ("raw", "after")):
        r = s.get(key) or {}
        if r.get("status") == "ok" and r.get("mean_s") and r.get("median_s") and \
                r["mean_s"] > T_RAW_IRREGULAR * r["median_s"]:
            out.append("%s: mean pass %s vs median %s" % (when, secs(r["mean_s"]), secs(r["median_s"])))
    return ("raw passes irregular at c = %d (%s)" % (s["conns"], "; ".join(out))) if out else ""


def overhead_status(met, note, records):
    """(status, note) of a server-overhead row whose overhead is within the target (met) or not, given
    its server records: a row within the target against a raw run with hiccups reads "unclear", and the
    note names every such run (raw_irregular)."""
    irregular = [t for t in (raw_irregular(s) for s in records) if t]
    if not irregular:
        return met, note
    return ("unclear" if met else met), "; ".join(
        [note] * bool(note) + irregular + ["the raw rate is sequences per mean pass, so hiccups make the overhead look smaller"])


def overhead_parts(s):
    """Where a server record's overhead over the raw model goes, as text: the share of wall time
    outside forward passes (1 / busy: storing results, answering, waiting for requests) and how much
    slower the daemon's own forward passes ran than bench_forward at the mean batch (batch sizes
    vary around the mean; HTTP threads and wrk share the cores). The two multiply to the overhead."""
    rr = raw_rate(s)
    dur = s["wrk"].get("duration_s")
    if not rr or not s.get("forward_seconds") or not s.get("forward_sequences") or not dur:
        return ""
    busy = s["forward_seconds"] / dur
    daemon_rate = s["forward_sequences"] / s["forward_seconds"]
    return ("; of it: %+.0f%% from time outside forward passes (busy %.0f%%), %+.0f%% from the forward passes in "
            "the daemon (%s seq/s while in a forward pass vs raw %s: batch sizes vary, HTTP threads share the cores)" % (
                100 * (1 / busy - 1), 100 * busy, 100 * (rr[0] / daemon_rate - 1), fmt(daemon_rate), fmt(rr[0])))


def csv2json(a):
    rows = list(csv.DictReader(open(a.csv)))
    if len(rows) < 2:
        sys.exit("report.py: %s has %d rows" % (a.csv, len(rows)))
    sk = min(a.skip, len(rows) - 2)
    r0, r1 = rows[sk], rows[-1]
    dt = float(r1["elapsed_s"]) - float(r0["elapsed_s"])
    dtok = int(r1["tokens"]) - int(r0["tokens"])
    steps = int(r1["step"]) - int(r0["step"])
    print(json.dumps({"bench": "c_train", "precision": a.precision, "steps": int(r1["step"]), "skip": sk,
                      "crop": a.crop,
                      "batch_tokens": a.batch_tokens, "threads": a.threads,
                      "tokens_per_s": dtok / dt if dt > 0 else None,
                      "mean_step_s": dt / steps if steps else None,
                      "mean_batch_tokens": dtok / steps if steps else None,
                      "first_loss": float(rows[0]["loss"]), "last_loss": float(r1["loss"]),
                      "elapsed_resolution_s": 0.1}))


# ----------------------------------------------------------------------------------------------
def fmt(x, nd=3):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return "{:,.0f}".format(x)
    if abs(x) >= 100:
        return "%.0f" % x
    if abs(x) >= 10:
        return "%.1f" % x
    return ("%%.%dg" % nd) % x


def secs(x):
    if x is None:
        return "–"
    if x >= 1:
        return "%.2f s" % x
    if x >= 1e-3:
        return "%.1f ms" % (x * 1e3)
    return "%.0f µs" % (x * 1e6)


def status(ok):
    """ok: True, False, None (not measured) or "unclear" (within the target against a yardstick the
    run shows to be unreliable)."""
    if ok is None:
        return "not measured"
    if ok == "unclear":
        return "**unclear**"
    return "**met**" if ok else "**missed**"


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def loglog_slope(pts):
    """Least-squares slope of log y vs log x."""
    pts = [(math.log(x), math.log(y)) for x, y in pts if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx > 0 else None


def bf16_missing_reason(bf16_txt, sg_start, lscpu):
    """The text shown for a bf16 figure that this run has not measured, with the reason: the CPU
    lacks AVX-512 BF16 (bench/run.sh's CPU_BF16=0, bench_forward's "bf16_supported": false, or no
    avx512_bf16 in lscpu's flags), the run was told BF16=0, or the run has no bf16 measurement at
    all (results from before bf16 was benchmarked, or a failed bf16 run)."""
    kv = dict(t.split("=", 1) for t in bf16_txt.split() if "=" in t)
    flags = None
    for l in lscpu.splitlines():
        if l.startswith("Flags"):
            flags = l.split(":", 1)[1].split()
    if kv.get("CPU_BF16") == "0" or sg_start.get("bf16_supported") is False or (
            flags is not None and "avx512_bf16" not in flags):
        return "not measured (CPU has no AVX-512 BF16)"
    if kv.get("BF16") == "0":
        return "not measured (skipped: BF16=0)"
    if kv:
        return "not measured (the bf16 runs failed: see the log of bench/run.sh)"
    return "not measured (no bf16 measurement in these results)"


def crossover(fav, exa):
    """fav, exa: dict L -> median seconds. Returns (text, estimate or None)."""
    Ls = sorted(set(fav) & set(exa))
    if not Ls:
        return "not measured (no length with both kernels)", None
    r = {L: fav[L] / exa[L] for L in Ls}
    # first index from which FAVOR stays faster at every larger measured length
    idx = None
    for i in range(len(Ls)):
        if all(r[L] < 1 for L in Ls[i:]):
            idx = i
            break
    if idx is None:
        return ("FAVOR+ is not faster than exact attention at any measured length up to L = %s "
                "(time ratio there %.2f)" % (fmt(Ls[-1]), r[Ls[-1]])), None
    if idx == 0:
        return "FAVOR+ is already faster at the shortest length measured with both (L = %s, ratio %.2f)" % (
            fmt(Ls[0]), r[Ls[0]]), None
    a, b = Ls[idx - 1], Ls[idx]
    la, lb, ra, rb = math.log(a), math.log(b), math.log(r[a]), math.log(r[b])
    est = math.exp(la + (0 - ra) * (lb - la) / (rb - ra)) if rb != ra else b
    return ("between L = %s (FAVOR/exact time %.2f) and L = %s (%.2f); log-interpolated ≈ %s" % (
        fmt(a), r[a], fmt(b), r[b], fmt(round(est)))), est




# symbols of the bf16 matrix products (model/gemm.c): micro-kernels, packing, the blocked loop
BF16_PRODUCT_SYMS = ("kernel_amx", "kernel_bf16", "pack_a_amx", "pack_b_amx", "pack_bf16", "pack_kcontig",
                     "gemm_packed")


def profile_rows(text):
    """(percent, shared object, symbol) of each line of a `perf report --sort dso,symbol` excerpt."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%"):
            try:
                rows.append((float(parts[0][:-1]), parts[1], parts[-1]))
            except ValueError:
                pass
    return rows


def bf16_profile_split(text):
    """(share of the listed samples in the bf16 products, the three largest other symbols) of a bf16
    profile excerpt, or None when it lists nothing."""
    rows = profile_rows(text)
    if not rows:
        return None
    prod = sum(p for p, _, sym in rows if sym.split(".")[0] in BF16_PRODUCT_SYMS)
    rest = [(p, sym) for p, _, sym in rows if sym.split(".")[0] not in BF16_PRODUCT_SYMS]
    return prod, sorted(rest, reverse=True)[:3]


def batching_margin(on, off, pk, kind, peak_name, at_peak):
    """Returns (batched / one-at-a-time requests/s, the margin text) of a server on/off pair; when both
    raw model rates are known, the text adds what the model allows: batching can at best lift
    one-at-a-time to the peak pk."""
    ratio = on["wrk"]["rps"] / off["wrk"]["rps"]
    extra = "batched %s req/s vs --batch-tokens 0 %s req/s" % (fmt(on["wrk"]["rps"]), fmt(off["wrk"]["rps"]))
    r1, rb = off.get("raw") or {}, on.get("raw") or {}
    if pk and r1.get("gflops") and rb.get("gflops"):
        extra += ("; the model bounds it: a %sforward pass runs at %.0f GFLOP/s (%.0f%% of the %s) one "
                  "sequence at a time and %.0f GFLOP/s (%.0f%%) at batch %d, so batching can give at most "
                  "%.2f× (at 100%% of %s)" % (
                      kind, r1["gflops"], 100 * r1["gflops"] / pk, peak_name, rb["gflops"],
                      100 * rb["gflops"] / pk, rb.get("batch", 0), pk / r1["gflops"], at_peak))
    return ratio, extra


def miss_runs(rows, batching):
    """The uncached ("miss") server runs of rows with batching "on" or "off", by concurrency."""
    return {s["conns"]: s for s in rows if s["case"] == "miss" and s["batching"] == batching}

def drift_note(w, start, end, key, what, why):
    """Writes a warning when the start and end measurements of key differ by over 10%."""
    if start.get(key) and end.get(key):
        drift = abs(start[key] - end[key]) / max(start[key], end[key])
        if drift > 0.1:
            w("")
            w("> **The %s changed by %.0f%% between start and end**: the machine was not steady%s; "
              "compare ratios with care." % (what, 100 * drift, why))

def report(a):
    recs = [json.loads(l) for l in open(a.results) if l.strip().startswith("{")]
    meta = a.meta
    smoke = str(a.smoke) == "1"
    by = lambda **kw: [r for r in recs if all(r.get(k) == v for k, v in kw.items())]  # noqa: E731

    info = ([r for r in by(bench="info") if r.get("role") != "native"] or [{}])[0]
    ninfo = (by(bench="info", role="native") or [None])[0]
    # PyTorch and OpenBLAS runs repeated without OPENBLAS_CORETYPE (run.sh's NATIVE): their kernels
    env_core = info.get("openblas_core", "?")
    nat_core = ninfo.get("openblas_core", "?") if ninfo else None
    blas_label = lambda r: nat_core if r.get("role") == "native" else env_core  # noqa: E731
    tinfo = (by(bench="torch_info") or [{}])[0]
    sg_start = (by(bench="sgemm", role="start") or [{}])[0]
    sg_end = (by(bench="sgemm", role="end") or [{}])[0]
    sg_native = (by(bench="sgemm", role="start_native") or [{}])[0]
    shapes = by(bench="sgemm_shape")
    # the float32 peak: the best float32 product rate measured in this run, whichever product
    # reached it: OpenBLAS as configured, OpenBLAS's own kernel choice (OPENBLAS_CORETYPE unset) and
    # the own AVX-512 product the model's float32 products use (square runs at start and end, model
    # shapes)
    peaks = [x.get(k) for x in [sg_start, sg_end, sg_native] + shapes
             for k in ("gflops", "own_gflops") if x.get(k)]
    peak = max(peaks) if peaks else None
    for s in shapes:
        s["frac_of_peak"] = s["gflops"] / peak
    sweep = [r for r in by(bench="forward", role="sweep")]
    cmp_c = by(bench="forward", role="cmp")
    cmp_t = by(bench="torch_forward")
    # the C trainer in float32 (older results have no "precision") and in bf16
    c_train = ([r for r in by(bench="c_train") if r.get("precision", "fp32") == "fp32"] or [None])[0]
    c_train_b = (by(bench="c_train", precision="bf16") or [None])[0]
    # bf16: the C forward of the PyTorch comparison with --precision bf16, and the bf16 product's
    # rates (gm_sgemm_bf16) on the sgemm lines; its peak is the best of them, as for float32
    cmp_b = [r for r in by(bench="forward", role="cmp_bf16") if r.get("precision") == "bf16"]
    bpeaks = [x.get("bf16_gflops") for x in [sg_start, sg_end] + shapes if x.get("bf16_gflops")]
    bpeak = max(bpeaks) if bpeaks else None
    bf16_why = bf16_missing_reason(read(os.path.join(meta, "bf16.txt")), sg_start,
                                   read(os.path.join(meta, "lscpu.txt")))
    bf16_tol = None
    for tok in read(os.path.join(meta, "bf16.txt")).split():
        if tok.startswith("BF16_TOL="):
            bf16_tol = float(tok.split("=", 1)[1])
    # PyTorch training: the faster OpenBLAS configuration per implementation
    t_train = {}
    for r in by(bench="torch_train"):
        if r["impl"] not in t_train or r["tokens_per_s"] > t_train[r["impl"]]["tokens_per_s"]:
            t_train[r["impl"]] = r
    t_train_all = by(bench="torch_train")
    titin = (by(bench="titin") or [None])[0]
    # the server runs in float32 (older results have no "precision") and with --precision bf16
    srv = [s for s in by(bench="server") if s.get("precision", "fp32") == "fp32"]
    srv_b = by(bench="server", precision="bf16")
    srv_rss = ([r for r in by(bench="server_rss") if r.get("precision", "fp32") == "fp32"] or [None])[0]
    srv_rss_b = (by(bench="server_rss", precision="bf16") or [None])[0]
    winfo = read(os.path.join(meta, "weights_info.txt"))
    wcfg = {}
    for line in winfo.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            wcfg[k.strip()] = v.strip()
    default_kernel = wcfg.get("kernel", "favor-relu")

    ok = {k: {r["L"]: r for r in sweep if r["kernel"] == k and r.get("status") == "ok"} for k in KERNELS}
    refused = {k: {r["L"]: r for r in sweep if r["kernel"] == k and r.get("status") != "ok"} for k in KERNELS}

    out = []
    w = out.append
    targets = []   # (target, measured, ok, margin / bound)

    # ---- forward vs torch -------------------------------------------------------------------
    # C and PyTorch run alternately in TORCH_ROUNDS rounds: each side's fastest round counts (the
    # least disturbed by other load on the shared machine)
    fastest = lambda rs: min(rs, key=lambda r: r["median_s"]) if rs else None  # noqa: E731
    # PyTorch counts with its faster OpenBLAS configuration (as set, or native where run.sh ran both)
    torch_best = lambda L, B, impl: fastest([t for t in cmp_t if t["L"] == L and t["batch"] == B  # noqa: E731
                                             and t["impl"] == impl])
    torch_alt = lambda L, B, impl, best: fastest([t for t in cmp_t if t["L"] == L and t["batch"] == B  # noqa: E731
                                                  and t["impl"] == impl
                                                  and t.get("role") != (best or {}).get("role")])
    cmp_rows = []
    for L, B in sorted({(c["L"], c["batch"]) for c in cmp_c if c.get("status") == "ok"}):
        c = fastest([x for x in cmp_c if x.get("status") == "ok" and x["L"] == L and x["batch"] == B])
        c["rounds"] = len([x for x in cmp_c if x["L"] == L and x["batch"] == B])
        ref, bat = torch_best(L, B, "reference"), torch_best(L, B, "batched")
        ceil = None
        if peak and ref:
            ceil = ref["median_s"] / (c["flops"] / (peak * 1e9))
        cmp_rows.append((L, B, c, ref, bat, ceil))
    for L, B, c, ref, bat, ceil in cmp_rows:
        if not ref:
            continue
        ratio = ref["median_s"] / c["median_s"]
        met = ratio >= T_TORCH_RATIO
        extra = "PyTorch's faster OpenBLAS kernels: %s" % blas_label(ref)
        alt = torch_alt(L, B, "reference", ref)
        if alt:
            extra += " (with %s: %.2f×)" % (blas_label(alt), alt["median_s"] / c["median_s"])
        if bat:
            extra += "; vs batched PyTorch %.2f×" % (bat["median_s"] / c["median_s"])
        if not met:
            extra += "; short by %.2f× (needs %.2f× faster C)" % (T_TORCH_RATIO / ratio, T_TORCH_RATIO / ratio)
            if ceil is not None:
                extra += "; ceiling with C at 100%% of the float32 peak: %.1f×" % ceil
        targets.append(("Forward ≥ %g× PyTorch reference, L = %s, batch %d" % (T_TORCH_RATIO, fmt(L), B),
                        "%.2f×" % ratio, met, extra.lstrip("; ")))

    # C with --precision bf16 against the same (float32) PyTorch runs: every round's PyTorch
    # outputs were compared with that round's C bf16 log-probs of the same tokens
    cmp_b_rows = []
    for L, B in sorted({(c["L"], c["batch"]) for c in cmp_b if c.get("status") == "ok"}):
        cb = fastest([x for x in cmp_b if x.get("status") == "ok" and x["L"] == L and x["batch"] == B])
        cb["rounds"] = len([x for x in cmp_b if x["L"] == L and x["batch"] == B])
        c32 = next((r[2] for r in cmp_rows if r[0] == L and r[1] == B), None)
        ref, bat = torch_best(L, B, "reference"), torch_best(L, B, "batched")
        every = [t for t in cmp_t if t["L"] == L and t["batch"] == B and "max_abs_diff_logp_bf16" in t]
        agr = None
        if every:
            agr = {"max": max(t["max_abs_diff_logp_bf16"] for t in every),
                   "mean": max(t.get("mean_abs_diff_logp_bf16", 0) for t in every)
                   if all("mean_abs_diff_logp_bf16" in t for t in every) else None,
                   "top1": min(t["top1_agree_bf16"] for t in every)
                   if all("top1_agree_bf16" in t for t in every) else None,
                   "tol": max(t.get("agree_tol_bf16", 0) for t in every),
                   "agree": all(t.get("agree_bf16") for t in every), "n": len(every)}
        ceil = ref["median_s"] / (cb["flops"] / (bpeak * 1e9)) if bpeak and ref else None
        cmp_b_rows.append((L, B, cb, c32, ref, bat, ceil, agr))
    for L, B, cb, c32, ref, bat, ceil, agr in cmp_b_rows:
        if not ref:
            continue
        ratio = ref["median_s"] / cb["median_s"]
        parts = ["PyTorch's faster OpenBLAS kernels: %s" % blas_label(ref)]
        alt = torch_alt(L, B, "reference", ref)
        if alt:
            parts[0] += " (with %s: %.2f×)" % (blas_label(alt), alt["median_s"] / cb["median_s"])
        if agr:
            parts.append("max \\|Δ log p\\| vs PyTorch %.1e (tolerance %.0e: %s)%s" % (
                agr["max"], agr["tol"], "within" if agr["agree"] else "**OUTSIDE**",
                ", top-1 agreement %.2f%%" % (100 * agr["top1"]) if agr["top1"] is not None else ""))
        else:
            parts.append("agreement not checked")
        if bat:
            parts.append("vs batched PyTorch %.2f×" % (bat["median_s"] / cb["median_s"]))
        if c32:
            parts.append("C bf16 / C fp32 speed %.2f×" % (c32["median_s"] / cb["median_s"]))
        if ratio < T_TORCH_RATIO:
            parts.append("short by %.2f×" % (T_TORCH_RATIO / ratio))
            if ceil is not None:
                parts.append("ceiling with C at 100%% of the bf16 peak: %.1f×" % ceil)
        # met only when it is fast enough and its outputs agree with PyTorch within the tolerance
        met = ratio >= T_TORCH_RATIO and bool(agr and agr["agree"])
        targets.append(("Forward ≥ %g× PyTorch reference (C bf16 vs PyTorch fp32), L = %s, batch %d" % (
            T_TORCH_RATIO, fmt(L), B), "%.2f×" % ratio, met, "; ".join(parts)))
    if not any(ref for _, _, _, _, ref, _, _, _ in cmp_b_rows):
        targets.append(("Forward ≥ %g× PyTorch reference (C bf16 vs PyTorch fp32)" % T_TORCH_RATIO,
                        bf16_why if not cmp_b_rows else "not measured (no PyTorch reference run)", None, ""))

    # ---- MFU ---------------------------------------------------------------------------------
    mfu_rows = [(L, r["gflops"] / peak) for L, r in sorted(ok.get(default_kernel, {}).items())
                if peak and L >= T_MFU_MIN_L]
    if mfu_rows:
        worst = min(mfu_rows, key=lambda x: x[1])
        best = max(mfu_rows, key=lambda x: x[1])
        met = worst[1] >= T_MFU
        extra = "%s: %.0f%%–%.0f%% over L = %s–%s (worst at L = %s)" % (
            default_kernel, 100 * worst[1], 100 * best[1], fmt(mfu_rows[0][0]), fmt(mfu_rows[-1][0]), fmt(worst[0]))
        if not met:
            extra += "; short by %.0f points" % (100 * (T_MFU - worst[1]))
            sh = [s for s in shapes if s["layer"] in ("fc1", "fc2", "qkvo")]
            if sh:
                extra += ("; the model's own linear shapes reach %s of the peak in isolation (the faster of "
                          "OpenBLAS and the own float32 product)" % ", ".join(
                              "%s %.0f%%" % (s["layer"], 100 * max(s["gflops"], s.get("own_gflops") or 0) / peak)
                              for s in sh))
        targets.append(("≥ %.0f%% of the float32 peak at L ≥ %s (batch 1, default kernel %s)" % (
                            100 * T_MFU, fmt(T_MFU_MIN_L), default_kernel),
                        "%.0f%% (worst)" % (100 * worst[1]), met, extra))
    elif smoke:
        targets.append(("≥ %.0f%% of the float32 peak at L ≥ %s" % (100 * T_MFU, fmt(T_MFU_MIN_L)),
                        "not measured (no L ≥ %s in this run)" % fmt(T_MFU_MIN_L), False, ""))
    # bf16: the C bf16 forward passes of the PyTorch comparison against the bf16 peak
    bt = "C bf16 forward ≥ %.0f%% of the bf16 peak at L ≥ %s (the compared lengths and batches)" % (
        100 * T_MFU, fmt(T_MFU_MIN_L))
    bmfu = [(L, B, cb["gflops"] / bpeak) for L, B, cb, _, _, _, _, _ in cmp_b_rows if bpeak and L >= T_MFU_MIN_L]
    if bmfu:
        worst = min(bmfu, key=lambda x: x[2])
        met = worst[2] >= T_MFU
        extra = ", ".join("L = %s batch %d: %.0f%%" % (fmt(L), B, 100 * f) for L, B, f in bmfu)
        extra += "; bf16 peak %s GFLOP/s (%.2f× the fp32 peak)" % (fmt(bpeak), bpeak / peak) if peak else ""
        if not met:
            extra += "; short by %.0f points" % (100 * (T_MFU - worst[2]))
            split = bf16_profile_split(read(os.path.join(meta, "profile_bf16.txt")))
            if split:
                extra += ("; in a bf16 pass at L = %s (profile below) the bf16 products took %.0f%% of the samples "
                          "and the float32 rest the others (largest: %s)" % (
                              fmt(int(read(os.path.join(meta, "profile_L.txt"), "0"))), split[0],
                              ", ".join("%s %.1f%%" % (sym, p) for p, sym in split[1])))
        targets.append((bt, "%.0f%% (worst)" % (100 * worst[2]), met, extra))
    elif not bpeak or not cmp_b_rows:
        targets.append((bt, bf16_why, None, ""))
    else:
        targets.append((bt, "not measured (no L ≥ %s in this run)" % fmt(T_MFU_MIN_L), None, ""))

    # ---- per-residue time and memory ----------------------------------------------------------
    for k in ("favor-softmax", "favor-relu"):
        d = ok.get(k, {})
        if 32768 in d and 1024 in d:
            rr = d[32768]["us_per_position"] / d[1024]["us_per_position"]
            targets.append(("%s time per residue at L = 32,768 within %.1f× of L = 1,024" % (k, T_PER_RES),
                            "%.2f×" % rr, rr <= T_PER_RES,
                            "" if rr <= T_PER_RES else "over by %.2f×" % (rr / T_PER_RES)))
    mem_notes = {}
    for k in ("favor-softmax", "favor-relu"):
        d = ok.get(k, {})
        pts = [(L, (r["peak_rss_kb"] - r["rss_loaded_kb"]) * 1024.0) for L, r in sorted(d.items()) if L >= 2048]
        pts = [(L, m) for L, m in pts if m > 0]
        if len(pts) >= 3:
            # linear = a + b·L: the log-log slope is at most 1 and the bytes each further position
            # adds (Δ memory / ΔL between consecutive lengths) stay the same; fixed-size buffers (the
            # feed-forward block's 2,048 rows) make the bytes per position fall with L, not rise
            s = loglog_slope(pts)
            per = [m / L for L, m in pts]
            marg = [(m2 - m1) / (L2 - L1) for (L1, m1), (L2, m2) in zip(pts, pts[1:])]
            mspread = max(marg) / min(marg) if min(marg) > 0 else float("inf")
            met = s is not None and s <= 1.1 and mspread <= 1.3
            mem_notes[k] = (s, per, marg)
            targets.append(("%s memory linear in L" % k,
                            "log-log slope %.2f (L ≥ 2,048)" % s, met,
                            "each further position adds %s–%s bytes (spread %.2f×); bytes per position "
                            "%s–%s" % (fmt(min(marg)), fmt(max(marg)), mspread, fmt(min(per)), fmt(max(per)))))
    if titin:
        t_ok = titin.get("http_status") == 200 and titin["seconds"] < T_TITIN_S
        m_ok = titin["peak_rss_kb"] / 1024 < T_TITIN_RSS_MB
        note = ""
        if titin["residues"] != 34350:
            note = "only %s residues in this run" % fmt(titin["residues"])
        targets.append(("Titin (34,350 residues) in one request < %g s" % T_TITIN_S,
                        "%s (HTTP %s)" % (secs(titin["seconds"]), titin.get("http_status")),
                        t_ok and not note, note or ("" if t_ok else "over by %.2f×" % (titin["seconds"] / T_TITIN_S))))
        targets.append(("Titin peak RSS < 2 GB (daemon VmHWM)", "%s MB" % fmt(titin["peak_rss_kb"] / 1024),
                        m_ok and not note, note))

    # ---- trainer -------------------------------------------------------------------------------
    if c_train and t_train.get("reference") and c_train.get("tokens_per_s"):
        ratio = c_train["tokens_per_s"] / t_train["reference"]["tokens_per_s"]
        extra = "PyTorch's faster OpenBLAS kernels: %s" % blas_label(t_train["reference"])
        if t_train.get("batched"):
            extra = "vs batched PyTorch %.2f×" % (c_train["tokens_per_s"] / t_train["batched"]["tokens_per_s"])
        if ratio < T_TRAIN_RATIO:
            extra += "; short by %.2f×" % (T_TRAIN_RATIO / ratio)
        targets.append(("Trainer ≥ %g× PyTorch tokens/s (same configuration)" % T_TRAIN_RATIO,
                        "%.2f×" % ratio, ratio >= T_TRAIN_RATIO, extra.lstrip("; ")))
    tt = "Trainer ≥ %g× PyTorch tokens/s (C bf16)" % T_TRAIN_RATIO
    if c_train_b and t_train.get("reference") and c_train_b.get("tokens_per_s"):
        ratio = c_train_b["tokens_per_s"] / t_train["reference"]["tokens_per_s"]
        parts = ["PyTorch's faster OpenBLAS kernels: %s" % blas_label(t_train["reference"])]
        if t_train.get("batched"):
            parts.append("vs batched PyTorch %.2f×" % (c_train_b["tokens_per_s"] / t_train["batched"]["tokens_per_s"]))
        if c_train and c_train.get("tokens_per_s"):
            parts.append("C bf16 / C fp32 %.2f×" % (c_train_b["tokens_per_s"] / c_train["tokens_per_s"]))
        parts.append("loss %.3f → %.3f over %d steps (fp32 C: %s)" % (
            c_train_b["first_loss"], c_train_b["last_loss"], c_train_b["steps"],
            "%.3f → %.3f" % (c_train["first_loss"], c_train["last_loss"]) if c_train else "–"))
        if ratio < T_TRAIN_RATIO:
            parts.append("short by %.2f×" % (T_TRAIN_RATIO / ratio))
        targets.append((tt, "%.2f×" % ratio, ratio >= T_TRAIN_RATIO, "; ".join(parts)))
    elif c_train_b:
        targets.append((tt, "not measured (no PyTorch reference training run)", None, ""))
    else:
        targets.append((tt, bf16_why, None, ""))

    # ---- server --------------------------------------------------------------------------------
    hits = [s for s in srv if s["case"] == "hit"]
    if hits:
        best = max(hits, key=lambda s: s["wrk"]["rps"])
        met = best["wrk"]["rps"] >= T_HIT_RPS
        extra = "" if met else "short by %.2f×" % (T_HIT_RPS / max(best["wrk"]["rps"], 1e-9))
        if best.get("server_cpu_s") is not None and best["wrk"]["requests"]:
            n_req = best["wrk"]["requests"]
            scpu, wcpu = best["server_cpu_s"] / n_req, best["wrk_cpu_s"] / n_req
            ncpu = float(read(os.path.join(meta, "nproc.txt"), "1") or 1)
            extra += "; CPU per request: daemon %.0f µs + wrk %.0f µs → at most %s req/s on %d cores" % (
                1e6 * scpu, 1e6 * wcpu, fmt(ncpu / (scpu + wcpu)) if scpu + wcpu > 0 else "?", ncpu)
            if scpu > 0:
                extra += " (daemon alone on all cores: %s req/s)" % fmt(ncpu / scpu)
        targets.append(("Cache hits ≥ %s requests/s on %s cores" % (fmt(T_HIT_RPS), read(os.path.join(meta, "nproc.txt"))),
                        "%s req/s (c = %d)" % (fmt(best["wrk"]["rps"]), best["conns"]), met, extra.lstrip("; ")))
    miss_on = [s for s in srv if s["case"] == "miss" and s["batching"] == "on" and raw_rate(s)]
    ovh = []
    for s in sorted(miss_on, key=lambda s: s["conns"]):
        raw_rps = raw_rate(s)[0]
        ovh.append((s["conns"], raw_rps / s["wrk"]["rps"] - 1.0, raw_rps, s))
    if ovh:
        worst = max(ovh, key=lambda x: x[1])
        met = worst[1] <= T_OVERHEAD
        met, note = overhead_status(met, "" if met else "worst at c = %d (%.0f%% over)" % (worst[0], 100 * worst[1]) +
                                    overhead_parts(worst[3]), [x[3] for x in ovh])
        targets.append(("Server overhead ≤ %.0f%% over raw model throughput (uncached, %d residues)" % (
            100 * T_OVERHEAD, miss_on[0]["residues"]),
            ", ".join("c%d %+.0f%%" % (c, 100 * o) for c, o, _, _ in ovh), met, note))
    on16 = [s for s in srv if s["case"] == "miss" and s["batching"] == "on" and s["conns"] == 16]
    off16 = [s for s in srv if s["case"] == "miss" and s["batching"] == "off" and s["conns"] == 16]
    if on16 and off16:
        ratio, extra = batching_margin(on16[0], off16[0], peak, "", "float32 peak", "peak")
        targets.append(("Batching: ≥ %g× throughput at c = 16 vs one-at-a-time" % T_BATCH_RATIO,
                        "%.2f×" % ratio, ratio >= T_BATCH_RATIO, extra))
    # bf16: the same on/off pair on daemons with --precision bf16, raw = bench_forward --precision
    # bf16, bounded by the bf16 peak; the faster one-at-a-time is, the less batching can add
    on16_b = [s for s in srv_b if s["case"] == "miss" and s["batching"] == "on" and s["conns"] == 16]
    off16_b = [s for s in srv_b if s["case"] == "miss" and s["batching"] == "off" and s["conns"] == 16]
    ovh_b = [(s["conns"], raw_rate(s)[0] / s["wrk"]["rps"] - 1.0) for s in on16_b if raw_rate(s)]
    ot = "Server overhead ≤ %.0f%% over raw model throughput (bf16, c = 16, uncached%s)" % (
        100 * T_OVERHEAD, ", %d residues" % on16_b[0]["residues"] if on16_b else "")
    if ovh_b:
        met = ovh_b[0][1] <= T_OVERHEAD
        met, note = overhead_status(met, "raw = `bench_forward --precision bf16` at the server's mean batch" +
                                    ("" if met else "; %.0f%% over" % (100 * ovh_b[0][1]) + overhead_parts(on16_b[0])),
                                    on16_b[:1])
        targets.append((ot, "c%d %+.0f%%" % (ovh_b[0][0], 100 * ovh_b[0][1]), met, note))
    elif on16_b:
        targets.append((ot, "not measured (no raw bf16 model run)", None, ""))
    elif not srv_b:
        targets.append((ot, bf16_why, None, ""))
    else:
        targets.append((ot, "not measured (no bf16 batched run at c = 16)", None, ""))
    bt = "Batching: ≥ %g× throughput at c = 16 vs one-at-a-time (bf16)" % T_BATCH_RATIO
    if on16_b and off16_b:
        ratio, extra = batching_margin(on16_b[0], off16_b[0], bpeak, "bf16 ", "bf16 peak", "the bf16 peak")
        if off16:
            extra += "; one-at-a-time bf16 / fp32: %.2f× (c = 16, --batch-tokens 0)" % (
                off16_b[0]["wrk"]["rps"] / off16[0]["wrk"]["rps"])
        targets.append((bt, "%.2f×" % ratio, ratio >= T_BATCH_RATIO, extra))
    elif not srv_b:
        targets.append((bt, bf16_why, None, ""))
    else:
        targets.append((bt, "not measured (no bf16 %s run at c = 16)" % (
            "batched" if not on16_b else "--batch-tokens 0"), None, ""))

    # =============================================================================================
    w("# Benchmark results")
    w("")
    w("Written by `make bench` (`bench/run.sh`) on %s in %s s. **Ratios are the result; absolute "
      "times are context for this machine only.**" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                      read(os.path.join(meta, "elapsed.txt"), "?")))
    w("")
    if smoke:
        w("> **SMOKE RUN** (`SMOKE=1`): tiny lengths, few repeats, 2 s wrk runs, an 8 MB exact-attention "
          "limit. It checks the pipeline only; none of the numbers below mean anything.")
        w("")
    load = read(os.path.join(meta, "load_start.txt")).split()
    nproc = int(read(os.path.join(meta, "nproc.txt"), "1") or 1)
    busy_start = read(os.path.join(meta, "busy_start.txt"))
    busy_end = read(os.path.join(meta, "busy_end.txt"))
    # the measured CPU busy fraction decides (the load average lags by minutes); old runs without it
    # fall back to the load average
    busy = float(busy_start) > 0.15 if busy_start else bool(load and float(load[0]) > 0.5 * nproc)
    if busy:
        w("> **Warning: the machine was busy** when the run started (CPU busy %s over 3 s; load average "
          "%s on %d CPUs). Timings are unreliable; rerun on an idle machine. Top processes:" % (
              "%.0f%%" % (100 * float(busy_start)) if busy_start else "?", " ".join(load[:3]), nproc))
        w("")
        w("```")
        w(read(os.path.join(meta, "top_start.txt")))
        w("```")
        w("")
    w("Weights: `%s` (sha256 `%s…`), %s layers, d_model %s, %s heads, d_ff %s, %s features, default kernel "
      "`%s`, trained: %s. Threads: %s for C and PyTorch alike." % (
          wcfg.get("file", "?"), read(os.path.join(meta, "weights_sha.txt"))[:16], wcfg.get("layers", "?"),
          wcfg.get("d_model", "?"), wcfg.get("heads", "?"), wcfg.get("d_ff", "?"), wcfg.get("features", "?"),
          default_kernel, wcfg.get("trained", "?"), read(os.path.join(meta, "env.txt")).split("THREADS=")[-1].split()[0]))
    w("")

    w("## Targets")
    w("")
    w("| target | measured | status | margin / what bounds it |")
    w("|---|---|---|---|")
    for t, m, met, extra in targets:
        w("| %s | %s | %s | %s |" % (t, m, status(met), extra))
    w("")

    # ---- machine --------------------------------------------------------------------------------
    w("## Machine")
    w("")
    lscpu = read(os.path.join(meta, "lscpu.txt"))
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache",
            "Hypervisor vendor", "Vendor ID", "CPU family", "Model:")
    lines = [l for l in lscpu.splitlines() if l.startswith(keep)]
    flags = ""
    for l in lscpu.splitlines():
        if l.startswith("Flags"):
            fl = l.split(":", 1)[1].split()
            flags = " ".join(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx_vnni") if f in fl)
    mem = [l for l in lscpu.split("---")[-1].splitlines() if l.startswith("Mem:")]
    w("```")
    for l in lines:
        w(l)
    if flags:
        w("SIMD flags:        " + flags)
    if mem:
        w("Memory:            %.1f GiB" % (int(mem[0].split()[1]) / 2 ** 30))
    w("Kernel:            " + read(os.path.join(meta, "uname.txt")))
    w("Debian:            " + read(os.path.join(meta, "debian.txt")))
    w("Compiler:          " + read(os.path.join(meta, "cc.txt")))
    w("C OpenBLAS:        core %s; %s; OPENBLAS_CORETYPE=%s; %s threads" % (
        info.get("openblas_core", "?"), info.get("openblas_config", "?"), info.get("openblas_coretype_env", "") or "(unset)",
        info.get("openblas_threads", "?")))
    w("C bf16 kernel:     %s" % {"amx": "AMX tiles (TDPBF16PS)", "avx512_bf16": "AVX-512 BF16 (VDPBF16PS)",
                                  "none": "none (CPU has no AVX-512 BF16)"}.get(info.get("bf16_kernel"), "?"))
    w("PyTorch:           %s (%s threads), BLAS %s, core %s" % (
        tinfo.get("torch", "?"), tinfo.get("threads", "?"),
        ", ".join(os.path.basename(x) for x in tinfo.get("blas_libs", [])) or "?", tinfo.get("openblas_core", "?")))
    w("OMP_WAIT_POLICY:   %s (C), %s (PyTorch)" % (info.get("omp_wait_policy") or "(unset)",
                                                   tinfo.get("omp_wait_policy") or "(unset)"))
    w("GOMP_SPINCOUNT:    %s (C), %s (PyTorch)" % (info.get("gomp_spincount") or "(unset)",
                                                   tinfo.get("gomp_spincount") or "(unset)"))
    w("Load average:      start %s, end %s" % (" ".join(load[:3]),
                                                " ".join(read(os.path.join(meta, "load_end.txt")).split()[:3])))
    if busy_start:
        w("CPU busy (3 s):    start %.0f%%, end %s (all CPUs, /proc/stat; the benchmark itself is not "
          "running during either sample)" % (100 * float(busy_start),
                                             "%.0f%%" % (100 * float(busy_end)) if busy_end else "?"))
    commit = read(os.path.join(meta, "commit.txt")).splitlines()
    w("Commit:            %s%s; source digest %s (sha256 of model/ server/ bench/*.c sources, changes "
      "with uncommitted edits)" % (commit[0] if commit else "?", " (%s)" % commit[1] if len(commit) > 1 else "",
                                  read(os.path.join(meta, "srcdigest.txt"))))
    w("```")
    w("")

    # ---- forward ------------------------------------------------------------------------------
    w("## Forward pass: latency and peak memory vs length (batch 1)")
    w("")
    prm = {}
    for tok in read(os.path.join(meta, "params.txt")).split():
        if "=" in tok:
            prm[tok.split("=", 1)[0]] = tok.split("=", 1)[1]
    w("One process per (kernel, L): `bench_forward forward` loads the weights, runs one warm-up pass "
      "and then timed passes (median of at least %s passes and %s s; one pass when the warm-up took over "
      "%s s), and reports its peak RSS (VmHWM, including the mapped weights). L counts framed positions "
      "(`<cls>` + L−2 random standard residues + `<eos>`); titin (34,350 residues) is L = 34,352. "
      "GFLOP/s counts the matrix products of weights/FORMAT.md (2 FLOPs per multiply-add); "
      "%% peak is against the float32 peak (Model FLOP utilisation, below)." % (
          prm.get("MIN_REPS", "?"), prm.get("MIN_TIME", "?"), prm.get("SINGLE_OVER", "?")))
    w("")
    w("![time and memory vs L](forward.png)")
    w("")
    allL = sorted({r["L"] for r in sweep})
    w("| L | " + " | ".join("%s time | µs/pos | GFLOP/s (%% peak) | peak RSS MB" % k for k in KERNELS) + " |")
    w("|---:|" + "---:|---:|---:|---:|" * len(KERNELS))
    for L in allL:
        cells = []
        for k in KERNELS:
            r = ok[k].get(L)
            if r:
                pp = " (%.0f%%)" % (100 * r["gflops"] / peak) if peak else ""
                cells += [secs(r["median_s"]), fmt(r["us_per_position"]), "%s%s" % (fmt(r["gflops"]), pp),
                          fmt(r["peak_rss_kb"] / 1024)]
            elif L in refused[k]:
                st = refused[k][L].get("status")
                cells += ["refused: over memory limit" if st == "refused" else "error", "", "", ""]
            else:
                cells += ["–", "", "", ""]
        w("| %s | %s |" % (fmt(L), " | ".join(cells)))
    w("")
    for k in ("favor-softmax", "favor-relu"):
        txt, _ = crossover({L: r["median_s"] for L, r in ok[k].items()},
                           {L: r["median_s"] for L, r in ok["exact"].items()})
        w("* **Crossover, %s vs exact:** %s." % (k, txt))
    for k in ("favor-softmax", "favor-relu"):
        d = ok[k]
        if 1024 in d and 32768 in d:
            w("* **%s time per position:** %.2f µs at L = 1,024, %.2f µs at L = 32,768 (ratio %.2f)." % (
                k, d[1024]["us_per_position"], d[32768]["us_per_position"],
                d[32768]["us_per_position"] / d[1024]["us_per_position"]))
        if k in mem_notes:
            s, per, marg = mem_notes[k]
            w("* **%s memory:** activation memory (peak RSS − RSS after loading) grows as L^%.2f for "
              "L ≥ 2,048, %s–%s bytes per position; each further position adds %s–%s bytes." % (
                  k, s, fmt(min(per)), fmt(max(per)), fmt(min(marg)), fmt(max(marg))))
    if ok["exact"]:
        Lx = max(ok["exact"])
        w("* **exact:** longest accepted L = %s (peak RSS %s MB); longer lengths are refused by the "
          "L × L memory limit, not run." % (fmt(Lx), fmt(ok["exact"][Lx]["peak_rss_kb"] / 1024)))
    tl = [r for r in sweep if r["L"] == 34352 and r.get("status") == "ok"]
    for r in tl:
        w("* **titin forward (%s, in-process):** %s per pass (first pass, with allocation: %s), peak RSS %s MB." % (
            r["kernel"], secs(r["median_s"]), secs(r["first_s"]), fmt(r["peak_rss_kb"] / 1024)))
    w("")

    prof = read(os.path.join(meta, "profile.txt"))
    if prof:   # keep the column alignment that read() strips from the first line
        prof = "\n".join(l.rstrip() for l in open(os.path.join(meta, "profile.txt")) if l.strip())
    if prof:
        w("Where one forward pass (`%s`, L = %s, batch 1) spends its time — `perf record` of warm-up + 3 "
          "passes, by shared object and symbol (`kernel_f32_direct` / `kernel_bf16`: the own matrix products of model/gemm.c; `sgemm_*`: OpenBLAS's; `*._omp_fn.*`: the "
          "element-wise loops of model/ops.c):" % (default_kernel, fmt(int(read(os.path.join(meta, "profile_L.txt"), "0")))))
        w("")
        w("```")
        w(prof)
        w("```")
        w("")

    # ---- torch ----------------------------------------------------------------------------------
    w("## C vs PyTorch on the same weights")
    w("")
    w("The same weights file and the same tokens (written by `bench_forward --tokens-out`), kernel `%s`, "
      "%s threads each. `reference` is `tests/reference/performer_ref.py` as it is (one sequence and one "
      "head at a time); `batched` is the same mathematics vectorised over batch and heads "
      "(`bench/bench_torch.py:forward_batched`), faster than the reference at some sizes and slower at others (both are shown). Every timed PyTorch pass is "
      "compared with the C log-probs (max |Δ log p|). *Ceiling* is the ratio C would reach at 100%% of "
      "the measured float32 peak. C and PyTorch ran alternately, %s round(s) each (C, PyTorch, C, PyTorch, …, "
      "each a fresh process); each side's fastest round is shown — the one least disturbed by other "
      "load on the shared machine.%s" % (default_kernel, tinfo.get("threads", "?"),
                                       max([c.get("rounds", 1) for _, _, c, _, _, _ in cmp_rows] or [1]),
                                       (" **PyTorch ran with two OpenBLAS kernel sets**: as this machine is "
                                        "configured (OPENBLAS_CORETYPE=%s: the %s kernels) and with OPENBLAS_CORETYPE "
                                        "unset (OpenBLAS's own choice for this CPU: %s); the ratios and targets count "
                                        "the faster of the two for each case, since the C float32 products use "
                                        "their own AVX-512 kernel (model/gemm.c) whatever OpenBLAS is set to." % (
                                            info.get("openblas_coretype_env", "?"), env_core, nat_core))
                                       if nat_core else ""))
    w("")
    w("| L | batch | C | PyTorch reference (faster OpenBLAS) | **ratio** | other OpenBLAS | ratio | PyTorch batched (faster) | ratio | ceiling | max \\|Δ log p\\| | agree |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for L, B, c, ref, bat, ceil in cmp_rows:
        alt = torch_alt(L, B, "reference", ref)
        every = [t for t in cmp_t if t["L"] == L and t["batch"] == B]   # all rounds are checked
        diffs = [x["max_abs_diff_logp"] for x in every if "max_abs_diff_logp" in x]
        agree = all(x.get("agree") for x in every if "agree" in x)
        w("| %s | %d | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s |" % (
            fmt(L), B, secs(c["median_s"]), "%s (%s)" % (secs(ref["median_s"]), blas_label(ref)) if ref else "–",
            "%.2f×" % (ref["median_s"] / c["median_s"]) if ref else "–",
            "%s (%s)" % (secs(alt["median_s"]), blas_label(alt)) if alt else "–",
            "%.2f×" % (alt["median_s"] / c["median_s"]) if alt else "–",
            "%s (%s)" % (secs(bat["median_s"]), blas_label(bat)) if bat else "–",
            "%.2f×" % (bat["median_s"] / c["median_s"]) if bat else "–",
            "%.1f×" % ceil if ceil else "–",
            "%.1e" % max(diffs) if diffs else "–", "yes" if agree and diffs else "**NO**" if diffs else "–"))
    w("")
    w("### C bf16 vs PyTorch float32")
    w("")
    if cmp_b_rows:
        w("The C side again with `--precision bf16`: every weight product (q, k, v, o, fc1, fc2, the local "
          "block's output projection, the head) rounds both its operands to bfloat16 (8-bit mantissa, round to "
          "nearest even) and accumulates in float32 (`gm_sgemm_bf16`: AVX-512 BF16, or AMX tiles where the CPU has them, see Machine); the FAVOR+ attention "
          "stays float32 (the fused kernel `favor_forward_fused`, as in float32 C), and so do normalisation, "
          "softmax and the rest. **PyTorch runs float32 throughout**, so these ratios compare C "
          "with less precise arithmetic against the same float32 PyTorch runs as above (same tokens; in each "
          "round C float32, C bf16, then PyTorch). Every timed PyTorch pass is compared with the C bf16 "
          "log-probs too, with its own, looser tolerance%s; *top-1* is the fraction of positions where both "
          "rank the same residue first. A bf16 target row is met only when C bf16 is fast enough *and* "
          "agrees within that tolerance. The tokens are random residues, "
          "so this checks the arithmetic, not the model: the effect of bf16 on model quality (perplexity and "
          "accuracy on held-out proteins) is measured in `weights/MODEL_CARD.md`, not here." % (
              " of %g (`BF16_TOL` of bench/run.sh; the float32 check above keeps 1e-3)" % bf16_tol
              if bf16_tol is not None else " (the float32 check above keeps 1e-3)"))
        w("")
        w("| L | batch | C bf16 | C fp32 | bf16 speed-up | PyTorch reference (faster OpenBLAS) | **ratio** | PyTorch batched (faster) | ratio "
          "| ceiling (bf16 peak) | max \\|Δ log p\\| | mean \\|Δ log p\\| | top-1 | agree |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for L, B, cb, c32, ref, bat, ceil, agr in cmp_b_rows:
            w("| %s | %d | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s |" % (
                fmt(L), B, secs(cb["median_s"]), secs(c32["median_s"]) if c32 else "–",
                "%.2f×" % (c32["median_s"] / cb["median_s"]) if c32 else "–",
                "%s (%s)" % (secs(ref["median_s"]), blas_label(ref)) if ref else "–",
                "%.2f×" % (ref["median_s"] / cb["median_s"]) if ref else "–",
                "%s (%s)" % (secs(bat["median_s"]), blas_label(bat)) if bat else "–",
                "%.2f×" % (bat["median_s"] / cb["median_s"]) if bat else "–",
                "%.1f×" % ceil if ceil else "–",
                "%.1e" % agr["max"] if agr else "–",
                "%.1e" % agr["mean"] if agr and agr["mean"] is not None else "–",
                "%.2f%%" % (100 * agr["top1"]) if agr and agr["top1"] is not None else "–",
                ("yes (≤ %g)" % agr["tol"] if agr["agree"] else "**NO** (> %g)" % agr["tol"]) if agr else "–"))
    else:
        w("C bf16: %s." % bf16_why)
    w("")

    # ---- MFU --------------------------------------------------------------------------------------
    w("## Model FLOP utilisation")
    w("")
    if peak:
        w("sgemm (%s³ `cblas_sgemm`, OpenBLAS %s, best of %s, %s threads): %s GFLOP/s at the start, %s GFLOP/s at the "
          "end of the run%s; the own float32 product (`gm_sgemm_f32`, AVX-512, what the model's float32 "
          "products use): %s GFLOP/s at the start, %s at the end. **Peak = %s GFLOP/s**, the best float32 "
          "product rate measured in this run by any of them (these runs and the model shapes below); all "
          "%% of peak figures use it." % (
              fmt(sg_start.get("n")), env_core, sg_start.get("reps"), sg_start.get("threads"), fmt(sg_start.get("gflops")),
              fmt(sg_end.get("gflops")),
              "; OpenBLAS %s (OPENBLAS_CORETYPE unset): %s GFLOP/s" % (nat_core, fmt(sg_native.get("gflops")))
              if sg_native.get("gflops") else "",
              fmt(sg_start.get("own_gflops")), fmt(sg_end.get("own_gflops")), fmt(peak)))
        drift_note(w, sg_start, sg_end, "gflops", "sgemm rate", " (other load, frequency or thermal changes)")
        w("")
    if shapes:
        w("The model's own products as `matmul_forward` calls them (`out[T, N] = in[T, K] W[N, K]^T`), in "
          "isolation — what a forward pass could reach at best:")
        w("")
        w("| layer | M × N × K | OpenBLAS GFLOP/s | % of peak | own float32 GFLOP/s | % of peak |")
        w("|---|---|---:|---:|---:|---:|")
        for s in shapes:
            w("| %s | %d × %d × %d | %s | %.0f%% | %s | %s |" % (
                s["layer"], s["M"], s["N"], s["K"], fmt(s["gflops"]), 100 * s["frac_of_peak"],
                fmt(s.get("own_gflops")) if s.get("own_gflops") else "–",
                "%.0f%%" % (100 * s["own_gflops"] / peak) if s.get("own_gflops") else "–"))
        w("")
    d = ok.get(default_kernel, {})
    if d and peak:
        w("Forward pass, `%s`, batch 1: " % default_kernel + ", ".join(
            "L = %s: %s GFLOP/s (%.0f%%)" % (fmt(L), fmt(r["gflops"]), 100 * r["gflops"] / peak)
            for L, r in sorted(d.items())) + ".")
        w("")
        r = d[max(d)]
        w("FLOP split at L = %s: linear layers %.0f%%, attention %.0f%%, head %.1f%%." % (
            fmt(max(d)), 100 * r["flops_linear"] / r["flops"], 100 * r["flops_attention"] / r["flops"],
            100 * r["flops_head"] / r["flops"]))
        w("")
    for L, B, c, ref, bat, ceil in cmp_rows:
        if peak:
            w("* L = %s, batch %d: C %s GFLOP/s (%.0f%% of peak)%s." % (
                fmt(L), B, fmt(c["gflops"]), 100 * c["gflops"] / peak,
                "; PyTorch reference %s GFLOP/s" % fmt(c["flops"] / ref["median_s"] * 1e-9) if ref else ""))
    w("")

    w("### bf16")
    w("")
    if bpeak:
        w("The bf16 product `gm_sgemm_bf16` (bf16 operands, float32 accumulation; %s³, best of %s, %s threads): "
          "%s GFLOP/s at the start, %s GFLOP/s at the end of the run. **bf16 peak = %s GFLOP/s**, the best "
          "bf16 rate measured in this run (these two and the model shapes below)%s; the bf16 %% of peak "
          "figures use it." % (
              fmt(sg_start.get("n")), sg_start.get("reps"), sg_start.get("threads"),
              fmt(sg_start.get("bf16_gflops")), fmt(sg_end.get("bf16_gflops")), fmt(bpeak),
              ", %.2f× the float32 peak" % (bpeak / peak) if peak else ""))
        drift_note(w, sg_start, sg_end, "bf16_gflops", "bf16 product's rate", "")
        w("")
        bsh = [s for s in shapes if s.get("bf16_gflops")]
        if bsh:
            w("| layer | M × N × K | bf16 GFLOP/s | % of bf16 peak | bf16 / own fp32 rate | bf16 / OpenBLAS fp32 rate |")
            w("|---|---|---:|---:|---:|---:|")
            for s in bsh:
                w("| %s | %d × %d × %d | %s | %.0f%% | %s | %.2f× |" % (
                    s["layer"], s["M"], s["N"], s["K"], fmt(s["bf16_gflops"]), 100 * s["bf16_gflops"] / bpeak,
                    "%.2f×" % (s["bf16_gflops"] / s["own_gflops"]) if s.get("own_gflops") else "–",
                    s["bf16_gflops"] / s["gflops"]))
            w("")
    else:
        w("bf16 peak: %s." % bf16_why)
        w("")
    if bpeak and cmp_b_rows:
        w("C forward with `--precision bf16` (the runs of the PyTorch comparison). The FLOPs are the same "
          "count as for float32; the weight products (the linear layers and the head: %s) run in bf16, "
          "the attention and the element-wise work in float32, so %% of the bf16 peak "
          "understates how well the bf16 products themselves run:" % ", ".join(
              "%.0f%% of the FLOPs at L = %s" % (100 * (cb["flops_linear"] + cb["flops_head"]) / cb["flops"], fmt(L))
              for L, B, cb, _, _, _, _, _ in cmp_b_rows if B == min(x[1] for x in cmp_b_rows)))
        w("")
        for L, B, cb, c32, ref, bat, ceil, agr in cmp_b_rows:
            w("* L = %s, batch %d, bf16: C %s GFLOP/s (%.0f%% of the bf16 peak, %s of the float32 peak)%s." % (
                fmt(L), B, fmt(cb["gflops"]), 100 * cb["gflops"] / bpeak,
                "%.0f%%" % (100 * cb["gflops"] / peak) if peak else "–",
                "; C fp32 %s GFLOP/s" % fmt(c32["gflops"]) if c32 else ""))
        w("")
        bprof = read(os.path.join(meta, "profile_bf16.txt"))
        if bprof:
            bprof = "\n".join(l.rstrip() for l in open(os.path.join(meta, "profile_bf16.txt")) if l.strip())
            w("Where one bf16 forward pass (L = %s, batch 1) spends its time — `perf record` as above with "
              "`--precision bf16` (`kernel_amx` / `kernel_bf16`: the bf16 micro-kernels on AMX tiles / AVX-512 "
              "BF16, `pack_*`: their operand packing; `fz_*`: the float32 FAVOR+ attention):" % fmt(
                  int(read(os.path.join(meta, "profile_L.txt"), "0"))))
            w("")
            w("```")
            w(bprof)
            w("```")
            w("")

    # ---- batches of short sequences ----------------------------------------------------------
    sp_rows = []
    for prec in ("fp32", "bf16"):
        cases = sorted({(r["L"], r["batch"]) for r in by(bench="forward", role="seqpar_0")
                        if r.get("precision") == prec and r.get("status") == "ok"})
        for L, B in cases:
            off = [r["median_s"] for r in by(bench="forward", role="seqpar_0", L=L, batch=B)
                   if r.get("precision") == prec and r.get("status") == "ok"]
            on = [r for r in by(bench="forward", role="seqpar_default", L=L, batch=B)
                  if r.get("precision") == prec and r.get("status") == "ok"]
            if off and on:
                sp_rows.append((prec, L, B, min(off), min(r["median_s"] for r in on),
                                on[0].get("seq_parallel_len"), on[0].get("group_tokens"),
                                on[0].get("seq_group_tokens")))
    if sp_rows:
        # the group size of each precision's runs (bf16 on AMX tiles has its own default)
        groups = {}
        for r in sp_rows:
            groups.setdefault(r[0], r[6])
        group_note = "".join("; %s tokens in %s on AMX tiles, `PF_GROUP_TOKENS_AMX_DEFAULT`" % (fmt(g), p)
                             for p, g in groups.items() if g not in (None, sp_rows[0][6]))
        # a cap on the sequence-parallel groups (bench_forward's "seq_group_tokens"; 0 = none)
        caps = {}
        for r in sp_rows:
            if r[7]:
                caps.setdefault(r[0], r[7])
        cap_note = "".join(" In %s the sequence-parallel groups hold at most %s tokens (`PF_SEQ_GROUP_TOKENS_AMX_DEFAULT` "
                           "on AMX tiles), so a thread's share of a larger batch is cut into several." % (p, fmt(g))
                           for p, g in caps.items())
        w("## Batches of short sequences: sequence-parallel")
        w("")
        w("A batch of two or more sequences none longer than `PF_SEQ_PARALLEL_LEN_DEFAULT` (%s positions) runs "
          "sequence-parallel (model/forward.c): groups of whole sequences side by side on the threads, each "
          "thread on its own arena with single-threaded products, instead of every operation on all threads "
          "in turn (`bench_forward --seq-parallel-len 0`). Longer batches run in groups of at most %s tokens "
          "(`PF_GROUP_TOKENS_DEFAULT`%s) one after another, so the arena holds one group.%s Both settings, "
          "alternately, two rounds; each cell is the faster round's median:" % (
              sp_rows[0][5], fmt(sp_rows[0][6]), group_note, cap_note))
        w("")
        w("| precision | L | batch | each operation on all threads | sequence-parallel | **speed-up** |")
        w("|---|---:|---:|---:|---:|---:|")
        for prec, L, B, t_off, t_on, _, _, _ in sp_rows:
            w("| %s | {:,} | %d | %s | %s | **%.2f×** |".format(L) % (prec, B, secs(t_off), secs(t_on), t_off / t_on))
        w("")

    # ---- trainer --------------------------------------------------------------------------------
    w("## Trainer")
    w("")
    if c_train:
        w("Same configuration for both: the weights' architecture and kernel, crops of at most %s positions "
          "with random offsets, batches of up to %s tokens in file order from `%s`, 15%% masking "
          "(80/10/10), AdamW (β = 0.9, 0.98; weight decay 0.01 on matrices), gradient clipping 1.0, %s "
          "threads. Tokens/s over the steps after the first %d (warm-up)." % (
              c_train["crop"], fmt(c_train["batch_tokens"]), read(os.path.join(meta, "data.txt")),
              c_train["threads"], c_train["skip"]))
        w("")
        w("| trainer | steps timed | tokens/step | s/step | tokens/s | C / this |")
        w("|---|---:|---:|---:|---:|---:|")
        w("| C `performer train` | %d | %s | %s | %s | 1.00× |" % (
            c_train["steps"] - c_train["skip"], fmt(c_train["mean_batch_tokens"]), secs(c_train["mean_step_s"]),
            fmt(c_train["tokens_per_s"])))
        for impl in ("reference", "batched"):
            for t in sorted([t for t in t_train_all if t["impl"] == impl], key=lambda t: t.get("role", "")):
                w("| PyTorch %s, OpenBLAS %s%s | %d | %s | %s | %s | %.2f× |" % (
                    impl, blas_label(t), " (counted)" if t is t_train.get(impl) else "",
                    t["steps"] - t["skip"], fmt(t["mean_batch_tokens"]), secs(t["mean_step_s"]),
                    fmt(t["tokens_per_s"]), c_train["tokens_per_s"] / t["tokens_per_s"]))
        if c_train_b and c_train_b.get("tokens_per_s"):
            w("| C `performer train --precision bf16` | %d | %s | %s | %s | %.2f× |" % (
                c_train_b["steps"] - c_train_b["skip"], fmt(c_train_b["mean_batch_tokens"]),
                secs(c_train_b["mean_step_s"]), fmt(c_train_b["tokens_per_s"]),
                c_train["tokens_per_s"] / c_train_b["tokens_per_s"]))
        w("")
        w("C tokens/s comes from the trainer's CSV log (`tokens`, `elapsed_s` at 0.1 s resolution).")
        w("")
        if c_train_b:
            w("`performer train --precision bf16` is the same run (same data, seed and steps) with the weight "
              "products in bf16 (the linear layers' and the head's forward, input-gradient and weight-gradient "
              "products; float32 accumulation), while weights, gradients, AdamW and the rest of the "
              "arithmetic stay float32; PyTorch stays float32. Loss over its %d steps: %.3f → %.3f (float32 C: "
              "%.3f → %.3f); a few steps say nothing about convergence in bf16 — the trained quality "
              "is measured in `weights/MODEL_CARD.md`." % (
                  c_train_b["steps"], c_train_b["first_loss"], c_train_b["last_loss"],
                  c_train["first_loss"], c_train["last_loss"]))
        else:
            w("C `performer train --precision bf16`: %s." % bf16_why)
        w("")

    # ---- server ---------------------------------------------------------------------------------
    w("## Server (performerd under wrk, loopback)")
    w("")
    if srv:
        s0 = srv[0]
        w("`performerd --threads %s --workers 1` with a fresh SQLite database; wrk %s s per run on the "
          "same machine (wrk's own CPU use is included). *hit*: the same request every time (answered "
          "from the cache); *miss*: a different %d-residue sequence with one `<mask>` per request "
          "(`bench/wrk_post.lua`). *raw*: `bench_forward` at the same length and the server's mean batch "
          "(forward passes counted by the daemon's `/metrics`; sequences per *mean* pass time, as the server's "
          "requests/s is a mean too), measured right before (at the mean batch of "
          "an untimed 2 s warm-up run) and right after the timed run: the mean of the two, with "
          "before → after in brackets, so that a drift of the shared machine shows; overhead = raw "
          "sequences/s ÷ server requests/s − 1. *busy* = the daemon's forward seconds ÷ wall time. *CPU/req* = CPU seconds "
          "(user + system) of the daemon and of wrk during the run ÷ completed requests." % (
              s0["server_threads"], fmt(s0["wrk"]["duration_s"]), s0["residues"]))
        w("")
    srv_head = ("| case | batching | conns | req/s | p50 | p99 | errors | hits / misses | mean batch | busy | raw seq/s | overhead | daemon CPU/req | wrk CPU/req |",
                "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")

    def srv_rows(rows):
        for s in rows:
            wr = s["wrk"]
            errs = wr["err_connect"] + wr["err_read"] + wr["err_write"] + wr["err_status"] + wr["err_timeout"]
            mb = s["forward_sequences"] / s["forward_passes"] if s["forward_passes"] else None
            busy = s["forward_seconds"] / wr["duration_s"] if wr["duration_s"] else None
            rr = raw_rate(s)
            raw_rps = rr[0] if rr else None
            nreq = max(wr["requests"], 1)
            w("| %s | %s | %d | %s | %.2f ms | %.2f ms | %d | %s / %s | %s | %s | %s | %s | %s | %s |" % (
                s["case"], s["batching"], s["conns"], fmt(wr["rps"]), wr["lat_p50_ms"], wr["lat_p99_ms"], errs,
                fmt(s["cache_hits"]), fmt(s["cache_misses"]), fmt(mb) if mb else "–",
                "%.0f%%" % (100 * busy) if busy is not None else "–",
                ("%s (%s → %s)" % (fmt(raw_rps), fmt(rr[1]), fmt(rr[2])) if rr[1] else fmt(raw_rps)) if rr else "–",
                "%+.0f%%" % (100 * (raw_rps / wr["rps"] - 1)) if raw_rps else "–",
                secs(s["server_cpu_s"] / nreq) if "server_cpu_s" in s else "–",
                secs(s["wrk_cpu_s"] / nreq) if "wrk_cpu_s" in s else "–"))

    def srv_table(rows):
        """Writes the server table of rows; returns their uncached runs by concurrency, (on, off)."""
        for l in srv_head:
            w(l)
        srv_rows(rows)
        w("")
        return miss_runs(rows, "on"), miss_runs(rows, "off")

    if srv:
        on, off = srv_table(srv)
        if 16 in on and 16 in off:
            w("* **Batching at c = 16:** %s req/s batched vs %s req/s with `--batch-tokens 0`: **%.2f×**." % (
                fmt(on[16]["wrk"]["rps"]), fmt(off[16]["wrk"]["rps"]), on[16]["wrk"]["rps"] / off[16]["wrk"]["rps"]))
        if 16 in on and 1 in off:
            w("* c = 16 batched vs c = 1 unbatched (one request at a time): %.2f×." % (
                on[16]["wrk"]["rps"] / off[1]["wrk"]["rps"]))
        bad = [s for s in srv if s["case"] == "hit" and s["cache_misses"] > 0]
        if bad:
            w("* Warning: %d cache-hit runs saw cache misses." % len(bad))
        if srv_rss:
            w("* Daemon peak RSS after the default-configuration runs: %s MB." % fmt(srv_rss["peak_rss_kb"] / 1024))
    if titin:
        w("* **Titin in one request** (%s residues, one `<mask>`, fresh daemon, uncached): HTTP %s in %s; "
          "daemon RSS %s MB before, peak %s MB. Server-Timing: `%s`." % (
              fmt(titin["residues"]), titin["http_status"], secs(titin["seconds"]),
              fmt(titin["rss_before_kb"] / 1024), fmt(titin["peak_rss_kb"] / 1024), titin.get("server_timing", "")))
    w("")
    w("### bf16")
    w("")
    if srv_b:
        w("The uncached load again on fresh daemons with `--precision bf16` (the weight products in bfloat16 "
          "with float32 sums; results are cached per precision), batching on (default `--batch-tokens`) and "
          "off (`--batch-tokens 0`); *raw* is `bench_forward --precision bf16` at the same length and mean "
          "batch, and the other columns are as above. These are bf16 runs only; the float32 ones are the "
          "table above:")
        w("")
        on_b, off_b = srv_table(srv_b)
        on = miss_runs(srv, "on")
        off = miss_runs(srv, "off")
        for c in sorted(set(on_b) & set(off_b)):
            w("* **Batching at c = %d, bf16:** %s req/s batched vs %s req/s with `--batch-tokens 0`: **%.2f×**%s." % (
                c, fmt(on_b[c]["wrk"]["rps"]), fmt(off_b[c]["wrk"]["rps"]), on_b[c]["wrk"]["rps"] / off_b[c]["wrk"]["rps"],
                " (float32: %.2f×)" % (on[c]["wrk"]["rps"] / off[c]["wrk"]["rps"]) if c in on and c in off else ""))
        for c in sorted(set(on_b) | set(off_b)):
            parts = []
            for name, b, f in (("batched", on_b, on), ("one at a time", off_b, off)):
                if c in b and c in f:
                    parts.append("%s %.2f×" % (name, b[c]["wrk"]["rps"] / f[c]["wrk"]["rps"]))
                    rb, rf = raw_rate(b[c]), raw_rate(f[c])
                    if rb and rf:
                        parts[-1] += " (raw model %.2f×)" % (rb[0] / rf[0])
            if parts:
                w("* bf16 / float32 requests/s at c = %d: %s." % (c, ", ".join(parts)))
        if srv_rss_b:
            w("* bf16 daemon peak RSS after its batched run (c = %s only, so not comparable with the float32 "
              "daemon's figure above, which ran every concurrency): %s MB." % (
                  ", ".join(str(c) for c in sorted(on_b)) or "–", fmt(srv_rss_b["peak_rss_kb"] / 1024)))
    else:
        w("`performerd --precision bf16`: %s." % bf16_why)
    w("")

    # ---- commands ---------------------------------------------------------------------------------
    w("## Reproducing")
    w("")
    w("```sh")
    w("make bench                       # = BIN=bin bash bench/run.sh; WEIGHTS=..., THREADS=..., SMOKE=1")
    w("```")
    w("")
    w("Environment: `%s`. Every command the run executed (T = its temporary directory), in order:" %
      read(os.path.join(meta, "env.txt")))
    w("")
    w("<details><summary>commands</summary>")
    w("")
    w("```sh")
    tmp = os.path.abspath(meta)
    for line in read(os.path.join(meta, "commands.txt")).splitlines():
        w(line.replace(tmp + "/", "T/"))
    w("```")
    w("")
    w("</details>")
    w("")
    w("Raw measurements: [`results.jsonl`](results.jsonl) (one JSON object per measurement).")
    w("")

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "RESULTS.md"), "w") as f:
        f.write("\n".join(out))
    plot(ok, peak, a.out, meta)


def plot(ok, peak, outdir, tmp):
    series = []
    for k in KERNELS:
        if not ok[k]:
            continue
        path = os.path.join(tmp, "plot_%s.dat" % k)
        with open(path, "w") as f:
            f.write("# L median_s us_per_pos peak_rss_mb gflops\n")
            for L, r in sorted(ok[k].items()):
                f.write("%d %.6g %.6g %.6g %.6g\n" % (L, r["median_s"], r["us_per_position"],
                                                      r["peak_rss_kb"] / 1024, r["gflops"]))
        series.append((k, path))
    if not series:
        return
    png = os.path.join(outdir, "forward.png")
    colors = {"favor-softmax": "#1f77b4", "favor-relu": "#2ca02c", "exact": "#d62728"}

    def plots(col):
        return ", ".join("'%s' using 1:%d with linespoints lw 2 pt 7 lc rgb '%s' title '%s'" % (
            p, col, colors[k], k) for k, p in series)
    g = [
        "set terminal pngcairo size 1500,480 font 'Sans,10'",
        "set output '%s'" % png,
        "set multiplot layout 1,3 title 'Forward pass vs sequence length (batch 1)'",
        "set logscale x 2", "set grid", "set key top left", "set format x '%.0s%c'",
        "set xlabel 'L (positions)'",
        "set logscale y", "set ylabel 'median time (s)'", "set title 'time'",
        "plot " + plots(2),
        "unset logscale y", "set ylabel 'µs per position'", "set title 'time per position'",
        "set yrange [0:*]",
        "plot " + plots(3),
        "set logscale y", "set autoscale y", "set ylabel 'peak RSS (MB)'", "set title 'peak RSS (one process per point)'",
        "plot " + plots(4),
        "unset multiplot",
    ]
    gp = os.path.join(tmp, "forward.gp")
    with open(gp, "w") as f:
        f.write("\n".join(g) + "\n")
    subprocess.run(["gnuplot", gp], check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--smoke", default="0")
    c = sub.add_parser("csv2json")
    c.add_argument("--csv", required=True)
    c.add_argument("--skip", type=int, default=2)
    c.add_argument("--crop", type=int, default=512)
    c.add_argument("--batch-tokens", type=int, default=8192)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    a = p.parse_args()
    (report if a.cmd == "report" else csv2json)(a)


if __name__ == "__main__":
    main()
