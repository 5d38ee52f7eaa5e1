"""Writes the reference fixtures that the C code is tested against.

usage: /usr/bin/python3 tests/reference/make_fixtures.py OUTDIR      (make fixtures -> tests/fixtures)

Deterministic (fixed seeds). Every expected value is computed in float64 from the float32 values
stored in the files (inputs are rounded to float32 first, then converted exactly to float64), and
stored as float32. Files (see tests/fixtures/README.md):
  model.safetensors       tiny favor-softmax model (n_layers 2, d 32, heads 4, d_ff 64, m 16)
  forward.safetensors     a 4-sequence batch, log-probs and final hidden states for each kernel
  grad_model.safetensors  masked-LM loss and gradients of every trained parameter, each kernel
  grad_ops.safetensors    per-operation forward/backward fixtures (layernorm, gelu, linear,
                          attention kernels, cross-entropy, embedding + PE)
  model_conv3.safetensors, forward_conv3.safetensors, grad_model_conv3.safetensors
                          the same for the model with a width-3 depthwise conv on q, k, v
                          (conv_kernel 3; the other tensors equal model.safetensors')
  grad_ops_conv.safetensors  the dwconv op (K 1, 3, 5) over a packed batch of short sequences
  model_local3.safetensors, forward_local3.safetensors, grad_model_local3.safetensors
                          the same for the model with a width-3 local block per layer
                          (local_kernel 3; the other tensors equal model.safetensors')
  model_conv3_local3.safetensors, forward_conv3_local3.safetensors,
  grad_model_conv3_local3.safetensors
                          both: model_conv3.safetensors' tensors plus the local blocks
  model_dh32.safetensors, forward_dh32.safetensors
                          a model with heads of width 32 and 32 features (n_layers 2, d 64, heads 2,
                          d_ff 128, conv and local blocks of width 3): the shapes the C inference
                          pass computes with its fused FAVOR+ kernel (favor_forward_fused)
The files without "conv" in their name are exactly what they were before conv_kernel existed, and
the files without "local" exactly what they were before local_kernel existed; the dh32 files were
added last (their own seed), leaving every earlier file as it was.
"""
import hashlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import performer_ref as ref  # noqa: E402


F64 = torch.float64

MODEL_CFG = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, n_features=16,
                 kernel="favor-softmax", norm_eps=1e-5)
MODEL_SEED = 20240611
CONV_KERNEL = 3           # the conv fixture model
CONV_STD = 0.4            # its taps: identity + N(0, 0.4): loud so that bugs show, and no favor-relu
                          # pre-activation of the batch within 1e-5 of the ReLU kink (0.3 had one at
                          # 1e-7, where float32 rounding flips a feature on or off)
LOCAL_KERNEL = 3          # the local-block fixture models
LOCAL_CONV_STD = 0.4      # their local taps: identity + N(0, 0.4)
CONV_OPS_SEED = 13
BATCH_SEED = 7
OPS_SEED = 11
KERNELS = ref.KERNELS
# Fixture tensor-name spelling of the kernels inside grad_ops ("attn_favor_softmax.q", ...).
OPS_KERNEL_NAME = {"favor-softmax": "favor_softmax", "favor-relu": "favor_relu", "exact": "exact"}


def r32(t):
    """Round to float32 and back to float64 (the value the C side will read)."""
    return t.detach().to(torch.float32).to(F64)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def i32(t):
    return torch.as_tensor(t).to(torch.int32).contiguous()


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------------------
def make_model(path, conv_kernel=0, local_kernel=0):
    model = ref.Performer(**MODEL_CFG, conv_kernel=conv_kernel, local_kernel=local_kernel).to(F64)
    if local_kernel > 0:
        model.init_weights(MODEL_SEED, std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1,
                           bias_std=0.1, conv_std=CONV_STD, local_conv_std=LOCAL_CONV_STD)
        prov = ("tests/reference/make_fixtures.py: Performer(conv_kernel=%d, local_kernel=%d)."
                "init_weights(seed=%d, std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1, "
                "bias_std=0.1, conv_std=%g, local_conv_std=%g): the tensors of %s plus local "
                "blocks (LN 1 + N(0, 0.1) / N(0, 0.1), taps identity + N(0, %g), out N(0, 0.2) / "
                "N(0, 0.1)); untrained test fixture" % (
                    conv_kernel, local_kernel, MODEL_SEED, CONV_STD, LOCAL_CONV_STD,
                    "model_conv%d.safetensors" % conv_kernel if conv_kernel else "model.safetensors",
                    LOCAL_CONV_STD))
        name = "fixture-tiny%s-local%d" % ("-conv%d" % conv_kernel if conv_kernel else "",
                                           local_kernel)
    elif conv_kernel == 0:
        model.init_weights(MODEL_SEED, std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1,
                           bias_std=0.1)
        prov = ("tests/reference/make_fixtures.py: Performer.init_weights(seed=%d, std=0.2, "
                "out_std=0.2, embed_std=0.5, ln_w_std=0.1, bias_std=0.1); proj per FORMAT.md "
                "drawn with torch.Generator; untrained test fixture" % MODEL_SEED)
        name = "fixture-tiny"
    else:
        model.init_weights(MODEL_SEED, std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1,
                           bias_std=0.1, conv_std=CONV_STD)
        prov = ("tests/reference/make_fixtures.py: Performer(conv_kernel=%d).init_weights(seed=%d, "
                "std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1, bias_std=0.1, conv_std=%g): "
                "the tensors of model.safetensors plus conv taps identity + N(0, %g); untrained "
                "test fixture" % (conv_kernel, MODEL_SEED, CONV_STD, CONV_STD))
        name = "fixture-tiny-conv%d" % conv_kernel
    ref.save_model(model, path, name=name, trained=False, provenance=prov)
    return ref.load_model(path, F64)   # exactly the stored float32 values, as float64


def make_batch():
    """4 framed sequences, L = 5, 37, 130, 300, with standard residues, <mask> and X B U Z O."""
    gen = torch.Generator().manual_seed(BATCH_SEED)
    seqs = [torch.tensor(ref.encode("M<mask>x"), dtype=torch.long)]   # [cls] M <mask> X [eos]
    for L in (37, 130, 300):
        n = L - 2
        ids = torch.randint(ref.RES0, ref.RES0 + ref.NRES, (n,), generator=gen)
        u = torch.rand(n, generator=gen)
        ids[u < 0.06] = ref.MASK
        nonstd = (u >= 0.06) & (u < 0.10)
        ids[nonstd] = torch.randint(ref.NONSTD0, ref.V, (int(nonstd.sum()),), generator=gen)
        seqs.append(torch.cat([torch.tensor([ref.CLS]), ids, torch.tensor([ref.EOS])]))
    # ~15% of residue positions scored; the mask positions always are. Target = the residue's own
    # class for standard residues, a random class for <mask> / non-standard positions.
    targets = []
    for s in seqs:
        L = s.shape[0]
        t = torch.full((L,), -1, dtype=torch.long)
        u = torch.rand(L, generator=gen)
        rnd = torch.randint(0, ref.NRES, (L,), generator=gen)
        for p in range(1, L - 1):
            if s[p] == ref.MASK or u[p] < 0.13:
                std = ref.RES0 <= int(s[p]) < ref.RES0 + ref.NRES
                t[p] = int(s[p]) - ref.RES0 if std else int(rnd[p])
        targets.append(t)
    return seqs, targets


def make_forward(path, model, seqs, model_sha, model_file="model.safetensors"):
    out = {"tokens": i32(torch.cat(seqs)), "lens": i32([s.shape[0] for s in seqs])}
    with torch.no_grad():
        for K in KERNELS:
            logps, hiddens = model(seqs, kernel=K)
            out["logp." + K] = f32(torch.cat(logps))
            out["hidden." + K] = f32(torch.cat(hiddens))
    meta = {"description": "forward-pass fixture for " + model_file + ": tokens = framed ids of B "
            "sequences concatenated, lens = their lengths; logp.K [sum lens, 20] = log-softmax "
            "over the 20 standard residues, hidden.K [sum lens, d] = final LayerNorm output, for "
            "kernels K = favor-softmax, favor-relu, exact. float64 reference stored as float32.",
            "model": model_file, "model_sha256": model_sha,
            "tolerance": "max abs diff <= 1e-4 on logp and hidden"}
    ref.save_safetensors(path, out, meta)
    return out


def make_grad_model(path, model, seqs, targets, model_sha, model_file="model.safetensors"):
    out = {"tokens": i32(torch.cat(seqs)), "lens": i32([s.shape[0] for s in seqs]),
           "targets": i32(torch.cat(targets))}
    names = [n for n in ref.format_tensor_names(model.n_layers, model.conv_kernel,
                                                model.local_kernel)
             if not n.endswith("attn.proj")]
    params = dict(model.named_parameters())
    assert set(params) == set(names), set(params) ^ set(names)
    losses = {}
    for K in KERNELS:
        model.zero_grad(set_to_none=True)
        logps, _ = model(seqs, kernel=K)
        loss = ref.masked_lm_loss(logps, targets)
        loss.backward()
        losses[K] = float(loss)
        out["loss." + K] = f32(loss.reshape(1))
        for n in names:
            out["grad.%s.%s" % (K, n)] = f32(params[n].grad)
    meta = {"description": "masked-LM gradient fixture for " + model_file + ": loss.K = mean over "
            "scored positions (targets >= 0; class index = token id - 5, -1 = unscored) of "
            "-logp[p, target[p]] over all sequences of the batch; grad.K.<tensor> = d loss / d "
            "tensor for every tensor except attn.proj (a constant). favor-softmax stabiliser "
            "maxima are constants (no gradient). float64 reference stored as float32.",
            "model": model_file, "model_sha256": model_sha,
            "tolerance": "loss: abs diff <= 1e-5; grads: max abs diff <= 1e-4 + 1e-3 * max|grad|"}
    ref.save_safetensors(path, out, meta)
    return losses


def make_grad_ops(path):
    gen = torch.Generator().manual_seed(OPS_SEED)

    def randn(*shape, std=1.0):
        return r32(torch.randn(*shape, generator=gen, dtype=F64) * std)

    out = {}

    def run(prefix, inputs, fn, grads_of):
        """inputs: ordered dict name -> float64 tensor (float32-exact). Stores inputs, a random
        dout, out = fn(**inputs) and d<name> for names in grads_of."""
        xs = {k: v.clone().requires_grad_(k in grads_of) for k, v in inputs.items()}
        y = fn(**xs)
        dout = randn(*y.shape)
        for k, v in inputs.items():
            out["%s.%s" % (prefix, k)] = f32(v)
        out[prefix + ".dout"] = f32(dout)
        out[prefix + ".out"] = f32(y)
        gs = torch.autograd.grad(y, [xs[k] for k in grads_of], dout)
        for k, g in zip(grads_of, gs):
            out["%s.d%s" % (prefix, k)] = f32(g)

    N, C = 7, 32
    run("layernorm", {"x": randn(N, C, std=2.0) + 0.5, "w": 1.0 + randn(C, std=0.3),
                      "b": randn(C, std=0.3)},
        lambda x, w, b: ref.layer_norm(x, w, b, 1e-5), ["x", "w", "b"])
    run("gelu", {"x": randn(N, C, std=2.0)}, lambda x: ref.gelu(x), ["x"])
    run("linear", {"x": randn(N, 32), "w": randn(24, 32, std=0.3), "b": randn(24, std=0.3)},
        lambda x, w, b: ref.linear(x, w, b), ["x", "w", "b"])

    L, dh, m = 23, 8, 16
    proj = r32(ref.draw_projection(m, dh, gen))
    for K in KERNELS:
        pre = "attn_" + OPS_KERNEL_NAME[K]
        run(pre, {"q": randn(L, dh), "k": randn(L, dh), "v": randn(L, dh), "proj": proj},
            lambda q, k, v, proj, K=K: ref.attention(q, k, v, proj, K), ["q", "k", "v"])

    # cross-entropy over the 20 classes, mean over scored rows (-1 = unscored)
    Nx = 9
    logits = randn(Nx, ref.NRES, std=2.0)
    tgt = torch.randint(0, ref.NRES, (Nx,), generator=gen)
    tgt[torch.tensor([1, 4, 8])] = -1
    lg = logits.clone().requires_grad_(True)
    loss = ref.xent_from_logits(lg, tgt)
    (dlogits,) = torch.autograd.grad(loss, [lg])
    out["xent.logits"] = f32(logits)
    out["xent.targets"] = i32(tgt)
    out["xent.loss"] = f32(loss.reshape(1))
    out["xent.dlogits"] = f32(dlogits)

    # embedding + sinusoidal PE over positions 0..N-1 (token 7 repeated: dweight accumulates)
    tok = torch.tensor([2, 7, 1, 7, 26, 14, 3], dtype=torch.long)
    weight = randn(ref.V, C)
    w = weight.clone().requires_grad_(True)
    y = w[tok] + ref.positional_encoding(N, C, F64)
    dout = randn(N, C)
    (dw,) = torch.autograd.grad(y, [w], dout)
    out["embed.tokens"] = i32(tok)
    out["embed.weight"] = f32(weight)
    out["embed.dout"] = f32(dout)
    out["embed.out"] = f32(y)
    out["embed.dweight"] = f32(dw)

    meta = {"description": "per-operation fixtures: for each op, inputs, a random upstream "
            "gradient dout, out = op(inputs) and d<input> = vector-Jacobian product with dout. "
            "layernorm eps 1e-5 (biased variance); gelu exact erf; linear y = x W^T + b; attn_K "
            "= one head of one sequence (L 23, dh 8, m 16), FORMAT.md kernels, favor_softmax "
            "stabiliser maxima treated as constants, exact ignores proj; xent = mean over rows "
            "with target >= 0 of -log_softmax(logits)[target]; embed out[p] = weight[tok[p]] + "
            "PE(p). float64 reference stored as float32.",
            "tolerance": "max abs diff <= 1e-5 + 1e-4 * max|expected|"}
    ref.save_safetensors(path, out, meta)
    return out


def make_grad_ops_conv(path):
    """The dwconv op over a packed batch whose sequences are shorter and longer than K."""
    gen = torch.Generator().manual_seed(CONV_OPS_SEED)

    def randn(*shape, std=1.0):
        return r32(torch.randn(*shape, generator=gen, dtype=F64) * std)

    lens = [1, 2, 6, 11]
    N, C = sum(lens), 20      # C not a multiple of 16: exercises the C code's channel blocks' tail
    out = {"lens": i32(lens)}
    for K in (1, 3, 5):
        pre = "dwconv%d" % K
        x, w, dout = randn(N, C), randn(K, C, std=0.5), randn(N, C)
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = ref.dwconv(xs, ws, lens)
        dx, dw = torch.autograd.grad(y, [xs, ws], dout)
        out[pre + ".x"], out[pre + ".w"], out[pre + ".dout"] = f32(x), f32(w), f32(dout)
        out[pre + ".out"], out[pre + ".dx"], out[pre + ".dw"] = f32(y), f32(dx), f32(dw)
    meta = {"description": "depthwise convolution op fixtures: x [N, C] = sequences of lens "
            "packed back to back (N = 20, C = 20), w [K, C] for K = 1, 3, 5 (prefix dwconvK); "
            "out[t, c] = sum_j w[j, c] x[t + j - (K-1)/2, c] with x = 0 outside t's own "
            "sequence; dx, dw = vector-Jacobian products with the random dout. float64 "
            "reference stored as float32.",
            "tolerance": "max abs diff <= 1e-5 + 1e-4 * max|expected|"}
    ref.save_safetensors(path, out, meta)
    return out


def float32_error_estimate(model, seqs):
    """How far a float32 evaluation of the same model lands from the float64 reference."""
    m32 = ref.Performer(**model.config()).float()
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    res = {}
    with torch.no_grad():
        for K in KERNELS:
            a, _ = model(seqs, kernel=K)
            b, _ = m32(seqs, kernel=K)
            res[K] = float((torch.cat(a) - torch.cat(b).double()).abs().max())
    return res


def make_variant(outdir, base, conv_kernel, local_kernel, seqs, targets):
    """Writes model_TAG, forward_TAG, grad_model_TAG (TAG = convK, localK or convK_localK) for the
    model with a conv and/or local blocks whose other tensors are base's (asserted); returns
    (tag, model, forward fixture, losses)."""
    tag = "_".join(t for t in ("conv%d" % conv_kernel if conv_kernel else "",
                               "local%d" % local_kernel if local_kernel else "") if t)
    p = os.path.join(outdir, "model_%s.safetensors" % tag)
    vmodel = make_model(p, conv_kernel, local_kernel)
    vsha = sha256(p)
    for n, t in base.state_dict().items():
        assert torch.equal(t, vmodel.state_dict()[n]), n
    vfwd = make_forward(os.path.join(outdir, "forward_%s.safetensors" % tag), vmodel, seqs, vsha,
                        os.path.basename(p))
    vlosses = make_grad_model(os.path.join(outdir, "grad_model_%s.safetensors" % tag), vmodel,
                              seqs, targets, vsha, os.path.basename(p))
    return tag, vmodel, vfwd, vlosses


DH32_CFG = dict(n_layers=2, d_model=64, n_heads=2, d_ff=128, n_features=32,
                kernel="favor-relu", norm_eps=1e-5)
DH32_SEED = 20261130


def make_dh32(outdir, seqs):
    """Writes model_dh32 / forward_dh32 (the fused-FAVOR+ shapes, see the module docstring);
    returns (model, forward fixture)."""
    model = ref.Performer(**DH32_CFG, conv_kernel=CONV_KERNEL, local_kernel=LOCAL_KERNEL).to(F64)
    model.init_weights(DH32_SEED, std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1, bias_std=0.1,
                       conv_std=CONV_STD, local_conv_std=LOCAL_CONV_STD)
    p = os.path.join(outdir, "model_dh32.safetensors")
    prov = ("tests/reference/make_fixtures.py: Performer(n_layers=2, d_model=64, n_heads=2, "
            "d_ff=128, n_features=32, conv_kernel=%d, local_kernel=%d).init_weights(seed=%d, "
            "std=0.2, out_std=0.2, embed_std=0.5, ln_w_std=0.1, bias_std=0.1, conv_std=%g, "
            "local_conv_std=%g); untrained test fixture" % (CONV_KERNEL, LOCAL_KERNEL, DH32_SEED,
                                                           CONV_STD, LOCAL_CONV_STD))
    ref.save_model(model, p, name="fixture-dh32", trained=False, provenance=prov)
    m = ref.load_model(p, F64)
    fwd = make_forward(os.path.join(outdir, "forward_dh32.safetensors"), m, seqs, sha256(p),
                       os.path.basename(p))
    return m, fwd


def print_summary(tag, model, fwd, losses, seqs):
    """Prints the logp ranges, losses and float32 error estimate of one fixture model."""
    for K in KERNELS:
        lp = fwd["logp." + K]
        print("%s%-14s logp range [%.3f, %.3f]  mean max-prob %.3f  loss %.6f" % (
            tag and tag + " ", K, float(lp.min()), float(lp.max()),
            float(lp.exp().max(1).values.mean()), losses[K]))
    print("%sfloat32-vs-float64 max |dlogp|:" % (tag and tag + " "),
          {k: "%.1e" % v for k, v in float32_error_estimate(model, seqs).items()})


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    p_model = os.path.join(outdir, "model.safetensors")
    model = make_model(p_model)
    msha = sha256(p_model)
    seqs, targets = make_batch()
    fwd = make_forward(os.path.join(outdir, "forward.safetensors"), model, seqs, msha)
    losses = make_grad_model(os.path.join(outdir, "grad_model.safetensors"), model, seqs,
                             targets, msha)
    make_grad_ops(os.path.join(outdir, "grad_ops.safetensors"))

    # the conv model: model.safetensors' tensors + width-3 depthwise conv taps, same batch; the
    # local-block models: model.safetensors' (and model_conv3's) tensors + local blocks
    variants = [make_variant(outdir, model, CONV_KERNEL, 0, seqs, targets)]
    make_grad_ops_conv(os.path.join(outdir, "grad_ops_conv.safetensors"))
    variants.append(make_variant(outdir, model, 0, LOCAL_KERNEL, seqs, targets))
    variants.append(make_variant(outdir, variants[0][1], CONV_KERNEL, LOCAL_KERNEL, seqs, targets))

    print("lens:", [s.shape[0] for s in seqs], "scored:", int((torch.cat(targets) >= 0).sum()))
    print_summary("", model, fwd, losses, seqs)
    for tag, vmodel, vfwd, vlosses in variants:
        print_summary(tag, vmodel, vfwd, vlosses, seqs)
    dmodel, dfwd = make_dh32(outdir, seqs)
    for K in KERNELS:
        lp = dfwd["logp." + K]
        print("dh32 %-14s logp range [%.3f, %.3f]" % (K, float(lp.min()), float(lp.max())))
    print("dh32 float32-vs-float64 max |dlogp|:",
          {k: "%.1e" % v for k, v in float32_error_estimate(dmodel, seqs).items()})
    for f in sorted(os.listdir(outdir)):
        if f.endswith(".safetensors"):
            p = os.path.join(outdir, f)
            size = os.path.getsize(p)
            assert size < 1 << 20, "%s is too large (%d bytes)" % (f, size)
            ref.load_safetensors(p)   # re-read with the validating reader
            print("%-24s %8d bytes  sha256 %s" % (f, size, sha256(p)[:16]))


if __name__ == "__main__":
    main()
