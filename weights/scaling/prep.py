#!/usr/bin/env python3
"""Packs a deterministic random subset of a PFDATA1 token file into a small xz file for the
scaling study (weights/scaling/study.py), which runs on a borrowed GPU machine that cannot read
weights/data/. Standard library only.

Output (before xz): b"PFSUB1\0\0", u64 n_seqs, u64 n_tokens, u32 lengths[n_seqs], u8 tokens[n_tokens]
Usage: prep.py IN.bin OUT.xz [--max-tokens N] [--seed S]
"""
import argparse, lzma, random, struct, sys


def read_pfdata(path):
    """PFDATA1 -> (memoryview of tokens, list of (start, end))."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:8] != b"PFDATA1\0":
        sys.exit("%s: not a PFDATA1 file" % path)
    n, ntok = struct.unpack_from("<QQ", raw, 8)
    offs = struct.unpack_from("<%dQ" % (n + 1), raw, 24)
    base = 24 + 8 * (n + 1)
    if offs[-1] != ntok or base + ntok != len(raw):
        sys.exit("%s: sizes do not match the header" % path)
    toks = memoryview(raw)[base:]
    return toks, [(offs[i], offs[i + 1]) for i in range(n) if offs[i + 1] > offs[i]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp"); ap.add_argument("out")
    ap.add_argument("--max-tokens", type=int, default=0, help="0 = all sequences")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    toks, spans = read_pfdata(a.inp)
    if a.max_tokens:
        random.Random(a.seed).shuffle(spans)
        keep, total = [], 0
        for s, e in spans:
            if total + (e - s) > a.max_tokens:
                continue
            keep.append((s, e)); total += e - s
        spans = keep
    lens = [e - s for s, e in spans]
    body = b"".join(bytes(toks[s:e]) for s, e in spans)
    blob = b"PFSUB1\0\0" + struct.pack("<QQ", len(lens), len(body)) + \
        struct.pack("<%dI" % len(lens), *lens) + body
    with open(a.out, "wb") as f:
        f.write(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    print("%s: %d sequences, %d residues" % (a.out, len(lens), len(body)))


if __name__ == "__main__":
    main()
