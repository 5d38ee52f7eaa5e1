/* cache.h - SQLite result cache and request log for performerd (prefix db_).
 *
 * One connection per thread (opened lazily on first use, closed by db_close_all), WAL mode,
 * busy_timeout, prepared statements only, schema version in PRAGMA user_version with ordered
 * migrations. Results are keyed by their 64-hex id and bounded in size with LRU eviction. */
#ifndef PD_CACHE_H
#define PD_CACHE_H

#include <stddef.h>

/* Latest schema version this daemon writes. */
#define DB_SCHEMA_VERSION 2

/* Opens (creating the parent directory and file when missing) and migrates the database at path,
 * checks that it is writable, and remembers path and the result bound (max_bytes, 0 = none) for
 * every later connection. Returns 0, or -1 with a one-line err. */
int db_init(const char *path, long long max_bytes, char *err, size_t errlen);

/* Closes every per-thread connection (call once all other threads are stopped). */
void db_close_all(void);

/* Looks up result id: returns 1 and a malloc'd copy of the stored response in *body and *len (and
 * refreshes its LRU time), 0 when absent, -1 on a database error. */
int db_get(const char *id, char **body, size_t *len);

/* Stores a result (once; a second put of the same id only refreshes it) and evicts least recently
 * used results beyond the bound, in one committed transaction (synchronous=FULL). Returns 0 or -1;
 * *evicted (may be NULL) receives the number of evicted results. */
int db_put(const char *id, const char *model_sha256, const char *request_json, const char *body,
           size_t len, long *evicted);

/* Appends one row to the requests table. Returns 0 or -1. */
int db_log_request(double time, const char *request_id, const char *result_id, const char *method,
                   const char *route, int status, double duration_ms, int cache_hit, const char *client);

/* Probes that the database accepts writes (a small committed write). Returns 0 or -1. */
int db_ping(void);

/* Returns the number of stored results and their total bytes (-1 on error). */
int db_stats(long long *results, long long *bytes);

/* Returns the sqlite error message of this thread's connection (static storage). */
const char *db_last_error(void);

#endif
