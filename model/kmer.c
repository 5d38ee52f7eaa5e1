/* kmer.c - exact k-mer sets of a sequence set: pack every window, LSD radix sort, de-duplicate,
 * then binary search. See kmer.h. */
#include "kmer.h"
#include "dataset.h"
#include "tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct km_index {
    uint64_t *v;   /* [n] sorted distinct packed k-mers */
    size_t n;
    int k;
};

/* Formats a message into err (when err and errlen allow). */
__attribute__((format(printf, 3, 4)))
static void km_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (!err || errlen == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Packs the k ids at s into *code (5 bits each, first residue highest); returns 0, or -1 when an
 * id is outside the residue range 5..29. */
static int km_pack(const uint8_t *s, int k, uint64_t *code) {
    uint64_t c = 0;
    for (int i = 0; i < k; i++) {
        if (s[i] < TOK_RES0 || s[i] >= TOK_VOCAB) return -1;
        c = (c << 5) | (uint64_t)(s[i] - TOK_RES0);
    }
    *code = c;
    return 0;
}

/* Sorts v[0..n) ascending by the low `bits` bits (LSD radix, 8 bits a pass) using tmp[0..n). */
static void km_radix_sort(uint64_t *v, uint64_t *tmp, size_t n, int bits) {
    uint64_t *src = v, *dst = tmp;
    for (int shift = 0; shift < bits; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; i++) count[((src[i] >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++) count[b + 1] += count[b];
        for (size_t i = 0; i < n; i++) dst[count[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *t = src; src = dst; dst = t;
    }
    if (src != v) memcpy(v, src, n * sizeof *v);
}

int km_build(km_index **out, const struct ds_set *s, int k, char *err, size_t errlen) {
    *out = NULL;
    if (k < 1 || k > KM_MAX_K) { km_err(err, errlen, "k-mer length %d out of range 1..%d", k, KM_MAX_K); return -1; }
    size_t total = 0;
    for (size_t i = 0; i < ds_count(s); i++) {
        size_t n;
        ds_seq(s, i, &n);
        if (n >= (size_t)k) total += n - (size_t)k + 1;
    }
    km_index *idx = calloc(1, sizeof *idx);
    uint64_t *v = malloc((total ? total : 1) * sizeof *v), *tmp = malloc((total ? total : 1) * sizeof *tmp);
    if (!idx || !v || !tmp) {
        km_err(err, errlen, "out of memory for %zu k-mers (%zu MB)", total, total * 16 >> 20);
        free(idx); free(v); free(tmp);
        return -1;
    }
    size_t m = 0;
    for (size_t i = 0; i < ds_count(s); i++) {
        size_t n;
        const uint8_t *q = ds_seq(s, i, &n);
        for (size_t j = 0; j + (size_t)k <= n; j++) {
            uint64_t c;
            if (km_pack(q + j, k, &c) == 0) v[m++] = c;
        }
    }
    km_radix_sort(v, tmp, m, 5 * k);
    free(tmp);
    size_t u = 0;
    for (size_t i = 0; i < m; i++)
        if (u == 0 || v[i] != v[u - 1]) v[u++] = v[i];
    uint64_t *shrunk = realloc(v, (u ? u : 1) * sizeof *v);
    idx->v = shrunk ? shrunk : v;
    idx->n = u;
    idx->k = k;
    *out = idx;
    return 0;
}

size_t km_size(const km_index *idx) { return idx ? idx->n : 0; }

int km_k(const km_index *idx) { return idx ? idx->k : 0; }

/* Returns 1 when code is in idx (binary search), else 0. */
static int km_has(const km_index *idx, uint64_t code) {
    size_t lo = 0, hi = idx->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (idx->v[mid] < code) lo = mid + 1;
        else hi = mid;
    }
    return lo < idx->n && idx->v[lo] == code;
}

size_t km_shared(const km_index *idx, const uint8_t *seq, size_t n, size_t *windows) {
    size_t k = (size_t)idx->k, hits = 0;
    *windows = n >= k ? n - k + 1 : 0;
    for (size_t j = 0; j + k <= n; j++) {
        uint64_t c;
        if (km_pack(seq + j, (int)k, &c) == 0 && km_has(idx, c)) hits++;
    }
    return hits;
}

void km_free(km_index *idx) {
    if (!idx) return;
    free(idx->v);
    free(idx);
}
