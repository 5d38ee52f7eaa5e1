/* predict.h - POST /predict request validation and normalisation, result ids, and the response
 * JSON (prefix pr_). Pure functions of their inputs: no I/O, no globals, safe on any thread. */
#ifndef PD_PREDICT_H
#define PD_PREDICT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PR_TOPK_DEFAULT 5
#define PR_TOPK_MAX 25          /* accepted maximum; at most 20 entries exist (the residue classes) */
#define PR_RESPONSE_VERSION 2   /* part of the id: bump when the response format changes (2: "precision" in "model") */
#define PR_MAX_ENTRIES 2000000  /* top-k entries per response (positions x top_k), ~100 MB of JSON */
#define PR_MAX_JSON_DEPTH 64    /* arrays/objects nested deeper than this are refused before parsing */
#define PR_MAX_JSON_VALUES(len) (200000 + (len) / 16)   /* JSON values a body of len bytes may hold */

typedef struct {
    long max_length;            /* residues per sequence */
    long max_batch;             /* sequences per request */
} pr_limits;

/* One validated, normalised request. */
typedef struct {
    int n;                      /* sequences */
    size_t *len;                /* residues of each sequence */
    int32_t **input;            /* residue ids as given (TOK_MASK for "<mask>") */
    int32_t **ids;              /* model input: input with mask_positions replaced by TOK_MASK */
    unsigned char **masked;     /* masked[s][i] = 1 when residue i+1 is predicted as masked */
    int *n_masked;              /* masked positions per sequence (0 = unmasked full prediction) */
    int top_k;
    long residues;              /* total residues */
    char *canonical;            /* canonical request JSON (sorted keys, compact) */
    char id[65];                /* SHA-256 of model sha256 + "\n" + canonical */
} pr_request;

/* A request error: HTTP status, machine-readable type, message and extra detail fields. */
typedef struct {
    int status;
    char type[48];
    char msg[320];
    json_t *details;            /* object of extra fields, or NULL; owned by the caller after pr_parse */
} pr_error;

/* Validates and normalises a JSON body against limits and computes the id for model_sha256.
 * Returns 0 and *out (free with pr_free), or -1 with *e (400 types, 422 values, 413 limits). */
int pr_parse(const char *body, size_t len, const pr_limits *lim, const char *model_sha256, pr_request **out,
             pr_error *e);

/* Parses body as one JSON object: 400 invalid_json (line/column), json_too_deep (nesting over
 * PR_MAX_JSON_DEPTH) or invalid_type, 413 json_too_large (more than PR_MAX_JSON_VALUES values: the
 * parsed tree would take tens of times the body's size); depth and values are found by a scan
 * before parsing. Returns 0 and *root (the caller decrefs), or -1 with *e. */
int pr_load_object(const char *body, size_t len, json_t **root, pr_error *e);

/* Returns the deepest array/object nesting of the JSON text (strings skipped), scanning no further
 * than one level past limit (the result is then limit + 1), and in *values (may be NULL) the number
 * of values seen (elements and members: commas + arrays/objects + 1). Malformed text gives a best
 * effort. */
int pr_json_depth(const char *body, size_t len, int limit, size_t *values);

/* Checks that every key of root is one of allowed (NULL-terminated): else 400 unknown_field naming
 * the field and the allowed ones. Returns 0 or -1 with *e. */
int pr_check_fields(json_t *root, const char *const *allowed, pr_error *e);

/* Validates and encodes the "sequence" / "sequences" fields of root exactly as POST /predict does
 * (residues or <mask>, limits; no mask_positions). Returns a request with top_k 5, no canonical
 * form and no id, or NULL with *e. */
pr_request *pr_parse_sequences(json_t *root, const pr_limits *lim, pr_error *e);

/* Renders residue ids as canonical text ("<mask>" for masks). Returns a malloc'd string or NULL. */
char *pr_render(const int32_t *ids, size_t n);

/* Writes the id SHA-256(model_sha256 + "\n" + canonical) to id. Returns 0 or -1 (out of memory). */
int pr_make_id(const char *model_sha256, const char *canonical, char id[65]);

/* Sets *e (status, type, printf-style message; details untouched). Returns -1. */
__attribute__((format(printf, 4, 5))) int pr_set_error(pr_error *e, int status, const char *type, const char *fmt,
                                                        ...);

/* Frees a request. NULL is fine. */
void pr_free(pr_request *r);

/* Returns the framed token count of r (sum of len + 2). */
size_t pr_tokens(const pr_request *r);

/* Builds the 200 response JSON (compact, "cached":false) for r from per-sequence log-probs
 * logp[s] = [(len[s] + 2) * 20] framed positions. model is {"name","sha256",...}. Returns a malloc'd
 * string and *out_len, or NULL when out of memory. */
char *pr_response(const pr_request *r, json_t *model, float *const *logp, size_t *out_len);

/* Starts a result body in b: {"id":"<id>","model":<model, compact>. 0, or -1 when out of memory
 * (b is then unchanged). */
int pr_result_head(ut_buf *b, const char *id, json_t *model);

/* Rewrites a stored response's first "cached":false to "cached":true  (same length) in place. */
void pr_mark_cached(char *body, size_t len);

/* Builds the error body {"error","error_type","request_id",...details}; steals details. Returns a
 * malloc'd compact JSON string (never NULL unless out of memory) and *out_len. */
char *pr_error_body(const char *type, const char *msg, const char *request_id, json_t *details, size_t *out_len);

#endif
