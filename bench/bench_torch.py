#!/usr/bin/python3
"""PyTorch side of `make bench` (bench/run.sh); run with Debian's /usr/bin/python3 (python3-torch).

Prints one JSON object per line on stdout (bench/report.py reads them).

  bench_torch.py info
      torch version, threads, the BLAS library torch uses and its OpenBLAS core.

  bench_torch.py forward --weights F --tokens F.i32 --len L --batch B [--kernel K]
                         [--logp-ref F.f32] [--tol T] [--logp-ref-bf16 F.f32] [--tol-bf16 T]
                         [--threads N] [--impl reference,batched]
                         [--min-reps N] [--min-time S] [--single-over S]
      Loads F with tests/reference/performer_ref.py's reader into a float32 model and times the
      forward pass of the B x L tokens that bench_forward wrote (--tokens-out), with the same
      repeat rule as bench_forward. Two implementations of the same mathematics:
        reference  performer_ref.Performer.forward (the file under tests/reference/ as it is:
                   one sequence and one head at a time)
        batched    the same operations vectorised over batch and heads (torch.nn.functional),
                   what an idiomatic PyTorch implementation does - a stronger baseline
      Every timed run's log-probs are compared with the C program's (--logp-ref): max |diff|,
      agreement within --tol (1e-3), and top-1 agreement (the fraction of positions whose most
      likely residue is the same). --logp-ref-bf16 gives the log-probs of the C program run with
      --precision bf16 on the same tokens: the same PyTorch (float32) outputs are compared with
      them too ("*_bf16" keys) within the looser --tol-bf16 (5e-2), since bf16 rounds the weight
      products' operands to 8 mantissa bits.

  bench_torch.py train --weights F --fasta F [--steps N] [--skip N] [--crop 512]
                       [--batch-tokens 8192] [--threads N] [--impl reference,batched] [--seed S]
      Masked-LM training steps of the same configuration as `performer train` (crops of at most
      --crop positions with random offsets, sequences in file order packed up to --batch-tokens,
      15% masking 80/10/10, AdamW lr 1e-3 betas (0.9, 0.98) eps 1e-8, weight decay 0.01 on
      matrices, clip 1.0, the weights' kernel, proj constant); tokens/s over the steps after the
      first --skip (warm-up).
"""
import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True     # no __pycache__ in tests/reference/
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))


def _early_threads(argv):
    """OpenBLAS/OpenMP read their thread counts when loaded: set them before importing torch."""
    n = None
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if n is None:
        n = str(os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", n)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", n)


_early_threads(sys.argv)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as Fn  # noqa: E402

import performer_ref as ref  # noqa: E402


def emit(obj):
    print(json.dumps(obj), flush=True)


def blas_info():
    """The BLAS shared object mapped into this process and, for OpenBLAS, its core/config."""
    a = torch.randn(64, 64)
    (a @ a).sum()
    libs = []
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if ("blas" in p or "mkl" in p) and p.startswith("/") and p not in libs:
                libs.append(p)
    info = {"blas_libs": libs}
    for p in libs:
        if "openblas" in os.path.basename(p):
            try:
                import ctypes
                lib = ctypes.CDLL(p)
                lib.openblas_get_corename.restype = ctypes.c_char_p
                lib.openblas_get_config.restype = ctypes.c_char_p
                info["openblas_core"] = lib.openblas_get_corename().decode()
                info["openblas_config"] = lib.openblas_get_config().decode()
                info["openblas_threads"] = lib.openblas_get_num_threads()
            except (OSError, AttributeError):
                pass
            break
    return info


# ----------------------------------------------------------------------------------------------
# Batched implementation (same mathematics as performer_ref / weights/FORMAT.md)
# ----------------------------------------------------------------------------------------------
def conv_batched(x, w, valid):
    """performer_ref.dwconv on a padded batch: x [B, Lm, d], taps w [K, d]; padding rows are zeroed
    first so that they never reach a sequence's real positions (each sequence sees zeros past its
    end, as in the packed C layout)."""
    if valid is not None:
        x = x * valid[:, :, None].to(x.dtype)
    K, d = w.shape
    y = Fn.conv1d(x.transpose(1, 2), w.t().unsqueeze(1), padding=(K - 1) // 2, groups=d)
    return y.transpose(1, 2)


def forward_batched(model, tokens, lens, kernel):
    """tokens [B, Lmax] (padded), lens [B] -> logp [B, Lmax, 20] (padding rows are garbage).
    Padding never changes the real positions: FAVOR key features and exact-attention scores of
    padded positions are masked out."""
    B, Lm = tokens.shape
    d, H = model.d_model, model.n_heads
    dh = d // H
    w = model.embed.weight
    x = w[tokens] + ref.positional_encoding(Lm, d, w.dtype)[None]
    valid = None
    if int(min(lens)) < Lm:
        valid = (torch.arange(Lm)[None, :] < torch.as_tensor(lens)[:, None])  # [B, Lm]
    eps = model.norm_eps
    c = dh ** -0.25
    for blk in model.layers:
        at = blk.attn
        h = Fn.layer_norm(x, (d,), blk.ln1.weight, blk.ln1.bias, eps)
        q = Fn.linear(h, at.q.weight, at.q.bias)
        k = Fn.linear(h, at.k.weight, at.k.bias)
        v = Fn.linear(h, at.v.weight, at.v.bias)
        if model.conv_kernel > 0:
            q, k, v = (conv_batched(t, wt, valid) for t, wt in ((q, at.conv_q), (k, at.conv_k), (v, at.conv_v)))
        q = q.view(B, Lm, H, dh).transpose(1, 2)
        k = k.view(B, Lm, H, dh).transpose(1, 2)
        v = v.view(B, Lm, H, dh).transpose(1, 2)
        if kernel == "exact":
            s = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
            if valid is not None:
                s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
            a = torch.softmax(s, dim=-1) @ v
        else:
            P = at.proj
            m = P.shape[0]
            if kernel == "favor-relu":
                pq = torch.relu((c * q) @ P.t()) + 1e-3
                pk = torch.relu((c * k) @ P.t()) + 1e-3
            else:
                uq, uk = c * q, c * k
                sq, sk = uq @ P.t(), uk @ P.t()
                gq = 0.5 * (uq * uq).sum(-1, keepdim=True)
                gk = 0.5 * (uk * uk).sum(-1, keepdim=True)
                mq = sq.detach().amax(-1, keepdim=True)
                skd = sk.detach()
                if valid is not None:
                    skd = skd.masked_fill(~valid[:, None, :, None], float("-inf"))
                mk = skd.amax(dim=(-2, -1), keepdim=True)
                pq = (m ** -0.5) * (torch.exp(sq - gq - mq) + 1e-4)
                pk = (m ** -0.5) * (torch.exp(sk - gk - mk) + 1e-4)
            if valid is not None:
                pk = pk * valid[:, None, :, None].to(pk.dtype)
            kv = pk.transpose(-2, -1) @ v                      # [B, H, m, dh]
            z = pk.sum(dim=-2)                                 # [B, H, m]
            a = (pq @ kv) / (pq @ z.unsqueeze(-1))             # [B, H, L, dh]
        a = a.transpose(1, 2).reshape(B, Lm, d)
        x = x + Fn.linear(a, at.o.weight, at.o.bias)
        if model.local_kernel > 0:     # the local block: x + out(GELU(dwconv(LN(x))))
            lb = blk.local
            h = Fn.layer_norm(x, (d,), lb.ln.weight, lb.ln.bias, eps)
            x = x + Fn.linear(Fn.gelu(conv_batched(h, lb.conv, valid)), lb.out.weight, lb.out.bias)
        h = Fn.layer_norm(x, (d,), blk.ln2.weight, blk.ln2.bias, eps)
        x = x + Fn.linear(Fn.gelu(Fn.linear(h, blk.ffn.fc1.weight, blk.ffn.fc1.bias)),
                          blk.ffn.fc2.weight, blk.ffn.fc2.bias)
    h = Fn.layer_norm(x, (d,), model.final_ln.weight, model.final_ln.bias, eps)
    return torch.log_softmax(Fn.linear(h, model.head.weight, model.head.bias), dim=-1)


def run_impl(model, impl, tok, kernel):
    """tok [B, L] LongTensor (all the same length) -> logp [B, L, 20]."""
    if impl == "reference":
        logps, _ = model.forward([tok[b] for b in range(tok.shape[0])], kernel=kernel)
        return torch.stack(logps)
    return forward_batched(model, tok, [tok.shape[1]] * tok.shape[0], kernel)


def time_loop(fn, min_reps, min_time, single_over, max_reps=50):
    """bench_forward's rule: one warm-up, then repeats until min_reps and min_time are both met
    (one timed run when the warm-up took over single_over seconds)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    want = 1 if first > single_over else min_reps
    times, total, outs = [], 0.0, [out]
    while len(times) < max_reps and (len(times) < want or total < min_time):
        t0 = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        times.append(t)
        outs.append(out)
        total += t
        if len(times) >= want and t > single_over:
            break
    return times, first, outs


def cmd_info(a):
    torch.set_num_threads(a.threads)
    info = {"bench": "torch_info", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "numpy": np.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
            "capability": torch.backends.cpu.get_cpu_capability()
            if hasattr(torch.backends, "cpu") else ""}
    info.update(blas_info())
    emit(info)


def cmd_forward(a):
    torch.set_num_threads(a.threads)
    model = ref.load_model(a.weights, dtype=torch.float32).eval()
    kernel = a.kernel or model.kernel
    tok = torch.from_numpy(np.fromfile(a.tokens, dtype="<i4").astype(np.int64))
    if tok.numel() != a.len * a.batch:
        sys.exit("bench_torch: %s has %d tokens, expected %d x %d" % (a.tokens, tok.numel(), a.batch, a.len))
    tok = tok.view(a.batch, a.len)
    def load_ref(path):
        x = np.fromfile(path, dtype="<f4")
        if x.size != a.batch * a.len * ref.NRES:
            sys.exit("bench_torch: %s has %d floats, expected %d x %d x %d" % (
                path, x.size, a.batch, a.len, ref.NRES))
        return torch.from_numpy(x).view(a.batch, a.len, ref.NRES)
    refp = load_ref(a.logp_ref) if a.logp_ref else None
    refb = load_ref(a.logp_ref_bf16) if a.logp_ref_bf16 else None
    for impl in a.impl.split(","):
        with torch.no_grad():
            times, first, outs = time_loop(lambda: run_impl(model, impl, tok, kernel),
                                           a.min_reps, a.min_time, a.single_over)
        times.sort()
        n = len(times)
        med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
        rec = {"bench": "torch_forward", "impl": impl, "kernel": kernel, "L": a.len,
               "batch": a.batch, "threads": torch.get_num_threads(), "reps": n,
               "median_s": med, "min_s": times[0], "max_s": times[-1], "first_s": first}
        if refp is not None:
            diffs = [float((o.float() - refp).abs().max()) for o in outs]
            rec["max_abs_diff_logp"] = max(diffs)
            rec["agree_tol"] = a.tol
            rec["agree"] = bool(max(diffs) <= a.tol)
            rec["top1_agree"] = min(top1(o, refp) for o in outs)
        if refb is not None:
            diffs = [float((o.float() - refb).abs().max()) for o in outs]
            rec["max_abs_diff_logp_bf16"] = max(diffs)
            rec["mean_abs_diff_logp_bf16"] = max(float((o.float() - refb).abs().mean()) for o in outs)
            rec["agree_tol_bf16"] = a.tol_bf16
            rec["agree_bf16"] = bool(max(diffs) <= a.tol_bf16)
            rec["top1_agree_bf16"] = min(top1(o, refb) for o in outs)
        emit(rec)


def top1(logp, refp):
    """The fraction of positions where logp and refp ([B, L, 20]) rank the same residue first."""
    return float((logp.float().argmax(-1) == refp.argmax(-1)).double().mean())


def read_fasta(path):
    seqs, cur = [], []
    with open(path) as f:
        for line in f:
            if line.startswith(">"):
                if cur:
                    seqs.append("".join(cur))
                cur = []
            else:
                cur.append(line.strip())
    if cur:
        seqs.append("".join(cur))
    return [ref.encode(s, frame=False) for s in seqs if s]


class Batcher:
    """performer train's batching: crops of at most crop-2 residues (random offset), framed, in
    file order until the token budget; 15% of standard residues scored, 80/10/10."""

    def __init__(self, seqs, crop, budget, rate, seed):
        self.seqs, self.crop, self.budget, self.rate = seqs, crop, budget, rate
        self.cursor = 0
        self.rng = np.random.default_rng(seed)

    def next(self):
        toks, tgts, T = [], [], 0
        for _ in range(len(self.seqs) + 1):
            r = self.seqs[self.cursor % len(self.seqs)]
            keep = min(len(r), self.crop - 2)
            if toks and T + keep + 2 > self.budget:
                break
            off = int(self.rng.integers(0, len(r) - keep + 1)) if len(r) > keep else 0
            body = np.asarray(r[off:off + keep], dtype=np.int64)
            tgt = np.full(keep, -1, dtype=np.int64)
            std = (body >= ref.RES0) & (body < ref.RES0 + ref.NRES)
            pick = std & (self.rng.random(keep) < self.rate)
            tgt[pick] = body[pick] - ref.RES0
            u = self.rng.random(keep)
            newt = body.copy()
            newt[pick & (u < 0.8)] = ref.MASK
            rnd = pick & (u >= 0.8) & (u < 0.9)
            newt[rnd] = ref.RES0 + self.rng.integers(0, ref.NRES, int(rnd.sum()))
            toks.append(torch.from_numpy(np.concatenate([[ref.CLS], newt, [ref.EOS]])))
            tgts.append(torch.from_numpy(np.concatenate([[-1], tgt, [-1]])))
            T += keep + 2
            self.cursor += 1
        return toks, tgts, T


def cmd_train(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    seqs = read_fasta(a.fasta)
    for impl in a.impl.split(","):
        model = ref.load_model(a.weights, dtype=torch.float32).train()
        kernel = model.kernel
        # like the C trainer: matrices decay; biases, LayerNorm and conv taps (attn.conv_*,
        # local.conv) do not
        taps = lambda n: "conv_" in n or n.endswith("local.conv")  # noqa: E731
        decay = [p for n, p in model.named_parameters() if p.ndim == 2 and not taps(n)]
        other = [p for n, p in model.named_parameters() if p.ndim != 2 or taps(n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": other, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.98), eps=1e-8)
        batcher = Batcher(seqs, a.crop, a.batch_tokens, 0.15, a.seed)
        times, toks_n, losses = [], [], []
        for step in range(a.steps):
            t0 = time.perf_counter()
            toks, tgts, T = batcher.next()
            if impl == "reference":
                logps, _ = model.forward(toks, kernel=kernel)
                loss = ref.masked_lm_loss(logps, tgts)
            else:
                lens = [len(t) for t in toks]
                Lm = max(lens)
                pad = torch.zeros(len(toks), Lm, dtype=torch.long)
                tg = torch.full((len(toks), Lm), -1, dtype=torch.long)
                for b, (t, y) in enumerate(zip(toks, tgts)):
                    pad[b, :len(t)] = t
                    tg[b, :len(t)] = y
                logp = forward_batched(model, pad, lens, kernel)
                loss = ref.masked_lm_loss(logp.reshape(-1, ref.NRES), tg.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            times.append(time.perf_counter() - t0)
            toks_n.append(T)
            losses.append(float(loss))
        sk = min(a.skip, len(times) - 1)
        rate = sum(toks_n[sk:]) / sum(times[sk:])
        emit({"bench": "torch_train", "impl": impl, "kernel": kernel, "threads": torch.get_num_threads(),
              "crop": a.crop, "batch_tokens": a.batch_tokens, "steps": a.steps, "skip": sk,
              "tokens_per_s": rate, "mean_step_s": sum(times[sk:]) / len(times[sk:]),
              "mean_batch_tokens": sum(toks_n[sk:]) / len(toks_n[sk:]),
              "first_loss": losses[0], "last_loss": losses[-1]})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    nthreads = os.cpu_count() or 1
    pi = sub.add_parser("info")
    pi.add_argument("--threads", type=int, default=nthreads)
    pf = sub.add_parser("forward")
    pf.add_argument("--weights", required=True)
    pf.add_argument("--tokens", required=True)
    pf.add_argument("--len", type=int, required=True)
    pf.add_argument("--batch", type=int, default=1)
    pf.add_argument("--kernel")
    pf.add_argument("--logp-ref")
    pf.add_argument("--tol", type=float, default=1e-3)
    pf.add_argument("--logp-ref-bf16")
    pf.add_argument("--tol-bf16", type=float, default=5e-2)
    pf.add_argument("--threads", type=int, default=nthreads)
    pf.add_argument("--impl", default="reference,batched")
    pf.add_argument("--min-reps", type=int, default=3)
    pf.add_argument("--min-time", type=float, default=2.0)
    pf.add_argument("--single-over", type=float, default=5.0)
    pt = sub.add_parser("train")
    pt.add_argument("--weights", required=True)
    pt.add_argument("--fasta", required=True)
    pt.add_argument("--steps", type=int, default=8)
    pt.add_argument("--skip", type=int, default=2)
    pt.add_argument("--crop", type=int, default=512)
    pt.add_argument("--batch-tokens", type=int, default=8192)
    pt.add_argument("--threads", type=int, default=nthreads)
    pt.add_argument("--impl", default="reference,batched")
    pt.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    {"info": cmd_info, "forward": cmd_forward, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    main()
