/* predict.c - request validation/normalisation, ids and response JSON (see predict.h). */
#include "predict.h"
#include "tokenizer.h"
#include "util.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sets *e (status, type, printf-style message); returns -1. */
int pr_set_error(pr_error *e, int status, const char *type, const char *fmt, ...) {
    va_list ap;
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", type);
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}
#define set_err pr_set_error

/* Allocates an empty request for n sequences. */
static pr_request *req_new(int n) {
    pr_request *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->n = n;
    r->len = calloc((size_t)n, sizeof *r->len);
    r->input = calloc((size_t)n, sizeof *r->input);
    r->ids = calloc((size_t)n, sizeof *r->ids);
    r->masked = calloc((size_t)n, sizeof *r->masked);
    r->n_masked = calloc((size_t)n, sizeof *r->n_masked);
    if (!r->len || !r->input || !r->ids || !r->masked || !r->n_masked) {
        pr_free(r);
        return NULL;
    }
    return r;
}

/* Frees a request. */
void pr_free(pr_request *r) {
    if (!r) return;
    for (int s = 0; s < r->n; s++) {
        if (r->input) free(r->input[s]);
        if (r->ids) free(r->ids[s]);
        if (r->masked) free(r->masked[s]);
    }
    free(r->len);
    free(r->input);
    free(r->ids);
    free(r->masked);
    free(r->n_masked);
    free(r->canonical);
    free(r);
}

/* Returns the framed token count. */
size_t pr_tokens(const pr_request *r) {
    size_t t = 0;
    for (int s = 0; s < r->n; s++) t += r->len[s] + 2;
    return t;
}

/* Renders the character that starts at byte text[at] for error messages and the "character" field:
 * printable ASCII as itself, other ASCII bytes as \xNN, a UTF-8 sequence as U+XXXX; *name is set to
 * a description of the characters that text pasted from documents carries unseen (else ""). */
static void char_repr(const char *text, size_t tlen, size_t at, char out[16], const char **name) {
    *name = "";
    if (!text || at >= tlen) {        /* not about one character */
        out[0] = '\0';
        return;
    }
    const unsigned char *u = (const unsigned char *)text + at;
    size_t left = tlen - at;
    if (u[0] >= 0x20 && u[0] < 0x7f) {
        snprintf(out, 16, "%c", u[0]);
        return;
    }
    unsigned cp = 0, need = u[0] >= 0xF0 && u[0] <= 0xF4 ? 3 : u[0] >= 0xE0 && u[0] <= 0xEF ? 2
                               : u[0] >= 0xC2 && u[0] <= 0xDF ? 1 : 0;
    if (need == 0 || left <= need) {
        snprintf(out, 16, "\\x%02X", u[0]);
        return;
    }
    cp = u[0] & (0x3F >> need);
    for (unsigned k = 1; k <= need; k++) {
        if ((u[k] & 0xC0) != 0x80) {
            snprintf(out, 16, "\\x%02X", u[0]);
            return;
        }
        cp = cp << 6 | (u[k] & 0x3F);
    }
    static const unsigned min_cp[4] = {0, 0x80, 0x800, 0x10000};   /* shortest form of each length */
    if (cp < min_cp[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {   /* not valid UTF-8 */
        snprintf(out, 16, "\\x%02X", u[0]);
        return;
    }
    snprintf(out, 16, "U+%04X", cp);
    static const struct { unsigned cp; const char *name; } names[] = {
        {0x00A0, "no-break space"}, {0x00AD, "soft hyphen"}, {0x2009, "thin space"},
        {0x200B, "zero-width space"}, {0x200C, "zero-width non-joiner"}, {0x200D, "zero-width joiner"},
        {0x2010, "hyphen"}, {0x2011, "non-breaking hyphen"}, {0x2013, "en dash"}, {0x2014, "em dash"},
        {0x202F, "narrow no-break space"}, {0x2060, "word joiner"}, {0x3000, "ideographic space"},
        {0xFEFF, "zero-width no-break space (byte-order mark)"}};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (names[k].cp == cp) *name = names[k].name;
}

/* Qualifies sequence s for messages ("sequence" or "sequences[3]"). */
static void seq_label(int single, int s, char *out, size_t cap) {
    if (single) snprintf(out, cap, "sequence");
    else snprintf(out, cap, "sequences[%d]", s);
}

/* A hint for the two FASTA habits that make a sequence invalid, where byte i of text is the bad
 * character: a '>' header line at the start, or a '*' (stop) at the end; else "". */
static const char *fasta_hint(const char *text, size_t tlen, size_t i) {
    if (i >= tlen) return "";
    size_t a = 0, z = tlen;
    while (a < tlen && isspace((unsigned char)text[a])) a++;
    while (z > a && isspace((unsigned char)text[z - 1])) z--;
    if (text[i] == '>' && i == a)
        return "; this looks like FASTA: send only the residues, without the '>' header line, or POST "
               "the FASTA text to /jobs";
    if (text[i] == '*' && i + 1 == z)
        return "; a final '*' (stop) is not a residue: leave it out (POST /jobs drops it from FASTA records)";
    return "";
}

/* Encodes sequence text s into r; returns 0 or -1 with *e. */
static int encode_seq(pr_request *r, int s, const char *text, size_t tlen, int single, const pr_limits *lim,
                      pr_error *e) {
    char lab[32];
    size_t n = 0;
    tok_error te;
    seq_label(single, s, lab, sizeof lab);
    if (tok_encode(text, tlen, NULL, 0, &n, &te)) {
        char ch[16];
        const char *name;
        char_repr(text, tlen, te.pos ? te.pos - 1 : 0, ch, &name);
        if (strstr(te.msg, "<mask>"))     /* inside a '<...>': "<mask >", "<ma\nsk>", "<cls>" */
            set_err(e, 422, "invalid_residue", "invalid character '%s' at position %zu of %s: only <mask> is "
                    "allowed between '<' and '>', written as one word", ch, te.pos, lab);
        else if (*name)
            set_err(e, 422, "invalid_residue", "invalid character %s (%s, often pasted from documents) at "
                    "position %zu of %s (allowed: ACDEFGHIKLMNPQRSTVWY, XBUZO, <mask>, ASCII whitespace)", ch,
                    name, te.pos, lab);
        else
            set_err(e, 422, "invalid_residue", "invalid residue '%s' at position %zu of %s (allowed: "
                    "ACDEFGHIKLMNPQRSTVWY, XBUZO, <mask>, whitespace)%s", ch, te.pos, lab,
                    fasta_hint(text, tlen, te.pos ? te.pos - 1 : 0));
        e->details = json_pack("{s:s, s:I, s:i}", "character", ch, "position", (json_int_t)te.pos,
                               "sequence_index", s);
        return -1;
    }
    if (n == 0) {
        set_err(e, 422, "empty_sequence", "%s is empty (no residues)", lab);
        e->details = json_pack("{s:i}", "sequence_index", s);
        return -1;
    }
    if ((long)n > lim->max_length) {
        set_err(e, 413, "sequence_too_long", "%s has %zu residues; the limit is %ld (--max-length)", lab, n,
                lim->max_length);
        e->details = json_pack("{s:I, s:I, s:i}", "length", (json_int_t)n, "limit", (json_int_t)lim->max_length,
                               "sequence_index", s);
        return -1;
    }
    r->len[s] = n;
    r->input[s] = malloc(n * sizeof(int32_t));
    r->ids[s] = malloc(n * sizeof(int32_t));
    r->masked[s] = calloc(n, 1);
    if (!r->input[s] || !r->ids[s] || !r->masked[s]) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    tok_encode(text, tlen, r->input[s], n, &n, &te);
    memcpy(r->ids[s], r->input[s], n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++)
        if (r->input[s][i] == TOK_MASK) {
            r->masked[s][i] = 1;
            r->n_masked[s]++;
        }
    r->residues += (long)n;
    return 0;
}

/* Applies one array of 1-based mask positions to sequence s; returns 0 or -1 with *e. */
static int apply_positions(pr_request *r, int s, json_t *arr, int single, pr_error *e) {
    char lab[32];
    size_t i;
    json_t *v;
    seq_label(single, s, lab, sizeof lab);
    if (!json_is_array(arr))
        return set_err(e, 400, "invalid_type", "\"mask_positions\" must be an array of integers (or one array per"
                       " sequence)");
    json_array_foreach(arr, i, v) {
        long long p;
        if (!ut_json_int(v, &p))
            return set_err(e, 400, "invalid_type", "\"mask_positions\" must contain integers (1-based positions)");
        if (p < 1 || (size_t)p > r->len[s]) {
            set_err(e, 422, "invalid_mask_position", "mask position %lld is outside %s (1..%zu)", (long long)p, lab,
                    r->len[s]);
            e->details = json_pack("{s:I, s:I, s:i}", "position", p, "length", (json_int_t)r->len[s],
                                   "sequence_index", s);
            return -1;
        }
        if (!r->masked[s][p - 1]) {
            r->masked[s][p - 1] = 1;
            r->n_masked[s]++;
            r->ids[s][p - 1] = TOK_MASK;
        }
    }
    return 0;
}

/* Renders ids as canonical text ("<mask>" for masks). Returns a malloc'd string. */
char *pr_render(const int32_t *ids, size_t n) {
    size_t cap = 1;
    for (size_t i = 0; i < n; i++) cap += strlen(tok_name(ids[i]));
    char *s = malloc(cap), *p = s;
    if (!s) return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *t = tok_name(ids[i]);
        size_t l = strlen(t);
        memcpy(p, t, l);
        p += l;
    }
    *p = '\0';
    return s;
}

/* Builds r->canonical and r->id. Returns 0 or -1 (out of memory). */
static int canonicalise(pr_request *r, const char *model_sha256) {
    json_t *seqs = json_array(), *pos = json_array();
    for (int s = 0; s < r->n; s++) {
        char *t = pr_render(r->input[s], r->len[s]);
        json_array_append_new(seqs, t ? json_string(t) : json_null());
        free(t);
        json_t *p = json_array();
        for (size_t i = 0; i < r->len[s]; i++)
            if (r->masked[s][i] && r->input[s][i] != TOK_MASK) json_array_append_new(p, json_integer((json_int_t)i + 1));
        json_array_append_new(pos, p);
    }
    json_t *o = json_pack("{s:o, s:o, s:i, s:i}", "sequences", seqs, "mask_positions", pos, "top_k", r->top_k,
                          "v", PR_RESPONSE_VERSION);
    if (!o) return -1;
    r->canonical = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    if (!r->canonical) return -1;
    return pr_make_id(model_sha256, r->canonical, r->id);
}

/* Writes the id SHA-256(model_sha256 + "\n" + canonical) to id. Returns 0 or -1 (out of memory). */
int pr_make_id(const char *model_sha256, const char *canonical, char id[65]) {
    size_t ml = strlen(model_sha256), cl = strlen(canonical);
    char *buf = malloc(ml + 1 + cl);
    if (!buf) return -1;
    memcpy(buf, model_sha256, ml);
    buf[ml] = '\n';
    memcpy(buf + ml + 1, canonical, cl);
    ut_sha256_hex(buf, ml + 1 + cl, id);
    free(buf);
    return 0;
}

/* Returns the deepest nesting of the JSON text, stopping one level past limit, and the values. */
int pr_json_depth(const char *body, size_t len, int limit, size_t *values) {
    int depth = 0, max = 0, in_str = 0;
    size_t n = 1;
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == ',') {
            n++;
        } else if (c == '[' || c == '{') {
            n++;
            if (++depth > max && (max = depth) > limit) break;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    if (values) *values = n;
    return max;
}

/* Parses body as one JSON object (a leading UTF-8 byte-order mark is skipped). */
int pr_load_object(const char *body, size_t len, json_t **root, pr_error *e) {
    json_error_t je;
    *root = NULL;
    e->details = NULL;
    e->status = 0;
    if (len >= 3 && !memcmp(body, "\xEF\xBB\xBF", 3)) {   /* a UTF-8 byte-order mark (RFC 8259 8.1: ignored) */
        body += 3;
        len -= 3;
    }
    if (len == 0) return set_err(e, 400, "invalid_json", "empty request body (expected a JSON object)");
    size_t values = 0, max_values = PR_MAX_JSON_VALUES(len);
    if (pr_json_depth(body, len, PR_MAX_JSON_DEPTH, &values) > PR_MAX_JSON_DEPTH) {
        set_err(e, 400, "json_too_deep", "JSON nested deeper than %d arrays/objects", PR_MAX_JSON_DEPTH);
        e->details = json_pack("{s:i}", "max_depth", PR_MAX_JSON_DEPTH);
        return -1;
    }
    if (values > max_values) {
        set_err(e, 413, "json_too_large", "the JSON body holds about %zu values; at most %zu are accepted in %zu bytes"
                " (200000 + bytes/16)", values, max_values, len);
        e->details = json_pack("{s:I}", "limit", (json_int_t)max_values);
        return -1;
    }
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!o) {
        set_err(e, 400, "invalid_json", "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        e->details = json_pack("{s:i, s:i}", "line", je.line, "column", je.column);
        return -1;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        return set_err(e, 400, "invalid_type", "the request body must be a JSON object");
    }
    *root = o;
    return 0;
}

/* Checks that every key of root is one of allowed. */
int pr_check_fields(json_t *root, const char *const *allowed, pr_error *e) {
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++) ok = !strcmp(key, *a);
        if (ok) continue;
        char k[64], list[256] = "";
        snprintf(k, sizeof k, "%s", key);
        for (char *c = k; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
        for (const char *const *a = allowed; *a; a++) {
            size_t l = strlen(list);
            snprintf(list + l, sizeof list - l, "%s%s", a == allowed ? "" : ", ", *a);
        }
        set_err(e, 400, "unknown_field", "unknown field \"%s\" (allowed: %s)", k, list);
        e->details = json_pack("{s:s}", "field", k);
        return -1;
    }
    return 0;
}

/* Checks the shape of "sequence" / "sequences" (one of them; strings; 1..max_batch). Returns 0 or -1. */
static int seq_shape(json_t *root, const pr_limits *lim, pr_error *e) {
    json_t *v, *one = json_object_get(root, "sequence"), *many = json_object_get(root, "sequences");
    if (one && many)
        return set_err(e, 400, "invalid_request", "give either \"sequence\" or \"sequences\", not both");
    if (!one && !many)
        return set_err(e, 400, "invalid_request", "missing \"sequence\" (a string) or \"sequences\" (an array of"
                       " strings)");
    if (one && !json_is_string(one)) return set_err(e, 400, "invalid_type", "\"sequence\" must be a string");
    if (!many) return 0;
    if (!json_is_array(many)) return set_err(e, 400, "invalid_type", "\"sequences\" must be an array of strings");
    size_t i;
    json_array_foreach(many, i, v) {
        if (!json_is_string(v)) return set_err(e, 400, "invalid_type", "\"sequences\"[%zu] must be a string", i);
    }
    if (json_array_size(many) == 0) return set_err(e, 422, "empty_batch", "\"sequences\" is empty");
    if ((long)json_array_size(many) > lim->max_batch) {
        set_err(e, 413, "batch_too_large", "%zu sequences; the limit is %ld per request (--max-batch)",
                json_array_size(many), lim->max_batch);
        e->details = json_pack("{s:I, s:I}", "sequences", (json_int_t)json_array_size(many), "limit",
                               (json_int_t)lim->max_batch);
        return -1;
    }
    return 0;
}

/* Encodes the "sequence" / "sequences" fields of root. */
pr_request *pr_parse_sequences(json_t *root, const pr_limits *lim, pr_error *e) {
    if (seq_shape(root, lim, e)) return NULL;
    json_t *one = json_object_get(root, "sequence"), *many = json_object_get(root, "sequences");
    int n = one ? 1 : (int)json_array_size(many);
    pr_request *r = req_new(n);
    if (!r) {
        set_err(e, 503, "out_of_memory", "out of memory; retry later");
        return NULL;
    }
    r->top_k = PR_TOPK_DEFAULT;
    for (int s = 0; s < n; s++) {
        json_t *sv = one ? one : json_array_get(many, (size_t)s);
        if (encode_seq(r, s, json_string_value(sv), json_string_length(sv), one != NULL, lim, e)) {
            pr_free(r);
            return NULL;
        }
    }
    return r;
}

/* Validates and normalises a JSON body. */
int pr_parse(const char *body, size_t len, const pr_limits *lim, const char *model_sha256, pr_request **out,
             pr_error *e) {
    static const char *const fields[] = {"sequence", "sequences", "mask_positions", "top_k", NULL};
    pr_request *r = NULL;
    json_t *root = NULL;
    *out = NULL;
    if (pr_load_object(body, len, &root, e)) return -1;
    if (pr_check_fields(root, fields, e)) goto fail;
    json_t *one = json_object_get(root, "sequence");
    json_t *mp = json_object_get(root, "mask_positions"), *tk = json_object_get(root, "top_k");
    /* the same order of checks as always: shape of sequence(s), then top_k, then contents */
    if (seq_shape(root, lim, e)) goto fail;
    int top_k = PR_TOPK_DEFAULT;
    if (tk) {
        long long k;
        if (!ut_json_int(tk, &k)) {
            set_err(e, 400, "invalid_type", "\"top_k\" must be an integer");
            goto fail;
        }
        if (k < 1 || k > PR_TOPK_MAX) {
            set_err(e, 422, "invalid_top_k", "\"top_k\" must be from 1 to %d", PR_TOPK_MAX);
            e->details = json_pack("{s:i, s:i}", "min", 1, "max", PR_TOPK_MAX);
            goto fail;
        }
        top_k = (int)k;
    }
    if (mp && !json_is_array(mp)) {
        set_err(e, 400, "invalid_type", "\"mask_positions\" must be an array of integers (or one array per sequence)");
        goto fail;
    }
    r = pr_parse_sequences(root, lim, e);
    if (!r) goto fail;
    r->top_k = top_k;
    int n = r->n;
    if (mp && json_array_size(mp) > 0) {
        int nested = json_is_array(json_array_get(mp, 0));
        if (nested) {
            if ((int)json_array_size(mp) != n) {
                set_err(e, 422, "invalid_mask_position", "\"mask_positions\" has %zu arrays for %d sequences (give"
                        " one array per sequence, or one flat array for all)", json_array_size(mp), n);
                goto fail;
            }
            for (int s = 0; s < n; s++)
                if (apply_positions(r, s, json_array_get(mp, (size_t)s), one != NULL, e)) goto fail;
        } else {
            for (int s = 0; s < n; s++)
                if (apply_positions(r, s, mp, one != NULL, e)) goto fail;
        }
    }
    long long entries = 0;
    for (int s = 0; s < n; s++)
        entries += (long long)(r->n_masked[s] ? r->n_masked[s] : (int)r->len[s]) * (top_k < TOK_NRES ? top_k : TOK_NRES);
    if (entries > PR_MAX_ENTRIES) {
        set_err(e, 413, "response_too_large", "the response would hold %lld top-k entries; the limit is %d (send"
                " fewer sequences or positions, or a smaller top_k)", entries, PR_MAX_ENTRIES);
        e->details = json_pack("{s:I, s:i}", "entries", (json_int_t)entries, "limit", PR_MAX_ENTRIES);
        goto fail;
    }
    if (canonicalise(r, model_sha256)) {
        set_err(e, 503, "out_of_memory", "out of memory; retry later");
        goto fail;
    }
    json_decref(root);
    *out = r;
    return 0;
fail:
    json_decref(root);
    pr_free(r);
    return -1;
}

/* Appends the top-k entries of one framed position's 20 log-probs; returns the top-1 token id. */
static int add_topk(ut_buf *b, const float *lp, int k) {
    int order[TOK_NRES];
    for (int c = 0; c < TOK_NRES; c++) order[c] = c;
    if (k > TOK_NRES) k = TOK_NRES;
    for (int a = 0; a < k; a++) {           /* partial selection sort, ties by residue order */
        int best = a;
        for (int c = a + 1; c < TOK_NRES; c++)
            if (lp[order[c]] > lp[order[best]]) best = c;
        int t = order[a];
        order[a] = order[best];
        order[best] = t;
    }
    ut_str(b, "[");
    for (int a = 0; a < k; a++) {
        double l = lp[order[a]];
        ut_printf(b, "%s{\"token\":\"%s\",\"prob\":", a ? "," : "", tok_name(TOK_RES0 + order[a]));
        ut_num(b, exp(l));
        ut_str(b, ",\"log_prob\":");
        ut_num(b, l);
        ut_str(b, "}");
    }
    ut_str(b, "]");
    return TOK_RES0 + order[0];
}

/* See predict.h. */
int pr_result_head(ut_buf *b, const char *id, json_t *model) {
    char *mj = json_dumps(model, JSON_COMPACT);
    if (!mj) return -1;
    ut_printf(b, "{\"id\":\"%s\",\"model\":", id);
    ut_str(b, mj);
    free(mj);
    return 0;
}

/* Builds the 200 response JSON directly as text (large results would cost far more as jansson
 * objects). */
char *pr_response(const pr_request *r, json_t *model, float *const *logp, size_t *out_len) {
    ut_buf b = {0};
    if (pr_result_head(&b, r->id, model)) return NULL;
    ut_printf(&b, ",\"cached\":false,\"top_k\":%d,\"results\":[", r->top_k);
    for (int s = 0; s < r->n; s++) {
        size_t n = r->len[s];
        int all = r->n_masked[s] == 0;
        char *filled = malloc(n * 6 + 1), *fp = filled;
        if (!filled) {
            free(b.s);
            return NULL;
        }
        ut_printf(&b, "%s{\"length\":%zu,\"mode\":\"%s\",\"masked_positions\":%d,\"predictions\":[", s ? "," : "", n,
                  all ? "unmasked" : "masked", r->n_masked[s]);
        int first = 1;
        for (size_t i = 0; i < n; i++) {
            int out_tok = r->input[s][i];
            if (all || r->masked[s][i]) {
                ut_printf(&b, "%s{\"position\":%zu,\"residue\":\"%s\",\"top_k\":", first ? "" : ",", i + 1,
                          tok_name(r->input[s][i]));
                int best = add_topk(&b, logp[s] + (i + 1) * TOK_NRES, r->top_k);
                ut_str(&b, "}");
                first = 0;
                if (!all) out_tok = best;
            }
            const char *t = tok_name(out_tok);
            size_t l = strlen(t);
            memcpy(fp, t, l);
            fp += l;
        }
        *fp = '\0';
        ut_str(&b, "],\"filled_sequence\":\"");
        ut_put(&b, filled, (size_t)(fp - filled));
        ut_str(&b, "\"}");
        free(filled);
    }
    ut_str(&b, "]}");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    *out_len = b.len;
    return b.s;
}

/* Rewrites the first "cached":false to "cached":true  in place. */
void pr_mark_cached(char *body, size_t len) {
    static const char pat[] = "\"cached\":false";
    size_t pl = sizeof pat - 1;
    char *p = memmem(body, len, pat, pl);
    if (p) memcpy(p, "\"cached\":true ", pl);
}

/* Builds the error body. */
char *pr_error_body(const char *type, const char *msg, const char *request_id, json_t *details, size_t *out_len) {
    json_t *o = json_object();
    char clean[512];
    snprintf(clean, sizeof clean, "%s", msg);
    for (char *c = clean; *c; c++)      /* keep the body valid UTF-8 whatever the input was */
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
    json_object_set_new(o, "error", json_string(clean));
    json_object_set_new(o, "error_type", json_string(type));
    json_object_set_new(o, "request_id", request_id ? json_string(request_id) : json_null());
    if (details) {
        const char *k;
        json_t *v;
        json_object_foreach(details, k, v) json_object_set(o, k, v);
        json_decref(details);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s) *out_len = strlen(s);
    return s;
}
