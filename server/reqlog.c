/* reqlog.c - request log queue and its writer thread (see reqlog.h). */
#include "reqlog.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static db_log_row *q, *w;             /* rows being queued; rows being written (swapped per flush) */
static size_t q_len, q_cap, w_cap;
static int running, stopping;
static pthread_t th;
static atomic_ullong dropped;
static _Atomic double retention_s;    /* rows older than this are deleted; 0 = kept forever */
static double next_prune;             /* ut_mono() of the next pruning round (writer thread only) */
static atomic_ullong pruned;

/* Sets the request log's retention (rl_set_retention); 0 keeps every row. */
void rl_set_retention(double days) { retention_s = days > 0 ? days * 86400.0 : 0; }

/* Returns the rows deleted by the retention so far. */
unsigned long long rl_pruned(void) { return atomic_load(&pruned); }

/* Writer thread, lock not held: every RL_PRUNE_INTERVAL_S (and at its start) deletes the rows older
 * than the retention, RL_PRUNE_BATCH at a time (each its own short transaction, so that request
 * rows and results are not held up), at most RL_PRUNE_MAX_BATCHES per round. */
static void prune_old(void) {
    const double keep = retention_s;
    if (keep <= 0 || ut_mono() < next_prune) return;
    next_prune = ut_mono() + RL_PRUNE_INTERVAL_S;
    const double before = ut_wall() - keep;
    for (int i = 0; i < RL_PRUNE_MAX_BATCHES; i++) {
        int n = db_log_prune(before, RL_PRUNE_BATCH);
        if (n > 0) atomic_fetch_add(&pruned, (unsigned long long)n);
        if (n < RL_PRUNE_BATCH) break;   /* done, or the database refused (tried again next round) */
    }
}

/* Returns the rows dropped so far. */
unsigned long long rl_dropped(void) { return atomic_load(&dropped); }

/* Writes n rows in transactions of at most RL_BATCH rows (counting failed ones as dropped). */
static void write_rows(const db_log_row *rows, size_t n) {
    for (size_t i = 0; i < n; i += RL_BATCH) {
        size_t k = n - i < RL_BATCH ? n - i : RL_BATCH;
        if (db_log_batch(rows + i, (int)k)) atomic_fetch_add(&dropped, k);
    }
}

/* The writer: waits for rows, paces flushes, writes, checkpoints unsynced results. */
static void *writer_main(void *arg) {
    (void)arg;
    double next = 0, last_sync = ut_mono();
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!stopping && q_len == 0) {
            pthread_mutex_unlock(&mu);
            db_checkpoint();            /* a grown WAL, when a commit asked (cheap otherwise) */
            prune_old();
            pthread_mutex_lock(&mu);
            if (stopping || q_len > 0) break;
            struct timespec ts = ut_deadline_in(RL_SYNC_INTERVAL_S);
            pthread_cond_timedwait(&cv, &mu, &ts);
            if (q_len == 0 && ut_mono() - last_sync >= RL_SYNC_INTERVAL_S) {
                pthread_mutex_unlock(&mu);
                db_sync();
                last_sync = ut_mono();
                pthread_mutex_lock(&mu);
            }
        }
        double now = ut_mono();
        while (!stopping && q_len < RL_BATCH && now < next) {   /* gather more rows, at most till next */
            struct timespec ts = ut_deadline_in(next - now);
            pthread_cond_timedwait(&cv, &mu, &ts);
            now = ut_mono();
        }
        db_log_row *rows = q;
        size_t n = q_len, cap = q_cap;
        q = w;
        q_cap = w_cap;
        q_len = 0;
        w = rows;
        w_cap = cap;
        int stop = stopping;
        pthread_mutex_unlock(&mu);
        next = now + RL_MIN_INTERVAL_S;
        write_rows(rows, n);
        db_checkpoint();              /* when a commit asked for one (cheap otherwise) */
        if (!stop) prune_old();
        if (stop || ut_mono() - last_sync >= RL_SYNC_INTERVAL_S) {
            db_sync();
            last_sync = ut_mono();
        }
        pthread_mutex_lock(&mu);
        if (stopping && q_len == 0) break;
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Wakes the writer for a WAL checkpoint (db_checkpoint_fn: any thread; never blocks, never touches
 * the database; db_checkpoint knows whether one was asked for). When the queue's lock is busy the
 * writer gets to it on its next round (a row pushed, or RL_SYNC_INTERVAL_S at most). */
static void checkpoint_wake(void) {
    if (pthread_mutex_trylock(&mu) == 0) {
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
    }
}

/* Starts the writer thread. */
int rl_start(char *err, size_t errlen) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&mu);
    stopping = 0;
    next_prune = 0;                   /* the first round right away */
    int rc = pthread_create(&th, NULL, writer_main, NULL);
    running = rc == 0;
    pthread_mutex_unlock(&mu);
    if (rc) {
        snprintf(err, errlen, "cannot start the request log thread: %s", strerror(rc));
        return -1;
    }
    db_set_checkpointer(checkpoint_wake);   /* grown WALs are checkpointed here from now on */
    return 0;
}

/* Queues one row. */
void rl_push(const db_log_row *row) {
    pthread_mutex_lock(&mu);
    if (!running) {
        pthread_mutex_unlock(&mu);
        if (db_log_request(row->time, row->request_id, row->result_id, row->method, row->route, row->status,
                           row->duration_ms, row->cache_hit, row->client))
            atomic_fetch_add(&dropped, 1);
        return;
    }
    if (q_len == q_cap) {
        size_t nc = q_cap ? q_cap * 2 : 256;
        db_log_row *p = nc <= RL_MAX_ROWS ? realloc(q, nc * sizeof *q) : NULL;
        if (!p) {                     /* full (or out of memory): drop and count */
            pthread_mutex_unlock(&mu);
            atomic_fetch_add(&dropped, 1);
            return;
        }
        q = p;
        q_cap = nc;
    }
    q[q_len++] = *row;
    if (q_len == 1 || q_len == RL_BATCH) pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

/* Writes what is queued, stops and joins the writer, frees the buffers. */
void rl_stop(void) {
    db_set_checkpointer(NULL);        /* commits after this checkpoint themselves */
    pthread_mutex_lock(&mu);
    int was = running;
    stopping = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    if (was) pthread_join(th, NULL);
    pthread_mutex_lock(&mu);
    running = 0;
    write_rows(q, q_len);             /* rows pushed while the writer was finishing */
    q_len = 0;
    free(q);
    free(w);
    q = w = NULL;
    q_cap = w_cap = 0;
    pthread_mutex_unlock(&mu);
    if (was) {
        db_checkpoint();
        db_sync();
    }
}
