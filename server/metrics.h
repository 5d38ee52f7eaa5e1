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

/* Returns the exposition text (text/plain; version=0.0.4) in a malloc'd string; gauges are
 * passed in: queue depth (interactive jobs waiting), jobs running, background sequences waiting
 * (POST /jobs), readiness (1/0), model trained (1/0). */
char *mt_render(long queue_depth, long running, long background_depth, int ready, int trained);

#endif
