/* hot.c - in-memory hot-result map (see hot.h). */
#include "hot.h"
#include "predict.h"
#include "util.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct hc_blob {
    atomic_long refs;
    size_t len;
    char data[];
};

typedef struct hc_entry hc_entry;
typedef struct hc_alias_t hc_alias_t;

struct hc_alias_t {
    uint64_t hash;
    int kind;
    size_t len;
    hc_entry *entry;
    hc_alias_t *chain;          /* next in the alias bucket */
    hc_alias_t *sibling;        /* next alias of the same entry */
    char body[];
};

struct hc_entry {
    char id[65];
    uint64_t hash;
    hc_blob *blob;
    size_t bytes;               /* accounted bytes: blob + this struct (aliases counted apart) */
    hc_entry *chain;            /* next in the id bucket */
    hc_entry *lru_prev, *lru_next;   /* lru_prev toward the most recent end */
    hc_entry *dirty_prev, *dirty_next;
    int dirty;                  /* on the dirty list (pending LRU refresh) */
    long pending_hits;
    double last_used;           /* wall clock of the last hit */
    hc_alias_t *aliases;
    int n_aliases;
};

#define TOMB_N 1024             /* removals remembered for hc_put's race check */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic size_t max_bytes;  /* 0 = disabled (read without the lock by the fast paths) */
static size_t bytes;
static hc_entry **ids;          /* id buckets */
static hc_alias_t **bodies;     /* alias buckets */
static size_t n_buckets;        /* power of two, for both tables */
static long n_entries, n_aliases;
static hc_entry *lru_head, *lru_tail;    /* head = most recently used */
static hc_entry *dirty_head;
static uint64_t seed;
static unsigned long long epoch, all_removed_at;
static struct { unsigned long long epoch; char id[65]; } tombs[TOMB_N];
static unsigned long long n_tombs;       /* removals recorded (ring index = n_tombs % TOMB_N) */
static unsigned long long n_hits, n_misses, n_evictions;

/* Returns a seeded 64-bit hash of len bytes (not cryptographic; the seed is secret). */
static uint64_t hash_bytes(const void *p, size_t len, uint64_t h) {
    const unsigned char *s = p;
    h ^= seed ^ (len * 0x9E3779B97F4A7C15ull);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, len);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

/* Returns the data of a blob. */
const char *hc_blob_data(const hc_blob *b, size_t *len) {
    *len = b->len;
    return b->data;
}

/* Drops one reference. */
void hc_blob_release(hc_blob *b) {
    if (b && atomic_fetch_sub(&b->refs, 1) == 1) free(b);
}

/* MHD free callback. */
void hc_blob_free_cb(void *cls) { hc_blob_release(cls); }

/* Unlinks e from the LRU list (lock held). */
static void lru_unlink(hc_entry *e) {
    if (e->lru_prev) e->lru_prev->lru_next = e->lru_next;
    else lru_head = e->lru_next;
    if (e->lru_next) e->lru_next->lru_prev = e->lru_prev;
    else lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

/* Puts e at the most recently used end (lock held). */
static void lru_front(hc_entry *e) {
    e->lru_prev = NULL;
    e->lru_next = lru_head;
    if (lru_head) lru_head->lru_prev = e;
    lru_head = e;
    if (!lru_tail) lru_tail = e;
}

/* Takes e off the dirty list (lock held). */
static void dirty_unlink(hc_entry *e) {
    if (!e->dirty) return;
    if (e->dirty_prev) e->dirty_prev->dirty_next = e->dirty_next;
    else dirty_head = e->dirty_next;
    if (e->dirty_next) e->dirty_next->dirty_prev = e->dirty_prev;
    e->dirty_prev = e->dirty_next = NULL;
    e->dirty = 0;
}

/* Counts one hit of e: most recent, pending LRU refresh (lock held). */
static void touch(hc_entry *e) {
    if (e != lru_head) {
        lru_unlink(e);
        lru_front(e);
    }
    e->pending_hits++;
    e->last_used = ut_wall();
    if (!e->dirty) {
        e->dirty = 1;
        e->dirty_prev = NULL;
        e->dirty_next = dirty_head;
        if (dirty_head) dirty_head->dirty_prev = e;
        dirty_head = e;
    }
    n_hits++;
}

/* Returns the entry of id (lock held), or NULL. */
static hc_entry *find(const char *id, uint64_t h) {
    if (!n_buckets) return NULL;
    for (hc_entry *e = ids[h & (n_buckets - 1)]; e; e = e->chain)
        if (e->hash == h && !memcmp(e->id, id, 64)) return e;
    return NULL;
}

/* Unlinks and frees one alias (lock held); the entry's sibling list is the caller's business. */
static void alias_drop(hc_alias_t *a) {
    hc_alias_t **pp = &bodies[a->hash & (n_buckets - 1)];
    while (*pp && *pp != a) pp = &(*pp)->chain;
    if (*pp) *pp = a->chain;
    bytes -= sizeof *a + a->len;
    n_aliases--;
    free(a);
}

/* Removes and frees entry e with its aliases (lock held). */
static void entry_drop(hc_entry *e) {
    hc_entry **pp = &ids[e->hash & (n_buckets - 1)];
    while (*pp && *pp != e) pp = &(*pp)->chain;
    if (*pp) *pp = e->chain;
    lru_unlink(e);
    dirty_unlink(e);
    for (hc_alias_t *a = e->aliases, *next; a; a = next) {
        next = a->sibling;
        alias_drop(a);
    }
    bytes -= e->bytes;
    n_entries--;
    hc_blob_release(e->blob);
    free(e);
}

/* Doubles both bucket tables when entries + aliases outnumber the buckets (lock held). Failure
 * only leaves longer chains. */
static void maybe_grow(void) {
    if ((size_t)(n_entries + n_aliases) <= n_buckets) return;
    size_t nb = n_buckets * 2;
    hc_entry **ni = calloc(nb, sizeof *ni);
    hc_alias_t **na = calloc(nb, sizeof *na);
    if (!ni || !na) {
        free(ni);
        free(na);
        return;
    }
    for (size_t b = 0; b < n_buckets; b++) {
        for (hc_entry *e = ids[b], *next; e; e = next) {
            next = e->chain;
            e->chain = ni[e->hash & (nb - 1)];
            ni[e->hash & (nb - 1)] = e;
        }
        for (hc_alias_t *a = bodies[b], *next; a; a = next) {
            next = a->chain;
            a->chain = na[a->hash & (nb - 1)];
            na[a->hash & (nb - 1)] = a;
        }
    }
    free(ids);
    free(bodies);
    ids = ni;
    bodies = na;
    n_buckets = nb;
}

/* Evicts least recently used entries until bytes <= max_bytes (lock held). */
static void shrink(void) {
    while (bytes > max_bytes && lru_tail) {
        entry_drop(lru_tail);
        n_evictions++;
    }
}

/* Empties the map (lock held). */
static void clear_locked(void) {
    while (lru_head) entry_drop(lru_head);
}

/* Empties the map and frees its tables (lock held); the map is then off (max_bytes 0). */
static void reset_locked(void) {
    clear_locked();
    free(ids);
    free(bodies);
    ids = NULL;
    bodies = NULL;
    n_buckets = 0;
    max_bytes = 0;
}

/* Sets up the map. */
int hc_init(size_t max) {
    pthread_mutex_lock(&mu);
    reset_locked();
    int rc = 0;
    if (max > 0) {
        ids = calloc(1024, sizeof *ids);
        bodies = calloc(1024, sizeof *bodies);
        if (ids && bodies) {
            n_buckets = 1024;
            max_bytes = max;
        } else {
            reset_locked();
            rc = -1;
        }
        if (RAND_bytes((unsigned char *)&seed, sizeof seed) != 1) seed = (uint64_t)(ut_mono() * 1e9);
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Frees the map. */
void hc_free(void) {
    pthread_mutex_lock(&mu);
    reset_locked();
    pthread_mutex_unlock(&mu);
}

/* Returns the removal epoch. */
unsigned long long hc_epoch(void) {
    pthread_mutex_lock(&mu);
    unsigned long long e = epoch;
    pthread_mutex_unlock(&mu);
    return e;
}

/* Looks up by id. */
hc_blob *hc_get(const char *id) {
    if (!max_bytes) return NULL;
    uint64_t h = hash_bytes(id, 64, 0);
    hc_blob *b = NULL;
    pthread_mutex_lock(&mu);
    hc_entry *e = find(id, h);
    if (e) {
        touch(e);
        b = e->blob;
        atomic_fetch_add(&b->refs, 1);
    } else {
        n_misses++;
    }
    pthread_mutex_unlock(&mu);
    return b;
}

/* Looks up by request body. */
hc_blob *hc_get_body(int kind, const char *body, size_t len, char id[65]) {
    if (!max_bytes) return NULL;
    uint64_t h = hash_bytes(body, len, (uint64_t)kind + 1);
    hc_blob *b = NULL;
    pthread_mutex_lock(&mu);
    if (n_buckets)
        for (hc_alias_t *a = bodies[h & (n_buckets - 1)]; a; a = a->chain)
            if (a->hash == h && a->kind == kind && a->len == len && !memcmp(a->body, body, len)) {
                touch(a->entry);
                b = a->entry->blob;
                atomic_fetch_add(&b->refs, 1);
                memcpy(id, a->entry->id, 65);
                break;
            }
    if (!b) n_misses++;
    pthread_mutex_unlock(&mu);
    return b;
}

/* Returns 1 when id was removed after epoch since (lock held). */
static int removed_since(const char *id, unsigned long long since) {
    if (since == epoch) return 0;
    if (all_removed_at > since) return 1;
    if (epoch - since > TOMB_N || n_tombs < epoch - since) return 1;   /* the ring forgot: refuse */
    for (unsigned long long k = 0; k < epoch - since; k++) {
        unsigned long long i = (n_tombs - 1 - k) % TOMB_N;
        if (tombs[i].epoch > since && !memcmp(tombs[i].id, id, 64)) return 1;
    }
    return 0;
}

/* Inserts a result. */
int hc_put(const char *id, const char *response, size_t len, unsigned long long since) {
    if (!max_bytes) return 0;
    size_t need = sizeof(hc_entry) + sizeof(hc_blob) + len;
    if (need > max_bytes / 4) return 0;
    hc_blob *b = malloc(sizeof *b + len);
    hc_entry *e = calloc(1, sizeof *e);
    if (!b || !e) {
        free(b);
        free(e);
        return -1;
    }
    atomic_init(&b->refs, 1);
    b->len = len;
    memcpy(b->data, response, len);
    pr_mark_cached(b->data, len);
    memcpy(e->id, id, 64);
    e->id[64] = '\0';
    e->hash = hash_bytes(id, 64, 0);
    e->blob = b;
    e->bytes = need;
    pthread_mutex_lock(&mu);
    int rc;
    if (!n_buckets || removed_since(id, since)) {
        rc = 0;
    } else if (find(id, e->hash)) {
        rc = 1;
    } else {
        e->chain = ids[e->hash & (n_buckets - 1)];
        ids[e->hash & (n_buckets - 1)] = e;
        lru_front(e);
        bytes += e->bytes;
        n_entries++;
        e = NULL;
        b = NULL;
        maybe_grow();
        shrink();
        rc = 1;
    }
    pthread_mutex_unlock(&mu);
    free(e);
    free(b);
    return rc;
}

/* Adds a body alias of id. */
/* Where an alias of body for id stands (lock held): 0 = id not in the map or its aliases full, 1 =
 * it can be added (*e = id's entry), 2 = this body is already an alias (of id or of another id). */
static int alias_state_locked(int kind, const char *body, size_t len, uint64_t h, const char *id, uint64_t hid,
                              hc_entry **e) {
    *e = find(id, hid);
    if (!*e || (*e)->n_aliases >= HC_MAX_ALIASES) return 0;
    for (hc_alias_t *x = bodies[h & (n_buckets - 1)]; x; x = x->chain)
        if (x->hash == h && x->kind == kind && x->len == len && !memcmp(x->body, body, len)) return 2;
    return 1;
}

int hc_alias(int kind, const char *body, size_t len, const char *id) {
    if (!max_bytes || sizeof(hc_alias_t) + len > max_bytes / 4) return 0;
    uint64_t h = hash_bytes(body, len, (uint64_t)kind + 1), hid = hash_bytes(id, 64, 0);
    hc_entry *e;
    /* look first, so that a result the map did not keep (hc_put refused it) or an alias already
     * there costs no allocation and no copy of the body */
    pthread_mutex_lock(&mu);
    int rc = alias_state_locked(kind, body, len, h, id, hid, &e);
    pthread_mutex_unlock(&mu);
    if (rc != 1) return rc ? 1 : 0;
    hc_alias_t *a = malloc(sizeof *a + len);   /* copied outside the lock */
    if (!a) return -1;
    a->hash = h;
    a->kind = kind;
    a->len = len;
    memcpy(a->body, body, len);
    pthread_mutex_lock(&mu);
    rc = alias_state_locked(kind, body, len, h, id, hid, &e);   /* again: the map may have changed */
    if (rc == 1) {
        a->entry = e;
        a->chain = bodies[h & (n_buckets - 1)];
        bodies[h & (n_buckets - 1)] = a;
        a->sibling = e->aliases;
        e->aliases = a;
        e->n_aliases++;
        n_aliases++;
        bytes += sizeof *a + len;
        a = NULL;
        maybe_grow();
        shrink();
    }
    pthread_mutex_unlock(&mu);
    free(a);
    return rc ? 1 : 0;
}

/* Removes one id or everything. */
void hc_remove(const char *id) {
    pthread_mutex_lock(&mu);
    epoch++;
    if (!id) {
        all_removed_at = epoch;
        clear_locked();
    } else {
        unsigned long long i = n_tombs++ % TOMB_N;
        tombs[i].epoch = epoch;
        snprintf(tombs[i].id, sizeof tombs[i].id, "%.64s", id);
        if (strlen(id) == 64) {
            hc_entry *e = find(id, hash_bytes(id, 64, 0));
            if (e) entry_drop(e);
        }
    }
    pthread_mutex_unlock(&mu);
}

/* Eviction hook of the cache. */
void hc_evicted(const char *id) { hc_remove(id); }

/* Hands out pending LRU refreshes. */
int hc_take_touches(db_touch *out, int cap) {
    int n = 0;
    pthread_mutex_lock(&mu);
    while (dirty_head && n < cap) {
        hc_entry *e = dirty_head;
        memcpy(out[n].id, e->id, 65);
        out[n].last_used = e->last_used;
        out[n].hits = e->pending_hits;
        e->pending_hits = 0;
        dirty_unlink(e);
        n++;
    }
    pthread_mutex_unlock(&mu);
    return n;
}

/* The map, then the database (see hot.h). */
int hc_lookup(const char *id, int db_always, hc_blob **hb, char **body, size_t *len) {
    *body = NULL;
    *len = 0;
    if ((*hb = hc_get(id))) return 2;
    if (max_bytes > 0 && !db_always) return 0;
    unsigned long long epoch = hc_epoch();
    int rc = db_get(id, body, len);
    if (rc != 1) return rc < 0 ? -1 : 0;
    hc_put(id, *body, *len, epoch);
    pr_mark_cached(*body, *len);
    return 1;
}

/* Returns hc_lookup's result as a malloc'd copy (see hot.h). */
int hc_lookup_copy(const char *id, int db_always, char **body, size_t *len) {
    hc_blob *hb = NULL;
    int rc = hc_lookup(id, db_always, &hb, body, len);
    if (rc != 2) return rc;
    size_t n = 0;
    const char *d = hc_blob_data(hb, &n);
    char *c = malloc(n ? n : 1);
    if (c) memcpy(c, d, n);
    hc_blob_release(hb);
    if (!c) return -1;
    *body = c;
    *len = n;
    return 1;
}

/* Fills the counters. */
void hc_stats(hc_stats_t *s) {
    pthread_mutex_lock(&mu);
    s->entries = n_entries;
    s->aliases = n_aliases;
    s->bytes = bytes;
    s->max_bytes = max_bytes;
    s->hits = n_hits;
    s->misses = n_misses;
    s->evictions = n_evictions;
    pthread_mutex_unlock(&mu);
}
