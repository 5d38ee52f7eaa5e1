/* metrics.h - Prometheus metrics for performerd (prefix mt_). Thread-safe; all counters live for
 * the whole process. */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stddef.h>

/* Counts one finished HTTP request: route label (a static string such as "/predict"), method,
 * status and latency in seconds (histogram per route). */
void mt_request(const char *route, const char *method, int status, double seconds);

/* Counts one result-cache lookup of a model route (hit = 1) or a miss (hit = 0). */
void mt_cache(int hit);

/* Counts one forward pass: wall seconds, sequences in the batch and residues processed. */
void mt_forward(double seconds, int sequences, long residues);

/* Counts a request rejected because the inference queue was full. */
void mt_rejected(void);

/* Counts results evicted from the cache (LRU). */
void mt_evicted(long n);

/* The gauges passed to mt_render. */
typedef struct {
    long queue_depth;           /* interactive inference requests waiting */
    long running;               /* inference requests being computed */
    long background_depth;      /* POST /jobs sequences waiting */
    int ready;                  /* 1/0 */
    int trained;                /* 1/0 */
    int weights_changed;        /* 1 when the weights file on disk is not the served model */
    long connections;           /* open client connections */
    unsigned long long connections_cut;   /* connections shut down by a deadline (guard.h) */
    unsigned long long log_dropped;       /* request log rows not written (reqlog.h) */
    unsigned long long log_pruned;        /* request log rows deleted by --request-log-days */
    unsigned long long db_checkpoints;    /* WAL checkpoints run by the request-log thread (cache.h) */
    unsigned long long hot_hits, hot_evictions;   /* hot map (hot.h) */
    long hot_entries;
    size_t hot_bytes;
    int jobs_known;                       /* 1 when jobs_by_state was read from the database */
    long long jobs_by_state[4];           /* POST /jobs jobs by state, in DB_JOB_STATE_NAMES order (cache.h) */
    unsigned long long jobs_requeued;     /* jobs queued again after their lease ran out (jobs_async.h) */
} mt_gauges;

/* Returns the exposition text (text/plain; version=0.0.4) in a malloc'd string, with the gauges
 * passed in. */
char *mt_render(const mt_gauges *g);

#endif
