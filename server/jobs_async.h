/* jobs_async.h - asynchronous jobs of performerd (POST /jobs; prefix ja_): storing validated
 * submissions (deduplicated by content hash), the job status JSON, cancelling and deleting, and one
 * runner thread that works through queued jobs one at a time, feeding their sequences to the
 * inference queue's background lane (interactive requests always go first) and committing results
 * and progress to SQLite after every chunk. Jobs survive restarts: running jobs go back to queued
 * at start-up and continue where they stopped. */
#ifndef PD_JOBS_ASYNC_H
#define PD_JOBS_ASYNC_H

#include <jansson.h>
#include <stddef.h>
#include "batch.h"
#include "cache.h"
#include "model.h"

/* Requeues the model's running jobs whose lease ran out and starts the runner for model m (kept),
 * with per-sequence limits lim (copied); the runner holds a job it runs with a lease of lease
 * seconds, renewed every third of it (--job-lease). Returns 0 or -1 with err. */
int ja_start(const pf_model *m, const tk_limits *lim, double lease, char *err, size_t errlen);

/* Returns how many running jobs this process queued again because their lease had run out. */
unsigned long long ja_requeued(void);

/* Stores submission s (borrowed) as a queued job and wakes the runner, unless a job with its id
 * exists. Returns 1 when created, 0 when it existed (queued again when it was cancelled), -1 on a
 * database error. */
int ja_submit(const bt_submission *s);

/* Returns the status object of a job (id, task, params, state, progress, counts, times, links). */
json_t *ja_job_json(const db_job *j);

/* Cancels a queued or running job. Returns 1 when cancelled, 0 when it was not queued/running,
 * -1 on error. */
int ja_cancel(const char *id);

/* Wakes the runner (new work). */
void ja_wake(void);

/* Asks the runner to stop after the sequences it has handed to the inference queue (they finish or
 * are refused while draining; unfinished ones stay pending for the next start). */
void ja_stop(void);

/* Waits up to timeout_s for the runner thread to end. Returns 0, or -1 when it is still running. */
int ja_join(double timeout_s);

#endif
