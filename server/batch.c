/* batch.c - job submissions from FASTA / JSON, job ids, JSON Lines records (see batch.h). */
#include "batch.h"
#include "tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define set_err pr_set_error

/* Frees a submission. */
void bt_free(bt_submission *s) {
    if (!s) return;
    for (long long i = 0; i < s->n; i++) {
        if (s->names) free(s->names[i]);
        if (s->requests) free(s->requests[i]);
    }
    free(s->names);
    free(s->requests);
    free(s->params);
    free(s);
}

/* Returns a malloc'd copy of n bytes of s made printable ASCII (controls and non-ASCII -> '?'),
 * trimmed, at most BT_NAME_MAX bytes. */
static char *clean_name(const char *s, size_t n) {
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    if (n > BT_NAME_MAX) n = BT_NAME_MAX;
    char *o = malloc(n + 1);
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) o[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    o[n] = '\0';
    return o;
}

/* Task parameters allowed per task (the route's fields other than the sequence). */
static const char *const *param_names(tk_kind k) {
    static const char *const predict[] = {"top_k", "mask_positions", NULL};
    static const char *const score[] = {"mutations", "method", "offset", "format", NULL};
    static const char *const embed[] = {"layer", "representations", NULL};
    static const char *const logits[] = {NULL};
    return k == TK_PREDICT ? predict : k == TK_SCORE ? score : k == TK_EMBED ? embed : logits;
}

/* Prefixes an error about item i with its index and name (and adds them to the details). */
static void item_error(pr_error *e, long long i, const char *name) {
    char msg[sizeof e->msg + 128];
    snprintf(msg, sizeof msg, "sequence %lld%s%.40s%s: %s", i + 1, *name ? " ('" : "", name, *name ? "')" : "",
             e->msg);
    memcpy(e->msg, msg, sizeof e->msg - 1);
    e->msg[sizeof e->msg - 1] = '\0';
    if (!e->details) e->details = json_object();
    json_object_set_new(e->details, "item_index", json_integer(i));
    json_object_set_new(e->details, "name", json_string(name));
}

/* A sequence to add: name and text (borrowed), per-item mutations (borrowed, may be NULL). */
typedef struct {
    const char *name;
    size_t name_len;
    const char *seq;
    size_t seq_len;
    json_t *mutations;
} item_in;

/* Builds the submission from kind, params (borrowed object) and items; validates each. */
static int build(tk_kind kind, json_t *params, const item_in *items, long long n, const bt_limits *lim,
                 const char *model_sha256, bt_submission **out, pr_error *e) {
    *out = NULL;
    if (n == 0) return set_err(e, 422, "empty_batch", "the job has no sequences");
    if (n > lim->max_sequences) {
        set_err(e, 413, "too_many_sequences", "%lld sequences; the limit is %ld per job (--max-job-sequences)", n,
                lim->max_sequences);
        e->details = json_pack("{s:I, s:I}", "sequences", (json_int_t)n, "limit", (json_int_t)lim->max_sequences);
        return -1;
    }
    if (pr_check_fields(params, param_names(kind), e)) {
        snprintf(e->msg + strlen(e->msg), sizeof e->msg - strlen(e->msg), " in the %s parameters", tk_kind_name(kind));
        return -1;
    }
    bt_submission *s = calloc(1, sizeof *s);
    if (!s) return set_err(e, 503, "out_of_memory", "out of memory; retry later");
    s->kind = kind;
    s->names = calloc((size_t)n, sizeof *s->names);
    s->requests = calloc((size_t)n, sizeof *s->requests);
    s->params = json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS);
    ut_buf key = {0};
    ut_printf(&key, "%s\n%s\n", model_sha256, tk_kind_name(kind));
    if (!s->names || !s->requests || !s->params) goto oom;
    s->n = n;
    for (long long i = 0; i < n; i++) {
        s->names[i] = clean_name(items[i].name ? items[i].name : "", items[i].name ? items[i].name_len : 0);
        if (!s->names[i]) goto oom;
        json_t *req = json_deep_copy(params);
        if (!req) goto oom;
        json_object_set_new(req, "sequence", json_stringn(items[i].seq, items[i].seq_len));
        if (items[i].mutations) json_object_set(req, "mutations", items[i].mutations);
        tk_request *r = NULL;
        if (!json_object_get(req, "sequence")) {
            /* not valid UTF-8: the route would have refused the JSON */
            json_decref(req);
            set_err(e, 422, "invalid_residue", "the sequence is not valid text (allowed: ACDEFGHIKLMNPQRSTVWY, XBUZO, "
                    "<mask>, whitespace)");
            item_error(e, i, s->names[i]);
            bt_free(s);
            free(key.s);
            return -1;
        }
        if (tk_from_json(kind, req, &lim->tk, model_sha256, &r, e)) {
            json_decref(req);
            item_error(e, i, s->names[i]);
            bt_free(s);
            free(key.s);
            return -1;
        }
        s->requests[i] = json_dumps(req, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(req);
        ut_printf(&key, "%s\t%s\n", s->names[i], r->id);
        tk_free(r);
        if (!s->requests[i]) goto oom;
    }
    if (key.oom) goto oom;
    ut_sha256_hex(key.s, key.len, s->id);
    free(key.s);
    *out = s;
    return 0;
oom:
    bt_free(s);
    free(key.s);
    return set_err(e, 503, "out_of_memory", "out of memory; retry later");
}

/* Splits a FASTA text into items (pointers into text). Returns the count (items NULL: count only)
 * or -1 with *e. */
static long long split_fasta(const char *t, size_t len, item_in *items, pr_error *e) {
    long long n = 0;
    size_t i = 0, line = 1;
    item_in *cur = NULL;
    while (i < len) {
        size_t j = i;
        while (j < len && t[j] != '\n') j++;
        size_t k = i;
        while (k < j && (t[k] == ' ' || t[k] == '\t' || t[k] == '\r')) k++;
        if (k < j && t[k] == '>') {
            if (items) {
                cur = &items[n];
                memset(cur, 0, sizeof *cur);
                cur->name = t + k + 1;
                cur->name_len = j - k - 1;
                cur->seq = j < len ? t + j + 1 : t + j;
                cur->seq_len = 0;
            }
            n++;
        } else if (k < j && t[k] != ';') {     /* ';' lines are old-style FASTA comments */
            if (n == 0) {
                set_err(e, 422, "invalid_fasta", "line %zu: FASTA text must start with a '>' header line", line);
                e->details = json_pack("{s:I}", "line", (json_int_t)line);
                return -1;
            }
            if (cur) cur->seq_len = (size_t)(j - (size_t)(cur->seq - t));
        }
        i = j + 1;
        line++;
    }
    return n;
}

/* Returns a malloc'd copy of a FASTA record's sequence lines: comment lines dropped, a final '*'
 * (stop) removed; whitespace stays (the tokenizer ignores it). */
static char *record_text(const item_in *it, size_t *out_len) {
    char *o = malloc(it->seq_len + 1);
    if (!o) return NULL;
    size_t n = 0, i = 0;
    while (i < it->seq_len) {
        size_t j = i;
        while (j < it->seq_len && it->seq[j] != '\n') j++;
        size_t k = i;
        while (k < j && (it->seq[k] == ' ' || it->seq[k] == '\t')) k++;
        if (!(k < j && it->seq[k] == ';')) {
            memcpy(o + n, it->seq + i, j - i);
            n += j - i;
            o[n++] = '\n';
        }
        i = j + 1;
    }
    while (n && isspace((unsigned char)o[n - 1])) n--;
    if (n && o[n - 1] == '*') n--;
    o[n] = '\0';
    *out_len = n;
    return o;
}

/* Builds a submission from FASTA text and a params object (borrowed). */
static int from_fasta(tk_kind kind, const char *text, size_t len, json_t *params, const bt_limits *lim,
                      const char *model_sha256, bt_submission **out, pr_error *e) {
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) {   /* a UTF-8 byte-order mark (Notepad) */
        text += 3;
        len -= 3;
    }
    long long n = split_fasta(text, len, NULL, e);
    if (n < 0) return -1;
    if (n == 0) return set_err(e, 422, "empty_batch", "the FASTA text has no records ('>name' lines)");
    if (n > lim->max_sequences) return build(kind, params, NULL, n, lim, model_sha256, out, e);
    item_in *items = calloc((size_t)n, sizeof *items);
    char **texts = calloc((size_t)n, sizeof *texts);
    int rc = -1;
    if (!items || !texts) {
        set_err(e, 503, "out_of_memory", "out of memory; retry later");
        goto done;
    }
    split_fasta(text, len, items, e);
    for (long long i = 0; i < n; i++) {
        texts[i] = record_text(&items[i], &items[i].seq_len);
        if (!texts[i]) {
            set_err(e, 503, "out_of_memory", "out of memory; retry later");
            goto done;
        }
        items[i].seq = texts[i];
    }
    rc = build(kind, params, items, n, lim, model_sha256, out, e);
done:
    for (long long i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    free(items);
    return rc;
}

/* Parses a JSON body. */
int bt_parse_json(const char *body, size_t len, const bt_limits *lim, const char *model_sha256,
                  bt_submission **out, pr_error *e) {
    static const char *const fields[] = {"task", "params", "sequences", "items", "fasta", NULL};
    json_t *root = NULL;
    *out = NULL;
    if (pr_load_object(body, len, &root, e)) return -1;
    int rc = -1;
    item_in *items = NULL;
    json_t *params = NULL;
    if (pr_check_fields(root, fields, e)) goto done;
    json_t *task = json_object_get(root, "task"), *p = json_object_get(root, "params");
    json_t *seqs = json_object_get(root, "sequences"), *its = json_object_get(root, "items");
    json_t *fa = json_object_get(root, "fasta");
    tk_kind kind;
    if (!task) {
        set_err(e, 400, "invalid_request", "missing \"task\" (predict, score, embed or logits)");
        goto done;
    }
    if (!json_is_string(task)) {
        set_err(e, 400, "invalid_type", "\"task\" must be a string");
        goto done;
    }
    if (tk_kind_parse(json_string_value(task), &kind)) {
        set_err(e, 422, "invalid_task", "unknown task (use predict, score, embed or logits)");
        e->details = json_pack("{s:[s,s,s,s]}", "allowed", "predict", "score", "embed", "logits");
        goto done;
    }
    if (p && !json_is_object(p)) {
        set_err(e, 400, "invalid_type", "\"params\" must be an object");
        goto done;
    }
    params = p ? json_incref(p) : json_object();
    if ((seqs != NULL) + (its != NULL) + (fa != NULL) != 1) {
        set_err(e, 400, "invalid_request", "give exactly one of \"sequences\" (strings), \"items\" (objects with "
                "name, sequence and, for score, mutations) or \"fasta\" (FASTA text)");
        goto done;
    }
    if (fa) {
        if (!json_is_string(fa)) {
            set_err(e, 400, "invalid_type", "\"fasta\" must be a string");
            goto done;
        }
        rc = from_fasta(kind, json_string_value(fa), json_string_length(fa), params, lim, model_sha256, out, e);
        goto done;
    }
    json_t *arr = seqs ? seqs : its, *v;
    if (!json_is_array(arr)) {
        set_err(e, 400, "invalid_type", "\"%s\" must be an array", seqs ? "sequences" : "items");
        goto done;
    }
    long long n = (long long)json_array_size(arr);
    if (n > lim->max_sequences || n == 0) {
        rc = build(kind, params, NULL, n, lim, model_sha256, out, e);
        goto done;
    }
    items = calloc((size_t)n, sizeof *items);
    if (!items) {
        set_err(e, 503, "out_of_memory", "out of memory; retry later");
        goto done;
    }
    size_t i;
    json_array_foreach(arr, i, v) {
        item_in *it = &items[i];
        json_t *sv = v;
        if (its && json_is_object(v)) {
            static const char *const item_fields[] = {"name", "sequence", "mutations", NULL};
            if (pr_check_fields(v, item_fields, e)) {
                item_error(e, (long long)i, "");
                goto done;
            }
            json_t *nm = json_object_get(v, "name");
            sv = json_object_get(v, "sequence");
            it->mutations = json_object_get(v, "mutations");
            if (nm && !json_is_string(nm)) {
                set_err(e, 400, "invalid_type", "\"items\"[%zu].name must be a string", i);
                goto done;
            }
            if (nm) {
                it->name = json_string_value(nm);
                it->name_len = json_string_length(nm);
            }
            if (it->mutations && kind != TK_SCORE) {
                set_err(e, 400, "unknown_field", "\"items\"[%zu].mutations is only for the score task", i);
                goto done;
            }
        }
        if (!json_is_string(sv)) {
            set_err(e, 400, "invalid_type", its ? "\"items\"[%zu] must be an object with a \"sequence\" string (or a "
                    "string)" : "\"sequences\"[%zu] must be a string", i);
            goto done;
        }
        it->seq = json_string_value(sv);
        it->seq_len = json_string_length(sv);
    }
    rc = build(kind, params, items, n, lim, model_sha256, out, e);
done:
    free(items);
    json_decref(params);
    json_decref(root);
    return rc;
}

/* Converts one query-string value to the JSON type of parameter name; NULL with *e when invalid. */
static json_t *query_value(const char *name, const char *v, pr_error *e) {
    if (!strcmp(name, "top_k") || !strcmp(name, "layer") || !strcmp(name, "offset")) {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end) {
            set_err(e, 400, "invalid_type", "query parameter %s must be an integer", name);
            return NULL;
        }
        return json_integer(x);
    }
    if (!strcmp(name, "method") || !strcmp(name, "format")) return json_string(v);
    if (!strcmp(name, "mutations") && !strcmp(v, "all")) return json_string(v);   /* every single substitution */
    /* lists: mutations, representations, mask_positions (comma, semicolon or space separated) */
    json_t *a = json_array();
    const char *p = v;
    while (*p) {
        while (*p == ',' || *p == ';' || *p == ' ') p++;
        const char *q = p;
        while (*q && *q != ',' && *q != ';' && *q != ' ') q++;
        if (q > p) {
            if (!strcmp(name, "mask_positions")) {
                char buf[32], *end;
                snprintf(buf, sizeof buf, "%.*s", (int)(q - p < 31 ? q - p : 31), p);
                long long x = strtoll(buf, &end, 10);
                if (*end || end == buf) {
                    json_decref(a);
                    set_err(e, 400, "invalid_type", "query parameter mask_positions must be integers");
                    return NULL;
                }
                json_array_append_new(a, json_integer(x));
            } else {
                json_array_append_new(a, json_stringn(p, (size_t)(q - p)));
            }
        }
        p = q;
    }
    return a;
}

/* Parses a FASTA body with query-string parameters. */
int bt_parse_fasta(const char *text, size_t len, const char *task, json_t *query, const bt_limits *lim,
                   const char *model_sha256, bt_submission **out, pr_error *e) {
    *out = NULL;
    e->details = NULL;
    e->status = 0;
    tk_kind kind;
    if (!task) return set_err(e, 400, "invalid_request", "missing query parameter task (predict, score, embed or "
                              "logits), e.g. POST /jobs?task=embed");
    if (tk_kind_parse(task, &kind)) {
        set_err(e, 422, "invalid_task", "unknown task (use predict, score, embed or logits)");
        e->details = json_pack("{s:[s,s,s,s]}", "allowed", "predict", "score", "embed", "logits");
        return -1;
    }
    json_t *params = json_object();
    const char *k;
    json_t *v;
    if (query) {
        json_object_foreach(query, k, v) {
            if (!strcmp(k, "task") || !json_is_string(v)) continue;
            const char *const *allowed = param_names(kind);
            int ok = 0;
            for (; *allowed; allowed++) ok |= !strcmp(*allowed, k);
            if (!ok) {
                char shown[64];
                snprintf(shown, sizeof shown, "%s", k);
                for (char *c = shown; *c; c++)
                    if (*c < 0x20 || *c >= 0x7f) *c = '?';
                set_err(e, 400, "unknown_field", "unknown query parameter \"%s\" for the %s task", shown,
                        tk_kind_name(kind));
                e->details = json_pack("{s:s}", "field", shown);
                json_decref(params);
                return -1;
            }
            json_t *x = query_value(k, json_string_value(v), e);
            if (!x) {
                json_decref(params);
                return -1;
            }
            json_object_set_new(params, k, x);
        }
    }
    int rc = from_fasta(kind, text, len, params, lim, model_sha256, out, e);
    json_decref(params);
    return rc;
}

/* Appends one JSON Lines record. */
void bt_result_line(ut_buf *b, long long idx, const char *name, int status, const char *out, size_t len) {
    ut_printf(b, "{\"index\":%lld,\"name\":", idx);
    ut_json_str(b, name);
    ut_printf(b, ",\"status\":%d,", status);
    if (status == 200) {
        ut_str(b, "\"result\":");
        ut_put(b, out, len);
        ut_str(b, "}\n");
    } else if (len >= 2 && out[0] == '{') {
        ut_put(b, out + 1, len - 1);          /* the stored error object's fields */
        ut_str(b, "\n");
    } else {
        ut_str(b, "\"error\":\"unknown error\",\"error_type\":\"internal\"}\n");
    }
}
