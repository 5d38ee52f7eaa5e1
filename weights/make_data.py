#!/usr/bin/python3
"""make_data.py - builds the training corpus (weights/DATA.md) from BLAST protein databases.

Usage: make_data.py --out DIR [--seed TEXT] DB [DB ...]
       make_data.py --summary DIR          (prints the summary of an existing DIR/stats.json)

Each DB is a BLAST database name (e.g. .../dataset_201401/BPO/goasp.fasta); it is dumped with
`blastdbcmd -db DB -entry all` and streamed. Recipe, in order:
  1. union by accession (defline text before the first '|'); the first database listing an
     accession wins, and accessions listed with a different sequence elsewhere are counted;
  2. per sequence: upper-case, strip one terminal '*', map every byte that is not one of the 25
     residue letters ACDEFGHIKLMNPQRSTVWY XBUZO to 'X' (counted per original character), drop
     empty sequences;
  3. exact-duplicate sequences are removed (the lexicographically smallest accession is kept);
  4. split by h = first 8 bytes of SHA-256(sequence) read big-endian: h % 100 == 0 -> test,
     == 1 -> valid, else train;
  5. each split is ordered by SHA-256(seed || sequence) (a deterministic shuffle);
  6. DIR/{train,valid,test}.bin (PFDATA1), DIR/{valid,test}.fasta, DIR/stats.json.
Outputs are written to temporary names and renamed; stats.json is written last.
Standard library only.
"""
import argparse
import array
import hashlib
import json
import math
import os
import subprocess
import sys
import time

RESIDUES = b"ACDEFGHIKLMNPQRSTVWY" + b"XBUZO"   # token ids 5..29 in this order
STANDARD = RESIDUES[:20]
MAGIC = b"PFDATA1\0"
SPLITS = ("train", "valid", "test")
DEFAULT_SEED = "pfdata1-shuffle-v1"

# byte -> 'X' for anything that is not a residue letter (input is upper-cased first)
TO_X = bytes(c if c in RESIDUES else ord("X") for c in range(256))
# residue letter -> token id (only applied to normalized sequences)
TO_TOK = bytes((5 + RESIDUES.index(c)) if c in RESIDUES else 0 for c in range(256))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def read_blastdb(db):
    """Yields (header_without_gt, raw_sequence_bytes) for every record of BLAST database db."""
    cmd = ["blastdbcmd", "-db", db, "-entry", "all", "-line_length", "1000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=1 << 20)
    header, parts = None, []
    for line in proc.stdout:
        if line[:1] == b">":
            if header is not None:
                yield header, b"".join(parts)
            header, parts = line[1:].strip(), []
        else:
            line = line.strip()
            if line:
                if header is None:
                    raise SystemExit("make_data: %s: sequence data before the first header" % db)
                parts.append(line)
    if header is not None:
        yield header, b"".join(parts)
    proc.stdout.close()
    if proc.wait() != 0:
        raise SystemExit("make_data: blastdbcmd failed for %s (exit %d)" % (db, proc.returncode))


def accession(header):
    acc = header.split(b"|", 1)[0].split(None, 1)
    return acc[0].decode("ascii", "replace") if acc else ""


def write_atomic(path, writer):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        writer(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_bin(path, seqs):
    """seqs: list of normalized residue byte strings, in file order."""
    offs = array.array("Q", [0])
    total = 0
    for s in seqs:
        total += len(s)
        offs.append(total)
    if sys.byteorder != "little":
        offs.byteswap()

    def writer(f):
        f.write(MAGIC)
        f.write(len(seqs).to_bytes(8, "little"))
        f.write(total.to_bytes(8, "little"))
        f.write(offs.tobytes())
        buf, size = [], 0
        for s in seqs:
            buf.append(s.translate(TO_TOK))
            size += len(s)
            if size >= 1 << 24:
                f.write(b"".join(buf))
                buf, size = [], 0
        f.write(b"".join(buf))
    write_atomic(path, writer)


def write_fasta(path, names, seqs, width=60):
    def writer(f):
        out = []
        for name, s in zip(names, seqs):
            out.append(b">" + name.encode() + b"\n")
            for i in range(0, len(s), width):
                out.append(s[i:i + width] + b"\n")
        f.write(b"".join(out))
    write_atomic(path, writer)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def length_stats(lengths):
    if not lengths:
        return {"min": 0, "median": 0, "mean": 0, "max": 0, "p90": 0, "p99": 0, "over_510": 0, "over_1022": 0}
    ls = sorted(lengths)
    n = len(ls)
    med = ls[n // 2] if n % 2 else (ls[n // 2 - 1] + ls[n // 2]) / 2
    if med == int(med):
        med = int(med)
    return {"min": ls[0], "median": med, "mean": round(sum(ls) / n, 2), "max": ls[-1],
            "p90": ls[min(n - 1, (n * 90) // 100)], "p99": ls[min(n - 1, (n * 99) // 100)],
            # sequences that do not fit a 512 / 1024 position window once framed as <cls> .. <eos>
            "over_510": sum(1 for x in ls if x > 510), "over_1022": sum(1 for x in ls if x > 1022)}


def summary(stats):
    lines = []
    inp = stats["input"]
    lines.append("corpus: %d records in %d databases -> %d unique accessions -> %d unique sequences"
                 % (inp["records_read"], len(inp["databases"]), inp["unique_accessions"],
                    stats["unique_sequences"]))
    lines.append("  duplicates removed: %d sequences; empty dropped: %d; terminal '*' stripped: %d; "
                 "accession conflicts: %d" % (stats["duplicates_removed"], stats["empty_dropped"],
                                               stats["terminal_stops_stripped"],
                                               inp["accession_conflicts"]))
    mapped = stats["mapped_to_X"]
    lines.append("  characters mapped to X: %d%s" % (mapped["total"], (" (%s)" % ", ".join(
        "%s:%d" % (k, v) for k, v in sorted(mapped["by_char"].items()))) if mapped["by_char"] else ""))
    for sp in SPLITS:
        d = stats["splits"][sp]
        L = d["length"]
        lines.append("  %-5s %8d seqs %11d residues  len min/median/mean/max %d/%s/%s/%d  %s (%d bytes)"
                     % (sp, d["sequences"], d["residues"], L["min"], L["median"], L["mean"], L["max"],
                        d["bin"]["file"], d["bin"]["bytes"]))
    u = stats["unigram_train"]
    lines.append("  train unigram entropy %.4f nats (perplexity %.3f over 20 standard residues)"
                 % (u["entropy_nats"], u["perplexity"]))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out")
    ap.add_argument("--seed", default=DEFAULT_SEED)
    ap.add_argument("--summary", metavar="DIR")
    ap.add_argument("db", nargs="*")
    a = ap.parse_args()
    if a.summary:
        with open(os.path.join(a.summary, "stats.json")) as f:
            print(summary(json.load(f)))
        return
    if not a.out or not a.db:
        ap.error("--out and at least one DB are required")
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)

    # 1. union by accession
    by_acc = {}
    dbs, records, same_repeats, conflicts, no_acc = [], 0, 0, 0, 0
    for db in a.db:
        n = 0
        for header, raw in read_blastdb(db):
            n += 1
            acc = accession(header)
            if not acc:
                no_acc += 1
                acc = header.decode("ascii", "replace")
            seq = raw.upper()
            old = by_acc.get(acc)
            if old is None:
                by_acc[acc] = seq
            elif old == seq:
                same_repeats += 1
            else:
                conflicts += 1
        dbs.append({"db": db, "records": n})
        records += n
        log("make_data: read %s: %d records (%.1fs)" % (db, n, time.time() - t0))

    # 2.-3. normalize, drop empty, dedupe (smallest accession kept)
    seen = set()
    kept = []          # (accession, normalized sequence)
    dup = empty = stops = 0
    mapped = {}
    for acc in sorted(by_acc):
        seq = by_acc[acc]
        if seq.endswith(b"*"):
            seq = seq[:-1]
            stops += 1
        bad = seq.translate(None, RESIDUES)
        if bad:
            seq = seq.translate(TO_X)
        if not seq:
            empty += 1
            continue
        h = hashlib.sha256(seq).digest()
        if h in seen:
            dup += 1
            continue
        seen.add(h)
        for c in bad:
            k = chr(c) if 32 < c < 127 else "\\x%02x" % c
            mapped[k] = mapped.get(k, 0) + 1
        kept.append((acc, seq, h))
    n_acc = len(by_acc)
    del by_acc, seen
    log("make_data: %d unique sequences, %d duplicates removed (%.1fs)" % (len(kept), dup, time.time() - t0))

    # 4.-5. split and shuffle
    seed = a.seed.encode()
    parts = {sp: [] for sp in SPLITS}
    for acc, seq, h in kept:
        b = int.from_bytes(h[:8], "big") % 100
        sp = "test" if b == 0 else "valid" if b == 1 else "train"
        parts[sp].append((hashlib.sha256(seed + seq).digest(), acc, seq))
    del kept
    for sp in SPLITS:
        parts[sp].sort()

    # 6. outputs
    out = {}
    freq_train = None
    for sp in SPLITS:
        names = [p[1] for p in parts[sp]]
        seqs = [p[2] for p in parts[sp]]
        parts[sp] = None
        binpath = os.path.join(a.out, sp + ".bin")
        write_bin(binpath, seqs)
        d = {"sequences": len(seqs), "residues": sum(len(s) for s in seqs),
             "length": length_stats([len(s) for s in seqs])}
        joined = b"".join(seqs)
        d["residue_counts"] = {chr(c): joined.count(bytes([c])) for c in RESIDUES}
        del joined
        if sp == "train":
            freq_train = d["residue_counts"]
        d["bin"] = {"file": sp + ".bin", "bytes": os.path.getsize(binpath), "sha256": sha256_file(binpath)}
        if sp != "train":
            fa = os.path.join(a.out, sp + ".fasta")
            write_fasta(fa, names, seqs)
            d["fasta"] = {"file": sp + ".fasta", "bytes": os.path.getsize(fa), "sha256": sha256_file(fa)}
        out[sp] = d
        log("make_data: wrote %s: %d sequences, %d residues (%.1fs)" % (binpath, d["sequences"], d["residues"], time.time() - t0))

    tot = sum(freq_train[chr(c)] for c in STANDARD)
    probs = {chr(c): (freq_train[chr(c)] / tot if tot else 0.0) for c in STANDARD}
    ent = -sum(p * math.log(p) for p in probs.values() if p > 0)
    stats = {
        "format": "PFDATA1",
        "seed": a.seed,
        "split_rule": "h = big-endian u64 of SHA-256(sequence)[0:8]; h % 100 == 0 -> test, 1 -> valid, else train",
        "order_rule": "each split sorted by SHA-256(seed || sequence)",
        "input": {"databases": dbs, "records_read": records, "unique_accessions": n_acc,
                  "repeated_accessions_same_sequence": same_repeats, "accession_conflicts": conflicts,
                  "headers_without_accession": no_acc},
        "unique_sequences": sum(out[sp]["sequences"] for sp in SPLITS),
        "duplicates_removed": dup,
        "empty_dropped": empty,
        "terminal_stops_stripped": stops,
        "mapped_to_X": {"total": sum(mapped.values()), "by_char": mapped},
        "unigram_train": {"order": STANDARD.decode(),
                          "probs": {k: round(v, 6) for k, v in probs.items()},
                          "entropy_nats": round(ent, 6), "perplexity": round(math.exp(ent), 4)},
        "splits": out,
        "seconds": round(time.time() - t0, 1),
    }
    write_atomic(os.path.join(a.out, "stats.json"),
                 lambda f: f.write((json.dumps(stats, indent=2) + "\n").encode()))
    print(summary(stats))
    print("  took %.1fs; outputs in %s" % (time.time() - t0, a.out))


if __name__ == "__main__":
    main()
