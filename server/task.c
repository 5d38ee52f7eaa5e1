/* task.c - predict/score/embed/logits requests, model inputs and responses (see task.h). */
#include "task.h"
#include "gemm.h"
#include "tokenizer.h"
#include "util.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define set_err pr_set_error

static const char *const kind_names[TK_N_KINDS] = {"predict", "score", "embed", "logits"};
static const char *const method_names[] = {"masked-marginals", "wt-marginals", "pseudo-likelihood"};
static const char RESIDUES[] = "ACDEFGHIKLMNPQRSTVWY";

/* Returns the kind's name. */
const char *tk_kind_name(tk_kind k) { return (unsigned)k < TK_N_KINDS ? kind_names[k] : "?"; }

/* Parses a kind name. */
int tk_kind_parse(const char *s, tk_kind *k) {
    for (int i = 0; i < TK_N_KINDS; i++)
        if (s && !strcmp(s, kind_names[i])) {
            *k = (tk_kind)i;
            return 0;
        }
    return -1;
}

/* Returns the method's name. */
const char *tk_method_name(tk_method m) { return (unsigned)m < 3 ? method_names[m] : "?"; }

/* Frees a request. */
void tk_free(tk_request *r) {
    if (!r) return;
    pr_free(r->seq);
    free(r->canonical);
    for (int i = 0; i < r->n_mutants; i++) {
        free(r->mutants[i].text);
        free(r->mutants[i].sites);
    }
    free(r->mutants);
    free(r->positions);
    if (r->out)
        for (int k = 0; k < r->n_inputs; k++) free(r->out[k]);
    free(r->out);
    free(r->have);
    free(r);
}

/* ---- mutations ------------------------------------------------------------------------------------ */

/* Returns the output class (0..19) of a one-letter standard residue, or -1. */
static int res_class(int ch) {
    int id = tok_residue_id(ch);
    return id >= 0 && tok_is_standard(id) ? id - TOK_RES0 : -1;
}

/* Orders sites by index. */
static int site_cmp(const void *a, const void *b) {
    const tk_site *x = a, *y = b;
    return (x->index > y->index) - (x->index < y->index);
}

/* Copies text for messages: printable ASCII only, at most 40 bytes. */
static void clip(const char *s, char *out, size_t cap) {
    size_t k = 0;
    for (; *s && k + 1 < cap && k < 40; s++) out[k++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    if (*s && k + 4 < cap) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/* Writes m->text, the normalised form of m's sorted sites (A24G:K30R, positions counted from offset).
 * Returns 0, or -1 with e (out of memory; m->sites freed). */
static int mutant_text(tk_mutant *m, long offset, pr_error *e) {
    ut_buf b = {0};
    for (int s = 0; s < m->n_sites; s++)
        ut_printf(&b, "%s%c%lld%c", s ? ":" : "", RESIDUES[m->sites[s].wt], (long long)m->sites[s].index + offset,
                  RESIDUES[m->sites[s].mt]);
    if (b.oom || !b.s) {
        free(b.s);
        free(m->sites);
        m->sites = NULL;
        return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    }
    m->text = b.s;
    return 0;
}

/* Parses one mutant. */
int tk_parse_mutant(const char *text, const int32_t *wt, size_t n, long offset, int index, tk_mutant *m,
                    pr_error *e) {
    char shown[64];
    clip(text, shown, sizeof shown);
    memset(m, 0, sizeof *m);
    size_t tl = strlen(text);
    int cap = 1;
    for (size_t i = 0; i < tl; i++) cap += text[i] == ':';
    m->sites = calloc((size_t)cap, sizeof *m->sites);
    if (!m->sites) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        int w = res_class((unsigned char)*p);
        const char *q = p + (*p ? 1 : 0);
        long long pos = 0;
        int digits = 0, neg = 0;
        if (*q == '-' && isdigit((unsigned char)q[1])) neg = 1, q++;   /* A-3G: numbering below 1 (offset < 1) */
        while (isdigit((unsigned char)*q) && digits < 12) pos = pos * 10 + (*q++ - '0'), digits++;
        if (neg) pos = -pos;
        int mt = res_class((unsigned char)*q);
        const char *r = q + (*q ? 1 : 0);
        while (*r == ' ' || *r == '\t') r++;
        if (w < 0 || !digits || mt < 0 || (*r && *r != ':')) {
            free(m->sites);
            m->sites = NULL;
            set_err(e, 422, "invalid_mutation", "mutations[%d] '%s' is not a mutation like A24G or K30R:D31N "
                    "(wild-type residue, position, mutant residue; residues from %s; sites joined by ':')", index,
                    shown, RESIDUES);
            e->details = json_pack("{s:s, s:i}", "mutation", shown, "mutation_index", index);
            return -1;
        }
        long long idx = pos - offset;
        if (idx < 0 || idx >= (long long)n) {
            free(m->sites);
            m->sites = NULL;
            set_err(e, 422, "invalid_mutation_position", "mutations[%d] '%s': position %lld is outside the sequence "
                    "(%ld..%lld with offset %ld)", index, shown, pos, offset, (long long)n - 1 + offset, offset);
            e->details = json_pack("{s:s, s:i, s:I, s:I, s:I}", "mutation", shown, "mutation_index", index, "position",
                                   (json_int_t)pos, "min", (json_int_t)offset,
                                   "max", (json_int_t)((long long)n - 1 + offset));
            return -1;
        }
        int have = wt[idx];
        if (have != TOK_RES0 + w) {
            char seqres[8];
            snprintf(seqres, sizeof seqres, "%s", tok_name(have));
            free(m->sites);
            m->sites = NULL;
            set_err(e, 422, "wild_type_mismatch", "mutations[%d] '%s': the sequence has %s at position %lld, not %c "
                    "(check the offset, now %ld)", index, shown, seqres, pos, RESIDUES[w], offset);
            e->details = json_pack("{s:s, s:i, s:I, s:s, s:s}", "mutation", shown, "mutation_index", index, "position",
                                   (json_int_t)pos, "expected", seqres, "given", (char[]){RESIDUES[w], 0});
            return -1;
        }
        for (int s = 0; s < m->n_sites; s++)
            if (m->sites[s].index == (int)idx) {
                free(m->sites);
                m->sites = NULL;
                set_err(e, 422, "invalid_mutation", "mutations[%d] '%s': position %lld appears twice", index, shown,
                        pos);
                e->details = json_pack("{s:s, s:i, s:I}", "mutation", shown, "mutation_index", index, "position",
                                       (json_int_t)pos);
                return -1;
            }
        m->sites[m->n_sites++] = (tk_site){(int)idx, w, mt};
        if (!*r) break;
        p = r + 1;
    }
    qsort(m->sites, (size_t)m->n_sites, sizeof *m->sites, site_cmp);
    return mutant_text(m, offset, e);
}

/* ---- parsing -------------------------------------------------------------------------------------- */

/* Returns a new request of kind with TK_NO_HIDDEN. */
static tk_request *req_new(tk_kind kind) {
    tk_request *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->kind = kind;
    r->hidden_layer = TK_NO_HIDDEN;
    return r;
}

/* Returns the canonical sequences array of r->seq (new reference). */
static json_t *seq_array(const pr_request *p) {
    json_t *a = json_array();
    for (int s = 0; s < p->n; s++) {
        char *t = pr_render(p->input[s], p->len[s]);
        json_array_append_new(a, t ? json_string(t) : json_null());
        free(t);
    }
    return a;
}

/* Sets r->canonical (steals o) and r->id. Returns 0 or -1 with *e. */
static int finish_id(tk_request *r, json_t *o, const char *model_sha256, pr_error *e) {
    if (o) {
        json_object_set_new(o, "task", json_string(tk_kind_name(r->kind)));
        json_object_set_new(o, "v", json_integer(TK_VERSION));
        r->canonical = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
    }
    if (!r->canonical || pr_make_id(model_sha256, r->canonical, r->id))
        return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    return 0;
}

/* Allocates the per-input output slots. Returns 0 or -1 with *e. */
static int alloc_outputs(tk_request *r, pr_error *e) {
    r->out = calloc((size_t)(r->n_inputs > 0 ? r->n_inputs : 1), sizeof *r->out);
    r->have = calloc((size_t)(r->n_inputs > 0 ? r->n_inputs : 1), 1);
    if (!r->out || !r->have) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    r->input_tokens = 0;
    for (int k = 0; k < r->n_inputs; k++) r->input_tokens += (long long)tk_input_len(r, k) + 2;
    return 0;
}

/* Checks that an optional integer field lies in lo..hi; *v keeps its default when absent. */
static int int_field(json_t *root, const char *name, long long lo, long long hi, const char *type422, long *v,
                     pr_error *e) {
    json_t *x = json_object_get(root, name);
    if (!x) return 0;
    long long i;
    if (!ut_json_int(x, &i)) return set_err(e, 400, "invalid_type", "\"%s\" must be an integer", name);
    if (i < lo || i > hi) {
        set_err(e, 422, type422, "\"%s\" must be from %lld to %lld", name, lo, hi);
        e->details = json_pack("{s:I, s:I}", "min", (json_int_t)lo, "max", (json_int_t)hi);
        return -1;
    }
    *v = (long)i;
    return 0;
}

/* POST /score. */
static int parse_score(tk_request *r, json_t *root, const tk_limits *lim, json_t **canon, pr_error *e) {
    static const char *const fields[] = {"sequence", "mutations", "method", "offset", "format", NULL};
    if (pr_check_fields(root, fields, e)) return -1;
    if (!json_object_get(root, "sequence"))
        return set_err(e, 400, "invalid_request", "missing \"sequence\" (the wild-type sequence, a string)");
    json_t *muts = json_object_get(root, "mutations"), *meth = json_object_get(root, "method"), *v;
    json_t *fmt = json_object_get(root, "format");
    if (!muts) return set_err(e, 400, "invalid_request", "missing \"mutations\" (an array like [\"A24G\", \"K30R:D31N\"],"
                              " or \"all\")");
    const int all = json_is_string(muts) && !strcmp(json_string_value(muts), "all");
    if (!all && !json_is_array(muts))
        return set_err(e, 400, "invalid_type", "\"mutations\" must be an array of strings, or \"all\" (every single"
                       " substitution)");
    size_t i;
    json_array_foreach(muts, i, v) {
        if (!json_is_string(v)) return set_err(e, 400, "invalid_type", "\"mutations\"[%zu] must be a string", i);
    }
    r->method = TK_MASKED_MARGINALS;
    if (meth) {
        if (!json_is_string(meth)) return set_err(e, 400, "invalid_type", "\"method\" must be a string");
        int found = 0;
        for (int m = 0; m < 3; m++)
            if (!strcmp(json_string_value(meth), method_names[m])) {
                r->method = (tk_method)m;
                found = 1;
            }
        if (!found) {
            char shown[64];
            clip(json_string_value(meth), shown, sizeof shown);
            set_err(e, 422, "invalid_method", "unknown method '%s' (use masked-marginals, wt-marginals or "
                    "pseudo-likelihood)", shown);
            e->details = json_pack("{s:[s,s,s]}", "allowed", method_names[0], method_names[1], method_names[2]);
            return -1;
        }
    }
    if (fmt) {
        if (!json_is_string(fmt)) return set_err(e, 400, "invalid_type", "\"format\" must be a string");
        const char *f = json_string_value(fmt);
        if (!strcmp(f, "matrix")) {
            r->matrix = 1;
        } else if (strcmp(f, "list")) {
            char shown[64];
            clip(f, shown, sizeof shown);
            set_err(e, 422, "invalid_format", "unknown format '%s' (use list, the default: one entry per mutant with "
                    "its sites; or matrix: a length x 20 table of single-substitution scores)", shown);
            e->details = json_pack("{s:[s,s]}", "allowed", "list", "matrix");
            return -1;
        }
    }
    r->offset = 1;
    if (int_field(root, "offset", -1000000000LL, 1000000000LL, "invalid_offset", &r->offset, e)) return -1;
    pr_limits pl = {lim->max_length, 1};
    r->seq = pr_parse_sequences(root, &pl, e);
    if (!r->seq) return -1;
    size_t n = r->seq->len[0];
    const int32_t *wt = r->seq->input[0];
    for (size_t k = 0; k < n; k++)
        if (wt[k] == TOK_MASK) {
            set_err(e, 422, "invalid_residue", "<mask> at position %zu of sequence: scoring needs the complete "
                    "wild-type sequence", k + 1);
            e->details = json_pack("{s:s, s:I, s:i}", "character", "<mask>", "position", (json_int_t)k + 1,
                                   "sequence_index", 0);
            return -1;
        }
    size_t ns = 0;   /* "all": the standard residues, each substituted by the 19 others */
    for (size_t k = 0; all && k < n; k++) ns += tok_is_standard(wt[k]) != 0;
    size_t nm = all ? 19 * ns : json_array_size(muts);
    if (nm == 0)
        return set_err(e, 422, "invalid_mutation", all ? "\"mutations\": \"all\" needs a standard residue to substitute"
                       : "\"mutations\" is empty (give at least one, e.g. \"A24G\")");
    if (all && nm > TK_MAX_MUTANTS) {
        set_err(e, 413, "too_many_mutations", "\"mutations\": \"all\" is %zu single substitutions (19 per standard"
                " residue); the limit is %d per request or job item (%d residues): list the positions' substitutions"
                " instead, or split the sequence", nm, TK_MAX_MUTANTS, TK_MAX_MUTANTS / 19);
        e->details = json_pack("{s:I, s:i}", "mutations", (json_int_t)nm, "limit", TK_MAX_MUTANTS);
        return -1;
    }
    if (nm > TK_MAX_MUTANTS) {
        set_err(e, 413, "too_many_mutations", "%zu mutations; the limit is %d per request or job item (split them "
                "over several, e.g. items of one POST /jobs with their own \"mutations\")",
                nm, TK_MAX_MUTANTS);
        e->details = json_pack("{s:I, s:i}", "mutations", (json_int_t)nm, "limit", TK_MAX_MUTANTS);
        return -1;
    }
    r->mutants = calloc(nm, sizeof *r->mutants);
    if (!r->mutants) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    for (size_t k = 0; all && k < n; k++) {   /* position by position, mutant residues in RESIDUES order */
        if (!tok_is_standard(wt[k])) continue;
        const int w = wt[k] - TOK_RES0;
        for (int a = 0; a < TOK_NRES; a++) {
            if (a == w) continue;
            tk_mutant *m = &r->mutants[r->n_mutants];
            m->sites = malloc(sizeof *m->sites);
            if (!m->sites) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
            m->sites[0] = (tk_site){(int)k, w, a};
            m->n_sites = 1;
            if (mutant_text(m, r->offset, e)) return -1;
            r->n_mutants++;
        }
    }
    for (i = 0; !all && i < nm; i++) {
        if (tk_parse_mutant(json_string_value(json_array_get(muts, i)), wt, n, r->offset, (int)i, &r->mutants[i], e))
            return -1;
        r->n_mutants++;
    }
    for (int m = 0; r->matrix && m < r->n_mutants; m++)
        if (r->mutants[m].n_sites != 1) {
            set_err(e, 422, "invalid_format", "\"format\": \"matrix\" holds single substitutions; mutations[%d] '%s' "
                    "has %d sites (use the list format)", m, r->mutants[m].text, r->mutants[m].n_sites);
            e->details = json_pack("{s:s, s:i}", "mutation", r->mutants[m].text, "mutation_index", m);
            return -1;
        }
    /* duplicates (the same set of substitutions, in any order or case) */
    if (!all) {
        json_t *seen = json_object();
        for (int m = 0; m < r->n_mutants; m++) {
            json_t *prev = json_object_get(seen, r->mutants[m].text);
            if (prev) {
                int first = (int)json_integer_value(prev);
                set_err(e, 422, "duplicate_mutation", "mutations[%d] '%s' repeats mutations[%d]", m,
                        r->mutants[m].text, first);
                e->details = json_pack("{s:s, s:i, s:i}", "mutation", r->mutants[m].text, "mutation_index", m,
                                       "first_index", first);
                json_decref(seen);
                return -1;
            }
            json_object_set_new(seen, r->mutants[m].text, json_integer(m));
        }
        json_decref(seen);
    }
    /* the model inputs */
    if (r->method == TK_WT_MARGINALS) {
        r->n_inputs = 1;
    } else if (r->method == TK_MASKED_MARGINALS) {
        unsigned char *mark = calloc(n, 1);
        if (!mark) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
        int np = 0;
        for (int m = 0; m < r->n_mutants; m++)
            for (int s = 0; s < r->mutants[m].n_sites; s++)
                if (!mark[r->mutants[m].sites[s].index]) {
                    mark[r->mutants[m].sites[s].index] = 1;
                    np++;
                }
        r->positions = malloc((size_t)np * sizeof *r->positions);
        if (!r->positions) {
            free(mark);
            return set_err(e, 503, "out_of_memory", "out of memory; retry later");
        }
        for (size_t k = 0; k < n; k++)
            if (mark[k]) r->positions[r->n_positions++] = (int)k;
        free(mark);
        r->n_inputs = r->n_positions;
    } else {
        if ((long)n > lim->max_pll_length) {
            set_err(e, 413, "sequence_too_long", "pseudo-likelihood runs one masked copy per residue: the sequence "
                    "has %zu residues; the limit is %ld for this method (--max-pll-length); use masked-marginals "
                    "or wt-marginals", n, lim->max_pll_length);
            e->details = json_pack("{s:I, s:I, s:s}", "length", (json_int_t)n, "limit",
                                   (json_int_t)lim->max_pll_length, "method", "pseudo-likelihood");
            return -1;
        }
        r->positions = malloc(n * sizeof *r->positions);
        if (!r->positions) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
        for (size_t k = 0; k < n; k++)
            if (tok_is_standard(wt[k])) r->positions[r->n_positions++] = (int)k;
        long long inputs = (long long)(r->n_mutants + 1) * r->n_positions;
        if (inputs > INT_MAX / 2) inputs = INT_MAX / 2;
        r->n_inputs = (int)inputs;
    }
    long long tokens = (long long)r->n_inputs * (long long)(n + 2);
    if (tokens > lim->max_score_tokens) {
        set_err(e, 413, "score_too_large", "%s needs %d model passes of %zu tokens (%lld tokens); the limit is %ld "
                "per request (--max-score-tokens): score fewer mutants%s", method_names[r->method], r->n_inputs,
                n + 2, tokens, lim->max_score_tokens,
                r->method == TK_PSEUDO_LIKELIHOOD ? ", or use masked-marginals" : " or positions, or split them over several requests (items of one POST /jobs)");
        e->details = json_pack("{s:I, s:I}", "tokens", (json_int_t)tokens, "limit", (json_int_t)lim->max_score_tokens);
        return -1;
    }
    json_t *ml = all ? json_string("all") : json_array();   /* "all" stays "all" in the id */
    for (int m = 0; !all && m < r->n_mutants; m++) json_array_append_new(ml, json_string(r->mutants[m].text));
    json_t *seqs = seq_array(r->seq);
    *canon = json_pack("{s:O, s:o, s:s, s:I}", "sequence", json_array_get(seqs, 0), "mutations", ml, "method",
                       method_names[r->method], "offset", (json_int_t)r->offset);
    json_decref(seqs);
    if (*canon && r->matrix)   /* only then: the list format's ids stay those of requests without "format" */
        json_object_set_new(*canon, "format", json_string("matrix"));
    return *canon ? 0 : set_err(e, 503, "out_of_memory", "out of memory; retry later");
}

/* POST /embed. */
static int parse_embed(tk_request *r, json_t *root, const tk_limits *lim, json_t **canon, pr_error *e) {
    static const char *const fields[] = {"sequence", "sequences", "layer", "representations", NULL};
    if (pr_check_fields(root, fields, e)) return -1;
    long layer = -1;
    if (int_field(root, "layer", -1, lim->n_layers, "invalid_layer", &layer, e)) {
        if (e->status == 422)
            snprintf(e->msg, sizeof e->msg, "\"layer\" must be from -1 to %d (-1 = the final output, 0 = the input "
                     "embeddings, k = after block k)", lim->n_layers);
        return -1;
    }
    r->layer = (int)layer;
    r->hidden_layer = r->layer;
    json_t *reps = json_object_get(root, "representations"), *v;
    if (!reps) {
        r->want_mean = 1;
    } else {
        if (!json_is_array(reps))
            return set_err(e, 400, "invalid_type", "\"representations\" must be an array of strings");
        size_t i;
        json_array_foreach(reps, i, v) {
            const char *s = json_string_value(v);
            if (!s) return set_err(e, 400, "invalid_type", "\"representations\"[%zu] must be a string", i);
            if (!strcmp(s, "mean")) r->want_mean = 1;
            else if (!strcmp(s, "per_residue")) r->want_per_residue = 1;
            else if (!strcmp(s, "cls")) r->want_cls = 1;
            else {
                char shown[64];
                clip(s, shown, sizeof shown);
                set_err(e, 422, "invalid_representation", "unknown representation '%s' (use mean, per_residue, cls)",
                        shown);
                e->details = json_pack("{s:[s,s,s]}", "allowed", "mean", "per_residue", "cls");
                return -1;
            }
        }
        if (!r->want_mean && !r->want_per_residue && !r->want_cls)
            return set_err(e, 422, "invalid_representation", "\"representations\" is empty (use mean, per_residue, "
                           "cls)");
    }
    pr_limits pl = {lim->max_length, lim->max_batch};
    r->seq = pr_parse_sequences(root, &pl, e);
    if (!r->seq) return -1;
    long long numbers = 0;
    for (int s = 0; s < r->seq->n; s++)
        numbers += (long long)lim->d_model *
                   (r->want_mean + r->want_cls + (r->want_per_residue ? (long long)r->seq->len[s] : 0));
    if (numbers > TK_MAX_NUMBERS) {
        set_err(e, 413, "response_too_large", "the response would hold %lld numbers; the limit is %d (send fewer "
                "or shorter sequences, or ask for mean instead of per_residue)", numbers, TK_MAX_NUMBERS);
        e->details = json_pack("{s:I, s:i}", "numbers", (json_int_t)numbers, "limit", TK_MAX_NUMBERS);
        return -1;
    }
    r->n_inputs = r->seq->n;
    json_t *rl = json_array();
    if (r->want_cls) json_array_append_new(rl, json_string("cls"));
    if (r->want_mean) json_array_append_new(rl, json_string("mean"));
    if (r->want_per_residue) json_array_append_new(rl, json_string("per_residue"));
    *canon = json_pack("{s:o, s:i, s:o}", "sequences", seq_array(r->seq), "layer", r->layer, "representations", rl);
    return *canon ? 0 : set_err(e, 503, "out_of_memory", "out of memory; retry later");
}

/* POST /logits. */
static int parse_logits(tk_request *r, json_t *root, const tk_limits *lim, json_t **canon, pr_error *e) {
    static const char *const fields[] = {"sequence", "sequences", NULL};
    if (pr_check_fields(root, fields, e)) return -1;
    pr_limits pl = {lim->max_length, lim->max_batch};
    r->seq = pr_parse_sequences(root, &pl, e);
    if (!r->seq) return -1;
    long long numbers = (long long)r->seq->residues * TOK_NRES;
    if (numbers > TK_MAX_NUMBERS) {
        set_err(e, 413, "response_too_large", "the response would hold %lld numbers (residues x 20); the limit is %d "
                "(send fewer or shorter sequences)", numbers, TK_MAX_NUMBERS);
        e->details = json_pack("{s:I, s:i}", "numbers", (json_int_t)numbers, "limit", TK_MAX_NUMBERS);
        return -1;
    }
    r->n_inputs = r->seq->n;
    *canon = json_pack("{s:o}", "sequences", seq_array(r->seq));
    return *canon ? 0 : set_err(e, 503, "out_of_memory", "out of memory; retry later");
}

/* Validates a parsed JSON object. */
int tk_from_json(tk_kind kind, json_t *root, const tk_limits *lim, const char *model_sha256, tk_request **out,
                 pr_error *e) {
    *out = NULL;
    e->details = NULL;
    e->status = 0;
    tk_request *r = req_new(kind);
    if (!r) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    json_t *canon = NULL;
    int rc;
    if (kind == TK_PREDICT) {
        /* exactly POST /predict: its own validation, canonical form and id */
        char *body = json_dumps(root, JSON_COMPACT);
        pr_limits pl = {lim->max_length, lim->max_batch};
        rc = body ? pr_parse(body, strlen(body), &pl, model_sha256, &r->seq, e)
                  : set_err(e, 503, "out_of_memory", "out of memory; retry later");
        free(body);
        if (!rc) {
            r->n_inputs = r->seq->n;
            memcpy(r->id, r->seq->id, sizeof r->id);
            r->canonical = strdup(r->seq->canonical);
        }
    } else if (!json_is_object(root)) {
        rc = set_err(e, 400, "invalid_type", "the request body must be a JSON object");
    } else if (kind == TK_SCORE) {
        rc = parse_score(r, root, lim, &canon, e);
    } else if (kind == TK_EMBED) {
        rc = parse_embed(r, root, lim, &canon, e);
    } else {
        rc = parse_logits(r, root, lim, &canon, e);
    }
    if (!rc && kind != TK_PREDICT) rc = finish_id(r, canon, model_sha256, e);
    else json_decref(canon);
    if (!rc) rc = alloc_outputs(r, e);
    if (rc) {
        tk_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

/* Validates a JSON body. */
int tk_parse(tk_kind kind, const char *body, size_t len, const tk_limits *lim, const char *model_sha256,
             tk_request **out, pr_error *e) {
    *out = NULL;
    if (kind == TK_PREDICT) {
        /* keep POST /predict byte-for-byte what it was (parse errors included) */
        tk_request *r = req_new(kind);
        if (!r) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
        pr_limits pl = {lim->max_length, lim->max_batch};
        if (pr_parse(body, len, &pl, model_sha256, &r->seq, e)) {
            tk_free(r);
            return -1;
        }
        r->n_inputs = r->seq->n;
        memcpy(r->id, r->seq->id, sizeof r->id);
        r->canonical = strdup(r->seq->canonical);
        if (!r->canonical || alloc_outputs(r, e)) {
            tk_free(r);
            return set_err(e, 503, "out_of_memory", "out of memory; retry later");
        }
        *out = r;
        return 0;
    }
    json_t *root = NULL;
    if (pr_load_object(body, len, &root, e)) return -1;
    int rc = tk_from_json(kind, root, lim, model_sha256, out, e);
    json_decref(root);
    return rc;
}

/* ---- model inputs and outputs --------------------------------------------------------------------- */

/* Returns the residue count of input k. */
size_t tk_input_len(const tk_request *r, int k) {
    return r->kind == TK_SCORE ? r->seq->len[0] : r->seq->len[k];
}

/* Writes the ids of input k. */
void tk_input(const tk_request *r, int k, int32_t *out) {
    if (r->kind != TK_SCORE) {
        memcpy(out, r->seq->ids[k], r->seq->len[k] * sizeof *out);
        return;
    }
    size_t n = r->seq->len[0];
    memcpy(out, r->seq->input[0], n * sizeof *out);
    if (r->method == TK_WT_MARGINALS) return;
    if (r->method == TK_MASKED_MARGINALS) {
        out[r->positions[k]] = TOK_MASK;
        return;
    }
    int v = k / r->n_positions, j = k % r->n_positions;   /* variant 0 = wild type, v = mutants[v - 1] */
    if (v > 0) {
        const tk_mutant *m = &r->mutants[v - 1];
        for (int s = 0; s < m->n_sites; s++) out[m->sites[s].index] = TOK_RES0 + m->sites[s].mt;
    }
    out[r->positions[j]] = TOK_MASK;
}

/* Takes the outputs of input k. */
int tk_consume(tk_request *r, int k, const float *logp, const float *hidden, int d) {
    size_t n = tk_input_len(r, k), want;
    const float *src = NULL;
    if (k < 0 || k >= r->n_inputs) return -1;
    if (r->kind == TK_PREDICT) {
        want = (n + 2) * TOK_NRES;
        src = logp;
    } else if (r->kind == TK_LOGITS) {
        want = n * TOK_NRES;
        src = logp + TOK_NRES;
    } else if (r->kind == TK_SCORE) {
        if (r->method == TK_WT_MARGINALS) {
            want = (n + 2) * TOK_NRES;
            src = logp;
        } else {
            int pos = r->positions[r->method == TK_MASKED_MARGINALS ? k : k % r->n_positions];
            want = TOK_NRES;
            src = logp + (size_t)(pos + 1) * TOK_NRES;
        }
    } else {
        if (!hidden || d < 1) return -1;
        r->d = d;
        want = (size_t)d * (2 + (r->want_per_residue ? n : 0));
    }
    float *dst = r->out[k];
    if (!dst) {
        dst = malloc(want * sizeof *dst);
        if (!dst) return -1;
        r->out[k] = dst;
    }
    if (src) {
        memcpy(dst, src, want * sizeof *dst);
    } else {                                   /* embed: [mean d][cls d][per_residue n x d] */
        for (int c = 0; c < d; c++) dst[c] = 0;
        for (size_t i = 1; i <= n; i++) {
            const float *h = hidden + i * (size_t)d;
            for (int c = 0; c < d; c++) dst[c] += h[c];
        }
        for (int c = 0; c < d; c++) dst[c] /= (float)n;
        memcpy(dst + d, hidden, (size_t)d * sizeof *dst);
        if (r->want_per_residue) memcpy(dst + 2 * (size_t)d, hidden + d, n * (size_t)d * sizeof *dst);
    }
    r->have[k] = 1;
    return 0;
}

/* Returns 1 when all inputs are consumed. */
int tk_complete(const tk_request *r) {
    for (int k = 0; k < r->n_inputs; k++)
        if (!r->have[k]) return 0;
    return 1;
}

/* ---- responses ------------------------------------------------------------------------------------ */

/* Appends a JSON array of n floats. */
static void num_array(ut_buf *b, const float *x, size_t n) {
    ut_put(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) ut_put(b, ",", 1);
        ut_num(b, x[i]);
    }
    ut_put(b, "]", 1);
}

/* Returns the index of positions[] equal to idx (sorted ascending), or -1. */
static int find_pos(const tk_request *r, int idx) {
    int lo = 0, hi = r->n_positions - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (r->positions[mid] == idx) return mid;
        if (r->positions[mid] < idx) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* Returns the pseudo-log-likelihood of variant v (0 = wild type, v = mutants[v - 1]). */
static double pll(const tk_request *r, int v) {
    const int32_t *wt = r->seq->input[0];
    const tk_mutant *m = v > 0 ? &r->mutants[v - 1] : NULL;
    double sum = 0;
    for (int j = 0; j < r->n_positions; j++) {
        int idx = r->positions[j], cls = wt[idx] - TOK_RES0;
        for (int s = 0; m && s < m->n_sites; s++)
            if (m->sites[s].index == idx) cls = m->sites[s].mt;
        sum += r->out[v * r->n_positions + j][cls];
    }
    return sum;
}

/* Sets *dw and *dm to the log-probs of the wild-type and the mutant residue at site s of mutant m. */
static void site_log_probs(const tk_request *r, int m, int s, double *dw, double *dm) {
    const tk_site *st = &r->mutants[m].sites[s];
    const float *lw, *lm;          /* log-probs that give log p(wt) and log p(mt) at the site */
    if (r->method == TK_WT_MARGINALS) {
        lw = lm = r->out[0] + (size_t)(st->index + 1) * TOK_NRES;
    } else if (r->method == TK_MASKED_MARGINALS) {
        lw = lm = r->out[find_pos(r, st->index)];
    } else {
        int j = find_pos(r, st->index);
        lw = r->out[j];
        lm = r->out[(m + 1) * r->n_positions + j];
    }
    *dw = lw[st->wt];
    *dm = lm[st->mt];
}

/* Returns the score of mutant m: the sum of its sites' deltas, or PLL(mutant) - wt_pll. */
static double mutant_score(const tk_request *r, int m, double wt_pll) {
    if (r->method == TK_PSEUDO_LIKELIHOOD) return pll(r, m + 1) - wt_pll;
    double total = 0, dw, dm;
    for (int s = 0; s < r->mutants[m].n_sites; s++) {
        site_log_probs(r, m, s, &dw, &dm);
        total += dm - dw;
    }
    return total;
}

/* Appends "wt" and "matrix": one row per residue, the 20 residues' scores in RESIDUES order (0 at
 * the wild type, null where not scored); null rows at non-standard residues. */
static void score_matrix(ut_buf *b, const tk_request *r, double wt_pll) {
    const size_t n = r->seq->len[0];
    const int32_t *wt = r->seq->input[0];
    double *t = malloc(n * TOK_NRES * sizeof *t);
    if (!t) { b->oom = 1; return; }
    for (size_t i = 0; i < n * TOK_NRES; i++) t[i] = NAN;
    for (int m = 0; m < r->n_mutants; m++) {
        const tk_site *st = &r->mutants[m].sites[0];
        t[(size_t)st->index * TOK_NRES + (size_t)st->mt] = mutant_score(r, m, wt_pll);
    }
    ut_printf(b, ",\"alphabet\":\"%.*s\",\"wt\":\"", TOK_NRES, RESIDUES);
    for (size_t k = 0; k < n; k++) ut_str(b, tok_name(wt[k]));   /* one letter each (no <mask> in a wild type) */
    ut_str(b, "\",\"matrix\":[");
    for (size_t k = 0; k < n; k++) {
        if (k) ut_put(b, ",", 1);
        if (!tok_is_standard(wt[k])) { ut_str(b, "null"); continue; }
        ut_put(b, "[", 1);
        for (int a = 0; a < TOK_NRES; a++) {
            double x = a == wt[k] - TOK_RES0 ? 0.0 : t[k * TOK_NRES + (size_t)a];
            if (a) ut_put(b, ",", 1);
            if (isnan(x)) ut_str(b, "null");
            else ut_num(b, x);
        }
        ut_put(b, "]", 1);
    }
    ut_put(b, "]", 1);
    free(t);
}

/* Appends the score response body after the common head. */
static void score_body(ut_buf *b, const tk_request *r) {
    ut_printf(b, ",\"method\":\"%s\",\"offset\":%ld,\"length\":%zu", method_names[r->method], r->offset,
              r->seq->len[0]);
    double wt_pll = 0;
    if (r->method == TK_PSEUDO_LIKELIHOOD) {
        wt_pll = pll(r, 0);
        ut_str(b, ",\"wild_type\":{\"pll\":");
        ut_num(b, wt_pll);
        ut_str(b, "}");
    }
    if (r->matrix) {
        ut_str(b, ",\"format\":\"matrix\"");
        score_matrix(b, r, wt_pll);
        return;
    }
    ut_str(b, ",\"scores\":[");
    for (int m = 0; m < r->n_mutants; m++) {
        const tk_mutant *mu = &r->mutants[m];
        ut_printf(b, "%s{\"mutant\":\"%s\",\"score\":", m ? "," : "", mu->text);
        if (r->method == TK_PSEUDO_LIKELIHOOD) {   /* its PLL once: the score and the pll field */
            const double p = pll(r, m + 1);
            ut_num(b, p - wt_pll);
            ut_str(b, ",\"pll\":");
            ut_num(b, p);
        } else {
            ut_num(b, mutant_score(r, m, wt_pll));
        }
        ut_str(b, ",\"sites\":[");
        for (int s = 0; s < mu->n_sites; s++) {
            const tk_site *st = &mu->sites[s];
            double dw, dm;
            site_log_probs(r, m, s, &dw, &dm);
            ut_printf(b, "%s{\"position\":%lld,\"wt\":\"%c\",\"mt\":\"%c\",\"wt_log_prob\":", s ? "," : "",
                      (long long)st->index + r->offset, RESIDUES[st->wt], RESIDUES[st->mt]);
            ut_num(b, dw);
            ut_str(b, ",\"mt_log_prob\":");
            ut_num(b, dm);
            ut_str(b, ",\"delta\":");
            ut_num(b, dm - dw);
            ut_str(b, "}");
        }
        ut_str(b, "]}");
    }
    ut_str(b, "]");
}

/* Builds the response. */
char *tk_response(const tk_request *r, json_t *model, size_t *out_len) {
    if (!tk_complete(r)) return NULL;
    if (r->kind == TK_PREDICT) return pr_response(r->seq, model, r->out, out_len);
    ut_buf b = {0};
    if (pr_result_head(&b, r->id, model)) return NULL;
    ut_printf(&b, ",\"cached\":false,\"task\":\"%s\"", tk_kind_name(r->kind));
    if (r->kind == TK_SCORE) {
        score_body(&b, r);
    } else if (r->kind == TK_EMBED) {
        int d = r->d;
        ut_printf(&b, ",\"layer\":%d,\"dim\":%d,\"representations\":[", r->layer, d);
        int first = 1;
        const char *names[3] = {"cls", "mean", "per_residue"};
        int want[3] = {r->want_cls, r->want_mean, r->want_per_residue};
        for (int i = 0; i < 3; i++)
            if (want[i]) {
                ut_printf(&b, "%s\"%s\"", first ? "" : ",", names[i]);
                first = 0;
            }
        ut_str(&b, "],\"results\":[");
        for (int s = 0; s < r->seq->n; s++) {
            const float *o = r->out[s];
            ut_printf(&b, "%s{\"length\":%zu", s ? "," : "", r->seq->len[s]);
            if (r->want_mean) {
                ut_str(&b, ",\"mean\":");
                num_array(&b, o, (size_t)d);
            }
            if (r->want_cls) {
                ut_str(&b, ",\"cls\":");
                num_array(&b, o + d, (size_t)d);
            }
            if (r->want_per_residue) {
                ut_str(&b, ",\"per_residue\":[");
                for (size_t i = 0; i < r->seq->len[s]; i++) {
                    if (i) ut_put(&b, ",", 1);
                    num_array(&b, o + (2 + i) * (size_t)d, (size_t)d);
                }
                ut_str(&b, "]");
            }
            ut_str(&b, "}");
        }
        ut_str(&b, "]");
    } else {
        ut_printf(&b, ",\"alphabet\":\"%s\",\"results\":[", RESIDUES);
        for (int s = 0; s < r->seq->n; s++) {
            ut_printf(&b, "%s{\"length\":%zu,\"tokens\":[", s ? "," : "", r->seq->len[s]);
            for (size_t i = 0; i < r->seq->len[s]; i++)
                ut_printf(&b, "%s\"%s\"", i ? "," : "", tok_name(r->seq->input[s][i]));
            ut_str(&b, "],\"log_probs\":[");
            for (size_t i = 0; i < r->seq->len[s]; i++) {
                if (i) ut_put(&b, ",", 1);
                num_array(&b, r->out[s] + i * TOK_NRES, TOK_NRES);
            }
            ut_str(&b, "]}");
        }
        ut_str(&b, "]");
    }
    ut_str(&b, "}");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    *out_len = b.len;
    return b.s;
}

/* The model object of responses (see task.h). */
json_t *tk_model_ref(const char *name, const char *sha256, int trained) {
    return json_pack("{s:s, s:s, s:b, s:s}", "name", name, "sha256", sha256, "trained", trained,
                     "precision", gm_precision_name(gm_precision()));
}
