#!/usr/bin/env bash
# make_data.sh - builds the training corpus under weights/data/ (see weights/DATA.md); run by `make data`.
# Dumps the metastudent-data BLAST databases (BPO, MFO, CCO goasp.fasta) with blastdbcmd and hands
# them to weights/make_data.py. Skips the work when every output exists and is newer than every
# input (databases and these scripts) unless FORCE=1.
# Environment: FORCE=1 rebuild; DATA_OUT output dir (default weights/data);
#              METASTUDENT_DIR the dataset_201401 directory (default: found with dpkg -L).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DATA_OUT:-weights/data}
PY=/usr/bin/python3
SEED=pfdata1-shuffle-v1

die() { echo "make_data: $*" >&2; exit 1; }
command -v blastdbcmd >/dev/null || die "blastdbcmd not found (apt-get install -y ncbi-blast+)"
[ -x "$PY" ] || die "$PY not found"

dir=${METASTUDENT_DIR:-}
if [ -z "$dir" ]; then
    psq=$(dpkg -L metastudent-data 2>/dev/null | grep '/BPO/goasp\.fasta\.psq$' | head -1 || true)
    if [ -n "$psq" ]; then dir=$(dirname "$(dirname "$psq")"); else dir=/usr/share/metastudent-data/dataset_201401; fi
fi
dbs=()
inputs=(weights/make_data.sh weights/make_data.py)
for o in BPO MFO CCO; do
    db=$dir/$o/goasp.fasta
    [ -f "$db.psq" ] || die "BLAST database $db not found (apt-get install -y metastudent-data ncbi-blast+)"
    dbs+=("$db")
    inputs+=("$db.psq" "$db.phr" "$db.pin")
done

outputs=("$OUT/train.bin" "$OUT/valid.bin" "$OUT/test.bin" "$OUT/valid.fasta" "$OUT/test.fasta" "$OUT/stats.json")
if [ "${FORCE:-0}" != 1 ]; then
    fresh=1
    for o in "${outputs[@]}"; do
        [ -f "$o" ] || { fresh=0; break; }
        for i in "${inputs[@]}"; do [ "$o" -nt "$i" ] || { fresh=0; break 2; }; done
    done
    if [ $fresh = 1 ]; then
        echo "make_data: $OUT is up to date (FORCE=1 rebuilds)"
        "$PY" weights/make_data.py --summary "$OUT"
        exit 0
    fi
fi

mkdir -p "$OUT"
rm -f "$OUT/stats.json"    # written last by make_data.py: its absence marks an incomplete build
echo "make_data: building $OUT from ${dbs[*]}"
"$PY" weights/make_data.py --out "$OUT" --seed "$SEED" "${dbs[@]}"
