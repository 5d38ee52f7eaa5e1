/* metrics.c - Prometheus counters, gauges and histograms (see metrics.h). */
#include "metrics.h"
#include "cache.h"
#include "gemm.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERIES 2048
#define MAX_ROUTES 32
static const double lat_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_LAT (sizeof lat_bounds / sizeof lat_bounds[0])
static const double fwd_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
#define N_FWD (sizeof fwd_bounds / sizeof fwd_bounds[0])
static const double seq_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024};
#define N_SEQ (sizeof seq_bounds / sizeof seq_bounds[0])

/* Index of the first bound >= v among n ascending bounds (n when v is over all of them). */
static size_t bucket_of(const double *bounds, size_t n, double v) {
    size_t k = 0;
    while (k < n && v > bounds[k]) k++;
    return k;
}

typedef struct { const char *route; const char *method; int status; unsigned long long n; } series;
typedef struct { const char *route; unsigned long long b[N_LAT + 1]; double sum; unsigned long long n; } hist;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static series req[MAX_SERIES];
static int n_req;
static hist lat[MAX_ROUTES];
static int n_lat;
static unsigned long long cache_hit, cache_miss, rejected, evicted, fwd_n, fwd_seqs, residues;
static unsigned long long fwd_b[N_FWD + 1], seq_b[N_SEQ + 1];
static double fwd_sum;

/* The method label of a request method: one of the standard methods, else "other" (a client
 * chooses the method: its text never becomes a label, so the exposition stays valid and bounded). */
static const char *method_label(const char *method) {
    static const char *const known[] = { "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                                         "TRACE", "CONNECT" };
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
        if (!strcmp(method, known[k])) return known[k];
    return "other";
}

/* Counts one finished HTTP request. */
void mt_request(const char *route, const char *method, int status, double seconds) {
    const char *m = method_label(method);
    pthread_mutex_lock(&mu);
    int i;
    for (i = 0; i < n_req; i++)
        if (req[i].status == status && req[i].method == m && !strcmp(req[i].route, route)) break;
    if (i == n_req && n_req < MAX_SERIES) {
        req[i].route = route;
        req[i].method = m;
        req[i].status = status;
        req[i].n = 0;
        n_req++;
    }
    if (i < n_req) req[i].n++;
    for (i = 0; i < n_lat; i++)
        if (!strcmp(lat[i].route, route)) break;
    if (i == n_lat && n_lat < MAX_ROUTES) {
        memset(&lat[i], 0, sizeof lat[i]);
        lat[i].route = route;
        n_lat++;
    }
    if (i < n_lat) {
        lat[i].b[bucket_of(lat_bounds, N_LAT, seconds)]++;
        lat[i].sum += seconds;
        lat[i].n++;
    }
    pthread_mutex_unlock(&mu);
}

/* Counts one cache lookup. */
void mt_cache(int hit) {
    pthread_mutex_lock(&mu);
    if (hit) cache_hit++; else cache_miss++;
    pthread_mutex_unlock(&mu);
}

/* Counts one forward pass. */
void mt_forward(double seconds, int sequences, long res) {
    pthread_mutex_lock(&mu);
    fwd_b[bucket_of(fwd_bounds, N_FWD, seconds)]++;
    fwd_sum += seconds;
    fwd_n++;
    fwd_seqs += (unsigned long long)sequences;
    seq_b[bucket_of(seq_bounds, N_SEQ, (double)sequences)]++;
    residues += (unsigned long long)res;
    pthread_mutex_unlock(&mu);
}

/* Counts a 429. */
void mt_rejected(void) {
    pthread_mutex_lock(&mu);
    rejected++;
    pthread_mutex_unlock(&mu);
}

/* Counts evictions. */
void mt_evicted(long n) {
    pthread_mutex_lock(&mu);
    evicted += (unsigned long long)n;
    pthread_mutex_unlock(&mu);
}

typedef struct { char *s; size_t len, cap; int oom; } sbuf;

/* Appends printf-formatted text to b. */
__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { b->oom = 1; return; }
        if (b->s && b->len + (size_t)n < b->cap) { b->len += (size_t)n; return; }
        size_t nc = (b->cap ? b->cap * 2 : 8192) + (size_t)n;
        char *p = realloc(b->s, nc);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = nc;
    }
}

/* Appends the cumulative buckets of histogram name (counts[n + 1], the last one over every bound),
 * labels ("" or 'key="value",') going before le. */
static void sb_buckets(sbuf *b, const char *name, const char *labels, const double *bounds, size_t n,
                       const unsigned long long *counts) {
    unsigned long long cum = 0;
    for (size_t k = 0; k <= n; k++) {
        cum += counts[k];
        if (k < n)
            sb_printf(b, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, bounds[k], cum);
        else
            sb_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, cum);
    }
}

/* Renders the exposition text. */
char *mt_render(const mt_gauges *g) {
    sbuf b = {0};
    pthread_mutex_lock(&mu);
    sb_printf(&b, "# HELP performerd_requests_total HTTP requests by route, method and status.\n"
                  "# TYPE performerd_requests_total counter\n");
    for (int i = 0; i < n_req; i++)
        sb_printf(&b, "performerd_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %llu\n", req[i].route,
                  req[i].method, req[i].status, req[i].n);
    sb_printf(&b, "# HELP performerd_request_duration_seconds HTTP request latency by route.\n"
                  "# TYPE performerd_request_duration_seconds histogram\n");
    for (int i = 0; i < n_lat; i++) {
        char labels[160];
        snprintf(labels, sizeof labels, "route=\"%s\",", lat[i].route);
        sb_buckets(&b, "performerd_request_duration_seconds", labels, lat_bounds, N_LAT, lat[i].b);
        sb_printf(&b, "performerd_request_duration_seconds_sum{route=\"%s\"} %.6f\n", lat[i].route, lat[i].sum);
        sb_printf(&b, "performerd_request_duration_seconds_count{route=\"%s\"} %llu\n", lat[i].route, lat[i].n);
    }
    sb_printf(&b, "# HELP performerd_cache_hits_total Model requests (/predict, /score, /embed, /logits) answered from the cache.\n"
                  "# TYPE performerd_cache_hits_total counter\nperformerd_cache_hits_total %llu\n", cache_hit);
    sb_printf(&b, "# HELP performerd_cache_misses_total Model requests that needed the model.\n"
                  "# TYPE performerd_cache_misses_total counter\nperformerd_cache_misses_total %llu\n", cache_miss);
    sb_printf(&b, "# HELP performerd_cache_evictions_total Results evicted (least recently used).\n"
                  "# TYPE performerd_cache_evictions_total counter\nperformerd_cache_evictions_total %llu\n", evicted);
    sb_printf(&b, "# HELP performerd_queue_rejected_total Requests answered 429 because the queue was full.\n"
                  "# TYPE performerd_queue_rejected_total counter\nperformerd_queue_rejected_total %llu\n", rejected);
    sb_printf(&b, "# HELP performerd_queue_depth Inference requests waiting for a worker.\n"
                  "# TYPE performerd_queue_depth gauge\nperformerd_queue_depth %ld\n", g->queue_depth);
    sb_printf(&b, "# HELP performerd_background_queue_depth Sequences of POST /jobs jobs waiting for a worker.\n"
                  "# TYPE performerd_background_queue_depth gauge\nperformerd_background_queue_depth %ld\n",
              g->background_depth);
    sb_printf(&b, "# HELP performerd_jobs_running Inference requests being computed.\n"
                  "# TYPE performerd_jobs_running gauge\nperformerd_jobs_running %ld\n", g->running);
    sb_printf(&b, "# HELP performerd_residues_processed_total Residues run through the model.\n"
                  "# TYPE performerd_residues_processed_total counter\nperformerd_residues_processed_total %llu\n",
              residues);
    sb_printf(&b, "# HELP performerd_forward_sequences_total Sequences run through the model.\n"
                  "# TYPE performerd_forward_sequences_total counter\nperformerd_forward_sequences_total %llu\n",
              fwd_seqs);
    sb_printf(&b, "# HELP performerd_model_forward_seconds Wall time of model forward passes (one per batch).\n"
                  "# TYPE performerd_model_forward_seconds histogram\n");
    sb_buckets(&b, "performerd_model_forward_seconds", "", fwd_bounds, N_FWD, fwd_b);
    sb_printf(&b, "performerd_model_forward_seconds_sum %.6f\nperformerd_model_forward_seconds_count %llu\n", fwd_sum,
              fwd_n);
    sb_printf(&b, "# HELP performerd_batch_sequences Sequences per forward pass (batching of concurrent requests).\n"
                  "# TYPE performerd_batch_sequences histogram\n");
    sb_buckets(&b, "performerd_batch_sequences", "", seq_bounds, N_SEQ, seq_b);
    sb_printf(&b, "performerd_batch_sequences_sum %llu\nperformerd_batch_sequences_count %llu\n", fwd_seqs, fwd_n);
    pthread_mutex_unlock(&mu);
    sb_printf(&b, "# HELP performerd_ready 1 when weights are loaded, the database is writable and not draining.\n"
                  "# TYPE performerd_ready gauge\nperformerd_ready %d\n", g->ready);
    sb_printf(&b, "# HELP performerd_model_trained 1 when the served weights are trained (0 = random init).\n"
                  "# TYPE performerd_model_trained gauge\nperformerd_model_trained %d\n", g->trained);
    sb_printf(&b, "# HELP performerd_model_info The arithmetic of the weight products (--precision).\n"
                  "# TYPE performerd_model_info gauge\nperformerd_model_info{precision=\"%s\"} 1\n",
              gm_precision_name(gm_precision()));
    sb_printf(&b, "# HELP performerd_weights_changed 1 when the weights file on disk differs from the served model"
                  " (restart to load it).\n"
                  "# TYPE performerd_weights_changed gauge\nperformerd_weights_changed %d\n", g->weights_changed);
    sb_printf(&b, "# HELP performerd_connections Open client connections.\n"
                  "# TYPE performerd_connections gauge\nperformerd_connections %ld\n", g->connections);
    sb_printf(&b, "# HELP performerd_connections_cut_total Connections closed for sending their request too slowly"
                  " (--connection-timeout).\n"
                  "# TYPE performerd_connections_cut_total counter\nperformerd_connections_cut_total %llu\n",
              g->connections_cut);
    sb_printf(&b, "# HELP performerd_request_log_dropped_total Request log rows not written (queue full or database"
                  " error).\n"
                  "# TYPE performerd_request_log_dropped_total counter\nperformerd_request_log_dropped_total %llu\n",
              g->log_dropped);
    sb_printf(&b, "# HELP performerd_request_log_pruned_total Request log rows deleted as older than"
                  " --request-log-days.\n# TYPE performerd_request_log_pruned_total counter\n"
                  "performerd_request_log_pruned_total %llu\n", g->log_pruned);
    sb_printf(&b, "# HELP performerd_db_checkpoints_total WAL checkpoints run by the request-log thread (a grown WAL"
                  " copied into the database off the request path).\n"
                  "# TYPE performerd_db_checkpoints_total counter\nperformerd_db_checkpoints_total %llu\n",
              g->db_checkpoints);
    sb_printf(&b, "# HELP performerd_hot_cache_hits_total Results served from the in-memory hot map.\n"
                  "# TYPE performerd_hot_cache_hits_total counter\nperformerd_hot_cache_hits_total %llu\n",
              g->hot_hits);
    sb_printf(&b, "# HELP performerd_hot_cache_evictions_total Entries dropped from the hot map for its size bound.\n"
                  "# TYPE performerd_hot_cache_evictions_total counter\nperformerd_hot_cache_evictions_total %llu\n",
              g->hot_evictions);
    sb_printf(&b, "# HELP performerd_hot_cache_entries Results in the in-memory hot map.\n"
                  "# TYPE performerd_hot_cache_entries gauge\nperformerd_hot_cache_entries %ld\n", g->hot_entries);
    sb_printf(&b, "# HELP performerd_hot_cache_bytes Bytes held by the hot map (bound: --hot-cache-mb).\n"
                  "# TYPE performerd_hot_cache_bytes gauge\nperformerd_hot_cache_bytes %zu\n", g->hot_bytes);
    if (g->jobs_known) {
        static const char *const states[4] = DB_JOB_STATE_NAMES;
        sb_printf(&b, "# HELP performerd_async_jobs POST /jobs jobs in the database by state (of every model"
                      " sharing the file).\n# TYPE performerd_async_jobs gauge\n");
        for (int i = 0; i < 4; i++)
            sb_printf(&b, "performerd_async_jobs{state=\"%s\"} %lld\n", states[i], g->jobs_by_state[i]);
    }
    sb_printf(&b, "# HELP performerd_async_jobs_requeued_total Running jobs this daemon queued again because their"
                  " lease had run out (their daemon crashed or hung; --job-lease).\n"
                  "# TYPE performerd_async_jobs_requeued_total counter\nperformerd_async_jobs_requeued_total %llu\n",
              g->jobs_requeued);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
