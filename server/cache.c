/* cache.c - SQLite result cache and request log (see cache.h). */
#include "cache.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { ST_GET, ST_TOUCH, ST_INS, ST_REFRESH, ST_BYTES, ST_EVICT, ST_LOG, ST_PING, ST_BEGIN, ST_COMMIT,
       ST_ROLLBACK, ST_STATS, ST_N };

static const char *const stmt_sql[ST_N] = {
    [ST_GET] = "SELECT response FROM results WHERE id = ?1",
    [ST_TOUCH] = "UPDATE results SET last_used_at = ?2, hits = hits + 1 WHERE id = ?1",
    [ST_INS] = "INSERT OR IGNORE INTO results (id, model_sha256, request, response, bytes, created_at, last_used_at)"
               " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    [ST_REFRESH] = "UPDATE results SET last_used_at = ?2 WHERE id = ?1",
    [ST_BYTES] = "SELECT bytes FROM cache_stats WHERE id = 1",
    [ST_EVICT] = "DELETE FROM results WHERE id IN (SELECT id FROM results WHERE id <> ?1"
                 " ORDER BY last_used_at LIMIT 1)",
    [ST_LOG] = "INSERT INTO requests (time, request_id, result_id, method, route, status, duration_ms, cache_hit,"
               " client) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_PING] = "INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_probe', ?1)",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_STATS] = "SELECT n, bytes FROM cache_stats WHERE id = 1",
};

/* Ordered migrations: entry v-1 moves the schema from version v-1 to v. */
static const char *const migrations[DB_SCHEMA_VERSION] = {
    /* 1: results, request log, size accounting by triggers, key/value meta. */
    "CREATE TABLE results ("
    "  id TEXT PRIMARY KEY,"
    "  model_sha256 TEXT NOT NULL,"
    "  request TEXT NOT NULL,"
    "  response BLOB NOT NULL,"
    "  bytes INTEGER NOT NULL,"
    "  created_at REAL NOT NULL,"
    "  last_used_at REAL NOT NULL,"
    "  hits INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX results_lru ON results (last_used_at);"
    "CREATE TABLE requests ("
    "  seq INTEGER PRIMARY KEY,"
    "  time REAL NOT NULL,"
    "  request_id TEXT,"
    "  result_id TEXT,"
    "  method TEXT NOT NULL,"
    "  route TEXT NOT NULL,"
    "  status INTEGER NOT NULL,"
    "  duration_ms REAL NOT NULL,"
    "  cache_hit INTEGER NOT NULL,"
    "  client TEXT);"
    "CREATE INDEX requests_time ON requests (time);"
    "CREATE TABLE cache_stats (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL, bytes INTEGER NOT NULL);"
    "INSERT INTO cache_stats VALUES (1, 0, 0);"
    "CREATE TRIGGER results_ins AFTER INSERT ON results BEGIN"
    "  UPDATE cache_stats SET n = n + 1, bytes = bytes + NEW.bytes WHERE id = 1; END;"
    "CREATE TRIGGER results_del AFTER DELETE ON results BEGIN"
    "  UPDATE cache_stats SET n = n - 1, bytes = bytes - OLD.bytes WHERE id = 1; END;"
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    /* 2: look up the requests that produced a result. */
    "CREATE INDEX requests_result ON requests (result_id);",
};

typedef struct db_conn {
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    int durable;                /* synchronous=FULL set */
    struct db_conn *next;
} db_conn;

static char g_path[1024];
static long long g_max_bytes;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static db_conn *g_all;
static __thread db_conn *t_conn;
static __thread char t_err[256];

/* Runs a multi-statement SQL string; returns 0 or -1 with err. */
static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Opens a raw connection with WAL, busy_timeout and foreign settings; returns NULL + err. */
static sqlite3 *open_raw(const char *path, char *err, size_t errlen) {
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 10000);
    sqlite3_extended_result_codes(db, 1);
    if (exec_sql(db, "PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;", err, errlen)) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

/* Creates the parent directory chain of path when missing. */
static void make_parent(const char *path) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(dir, 0775);
        *p = '/';
    }
    mkdir(dir, 0775);
}

/* Opens, migrates and probes the database. */
int db_init(const char *path, long long max_bytes, char *err, size_t errlen) {
    char e[512] = "";
    if (strlen(path) >= sizeof g_path) {
        snprintf(err, errlen, "database path too long");
        return -1;
    }
    make_parent(path);
    sqlite3 *db = open_raw(path, e, sizeof e);
    if (!db) {
        snprintf(err, errlen, "cannot open database '%s': %s (is the directory writable?)", path, e);
        return -1;
    }
    char *mode = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        mode = sqlite3_mprintf("%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (!mode || strcmp(mode, "wal")) {
        snprintf(err, errlen, "cannot use database '%s': WAL mode unavailable (%s)", path,
                 mode ? mode : sqlite3_errmsg(db));
        sqlite3_free(mode);
        sqlite3_close(db);
        return -1;
    }
    sqlite3_free(mode);
    if (exec_sql(db, "BEGIN IMMEDIATE", e, sizeof e)) goto fail;
    int version = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version < 0 || version > DB_SCHEMA_VERSION) {
        exec_sql(db, "ROLLBACK", e, sizeof e);
        snprintf(err, errlen, "database '%s' has schema version %d, newer than this daemon's %d (use a newer"
                 " performerd or another --db)", path, version, DB_SCHEMA_VERSION);
        sqlite3_close(db);
        return -1;
    }
    for (int v = version; v < DB_SCHEMA_VERSION; v++) {
        char sql[64];
        if (exec_sql(db, migrations[v], e, sizeof e)) {
            char e2[64];
            exec_sql(db, "ROLLBACK", e2, sizeof e2);
            snprintf(err, errlen, "database '%s': migration to schema version %d failed: %s", path, v + 1, e);
            sqlite3_close(db);
            return -1;
        }
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
        if (exec_sql(db, sql, e, sizeof e)) goto fail;
    }
    if (exec_sql(db, "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', strftime('%s','now'))", e,
                 sizeof e))
        goto fail;
    if (exec_sql(db, "COMMIT", e, sizeof e)) goto fail;
    sqlite3_close(db);
    snprintf(g_path, sizeof g_path, "%s", path);
    g_max_bytes = max_bytes;
    return 0;
fail:
    snprintf(err, errlen, "database '%s' is not writable: %s", path, e);
    exec_sql(db, "ROLLBACK", e, sizeof e);
    sqlite3_close(db);
    return -1;
}

/* Returns this thread's connection, opening it and preparing statements on first use. */
static db_conn *conn(void) {
    if (t_conn) return t_conn;
    if (!g_path[0]) {
        snprintf(t_err, sizeof t_err, "database not initialised");
        return NULL;
    }
    db_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->db = open_raw(g_path, t_err, sizeof t_err);
    if (!c->db) {
        free(c);
        return NULL;
    }
    for (int i = 0; i < ST_N; i++) {
        if (sqlite3_prepare_v3(c->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &c->st[i], NULL) != SQLITE_OK) {
            snprintf(t_err, sizeof t_err, "%s", sqlite3_errmsg(c->db));
            for (int j = 0; j < i; j++) sqlite3_finalize(c->st[j]);
            sqlite3_close(c->db);
            free(c);
            return NULL;
        }
    }
    pthread_mutex_lock(&g_mu);
    c->next = g_all;
    g_all = c;
    pthread_mutex_unlock(&g_mu);
    t_conn = c;
    return c;
}

/* Closes every per-thread connection. */
void db_close_all(void) {
    pthread_mutex_lock(&g_mu);
    db_conn *c = g_all;
    g_all = NULL;
    pthread_mutex_unlock(&g_mu);
    while (c) {
        db_conn *next = c->next;
        for (int i = 0; i < ST_N; i++) sqlite3_finalize(c->st[i]);
        sqlite3_close(c->db);
        free(c);
        c = next;
    }
    t_conn = NULL;
}

/* Records the connection's error message for db_last_error. */
static int fail(db_conn *c) {
    snprintf(t_err, sizeof t_err, "%s", sqlite3_errmsg(c->db));
    return -1;
}

/* Steps a statement expecting SQLITE_DONE and resets it; returns 0 or -1. */
static int run_done(db_conn *c, sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    int ok = rc == SQLITE_DONE || rc == SQLITE_ROW;
    if (!ok) fail(c);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ok ? 0 : -1;
}

/* Looks up a stored result. */
int db_get(const char *id, char **body, size_t *len) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_GET];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        *body = malloc((size_t)n + 1);
        if (*body) {
            if (n) memcpy(*body, p, (size_t)n);
            (*body)[n] = '\0';
            *len = (size_t)n;
            ret = 1;
        } else {
            snprintf(t_err, sizeof t_err, "out of memory");
            ret = -1;
        }
    } else if (rc == SQLITE_DONE) {
        ret = 0;
    } else {
        ret = fail(c);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (ret == 1) {
        st = c->st[ST_TOUCH];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 2, ut_wall());
        run_done(c, st);            /* an LRU refresh failure does not fail the read */
    }
    return ret;
}

/* Stores a result and evicts beyond the bound, in one transaction. */
int db_put(const char *id, const char *model_sha256, const char *request_json, const char *body, size_t len,
           long *evicted) {
    db_conn *c = conn();
    if (evicted) *evicted = 0;
    if (!c) return -1;
    if (!c->durable) {
        char e[128];
        if (exec_sql(c->db, "PRAGMA synchronous = FULL", e, sizeof e)) return fail(c);
        c->durable = 1;
    }
    if (run_done(c, c->st[ST_BEGIN])) return -1;
    double now = ut_wall();
    sqlite3_stmt *st = c->st[ST_INS];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, model_sha256, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, request_json, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 4, body, len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)(len + strlen(request_json)));
    sqlite3_bind_double(st, 6, now);
    if (run_done(c, st)) goto rollback;
    if (sqlite3_changes(c->db) == 0) {
        st = c->st[ST_REFRESH];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 2, now);
        if (run_done(c, st)) goto rollback;
    }
    long n_evicted = 0;
    while (g_max_bytes > 0) {
        st = c->st[ST_BYTES];
        long long bytes = 0;
        if (sqlite3_step(st) == SQLITE_ROW) bytes = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        if (bytes <= g_max_bytes) break;
        st = c->st[ST_EVICT];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        if (run_done(c, st)) goto rollback;
        int ch = sqlite3_changes(c->db);
        if (ch == 0) break;         /* only the new result is left */
        n_evicted += ch;
    }
    if (run_done(c, c->st[ST_COMMIT])) goto rollback;
    if (evicted) *evicted = n_evicted;
    return 0;
rollback:
    {
        char keep[256];
        snprintf(keep, sizeof keep, "%s", t_err);
        run_done(c, c->st[ST_ROLLBACK]);
        snprintf(t_err, sizeof t_err, "%s", keep);
    }
    return -1;
}

/* Binds text or NULL. */
static void bind_opt(sqlite3_stmt *st, int i, const char *s) {
    if (s && *s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

/* Appends one request row. */
int db_log_request(double time, const char *request_id, const char *result_id, const char *method, const char *route,
                   int status, double duration_ms, int cache_hit, const char *client) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_LOG];
    sqlite3_bind_double(st, 1, time);
    bind_opt(st, 2, request_id);
    bind_opt(st, 3, result_id);
    sqlite3_bind_text(st, 4, method ? method : "?", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, route ? route : "?", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 6, status);
    sqlite3_bind_double(st, 7, duration_ms);
    sqlite3_bind_int(st, 8, cache_hit ? 1 : 0);
    bind_opt(st, 9, client);
    return run_done(c, st);
}

/* Probes writability. */
int db_ping(void) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_PING];
    char v[32];
    snprintf(v, sizeof v, "%.3f", ut_wall());
    sqlite3_bind_text(st, 1, v, -1, SQLITE_TRANSIENT);
    return run_done(c, st);
}

/* Returns the number of stored results and their bytes. */
int db_stats(long long *results, long long *bytes) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_STATS];
    int ret = -1;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *results = sqlite3_column_int64(st, 0);
        *bytes = sqlite3_column_int64(st, 1);
        ret = 0;
    } else {
        fail(c);
    }
    sqlite3_reset(st);
    return ret;
}

/* Returns this thread's last database error. */
const char *db_last_error(void) { return t_err; }
