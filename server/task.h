/* task.h - the model tasks of performerd and bin/performer (prefix tk_): fill-mask prediction
 * (/predict, wrapping predict.h), variant scoring (/score), embeddings (/embed) and log-probability
 * matrices (/logits). A tk_request is validated and normalised from JSON, with a content-hash id
 * like /predict; it names the model inputs to run (tk_input: masked copies for scoring), takes each
 * input's outputs (tk_consume, idempotent, so an input may be re-run), and builds the response JSON
 * (tk_response). Pure functions of their inputs: no I/O, no globals, safe on any thread. */
#ifndef PD_TASK_H
#define PD_TASK_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "predict.h"

typedef enum { TK_PREDICT, TK_SCORE, TK_EMBED, TK_LOGITS } tk_kind;
#define TK_N_KINDS 4

/* Scoring methods (Meier et al. 2021, ESM's conventions). */
typedef enum { TK_MASKED_MARGINALS, TK_WT_MARGINALS, TK_PSEUDO_LIKELIHOOD } tk_method;

#define TK_NO_HIDDEN (-2)        /* hidden_layer of tasks that need no hidden states */
#define TK_VERSION 2             /* part of the ids of score/embed/logits: bump when their format changes (2: results stored before long mutant texts were written whole) */
#define TK_MAX_MUTANTS 100000    /* mutants per /score request */
#define TK_MAX_NUMBERS 10000000  /* numbers in one /embed or /logits response (~100 MB of JSON) */

typedef struct {
    long max_length;            /* residues per sequence */
    long max_batch;             /* sequences per request */
    long max_pll_length;        /* residues of a sequence scored by pseudo-likelihood */
    long max_score_tokens;      /* framed tokens one /score request may run through the model */
    int n_layers;               /* the model's blocks (embedding layers 0..n_layers, -1 = final) */
    int d_model;                /* the model's width (embedding sizes) */
} tk_limits;

/* One substitution: 0-based residue index, wild-type and mutant residue classes (0..19 = ACDE...). */
typedef struct {
    int index;
    int wt, mt;
} tk_site;

/* One mutant: canonical text ("A24G:K30R", sites sorted by position) and its sites. */
typedef struct {
    char *text;
    int n_sites;
    tk_site *sites;
} tk_mutant;

typedef struct {
    tk_kind kind;
    char id[65];                /* SHA-256 of model sha256 + "\n" + canonical */
    char *canonical;            /* canonical request JSON (sorted keys, compact) */
    pr_request *seq;            /* the sequence(s); TK_SCORE: the one wild-type sequence */
    int hidden_layer;           /* TK_NO_HIDDEN, or the pf_forward_ex layer of TK_EMBED */
    int n_inputs;               /* model inputs (sequences or masked copies) */
    long long input_tokens;     /* framed tokens over all inputs */
    /* TK_EMBED */
    int layer;                  /* as requested: -1 final LayerNorm output, 0 embeddings, k after block k */
    int want_mean, want_cls, want_per_residue;
    /* TK_SCORE */
    tk_method method;
    long offset;                /* position p of a mutation is residue index p - offset (0-based) */
    int n_mutants;
    tk_mutant *mutants;
    int matrix;                 /* "format": "matrix": the scores as a length x 20 table (single substitutions) */
    int n_positions;            /* masked-marginals: distinct mutated indices (input k masks positions[k]);
                                 * pseudo-likelihood: the indices of standard residues, masked one at a time */
    int *positions;
    /* outputs, filled by tk_consume */
    int d;                      /* hidden width seen by tk_consume */
    float **out;                /* per input */
    unsigned char *have;        /* per input: consumed */
} tk_request;

/* Returns "predict", "score", "embed" or "logits". */
const char *tk_kind_name(tk_kind k);

/* Parses a task name; returns 0, or -1 when unknown. */
int tk_kind_parse(const char *s, tk_kind *k);

/* Returns "masked-marginals", "wt-marginals" or "pseudo-likelihood". */
const char *tk_method_name(tk_method m);

/* Validates and normalises a JSON body of kind against limits and computes the id for
 * model_sha256 (TK_PREDICT: exactly POST /predict). Returns 0 and *out (free with tk_free), or -1
 * with *e (400 types/fields, 422 values, 413 limits). */
int tk_parse(tk_kind kind, const char *body, size_t len, const tk_limits *lim, const char *model_sha256,
             tk_request **out, pr_error *e);

/* As tk_parse, from a parsed JSON object (borrowed). */
int tk_from_json(tk_kind kind, json_t *root, const tk_limits *lim, const char *model_sha256, tk_request **out,
                 pr_error *e);

/* Frees a request. NULL is fine. */
void tk_free(tk_request *r);

/* Returns the residue count of input k (0 <= k < n_inputs), without <cls>/<eos>. */
size_t tk_input_len(const tk_request *r, int k);

/* Writes the residue ids of input k (tk_input_len entries, unframed) to out. */
void tk_input(const tk_request *r, int k, int32_t *out);

/* Takes the outputs of input k: logp = its framed log-probs [(len + 2) * 20]; hidden = its framed
 * hidden states [(len + 2) * d] (needed when hidden_layer != TK_NO_HIDDEN, else may be NULL).
 * Calling it again for the same k overwrites. Returns 0, or -1 when out of memory. */
int tk_consume(tk_request *r, int k, const float *logp, const float *hidden, int d);

/* Returns 1 when every input has been consumed. */
int tk_complete(const tk_request *r);

/* Returns the {"name", "sha256", "trained", "precision"} object every response embeds (precision:
 * the process's, model/gemm.h), or NULL when out of memory. performerd and the CLI share it. */
json_t *tk_model_ref(const char *name, const char *sha256, int trained);

/* Builds the 200 response JSON (compact, "cached":false) once every input is consumed; model is
 * the tk_model_ref object. Returns a malloc'd string and *out_len, or NULL (out of
 * memory). */
char *tk_response(const tk_request *r, json_t *model, size_t *out_len);

/* Parses one mutant ("A24G" or "K30R:D31N", any case, spaces ignored) against the wild-type ids of
 * length n with offset; checks letters, range, wild type and repeated positions. Returns 0 and *m
 * (free m->text and m->sites), or -1 with *e (422 invalid_mutation, invalid_mutation_position,
 * wild_type_mismatch; details name the position). index is the mutant's place in the list. */
int tk_parse_mutant(const char *text, const int32_t *wt, size_t n, long offset, int index, tk_mutant *m,
                    pr_error *e);

#endif
