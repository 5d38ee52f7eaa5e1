/* hot.h - the in-memory map of hot results in front of the SQLite cache (prefix hc_).
 *
 * Holds the stored responses of recently used results, already marked "cached":true, keyed by
 * result id and, through aliases, by the exact request body of a route (the id of a body is a pure
 * function of the route, the body and the model, so a body seen once needs no parsing again).
 * Bounded by bytes (responses + alias bodies + bookkeeping), least recently used entries leave
 * first. Responses are reference-counted blobs, so a hit is served without copying.
 *
 * Consistency with SQLite: the map only holds results that are committed in the database; the
 * database's LRU eviction (and a replaced database file) removes them here through the cache's
 * eviction hook, and an insert that raced with the removal of its id is refused (hc_put's epoch).
 * Hits are counted per entry and handed to the database as LRU refreshes (hc_take_touches, the
 * cache's touch hook) before every eviction, so the database evicts in true LRU order.
 * Thread-safe (one mutex; every operation is O(1) apart from hashing the body). */
#ifndef PD_HOT_H
#define PD_HOT_H

#include <stddef.h>
#include "cache.h"

/* A reference-counted response body. */
typedef struct hc_blob hc_blob;

/* Returns the bytes of b and their count in *len. */
const char *hc_blob_data(const hc_blob *b, size_t *len);

/* Drops one reference to b (frees it at zero). NULL is fine. Safe on any thread. */
void hc_blob_release(hc_blob *b);

/* The same, with the signature of a libmicrohttpd free callback (cls = the blob). */
void hc_blob_free_cb(void *cls);

/* Sets up the map bounded by max_bytes (0 disables it: every lookup misses, every insert is
 * dropped). A second call empties the map first. Returns 0 or -1 (out of memory). */
int hc_init(size_t max_bytes);

/* Frees the map and every entry (blobs still referenced elsewhere live on until released). */
void hc_free(void);

/* Returns the removal epoch: read it before reading a result from the database, pass it to hc_put. */
unsigned long long hc_epoch(void);

/* Looks up result id: returns a new reference to its response ("cached":true) or NULL. A hit
 * refreshes the entry and counts one pending LRU refresh for the database. */
hc_blob *hc_get(const char *id);

/* Looks up the exact request body of route kind (any small integer): returns a new reference to the
 * response and its id in id, or NULL. A hit counts as hc_get does. */
hc_blob *hc_get_body(int kind, const char *body, size_t len, char id[65]);

/* Looks result id up in the map, then in the database (db_get) when db_always is 1 or the map is
 * off (bound 0), putting a stored result into the map (hc_put, epoch-checked). Returns 2 with *hb
 * (a new reference: release it), 1 with *body and *len (the stored response, malloc'd and marked
 * "cached":true: free it), 0 when neither has it, or -1 when the database failed. Each of *hb and
 * *body is NULL unless returned. The one lookup of a stored result for the HTTP routes and the
 * workers and the background jobs. */
int hc_lookup(const char *id, int db_always, hc_blob **hb, char **body, size_t *len);

/* hc_lookup for a caller that needs its own copy: returns 1 with *body / *len (malloc'd, marked
 * "cached":true: free it), 0 when neither the map nor (with db_always, or the map off) the database
 * has it, -1 when the database failed or memory ran out (the caller then computes the result). */
int hc_lookup_copy(const char *id, int db_always, char **body, size_t *len);

/* Inserts result id with its stored response (len bytes with "cached":false, copied and marked
 * "cached":true), unless the id was removed after epoch since (it may be evicted from the database
 * meanwhile) or the entry would take more than a quarter of the bound. Returns 1 when inserted or
 * already present, 0 when refused, -1 when out of memory. */
int hc_put(const char *id, const char *response, size_t len, unsigned long long since);

/* Adds the body of route kind as an alias of result id when id is in the map (at most
 * HC_MAX_ALIASES per entry). Returns 1 when added or present, else 0 (or -1 out of memory). */
int hc_alias(int kind, const char *body, size_t len, const char *id);
#define HC_MAX_ALIASES 8

/* Removes result id and its aliases (NULL: every entry), and bumps the epoch. */
void hc_remove(const char *id);

/* Same as hc_remove, with the signature of the cache's eviction hook. */
void hc_evicted(const char *id);

/* Hands out up to cap pending LRU refreshes (the cache's touch hook); returns how many. */
int hc_take_touches(db_touch *out, int cap);

/* Counters of the map. */
typedef struct {
    long entries, aliases;
    size_t bytes, max_bytes;
    unsigned long long hits, misses, evictions;
} hc_stats_t;

/* Fills *s with the current counters. */
void hc_stats(hc_stats_t *s);

#endif
