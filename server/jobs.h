/* jobs.h - the inference queue: a bounded FIFO of interactive jobs (predict/score/embed/logits
 * requests) and an unbounded FIFO of background jobs (items of POST /jobs), worker threads that
 * each own a pf_ctx, always take interactive jobs first, batch concurrent short jobs of one lane
 * into one forward pass and run the masked copies of a scoring job in chunks; a deadline
 * watchdog, and draining for shutdown (prefix jb_). An interactive job's result is committed to
 * the cache before it is reported done. */
#ifndef PD_JOBS_H
#define PD_JOBS_H

#include <jansson.h>
#include <stddef.h>
#include "model.h"
#include "task.h"

typedef struct jb_job jb_job;

/* Called exactly once per job, from a worker/watchdog/draining thread, when the result is ready. */
typedef void (*jb_done_fn)(jb_job *job, void *arg);

struct jb_job {
    tk_request *req;            /* owned by the job */
    int background;             /* a POST /jobs item: runs only when no interactive job waits */
    int store;                  /* commit the response to the results cache before reporting */
    double t_submit, deadline;  /* ut_mono() seconds */
    jb_done_fn done;
    void *arg;
    /* results, valid once done has been called */
    int status;                 /* 200 or an error status */
    char *body;                 /* 200: response JSON ("cached":false) */
    size_t body_len;
    char err_type[48], err_msg[256];
    double queue_s, forward_s;  /* time waiting, time in forward passes */
    double store_s;             /* time committing its batch's results to the cache (0 when not stored) */
    double t_done;              /* ut_mono() when done was called */
    int batch_jobs;             /* jobs sharing the forward pass */
    int cached;                 /* 1: answered from a result stored while it waited (no forward pass) */
    /* internal */
    int state, refs;
    unsigned long stored_gen;   /* results stored before it was queued (see answer_cached) */
    jb_job *next;
};

typedef struct {
    int workers;                /* threads, each with its own pf_ctx */
    long queue_cap;             /* pending jobs before jb_reserve refuses */
    long batch_tokens;          /* max framed tokens of jobs batched into one forward pass (0 = no batching);
                                 * one job's inputs run in chunks of max(batch_tokens, 16384) tokens */
    int batch_max_seqs;         /* max sequences in one forward pass */
} jb_config;

/* Starts the workers and the watchdog for model m (kept for the lifetime of the queue); model_json
 * is the "model" object put in responses (a reference is kept). Returns 0 or -1 with err. */
int jb_start(const pf_model *m, json_t *model_json, const jb_config *c, char *err, size_t errlen);

/* Reserves a queue slot: 0 ok, -1 queue full (answer 429), -2 draining (answer 503). */
int jb_reserve(void);

/* Gives back a reservation that will not be used. */
void jb_unreserve(void);

/* Enqueues req (ownership passes to the job) using a reservation; done(job, arg) is called once
 * when it finishes (possibly before this returns); the result is stored in the cache. Returns the
 * job with one reference for the caller (drop with jb_release), or NULL when out of memory (done
 * is then not called). */
jb_job *jb_submit(tk_request *req, double deadline, jb_done_fn done, void *arg);

/* Enqueues req (ownership passes) in the background lane: no reservation, no deadline, not stored
 * in the cache; done is called once as for jb_submit. Returns the job with one reference for the
 * caller, or NULL (req freed, done not called) when draining or out of memory. */
jb_job *jb_submit_background(tk_request *req, jb_done_fn done, void *arg);

/* Finishes every background job still waiting (not running) with 503 and err_type type (they are
 * items of the one running POST /jobs job: at shutdown or when it is cancelled). Returns the count. */
long jb_drop_background(const char *type, const char *msg);

/* Drops the caller's reference to a done job. */
void jb_release(jb_job *j);

/* Reports the interactive jobs waiting (with reservations) and the jobs running. */
void jb_counts(long *queued, long *running);

/* Returns the background jobs waiting. */
long jb_background_depth(void);

/* Refuses new reservations and waits up to timeout_s for every reserved/queued/running job to be
 * done; then finishes whatever is left with 503. Returns 0 when everything finished normally. */
int jb_drain(double timeout_s);

/* Stops the watchdog and the workers, waiting up to timeout_s for a running forward pass. Returns
 * 0, or -1 when a worker is still running (then the model must not be freed). */
int jb_stop(double timeout_s);

/* Returns 1 while jb_drain has been called. */
int jb_draining(void);

#endif
