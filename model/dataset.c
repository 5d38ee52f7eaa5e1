/* dataset.c - PFDATA1 token files and FASTA files as sequence sets (see dataset.h, weights/DATA.md). */
#include "dataset.h"
#include "atomic.h"
#include "tokenizer.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct ds_set {
    size_t n;                /* sequences */
    size_t ntok;             /* residues over all sequences */
    size_t maxlen;           /* longest sequence */
    const uint64_t *off;     /* n + 1 offsets into tok, host byte order */
    const uint8_t *tok;      /* ntok residue ids */
    void *map;               /* mmap'd file (ds_open) or NULL */
    size_t maplen;
    uint64_t *off_heap;      /* owned offsets (FASTA sets, or a byte-swapped copy on big-endian hosts) */
    uint8_t *tok_heap;       /* owned tokens (FASTA sets) */
    char *names;             /* FASTA sets: NUL-terminated names back to back */
    size_t *name_off;        /* FASTA sets: n offsets into names */
};

/* Formats a message into err (when err and errlen allow). */
__attribute__((format(printf, 3, 4)))
static void ds_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (!err || errlen == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Reads a little-endian u64 from p (any alignment). */
static uint64_t ds_rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return le64toh(v);
}

/* Writes v as a little-endian u64 at p. */
static void ds_wr64(unsigned char *p, uint64_t v) {
    v = htole64(v);
    memcpy(p, &v, sizeof v);
}

/* Returns the index of the sequence holding token index t (offsets sorted, t < ntok). */
static size_t ds_seq_of_token(const uint64_t *off, size_t n, uint64_t t) {
    size_t lo = 0, hi = n;           /* invariant: off[lo] <= t < off[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (off[mid] <= t) lo = mid; else hi = mid;
    }
    return lo;
}

/* Returns the index of the first byte outside 5..29 in tok[0..n), or n when all are residue ids. */
static size_t ds_find_bad_token(const uint8_t *tok, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t end = n - i > 65536 ? i + 65536 : n;
        unsigned bad = 0;
        for (size_t j = i; j < end; j++)   /* branch-free so the compiler vectorizes it */
            bad |= (unsigned)((uint8_t)(tok[j] - TOK_RES0) > (uint8_t)(TOK_VOCAB - 1 - TOK_RES0));
        if (bad)
            for (size_t j = i; j < end; j++)
                if (!tok_is_residue(tok[j])) return j;
        i = end;
    }
    return n;
}

/* Opens and validates a PFDATA1 file (see dataset.h). */
int ds_open(ds_set **out, const char *path, char *err, size_t errlen) {
    int rc = -1, fd = -1;
    ds_set *s = NULL;
    struct stat st;
    const unsigned char *p;
    uint64_t n, ntok, avail, rest;
    size_t bad;

    if (out) *out = NULL;
    if (!out || !path) { ds_err(err, errlen, "ds_open: no output or path given"); goto cleanup; }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { ds_err(err, errlen, "%s: %s", path, strerror(errno)); goto cleanup; }
    if (fstat(fd, &st) != 0) { ds_err(err, errlen, "%s: %s", path, strerror(errno)); goto cleanup; }
    if (!S_ISREG(st.st_mode)) { ds_err(err, errlen, "%s: not a regular file", path); goto cleanup; }
    if (st.st_size < DS_HEADER_BYTES + 8) {
        ds_err(err, errlen, "%s: truncated: %lld bytes is too short for a PFDATA1 header (%d bytes)",
               path, (long long)st.st_size, DS_HEADER_BYTES + 8);
        goto cleanup;
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) { ds_err(err, errlen, "%s: file too large", path); goto cleanup; }
    s = calloc(1, sizeof *s);
    if (!s) { ds_err(err, errlen, "%s: out of memory", path); goto cleanup; }
    s->maplen = (size_t)st.st_size;
    s->map = mmap(NULL, s->maplen, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        ds_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
        goto cleanup;
    }
    p = s->map;
    if (memcmp(p, DS_MAGIC, 8) != 0) {
        ds_err(err, errlen, "%s: bad magic (not a PFDATA1 token file)", path);
        goto cleanup;
    }
    n = ds_rd64(p + 8);
    ntok = ds_rd64(p + 16);
    avail = (uint64_t)s->maplen - DS_HEADER_BYTES;
    if (n >= avail / 8) {                 /* (n + 1) * 8 > avail, computed without overflow */
        ds_err(err, errlen, "%s: truncated: n_seqs = %llu needs %llu offset bytes but only %llu follow the header",
               path, (unsigned long long)n,
               n < UINT64_MAX / 8 - 1 ? (unsigned long long)((n + 1) * 8) : (unsigned long long)UINT64_MAX,
               (unsigned long long)avail);
        goto cleanup;
    }
    rest = avail - (n + 1) * 8;
    if (ntok != rest) {
        if (ntok > rest)
            ds_err(err, errlen, "%s: truncated: n_tokens = %llu but only %llu token bytes follow the offsets",
                   path, (unsigned long long)ntok, (unsigned long long)rest);
        else
            ds_err(err, errlen, "%s: %llu trailing bytes after n_tokens = %llu tokens",
                   path, (unsigned long long)(rest - ntok), (unsigned long long)ntok);
        goto cleanup;
    }
    s->n = (size_t)n;
    s->ntok = (size_t)ntok;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s->off = (const uint64_t *)(const void *)(p + DS_HEADER_BYTES);   /* 8-aligned: mmap base + 24 */
#else
    s->off_heap = malloc((s->n + 1) * sizeof *s->off_heap);
    if (!s->off_heap) { ds_err(err, errlen, "%s: out of memory", path); goto cleanup; }
    for (size_t i = 0; i <= s->n; i++) s->off_heap[i] = ds_rd64(p + DS_HEADER_BYTES + 8 * i);
    s->off = s->off_heap;
#endif
    s->tok = p + DS_HEADER_BYTES + (s->n + 1) * 8;
    if (s->off[0] != 0) {
        ds_err(err, errlen, "%s: offsets[0] = %llu, must be 0", path, (unsigned long long)s->off[0]);
        goto cleanup;
    }
    for (size_t i = 1; i <= s->n; i++) {
        uint64_t a = s->off[i - 1], b = s->off[i];
        if (b > ntok) {
            ds_err(err, errlen, "%s: offsets[%zu] = %llu out of range (n_tokens = %llu)",
                   path, i, (unsigned long long)b, (unsigned long long)ntok);
            goto cleanup;
        }
        if (b < a) {
            ds_err(err, errlen, "%s: offsets[%zu] = %llu < offsets[%zu] = %llu (must be non-decreasing)",
                   path, i, (unsigned long long)b, i - 1, (unsigned long long)a);
            goto cleanup;
        }
        if (b - a > s->maxlen) s->maxlen = (size_t)(b - a);
    }
    if (s->off[s->n] != ntok) {
        ds_err(err, errlen, "%s: offsets[%zu] = %llu, must equal n_tokens = %llu",
               path, s->n, (unsigned long long)s->off[s->n], (unsigned long long)ntok);
        goto cleanup;
    }
    bad = ds_find_bad_token(s->tok, s->ntok);
    if (bad < s->ntok) {
        size_t q = ds_seq_of_token(s->off, s->n, bad);
        ds_err(err, errlen, "%s: bad token id %u at token %zu (sequence %zu, position %zu): not a residue id (%d..%d)",
               path, (unsigned)s->tok[bad], bad, q, (size_t)(bad - s->off[q]) + 1, TOK_RES0, TOK_VOCAB - 1);
        goto cleanup;
    }
    *out = s;
    s = NULL;
    rc = 0;
cleanup:
    if (fd >= 0) close(fd);
    ds_close(s);
    return rc;
}

/* Growable byte buffer used by the FASTA parser. */
typedef struct { void *p; size_t len, cap; } ds_buf;

/* Ensures room for add more elements of size elt; returns 0 or -1 on overflow / out of memory. */
static int ds_reserve(ds_buf *b, size_t add, size_t elt) {
    size_t need, cap;
    void *np;
    if (add > SIZE_MAX / elt - b->len) return -1;
    need = b->len + add;
    if (need <= b->cap) return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2 / elt) { cap = need; break; }
        cap *= 2;
    }
    np = realloc(b->p, cap * elt);
    if (!np) return -1;
    b->p = np;
    b->cap = cap;
    return 0;
}

/* Formats byte c for an error message: 'A' or '\xHH'. */
static const char *ds_show(unsigned char c, char buf[8]) {
    if (c > 0x20 && c < 0x7f && c != '\'') snprintf(buf, 8, "'%c'", c);
    else snprintf(buf, 8, "'\\x%02X'", c);
    return buf;
}

/* Returns 1 for the whitespace bytes ignored inside sequence lines. */
static int ds_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* Writes into hint a suggested fix for the invalid residue byte c ("" when there is none). */
static void ds_residue_hint(unsigned char c, char *hint, size_t n) {
    if (c == '-' || c == '.')
        snprintf(hint, n, "; alignment gaps are not residues: remove them first, e.g. sed '/^>/!s/[-.]//g'");
    else if (c >= '0' && c <= '9')
        snprintf(hint, n, "; numbered lines (GenBank/EMBL style) are not FASTA: keep only the residue letters");
    else
        snprintf(hint, n, "; allowed: ACDEFGHIKLMNPQRSTVWY, XBUZO (any case), whitespace and one final '*'");
}

/* Describes the first line of a file that does not start with a FASTA header: what it looks like
 * (binary, compressed, UTF-16) and the fix, into msg. */
static void ds_not_fasta(const char *line, size_t len, char *msg, size_t n) {
    const unsigned char *u = (const unsigned char *)line;
    size_t ctl = 0;
    for (size_t i = 0; i < len; i++) ctl += (u[i] < 0x20 && !ds_space(u[i])) || u[i] == 0x7f;
    if (len >= 2 && u[0] == 0x1f && u[1] == 0x8b)
        snprintf(msg, n, "a gzip-compressed file, not FASTA text: decompress it first (gunzip)");
    else if (len >= 2 && ((u[0] == 0xff && u[1] == 0xfe) || (u[0] == 0xfe && u[1] == 0xff)))
        snprintf(msg, n, "UTF-16 text: save it as plain ASCII/UTF-8 text (e.g. iconv -f UTF-16 -t UTF-8)");
    else if (ctl > 0)
        snprintf(msg, n, "binary data, not a FASTA text file (a FASTA file starts with a '>name' header line)");
    else
        snprintf(msg, n, "sequence data before the first '>' header (a FASTA file starts with a '>name' "
                 "header line)");
}

/* Parses a FASTA file into memory (see dataset.h). */
int ds_load_fasta(ds_set **out, const char *path, char *err, size_t errlen) {
    int rc = -1;
    FILE *f = NULL;
    char *line = NULL;
    size_t linecap = 0, lineno = 0;
    ssize_t got;
    ds_set *s = NULL;
    ds_buf tok = {0}, off = {0}, names = {0}, name_off = {0};
    size_t rec_pos = 0;          /* residues in the current record */
    size_t rec_line = 0;         /* line of the current header; 0 before the first record */
    size_t stop_pos = 0;         /* 1-based position of a '*' in the current record, 0 if none */
    char shown[8];

    if (out) *out = NULL;
    if (!out || !path) { ds_err(err, errlen, "ds_load_fasta: no output or path given"); goto cleanup; }
    f = fopen(path, "rb");
    if (!f) { ds_err(err, errlen, "%s: %s", path, strerror(errno)); goto cleanup; }
    if (ds_reserve(&off, 1, sizeof(uint64_t)) != 0) goto oom;
    ((uint64_t *)off.p)[off.len++] = 0;

#define DS_CUR_NAME ((const char *)names.p + ((size_t *)name_off.p)[name_off.len - 1])
    for (;;) {
        errno = 0;
        got = getline(&line, &linecap, f);
        if (got < 0) {
            if (ferror(f)) { ds_err(err, errlen, "%s: read error: %s", path, strerror(errno ? errno : EIO)); goto cleanup; }
            break;
        }
        lineno++;
        size_t lead = 0;             /* a UTF-8 byte-order mark (Windows editors) and indentation */
        if (lineno == 1 && got >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) lead = 3;
        while (lead < (size_t)got && (line[lead] == ' ' || line[lead] == '\t')) lead++;
        if (lead < (size_t)got && line[lead] == ';') continue;   /* old-style comment line */
        if (lead < (size_t)got && line[lead] == '>') {
            size_t a = lead + 1, b;
            if (rec_line) {                  /* close the previous record */
                if (rec_pos == 0) {
                    ds_err(err, errlen, "%s: record %zu '%.80s' (line %zu) has no residues: add its sequence "
                           "or remove the record", path, name_off.len, DS_CUR_NAME, rec_line);
                    goto cleanup;
                }
                if (ds_reserve(&off, 1, sizeof(uint64_t)) != 0) goto oom;
                ((uint64_t *)off.p)[off.len++] = tok.len;
            }
            while (a < (size_t)got && (line[a] == ' ' || line[a] == '\t')) a++;
            b = a;
            while (b < (size_t)got && line[b] != '\0' && !ds_space((unsigned char)line[b])) b++;
            for (size_t c = b; c + 1 < (size_t)got; c++)
                if (line[c] == '\r' && !ds_space((unsigned char)line[c + 1])) {
                    ds_err(err, errlen, "%s: line %zu: carriage returns (\\r) inside the line: the file has "
                           "old Mac line endings; convert them with tr '\\r' '\\n' < IN > OUT", path, lineno);
                    goto cleanup;
                }
            if (ds_reserve(&name_off, 1, sizeof(size_t)) != 0 || ds_reserve(&names, b - a + 1, 1) != 0) goto oom;
            ((size_t *)name_off.p)[name_off.len++] = names.len;
            memcpy((char *)names.p + names.len, line + a, b - a);
            names.len += b - a;
            ((char *)names.p)[names.len++] = '\0';
            rec_line = lineno;
            rec_pos = 0;
            stop_pos = 0;
            continue;
        }
        if (ds_reserve(&tok, (size_t)got, 1) != 0) goto oom;
        for (size_t i = 0; i < (size_t)got; i++) {
            unsigned char c = (unsigned char)line[i];
            int id;
            if (ds_space(c)) continue;
            if (!rec_line) {
                char what[160];
                ds_not_fasta(line, (size_t)got, what, sizeof what);
                ds_err(err, errlen, "%s: line %zu: %s", path, lineno, what);
                goto cleanup;
            }
            if (stop_pos) {
                ds_err(err, errlen, "%s: record %zu '%.80s' (line %zu): stop '*' at position %zu is not at the end of the sequence",
                       path, name_off.len, DS_CUR_NAME, lineno, stop_pos);
                goto cleanup;
            }
            if (c == '*') { stop_pos = rec_pos + 1; continue; }
            id = tok_residue_id(c);
            if (id < 0) {
                char hint[128];
                ds_residue_hint(c, hint, sizeof hint);
                ds_err(err, errlen, "%s: record %zu '%.80s' (line %zu): invalid residue %s at position %zu%s",
                       path, name_off.len, DS_CUR_NAME, lineno, ds_show(c, shown), rec_pos + 1, hint);
                goto cleanup;
            }
            ((uint8_t *)tok.p)[tok.len++] = (uint8_t)id;
            rec_pos++;
        }
    }
    if (!rec_line) { ds_err(err, errlen, "%s: no FASTA records (no '>' header)", path); goto cleanup; }
    if (rec_pos == 0) {
        ds_err(err, errlen, "%s: record %zu '%.80s' (line %zu) has no residues: add its sequence or remove the "
               "record", path, name_off.len, DS_CUR_NAME, rec_line);
        goto cleanup;
    }
#undef DS_CUR_NAME
    if (ds_reserve(&off, 1, sizeof(uint64_t)) != 0) goto oom;
    ((uint64_t *)off.p)[off.len++] = tok.len;

    s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->n = name_off.len;
    s->ntok = tok.len;
    s->off_heap = off.p;
    s->off = off.p;
    s->tok_heap = tok.p;
    s->tok = tok.p;
    s->names = names.p;
    s->name_off = name_off.p;
    off.p = tok.p = names.p = name_off.p = NULL;
    for (size_t i = 0; i < s->n; i++)
        if (s->off[i + 1] - s->off[i] > s->maxlen) s->maxlen = (size_t)(s->off[i + 1] - s->off[i]);
    *out = s;
    s = NULL;
    rc = 0;
    goto cleanup;
oom:
    ds_err(err, errlen, "%s: out of memory", path ? path : "ds_load_fasta");
cleanup:
    if (f) fclose(f);
    free(line);
    free(tok.p);
    free(off.p);
    free(names.p);
    free(name_off.p);
    ds_close(s);
    return rc;
}

/* Opens a PFDATA1 (.bin) or FASTA file by its name (see dataset.h). */
int ds_open_path(ds_set **out, const char *path, char *err, size_t errlen) {
    size_t n = strlen(path);
    if (n > 4 && strcmp(path + n - 4, ".bin") == 0) return ds_open(out, path, err, errlen);
    return ds_load_fasta(out, path, err, errlen);
}

/* Returns the number of sequences. */
size_t ds_count(const ds_set *s) { return s ? s->n : 0; }

/* Returns the number of residues over all sequences. */
size_t ds_tokens(const ds_set *s) { return s ? s->ntok : 0; }

/* Returns the length of the longest sequence. */
size_t ds_max_len(const ds_set *s) { return s ? s->maxlen : 0; }

/* Returns sequence i's residue ids and its length. */
const uint8_t *ds_seq(const ds_set *s, size_t i, size_t *len) {
    if (!s || i >= s->n) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)(s->off[i + 1] - s->off[i]);
    return s->tok + s->off[i];
}

/* Returns sequence i's FASTA name, or NULL. */
const char *ds_name(const ds_set *s, size_t i) {
    if (!s || !s->names || i >= s->n) return NULL;
    return s->names + s->name_off[i];
}

/* Writes s to path as PFDATA1 via a temporary file, fsync and rename (see dataset.h). */
int ds_write_bin(const char *path, const ds_set *s, char *err, size_t errlen) {
    unsigned char hdr[DS_HEADER_BYTES], chunk[8 * 1024];
    af_file af;
    if (!path || !s) { ds_err(err, errlen, "ds_write_bin: no path or set given"); return -1; }
    if (af_open(&af, path, err, errlen) != 0) return -1;
    memcpy(hdr, DS_MAGIC, 8);
    ds_wr64(hdr + 8, s->n);
    ds_wr64(hdr + 16, s->ntok);
    int ok = af_write(&af, hdr, sizeof hdr) == 0;
    for (size_t i = 0; ok && i <= s->n;) {
        size_t k = 0;
        for (; i <= s->n && k + 8 <= sizeof chunk; i++, k += 8) ds_wr64(chunk + k, s->off[i]);
        ok = af_write(&af, chunk, k) == 0;
    }
    if (ok && s->ntok) ok = af_write(&af, s->tok, s->ntok) == 0;
    if (!ok) {
        ds_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
        af_abort(&af);
        return -1;
    }
    return af_commit(&af, err, errlen);
}

/* Releases a set. */
void ds_close(ds_set *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->maplen);
    free(s->off_heap);
    free(s->tok_heap);
    free(s->names);
    free(s->name_off);
    free(s);
}

/* Counts the standard residues (the ones masked and scored) in the first count sequences of s. */
size_t ds_standard(const ds_set *s, size_t count) {
    size_t k = 0;
    if (count > ds_count(s)) count = ds_count(s);
    for (size_t i = 0; i < count; i++) {
        size_t n;
        const uint8_t *q = ds_seq(s, i, &n);
        for (size_t j = 0; j < n; j++) k += tok_is_standard(q[j]) != 0;
    }
    return k;
}

/* Add-one smoothed standard-residue frequencies over the first count sequences of s. */
void ds_unigram(const ds_set *s, size_t count, double freq[TOK_NRES]) {
    double tot = 0;
    if (count > ds_count(s)) count = ds_count(s);
    for (int c = 0; c < TOK_NRES; c++) freq[c] = 1;
    for (size_t i = 0; i < count; i++) {
        size_t n;
        const uint8_t *q = ds_seq(s, i, &n);
        for (size_t j = 0; j < n; j++) if (tok_is_standard(q[j])) freq[q[j] - TOK_RES0] += 1;
    }
    for (int c = 0; c < TOK_NRES; c++) tot += freq[c];
    for (int c = 0; c < TOK_NRES; c++) freq[c] /= tot;
}
