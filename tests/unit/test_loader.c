/* test_loader.c - init/save/load round trip, malformed-file rejection (each with its error
 * message), a small mutation fuzz, and the FAVOR+ projection properties. */
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"

#include <jansson.h>
#include <stdint.h>
#include <unistd.h>

static char g_dir[64];
static char g_path[128];        /* the good model file */
static char g_bad[128];         /* scratch path for malformed files */
static unsigned char *g_file;   /* bytes of the good file */
static size_t g_len, g_hlen;

/* Reads a whole file into a malloc'ed buffer; returns NULL on failure. */
static unsigned char *read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, fp) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    *len = (size_t)n;
    return b;
}

/* Writes u64 LE hlen_field, hdr (hlen bytes) and data (dlen bytes) to path. */
static void write_raw(const char *path, uint64_t hlen_field, const void *hdr, size_t hlen,
                      const void *data, size_t dlen) {
    FILE *fp = fopen(path, "wb");
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(hlen_field >> (8 * i));
    fwrite(lb, 1, 8, fp);
    if (hlen) fwrite(hdr, 1, hlen, fp);
    if (dlen) fwrite(data, 1, dlen, fp);
    fclose(fp);
}

/* Writes a file whose header is the JSON text hdr and whose data section is data. */
static void write_st(const char *path, const char *hdr, const void *data, size_t dlen) {
    write_raw(path, strlen(hdr), hdr, strlen(hdr), data, dlen);
}

/* Returns the good file's header as a new JSON object. */
static json_t *good_header(void) {
    return json_loadb((const char *)g_file + 8, g_hlen, 0, NULL);
}

/* Returns the good file's data section. */
static const unsigned char *good_data(void) { return g_file + 8 + g_hlen; }
static size_t good_dlen(void) { return g_len - 8 - g_hlen; }

/* Writes hdr (JSON) + data to g_bad. */
static void write_json(json_t *hdr, const void *data, size_t dlen) {
    char *s = json_dumps(hdr, JSON_COMPACT);
    write_st(g_bad, s, data, dlen);
    free(s);
}

/* Checks that loading g_bad fails with a message containing every given substring. */
static void expect_fail_(int line, const char *what, const char *sub1, const char *sub2) {
    pf_model *m = (pf_model *)1;
    char err[1024] = "";
    int rc = pf_model_load(&m, g_bad, err, sizeof err);
    tu_checks++;
    if (rc != -1 || m != NULL || !strstr(err, sub1) || (sub2 && !strstr(err, sub2))) {
        tu_failures++;
        fprintf(stderr, "%s:%d: [%s] expected failure with '%s'%s%s, got rc=%d err='%s'\n", __FILE__,
                line, what, sub1, sub2 ? " and " : "", sub2 ? sub2 : "", rc, err);
    } else {
        printf("ok  %-28s %s\n", what, err);
    }
    if (rc == 0) pf_model_free(m);
}
#define expect_fail(what, s1, s2) expect_fail_(__LINE__, what, s1, s2)

/* Sets key's data_offsets in hdr. */
static void set_offsets(json_t *hdr, const char *key, long long b, long long e) {
    json_t *o = json_object_get(json_object_get(hdr, key), "data_offsets");
    json_array_set_new(o, 0, json_integer(b));
    json_array_set_new(o, 1, json_integer(e));
}

/* Returns begin offset of tensor key in hdr. */
static long long off_of(json_t *hdr, const char *key, int which) {
    return json_integer_value(
        json_array_get(json_object_get(json_object_get(hdr, key), "data_offsets"), (size_t)which));
}

/* Writes the good file with metadata key set to val (val NULL deletes the key) and expects failure. */
static void meta_case_(int line, const char *key, const char *val, const char *sub1, const char *sub2) {
    json_t *h = good_header();
    json_t *meta = json_object_get(h, "__metadata__");
    if (val) json_object_set_new(meta, key, json_string(val));
    else json_object_del(meta, key);
    write_json(h, good_data(), good_dlen());
    json_decref(h);
    char what[64];
    snprintf(what, sizeof what, "meta %s", key);
    expect_fail_(line, what, sub1, sub2);
}
#define meta_case(k, v, s1, s2) meta_case_(__LINE__, k, v, s1, s2)

/* Checks two models have bit-identical parameters and equal configs. */
static void check_same(pf_model *a, pf_model *b) {
    int n = pf_tensor_table(&a->cfg, NULL, NULL, 0);
    pf_tensor_info *ta = calloc((size_t)n, sizeof *ta), *tb = calloc((size_t)n, sizeof *tb);
    CHECK(pf_tensor_table(&a->cfg, &a->p, ta, n) == n && pf_tensor_table(&b->cfg, &b->p, tb, n) == n);
    int same = 1;
    for (int i = 0; i < n; i++) {
        CHECK(strcmp(ta[i].name, tb[i].name) == 0 && ta[i].numel == tb[i].numel);
        if (memcmp(*ta[i].slot, *tb[i].slot, ta[i].numel * sizeof(float)) != 0) {
            same = 0;
            fprintf(stderr, "tensor %s differs\n", ta[i].name);
        }
    }
    CHECK(same);
    CHECK(a->cfg.n_layers == b->cfg.n_layers && a->cfg.d_model == b->cfg.d_model);
    CHECK(a->cfg.n_heads == b->cfg.n_heads && a->cfg.d_ff == b->cfg.d_ff);
    CHECK(a->cfg.n_features == b->cfg.n_features && a->cfg.kernel == b->cfg.kernel);
    CHECK(a->cfg.norm_eps == b->cfg.norm_eps && a->cfg.trained == b->cfg.trained);
    CHECK(strcmp(a->cfg.name, b->cfg.name) == 0 && strcmp(a->cfg.provenance, b->cfg.provenance) == 0);
    free(ta);
    free(tb);
}

/* Tests the table, config validation and kernel names. */
static void test_table(const pf_config *cfg) {
    int n = pf_tensor_table(cfg, NULL, NULL, 0);
    CHECK(n == 1 + 17 * cfg->n_layers + 4);
    pf_tensor_info *t = calloc((size_t)n, sizeof *t);
    pf_layer layers[2];
    pf_params p = {.layers = layers};
    CHECK(pf_tensor_table(cfg, &p, t, n) == n);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += t[i].numel;
    CHECK(total == pf_param_count(cfg));
    CHECK(strcmp(t[0].name, "embed.weight") == 0 && t[0].shape[0] == 30 && t[0].shape[1] == 32);
    CHECK(strcmp(t[1].name, "layers.0.ln1.weight") == 0 && t[1].ndim == 1);
    CHECK(strcmp(t[11].name, "layers.0.attn.proj") == 0 && t[11].shape[0] == 16 && t[11].shape[1] == 8);
    CHECK(t[11].slot == &layers[0].proj);
    CHECK(strcmp(t[17].name, "layers.0.ffn.fc2.bias") == 0);
    CHECK(strcmp(t[18].name, "layers.1.ln1.weight") == 0 && t[18].slot == &layers[1].ln1_w);
    CHECK(strcmp(t[n - 4].name, "final_ln.weight") == 0 && t[n - 4].slot == &p.lnf_w);
    CHECK(strcmp(t[n - 2].name, "head.weight") == 0 && t[n - 2].shape[0] == 20);
    CHECK(strcmp(t[n - 1].name, "head.bias") == 0 && t[n - 1].numel == 20);
    free(t);

    char err[256];
    CHECK(pf_config_validate(cfg, err, sizeof err) == 0);
    pf_config c = *cfg;
    c.n_heads = 5;
    CHECK(pf_config_validate(&c, err, sizeof err) == -1 && strstr(err, "divisible"));
    c = *cfg;
    c.n_layers = 0;
    CHECK(pf_config_validate(&c, err, sizeof err) == -1 && strstr(err, "n_layers"));
    c = *cfg;
    c.kernel = (pf_kernel)7;
    CHECK(pf_config_validate(&c, err, sizeof err) == -1 && strstr(err, "kernel"));
    c = *cfg;
    c.norm_eps = NAN;
    CHECK(pf_config_validate(&c, err, sizeof err) == -1 && strstr(err, "norm_eps"));
    pf_kernel k = PF_KERNEL_DEFAULT;
    CHECK(pf_kernel_parse("favor-relu", &k) == 0 && k == PF_KERNEL_FAVOR_RELU);
    CHECK(pf_kernel_parse("exact", &k) == 0 && k == PF_KERNEL_EXACT);
    CHECK(pf_kernel_parse("favor-softmax", &k) == 0 && k == PF_KERNEL_FAVOR_SOFTMAX);
    CHECK(pf_kernel_parse("cosine", &k) == -1 && k == PF_KERNEL_FAVOR_SOFTMAX);
    CHECK(strcmp(pf_kernel_name(PF_KERNEL_FAVOR_RELU), "favor-relu") == 0);
    CHECK(strcmp(pf_kernel_name(PF_KERNEL_EXACT), "exact") == 0);
}

/* Tests the projection draw: orthogonal rows within blocks, chi-distributed norms, determinism. */
static void test_projection(void) {
    const int dh = 16, m = 1024;
    float *p = malloc((size_t)m * dh * sizeof *p), *p2 = malloc((size_t)m * dh * sizeof *p2);
    pf_draw_projection(p, m, dh, 42);
    pf_draw_projection(p2, m, dh, 42);
    CHECK(memcmp(p, p2, (size_t)m * dh * sizeof *p) == 0);
    pf_draw_projection(p2, m, dh, 43);
    CHECK(memcmp(p, p2, (size_t)m * dh * sizeof *p) != 0);
    double maxdot = 0, sumsq = 0;
    for (int b = 0; b < m; b += dh)
        for (int i = b; i < b + dh; i++) {
            double ni = 0;
            for (int k = 0; k < dh; k++) ni += (double)p[i * dh + k] * p[i * dh + k];
            for (int j = b; j < i; j++) {
                double nj = 0, dot = 0;
                for (int k = 0; k < dh; k++) {
                    nj += (double)p[j * dh + k] * p[j * dh + k];
                    dot += (double)p[i * dh + k] * p[j * dh + k];
                }
                dot = fabs(dot) / sqrt(ni * nj);
                if (dot > maxdot) maxdot = dot;
            }
        }
    for (int i = 0; i < m; i++)
        for (int k = 0; k < dh; k++) sumsq += (double)p[i * dh + k] * p[i * dh + k];
    printf("projection: max |cos| within blocks %.2e, mean squared row norm %.3f (dh %d)\n", maxdot,
           sumsq / m, dh);
    CHECK(maxdot < 1e-4);
    CHECK_CLOSE(sumsq / m, dh, 0.1 * dh);
    /* rows of different blocks are not orthogonal in general */
    double dot = 0;
    for (int k = 0; k < dh; k++) dot += (double)p[k] * p[dh * dh + k];
    CHECK(fabs(dot) > 1e-6);
    /* partial last block: m = 20, dh = 16 -> one full block and 4 rows, all orthogonal inside */
    float q[20 * 16];
    pf_draw_projection(q, 20, 16, 7);
    double worst = 0;
    for (int i = 16; i < 20; i++)
        for (int j = 16; j < i; j++) {
            double d = 0, ni = 0, nj = 0;
            for (int k = 0; k < 16; k++) {
                d += (double)q[i * 16 + k] * q[j * 16 + k];
                ni += (double)q[i * 16 + k] * q[i * 16 + k];
                nj += (double)q[j * 16 + k] * q[j * 16 + k];
            }
            d = fabs(d) / sqrt(ni * nj);
            if (d > worst) worst = d;
        }
    CHECK(worst < 1e-4);
    int finite = 1;
    for (int i = 0; i < 20 * 16; i++) finite &= isfinite(q[i]) != 0;
    CHECK(finite);
    /* dh = 1: rows are +-chi(1) */
    float r[8];
    pf_draw_projection(r, 8, 1, 3);
    for (int i = 0; i < 8; i++) CHECK(isfinite(r[i]) && r[i] != 0.0f);
    free(p);
    free(p2);
}

/* Tests init statistics and determinism. */
static void test_init(const pf_config *cfg) {
    char err[256];
    pf_model *a = NULL, *b = NULL, *c = NULL;
    CHECK(pf_model_init(&a, cfg, 1, err, sizeof err) == 0);
    CHECK(pf_model_init(&b, cfg, 1, err, sizeof err) == 0);
    CHECK(pf_model_init(&c, cfg, 2, err, sizeof err) == 0);
    if (!a || !b || !c) goto done;
    CHECK(a->owned != NULL && a->map == NULL && a->n_params == pf_param_count(cfg));
    CHECK(((uintptr_t)a->owned & 63) == 0);
    CHECK(a->p.embed == a->owned);
    CHECK(memcmp(a->owned, b->owned, a->n_params * sizeof(float)) == 0);
    CHECK(memcmp(a->owned, c->owned, a->n_params * sizeof(float)) != 0);
    CHECK(a->cfg.trained == 0 && a->sha256[0] == '\0');
    size_t d = (size_t)cfg->d_model;
    int ok = 1;
    for (size_t i = 0; i < d; i++) {
        ok &= a->p.layers[1].ln2_w[i] == 1.0f && a->p.layers[1].ln2_b[i] == 0.0f;
        ok &= a->p.lnf_w[i] == 1.0f && a->p.lnf_b[i] == 0.0f && a->p.layers[0].bq[i] == 0.0f;
    }
    CHECK(ok);
    double s = 0, s2 = 0;
    size_t ne = (size_t)TOK_VOCAB * d;
    for (size_t i = 0; i < ne; i++) {
        s += a->p.embed[i];
        s2 += (double)a->p.embed[i] * a->p.embed[i];
    }
    CHECK_CLOSE(sqrt(s2 / ne), 1.0, 0.1);   /* token embeddings at unit scale (weights.c) */
    CHECK_CLOSE(s / ne, 0.0, 0.15);
    s2 = 0;
    for (size_t i = 0; i < d * d; i++) s2 += (double)a->p.layers[0].wo[i] * a->p.layers[0].wo[i];
    CHECK_CLOSE(sqrt(s2 / (d * d)), 0.02 / sqrt(2.0 * cfg->n_layers), 0.001);
    /* projections of different layers differ */
    size_t pn = (size_t)cfg->n_features * (size_t)(cfg->d_model / cfg->n_heads);
    CHECK(memcmp(a->p.layers[0].proj, a->p.layers[1].proj, pn * sizeof(float)) != 0);
    pf_config bad = *cfg;
    bad.n_heads = 3;
    pf_model *x = (pf_model *)1;
    CHECK(pf_model_init(&x, &bad, 1, err, sizeof err) == -1 && x == NULL);
done:
    pf_model_free(a);
    pf_model_free(b);
    pf_model_free(c);
}

/* Mutates random bytes of the good file and loads it; only checks for no crash and consistency. */
static void fuzz(int iters) {
    unsigned char *buf = malloc(g_len);
    uint64_t x = 12345;
    int loaded = 0;
    for (int it = 0; it < iters; it++) {
        memcpy(buf, g_file, g_len);
        int nmut = 1 + (int)(rng_splitmix64(&x) % 4);
        size_t len = g_len;
        for (int k = 0; k < nmut; k++) {
            uint64_t r = rng_splitmix64(&x);
            size_t pos = (r & 1) ? (size_t)(r >> 8) % (g_hlen + 8) : (size_t)(r >> 8) % g_len;
            switch ((r >> 1) % 4) {
            case 0: buf[pos] ^= (unsigned char)(1u << ((r >> 4) % 8)); break;
            case 1: buf[pos] = (unsigned char)(r >> 40); break;
            case 2: buf[pos] = "{}[]\",:0123456789-e. "[(r >> 40) % 21]; break;
            default: len = (size_t)(r >> 8) % g_len; break;
            }
        }
        FILE *fp = fopen(g_bad, "wb");
        fwrite(buf, 1, len, fp);
        fclose(fp);
        pf_model *m = NULL;
        char err[512] = "";
        int rc = pf_model_load(&m, g_bad, err, sizeof err);
        if (rc == 0) loaded++;
        else if (!err[0] || m) {
            tu_checks++;
            tu_failures++;
            fprintf(stderr, "fuzz %d: failure without message or with a model\n", it);
        }
        pf_model_free(m);
    }
    printf("fuzz: %d mutated files, %d still valid\n", iters, loaded);
    free(buf);
}

int main(void) {
    char err[1024];
    pf_config cfg = {.n_layers = 2, .d_model = 32, .n_heads = 4, .d_ff = 64, .n_features = 16,
                     .kernel = PF_KERNEL_FAVOR_SOFTMAX, .norm_eps = 1e-5f};
    snprintf(cfg.name, sizeof cfg.name, "test-tiny \xc3\xa9");
    snprintf(cfg.provenance, sizeof cfg.provenance, "{\"test\":true}");
    snprintf(g_dir, sizeof g_dir, "/tmp/pf_test_loader_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_path, sizeof g_path, "%s/model.safetensors", g_dir);
    snprintf(g_bad, sizeof g_bad, "%s/bad.safetensors", g_dir);

    test_table(&cfg);
    test_projection();
    test_init(&cfg);

    /* round trip */
    pf_model *m = NULL, *l = NULL, *c = NULL;
    CHECKF(pf_model_init(&m, &cfg, 7, err, sizeof err) == 0, "%s", err);
    if (!m) return TEST_DONE();
    CHECKF(pf_model_save(m, g_path, err, sizeof err) == 0, "%s", err);
    g_file = read_all(g_path, &g_len);
    CHECK(g_file != NULL && g_len > 8);
    if (!g_file) return TEST_DONE();
    g_hlen = 0;
    for (int i = 7; i >= 0; i--) g_hlen = (g_hlen << 8) | g_file[i];
    CHECK(g_hlen % 8 == 0 && g_hlen < g_len);
    CHECK(good_dlen() == m->n_params * sizeof(float));
    char sha[65];
    st_sha256_hex(g_file, g_len, sha);
    CHECK(strlen(sha) == 64 && strcmp(m->sha256, sha) == 0);
    char shaf[65];
    CHECK(st_sha256_file(g_path, shaf, err, sizeof err) == 0 && strcmp(shaf, sha) == 0);
    st_sha256_hex("abc", 3, shaf);
    CHECK(strcmp(shaf, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    CHECKF(pf_model_load(&l, g_path, err, sizeof err) == 0, "%s", err);
    if (l) {
        check_same(m, l);
        CHECK(strcmp(l->sha256, sha) == 0);
        CHECK(l->map != NULL && l->owned == NULL);    /* zero-copy */
        CHECK(strcmp(l->path, g_path) == 0);
        CHECK(strcmp(l->cfg.name, "test-tiny \xc3\xa9") == 0);
        CHECKF(pf_model_clone_owned(&c, l, err, sizeof err) == 0, "%s", err);
        if (c) {
            check_same(l, c);
            CHECK(c->owned != NULL && c->map == NULL && strcmp(c->sha256, sha) == 0);
            c->p.head_b[0] = 1.0f;      /* writable */
            c->cfg.trained = 1;
            char p2[160];
            snprintf(p2, sizeof p2, "%s/clone.safetensors", g_dir);
            CHECKF(pf_model_save(c, p2, err, sizeof err) == 0, "%s", err);
            CHECK(strcmp(c->sha256, sha) != 0 && strlen(c->sha256) == 64);
            pf_model *r = NULL;
            CHECKF(pf_model_load(&r, p2, err, sizeof err) == 0, "%s", err);
            if (r) {
                CHECK(r->cfg.trained == 1 && r->p.head_b[0] == 1.0f);
                CHECK(strcmp(r->sha256, c->sha256) == 0);
            }
            pf_model_free(r);
            unlink(p2);
        }
    }
    /* saving twice gives the same bytes */
    char sha2[65];
    CHECK(pf_model_save(m, g_path, err, sizeof err) == 0);
    CHECK(st_sha256_file(g_path, sha2, err, sizeof err) == 0 && strcmp(sha2, sha) == 0);

    json_t *h;
    const unsigned char *data = good_data();
    size_t dlen = good_dlen();
    long long hb_b = 0, hb_e = 0;
    {
        json_t *t = good_header();
        hb_b = off_of(t, "head.bias", 0);
        hb_e = off_of(t, "head.bias", 1);
        json_decref(t);
    }
    CHECK(hb_e == (long long)dlen && hb_e - hb_b == 80);

    /* unaligned data section: still loads (copied into owned memory) */
    {
        char *s = json_dumps(h = good_header(), JSON_COMPACT);
        size_t sl = strlen(s);
        char *pad = malloc(sl + 8);
        memcpy(pad, s, sl);
        size_t want = sl + (5 - (sl + 8) % 4) % 4;    /* 8 + hlen == 1 (mod 4) */
        while (sl < want) pad[sl++] = ' ';
        write_raw(g_bad, sl, pad, sl, data, dlen);
        free(pad);
        free(s);
        json_decref(h);
        pf_model *u = NULL;
        CHECKF(pf_model_load(&u, g_bad, err, sizeof err) == 0, "%s", err);
        if (u) {
            CHECK(u->owned != NULL && u->map == NULL);
            check_same(m, u);
        }
        pf_model_free(u);
    }

    /* container errors */
    {
        FILE *fp = fopen(g_bad, "wb");
        fwrite(g_file, 1, 5, fp);
        fclose(fp);
    }
    expect_fail("file of 5 bytes", "shorter than the 8-byte", NULL);
    {
        FILE *fp = fopen(g_bad, "wb");
        fwrite(g_file, 1, g_len / 2, fp);
        fclose(fp);
    }
    expect_fail("truncated file", "truncated", NULL);
    {
        FILE *fp = fopen(g_bad, "wb");
        fwrite(g_file, 1, g_len - 1, fp);
        fclose(fp);
    }
    expect_fail("truncated by 1 byte", "head.bias", "beyond the data section");
    write_raw(g_bad, 1000000, "{}", 2, NULL, 0);
    expect_fail("header beyond file", "beyond the end of the file", NULL);
    write_raw(g_bad, 200000000, "{}", 2, NULL, 0);
    expect_fail("header over 100 MB", "exceeds the limit", NULL);
    write_raw(g_bad, UINT64_MAX, "{}", 2, NULL, 0);
    expect_fail("header length 2^64-1", "exceeds the limit", NULL);
    write_raw(g_bad, 0, NULL, 0, "abcdefgh", 8);
    expect_fail("header length 0", "header length is 0", NULL);
    write_st(g_bad, "{\"a\": ", NULL, 0);
    expect_fail("invalid JSON", "not valid JSON", NULL);
    write_st(g_bad, "[1, 2]  ", NULL, 0);
    expect_fail("JSON array header", "not an object", NULL);
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "12345678", 8);
    expect_fail("duplicate key", "not valid JSON", "duplicate");
    write_st(g_bad, "{\"a\": 5}", NULL, 0);
    expect_fail("entry not an object", "'a'", "not a JSON object");
    write_st(g_bad, "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("dtype missing", "'a'", "dtype\" is missing");
    write_st(g_bad, "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("dtype unknown", "'a'", "unknown dtype 'Q4'");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("negative dim", "'a'", "shape[0]");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("fractional dim", "'a'", "shape[0]");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("shape not array", "'a'", "not an array");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
             "1234", 4);
    expect_fail("9 dims", "'a'", "9 dimensions");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                    "\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("numel overflow", "'a'", "overflow");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", "1234", 4);
    expect_fail("begin > end", "'a'", "begin <= end");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", "1234", 4);
    expect_fail("one offset", "'a'", "data_offsets");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "1234", 4);
    expect_fail("size mismatch", "'a'", "needs 8 bytes");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "12345678", 8);
    expect_fail("gap at start", "bytes [0, 4)", "'a'");
    write_st(g_bad, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "12345678", 8);
    expect_fail("trailing bytes", "4 bytes after the last tensor", NULL);
    write_st(g_bad, "{\"__metadata__\":{\"k\":5}}", NULL, 0);
    expect_fail("metadata value number", "'k'", "not a string");
    write_st(g_bad, "{\"__metadata__\":[\"k\"]}", NULL, 0);
    expect_fail("metadata not object", "__metadata__", "not a JSON object");
    {
        char hdr[512];
        char longname[300];
        memset(longname, 'n', 299);
        longname[299] = '\0';
        snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                 longname);
        write_st(g_bad, hdr, "1234", 4);
        expect_fail("name too long", "299 bytes long", NULL);
    }
    write_st(g_bad, "{\"__metadata__\":{\"format\":\"performer-protein\"}}", NULL, 0);
    expect_fail("only format", "format_version", "missing");

    /* tensor errors (well-formed container, wrong content) */
    h = good_header();
    json_object_set_new(json_object_get(h, "embed.weight"), "dtype", json_string("I32"));
    write_json(h, data, dlen);
    json_decref(h);
    expect_fail("wrong dtype", "'embed.weight'", "dtype I32");

    h = good_header();
    json_t *sh = json_array();
    json_array_append_new(sh, json_integer(4));
    json_array_append_new(sh, json_integer(5));
    json_object_set_new(json_object_get(h, "head.bias"), "shape", sh);
    write_json(h, data, dlen);
    json_decref(h);
    expect_fail("wrong shape", "'head.bias' has shape [4, 5], expected [20]", NULL);

    h = good_header();
    set_offsets(h, "head.bias", hb_b - 4, hb_e - 4);
    write_json(h, data, dlen);
    json_decref(h);
    expect_fail("overlapping offsets", "overlap", "head.bias");

    h = good_header();
    set_offsets(h, "head.bias", hb_b + 80, hb_e + 80);
    write_json(h, data, dlen);
    json_decref(h);
    expect_fail("out-of-range offsets", "head.bias", "beyond the data section");

    h = good_header();
    set_offsets(h, "head.bias", (long long)1 << 62, ((long long)1 << 62) + 80);
    write_json(h, data, dlen);
    json_decref(h);
    expect_fail("huge offsets", "head.bias", "beyond the data section");

    h = good_header();
    json_object_del(h, "head.bias");
    write_json(h, data, dlen - 80);
    json_decref(h);
    expect_fail("missing tensor", "'head.bias'", "missing");

    h = good_header();
    {
        json_t *e = json_object(), *s2 = json_array(), *o = json_array();
        json_array_append_new(s2, json_integer(1));
        json_array_append_new(o, json_integer((json_int_t)dlen));
        json_array_append_new(o, json_integer((json_int_t)dlen + 4));
        json_object_set_new(e, "dtype", json_string("F32"));
        json_object_set_new(e, "shape", s2);
        json_object_set_new(e, "data_offsets", o);
        json_object_set_new(h, "extra.weight", e);
        unsigned char *d2 = malloc(dlen + 4);
        memcpy(d2, data, dlen);
        memset(d2 + dlen, 0, 4);
        write_json(h, d2, dlen + 4);
        free(d2);
    }
    json_decref(h);
    expect_fail("unexpected tensor", "unexpected tensor 'extra.weight'", NULL);

    h = good_header();
    {
        long long qb = off_of(h, "layers.1.attn.q.weight", 0);
        unsigned char *d2 = malloc(dlen);
        memcpy(d2, data, dlen);
        float nan = NAN;
        memcpy(d2 + qb + 5 * 4, &nan, 4);
        write_json(h, d2, dlen);
        expect_fail("NaN weight", "'layers.1.attn.q.weight'", "index 5");
        float inf = -INFINITY;
        memcpy(d2 + qb + 5 * 4, data + qb + 5 * 4, 4);
        memcpy(d2 + dlen - 4, &inf, 4);
        write_json(h, d2, dlen);
        expect_fail("-Inf weight", "'head.bias'", "index 19");
        free(d2);
    }
    json_decref(h);

    /* metadata errors */
    meta_case("kernel", "favor-cosine", "kernel", "favor-cosine");
    meta_case("n_heads", "5", "d_model = 32 is not divisible by n_heads = 5", NULL);
    meta_case("format_version", "2", "format_version", "\"2\"");
    meta_case("format", "gpt", "format", "performer-protein");
    meta_case("vocab", "[\"<pad>\",\"<mask>\"]", "vocab", NULL);
    meta_case("vocab", "not json", "vocab", NULL);
    {
        json_t *v = json_loads(tok_vocab_json(), 0, NULL);
        json_array_set_new(v, 5, json_string("C"));
        json_array_set_new(v, 6, json_string("A"));
        char *vs = json_dumps(v, JSON_COMPACT);
        meta_case("vocab", vs, "vocab", NULL);
        free(vs);
        json_decref(v);
    }
    meta_case("n_layers", "-1", "n_layers", NULL);
    meta_case("n_layers", "0", "n_layers = 0 is out of range", NULL);
    meta_case("n_layers", "2x", "n_layers", "not a decimal integer");
    meta_case("n_layers", " 2", "n_layers", NULL);
    meta_case("n_layers", "", "n_layers", NULL);
    meta_case("n_layers", "99999999999999999999", "n_layers", NULL);
    meta_case("n_layers", "257", "n_layers = 257 is out of range", NULL);
    meta_case("n_layers", "3", "'layers.2.ln1.weight'", "missing");
    meta_case("d_model", "64", "'embed.weight' has shape [30, 32], expected [30, 64]", NULL);
    meta_case("d_ff", "100000", "d_ff", NULL);
    meta_case("n_features", "8", "'layers.0.attn.proj'", "expected [8, 8]");
    meta_case("d_model", NULL, "'d_model' is missing", NULL);
    meta_case("position", "rotary", "position", NULL);
    meta_case("norm_eps", "nan", "norm_eps", NULL);
    meta_case("norm_eps", "-1e-5", "norm_eps", NULL);
    meta_case("norm_eps", "0", "norm_eps", NULL);
    meta_case("norm_eps", "1e-5x", "norm_eps", NULL);
    meta_case("norm_eps", "1e-60", "norm_eps", NULL);
    meta_case("trained", "yes", "trained", NULL);
    meta_case("trained", NULL, "trained", "missing");

    /* unknown metadata keys are ignored; name/provenance optional */
    h = good_header();
    json_object_set_new(json_object_get(h, "__metadata__"), "extra", json_string("x"));
    json_object_del(json_object_get(h, "__metadata__"), "provenance");
    write_json(h, data, dlen);
    json_decref(h);
    {
        pf_model *u = NULL;
        CHECKF(pf_model_load(&u, g_bad, err, sizeof err) == 0, "%s", err);
        if (u) CHECK(u->cfg.provenance[0] == '\0');
        pf_model_free(u);
    }

    /* nonexistent file, directory */
    snprintf(g_bad, sizeof g_bad, "%s/nope.safetensors", g_dir);
    expect_fail("missing file", "cannot open", NULL);
    snprintf(g_bad, sizeof g_bad, "%s", g_dir);
    expect_fail("directory", "not a regular file", NULL);
    snprintf(g_bad, sizeof g_bad, "%s/bad.safetensors", g_dir);

    /* saving into a missing directory fails cleanly */
    CHECK(pf_model_save(m, "/nonexistent-dir-pf/x.safetensors", err, sizeof err) == -1 &&
          strstr(err, "temporary"));

    const char *fi = getenv("PF_FUZZ_ITERS");      /* e.g. PF_FUZZ_ITERS=100000 for a long run */
    fuzz(fi && atoi(fi) > 0 ? atoi(fi) : getenv("PF_SANITIZED") ? 300 : 1500);

    pf_model_free(c);
    pf_model_free(l);
    pf_model_free(m);
    free(g_file);
    unlink(g_bad);
    unlink(g_path);
    CHECK(rmdir(g_dir) == 0);
    return TEST_DONE();
}
