/* reqlog.h - the request log queue (prefix rl_): rows of the SQLite requests table are queued by
 * the HTTP threads and written by one background thread, many rows per transaction, together with
 * the hot map's pending LRU refreshes (hot.h) and, when results are committed without an fsync, a
 * periodic WAL checkpoint that makes them durable (cache.h db_sync), and the checkpoints of a grown
 * WAL (db_set_checkpointer: from rl_start to rl_stop no request's commit runs one). A flush starts as soon as rows
 * wait, at most once per RL_MIN_INTERVAL_S unless RL_BATCH rows wait, so a lightly loaded daemon
 * writes each row within milliseconds and a loaded one writes a few large transactions a second.
 * The queue is bounded (RL_MAX_ROWS): when it is full a row is dropped and counted
 * (rl_dropped, /metrics). rl_stop writes every queued row before returning, so a clean stop
 * (SIGTERM) loses no row of an answered request. */
#ifndef PD_REQLOG_H
#define PD_REQLOG_H

#include "cache.h"

#define RL_MAX_ROWS 16384        /* queued rows before new ones are dropped */
#define RL_BATCH 4096            /* rows written per transaction at most; this many waiting flush at once */
#define RL_MIN_INTERVAL_S 0.02   /* least time between the starts of two flushes */
#define RL_SYNC_INTERVAL_S 1.0   /* results committed without an fsync are checkpointed this often */
#define RL_PRUNE_INTERVAL_S 600.0 /* rows past the retention are deleted this often (and at the start) */
#define RL_PRUNE_BATCH 10000     /* rows deleted per statement */
#define RL_PRUNE_MAX_BATCHES 100 /* statements per pruning round at most */

/* Sets the retention of the requests table (--request-log-days): rows older than days are deleted
 * by the writer at its start and every RL_PRUNE_INTERVAL_S; days <= 0 keeps every row. Call before
 * rl_start. */
void rl_set_retention(double days);

/* Returns the rows deleted by the retention so far. */
unsigned long long rl_pruned(void);

/* Starts the writer thread. Returns 0 or -1 with err. */
int rl_start(char *err, size_t errlen);

/* Queues one row (copied). Without a running writer the row is written at once (db_log_request).
 * Never blocks on the database. */
void rl_push(const db_log_row *row);

/* Writes every queued row (and pending LRU refreshes, and a checkpoint when results are unsynced),
 * then stops and joins the writer. Call after the HTTP server stopped, before db_close_all. */
void rl_stop(void);

/* Returns the rows dropped so far (queue full, or the database refused the write). */
unsigned long long rl_dropped(void);

#endif
