/* test_dataset.c - PFDATA1 token files and FASTA loading (model/dataset.h). */
#include "dataset.h"
#include "testutil.h"
#include "tokenizer.h"

#include <dirent.h>
#include <stdint.h>
#include <unistd.h>

static char tmpdir[256];

/* Returns a path inside the test's temporary directory (static buffer rotation of 4). */
static const char *tp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    if (len && fwrite(data, 1, len, f) != len) { perror(path); exit(2); }
    fclose(f);
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Builds a PFDATA1 image; returns its malloc'd bytes and sets *len. */
static unsigned char *make_bin(uint64_t n, uint64_t ntok, const uint64_t *off, const uint8_t *tok, size_t *len) {
    size_t sz = 24 + 8 * (size_t)(n + 1) + (size_t)ntok;
    unsigned char *b = calloc(1, sz);
    memcpy(b, "PFDATA1", 8);
    put64(b + 8, n);
    put64(b + 16, ntok);
    for (uint64_t i = 0; i <= n; i++) put64(b + 24 + 8 * i, off[i]);
    if (ntok) memcpy(b + 24 + 8 * (n + 1), tok, ntok);
    *len = sz;
    return b;
}

/* Expects ds_open on the given bytes to fail with a message containing want (and want2 if set). */
static void bin_fails(const char *what, const void *data, size_t len, const char *want, const char *want2) {
    char err[512] = "";
    ds_set *s = (ds_set *)1;
    const char *path = tp("bad.bin");
    write_file(path, data, len);
    int rc = ds_open(&s, path, err, sizeof err);
    CHECKF(rc == -1, "%s: ds_open returned %d", what, rc);
    CHECKF(s == NULL, "%s: *out not cleared", what);
    CHECKF(strstr(err, want) != NULL, "%s: message '%s' lacks '%s'", what, err, want);
    if (want2) CHECKF(strstr(err, want2) != NULL, "%s: message '%s' lacks '%s'", what, err, want2);
    CHECKF(strstr(err, "bad.bin") != NULL, "%s: message '%s' lacks the path", what, err);
    if (rc == 0) ds_close(s);
}

/* Expects ds_load_fasta on text to fail with a message containing every non-NULL want. */
static void fasta_fails(const char *what, const char *text, size_t len, const char *w1, const char *w2, const char *w3) {
    char err[512] = "";
    ds_set *s = (ds_set *)1;
    const char *path = tp("bad.fa");
    write_file(path, text, len);
    int rc = ds_load_fasta(&s, path, err, sizeof err);
    CHECKF(rc == -1, "%s: ds_load_fasta returned %d", what, rc);
    CHECKF(s == NULL, "%s: *out not cleared", what);
    const char *w[3] = {w1, w2, w3};
    for (int i = 0; i < 3; i++)
        if (w[i]) CHECKF(strstr(err, w[i]) != NULL, "%s: message '%s' lacks '%s'", what, err, w[i]);
    if (rc == 0) ds_close(s);
}

/* Returns 1 when the two sets hold the same sequences. */
static int same_seqs(const ds_set *a, const ds_set *b) {
    if (ds_count(a) != ds_count(b) || ds_tokens(a) != ds_tokens(b) || ds_max_len(a) != ds_max_len(b)) return 0;
    for (size_t i = 0; i < ds_count(a); i++) {
        size_t la, lb;
        const uint8_t *pa = ds_seq(a, i, &la), *pb = ds_seq(b, i, &lb);
        if (la != lb || (la && memcmp(pa, pb, la) != 0)) return 0;
    }
    return 1;
}

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* Counts directory entries whose name contains ".tmp." (leftover temporary files). */
static int count_tmp_files(void) {
    int n = 0;
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_fasta_roundtrip(void) {
    static const char fa[] =
        ">seq1 some description here\n"
        "ACDEF\n"
        "ghikl\n"
        "\n"
        ">seq2\r\n"
        "MNPQR STVWY*\r\n"
        "\n\n"
        ">  seq3\tdescription\n"
        "XBUZO\n"
        "\t acdef * \n"
        ">seq4\n"
        "w";                                   /* no final newline */
    char err[256] = "";
    ds_set *s = NULL, *b = NULL;
    size_t len;
    write_file(tp("a.fa"), fa, sizeof fa - 1);
    CHECKF(ds_load_fasta(&s, tp("a.fa"), err, sizeof err) == 0, "%s", err);
    if (!s) return;
    CHECK(ds_count(s) == 4);
    CHECK(ds_tokens(s) == 31);
    CHECK(ds_max_len(s) == 10);
    CHECK(ds_name(s, 0) && strcmp(ds_name(s, 0), "seq1") == 0);
    CHECK(ds_name(s, 1) && strcmp(ds_name(s, 1), "seq2") == 0);
    CHECK(ds_name(s, 2) && strcmp(ds_name(s, 2), "seq3") == 0);
    CHECK(ds_name(s, 3) && strcmp(ds_name(s, 3), "seq4") == 0);
    CHECK(ds_name(s, 4) == NULL);
    const uint8_t *p = ds_seq(s, 0, &len);
    CHECK(p && len == 10);
    for (size_t i = 0; p && i < len; i++) CHECKF(p[i] == 5 + i, "seq1[%zu] = %u", i, p[i]);
    p = ds_seq(s, 1, &len);
    CHECK(p && len == 10);
    for (size_t i = 0; p && i < len; i++) CHECKF(p[i] == 15 + i, "seq2[%zu] = %u", i, p[i]);
    p = ds_seq(s, 2, &len);
    CHECK(p && len == 10);
    for (size_t i = 0; p && i < 5; i++) CHECKF(p[i] == 25 + i, "seq3[%zu] = %u", i, p[i]);
    for (size_t i = 5; p && i < len; i++) CHECKF(p[i] == i, "seq3[%zu] = %u", i, p[i]);
    p = ds_seq(s, 3, &len);
    CHECK(p && len == 1 && p[0] == tok_residue_id('W'));
    len = 99;
    CHECK(ds_seq(s, 4, &len) == NULL && len == 0);
    CHECK(ds_seq(s, 0, NULL) != NULL);

    /* FASTA -> .bin -> reopen: identical sequences, no names, exact file layout */
    CHECKF(ds_write_bin(tp("a.bin"), s, err, sizeof err) == 0, "%s", err);
    CHECK(count_tmp_files() == 0);
    CHECKF(ds_open(&b, tp("a.bin"), err, sizeof err) == 0, "%s", err);
    if (b) {
        CHECK(same_seqs(s, b));
        CHECK(ds_name(b, 0) == NULL);
        size_t flen;
        unsigned char *img = read_all(tp("a.bin"), &flen);
        CHECK(img && flen == 24 + 8 * 5 + 31);
        CHECK(img && memcmp(img, "PFDATA1\0", 8) == 0);
        CHECK(img && img[8] == 4 && img[16] == 31 && img[24 + 8 * 4] == 31);
        /* re-serializing the mapped set gives the same bytes (and overwrites an existing file) */
        CHECKF(ds_write_bin(tp("b.bin"), b, err, sizeof err) == 0, "%s", err);
        CHECKF(ds_write_bin(tp("b.bin"), b, err, sizeof err) == 0, "%s", err);
        size_t flen2;
        unsigned char *img2 = read_all(tp("b.bin"), &flen2);
        CHECK(img && img2 && flen == flen2 && memcmp(img, img2, flen) == 0);
        free(img);
        free(img2);
        ds_close(b);
    }
    /* writing into a missing directory fails cleanly */
    err[0] = '\0';
    CHECK(ds_write_bin(tp("no/such/dir/x.bin"), s, err, sizeof err) == -1);
    CHECKF(strstr(err, "x.bin") != NULL, "%s", err);
    CHECK(ds_write_bin(NULL, s, err, sizeof err) == -1);
    CHECK(count_tmp_files() == 0);
    ds_close(s);
}

static void test_random_roundtrip(void) {
    static const char letters[] = "ACDEFGHIKLMNPQRSTVWYXBUZOacdefghiklmnpqrstvwyxbuzo";
    enum { N = 1500 };
    uint64_t x = 0x9E3779B97F4A7C15ull;
    size_t cap = 1 << 20, used = 0, total = 0, maxlen = 0;
    char *text = malloc(cap);
    uint8_t *want = malloc((size_t)N * 400);
    size_t *lens = malloc(N * sizeof *lens);
    for (int i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t len = 1 + (size_t)(x % 399), width = 1 + (size_t)((x >> 20) % 90);
        if (used + 64 + len * 2 > cap) { cap *= 2; text = realloc(text, cap); }
        used += (size_t)sprintf(text + used, ">r%d desc %d\n", i, i);
        for (size_t j = 0; j < len; j++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            char c = letters[x % (sizeof letters - 1)];
            text[used++] = c;
            want[total++] = (uint8_t)tok_residue_id(c);
            if ((j + 1) % width == 0 || j + 1 == len) text[used++] = '\n';
        }
        if (x & 1) text[used++] = '\n';
        lens[i] = len;
        if (len > maxlen) maxlen = len;
    }
    write_file(tp("r.fa"), text, used);
    char err[256] = "";
    ds_set *s = NULL, *b = NULL;
    CHECKF(ds_load_fasta(&s, tp("r.fa"), err, sizeof err) == 0, "%s", err);
    if (s) {
        CHECK(ds_count(s) == N);
        CHECK(ds_tokens(s) == total);
        CHECK(ds_max_len(s) == maxlen);
        size_t at = 0;
        int ok = 1;
        char nm[32];
        for (int i = 0; i < N && ok; i++) {
            size_t len;
            const uint8_t *p = ds_seq(s, (size_t)i, &len);
            snprintf(nm, sizeof nm, "r%d", i);
            ok = p && len == lens[i] && memcmp(p, want + at, len) == 0 && strcmp(ds_name(s, (size_t)i), nm) == 0;
            CHECKF(ok, "random record %d differs", i);
            at += lens[i];
        }
        CHECKF(ds_write_bin(tp("r.bin"), s, err, sizeof err) == 0, "%s", err);
        CHECKF(ds_open(&b, tp("r.bin"), err, sizeof err) == 0, "%s", err);
        CHECK(b && same_seqs(s, b));
    }
    ds_close(b);
    ds_close(s);
    free(text);
    free(want);
    free(lens);
}

static void test_bin_edge_cases(void) {
    char err[256] = "";
    ds_set *s = NULL;
    size_t len;
    unsigned char *img;
    /* zero sequences */
    uint64_t off0[1] = {0};
    img = make_bin(0, 0, off0, NULL, &len);
    write_file(tp("empty.bin"), img, len);
    free(img);
    CHECKF(ds_open(&s, tp("empty.bin"), err, sizeof err) == 0, "%s", err);
    CHECK(s && ds_count(s) == 0 && ds_tokens(s) == 0 && ds_max_len(s) == 0);
    CHECK(ds_seq(s, 0, &len) == NULL && len == 0);
    ds_close(s);
    s = NULL;
    /* a zero-length sequence in the middle is legal in the format */
    uint64_t off1[4] = {0, 2, 2, 5};
    uint8_t tok1[5] = {5, 29, 6, 7, 8};
    img = make_bin(3, 5, off1, tok1, &len);
    write_file(tp("zero.bin"), img, len);
    free(img);
    CHECKF(ds_open(&s, tp("zero.bin"), err, sizeof err) == 0, "%s", err);
    if (s) {
        const uint8_t *p = ds_seq(s, 1, &len);
        CHECK(len == 0 && p != NULL);
        p = ds_seq(s, 2, &len);
        CHECK(len == 3 && p && p[0] == 6 && p[2] == 8);
        p = ds_seq(s, 0, &len);
        CHECK(len == 2 && p && p[1] == 29);
        CHECK(ds_max_len(s) == 3);
        CHECK(ds_name(s, 0) == NULL);
    }
    ds_close(s);
    ds_close(NULL);
    CHECK(ds_count(NULL) == 0 && ds_tokens(NULL) == 0 && ds_seq(NULL, 0, NULL) == NULL && ds_name(NULL, 0) == NULL);
}

static void test_bin_negative(void) {
    uint64_t off[4] = {0, 3, 3, 6};
    uint8_t tok[6] = {5, 6, 7, 8, 9, 10};
    size_t len;
    unsigned char *good = make_bin(3, 6, off, tok, &len), *b = malloc(len + 16);
    char err[256] = "x";
    ds_set *s = (ds_set *)1;

    CHECK(ds_open(&s, tp("does-not-exist.bin"), err, sizeof err) == -1 && s == NULL);
    CHECKF(strstr(err, "does-not-exist.bin") && strstr(err, "No such file"), "%s", err);
    CHECK(ds_open(&s, tp("does-not-exist.bin"), NULL, 0) == -1);   /* err may be NULL */
    CHECK(ds_open(&s, tmpdir, err, sizeof err) == -1);              /* a directory */
    bin_fails("empty file", "", 0, "truncated", NULL);
    bin_fails("short header", good, 20, "truncated", NULL);
    memcpy(b, good, len); b[0] = 'X';
    bin_fails("bad magic", b, len, "bad magic", NULL);
    memcpy(b, good, len); b[7] = '1';
    bin_fails("magic without NUL", b, len, "bad magic", NULL);
    memcpy(b, good, len); put64(b + 8, UINT64_MAX);
    bin_fails("n_seqs overflow", b, len, "truncated", "n_seqs");
    memcpy(b, good, len); put64(b + 8, 7);
    bin_fails("n_seqs too large", b, len, "truncated", "n_seqs = 7");
    bin_fails("truncated tokens", good, len - 1, "truncated", "n_tokens = 6");
    bin_fails("truncated in offsets", good, 24 + 8 * 2, "truncated", NULL);
    memcpy(b, good, len); b[len] = 5;
    bin_fails("trailing byte", b, len + 1, "trailing", NULL);
    memcpy(b, good, len); put64(b + 16, UINT64_MAX);
    bin_fails("n_tokens huge", b, len, "truncated", NULL);
    memcpy(b, good, len); put64(b + 24, 1);
    bin_fails("offsets[0] != 0", b, len, "offsets[0] = 1", NULL);
    memcpy(b, good, len); put64(b + 24 + 16, 2);
    bin_fails("decreasing offsets", b, len, "offsets[2] = 2 < offsets[1] = 3", NULL);
    memcpy(b, good, len); put64(b + 24 + 8, 7);
    bin_fails("offset out of range", b, len, "offsets[1] = 7 out of range", NULL);
    memcpy(b, good, len); put64(b + 24 + 8, UINT64_MAX);
    bin_fails("offset far out of range", b, len, "out of range", NULL);
    memcpy(b, good, len); put64(b + 24 + 24, 5);
    bin_fails("last offset != n_tokens", b, len, "offsets[3] = 5, must equal n_tokens = 6", NULL);
    static const uint8_t bad_ids[] = {0, 1, 2, 3, 4, 30, 31, 'A', 255};
    for (size_t k = 0; k < sizeof bad_ids; k++) {
        char want[64];
        memcpy(b, good, len);
        b[len - 2] = bad_ids[k];                  /* token 4 = sequence 2, position 2 */
        snprintf(want, sizeof want, "bad token id %u at token 4", bad_ids[k]);
        bin_fails("bad token id", b, len, want, "sequence 2, position 2");
    }
    /* a bad token after a long valid run (exercises the blocked scan) */
    {
        enum { T = 200000 };
        uint8_t *t = malloc(T);
        for (size_t i = 0; i < T; i++) t[i] = (uint8_t)(5 + i % 25);
        t[T - 3] = 4;
        uint64_t o[2] = {0, T};
        size_t l2;
        unsigned char *img = make_bin(1, T, o, t, &l2);
        bin_fails("late bad token", img, l2, "bad token id 4 at token 199997", "position 199998");
        free(img);
        free(t);
    }
    free(good);
    free(b);
}

static void test_fasta_negative(void) {
    char err[256];
    ds_set *s = (ds_set *)1;
    CHECK(ds_load_fasta(&s, tp("nope.fa"), err, sizeof err) == -1 && s == NULL);
    CHECKF(strstr(err, "nope.fa") != NULL, "%s", err);
    static const char j[] = ">seq1\nACDE\n>seq2 desc\nACDEF\nGJK\n";
    fasta_fails("invalid letter J", j, sizeof j - 1, "record 2 'seq2'", "invalid residue 'J' at position 7", "line 5");
    static const char hash[] = ">p1\nMK#L\n";
    fasta_fails("invalid '#'", hash, sizeof hash - 1, "'p1'", "'#' at position 3", NULL);
    static const char digit[] = ">p1\nMKL\n>p2\nAC1\n";
    fasta_fails("digit", digit, sizeof digit - 1, "record 2 'p2'", "'1' at position 3", NULL);
    static const char gap[] = ">p1\nMK-L\n";
    fasta_fails("gap", gap, sizeof gap - 1, "'p1'", "'-' at position 3", NULL);
    static const char nul[] = ">p1\nMK\0L\n";
    fasta_fails("NUL byte", nul, sizeof nul - 1, "'p1'", "'\\x00' at position 3", NULL);
    static const char midstop[] = ">p1\nMK*LV\n";
    fasta_fails("stop mid-sequence", midstop, sizeof midstop - 1, "'p1'", "'*' at position 3", "not at the end");
    static const char stopline[] = ">p1\nMK*\nLV\n";
    fasta_fails("stop before next line", stopline, sizeof stopline - 1, "'p1'", "position 3", NULL);
    static const char twostops[] = ">p1\nMK**\n";
    fasta_fails("two stops", twostops, sizeof twostops - 1, "'p1'", "position 3", NULL);
    static const char before[] = "\nACDE\n>p1\nAC\n";
    fasta_fails("data before header", before, sizeof before - 1, "line 2", "before the first", NULL);
    static const char emptyrec[] = ">a\n\n>b\nAC\n";
    fasta_fails("empty record", emptyrec, sizeof emptyrec - 1, "record 1 'a'", "no residues", NULL);
    static const char emptylast[] = ">a\nAC\n>b\n";
    fasta_fails("empty last record", emptylast, sizeof emptylast - 1, "record 2 'b'", "no residues", NULL);
    static const char onlystop[] = ">a\n*\n";
    fasta_fails("only a stop", onlystop, sizeof onlystop - 1, "record 1 'a'", "no residues", NULL);
    fasta_fails("empty file", "", 0, "no FASTA records", NULL, NULL);
    fasta_fails("blank file", "\n \n", 3, "no FASTA records", NULL, NULL);
    static const char mask[] = ">m\nAC<mask>D\n";
    fasta_fails("mask token", mask, sizeof mask - 1, "'m'", "'<' at position 3", NULL);
    /* the messages name the fix for the usual wrong files */
    fasta_fails("gap hint", gap, sizeof gap - 1, "alignment gaps", "sed", NULL);
    fasta_fails("digit hint", digit, sizeof digit - 1, "numbered lines", NULL, NULL);
    fasta_fails("empty record hint", emptyrec, sizeof emptyrec - 1, "add its sequence or remove the record", NULL, NULL);
    static const char mac[] = ">a\rMKL\r>b\rAC\r";
    fasta_fails("old Mac line endings", mac, sizeof mac - 1, "line 1", "old Mac line endings", "tr '\\r' '\\n'");
    static const char gz[] = "\x1f\x8b\x08\x00\x00\x00\n";
    fasta_fails("gzip file", gz, sizeof gz - 1, "line 1", "gzip-compressed", "gunzip");
    static const char u16[] = "\xff\xfe>\0a\0\n\0";
    fasta_fails("UTF-16 file", u16, sizeof u16 - 1, "line 1", "UTF-16", "iconv");
    static const char bin[] = "\x01\x02\x03\x04ELF\n";
    fasta_fails("binary file", bin, sizeof bin - 1, "line 1", "binary data", NULL);
}

/* Files from other tools that parse to the same set as the plain file: a UTF-8 byte-order mark,
 * CRLF line endings, ';' comment lines, indented headers, lowercase, blank lines, a final '*'. */
static void test_fasta_variants(void) {
    static const char plain[] = ">a\nMKLV\n>b\nACDX\n";
    static const char *const variants[] = {
        "\xEF\xBB\xBF>a\nMKLV\n>b\nACDX\n",
        ">a x\r\nMK\r\nLV\r\n\r\n>b\r\nACDX\r\n",
        ";comment\n>a\nMKLV\n; another\n>b\nACDX\n",
        "  >a\nMKLV\n\t>b\nACDX\n",
        "\n\n>a\nmklv*\n\n>b\nacdx\n",
    };
    char err[256] = "";
    ds_set *ref = NULL;
    write_file(tp("plain.fa"), plain, sizeof plain - 1);
    CHECKF(ds_load_fasta(&ref, tp("plain.fa"), err, sizeof err) == 0, "%s", err);
    if (!ref) return;
    CHECK(ds_standard(ref, 99) == 7 && ds_standard(ref, 1) == 4 && ds_standard(ref, 0) == 0);
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        ds_set *s = NULL;
        write_file(tp("variant.fa"), variants[i], strlen(variants[i]));
        CHECKF(ds_load_fasta(&s, tp("variant.fa"), err, sizeof err) == 0, "variant %zu: %s", i, err);
        if (!s) continue;
        CHECKF(same_seqs(ref, s), "variant %zu parses to other sequences", i);
        CHECKF(strcmp(ds_name(s, 0), "a") == 0 && strcmp(ds_name(s, 1), "b") == 0, "variant %zu: names '%s' '%s'", i,
               ds_name(s, 0), ds_name(s, 1));
        ds_close(s);
    }
    ds_close(ref);
}

/* ds_unigram: add-one smoothed counts of the standard residues only, over the first count. */
static void test_unigram(void) {
    static const char fa[] = ">a\nAACX\n>b\nC\n>c\nWWWW\n";
    char err[256] = "";
    ds_set *s = NULL;
    double f[20];
    write_file(tp("u.fa"), fa, sizeof fa - 1);
    CHECKF(ds_load_fasta(&s, tp("u.fa"), err, sizeof err) == 0, "%s", err);
    if (!s) return;
    const int A = tok_residue_id('A') - TOK_RES0, C = tok_residue_id('C') - TOK_RES0;
    const int W = tok_residue_id('W') - TOK_RES0, D = tok_residue_id('D') - TOK_RES0;
    ds_unigram(s, 2, f);                      /* A A C + C, X is not standard: 4 + 20 */
    CHECK_CLOSE(f[A], 3.0 / 24, 1e-12);
    CHECK_CLOSE(f[C], 3.0 / 24, 1e-12);
    CHECK_CLOSE(f[W], 1.0 / 24, 1e-12);
    ds_unigram(s, 99, f);                     /* all three: 8 + 20 */
    CHECK_CLOSE(f[W], 5.0 / 28, 1e-12);
    CHECK_CLOSE(f[D], 1.0 / 28, 1e-12);
    double tot = 0;
    for (int i = 0; i < 20; i++) tot += f[i];
    CHECK_CLOSE(tot, 1.0, 1e-12);
    ds_close(s);
}

int main(void) {
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/pf_test_dataset_XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    test_fasta_roundtrip();
    test_random_roundtrip();
    test_bin_edge_cases();
    test_bin_negative();
    test_fasta_negative();
    test_fasta_variants();
    test_unigram();
    /* remove the temporary directory */
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        unlink(tp(e->d_name));
    }
    if (d) closedir(d);
    rmdir(tmpdir);
    return TEST_DONE();
}
