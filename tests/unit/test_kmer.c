/* test_kmer.c - exact k-mer sets (model/kmer.h): hand-counted cases, the k range, non-standard and
 * out-of-range ids, and random sets checked against a brute-force search for k = 1, 5 and 12. */
#include "dataset.h"
#include "kmer.h"
#include "testutil.h"
#include "tokenizer.h"

#include <stdint.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/test_kmer.XXXXXX";

/* Writes text to tmpdir/name, loads it as FASTA and returns the set (exits on failure). */
static ds_set *fasta_set(const char *name, const char *text) {
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) { perror(path); exit(2); }
    ds_set *s = NULL;
    if (ds_load_fasta(&s, path, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); exit(2); }
    unlink(path);
    return s;
}

/* Encodes letters as residue ids into out (exits on a letter the tokenizer does not know). */
static size_t ids(const char *letters, uint8_t *out) {
    size_t n = strlen(letters);
    for (size_t i = 0; i < n; i++) {
        int t = tok_residue_id(letters[i]);
        if (t < TOK_RES0) { fprintf(stderr, "bad letter %c\n", letters[i]); exit(2); }
        out[i] = (uint8_t)t;
    }
    return n;
}

/* Returns how many windows of q (length n) occur somewhere in s, by brute force. */
static size_t brute_shared(const ds_set *s, const uint8_t *q, size_t n, size_t k) {
    size_t hits = 0;
    for (size_t j = 0; j + k <= n; j++) {
        int found = 0;
        for (size_t i = 0; i < ds_count(s) && !found; i++) {
            size_t m;
            const uint8_t *t = ds_seq(s, i, &m);
            for (size_t p = 0; p + k <= m && !found; p++) found = memcmp(t + p, q + j, k) == 0;
        }
        hits += (size_t)found;
    }
    return hits;
}

/* Hand-counted windows, duplicates, short sequences and non-standard letters (k = 3). */
static void test_small(void) {
    ds_set *s = fasta_set("small.fa", ">a\nACDEFG\n>b\nACD\n>c\nAC\n>d\nXAC\n");
    km_index *idx = NULL;
    char err[256] = "";
    CHECK(km_build(&idx, s, 3, err, sizeof err) == 0);
    CHECK(km_k(idx) == 3);
    CHECK(km_size(idx) == 5);                 /* ACD CDE DEF EFG XAC; ACD twice, AC too short */
    uint8_t q[64];
    size_t w, n = ids("ACDEK", q);
    CHECK(km_shared(idx, q, n, &w) == 2 && w == 3);           /* ACD, CDE yes; DEK no */
    n = ids("XACD", q);
    CHECK(km_shared(idx, q, n, &w) == 2 && w == 2);           /* XAC, ACD */
    n = ids("AC", q);
    CHECK(km_shared(idx, q, n, &w) == 0 && w == 0);           /* shorter than k: no windows */
    n = ids("ACD", q);
    q[1] = TOK_MASK;                                          /* an id outside 5..29 never matches */
    CHECK(km_shared(idx, q, n, &w) == 0 && w == 1);
    km_free(idx);
    /* a set whose sequences are all shorter than k: an empty index */
    CHECK(km_build(&idx, s, 7, err, sizeof err) == 0);
    CHECK(km_size(idx) == 0);
    n = ids("ACDEFGH", q);
    CHECK(km_shared(idx, q, n, &w) == 0 && w == 1);
    km_free(idx);
    km_free(NULL);
    ds_close(s);
}

/* k outside 1..KM_MAX_K is refused with a message and *out cleared. */
static void test_range(void) {
    ds_set *s = fasta_set("range.fa", ">a\nACDEFG\n");
    int bad[] = {0, -1, KM_MAX_K + 1};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        km_index *idx = (km_index *)1;
        char err[256] = "";
        CHECK(km_build(&idx, s, bad[i], err, sizeof err) == -1);
        CHECK(idx == NULL);
        CHECKF(strstr(err, "out of range") != NULL, "k %d: '%s'", bad[i], err);
    }
    ds_close(s);
}

/* Random sets over a small alphabet (so that windows repeat) against brute force. */
static void test_random(void) {
    const char *alpha = "ACDEX";
    uint64_t st = 12345;
    char text[8192];
    size_t tl = 0;
    for (int r = 0; r < 30; r++) {
        tl += (size_t)snprintf(text + tl, sizeof text - tl, ">s%d\n", r);
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        int len = 1 + (int)((st >> 33) % 60);
        for (int j = 0; j < len; j++) {
            st = st * 6364136223846793005ULL + 1442695040888963407ULL;
            text[tl++] = alpha[(st >> 33) % 5];
        }
        text[tl++] = '\n';
    }
    text[tl] = 0;
    ds_set *s = fasta_set("random.fa", text);
    int ks[] = {1, 5, 12};
    for (size_t t = 0; t < sizeof ks / sizeof *ks; t++) {
        km_index *idx = NULL;
        char err[256] = "";
        CHECK(km_build(&idx, s, ks[t], err, sizeof err) == 0);
        if (ks[t] == 1) CHECK(km_size(idx) == 5);
        for (int qi = 0; qi < 40; qi++) {
            uint8_t q[80];
            size_t n = 0, w;
            if (qi < 20) {                         /* a window of a training sequence, mutated */
                size_t m;
                const uint8_t *src = ds_seq(s, (size_t)qi, &m);
                memcpy(q, src, m);
                n = m;
                if (n > 3) q[n / 2] = (uint8_t)tok_residue_id('E');
            } else {                               /* a fresh random sequence */
                st = st * 6364136223846793005ULL + 1442695040888963407ULL;
                n = 1 + (size_t)((st >> 33) % 70);
                for (size_t j = 0; j < n; j++) {
                    st = st * 6364136223846793005ULL + 1442695040888963407ULL;
                    q[j] = (uint8_t)tok_residue_id(alpha[(st >> 33) % 5]);
                }
            }
            size_t got = km_shared(idx, q, n, &w), want = brute_shared(s, q, n, (size_t)ks[t]);
            CHECKF(got == want, "k %d query %d: %zu shared, brute force %zu", ks[t], qi, got, want);
            CHECK(w == (n >= (size_t)ks[t] ? n - (size_t)ks[t] + 1 : 0));
        }
        km_free(idx);
    }
    ds_close(s);
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    test_small();
    test_range();
    test_random();
    rmdir(tmpdir);
    return TEST_DONE();
}
