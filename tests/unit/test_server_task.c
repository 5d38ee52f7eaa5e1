/* test_server_task.c - the score/embed/logits tasks (server/task.c) and job submissions
 * (server/batch.c) without a model: mutation syntax and checks, the masked copies each scoring
 * method runs, the scores computed from synthetic log-probs, embeddings and logits responses, ids,
 * limits, FASTA / JSON job bodies and the JSON Lines records. */
#include "batch.h"
#include "task.h"
#include "testutil.h"
#include "tokenizer.h"

#include <jansson.h>

static const char *SHA = "b550427cfccab23856b8bac900b6545594869eaa9795438bd0a14ee006499eef";
static const tk_limits LIM = {100, 4, 30, 100000, 2, 4};

/* Parses body as kind; returns the request or NULL with *e. */
static tk_request *parse(tk_kind kind, const char *body, pr_error *e) {
    tk_request *r = NULL;
    if (tk_parse(kind, body, strlen(body), &LIM, SHA, &r, e)) return NULL;
    return r;
}

/* Checks that body fails with status and type (and, when position > 0, names that position). */
static void expect_err(tk_kind kind, const char *body, int status, const char *type, long position) {
    pr_error e;
    e.details = NULL;
    tk_request *r = parse(kind, body, &e);
    CHECKF(r == NULL && e.status == status && !strcmp(e.type, type), "%s -> %d %s (%s)", body, r ? 200 : e.status,
           r ? "ok" : e.type, r ? "" : e.msg);
    if (!r && position > 0)
        CHECKF(json_integer_value(json_object_get(e.details, "position")) == position, "%s: position in %s", body,
               e.msg);
    tk_free(r);
    if (!r) json_decref(e.details);
}

/* Synthetic framed log-probs of input k: row p, class c -> -(1 + c) * 0.1 - 0.01 * p - k. */
static void fake_logp(float *lp, size_t L, int k) {
    for (size_t p = 0; p < L; p++)
        for (int c = 0; c < TOK_NRES; c++) lp[p * TOK_NRES + c] = -(1.0f + c) * 0.1f - 0.01f * (float)p - (float)k;
}

/* Consumes every input of r with fake_logp (and hidden[p][c] = p + 0.5 c when needed). */
static void feed(tk_request *r) {
    for (int k = 0; k < r->n_inputs; k++) {
        size_t L = tk_input_len(r, k) + 2;
        float *lp = malloc(L * TOK_NRES * sizeof *lp), *h = malloc(L * 4 * sizeof *h);
        fake_logp(lp, L, k);
        for (size_t p = 0; p < L; p++)
            for (int c = 0; c < 4; c++) h[p * 4 + c] = (float)p + 0.5f * (float)c;
        CHECK(tk_consume(r, k, lp, h, 4) == 0);
        free(lp);
        free(h);
    }
}

/* Returns the value fake_logp gives at residue index i (0-based), class c, input k. */
static double fv(int i, int c, int k) { return (double)(-(1.0f + c) * 0.1f - 0.01f * (float)(i + 1) - (float)k); }

/* Builds the response of r and parses it. */
static json_t *respond(tk_request *r) {
    json_t *model = json_pack("{s:s, s:s, s:b}", "name", "t", "sha256", SHA, "trained", 0);
    size_t len = 0;
    char *s = tk_response(r, model, &len);
    json_decref(model);
    CHECK(s && len == strlen(s));
    json_t *o = s ? json_loads(s, 0, NULL) : NULL;
    CHECK(o != NULL);
    free(s);
    return o;
}

/* The score of mutant i in a parsed score response. */
static double score_of(json_t *o, size_t i) {
    return json_number_value(json_object_get(json_array_get(json_object_get(o, "scores"), i), "score"));
}

static int cls(char c) { return tok_residue_id(c) - TOK_RES0; }

int main(void) {
    pr_error e;
    /* ---- mutation syntax --------------------------------------------------------------------- */
    int32_t wt[8];
    size_t n = 0;
    tok_error te;
    tok_encode("MKTAYIAK", 8, wt, 8, &n, &te);
    tk_mutant m;
    CHECK(tk_parse_mutant("A4G", wt, n, 1, 0, &m, &e) == 0 && m.n_sites == 1 && m.sites[0].index == 3 &&
          m.sites[0].wt == cls('A') && m.sites[0].mt == cls('G') && !strcmp(m.text, "A4G"));
    free(m.text), free(m.sites);
    CHECK(tk_parse_mutant(" t3n : k2r ", wt, n, 1, 0, &m, &e) == 0 && m.n_sites == 2 && !strcmp(m.text, "K2R:T3N"));
    free(m.text), free(m.sites);
    CHECK(tk_parse_mutant("A27G", wt, n, 24, 0, &m, &e) == 0 && m.sites[0].index == 3 && !strcmp(m.text, "A27G"));
    free(m.text), free(m.sites);
    /* numbering from an offset below 1: the 4th residue (A) is 1 at offset -2, the 2nd (K) is -1 */
    CHECK(tk_parse_mutant("K-1R", wt, n, -2, 0, &m, &e) == 0 && m.sites[0].index == 1 && !strcmp(m.text, "K-1R"));
    free(m.text), free(m.sites);
    e.details = NULL;
    CHECK(tk_parse_mutant("A-4G", wt, n, 1, 0, &m, &e) == -1 && !strcmp(e.type, "invalid_mutation_position"));
    json_decref(e.details);
    const char *bad[] = {"A4", "4G", "A4X", "B4G", "A4GG", "A--4G", "A-G", "A4-G", "", "A4G:", "A4G K2R"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.details = NULL;
        int rc = tk_parse_mutant(bad[i], wt, n, 1, 7, &m, &e);
        CHECKF(rc == -1 && e.status == 422 && !strcmp(e.type, "invalid_mutation"), "'%s' -> %s", bad[i], e.type);
        CHECK(json_integer_value(json_object_get(e.details, "mutation_index")) == 7);
        json_decref(e.details);
    }
    e.details = NULL;
    CHECK(tk_parse_mutant("A9G", wt, n, 1, 0, &m, &e) == -1 && !strcmp(e.type, "invalid_mutation_position") &&
          json_integer_value(json_object_get(e.details, "max")) == 8);
    json_decref(e.details);
    e.details = NULL;
    CHECK(tk_parse_mutant("M0G", wt, n, 1, 0, &m, &e) == -1 && !strcmp(e.type, "invalid_mutation_position"));
    json_decref(e.details);
    e.details = NULL;
    CHECK(tk_parse_mutant("G4A", wt, n, 1, 0, &m, &e) == -1 && !strcmp(e.type, "wild_type_mismatch") &&
          strstr(e.msg, "position 4") && strstr(e.msg, "has A") &&
          !strcmp(json_string_value(json_object_get(e.details, "expected")), "A"));
    json_decref(e.details);
    e.details = NULL;
    CHECK(tk_parse_mutant("A4G:A4C", wt, n, 1, 0, &m, &e) == -1 && !strcmp(e.type, "invalid_mutation") &&
          strstr(e.msg, "twice"));
    json_decref(e.details);

    /* ---- score: inputs of each method ------------------------------------------------------------ */
    const char *mm = "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\", \"K2R:A4C\", \"K8M\"]}";
    tk_request *r = parse(TK_SCORE, mm, &e);
    CHECK(r && r->method == TK_MASKED_MARGINALS && r->offset == 1 && r->n_mutants == 3);
    if (r) {
        CHECK(r->n_positions == 3 && r->positions[0] == 1 && r->positions[1] == 3 && r->positions[2] == 7);
        CHECK(r->n_inputs == 3 && r->input_tokens == 30 && r->hidden_layer == TK_NO_HIDDEN);
        int32_t in[8];
        tk_input(r, 1, in);
        CHECK(in[3] == TOK_MASK && in[1] == wt[1] && in[7] == wt[7]);   /* one position masked, wild type else */
        feed(r);
        CHECK(tk_complete(r));
        json_t *o = respond(r);
        /* masked-marginals: input k masks positions[k]; score = sum of mt - wt at each site */
        CHECK_CLOSE(score_of(o, 0), fv(3, cls('G'), 1) - fv(3, cls('A'), 1), 1e-5);
        CHECK_CLOSE(score_of(o, 1), fv(1, cls('R'), 0) - fv(1, cls('K'), 0) + fv(3, cls('C'), 1) - fv(3, cls('A'), 1),
                    1e-5);
        CHECK_CLOSE(score_of(o, 2), fv(7, cls('M'), 2) - fv(7, cls('K'), 2), 1e-5);
        json_t *s1 = json_array_get(json_object_get(o, "scores"), 1);
        CHECK(!strcmp(json_string_value(json_object_get(s1, "mutant")), "K2R:A4C"));
        json_t *site = json_array_get(json_object_get(s1, "sites"), 0);
        CHECK(json_integer_value(json_object_get(site, "position")) == 2 &&
              !strcmp(json_string_value(json_object_get(site, "wt")), "K"));
        CHECK_CLOSE(json_number_value(json_object_get(site, "wt_log_prob")), fv(1, cls('K'), 0), 1e-5);
        CHECK(!strcmp(json_string_value(json_object_get(o, "method")), "masked-marginals") &&
              json_integer_value(json_object_get(o, "length")) == 8 && json_is_false(json_object_get(o, "cached")));
        json_decref(o);
    }
    /* ids: case, site order and spaces normalise; method and offset matter */
    tk_request *r2 = parse(TK_SCORE, "{\"mutations\": [\"a4g\", \"A4C:K2R\", \" K8M\"], \"sequence\": \"mkta yiak\", "
                           "\"method\": \"masked-marginals\", \"offset\": 1}", &e);
    CHECK(r && r2 && !strcmp(r->id, r2->id));
    tk_free(r2);
    r2 = parse(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\", \"K2R:A4C\", \"K8M\"], \"method\": "
               "\"wt-marginals\"}", &e);
    CHECK(r && r2 && strcmp(r->id, r2->id));
    if (r2) {
        CHECK(r2->n_inputs == 1);
        feed(r2);
        json_t *o = respond(r2);
        CHECK_CLOSE(score_of(o, 0), fv(3, cls('G'), 0) - fv(3, cls('A'), 0), 1e-5);   /* one unmasked pass */
        json_decref(o);
    }
    tk_free(r2);
    r2 = parse(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A27G\"], \"offset\": 24}", &e);
    CHECK(r2 && r2->positions[0] == 3);
    tk_free(r2);
    tk_free(r);

    /* pseudo-likelihood: (mutants + 1) x standard positions masked copies; X is skipped */
    r = parse(TK_SCORE, "{\"sequence\": \"MKXAY\", \"mutations\": [\"A4G\", \"K2R:Y5W\"], \"method\": "
              "\"pseudo-likelihood\"}", &e);
    CHECK(r && r->n_positions == 4 && r->n_inputs == 12);
    if (r) {
        int32_t in[5];
        tk_input(r, 4 + 2, in);                    /* variant 1 (A4G), position index 2 -> residue 4 */
        CHECK(in[3] == TOK_MASK && in[0] == tok_residue_id('M') && in[2] == tok_residue_id('X'));
        tk_input(r, 8 + 0, in);                    /* variant 2 (K2R:Y5W), residue 1 masked */
        CHECK(in[0] == TOK_MASK && in[1] == tok_residue_id('R') && in[4] == tok_residue_id('W'));
        feed(r);
        json_t *o = respond(r);
        const char *seqs[3] = {"MKXAY", "MKXGY", "MRXAW"};
        int idxs[4] = {0, 1, 3, 4};
        double pll[3];
        for (int v = 0; v < 3; v++) {
            pll[v] = 0;
            for (int j = 0; j < 4; j++) pll[v] += fv(idxs[j], cls(seqs[v][idxs[j]]), v * 4 + j);
        }
        CHECK_CLOSE(json_number_value(json_object_get(json_object_get(o, "wild_type"), "pll")), pll[0], 1e-4);
        CHECK_CLOSE(score_of(o, 0), pll[1] - pll[0], 1e-4);
        CHECK_CLOSE(score_of(o, 1), pll[2] - pll[0], 1e-4);
        json_decref(o);
    }
    tk_free(r);

    /* score errors */
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"G4A\"]}", 422, "wild_type_mismatch", 4);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A9G\"]}", 422, "invalid_mutation_position", 9);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\", \"a4g\"]}", 422, "duplicate_mutation", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"K2R:A4G\", \"A4G:K2R\"]}", 422,
               "duplicate_mutation", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": []}", 422, "invalid_mutation", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4Z\"]}", 422, "invalid_mutation", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKT<mask>YIAK\", \"mutations\": [\"K2R\"]}", 422, "invalid_residue", 4);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\"], \"method\": \"esm\"}", 422,
               "invalid_method", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": \"A4G\"}", 400, "invalid_type", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [4]}", 400, "invalid_type", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\"}", 400, "invalid_request", 0);
    expect_err(TK_SCORE, "{\"sequences\": [\"MKTAYIAK\"], \"mutations\": [\"A4G\"]}", 400, "unknown_field", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\"], \"offset\": \"1\"}", 400,
               "invalid_type", 0);
    expect_err(TK_SCORE, "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\"], \"top_k\": 1}", 400, "unknown_field", 0);
    {   /* pseudo-likelihood over its length cap (30 in LIM): 413 naming the limit */
        char body[200];
        snprintf(body, sizeof body, "{\"sequence\": \"%s\", \"mutations\": [\"A1G\"], \"method\": \"pseudo-likelihood\"}",
                 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        expect_err(TK_SCORE, body, 413, "sequence_too_long", 0);
        tk_limits small = LIM;
        small.max_score_tokens = 20;
        const char *b2 = "{\"sequence\": \"MKTAYIAK\", \"mutations\": [\"A4G\", \"K2R\", \"K8M\"]}";
        tk_request *x = NULL;
        e.details = NULL;
        CHECK(tk_parse(TK_SCORE, b2, strlen(b2), &small, SHA, &x, &e) == -1 && !strcmp(e.type, "score_too_large") &&
              json_integer_value(json_object_get(e.details, "tokens")) == 30);
        json_decref(e.details);
    }

    /* ---- embed ----------------------------------------------------------------------------------- */
    r = parse(TK_EMBED, "{\"sequences\": [\"MKT\", \"GS\"], \"representations\": [\"per_residue\", \"mean\", \"cls\"], "
              "\"layer\": 1}", &e);
    CHECK(r && r->hidden_layer == 1 && r->n_inputs == 2 && r->want_mean && r->want_cls && r->want_per_residue);
    if (r) {
        feed(r);
        json_t *o = respond(r);
        json_t *r0 = json_array_get(json_object_get(o, "results"), 0);
        CHECK(json_integer_value(json_object_get(o, "dim")) == 4 && json_integer_value(json_object_get(o, "layer")) == 1);
        /* hidden[p][c] = p + 0.5c: residues are framed rows 1..3, mean row 2; cls is row 0 */
        CHECK_CLOSE(json_number_value(json_array_get(json_object_get(r0, "mean"), 1)), 2.5, 1e-6);
        CHECK_CLOSE(json_number_value(json_array_get(json_object_get(r0, "cls"), 2)), 1.0, 1e-6);
        json_t *pr = json_object_get(r0, "per_residue");
        CHECK(json_array_size(pr) == 3 && json_array_size(json_array_get(pr, 0)) == 4);
        CHECK_CLOSE(json_number_value(json_array_get(json_array_get(pr, 2), 3)), 4.5, 1e-6);
        json_decref(o);
    }
    tk_free(r);
    r = parse(TK_EMBED, "{\"sequence\": \"MKT\"}", &e);
    CHECK(r && r->hidden_layer == -1 && r->want_mean && !r->want_cls && !r->want_per_residue);
    tk_free(r);
    expect_err(TK_EMBED, "{\"sequence\": \"MKT\", \"layer\": 3}", 422, "invalid_layer", 0);
    expect_err(TK_EMBED, "{\"sequence\": \"MKT\", \"layer\": -2}", 422, "invalid_layer", 0);
    expect_err(TK_EMBED, "{\"sequence\": \"MKT\", \"representations\": [\"max\"]}", 422, "invalid_representation", 0);
    expect_err(TK_EMBED, "{\"sequence\": \"MKT\", \"representations\": []}", 422, "invalid_representation", 0);
    expect_err(TK_EMBED, "{\"sequence\": \"MK#\"}", 422, "invalid_residue", 3);
    expect_err(TK_EMBED, "{\"sequences\": [\"A\",\"A\",\"A\",\"A\",\"A\"]}", 413, "batch_too_large", 0);

    /* ---- logits ---------------------------------------------------------------------------------- */
    r = parse(TK_LOGITS, "{\"sequence\": \"MK<mask>A\"}", &e);
    CHECK(r && r->n_inputs == 1);
    if (r) {
        feed(r);
        json_t *o = respond(r);
        json_t *r0 = json_array_get(json_object_get(o, "results"), 0);
        json_t *lp = json_object_get(r0, "log_probs");
        CHECK(json_array_size(lp) == 4 && json_array_size(json_array_get(lp, 0)) == 20);
        CHECK_CLOSE(json_number_value(json_array_get(json_array_get(lp, 2), 5)), fv(2, 5, 0), 1e-5);
        CHECK(!strcmp(json_string_value(json_array_get(json_object_get(r0, "tokens"), 2)), "<mask>"));
        CHECK(!strcmp(json_string_value(json_object_get(o, "alphabet")), "ACDEFGHIKLMNPQRSTVWY"));
        json_decref(o);
    }
    tk_free(r);
    expect_err(TK_LOGITS, "{\"sequence\": \"MKT\", \"top_k\": 3}", 400, "unknown_field", 0);
    /* predict is POST /predict unchanged */
    r = parse(TK_PREDICT, "{\"sequence\": \"MKT<mask>LLV\"}", &e);
    pr_request *p = NULL;
    pr_limits pl = {100, 4};
    const char *pb = "{\"sequence\": \"MKT<mask>LLV\"}";
    CHECK(pr_parse(pb, strlen(pb), &pl, SHA, &p, &e) == 0);
    CHECK(r && p && !strcmp(r->id, p->id) && r->n_inputs == 1);
    pr_free(p);
    tk_free(r);

    /* ---- job submissions ------------------------------------------------------------------------- */
    bt_limits bl = {3, LIM};
    bt_submission *s = NULL;
    const char *fa = "\n>sp|P1|ONE first protein\nMKTA\nYIAK*\n; a comment\n>two\r\nGS SG\r\n";
    json_t *q = json_pack("{s:s, s:s}", "task", "embed", "layer", "-1");
    CHECK(bt_parse_fasta(fa, strlen(fa), "embed", q, &bl, SHA, &s, &e) == 0);
    if (s) {
        CHECK(s->n == 2 && !strcmp(s->names[0], "sp|P1|ONE first protein") && !strcmp(s->names[1], "two"));
        json_t *r0 = json_loads(s->requests[0], 0, NULL);
        CHECK(r0 && json_integer_value(json_object_get(r0, "layer")) == -1);
        tk_request *x = NULL;
        CHECK(tk_parse(TK_EMBED, s->requests[0], strlen(s->requests[0]), &LIM, SHA, &x, &e) == 0 && x &&
              x->seq->len[0] == 8);
        tk_free(x);
        json_decref(r0);
        CHECK(strlen(s->id) == 64 && !strcmp(s->params, "{\"layer\":-1}"));
    }
    bt_submission *sb = NULL;   /* the same text after a UTF-8 byte-order mark: the same job */
    char bom[200];
    snprintf(bom, sizeof bom, "\xEF\xBB\xBF%s", fa);
    json_t *qb = json_pack("{s:s, s:s}", "task", "embed", "layer", "-1");
    CHECK(bt_parse_fasta(bom, strlen(bom), "embed", qb, &bl, SHA, &sb, &e) == 0 && sb && s && !strcmp(sb->id, s->id) &&
          !strcmp(sb->names[0], "sp|P1|ONE first protein"));
    bt_free(sb);
    json_decref(qb);
    bt_submission *s2 = NULL;   /* same sequences and names as JSON items: same job id */
    const char *js = "{\"task\": \"embed\", \"params\": {\"layer\": -1}, \"items\": [{\"name\": \"sp|P1|ONE first protein\","
                     " \"sequence\": \"MKTAYIAK\"}, {\"name\": \"two\", \"sequence\": \"gssg\"}]}";
    CHECK(bt_parse_json(js, strlen(js), &bl, SHA, &s2, &e) == 0);
    CHECK(s && s2 && !strcmp(s->id, s2->id));
    bt_free(s2);
    s2 = NULL;                  /* another name or parameter: another job */
    const char *js2 = "{\"task\": \"embed\", \"params\": {\"layer\": 0}, \"items\": [{\"name\": \"sp|P1|ONE first protein\","
                      " \"sequence\": \"MKTAYIAK\"}, {\"name\": \"two\", \"sequence\": \"gssg\"}]}";
    CHECK(bt_parse_json(js2, strlen(js2), &bl, SHA, &s2, &e) == 0 && s && s2 && strcmp(s->id, s2->id));
    bt_free(s2);
    bt_free(s);
    json_decref(q);
    /* score items with their own mutations */
    s = NULL;
    const char *js3 = "{\"task\": \"score\", \"params\": {\"mutations\": [\"A4G\"]}, \"items\": [\"MKTAYIAK\", "
                      "{\"sequence\": \"MKTGYIAK\", \"mutations\": [\"G4A\"]}]}";
    CHECK(bt_parse_json(js3, strlen(js3), &bl, SHA, &s, &e) == 0 && s && s->n == 2 && strstr(s->requests[1], "G4A"));
    bt_free(s);
    /* errors name the sequence */
    struct { const char *body; int status; const char *type; long item; } bad_jobs[] = {
        {"{\"task\": \"embed\", \"sequences\": [\"MKT\", \"MK1\"]}", 422, "invalid_residue", 1},
        {"{\"task\": \"score\", \"params\": {\"mutations\": [\"A4G\"]}, \"sequences\": [\"MKTAYIAK\", \"MKTG\"]}", 422,
         "wild_type_mismatch", 1},
        {"{\"task\": \"embed\", \"sequences\": [\"MKT\", \"  \"]}", 422, "empty_sequence", 1},
        {"{\"task\": \"embed\", \"sequences\": [\"A\", \"A\", \"A\", \"A\"]}", 413, "too_many_sequences", -1},
        {"{\"task\": \"embed\", \"sequences\": []}", 422, "empty_batch", -1},
        {"{\"task\": \"fold\", \"sequences\": [\"A\"]}", 422, "invalid_task", -1},
        {"{\"sequences\": [\"A\"]}", 400, "invalid_request", -1},
        {"{\"task\": \"embed\", \"sequences\": [\"A\"], \"fasta\": \">a\\nA\"}", 400, "invalid_request", -1},
        {"{\"task\": \"embed\", \"params\": {\"top_k\": 3}, \"sequences\": [\"A\"]}", 400, "unknown_field", -1},
        {"{\"task\": \"embed\", \"params\": {\"sequence\": \"A\"}, \"sequences\": [\"A\"]}", 400, "unknown_field", -1},
        {"{\"task\": \"embed\", \"items\": [{\"sequence\": \"A\", \"mutations\": []}]}", 400, "unknown_field", -1},
        {"{\"task\": \"embed\", \"fasta\": \"MKT\\n>a\\nA\"}", 422, "invalid_fasta", -1},
        {"{\"task\": \"embed\", \"fasta\": \">a\\n>b\\nMKT\"}", 422, "empty_sequence", 0},
    };
    for (size_t i = 0; i < sizeof bad_jobs / sizeof bad_jobs[0]; i++) {
        s = NULL;
        e.details = NULL;
        int rc = bt_parse_json(bad_jobs[i].body, strlen(bad_jobs[i].body), &bl, SHA, &s, &e);
        CHECKF(rc == -1 && e.status == bad_jobs[i].status && !strcmp(e.type, bad_jobs[i].type), "%s -> %d %s (%s)",
               bad_jobs[i].body, rc ? e.status : 200, rc ? e.type : "ok", rc ? e.msg : "");
        if (rc == -1 && bad_jobs[i].item >= 0)
            CHECKF(json_integer_value(json_object_get(e.details, "item_index")) == bad_jobs[i].item &&
                   strstr(e.msg, "sequence "), "%s names item %ld: %s", bad_jobs[i].body, bad_jobs[i].item, e.msg);
        bt_free(s);
        json_decref(e.details);
    }
    s = NULL;
    q = json_pack("{s:s, s:s}", "task", "score", "top_k", "3");
    e.details = NULL;
    CHECK(bt_parse_fasta(">a\nMKT\n", 8, "score", q, &bl, SHA, &s, &e) == -1 && !strcmp(e.type, "unknown_field"));
    json_decref(e.details);
    json_decref(q);
    e.details = NULL;
    CHECK(bt_parse_fasta(">a\nMKT\n", 8, NULL, NULL, &bl, SHA, &s, &e) == -1 && e.status == 400);
    q = json_pack("{s:s, s:s, s:s}", "mutations", "K2R:T3A;M1A", "method", "wt-marginals", "offset", "1");
    CHECK(bt_parse_fasta(">a\nMKTAYIAK\n", 12, "score", q, &bl, SHA, &s, &e) == 0 && s && strstr(s->requests[0], "M1A"));
    bt_free(s);
    json_decref(q);

    /* ---- JSON Lines records ---------------------------------------------------------------------- */
    ut_buf b = {0};
    bt_result_line(&b, 3, "a \"b\"", 200, "{\"x\":1}", 7);
    bt_result_line(&b, 4, "c", 422, "{\"error\":\"bad\",\"error_type\":\"invalid_residue\"}", 46);
    CHECK(b.s && !strcmp(b.s, "{\"index\":3,\"name\":\"a \\\"b\\\"\",\"status\":200,\"result\":{\"x\":1}}\n"
                              "{\"index\":4,\"name\":\"c\",\"status\":422,\"error\":\"bad\",\"error_type\":"
                              "\"invalid_residue\"}\n"));
    free(b.s);
    return TEST_DONE();
}
