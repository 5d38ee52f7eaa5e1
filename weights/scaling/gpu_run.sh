#!/usr/bin/env bash
# The scaling study's one device command (weights/scaling/README.md): runs study.py on the GPU
# with the carried data in weights/scaling/.data and puts the results, the log and the weights
# of runs C and S under $OUT (the device tool's return folder; at most 64 MB come back).
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/scaling-out}
mkdir -p "$OUT" /tmp/st
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
lscpu | head -20 >> "$OUT/gpu.txt"
PYTHONUNBUFFERED=1 timeout "${LIMIT:-520}" python3 study.py --data .data --out /tmp/st "$@" 2>&1 | tee "$OUT/log.txt"
cp /tmp/st/results.json "$OUT/" 2>/dev/null
for r in C S; do cp "/tmp/st/$r.safetensors" "$OUT/" 2>/dev/null; done
ls -la "$OUT"
