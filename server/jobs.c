/* jobs.c - inference queue (interactive + background lanes), batching and chunking workers,
 * deadline watchdog, draining (see jobs.h). */
#include "jobs.h"
#include "cache.h"
#include "hot.h"
#include "metrics.h"
#include "predict.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { JS_QUEUED, JS_RUNNING, JS_DONE };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_work, cv_idle, cv_watch;
static jb_job *q_head, *q_tail;       /* waiting interactive jobs, FIFO */
static jb_job *b_head, *b_tail;       /* waiting background jobs, FIFO */
static jb_job **live;                 /* jobs not yet done (queued or running) */
static long n_live, live_cap;
static long q_len, b_len, n_running, reserved, outstanding;
static unsigned long stored_gen;      /* batches of results stored so far (answer_cached) */
static int draining, closed, stopping, started;
static jb_config cfg;
static const pf_model *model;
static json_t *model_json;
static pthread_t *workers, watchdog;
static int n_workers;

/* Drops one reference (lock held); frees the job at zero. */
static void unref_locked(jb_job *j) {
    if (--j->refs > 0) return;
    tk_free(j->req);
    free(j->body);
    free(j);
}

/* Removes j from the live list (lock held). */
static void live_remove(jb_job *j) {
    for (long i = 0; i < n_live; i++)
        if (live[i] == j) {
            live[i] = live[--n_live];
            return;
        }
}

/* Removes j from its queue (lock held); returns 1 when it was queued. */
static int queue_remove(jb_job *j) {
    jb_job **head = j->background ? &b_head : &q_head, **tail = j->background ? &b_tail : &q_tail;
    jb_job **pp = head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return 0;
    *pp = j->next;
    if (*tail == j) *tail = prev;
    j->next = NULL;
    if (j->background) b_len--;
    else q_len--;
    return 1;
}

/* Marks j done with an error or with its already-set 200 body and calls its callback (lock held). */
static void finish_locked(jb_job *j, int status, const char *type, const char *msg) {
    if (j->state == JS_DONE) return;
    j->status = status;
    if (type) snprintf(j->err_type, sizeof j->err_type, "%s", type);
    if (msg) snprintf(j->err_msg, sizeof j->err_msg, "%s", msg);
    if (j->state == JS_RUNNING) n_running--;
    j->state = JS_DONE;
    j->t_done = ut_mono();
    live_remove(j);
    outstanding--;
    pthread_cond_broadcast(&cv_idle);
    j->done(j, j->arg);
}

/* Reserves a queue slot. */
int jb_reserve(void) {
    pthread_mutex_lock(&mu);
    int rc = 0;
    if (draining) rc = -2;
    else if (q_len + reserved >= cfg.queue_cap) rc = -1;
    else {
        reserved++;
        outstanding++;
    }
    pthread_mutex_unlock(&mu);
    if (rc == -1) mt_rejected();
    return rc;
}

/* Gives back an unused reservation. */
void jb_unreserve(void) {
    pthread_mutex_lock(&mu);
    reserved--;
    outstanding--;
    pthread_cond_broadcast(&cv_idle);
    pthread_mutex_unlock(&mu);
}

/* Grows the live list for one more job (lock held). Returns 0 or -1. */
static int live_room(void) {
    if (n_live < live_cap) return 0;
    long nc = live_cap ? live_cap * 2 : 64;
    jb_job **p = realloc(live, (size_t)nc * sizeof *p);
    if (!p) return -1;
    live = p;
    live_cap = nc;
    return 0;
}

/* Appends a new job to its lane and the live list (lock held). */
static void enqueue_locked(jb_job *j) {
    j->t_submit = ut_mono();
    j->stored_gen = stored_gen;       /* results stored after this may answer it (answer_cached) */
    j->refs = 2;                      /* caller + queue/worker */
    j->state = JS_QUEUED;
    live[n_live++] = j;
    jb_job **head = j->background ? &b_head : &q_head, **tail = j->background ? &b_tail : &q_tail;
    if (*tail) (*tail)->next = j;
    else *head = j;
    *tail = j;
    if (j->background) b_len++;
    else q_len++;
    pthread_cond_signal(&cv_work);
}

/* Enqueues a job using a reservation. */
jb_job *jb_submit(tk_request *req, double deadline, jb_done_fn done, void *arg) {
    jb_job *j = calloc(1, sizeof *j);
    pthread_mutex_lock(&mu);
    reserved--;
    if (!j || live_room()) {
        /* Out of memory: NULL (the caller answers 503) or a job already done with 503. */
        outstanding--;
        pthread_cond_broadcast(&cv_idle);
        pthread_mutex_unlock(&mu);
        tk_free(req);
        if (!j) return NULL;
        j->refs = 1;
        j->state = JS_DONE;
        j->status = 503;
        snprintf(j->err_type, sizeof j->err_type, "out_of_memory");
        snprintf(j->err_msg, sizeof j->err_msg, "out of memory; retry later");
        done(j, arg);
        return j;
    }
    j->req = req;
    j->store = 1;
    j->deadline = deadline;
    j->done = done;
    j->arg = arg;
    if (closed) {                     /* draining already gave up waiting: answer at once */
        j->t_submit = ut_mono();
        j->refs = 2;
        j->state = JS_QUEUED;
        live[n_live++] = j;
        finish_locked(j, 503, "shutting_down", "the server is shutting down; retry on another instance");
        unref_locked(j);
    } else {
        enqueue_locked(j);
    }
    pthread_mutex_unlock(&mu);
    return j;
}

/* Enqueues a background job. */
jb_job *jb_submit_background(tk_request *req, jb_done_fn done, void *arg) {
    jb_job *j = calloc(1, sizeof *j);
    pthread_mutex_lock(&mu);
    if (!j || draining || closed || live_room()) {
        pthread_mutex_unlock(&mu);
        free(j);
        tk_free(req);
        return NULL;
    }
    outstanding++;
    j->req = req;
    j->background = 1;
    j->done = done;
    j->arg = arg;
    enqueue_locked(j);
    pthread_mutex_unlock(&mu);
    return j;
}

/* Finishes the waiting background jobs. */
long jb_drop_background(const char *type, const char *msg) {
    long n = 0;
    pthread_mutex_lock(&mu);
    while (b_head) {
        jb_job *j = b_head;
        queue_remove(j);
        finish_locked(j, 503, type, msg);
        unref_locked(j);
        n++;
    }
    pthread_mutex_unlock(&mu);
    return n;
}

/* Drops the caller's reference. */
void jb_release(jb_job *j) {
    if (!j) return;
    pthread_mutex_lock(&mu);
    unref_locked(j);
    pthread_mutex_unlock(&mu);
}

/* Reports queue depth and running jobs. */
void jb_counts(long *queued, long *running) {
    pthread_mutex_lock(&mu);
    *queued = q_len + reserved;
    *running = n_running;
    pthread_mutex_unlock(&mu);
}

/* Returns the background jobs waiting. */
long jb_background_depth(void) {
    pthread_mutex_lock(&mu);
    long n = b_len;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Returns 1 while draining. */
int jb_draining(void) {
    pthread_mutex_lock(&mu);
    int d = draining;
    pthread_mutex_unlock(&mu);
    return d;
}

/* Runs every input of jobs[0..nj) through the model, in chunks of at most chunk_tokens framed
 * tokens (an input longer than that runs alone), hands each input's outputs to its request and
 * builds the response bodies (NULL on out of memory). Returns 0, or -1 with err. */
static int run_batch(pf_ctx *ctx, jb_job **jobs, int nj, char **bodies, size_t *lens_out, char *err, size_t errlen,
                     double *fwd_s) {
    int hidden_layer = jobs[0]->req->hidden_layer, d = model->cfg.d_model;
    size_t chunk_tokens = cfg.batch_tokens > 16384 ? (size_t)cfg.batch_tokens : 16384, cap = chunk_tokens;
    int max_inputs = 0;
    for (int k = 0; k < nj; k++) {
        const tk_request *r = jobs[k]->req;
        for (int i = 0; i < r->n_inputs; i++)
            if (tk_input_len(r, i) + 2 > cap) cap = tk_input_len(r, i) + 2;
        max_inputs += r->n_inputs;
    }
    int max_seqs = max_inputs < (int)(cap / 3) + 1 ? max_inputs : (int)(cap / 3) + 1;   /* framed length >= 3 */
    int32_t *tokens = malloc(cap * sizeof *tokens);
    int *lens = malloc((size_t)max_seqs * sizeof *lens);
    int *owner = malloc((size_t)max_seqs * 2 * sizeof *owner);
    float *logp = malloc(cap * TOK_NRES * sizeof *logp);
    float *hidden = hidden_layer != TK_NO_HIDDEN ? malloc(cap * (size_t)d * sizeof *hidden) : NULL;
    int rc = -1;
    *fwd_s = 0;
    if (!tokens || !lens || !owner || !logp || (hidden_layer != TK_NO_HIDDEN && !hidden)) {
        snprintf(err, errlen, "out of memory for a batch of %zu tokens", cap);
        goto out;
    }
    int k = 0, i = 0;                 /* next input: job k, input i */
    while (k < nj) {
        size_t off = 0;
        int B = 0;
        long residues = 0;
        while (k < nj) {
            const tk_request *r = jobs[k]->req;
            if (i >= r->n_inputs) {
                k++;
                i = 0;
                continue;
            }
            size_t n = tk_input_len(r, i);
            if (B > 0 && (off + n + 2 > chunk_tokens || B == max_seqs)) break;
            tokens[off] = TOK_CLS;
            tk_input(r, i, tokens + off + 1);
            tokens[off + n + 1] = TOK_EOS;
            lens[B] = (int)(n + 2);
            owner[2 * B] = k;
            owner[2 * B + 1] = i;
            B++;
            off += n + 2;
            residues += (long)n;
            i++;
        }
        if (B == 0) break;
        double t0 = ut_mono();
        if (pf_forward_ex(ctx, model, PF_KERNEL_DEFAULT, tokens, lens, B, logp, hidden,
                          hidden_layer == TK_NO_HIDDEN ? -1 : hidden_layer, err, errlen))
            goto out;
        double dt = ut_mono() - t0;
        *fwd_s += dt;
        mt_forward(dt, B, residues);
        off = 0;
        for (int b = 0; b < B; b++) {
            if (tk_consume(jobs[owner[2 * b]]->req, owner[2 * b + 1], logp + off * TOK_NRES,
                           hidden ? hidden + off * (size_t)d : NULL, d)) {
                snprintf(err, errlen, "out of memory while collecting outputs");
                goto out;
            }
            off += (size_t)lens[b];
        }
    }
    for (k = 0; k < nj; k++) bodies[k] = tk_response(jobs[k]->req, model_json, &lens_out[k]);
    rc = 0;
out:
    free(tokens);
    free(lens);
    free(owner);
    free(logp);
    free(hidden);
    return rc;
}

/* The most jobs complete_part handles at once (its arrays are on the stack). */
#define COMPLETE_PART 256

/* complete() for nj <= COMPLETE_PART jobs of a batch of batch_nj: their results committed in one
 * transaction, then put in the hot map. */
static void complete_part(jb_job **jobs, int nj, char **bodies, size_t *blens, const char *fail_msg,
                          double fwd_s, int batch_nj) {
    assert(nj <= COMPLETE_PART);
    int status[COMPLETE_PART], which[COMPLETE_PART], m = 0;
    char msg[COMPLETE_PART][200];
    db_result res[COMPLETE_PART];
    for (int k = 0; k < nj; k++) {
        status[k] = 200;
        msg[k][0] = '\0';
        if (fail_msg) {
            status[k] = 500;
            snprintf(msg[k], sizeof msg[k], "inference failed: %s", fail_msg);
        } else if (!bodies[k]) {
            status[k] = 503;
            snprintf(msg[k], sizeof msg[k], "out of memory while building the response; retry later");
        } else if (jobs[k]->store) {
            res[m] = (db_result){jobs[k]->req->id, jobs[k]->req->canonical, bodies[k], blens[k]};
            which[m++] = k;
        }
    }
    double store_s = 0;
    if (m > 0) {
        const double t0 = ut_mono();
        long ev = 0;
        unsigned long long epoch = hc_epoch();
        if (db_put_many(ut_model_key(model->sha256), res, m, &ev)) {
            for (int i = 0; i < m; i++) {
                status[which[i]] = 503;
                snprintf(msg[which[i]], sizeof msg[which[i]], "could not store the result: %s", db_last_error());
            }
        } else {
            for (int i = 0; i < m; i++) hc_put(res[i].id, res[i].body, res[i].len, epoch);
        }
        mt_evicted(ev);
        store_s = ut_mono() - t0;
    }
    pthread_mutex_lock(&mu);
    if (m > 0) stored_gen++;
    for (int k = 0; k < nj; k++) {
        jb_job *j = jobs[k];
        if (j->state != JS_DONE) {
            j->forward_s = fwd_s;
            j->store_s = j->store ? store_s : 0;
            j->batch_jobs = batch_nj;
            if (status[k] == 200) {
                j->body = bodies[k];
                j->body_len = blens[k];
                bodies[k] = NULL;
                finish_locked(j, 200, NULL, NULL);
            } else {
                finish_locked(j, status[k], status[k] == 500 ? "inference_failed" : "storage_unavailable", msg[k]);
            }
        }
        free(bodies[k]);
        unref_locked(j);
    }
    pthread_mutex_unlock(&mu);
}

/* Stores results and reports the jobs of one batch (bodies are consumed): the results are committed
 * in one transaction per COMPLETE_PART jobs (one commit for a batch of up to that many), then put
 * in the hot map. */
static void complete(jb_job **jobs, int nj, char **bodies, size_t *blens, const char *fail_msg, double fwd_s) {
    for (int k = 0; k < nj; k += COMPLETE_PART)
        complete_part(jobs + k, nj - k < COMPLETE_PART ? nj - k : COMPLETE_PART, bodies + k, blens + k,
                      fail_msg, fwd_s, nj);
}

/* How many jobs from the head of the (interactive, or with bg the background) queue the next batch
 * takes (lock held): the jobs the batch limits admit, less the last few when dropping them gives
 * more tokens per unit of time on the model's threads (pf_forward_span: e.g. 9 equal sequences on
 * 2 threads take as long as 10, so 8 go now and the 9th starts the next batch). Only batches of
 * single-input jobs are trimmed, and none when lens (room for cap entries) is NULL. */
static int batch_take_locked(int bg, int cap, int *lens) {
    int nj = 0, seqs = 0, single = 1;
    long long tokens = 0;
    const jb_job *first = bg ? b_head : q_head;
    for (const jb_job *j = first; j && nj < cap; j = j->next) {
        long long t = j->req->input_tokens;
        if (nj > 0 && (cfg.batch_tokens <= 0 || tokens + t > cfg.batch_tokens ||
                       seqs + j->req->n_inputs > cfg.batch_max_seqs ||
                       j->req->hidden_layer != first->req->hidden_layer))
            break;
        if (!lens || j->req->n_inputs != 1) single = 0;
        else lens[nj] = (int)tk_input_len(j->req, 0) + 2;
        nj++;
        seqs += j->req->n_inputs;
        tokens += t;
        if (cfg.batch_tokens <= 0 || tokens > cfg.batch_tokens) break;  /* a long job runs alone */
    }
    const int nt = omp_get_max_threads();
    if (!single || nj < 3 || nt < 2) return nj;
    int best = nj;
    long long tok = 0;
    for (int k = 0; k < nj; k++) tok += lens[k];
    double best_rate = (double)tok / (double)pf_forward_span(lens, nj);
    for (int n = nj - 1; n >= 2 && n > nj - nt; n--) {
        tok -= lens[n];
        const double rate = (double)tok / (double)pf_forward_span(lens, n);
        if (rate > best_rate * 1.001) { best = n; best_rate = rate; }
    }
    return best;
}

/* Answers the jobs of batch[0..nj) (taken by this worker, lock not held) whose result was stored
 * while they waited, i.e. an identical request was computed just before them, from that result
 * instead of computing it again; moves the others to the front and returns their count. gen =
 * stored_gen when they were taken: a job queued after the last store needs no lookup (the HTTP
 * layer looked before queueing it), so a stream of unique requests costs no lookups at all when
 * the queue is short, and a hot-map lookup per job otherwise. */
static int answer_cached(jb_job **batch, int nj, unsigned long gen) {
    int keep = 0;
    for (int k = 0; k < nj; k++) {
        jb_job *j = batch[k];
        char *body = NULL;
        size_t len = 0;
        if (!j->store || j->stored_gen == gen || hc_lookup_copy(j->req->id, 0, &body, &len) != 1) {
            batch[keep++] = j;
            continue;
        }
        pthread_mutex_lock(&mu);
        if (j->state != JS_DONE) {   /* not already answered by the watchdog (504) */
            j->body = body;
            j->body_len = len;
            body = NULL;
            j->cached = 1;
            j->forward_s = 0;
            j->batch_jobs = 0;
            finish_locked(j, 200, NULL, NULL);
        }
        unref_locked(j);
        pthread_mutex_unlock(&mu);
        free(body);
    }
    return keep;
}

/* Worker: takes the head job plus following short jobs, runs them in one forward pass. */
static void *worker_main(void *arg) {
    (void)arg;
    pf_thread_init();   /* --threads: OpenMP's team size is per thread */
    pf_ctx *ctx = pf_ctx_new(model);
    int cap = cfg.batch_max_seqs > 0 ? cfg.batch_max_seqs : 1;
    jb_job **batch = malloc((size_t)cap * sizeof *batch);
    char **bodies = malloc((size_t)cap * sizeof *bodies);
    size_t *blens = malloc((size_t)cap * sizeof *blens);
    int *lens = malloc((size_t)cap * sizeof *lens);
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!stopping && !q_head && !b_head) pthread_cond_wait(&cv_work, &mu);
        if (!q_head && !b_head) break;
        int bg = q_head == NULL;      /* interactive jobs always go first */
        double now = ut_mono();
        const int nt = batch_take_locked(bg, cap, lens);   /* the batch limits live there */
        for (int k = 0; k < nt; k++) {
            jb_job *j = bg ? b_head : q_head;
            queue_remove(j);
            j->state = JS_RUNNING;
            j->queue_s = now - j->t_submit;
            n_running++;
            batch[k] = j;
        }
        const unsigned long gen = stored_gen;
        pthread_mutex_unlock(&mu);
        const int nj = answer_cached(batch, nt, gen);
        if (nj == 0) {
            pthread_mutex_lock(&mu);
            continue;
        }
        char err[256] = "";
        double fwd = 0;
        memset(bodies, 0, (size_t)nj * sizeof *bodies);
        if (!ctx) {
            snprintf(err, sizeof err, "no inference context (out of memory)");
            complete(batch, nj, bodies, blens, err, 0);
        } else if (run_batch(ctx, batch, nj, bodies, blens, err, sizeof err, &fwd) == 0) {
            complete(batch, nj, bodies, blens, NULL, fwd);
        } else if (nj > 1) {
            for (int k = 0; k < nj; k++) {   /* a failed batch is retried job by job */
                char e1[256] = "";
                char *b1 = NULL;
                size_t l1 = 0;
                int rc = run_batch(ctx, &batch[k], 1, &b1, &l1, e1, sizeof e1, &fwd);
                complete(&batch[k], 1, &b1, &l1, rc ? e1 : NULL, fwd);
            }
        } else {
            complete(batch, nj, bodies, blens, err, fwd);
        }
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    pf_ctx_free(ctx);
    free(batch);
    free(bodies);
    free(blens);
    free(lens);
    return NULL;
}

/* Watchdog: answers jobs past their deadline with 504 (a running forward pass still stores its
 * result for later requests). */
static void *watchdog_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        struct timespec ts = ut_deadline_in(0.05);
        pthread_cond_timedwait(&cv_watch, &mu, &ts);
        double now = ut_mono();
        for (long i = 0; i < n_live;) {
            jb_job *j = live[i];
            if (j->deadline > 0 && now > j->deadline) {
                int queued = queue_remove(j);
                char msg[160];
                snprintf(msg, sizeof msg, "the request did not finish within its deadline (%.0f s, --timeout)",
                         j->deadline - j->t_submit);
                finish_locked(j, 504, "deadline_exceeded", msg);   /* removes j from live */
                if (queued) unref_locked(j);
                continue;
            }
            i++;
        }
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Starts workers and watchdog. */
int jb_start(const pf_model *m, json_t *mj, const jb_config *c, char *err, size_t errlen) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv_work, &ca);
    pthread_cond_init(&cv_idle, &ca);
    pthread_cond_init(&cv_watch, &ca);
    pthread_condattr_destroy(&ca);
    model = m;
    model_json = json_incref(mj);
    cfg = *c;
    if (cfg.batch_max_seqs < 1) cfg.batch_max_seqs = 1;
    workers = calloc((size_t)cfg.workers, sizeof *workers);
    if (!workers) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < cfg.workers; i++) {
        int rc = pthread_create(&workers[i], NULL, worker_main, NULL);
        if (rc) {
            snprintf(err, errlen, "cannot start worker thread: %s", strerror(rc));
            jb_stop(1);
            return -1;
        }
        n_workers++;
    }
    int rc = pthread_create(&watchdog, NULL, watchdog_main, NULL);
    if (rc) {
        snprintf(err, errlen, "cannot start watchdog thread: %s", strerror(rc));
        jb_stop(1);
        return -1;
    }
    started = 1;
    return 0;
}

/* Refuses new work and waits for outstanding jobs; finishes leftovers with 503. */
int jb_drain(double timeout_s) {
    pthread_mutex_lock(&mu);
    draining = 1;
    struct timespec ts = ut_deadline_in(timeout_s);
    while (outstanding > 0) {
        if (pthread_cond_timedwait(&cv_idle, &mu, &ts) == ETIMEDOUT) break;
    }
    int rc = outstanding > 0 ? -1 : 0;
    if (rc) {
        closed = 1;
        while (n_live > 0) {
            jb_job *j = live[0];
            int queued = queue_remove(j);
            finish_locked(j, 503, "shutting_down", "the server is shutting down; retry on another instance");
            if (queued) unref_locked(j);
        }
        ts = ut_deadline_in(0.2);             /* reservations in flight become jobs and are answered at once */
        while (reserved > 0 && pthread_cond_timedwait(&cv_idle, &mu, &ts) != ETIMEDOUT) {}
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Stops watchdog and workers. */
int jb_stop(double timeout_s) {
    int all = 1;
    pthread_mutex_lock(&mu);
    stopping = 1;
    closed = 1;
    pthread_cond_broadcast(&cv_work);
    pthread_cond_broadcast(&cv_watch);
    pthread_mutex_unlock(&mu);
    if (started) pthread_join(watchdog, NULL);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)timeout_s;
    for (int i = 0; i < n_workers; i++) {
        if (pthread_timedjoin_np(workers[i], NULL, &until) != 0) {
            fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"worker still in a forward pass at shutdown\"}\n");
            pthread_detach(workers[i]);
            all = 0;
        }
    }
    n_workers = 0;
    if (!all) return -1;              /* a detached worker still uses the model: keep it */
    free(workers);
    workers = NULL;
    json_decref(model_json);
    model_json = NULL;
    started = 0;
    return 0;
}
