/* cache.h - SQLite result cache, request log and asynchronous-job store for performerd (prefix db_).
 *
 * One connection per thread (opened lazily on first use, closed by db_close_all), WAL mode,
 * busy_timeout, prepared statements only, schema version in PRAGMA user_version with ordered
 * migrations. Results are keyed by their 64-hex id and bounded in size with LRU eviction.
 *
 * Faults: every operation returns -1 (never crashes) when the file is unwritable, the disk is full
 * or the file is gone, and works again once the fault is gone. Once a second the file's identity
 * is checked: a file deleted while running is restored from the still-open database (SQLite
 * backup into a new file, so nothing committed is lost); a file replaced by another is adopted
 * (migrated); meanwhile per-thread connections are never opened with "create", so a deleted file
 * is not silently replaced by an empty one. */
#ifndef PD_CACHE_H
#define PD_CACHE_H

#include <stddef.h>

/* Latest schema version this daemon writes. */
#define DB_SCHEMA_VERSION 4

/* PRAGMA application_id of performerd's databases ("PrFd"): set when a database is created or
 * first migrated; a file with another application id, or with tables but neither id nor schema
 * version (another program's database), is refused rather than written into. */
#define DB_APPLICATION_ID 1349666404

/* Opens (creating the parent directory and file when missing) and migrates the database at path,
 * checks that it is writable, and remembers path and the result bound (max_bytes, 0 = none) for
 * every later connection; the connection stays open until db_close_all (the source of a restore).
 * Returns 0, or -1 with a one-line err. */
int db_init(const char *path, long long max_bytes, char *err, size_t errlen);

/* Closes every per-thread connection and the start-up connection (call once all other threads
 * are stopped). */
void db_close_all(void);

/* A logger for recoveries of the database file: level ("warn", "error"), message, detail. */
typedef void (*db_log_fn)(const char *level, const char *msg, const char *detail);

/* Sets the logger of recoveries (default: none). */
void db_set_log(db_log_fn fn);

/* Looks up result id: returns 1 and a malloc'd copy of the stored response in *body and *len (and
 * refreshes its LRU time), 0 when absent, -1 on a database error. */
int db_get(const char *id, char **body, size_t *len);

/* Stores a result (once; a second put of the same id only refreshes it) and evicts least recently
 * used results beyond the bound, in one committed transaction (synchronous=FULL). Returns 0 or -1;
 * *evicted (may be NULL) receives the number of evicted results. */
int db_put(const char *id, const char *model_sha256, const char *request_json, const char *body,
           size_t len, long *evicted);

/* One result of db_put_many. */
typedef struct {
    const char *id;
    const char *request_json;
    const char *body;
    size_t len;
} db_result;

/* Stores n results (each once; an existing one is only refreshed) and evicts least recently used
 * results beyond the bound (never the ones of this call), in one committed transaction: one commit
 * (and with db_set_result_fsync(1), one fsync) for a whole batch. Pending LRU refreshes of the touch
 * hook are applied first; evicted ids go to the eviction hook after the commit. Returns 0 or -1;
 * *evicted (may be NULL) receives the number of evicted results. */
int db_put_many(const char *model_sha256, const db_result *r, int n, long *evicted);

/* Sets whether a result's commit is fsynced before db_put returns (1, the default: it survives a
 * power loss) or only written to the WAL (0: it survives a crash or SIGKILL of the process, and
 * db_sync makes it durable later). Call before serving. */
void db_set_result_fsync(int on);

/* Checkpoints the WAL when results were committed without an fsync since the last call (cheap
 * otherwise). Returns 0 or -1. */
int db_sync(void);

/* Told, from the committing thread, that a commit left the WAL at DB_CHECKPOINT_PAGES pages or
 * more; it must only wake the thread that calls db_checkpoint (it may not use the database). */
typedef void (*db_checkpoint_fn)(void);

#define DB_CHECKPOINT_PAGES 1000   /* WAL pages that call for a checkpoint (SQLite's auto-checkpoint) */
#define DB_CHECKPOINT_INLINE_PAGES 4000   /* WAL pages at which a commit checkpoints itself anyway: under
                                           * a steady stream of commits the background checkpoint may
                                           * never catch up, and this bounds the WAL (16 MB of pages) */

/* Sets who checkpoints a grown WAL: with wake set, a background thread (wake tells it; it calls
 * db_checkpoint), so that no request's commit pays for copying the WAL into the database and its
 * fsync unless the WAL reached DB_CHECKPOINT_INLINE_PAGES; with NULL (the default) the committing
 * connection checkpoints at once, as SQLite's own auto-checkpoint does. */
void db_set_checkpointer(db_checkpoint_fn wake);

/* Checkpoints the WAL (PASSIVE) when a commit asked for it since the last call (cheap otherwise).
 * Returns 0 or -1. */
int db_checkpoint(void);

/* The checkpoints db_checkpoint ran so far (a grown WAL copied into the database off the request
 * path; /metrics). */
unsigned long long db_checkpoints(void);

/* A pending LRU refresh: a result served from memory hits times, last at last_used (Unix s). */
typedef struct {
    char id[65];
    double last_used;
    long hits;
} db_touch;

/* Hands out up to cap pending LRU refreshes (removing them); returns how many. */
typedef int (*db_touch_fn)(db_touch *out, int cap);

/* Told that result id left the database (evicted), or with NULL that any may have (the file was
 * replaced). */
typedef void (*db_evict_fn)(const char *id);

/* Sets the source of LRU refreshes applied by every db_put_many and db_log_batch (before evicting),
 * and the eviction hook. Either may be NULL. Call before serving. */
void db_set_hooks(db_touch_fn touches, db_evict_fn evicted);

/* One row of the requests table (db_log_batch). route is a static string. */
typedef struct {
    double time;
    char request_id[130];
    char result_id[65];         /* "" = none */
    char method[12];
    const char *route;
    int status;
    double duration_ms;
    int cache_hit;
    char client[64];
} db_log_row;

/* Appends n rows to the requests table and applies pending LRU refreshes, in one transaction.
 * Returns 0 or -1 (nothing written). */
int db_log_batch(const db_log_row *rows, int n);

/* Deletes up to limit rows of the requests table logged before time before (Unix seconds), oldest
 * first. Returns the number deleted or -1. */
int db_log_prune(double before, int limit);

/* Appends one row to the requests table. Returns 0 or -1. */
int db_log_request(double time, const char *request_id, const char *result_id, const char *method,
                   const char *route, int status, double duration_ms, int cache_hit, const char *client);

/* Probes that the database accepts writes (a small committed write). Returns 0 or -1. */
int db_ping(void);

/* Returns the number of stored results and their total bytes (-1 on error). */
int db_stats(long long *results, long long *bytes);

/* Returns the sqlite error message of this thread's connection (static storage). */
const char *db_last_error(void);

/* An asynchronous job (POST /jobs) as stored. */
typedef struct {
    char id[65];
    char task[16];              /* predict, score, embed, logits */
    char *params;               /* canonical parameters JSON (malloc'd; db_job_clear frees it) */
    char model_sha256[72];      /* ut_model_key: the weights SHA-256 (+ "+bf16") */
    char state[16];             /* queued, running, done, cancelled */
    long long total, done, failed;
    double created_at, started_at, finished_at, updated_at;   /* Unix seconds; 0 = not yet */
    char owner[40];             /* running: the job runner id of the daemon running it ("" otherwise) */
    double lease_until;         /* running: when that daemon's lease on it ends (Unix seconds; 0 = none) */
} db_job;

/* Frees the strings of a job read by db_job_get/db_job_list. NULL is fine. */
void db_job_clear(db_job *j);

/* Inserts job j (state queued; id, task, params, model_sha256 used) with n items (names[i],
 * requests[i] = the item's request JSON) in one committed transaction. Returns 0, 1 when a job with
 * that id exists already (nothing written), or -1. */
int db_job_insert(const db_job *j, long long n, const char *const *names, const char *const *requests);

/* Reads job id: 1 and *j (db_job_clear it), 0 when absent, -1 on error. */
int db_job_get(const char *id, db_job *j);

/* Reads up to limit jobs, newest first, into a malloc'd array *out of *n (db_job_clear each, then
 * free). Returns 0 or -1. */
int db_job_list(int limit, db_job **out, int *n);

/* The job states, in the order db_job_states counts them. */
#define DB_JOB_STATE_NAMES {"queued", "running", "done", "cancelled"}

/* Counts the jobs of every model in the file by state: counts[0..3] in DB_JOB_STATE_NAMES order.
 * Returns 0 or -1. */
int db_job_states(long long counts[4]);

/* Writes the id of the oldest queued job of model_sha256 to id: 1, 0 when none, -1 on error. */
int db_job_next(const char *model_sha256, char id[65]);

/* Sets job id's state (running sets started_at once; done/cancelled set finished_at; any state but
 * running ends the owner's lease), only when its state is in from (",queued,running," style list) or
 * from is NULL. Returns the rows changed (0/1) or -1. */
int db_job_set_state(const char *id, const char *state, const char *from);

/* Takes queued job id for owner (a daemon process's random id): running, leased for lease_s seconds.
 * Returns 1, 0 when it is not queued (another daemon took it, cancelled, deleted), or -1. */
int db_job_claim(const char *id, const char *owner, double lease_s);

/* Extends owner's lease of running job id to lease_s seconds from now. Returns 1, 0 when the job is
 * no longer owner's running job (cancelled, deleted, or queued again after the lease ran out), or -1. */
int db_job_renew(const char *id, const char *owner, double lease_s);

/* Puts owner's running job id back in the queue (a stop mid-job). Returns 1, 0 when not owner's, or -1. */
int db_job_release(const char *id, const char *owner);

/* Puts the running jobs of model model_sha256 (a model key, ut_model_key) whose lease has run out
 * (their daemon crashed or hung; jobs of a database from before leases have none) back to queued;
 * jobs of other models, and leases still running, are left alone. Returns the count or -1. */
int db_job_requeue_expired(const char *model_sha256);

/* Reads up to limit unfinished items of job id with index > after, in index order: idx[i] and
 * requests[i] (malloc'd). Returns the number read or -1. */
int db_job_pending(const char *id, long long after, int limit, long long *idx, char **requests);

/* Stores n item results (status 200 or an error status, result id or NULL, output JSON) of job id
 * and adds them to its done/failed counters, in one transaction; items already finished are left
 * alone. Returns 0 or -1. */
int db_job_store(const char *id, int n, const long long *idx, const int *status, const char *const *result_ids,
                 const char *const *outputs, const size_t *lens);

/* Marks running job id done when all its items are finished. Returns 1 when it did, 0, or -1. */
int db_job_finish(const char *id);

/* Called for each finished item: index, name, status, output bytes; returns non-zero to stop. */
typedef int (*db_item_fn)(long long idx, const char *name, int status, const char *out, size_t len, void *arg);

/* Calls fn for up to limit finished items of job id with index >= from, in index order. Returns the
 * number of calls or -1. */
int db_job_items(const char *id, long long from, int limit, db_item_fn fn, void *arg);

/* Deletes job id and its items. Returns 1, 0 when absent, or -1. */
int db_job_delete(const char *id);

#endif
