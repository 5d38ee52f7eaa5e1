#!/usr/bin/env python3
"""Scaling study on a borrowed GPU: how far is the shipped model's architecture from the issue's
target (test perplexity <= 14) at larger sizes and token counts than two CPU cores allow?

This is a measurement, not the product: the shipped weights are trained by `bin/performer train`
(C, CPU). This script trains the same architecture (FORMAT.md: pre-LN blocks, FAVOR+ ReLU
attention with depthwise convolutions on q/k/v and local blocks; the parameters, init and file
names of tests/reference/performer_ref.py) with the C trainer's objective and optimiser (masked LM,
15% of standard residues, 80/10/10; AdamW betas 0.9/0.98, decay 0.01 on matrices; warm-up +
cosine to 0.1x; clipping at 1.0), batched and in bfloat16 autocast on a GPU, from scratch, for
several sizes, and writes each run's validation curve and final weights (FORMAT.md safetensors,
so `bin/performer eval` can score them on the test split on the CPU).

Differences from the C trainer, all for GPU throughput: batches of 131,072 (padded) tokens built
from length-sorted crops of up to --crop residues (C: 16,384 tokens of crops in file order);
the q/k/v/FFN/head products in bfloat16 with float32 sums (C: float32 or bf16 products);
the FAVOR+ features and sums in float32 (C: float32).

Data: prep.py's xz subsets of the train/valid/test splits (a random 76M-residue subset of train:
the GPU machine has no network and at most 64 MiB travels there).

Usage: study.py --data DIR --out DIR [--runs C,S,M,L] [--budget-s 60,100,140,130] [--device cuda]
  run C continues --init (default weights/model.safetensors) at a low peak learning rate.
"""
import argparse
import json
import lzma
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                                "reference"))
import performer_ref as ref  # noqa: E402

CONFIGS = {  # name -> (Performer kwargs, peak lr)
    "S": (dict(n_layers=4, d_model=256, n_heads=8, d_ff=1024), 2e-3),    # the shipped size
    "M": (dict(n_layers=6, d_model=384, n_heads=12, d_ff=1536), 1.5e-3),  # largest under 50 MB
    "L": (dict(n_layers=8, d_model=512, n_heads=16, d_ff=2048), 1e-3),
    "T": (dict(n_layers=2, d_model=32, n_heads=4, d_ff=64), 3e-3),         # smoke test only
    "C": (None, 2e-4),  # continue the shipped weights (--init), as the next CPU stages would
}
COMMON = dict(n_features=64, kernel="favor-relu", norm_eps=1e-5, conv_kernel=15, local_kernel=15)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def load_subset(path):
    """prep.py's file -> (tokens uint8 array, starts int64, lengths int64)."""
    raw = lzma.decompress(open(path, "rb").read())
    assert raw[:8] == b"PFSUB1\0\0", path
    n, ntok = struct.unpack_from("<QQ", raw, 8)
    lens = np.frombuffer(raw, dtype="<u4", count=n, offset=24).astype(np.int64)
    toks = np.frombuffer(raw, dtype=np.uint8, count=ntok, offset=24 + 4 * n)
    assert int(lens.sum()) == ntok
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return toks, starts, lens


# ---- the model, batched ----------------------------------------------------------------------
# (The same mathematics as bench/bench_torch.py:forward_batched, kept here as it ran on the GPU:
# padding masks on the convolutions and keys, and the FAVOR+ sums in float32 under autocast.)
def dwconv(x, w, mm):
    """Depthwise centred convolution over positions of x [B, T, C] (zero outside each sequence:
    mm [B, T, 1] is 1 on real positions) with taps w [K, C] (FORMAT.md)."""
    K, C = w.shape
    y = F.conv1d((x * mm).transpose(1, 2), w.t().unsqueeze(1).to(x.dtype), padding=(K - 1) // 2,
                 groups=C)
    return y.transpose(1, 2)


def favor_relu(q, k, v, proj, mm, H):
    """FAVOR+ ReLU attention of every head, float32: q, k, v [B, T, d], proj [m, dh]."""
    B, T, d = q.shape
    dh = d // H
    c = dh ** -0.25
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = (t.to(proj.dtype).view(B, T, H, dh) for t in (q, k, v))
        pq = F.relu(c * q @ proj.t()) + 1e-3                        # [B, T, H, m]
        pk = (F.relu(c * k @ proj.t()) + 1e-3) * mm.unsqueeze(-1)   # padding contributes 0
        kv = torch.einsum("bthm,bthd->bhmd", pk, v)
        z = pk.sum(dim=1)                                           # [B, H, m]
        num = torch.einsum("bthm,bhmd->bthd", pq, kv)
        den = torch.einsum("bthm,bhm->bth", pq, z)
        return (num / den.unsqueeze(-1)).reshape(B, T, d)


def forward(model, tok, mm, pe):
    """tok [B, T] ids, mm [B, T, 1] float mask of real positions -> logits [B, T, 20] (float32)."""
    d, H, eps = model.d_model, model.n_heads, model.norm_eps
    x = model.embed.weight[tok] + pe[: tok.shape[1]]
    for blk in model.layers:
        a = blk.attn
        h = F.layer_norm(x, (d,), blk.ln1.weight, blk.ln1.bias, eps)
        q = dwconv(F.linear(h, a.q.weight, a.q.bias), a.conv_q, mm)
        k = dwconv(F.linear(h, a.k.weight, a.k.bias), a.conv_k, mm)
        v = dwconv(F.linear(h, a.v.weight, a.v.bias), a.conv_v, mm)
        x = x + F.linear(favor_relu(q, k, v, a.proj, mm, H), a.o.weight, a.o.bias)
        lb = blk.local
        h = F.layer_norm(x, (d,), lb.ln.weight, lb.ln.bias, eps)
        x = x + F.linear(F.gelu(dwconv(h, lb.conv, mm)), lb.out.weight, lb.out.bias)
        h = F.layer_norm(x, (d,), blk.ln2.weight, blk.ln2.bias, eps)
        x = x + F.linear(F.gelu(F.linear(h, blk.ffn.fc1.weight, blk.ffn.fc1.bias)),
                         blk.ffn.fc2.weight, blk.ffn.fc2.bias)
    h = F.layer_norm(x, (d,), model.final_ln.weight, model.final_ln.bias, eps)
    return F.linear(h, model.head.weight, model.head.bias).float()


# ---- batches ---------------------------------------------------------------------------------
def make_batches(order, data, crop, budget, rng):
    """Crops of the sequences `order` (random offset, framed <cls> ... <eos>), sorted by length
    and cut into batches of at most `budget` padded tokens -> list of int64 arrays [B, T]."""
    toks, starts, lens = data
    keep = np.minimum(lens[order], crop - 2)
    off = (rng.random(len(order)) * (lens[order] - keep + 1)).astype(np.int64)
    srt = np.argsort(keep, kind="stable")
    batches, i = [], 0
    while i < len(srt):
        T = int(keep[srt[min(i, len(srt) - 1)]]) + 2
        j = i
        while j < len(srt):
            T = int(keep[srt[j]]) + 2
            if (j - i + 1) * ((T + 7) // 8 * 8) > budget:
                break
            j += 1
        j = max(j, i + 1)
        T = (int(keep[srt[j - 1]]) + 2 + 7) // 8 * 8
        b = np.zeros((j - i, T), dtype=np.int64)
        for r, s in enumerate(srt[i:j]):
            n, st = int(keep[s]), int(starts[order[s]] + off[s])
            b[r, 0] = ref.CLS
            b[r, 1:n + 1] = toks[st:st + n]
            b[r, n + 1] = ref.EOS
        batches.append(b)
        i = j
    rng.shuffle(batches)
    return batches


def corrupt(tok, rate, gen):
    """The C trainer's MLM corruption on the device: (inputs, targets with -1 = not scored)."""
    std = (tok >= ref.RES0) & (tok < ref.RES0 + ref.NRES)
    sel = std & (torch.rand(tok.shape, generator=gen, device=tok.device) < rate)
    tgt = torch.where(sel, tok - ref.RES0, torch.full_like(tok, -1))
    u = torch.rand(tok.shape, generator=gen, device=tok.device)
    rnd = ref.RES0 + torch.randint(0, ref.NRES, tok.shape, generator=gen, device=tok.device)
    inp = torch.where(sel & (u < 0.8), torch.full_like(tok, ref.MASK), tok)
    inp = torch.where(sel & (u >= 0.8) & (u < 0.9), rnd, inp)
    return inp, tgt


@torch.no_grad()
def evaluate(model, data, pe, dev, seed=1, budget=262144, max_len=40000):
    """`bin/performer eval`'s measure on whole sequences: 15% of the standard residues of each
    sequence replaced by <mask> (a fixed draw), perplexity and top-1 accuracy over the 20
    residues at those positions."""
    toks, starts, lens = data
    rng = np.random.default_rng(seed)
    order = np.argsort(lens, kind="stable")
    nll, hit, n = 0.0, 0, 0
    i = 0
    while i < len(order):
        T = int(lens[order[i]]) + 2
        j = i
        while j < len(order) and (j - i + 1) * (int(lens[order[j]]) + 2) <= budget:
            j += 1
        j = max(j, i + 1)
        T = int(lens[order[j - 1]]) + 2
        if T > max_len + 2:
            break
        b = np.zeros((j - i, T), dtype=np.int64)
        for r, s in enumerate(order[i:j]):
            L = int(lens[s])
            b[r, 0], b[r, L + 1] = ref.CLS, ref.EOS
            b[r, 1:L + 1] = toks[starts[s]:starts[s] + L]
        std = (b >= ref.RES0) & (b < ref.RES0 + ref.NRES)
        sel = std & (rng.random(b.shape) < 0.15)
        inp = np.where(sel, ref.MASK, b)
        tok = torch.from_numpy(inp).to(dev)
        mm = (torch.from_numpy(b).to(dev) != ref.PAD).float().unsqueeze(-1)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            lp = torch.log_softmax(forward(model, tok, mm, pe), dim=-1)
        selt = torch.from_numpy(sel).to(dev)
        tgt = torch.from_numpy(b - ref.RES0).to(dev)[selt]
        lps = lp[selt]
        nll -= float(lps.gather(1, tgt[:, None]).sum())
        hit += int((lps.argmax(dim=1) == tgt).sum())
        n += int(selt.sum())
        i = j
    return dict(perplexity=math.exp(nll / n), accuracy=hit / n, residues=n)


# ---- one run ---------------------------------------------------------------------------------
def run(name, args, train, valid, test, dev, out):
    kw, lr = CONFIGS[name]
    torch.manual_seed(args.seed)
    if kw is None:
        model = ref.load_model(args.init, torch.float32).to(dev)
        cfg = model.config()
    else:
        cfg = dict(COMMON, **kw)
        model = ref.Performer(**cfg).init_weights(args.seed).float().to(dev)
    nparam = sum(p.numel() for p in model.parameters())
    pe = ref.positional_encoding(max(args.crop, 40002), cfg["d_model"], torch.float32).to(dev)
    decay = [p for n_, p in model.named_parameters() if p.dim() == 2 and "conv" not in n_]
    other = [p for n_, p in model.named_parameters() if not (p.dim() == 2 and "conv" not in n_)]
    groups = [dict(params=decay, weight_decay=0.01), dict(params=other, weight_decay=0.0)]
    try:
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8,
                                fused=dev.type == "cuda")
    except TypeError:
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    log("run %s: %d parameters, peak lr %g, budget %.0f s" % (name, nparam, lr,
                                                              args.budget[name]))
    warmup, total, step, tokens, scored_tokens = args.warmup, None, 0, 0, 0
    curve, batches, t0, t_train = [], [], time.time(), 0.0
    ema = None
    next_eval = 0
    while total is None or step < total:
        if not batches:
            batches = make_batches(rng.permutation(len(train[2])), train, args.crop,
                                   args.batch_tokens, rng)
            # one pass of the subset is many batches; consume them in order
        b = batches.pop()
        if total is not None and step >= next_eval:
            ev = evaluate(model, valid, pe, dev)
            curve.append(dict(step=step, tokens=tokens, seconds=round(t_train, 1), **ev))
            log("  %s step %d/%d tokens %.1fM val ppl %.3f acc %.4f" % (
                name, step, total, tokens / 1e6, ev["perplexity"], ev["accuracy"]))
            next_eval = step + max(1, total // args.evals)
        ts = time.time()
        frac = step / warmup if step < warmup else None
        if frac is None:
            t = (step - warmup) / max(1, (total or 10 ** 9) - warmup)
            frac = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        for g in opt.param_groups:
            g["lr"] = lr * frac
        tok = torch.from_numpy(b).to(dev, non_blocking=True)
        mm = (tok != ref.PAD).float().unsqueeze(-1)
        inp, tgt = corrupt(tok, 0.15, gen)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = forward(model, inp, mm, pe)
        loss = F.cross_entropy(logits.view(-1, ref.NRES), tgt.view(-1), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += int((b != ref.PAD).sum())
        if step % 50 == 0 or step == 12:
            lv = float(loss)
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        if dev.type == "cuda" and step <= 12:
            torch.cuda.synchronize()
        t_train += time.time() - ts
        if step == 12 and total is None:
            # size the run to its time budget from the speed of steps 3..12
            if dev.type == "cuda":
                torch.cuda.synchronize()
            per = (time.time() - t_first) / 10
            total = max(args.min_steps, int(args.budget[name] / per))
            log("  %s: %.1f ms/step, %.0f tokens/s -> %d steps" % (
                name, per * 1e3, tokens / max(t_train, 1e-9), total))
        if step == 2:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_first = time.time()
        if step % 200 == 0:
            log("  %s step %d loss %.4f lr %.2e %.1fM tokens %.0f s" % (
                name, step, float(loss), lr * frac, tokens / 1e6, time.time() - t0))
    ev = evaluate(model, valid, pe, dev)
    curve.append(dict(step=step, tokens=tokens, seconds=round(t_train, 1), **ev))
    tev = evaluate(model, test, pe, dev)
    log("  %s done: %d steps, %.1fM tokens, %.0f s; val ppl %.3f acc %.4f; test ppl %.3f acc %.4f"
        % (name, step, tokens / 1e6, time.time() - t0, ev["perplexity"], ev["accuracy"],
           tev["perplexity"], tev["accuracy"]))
    path = os.path.join(out, "%s.safetensors" % name)
    ref.save_model(model.cpu(), path, "performer-protein-scaling-%s" % name, trained=True,
                   provenance=json.dumps(dict(trainer="weights/scaling/study.py (PyTorch, GPU)",
                                              steps=step, tokens=tokens, lr=lr, crop=args.crop,
                                              batch_tokens=args.batch_tokens, seed=args.seed)))
    model.to(dev)
    return dict(name=name, config=cfg, parameters=nparam, peak_lr=lr, steps=step, tokens=tokens,
                train_seconds=round(t_train, 1), batch_tokens=args.batch_tokens, crop=args.crop,
                valid=ev, test=tev, curve=curve)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", default="C,S,M,L")
    ap.add_argument("--budget-s", default="60,100,140,130")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=131072)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--min-steps", type=int, default=20)
    ap.add_argument("--evals", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "model.safetensors"))
    args = ap.parse_args()
    names = args.runs.split(",")
    args.budget = dict(zip(names, [float(x) for x in args.budget_s.split(",")]))
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log("torch %s, %s" % (torch.__version__, torch.cuda.get_device_name(0)))
    os.makedirs(args.out, exist_ok=True)
    train = load_subset(os.path.join(args.data, "train.xz"))
    valid = load_subset(os.path.join(args.data, "valid.xz"))
    test = load_subset(os.path.join(args.data, "test.xz"))
    log("train subset %d sequences / %d residues" % (len(train[2]), len(train[0])))
    results = []
    for name in names:
        try:
            results.append(run(name, args, train, valid, test, dev, args.out))
        except Exception as e:  # noqa: BLE001 - keep the other runs' results
            log("run %s failed: %r" % (name, e))
            results.append(dict(name=name, error=repr(e)))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(dict(torch=torch.__version__, device=str(dev),
                           train_residues=int(len(train[0])), runs=results), f, indent=1)


if __name__ == "__main__":
    main()
