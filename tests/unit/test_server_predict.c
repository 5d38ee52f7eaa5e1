/* test_server_predict.c - request validation/normalisation, ids and response JSON of performerd
 * (server/predict.c), without a model: log-probs are synthetic. */
#include "predict.h"
#include "testutil.h"
#include "tokenizer.h"

#include <jansson.h>

static const char *SHA = "b550427cfccab23856b8bac900b6545594869eaa9795438bd0a14ee006499eef";
static const pr_limits LIM = {100, 4};

/* Parses body; returns the request or NULL with *e. */
static pr_request *parse(const char *body, pr_error *e) {
    pr_request *r = NULL;
    if (pr_parse(body, strlen(body), &LIM, SHA, &r, e)) return NULL;
    return r;
}

/* Checks that body fails with status and type. */
static void expect_err(const char *body, int status, const char *type) {
    pr_error e;
    pr_request *r = parse(body, &e);
    CHECKF(r == NULL && e.status == status && !strcmp(e.type, type), "%s -> %d %s (%s)", body, r ? 200 : e.status,
           r ? "ok" : e.type, r ? "" : e.msg);
    pr_free(r);
    if (!r) json_decref(e.details);
}

int main(void) {
    pr_error e;
    /* normalisation: case, whitespace, <MASK>, sequence vs sequences[1], key order -> one id */
    pr_request *a = parse("{\"sequence\": \"MKT<mask>LLV\"}", &e);
    pr_request *b = parse("{\"top_k\": 5, \"sequences\": [\" mkt<MASK>l\\nlv \"]}", &e);
    CHECK(a && b);
    if (a && b) {
        CHECK(strlen(a->id) == 64);
        CHECK(!strcmp(a->id, b->id));
        CHECK(!strcmp(a->canonical, b->canonical));
        CHECK(a->n == 1 && a->len[0] == 7 && a->n_masked[0] == 1 && a->masked[0][3] == 1);
        CHECK(a->ids[0][3] == TOK_MASK && a->input[0][0] == tok_residue_id('M'));
        CHECK(a->top_k == 5 && a->residues == 7);
        CHECK(pr_tokens(a) == 9);
    }
    pr_request *c = parse("{\"sequence\": \"MKT<mask>LLV\", \"top_k\": 6}", &e);
    CHECK(c && a && strcmp(c->id, a->id));       /* parameters are part of the id */
    pr_request *d = NULL;
    const char *dj = "{\"sequence\": \"MKT<mask>LLV\"}";
    pr_parse(dj, strlen(dj), &LIM, "0000", &d, &e);
    CHECK(d && a && strcmp(d->id, a->id));       /* so is the model */
    pr_free(b);
    pr_free(c);
    pr_free(d);

    /* mask_positions: flat (all sequences) and nested, duplicates folded, residue kept as input */
    pr_request *m = parse("{\"sequences\": [\"MKTALLV\", \"GSSG\"], \"mask_positions\": [2, 2, 1]}", &e);
    CHECK(m && m->n_masked[0] == 2 && m->n_masked[1] == 2 && m->ids[0][1] == TOK_MASK && m->input[0][1] != TOK_MASK);
    pr_request *m2 = parse("{\"sequences\": [\"MKTALLV\", \"GSSG\"], \"mask_positions\": [[1, 2], [2, 1]]}", &e);
    CHECK(m && m2 && !strcmp(m->id, m2->id));
    pr_free(m2);

    /* errors */
    expect_err("", 400, "invalid_json");
    expect_err("{\"sequence\": ", 400, "invalid_json");
    expect_err("{\"sequence\": \"A\", \"sequence\": \"C\"}", 400, "invalid_json");
    expect_err("[]", 400, "invalid_type");
    expect_err("{\"sequence\": 1}", 400, "invalid_type");
    expect_err("{\"sequences\": [1]}", 400, "invalid_type");
    expect_err("{\"sequence\": \"A\", \"top_k\": 1.5}", 400, "invalid_type");   /* 1.0 is the integer 1 */
    expect_err("{\"sequence\": \"A\", \"mask_positions\": 1}", 400, "invalid_type");
    expect_err("{\"sequence\": \"A\", \"extra\": 1}", 400, "unknown_field");
    expect_err("{}", 400, "invalid_request");
    expect_err("{\"sequence\": \"A\", \"sequences\": [\"A\"]}", 400, "invalid_request");
    expect_err("{\"sequence\": \"MK1\"}", 422, "invalid_residue");
    {   /* FASTA habits get a hint: a '>' header at the start, a '*' (stop) at the end; elsewhere none */
        struct { const char *body, *hint; } h[] = {
            {"{\"sequence\": \" >sp|P1|X\\nMKT\"}", "this looks like FASTA"},
            {"{\"sequence\": \"MKT* \\n\"}", "a final '*' (stop)"},
            {"{\"sequences\": [\"MKT\", \"GS*\"]}", "a final '*' (stop)"},
            {"{\"sequence\": \"MK*T\"}", NULL},
            {"{\"sequence\": \"MK>T\"}", NULL},
            {"{\"sequence\": \"MK1\"}", NULL}};
        for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
            pr_error he;
            pr_request *hr = parse(h[i].body, &he);
            const int hinted = !hr && (strstr(he.msg, "this looks like FASTA") || strstr(he.msg, "a final '*'"));
            CHECKF(!hr && !strcmp(he.type, "invalid_residue") &&
                       (h[i].hint ? strstr(he.msg, h[i].hint) != NULL : !hinted),
                   "%s -> %s", h[i].body, hr ? "ok" : he.msg);
            pr_free(hr);
            if (!hr) json_decref(he.details);
        }
    }
    expect_err("{\"sequence\": \"   \"}", 422, "empty_sequence");
    expect_err("{\"sequences\": []}", 422, "empty_batch");
    expect_err("{\"sequence\": \"MKT\", \"mask_positions\": [0]}", 422, "invalid_mask_position");
    expect_err("{\"sequence\": \"MKT\", \"mask_positions\": [4]}", 422, "invalid_mask_position");
    expect_err("{\"sequence\": \"MKT\", \"top_k\": 26}", 422, "invalid_top_k");
    expect_err("{\"sequences\": [\"A\",\"A\",\"A\",\"A\",\"A\"]}", 413, "batch_too_large");
    {
        char big[300];
        snprintf(big, sizeof big, "{\"sequence\": \"%0101d\"}", 0);
        for (char *p = big + 14; *p == '0'; p++) *p = 'A';
        expect_err(big, 413, "sequence_too_long");
    }
    pr_request *bad = parse("{\"sequences\": [\"MKT\", \"MK#T\"]}", &e);
    CHECK(!bad && e.details && json_integer_value(json_object_get(e.details, "position")) == 3 &&
          json_integer_value(json_object_get(e.details, "sequence_index")) == 1 &&
          !strcmp(json_string_value(json_object_get(e.details, "character")), "#"));
    json_decref(e.details);

    /* response: top-k order, probabilities, filled sequence, cached flag rewrite */
    if (a) {
        float lp[9 * TOK_NRES];
        for (int p = 0; p < 9; p++)
            for (int k = 0; k < TOK_NRES; k++) lp[p * TOK_NRES + k] = -5.0f - 0.1f * k;
        lp[4 * TOK_NRES + 7] = -0.5f;            /* position 4 (framed 4): residue index 7 = 'I' */
        float *per[1] = {lp};
        json_t *model = json_pack("{s:s, s:s}", "name", "t", "sha256", SHA);
        size_t len = 0;
        char *s = pr_response(a, model, per, &len);
        CHECK(s && len == strlen(s));
        json_t *o = s ? json_loads(s, 0, NULL) : NULL;
        CHECK(o != NULL);
        if (o) {
            CHECK(!strcmp(json_string_value(json_object_get(o, "id")), a->id));
            CHECK(json_is_false(json_object_get(o, "cached")));
            json_t *r0 = json_array_get(json_object_get(o, "results"), 0);
            CHECK(!strcmp(json_string_value(json_object_get(r0, "filled_sequence")), "MKTILLV"));
            CHECK(!strcmp(json_string_value(json_object_get(r0, "mode")), "masked"));
            json_t *p0 = json_array_get(json_object_get(r0, "predictions"), 0);
            CHECK(json_integer_value(json_object_get(p0, "position")) == 4);
            CHECK(!strcmp(json_string_value(json_object_get(p0, "residue")), "<mask>"));
            json_t *tk = json_object_get(p0, "top_k");
            CHECK(json_array_size(tk) == 5);
            CHECK(!strcmp(json_string_value(json_object_get(json_array_get(tk, 0), "token")), "I"));
            CHECK(!strcmp(json_string_value(json_object_get(json_array_get(tk, 1), "token")), "A"));
            CHECK_CLOSE(json_real_value(json_object_get(json_array_get(tk, 0), "prob")), exp(-0.5), 1e-6);
            CHECK_CLOSE(json_real_value(json_object_get(json_array_get(tk, 0), "log_prob")), -0.5, 1e-6);
            json_decref(o);
        }
        pr_mark_cached(s, len);
        o = json_loads(s, 0, NULL);
        CHECK(o && json_is_true(json_object_get(o, "cached")));
        json_decref(o);
        free(s);
        json_decref(model);
    }
    pr_free(a);
    pr_free(m);

    size_t n = 0;
    char *eb = pr_error_body("invalid_residue", "bad \xff byte", "rid", json_pack("{s:i}", "position", 3), &n);
    json_t *eo = json_loads(eb, 0, NULL);
    CHECK(eo && !strcmp(json_string_value(json_object_get(eo, "error_type")), "invalid_residue") &&
          !strcmp(json_string_value(json_object_get(eo, "request_id")), "rid") &&
          json_integer_value(json_object_get(eo, "position")) == 3 && json_is_string(json_object_get(eo, "error")));
    json_decref(eo);
    free(eb);
    /* JSON nesting: refused before parsing beyond PR_MAX_JSON_DEPTH; brackets inside strings and
     * escaped quotes do not count */
    const char *j1 = "{\"a\": [[1], {\"b\": []}]}", *j2 = "{\"a\": \"[[[[\\\"[[\"}";
    size_t nv = 0;
    CHECK(pr_json_depth(j1, strlen(j1), 64, &nv) == 4 && nv == 7);   /* an upper estimate */
    CHECK(pr_json_depth(j2, strlen(j2), 64, &nv) == 1 && nv == 2);
    CHECK(pr_json_depth(j1, strlen(j1), 1, NULL) == 2);    /* stops one level past the limit */
    for (int depth = PR_MAX_JSON_DEPTH; depth <= PR_MAX_JSON_DEPTH + 1; depth++) {
        char deep[400];                                     /* {"x": [[...]]} nested depth levels */
        size_t k = (size_t)snprintf(deep, sizeof deep, "{\"x\": ");
        for (int d = 1; d < depth; d++) deep[k++] = '[';
        for (int d = 1; d < depth; d++) deep[k++] = ']';
        deep[k++] = '}';
        deep[k] = '\0';
        CHECK(pr_json_depth(deep, k, PR_MAX_JSON_DEPTH, NULL) == depth);
        expect_err(deep, 400, depth > PR_MAX_JSON_DEPTH ? "json_too_deep" : "unknown_field");
    }
    for (int m = 200000; m <= 300000; m += 100000) {   /* many values: 300,000 are refused before parsing */
        char *many = malloc((size_t)m * 2 + 64);
        size_t k = (size_t)sprintf(many, "{\"sequence\": \"MKT\", \"mask_positions\": [");
        for (int i = 0; i < m; i++) k += (size_t)sprintf(many + k, i ? ",0" : "0");
        k += (size_t)sprintf(many + k, "]}");
        size_t v = 0;
        pr_json_depth(many, k, PR_MAX_JSON_DEPTH, &v);
        CHECKF((v > PR_MAX_JSON_VALUES(k)) == (m == 300000), "%zu values in %zu bytes", v, k);
        expect_err(many, m == 300000 ? 413 : 422, m == 300000 ? "json_too_large" : "invalid_mask_position");
        free(many);
    }
    return TEST_DONE();
}
