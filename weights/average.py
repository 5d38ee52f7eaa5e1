#!/usr/bin/env python3
"""Uniform average of float32 safetensors weight files with identical layouts (the same tensors,
shapes and offsets, e.g. checkpoints of one run exported with `bin/performer export`); the output
keeps the first file's header and metadata. Measurement only: no release has shipped an average
(weights/TRAINING.md, stages 24 and 25).

usage: weights/average.py OUT IN1 IN2 ..."""
import json
import struct
import sys

import numpy as np


def load(path):
    """Returns (header bytes, header JSON, float32 data) of a safetensors file."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    if any(v["dtype"] != "F32" for k, v in head.items() if k != "__metadata__"):
        sys.exit("average.py: %s has tensors that are not F32" % path)
    return b[:8 + n], head, np.frombuffer(b[8 + n:], dtype=np.float32)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[-1])
    out, ins = sys.argv[1], sys.argv[2:]
    raw, head0, acc = load(ins[0])
    layout = lambda h: {k: (v["shape"], v["data_offsets"]) for k, v in h.items() if k != "__metadata__"}  # noqa: E731
    acc = acc.astype(np.float64)
    for p in ins[1:]:
        _, h, d = load(p)
        if layout(h) != layout(head0) or d.size != acc.size:
            sys.exit("average.py: %s does not have %s's tensors and shapes" % (p, ins[0]))
        acc += d
    acc /= len(ins)
    with open(out, "wb") as f:
        f.write(raw + acc.astype(np.float32).tobytes())
    print("averaged %d files into %s" % (len(ins), out))


if __name__ == "__main__":
    main()
