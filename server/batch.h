/* batch.h - asynchronous job submissions (POST /jobs, bin/performer run-jobs): FASTA and JSON
 * bodies turned into one validated request per sequence, the job's content-hash id, and the JSON
 * Lines records of results (prefix bt_). Pure functions: no I/O, no globals, safe on any thread. */
#ifndef PD_BATCH_H
#define PD_BATCH_H

#include <jansson.h>
#include <stddef.h>
#include "task.h"
#include "util.h"

#define BT_NAME_MAX 256          /* bytes kept of a sequence name (FASTA header) */

typedef struct {
    long max_sequences;         /* sequences per job */
    tk_limits tk;               /* per-sequence limits (max_batch is not used) */
} bt_limits;

/* A validated job: one request per sequence, in input order. */
typedef struct {
    tk_kind kind;
    char *params;               /* the task parameters as given, canonical JSON (sorted keys) */
    long long n;                /* sequences */
    char **names;               /* n names (printable ASCII; "" when none) */
    char **requests;            /* n request bodies of the task's route, canonical JSON */
    char id[65];                /* SHA-256 of model, task, and each sequence's name and result id */
} bt_submission;

/* Parses a JSON body {"task", "params"?, exactly one of "sequences" | "items" | "fasta"} and
 * validates every sequence as the task's route would. Returns 0 and *out (bt_free), or -1 with *e
 * (an error about one sequence names it: "item_index", "name"). */
int bt_parse_json(const char *body, size_t len, const bt_limits *lim, const char *model_sha256,
                  bt_submission **out, pr_error *e);

/* Parses a FASTA text for task with parameters given as strings (query-string style: top_k=3,
 * layer=-1, representations=mean,per_residue, method=..., offset=1, mutations=A24G,K30R:D31N,
 * mask_positions=1,4), validating as bt_parse_json. query may be NULL. */
int bt_parse_fasta(const char *text, size_t len, const char *task, json_t *query, const bt_limits *lim,
                   const char *model_sha256, bt_submission **out, pr_error *e);

/* Frees a submission. NULL is fine. */
void bt_free(bt_submission *s);

/* Appends one JSON Lines record (with the newline) for a finished sequence: {"index", "name",
 * "status", "result": <output>} when status is 200, else {"index", "name", "status", "error": ...,
 * "error_type": ...} from the stored error object. */
void bt_result_line(ut_buf *b, long long idx, const char *name, int status, const char *out, size_t len);

#endif
