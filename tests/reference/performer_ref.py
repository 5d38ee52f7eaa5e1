"""PyTorch reference implementation of weights/FORMAT.md (performer-protein v1).

This file is the readable "other implementation" that the C code under model/ is checked against
(through the fixtures in tests/fixtures/, made by make_fixtures.py). It needs only torch and
numpy (Debian's /usr/bin/python3); it has its own safetensors reader/writer.

Contents
  VOCAB, encode(text)                 vocabulary v1 and text -> framed ids
  save_safetensors / load_safetensors the container (F32, F64, I32, I64 tensors + string metadata)
  draw_projection(m, dh, gen)         FAVOR+ orthogonal random features
  positional_encoding, layer_norm, gelu, linear
  favor_softmax_attention, favor_relu_attention, exact_attention, attention(kernel=...)
  dwconv(x, w, lens)                  depthwise centred convolution over positions (conv_kernel,
                                      and the local block's local.conv)
  Performer (nn.Module)               parameter/buffer names == FORMAT.md tensor names
  state_dict_to_format / from_format  conversion to/from the file's tensors + metadata
  masked_lm_loss                      mean over scored positions of -logp[target]

All functions compute in the dtype of their inputs; the fixtures use float64 (the float32 weights
converted to float64) and store results as float32.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn

# ----------------------------------------------------------------------------------------------
# Vocabulary v1
# ----------------------------------------------------------------------------------------------
SPECIALS = ["<pad>", "<mask>", "<cls>", "<eos>", "<unk>"]
STANDARD = "ACDEFGHIKLMNPQRSTVWY"
NONSTANDARD = "XBUZO"
VOCAB = SPECIALS + list(STANDARD) + list(NONSTANDARD)
V = len(VOCAB)  # 30
PAD, MASK, CLS, EOS, UNK = 0, 1, 2, 3, 4
RES0 = 5           # id of 'A'; class index = id - RES0 for the 20 standard residues
NRES = 20
NONSTD0 = 25
KERNELS = ("favor-softmax", "favor-relu", "exact")
WHITESPACE = " \t\n\v\f\r"


def vocab_json():
    """The metadata `vocab` string: compact JSON array of the 30 token strings in id order."""
    return json.dumps(VOCAB, separators=(",", ":"))


def encode(text, frame=True):
    """Parses protein text into ids: case-insensitive, whitespace ignored, "<mask>" (any case) is
    the mask token, any other character raises ValueError. With frame=True returns
    [<cls>] + residues + [<eos>] (L = n + 2)."""
    ids = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in WHITESPACE:
            i += 1
            continue
        if ch == "<":
            if text[i:i + 6].lower() == "<mask>":
                ids.append(MASK)
                i += 6
                continue
            raise ValueError("invalid residue %r at position %d" % (ch, i + 1))
        up = ch.upper()
        if len(up) == 1 and up in STANDARD:
            ids.append(RES0 + STANDARD.index(up))
        elif len(up) == 1 and up in NONSTANDARD:
            ids.append(NONSTD0 + NONSTANDARD.index(up))
        else:
            raise ValueError("invalid residue %r at position %d" % (ch, i + 1))
        i += 1
    return [CLS] + ids + [EOS] if frame else ids


def decode(ids):
    return " ".join(VOCAB[i] for i in ids)


# ----------------------------------------------------------------------------------------------
# safetensors container
# ----------------------------------------------------------------------------------------------
_DTYPES = {  # safetensors dtype -> (numpy little-endian dtype, torch dtype)
    "F32": ("<f4", torch.float32),
    "F64": ("<f8", torch.float64),
    "I32": ("<i4", torch.int32),
    "I64": ("<i8", torch.int64),
}
_TORCH_TO_ST = {v[1]: k for k, v in _DTYPES.items()}


def save_safetensors(path, tensors, metadata=None):
    """Writes tensors (dict name -> torch.Tensor, in insertion order) and metadata (dict of
    strings) as safetensors. float32/float64/int32/int64 tensors keep their dtype. The JSON header
    is padded with spaces so that its length is a multiple of 8."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("metadata keys and values must be strings: %r" % (k,))
        header["__metadata__"] = dict(metadata)
    blobs, off = [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _TORCH_TO_ST:
            raise TypeError("%s: unsupported dtype %s" % (name, t.dtype))
        st = _TORCH_TO_ST[t.dtype]
        arr = t.numpy().astype(_DTYPES[st][0], copy=False)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError("%s: non-finite values" % name)
        b = arr.tobytes(order="C")
        header[name] = {"dtype": st, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Reads a safetensors file -> (dict name -> torch.Tensor, dict metadata). Validates the
    header length, dtype/shape/offset consistency, that the data section is covered exactly
    (no gaps, no overlap) and that float values are finite."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("file too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n < 1 or n > 100_000_000 or 8 + n > len(raw):
        raise ValueError("bad header length %d" % n)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    for k, v in meta.items():
        if not isinstance(v, str):
            raise ValueError("metadata %r is not a string" % k)
    tensors, spans = {}, []
    for name, info in header.items():
        st = info["dtype"]
        if st not in _DTYPES:
            raise ValueError("%s: unsupported dtype %s" % (name, st))
        npdt, _ = _DTYPES[st]
        shape = [int(s) for s in info["shape"]]
        b, e = info["data_offsets"]
        numel = int(np.prod(shape)) if shape else 1
        if not (0 <= b <= e <= len(data)) or e - b != numel * np.dtype(npdt).itemsize:
            raise ValueError("%s: bad data_offsets %r for shape %r" % (name, (b, e), shape))
        arr = np.frombuffer(data[b:e], dtype=npdt).reshape(shape).copy()
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError("%s: non-finite values" % name)
        tensors[name] = torch.from_numpy(arr)
        spans.append((b, e, name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise ValueError("%s: data section gap/overlap at byte %d" % (name, b))
        pos = e
    if pos != len(data):
        raise ValueError("data section has %d unaccounted bytes" % (len(data) - pos))
    return tensors, meta


# ----------------------------------------------------------------------------------------------
# Building blocks (all dtype-generic)
# ----------------------------------------------------------------------------------------------
def positional_encoding(L, d, dtype=torch.float64):
    """PE(p)[2j] = sin(p / 10000^(2j/d)), PE(p)[2j+1] = cos(p / 10000^(2j/d)), p = 0..L-1."""
    p = torch.arange(L, dtype=torch.float64)[:, None]
    two_j = torch.arange(0, d, 2, dtype=torch.float64)[None, :]
    ang = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), two_j / d)
    pe = torch.zeros(L, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe.to(dtype)


def layer_norm(x, w, b, eps):
    """(x - mean) / sqrt(biased var + eps) * w + b over the last dimension."""
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x):
    """Exact GELU: x/2 * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x, w, b):
    """nn.Linear convention: y = x W^T + b, W [out, in]."""
    return x @ w.t() + b


def _favor_linear_attention(phi_q, phi_k, v):
    """Non-causal FAVOR: KV = phi_k^T v, z = sum_p phi_k[p], out[p] = phi_q[p] KV / (phi_q[p].z)."""
    kv = phi_k.t() @ v                 # [m, dh]
    z = phi_k.sum(dim=0)               # [m]
    num = phi_q @ kv                   # [L, dh]
    den = phi_q @ z                    # [L]
    return num / den[:, None]


def favor_softmax_features(x, proj, is_query, stab=None):
    """FAVOR+ positive random features of one head's rows x [L, dh] with P = proj [m, dh]:
    u = c x (c = dh^-1/4), s = u P^T, g = |u|^2/2,
    query: m^-1/2 (exp(s - g - max_r s[p, r]) + 1e-4)     (per-row stabiliser)
    key:   m^-1/2 (exp(s - g - M) + 1e-4), M = max over all p, r   (per sequence and head)
    The stabilisers are detached (constants for autograd). `stab` may pass them explicitly
    ([L, 1] for queries, scalar for keys) - used by gradcheck to hold them fixed."""
    dh = x.shape[-1]
    m = proj.shape[0]
    c = dh ** -0.25
    u = c * x
    s = u @ proj.t()                                   # [L, m]
    g = 0.5 * (u * u).sum(dim=-1, keepdim=True)        # [L, 1]
    if stab is None:
        if is_query:
            stab = s.detach().max(dim=-1, keepdim=True).values
        else:
            stab = s.detach().max()
    return (m ** -0.5) * (torch.exp(s - g - stab) + 1e-4)


def favor_softmax_stabilisers(q, k, proj):
    """The (query [L,1], key scalar) stabilisers favor_softmax_features would use, detached."""
    c = q.shape[-1] ** -0.25
    sq = (c * q.detach()) @ proj.t()
    sk = (c * k.detach()) @ proj.t()
    return sq.max(dim=-1, keepdim=True).values, sk.max()


def favor_softmax_attention(q, k, v, proj, stab=None):
    """One head, one sequence: q, k, v [L, dh], proj [m, dh] -> [L, dh].
    stab: optional (query_stab [L,1], key_stab scalar) constants (see favor_softmax_features)."""
    sq, sk = (None, None) if stab is None else stab
    phi_q = favor_softmax_features(q, proj, True, sq)
    phi_k = favor_softmax_features(k, proj, False, sk)
    return _favor_linear_attention(phi_q, phi_k, v)


def favor_relu_attention(q, k, v, proj):
    """Generalized ReLU kernel: phi(x) = ReLU(c x P^T) + 1e-3, c = dh^-1/4."""
    c = q.shape[-1] ** -0.25
    phi_q = torch.relu(c * q @ proj.t()) + 1e-3
    phi_k = torch.relu(c * k @ proj.t()) + 1e-3
    return _favor_linear_attention(phi_q, phi_k, v)


def exact_attention(q, k, v, proj=None):
    """softmax(q k^T / sqrt(dh)) v over all L positions (proj ignored)."""
    dh = q.shape[-1]
    a = torch.softmax(q @ k.t() / math.sqrt(dh), dim=-1)
    return a @ v


def attention(q, k, v, proj, kernel):
    if kernel == "favor-softmax":
        return favor_softmax_attention(q, k, v, proj)
    if kernel == "favor-relu":
        return favor_relu_attention(q, k, v, proj)
    if kernel == "exact":
        return exact_attention(q, k, v)
    raise ValueError("unknown kernel %r" % kernel)


def dwconv(x, w, lens=None):
    """Depthwise centred convolution over positions, per channel (Primer-style, on q, k, v):
    out[t, c] = sum_{j<K} w[j, c] * x[t + j - (K-1)/2, c], with x = 0 outside the sequence.
    x [N, C] holds the sequences of lens (default: one sequence of N rows) back to back; each
    sequence is convolved on its own (zero padding at its ends, never its neighbours' rows)."""
    K = w.shape[0]
    r = (K - 1) // 2
    assert K % 2 == 1
    if lens is None:
        lens = [x.shape[0]]
    outs, off = [], 0
    for L in lens:
        L = int(L)
        seq = x[off:off + L]
        pad = torch.cat([seq.new_zeros(r, seq.shape[1]), seq, seq.new_zeros(r, seq.shape[1])])
        outs.append(sum(w[j] * pad[j:j + L] for j in range(K)))
        off += L
    return torch.cat(outs, dim=0)


def draw_projection(m, dh, gen, dtype=torch.float64):
    """FORMAT.md projection: ceil(m/dh) blocks, each Q^T of the QR of a dh x dh standard normal
    matrix (the last block keeps its first m mod dh rows); row r is then scaled by the norm of an
    independent dh-dimensional standard normal vector. gen: torch.Generator."""
    nblocks = -(-m // dh)
    blocks = []
    for _ in range(nblocks):
        g = torch.randn(dh, dh, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(g)
        blocks.append(q.t())
    p = torch.cat(blocks, dim=0)[:m]
    norms = torch.randn(m, dh, generator=gen, dtype=torch.float64).norm(dim=1)
    return (p * norms[:, None]).to(dtype)


def draw_iid_projection(m, dh, gen, dtype=torch.float64):
    """Unstructured i.i.d. Gaussian features (for comparison in check_reference.py)."""
    return torch.randn(m, dh, generator=gen, dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def _p(*shape):
    return nn.Parameter(torch.zeros(*shape))


class _LN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = _p(d)
        self.bias = _p(d)


class _Linear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = _p(n_out, n_in)
        self.bias = _p(n_out)

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class _Attn(nn.Module):
    def __init__(self, d, m, dh, conv_kernel=0):
        super().__init__()
        self.q = _Linear(d, d)
        self.k = _Linear(d, d)
        self.v = _Linear(d, d)
        self.o = _Linear(d, d)
        self.register_buffer("proj", torch.zeros(m, dh))  # fixed random features, not trained
        if conv_kernel > 0:  # depthwise conv taps [K, d] on q, k, v (trained)
            self.conv_q = _p(conv_kernel, d)
            self.conv_k = _p(conv_kernel, d)
            self.conv_v = _p(conv_kernel, d)


class _FFN(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.fc1 = _Linear(d, f)
        self.fc2 = _Linear(f, d)


class _Local(nn.Module):
    """The local block (local_kernel K): x + out(GELU(dwconv(LN(x); conv)))."""

    def __init__(self, d, local_kernel):
        super().__init__()
        self.ln = _LN(d)
        self.conv = _p(local_kernel, d)   # depthwise taps [K, d], like attn.conv_q
        self.out = _Linear(d, d)


class _Block(nn.Module):
    def __init__(self, d, f, m, dh, conv_kernel=0, local_kernel=0):
        super().__init__()
        self.ln1 = _LN(d)
        self.attn = _Attn(d, m, dh, conv_kernel)
        if local_kernel > 0:
            self.local = _Local(d, local_kernel)
        self.ln2 = _LN(d)
        self.ffn = _FFN(d, f)


DEFAULT_CONFIG = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, n_features=16,
                      kernel="favor-softmax", norm_eps=1e-5, conv_kernel=0, local_kernel=0)


class Performer(nn.Module):
    """Performer masked LM. state_dict() names are exactly the FORMAT.md tensor names
    (embed.weight, layers.{i}.ln1.weight, layers.{i}.attn.q.weight, layers.{i}.attn.proj, ...);
    attn.proj is a buffer (constant), everything else a parameter. conv_kernel K > 0 adds the
    depthwise convolutions layers.{i}.attn.conv_q/conv_k/conv_v [K, d] on q, k, v (after the
    projections, before attention). local_kernel K > 0 adds a local block per layer between
    attention and the feed-forward block: x = x + local.out(GELU(dwconv(LN(x; local.ln);
    local.conv))) with layers.{i}.local.ln.weight/bias [d], local.conv [K, d],
    local.out.weight [d, d], local.out.bias [d]."""

    def __init__(self, n_layers=2, d_model=32, n_heads=4, d_ff=64, n_features=16,
                 kernel="favor-softmax", norm_eps=1e-5, conv_kernel=0, local_kernel=0):
        super().__init__()
        assert d_model % n_heads == 0 and kernel in KERNELS
        assert conv_kernel == 0 or (conv_kernel % 2 == 1 and 1 <= conv_kernel <= 31)
        assert local_kernel == 0 or (local_kernel % 2 == 1 and 1 <= local_kernel <= 31)
        self.n_layers, self.d_model, self.n_heads = n_layers, d_model, n_heads
        self.d_ff, self.n_features, self.kernel, self.norm_eps = d_ff, n_features, kernel, norm_eps
        self.conv_kernel = conv_kernel
        self.local_kernel = local_kernel
        self.dh = d_model // n_heads
        self.embed = nn.Module()
        self.embed.weight = _p(V, d_model)
        self.layers = nn.ModuleList(
            [_Block(d_model, d_ff, n_features, self.dh, conv_kernel, local_kernel)
             for _ in range(n_layers)])
        self.final_ln = _LN(d_model)
        self.head = _Linear(d_model, NRES)

    def config(self):
        return dict(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                    d_ff=self.d_ff, n_features=self.n_features, kernel=self.kernel,
                    norm_eps=self.norm_eps, conv_kernel=self.conv_kernel,
                    local_kernel=self.local_kernel)

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed, std=0.02, out_std=None, embed_std=None, ln_w_std=0.0,
                     bias_std=0.0, ln_b_std=None, conv_std=0.0, local_conv_std=0.0,
                     local_out_std=None):
        """Seeded init. Defaults mimic the C init: embed and linear weights N(0, std=0.02),
        attn.o / ffn.fc2 weights N(0, std / sqrt(2 n_layers)), biases 0, LN weight 1 / bias 0,
        proj drawn per FORMAT.md, conv taps the identity (centre tap 1, others 0). The other
        arguments allow a "louder" init for fixtures (conv_std: identity + N(0, conv_std)).
        Conv taps are drawn last, so the other tensors equal those of the conv-less model of the
        same seed. Local blocks (drawn after those, so the other tensors equal those of the model
        without them): LN like the others (ln_w_std, ln_b_std), taps identity +
        N(0, local_conv_std), local.out weight N(0, local_out_std (default out_std)), bias
        N(0, bias_std). With local_out_std=0 and bias_std=0 a block adds exactly 0."""
        gen = torch.Generator().manual_seed(seed)
        if out_std is None:
            out_std = std / math.sqrt(2 * self.n_layers)
        if embed_std is None:
            embed_std = std
        if ln_b_std is None:
            ln_b_std = bias_std

        def normal_(t, s):
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) * s)

        def init_ln(ln):
            normal_(ln.weight, ln_w_std)
            ln.weight.add_(1.0)
            normal_(ln.bias, ln_b_std)

        def init_lin(lin, s):
            normal_(lin.weight, s)
            normal_(lin.bias, bias_std)

        normal_(self.embed.weight, embed_std)
        for blk in self.layers:
            init_ln(blk.ln1)
            init_lin(blk.attn.q, std)
            init_lin(blk.attn.k, std)
            init_lin(blk.attn.v, std)
            init_lin(blk.attn.o, out_std)
            blk.attn.proj.copy_(draw_projection(self.n_features, self.dh, gen,
                                                dtype=blk.attn.proj.dtype))
            init_ln(blk.ln2)
            init_lin(blk.ffn.fc1, std)
            init_lin(blk.ffn.fc2, out_std)
        init_ln(self.final_ln)
        init_lin(self.head, std)
        if self.conv_kernel > 0:
            for blk in self.layers:
                for w in (blk.attn.conv_q, blk.attn.conv_k, blk.attn.conv_v):
                    normal_(w, conv_std)
                    w[(self.conv_kernel - 1) // 2].add_(1.0)
        if self.local_kernel > 0:
            for blk in self.layers:
                init_ln(blk.local.ln)
                normal_(blk.local.conv, local_conv_std)
                blk.local.conv[(self.local_kernel - 1) // 2].add_(1.0)
                init_lin(blk.local.out, out_std if local_out_std is None else local_out_std)
        return self

    # -- forward -------------------------------------------------------------------------------
    def forward_one(self, tokens, kernel=None):
        """One framed sequence (1-D LongTensor of L ids) -> (logp [L, 20], hidden [L, d])."""
        kernel = kernel or self.kernel
        tokens = tokens.long()
        L = tokens.shape[0]
        w = self.embed.weight
        H, dh = self.n_heads, self.dh
        x = w[tokens] + positional_encoding(L, self.d_model, w.dtype)
        for blk in self.layers:
            h = layer_norm(x, blk.ln1.weight, blk.ln1.bias, self.norm_eps)
            q, k, v = blk.attn.q(h), blk.attn.k(h), blk.attn.v(h)
            if self.conv_kernel > 0:
                q = dwconv(q, blk.attn.conv_q)
                k = dwconv(k, blk.attn.conv_k)
                v = dwconv(v, blk.attn.conv_v)
            heads = []
            for j in range(H):
                sl = slice(j * dh, (j + 1) * dh)
                heads.append(attention(q[:, sl], k[:, sl], v[:, sl], blk.attn.proj, kernel))
            a = torch.cat(heads, dim=1)
            x = x + blk.attn.o(a)
            if self.local_kernel > 0:
                lb = blk.local
                h = layer_norm(x, lb.ln.weight, lb.ln.bias, self.norm_eps)
                x = x + lb.out(gelu(dwconv(h, lb.conv)))
            h = layer_norm(x, blk.ln2.weight, blk.ln2.bias, self.norm_eps)
            x = x + blk.ffn.fc2(gelu(blk.ffn.fc1(h)))
        hidden = layer_norm(x, self.final_ln.weight, self.final_ln.bias, self.norm_eps)
        logits = self.head(hidden)
        return torch.log_softmax(logits, dim=-1), hidden

    def forward(self, tokens, lengths=None, kernel=None):
        """tokens: a list of 1-D LongTensors (framed ids), or a padded [B, Lmax] tensor with
        lengths [B]. Every sequence is processed independently (padding never matters).
        Returns (list of logp [L_b, 20], list of hidden [L_b, d])."""
        if lengths is not None:
            seqs = [tokens[b, : int(lengths[b])] for b in range(tokens.shape[0])]
        elif isinstance(tokens, torch.Tensor) and tokens.dim() == 1:
            seqs = [tokens]
        else:
            seqs = list(tokens)
        outs = [self.forward_one(s, kernel) for s in seqs]
        return [o[0] for o in outs], [o[1] for o in outs]


def format_tensor_names(n_layers, conv_kernel=0, local_kernel=0):
    """The FORMAT.md tensor names in canonical (table) order."""
    names = ["embed.weight"]
    for i in range(n_layers):
        pre = "layers.%d." % i
        names += [pre + "ln1.weight", pre + "ln1.bias"]
        for n in ("q", "k", "v", "o"):
            names += [pre + "attn.%s.weight" % n, pre + "attn.%s.bias" % n]
        names += [pre + "attn.proj"]
        if conv_kernel > 0:
            names += [pre + "attn.conv_q", pre + "attn.conv_k", pre + "attn.conv_v"]
        if local_kernel > 0:
            names += [pre + "local.ln.weight", pre + "local.ln.bias", pre + "local.conv",
                      pre + "local.out.weight", pre + "local.out.bias"]
        names += [pre + "ln2.weight", pre + "ln2.bias",
                  pre + "ffn.fc1.weight", pre + "ffn.fc1.bias",
                  pre + "ffn.fc2.weight", pre + "ffn.fc2.bias"]
    names += ["final_ln.weight", "final_ln.bias", "head.weight", "head.bias"]
    return names


def make_metadata(cfg, name, trained=False, provenance=""):
    meta = {
        "format": "performer-protein",
        "format_version": "1",
        "name": name,
        "vocab": vocab_json(),
        "n_layers": str(cfg["n_layers"]),
        "d_model": str(cfg["d_model"]),
        "n_heads": str(cfg["n_heads"]),
        "d_ff": str(cfg["d_ff"]),
        "kernel": cfg["kernel"],
        "n_features": str(cfg["n_features"]),
        "position": "sinusoidal",
        "norm_eps": repr(float(cfg["norm_eps"])),   # e.g. "1e-05"
        "trained": "true" if trained else "false",
        "provenance": provenance,
    }
    if cfg.get("conv_kernel", 0) > 0:  # written only for conv models (older files lack it)
        meta["conv_kernel"] = str(cfg["conv_kernel"])
    if cfg.get("local_kernel", 0) > 0:  # likewise for models with local blocks
        meta["local_kernel"] = str(cfg["local_kernel"])
    return meta


def state_dict_to_format(model):
    """Model -> ordered dict of contiguous float32 tensors named per FORMAT.md."""
    sd = model.state_dict()
    names = format_tensor_names(model.n_layers, model.conv_kernel, model.local_kernel)
    assert set(names) == set(sd.keys()), set(names) ^ set(sd.keys())
    return {n: sd[n].detach().to(torch.float32).contiguous() for n in names}


def from_format(tensors, metadata, dtype=torch.float64):
    """(tensors, metadata) as read by load_safetensors -> Performer in `dtype` (the float32
    values converted exactly). Checks the metadata and that the tensor set/shapes match."""
    if metadata.get("format") != "performer-protein" or metadata.get("format_version") != "1":
        raise ValueError("not a performer-protein v1 file")
    if json.loads(metadata["vocab"]) != VOCAB:
        raise ValueError("vocabulary mismatch")
    if metadata.get("position", "sinusoidal") != "sinusoidal":
        raise ValueError("unsupported position encoding")
    cfg = dict(n_layers=int(metadata["n_layers"]), d_model=int(metadata["d_model"]),
               n_heads=int(metadata["n_heads"]), d_ff=int(metadata["d_ff"]),
               n_features=int(metadata["n_features"]), kernel=metadata["kernel"],
               norm_eps=float(metadata["norm_eps"]),
               conv_kernel=int(metadata.get("conv_kernel", "0")),
               local_kernel=int(metadata.get("local_kernel", "0")))
    model = Performer(**cfg)
    sd = model.state_dict()
    if set(sd.keys()) != set(tensors.keys()):
        raise ValueError("tensor set mismatch: %s" % sorted(set(sd.keys()) ^ set(tensors.keys())))
    for n, t in tensors.items():
        if tuple(t.shape) != tuple(sd[n].shape):
            raise ValueError("%s: shape %s, expected %s" % (n, tuple(t.shape), tuple(sd[n].shape)))
    model.load_state_dict({n: t.to(torch.float32) for n, t in tensors.items()})
    return model.to(dtype)


def load_model(path, dtype=torch.float64):
    t, meta = load_safetensors(path)
    return from_format(t, meta, dtype)


def save_model(model, path, name, trained=False, provenance=""):
    save_safetensors(path, state_dict_to_format(model),
                     make_metadata(model.config(), name, trained, provenance))


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
def masked_lm_loss(logps, targets):
    """logps: list of [L_b, 20] (or one [N, 20] tensor); targets: matching list of [L_b] (or one
    [N]) integer tensors with class index 0..19 (= token id - 5) or -1 for unscored positions.
    Returns the mean over all scored positions of all sequences of -logp[p, target[p]]."""
    if isinstance(logps, (list, tuple)):
        logp = torch.cat(list(logps), dim=0)
        tgt = torch.cat([t.long() for t in targets], dim=0)
    else:
        logp, tgt = logps, targets.long()
    scored = tgt >= 0
    n = int(scored.sum())
    if n == 0:
        raise ValueError("no scored positions")
    picked = logp[scored].gather(1, tgt[scored][:, None])[:, 0]
    return -picked.sum() / n


def xent_from_logits(logits, targets):
    """masked_lm_loss applied to log_softmax(logits) (the `xent` op fixture)."""
    return masked_lm_loss(torch.log_softmax(logits, dim=-1), targets)
