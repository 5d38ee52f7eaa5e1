/* jobs_async.c - POST /jobs storage, status JSON and the job runner thread (see jobs_async.h). */
#include "jobs_async.h"
#include "http.h"
#include "hot.h"
#include "jobs.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK 16                 /* sequences handed to the inference queue at a time (a cancel waits for them) */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;        /* wake-ups (new job, stop) and item completions */
static int stopping, woken, started, finished;
static pthread_t runner;
static const pf_model *model;
static tk_limits limits;
static char current[65];         /* the job the runner works on ("" when none), under mu */
static char owner[33];           /* this daemon process's random id: the owner of the job it runs */
static double lease_s;           /* --job-lease: how long a claimed job stays this process's unrenewed */
static double next_renew;        /* ut_mono() time of the next due lease renewal */
static _Atomic unsigned long long requeued;   /* jobs this process queued again (leases run out) */

/* Wakes the runner. */
void ja_wake(void) {
    pthread_mutex_lock(&mu);
    woken = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* Asks the runner to stop; its sequences still waiting in the queue go back to pending. */
void ja_stop(void) {
    pthread_mutex_lock(&mu);
    stopping = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    jb_drop_background("shutting_down", "the server is shutting down; the sequence runs after the next start");
}

/* Returns 1 once ja_stop was called. */
static int stop_requested(void) {
    pthread_mutex_lock(&mu);
    int s = stopping;
    pthread_mutex_unlock(&mu);
    return s;
}

/* Stores a job unless it exists. */
int ja_submit(const bt_submission *s) {
    db_job j;
    memset(&j, 0, sizeof j);
    memcpy(j.id, s->id, sizeof j.id);
    snprintf(j.task, sizeof j.task, "%s", tk_kind_name(s->kind));
    j.params = s->params;
    snprintf(j.model_sha256, sizeof j.model_sha256, "%s", ut_model_key(model->sha256));
    int rc = db_job_insert(&j, s->n, (const char *const *)s->names, (const char *const *)s->requests);
    if (rc < 0) return -1;
    if (rc == 1) {
        if (db_job_set_state(s->id, "queued", ",cancelled,") == 1) ja_wake();   /* resubmitted: resume */
        return 0;
    }
    ja_wake();
    return 1;
}

/* Cancels a queued or running job; the running one's sequences still waiting in the queue are
 * dropped (they stay pending, so submitting the job again resumes it). */
int ja_cancel(const char *id) {
    int rc = db_job_set_state(id, "cancelled", ",queued,running,");
    pthread_mutex_lock(&mu);
    int running = rc == 1 && !strcmp(current, id);
    pthread_mutex_unlock(&mu);
    if (running) jb_drop_background("cancelled", "the job was cancelled");
    return rc;
}

/* Returns an ISO-8601 UTC time string for Unix seconds t, or JSON null for 0. */
static json_t *iso(double t) {
    if (t <= 0) return json_null();
    time_t s = (time_t)t;
    struct tm tm;
    char buf[40];
    gmtime_r(&s, &tm);
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03dZ", (int)((t - (double)s) * 1000));
    return json_string(buf);
}

/* Returns the status object of a job. */
json_t *ja_job_json(const db_job *j) {
    json_t *params = json_loads(j->params ? j->params : "{}", 0, NULL);
    long long finished_items = j->done + j->failed;
    char self[80], result[90];
    snprintf(self, sizeof self, "/jobs/%s", j->id);
    snprintf(result, sizeof result, "/jobs/%s/result", j->id);
    json_t *o = json_pack("{s:s, s:s, s:o, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:o, s:o, s:o, s:o, s:{s:s, s:s}}",
                          "id", j->id, "task", j->task, "params", params ? params : json_object(), "state", j->state,
                          "model_sha256", j->model_sha256, "total", (json_int_t)j->total, "done", (json_int_t)j->done,
                          "failed", (json_int_t)j->failed, "pending", (json_int_t)(j->total - finished_items),
                          "progress", j->total > 0 ? (double)finished_items / (double)j->total : 1.0,
                          "created_at", iso(j->created_at), "started_at", iso(j->started_at), "finished_at",
                          iso(j->finished_at), "updated_at", iso(j->updated_at), "links", "self", self, "result",
                          result);
    if (o && !strcmp(j->state, "running") && j->started_at > 0) {
        double el = ut_wall() - j->started_at;
        json_object_set_new(o, "elapsed_s", json_real(el));
        if (finished_items > 0 && j->updated_at > j->started_at) {
            double rate = (double)finished_items / (j->updated_at - j->started_at);
            json_object_set_new(o, "sequences_per_s", json_real(rate));
            json_object_set_new(o, "eta_s", json_real((double)(j->total - finished_items) / rate));
        }
    }
    if (o && !strcmp(j->state, "running") && j->owner[0])   /* which daemon runs it, and until when it must renew */
        json_object_set_new(o, "runner", json_pack("{s:s, s:b, s:o}", "id", j->owner, "this_daemon",
                                                   !strcmp(j->owner, owner), "lease_until", iso(j->lease_until)));
    if (o && strcmp(j->state, "running") && j->started_at > 0 && j->finished_at >= j->started_at) {
        double el = j->finished_at - j->started_at;   /* a finished job keeps its run's figures */
        json_object_set_new(o, "elapsed_s", json_real(el));
        if (finished_items > 0 && el > 0)
            json_object_set_new(o, "sequences_per_s", json_real((double)finished_items / el));
    }
    if (o && strcmp(j->model_sha256, ut_model_key(model->sha256)))
        json_object_set_new(o, "note", json_string("submitted for another model or precision (model_sha256 ends in"
                                                   " +bf16 for bf16): it runs when a daemon serving that model"
                                                   " at that precision does"));
    return o;
}

/* Builds the stored error object of a failed sequence. */
static char *error_output(const char *type, const char *msg, json_t *details, size_t *len) {
    json_t *o = json_pack("{s:s, s:s}", "error", msg, "error_type", type);
    if (o && details) {
        const char *k;
        json_t *v;
        json_object_foreach(details, k, v) json_object_set(o, k, v);
    }
    json_decref(details);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    *len = s ? strlen(s) : 0;
    return s;
}

/* Renews the lease of the runner's job id now (force) or when a third of it has passed. Returns 1
 * while the job is still this process's running job, 0 when it is not (cancelled, deleted, or queued
 * again by another daemon after the lease ran out), -1 on a database error. */
static int keep_lease(const char *id, int force) {
    const double now = ut_mono();
    if (!force && now < next_renew) return 1;
    int rc = db_job_renew(id, owner, lease_s);
    if (rc == 1) next_renew = now + lease_s / 3;
    return rc;
}

/* Item completion: counts down the chunk's outstanding sequences. */
static void item_done(jb_job *job, void *arg) {
    (void)job;
    pthread_mutex_lock(&mu);
    (*(int *)arg)--;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* Runs the next chunk of job id. Returns 1 when more may follow, 0 when the job has no pending
 * sequences left, 2 when the chunk stopped early (stopping, an item cancelled, out of memory: some
 * stay pending), -1 on a database error. *after tracks the last index handled. */
static int run_chunk(const char *id, tk_kind kind, long long *after) {
    long long idx[CHUNK];
    char *reqs[CHUNK];
    int n = db_job_pending(id, *after, CHUNK, idx, reqs);
    if (n <= 0) return n;
    jb_job *jobs[CHUNK] = {0};
    int status[CHUNK], keep[CHUNK], pending = 0, stop = 0;
    char *outs[CHUNK] = {0}, rid[CHUNK][65];
    size_t lens[CHUNK];
    const char *rids[CHUNK];
    for (int i = 0; i < n; i++) {
        keep[i] = 1;
        rids[i] = NULL;
        if (stop || stop_requested()) {
            keep[i] = 0;
            stop = 1;
            continue;
        }
        tk_request *r = NULL;
        pr_error e;
        if (tk_parse(kind, reqs[i], strlen(reqs[i]), &limits, ut_model_key(model->sha256), &r, &e)) {
            status[i] = e.status;
            outs[i] = error_output(e.type, e.msg, e.details, &lens[i]);
            continue;
        }
        memcpy(rid[i], r->id, sizeof rid[i]);
        rids[i] = rid[i];
        char *body = NULL;
        size_t blen = 0;
        if (hc_lookup_copy(r->id, 1, &body, &blen) == 1) {   /* a route answered it before */
            status[i] = 200;
            outs[i] = body;
            lens[i] = blen;
            tk_free(r);
            continue;
        }
        pthread_mutex_lock(&mu);
        pending++;
        pthread_mutex_unlock(&mu);
        jobs[i] = jb_submit_background(r, item_done, &pending);
        if (!jobs[i]) {                            /* draining: leave the rest for the next start */
            pthread_mutex_lock(&mu);
            pending--;
            pthread_mutex_unlock(&mu);
            keep[i] = 0;
            stop = 1;
        }
    }
    /* wait for the chunk, renewing the job's lease meanwhile (a chunk of long sequences behind
     * interactive requests can take longer than the lease) */
    pthread_mutex_lock(&mu);
    while (pending > 0) {
        const double due = next_renew - ut_mono();
        struct timespec ts = ut_deadline_in(due > 0.01 ? due : 0.01);
        if (pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT && pending > 0) {
            pthread_mutex_unlock(&mu);
            if (keep_lease(id, 0) != 1) next_renew = ut_mono() + 1.0;   /* lost or trouble: the chunk ends, run_job decides */
            pthread_mutex_lock(&mu);
        }
    }
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++) {
        jb_job *j = jobs[i];
        if (!j) continue;
        if (j->status == 200) {
            status[i] = 200;
            outs[i] = j->body;
            lens[i] = j->body_len;
            j->body = NULL;
        } else if (!strcmp(j->err_type, "shutting_down") || !strcmp(j->err_type, "cancelled")) {
            keep[i] = 0;                           /* not an answer: stays pending (restart, resubmit) */
            stop = 1;
        } else {
            status[i] = j->status;
            outs[i] = error_output(j->err_type, j->err_msg, NULL, &lens[i]);
        }
        jb_release(j);
    }
    /* store what finished (in index order; unfinished ones stay pending) */
    long long sidx[CHUNK];
    int sst[CHUNK], m = 0, rc = 0;
    const char *sout[CHUNK], *srid[CHUNK];
    size_t slen[CHUNK];
    for (int i = 0; i < n; i++) {
        if (!keep[i]) continue;
        if (!outs[i]) {                            /* out of memory building an error: try later */
            stop = 1;
            continue;
        }
        sidx[m] = idx[i];
        sst[m] = status[i];
        sout[m] = outs[i];
        srid[m] = status[i] == 200 ? rids[i] : NULL;
        slen[m] = lens[i];
        m++;
    }
    if (m > 0 && db_job_store(id, m, sidx, sst, srid, sout, slen)) {
        http_log("error", "job: could not store results", "job_id", id, "detail", db_last_error(), (char *)NULL);
        rc = -1;
    }
    for (int i = 0; i < n; i++) {
        free(outs[i]);
        free(reqs[i]);
    }
    if (rc) return -1;
    if (stop) return 2;   /* *after unchanged: the next chunk reads this one's unstored items again */
    *after = idx[n - 1];
    return 1;
}

/* Waits a second (less when the runner is stopping): the pause before retrying after database trouble. */
static void pause_retry(void) {
    pthread_mutex_lock(&mu);
    struct timespec ts = ut_deadline_in(1.0);
    if (!stopping) pthread_cond_timedwait(&cv, &mu, &ts);
    pthread_mutex_unlock(&mu);
}

/* Works through job id (claimed by this process) until it is finished, cancelled, deleted, taken
 * over, or the runner stops. Database trouble pauses and retries (a job is never left running while
 * the runner moves on: it would stay so until its lease ran out). */
static void run_job(const char *id) {
    db_job j;
    int got;
    while ((got = db_job_get(id, &j)) < 0) {
        if (stop_requested()) return;            /* stays running; queued again at the next start */
        pause_retry();
    }
    if (got == 0) return;                        /* deleted */
    tk_kind kind;
    if (tk_kind_parse(j.task, &kind)) {
        db_job_clear(&j);
        db_job_set_state(id, "cancelled", NULL);
        return;
    }
    char total[32];
    snprintf(total, sizeof total, "%lld", j.total);
    http_log("info", "job running", "job_id", id, "task", j.task, "sequences", total, (char *)NULL);
    db_job_clear(&j);
    long long after = -1;
    double t0 = ut_mono();
    for (;;) {
        if (stop_requested()) return;            /* the runner puts it back in the queue */
        int rc = keep_lease(id, 1);              /* still ours and running? (a cancel by any daemon) */
        if (rc == 0) {
            if (db_job_get(id, &j) == 1) {    /* else deleted (or unreadable): nothing to say */
                http_log("info", strcmp(j.state, "cancelled") ? "job taken over by another daemon (its lease ran out)"
                                                              : "job cancelled", "job_id", id, (char *)NULL);
                db_job_clear(&j);
            }
            return;
        }
        if (rc == 1) rc = run_chunk(id, kind, &after);
        if (rc < 0 || rc == 2) {                 /* database trouble or a chunk cut short: pause, retry */
            pause_retry();
            continue;
        }
        if (rc == 1) continue;
        /* no pending items after the last chunk: done, unless cancelled meanwhile (the loop's check
         * says so) or an earlier item is still pending (read them all again) */
        if (stop_requested()) return;
        int f = db_job_finish(id);
        if (f == 1) {
            char secs[32];
            snprintf(secs, sizeof secs, "%.3f", ut_mono() - t0);
            http_log("info", "job done", "job_id", id, "seconds", secs, (char *)NULL);
            return;
        }
        after = -1;
        pause_retry();
    }
}

/* Queues again the jobs of this model whose daemon stopped renewing their lease, logged at level
 * with msg when there were any. Returns their count or -1 (database error). */
static int requeue_expired(const char *level, const char *msg) {
    int n = db_job_requeue_expired(ut_model_key(model->sha256));
    if (n > 0) {
        char c[16];
        requeued += (unsigned long long)n;
        snprintf(c, sizeof c, "%d", n);
        http_log(level, msg, "jobs", c, (char *)NULL);
    }
    return n;
}

/* The runner: one job at a time, oldest first. */
static void *runner_main(void *arg) {
    (void)arg;
    pf_thread_init();   /* --threads: OpenMP's team size is per thread */
    for (;;) {
        if (stop_requested()) break;
        char id[65];
        requeue_expired("warn", "jobs whose daemon stopped renewing their lease (a crash) are queued again");
        int rc = db_job_next(ut_model_key(model->sha256), id);
        if (rc == 1 && db_job_claim(id, owner, lease_s) == 1) {
            next_renew = ut_mono() + lease_s / 3;
            pthread_mutex_lock(&mu);
            memcpy(current, id, sizeof current);
            pthread_mutex_unlock(&mu);
            run_job(id);
            /* stopped mid-job: queued again now, so that another daemon of this model sharing the
             * database can take it (a crash leaves it running until its lease runs out) */
            if (stop_requested()) db_job_release(id, owner);
            pthread_mutex_lock(&mu);
            current[0] = '\0';
            pthread_mutex_unlock(&mu);
            continue;
        }
        pthread_mutex_lock(&mu);
        struct timespec ts = ut_deadline_in(2.0);
        while (!stopping && !woken)
            if (pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT) break;
        woken = 0;
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    finished = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Requeues running jobs and starts the runner. */
int ja_start(const pf_model *m, const tk_limits *lim, double lease, char *err, size_t errlen) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    pthread_condattr_destroy(&ca);
    model = m;
    limits = *lim;
    lease_s = lease;
    ut_random_hex(owner, 16);
    http_log("info", "job runner started", "runner", owner, (char *)NULL);
    if (requeue_expired("info", "jobs left running by a stopped daemon (lease run out) are queued again") < 0) {
        snprintf(err, errlen, "cannot requeue running jobs: %s", db_last_error());
        return -1;
    }
    int rc = pthread_create(&runner, NULL, runner_main, NULL);
    if (rc) {
        snprintf(err, errlen, "cannot start the job runner thread: %s", strerror(rc));
        return -1;
    }
    started = 1;
    return 0;
}

/* Returns the count of jobs this process queued again. */
unsigned long long ja_requeued(void) { return requeued; }

/* Waits for the runner to end. */
int ja_join(double timeout_s) {
    if (!started) return 0;
    pthread_mutex_lock(&mu);
    struct timespec ts = ut_deadline_in(timeout_s);
    while (!finished)
        if (pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT) break;
    int done = finished;
    pthread_mutex_unlock(&mu);
    if (!done) return -1;
    pthread_join(runner, NULL);
    started = 0;
    return 0;
}
