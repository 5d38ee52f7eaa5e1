#!/usr/bin/env python3
"""Uniform average of float32 safetensors weight files with the same tensors and shapes (e.g.
checkpoints of one run exported with `bin/performer export`); the output keeps the first file's
metadata. Reads and writes with the PyTorch reference's safetensors functions
(tests/reference/performer_ref.py), which validate every header. Measurement only: no release has
shipped an average (weights/TRAINING.md, stages 24 and 25).

usage: weights/average.py OUT IN1 IN2 ..."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from performer_ref import load_safetensors, save_safetensors  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[-1])
    out, ins = sys.argv[1], sys.argv[2:]
    first, meta = load_safetensors(ins[0])
    if any(t.dtype != torch.float32 for t in first.values()):
        sys.exit("average.py: %s has tensors that are not F32" % ins[0])
    acc = {k: t.double() for k, t in first.items()}
    for p in ins[1:]:
        ts, _ = load_safetensors(p)
        if {k: (t.dtype, t.shape) for k, t in ts.items()} != {k: (t.dtype, t.shape) for k, t in first.items()}:
            sys.exit("average.py: %s does not have %s's tensors and shapes" % (p, ins[0]))
        for k, t in ts.items():
            acc[k] += t.double()
    save_safetensors(out, {k: (t / len(ins)).float() for k, t in acc.items()}, meta)
    print("averaged %d files into %s" % (len(ins), out))


if __name__ == "__main__":
    main()
