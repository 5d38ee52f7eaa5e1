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

#define DB_JOB_COLS "id, task, params, model_sha256, state, total, done, failed, created_at, started_at," \
                    " finished_at, updated_at"

enum { ST_GET, ST_TOUCH, ST_INS, ST_REFRESH, ST_BYTES, ST_EVICT, ST_LOG, ST_PING, ST_BEGIN, ST_COMMIT,
       ST_ROLLBACK, ST_STATS, ST_JOB_INS, ST_ITEM_INS, ST_JOB_GET, ST_JOB_LIST, ST_JOB_NEXT, ST_JOB_STATE,
       ST_JOB_REQUEUE, ST_ITEM_PENDING, ST_ITEM_STORE, ST_JOB_COUNT, ST_ITEM_READ, ST_ITEM_DEL, ST_JOB_DEL,
       ST_JOB_FINISH, ST_N };

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
    [ST_JOB_INS] = "INSERT OR IGNORE INTO jobs (id, task, params, model_sha256, state, total, created_at, updated_at)"
                   " VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?6)",
    [ST_ITEM_INS] = "INSERT INTO job_items (job_id, idx, name, request) VALUES (?1, ?2, ?3, ?4)",
    [ST_JOB_GET] = "SELECT " DB_JOB_COLS " FROM jobs WHERE id = ?1",
    [ST_JOB_LIST] = "SELECT " DB_JOB_COLS " FROM jobs ORDER BY created_at DESC LIMIT ?1",
    [ST_JOB_NEXT] = "SELECT id FROM jobs WHERE state = 'queued' AND model_sha256 = ?1 ORDER BY created_at, id LIMIT 1",
    [ST_JOB_STATE] = "UPDATE jobs SET state = ?2, updated_at = ?3,"
                     " started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?3 ELSE started_at END,"
                     " finished_at = CASE WHEN ?2 IN ('done', 'cancelled') THEN ?3 ELSE NULL END"
                     " WHERE id = ?1 AND (?4 IS NULL OR instr(?4, ',' || state || ',') > 0)",
    [ST_JOB_REQUEUE] = "UPDATE jobs SET state = 'queued', updated_at = ?1 WHERE state = 'running'",
    [ST_ITEM_PENDING] = "SELECT idx, request FROM job_items WHERE job_id = ?1 AND idx > ?2 AND status IS NULL"
                        " ORDER BY idx LIMIT ?3",
    [ST_ITEM_STORE] = "UPDATE job_items SET status = ?3, result_id = ?4, output = ?5"
                      " WHERE job_id = ?1 AND idx = ?2 AND status IS NULL",
    [ST_JOB_COUNT] = "UPDATE jobs SET done = done + ?2, failed = failed + ?3, updated_at = ?4 WHERE id = ?1",
    [ST_ITEM_READ] = "SELECT idx, name, status, output FROM job_items WHERE job_id = ?1 AND idx >= ?2"
                     " AND status IS NOT NULL ORDER BY idx LIMIT ?3",
    [ST_ITEM_DEL] = "DELETE FROM job_items WHERE job_id = ?1",
    [ST_JOB_DEL] = "DELETE FROM jobs WHERE id = ?1",
    [ST_JOB_FINISH] = "UPDATE jobs SET state = 'done', updated_at = ?2, finished_at = ?2 WHERE id = ?1 AND"
                      " state = 'running' AND done + failed >= total",
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
    /* 3: asynchronous jobs (POST /jobs) and their per-sequence items and results. */
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  task TEXT NOT NULL,"
    "  params TEXT NOT NULL,"
    "  model_sha256 TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  total INTEGER NOT NULL,"
    "  done INTEGER NOT NULL DEFAULT 0,"
    "  failed INTEGER NOT NULL DEFAULT 0,"
    "  created_at REAL NOT NULL,"
    "  started_at REAL,"
    "  finished_at REAL,"
    "  updated_at REAL NOT NULL);"
    "CREATE INDEX jobs_queue ON jobs (state, created_at);"
    "CREATE TABLE job_items ("
    "  job_id TEXT NOT NULL,"
    "  idx INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  request TEXT NOT NULL,"
    "  status INTEGER,"
    "  result_id TEXT,"
    "  output BLOB,"
    "  PRIMARY KEY (job_id, idx));",
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

/* ---- asynchronous jobs -------------------------------------------------------------------------- */

/* Copies a text column into a fixed buffer. */
static void col_text(sqlite3_stmt *st, int i, char *out, size_t cap) {
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, cap, "%s", t ? (const char *)t : "");
}

/* Fills j from a row of DB_JOB_COLS; returns 0 or -1 (out of memory). */
static int job_row(sqlite3_stmt *st, db_job *j) {
    memset(j, 0, sizeof *j);
    col_text(st, 0, j->id, sizeof j->id);
    col_text(st, 1, j->task, sizeof j->task);
    const unsigned char *p = sqlite3_column_text(st, 2);
    j->params = strdup(p ? (const char *)p : "{}");
    col_text(st, 3, j->model_sha256, sizeof j->model_sha256);
    col_text(st, 4, j->state, sizeof j->state);
    j->total = sqlite3_column_int64(st, 5);
    j->done = sqlite3_column_int64(st, 6);
    j->failed = sqlite3_column_int64(st, 7);
    j->created_at = sqlite3_column_double(st, 8);
    j->started_at = sqlite3_column_type(st, 9) == SQLITE_NULL ? 0 : sqlite3_column_double(st, 9);
    j->finished_at = sqlite3_column_type(st, 10) == SQLITE_NULL ? 0 : sqlite3_column_double(st, 10);
    j->updated_at = sqlite3_column_double(st, 11);
    return j->params ? 0 : -1;
}

/* Frees the strings of a job. */
void db_job_clear(db_job *j) {
    if (!j) return;
    free(j->params);
    j->params = NULL;
}

/* Rolls back keeping this thread's error message; returns -1. */
static int rollback_keep(db_conn *c) {
    char keep[256];
    snprintf(keep, sizeof keep, "%s", t_err);
    run_done(c, c->st[ST_ROLLBACK]);
    snprintf(t_err, sizeof t_err, "%s", keep);
    return -1;
}

/* Inserts a job and its items in one transaction. */
int db_job_insert(const db_job *j, long long n, const char *const *names, const char *const *requests) {
    db_conn *c = conn();
    if (!c) return -1;
    if (!c->durable) {
        char e[128];
        if (exec_sql(c->db, "PRAGMA synchronous = FULL", e, sizeof e)) return fail(c);
        c->durable = 1;
    }
    if (run_done(c, c->st[ST_BEGIN])) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_INS];
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->task, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, j->params, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, j->model_sha256, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, n);
    sqlite3_bind_double(st, 6, ut_wall());
    if (run_done(c, st)) return rollback_keep(c);
    if (sqlite3_changes(c->db) == 0) {      /* the same job exists already */
        run_done(c, c->st[ST_ROLLBACK]);
        return 1;
    }
    st = c->st[ST_ITEM_INS];
    for (long long i = 0; i < n; i++) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, i);
        sqlite3_bind_text(st, 3, names[i], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, requests[i], -1, SQLITE_STATIC);
        if (run_done(c, st)) return rollback_keep(c);
    }
    if (run_done(c, c->st[ST_COMMIT])) return rollback_keep(c);
    return 0;
}

/* Reads one job. */
int db_job_get(const char *id, db_job *j) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_GET];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_ROW) ret = job_row(st, j) ? -1 : 1;
    else if (rc == SQLITE_DONE) ret = 0;
    else ret = fail(c);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* Lists the most recent jobs. */
int db_job_list(int limit, db_job **out, int *n) {
    db_conn *c = conn();
    *out = NULL;
    *n = 0;
    if (!c) return -1;
    db_job *v = calloc((size_t)(limit > 0 ? limit : 1), sizeof *v);
    if (!v) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_LIST];
    sqlite3_bind_int(st, 1, limit);
    int rc;
    while (*n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (job_row(st, &v[*n])) break;
        (*n)++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    *out = v;
    return 0;
}

/* Finds the oldest queued job of a model. */
int db_job_next(const char *model_sha256, char id[65]) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_NEXT];
    sqlite3_bind_text(st, 1, model_sha256, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_ROW) {
        col_text(st, 0, id, 65);
        ret = 1;
    } else {
        ret = rc == SQLITE_DONE ? 0 : fail(c);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* Changes a job's state. */
int db_job_set_state(const char *id, const char *state, const char *from) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_STATE];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, ut_wall());
    if (from) sqlite3_bind_text(st, 4, from, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 4);
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* Puts running jobs back in the queue. */
int db_job_requeue_running(void) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_REQUEUE];
    sqlite3_bind_double(st, 1, ut_wall());
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* Reads pending items. */
int db_job_pending(const char *id, long long after, int limit, long long *idx, char **requests) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_ITEM_PENDING];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int(st, 3, limit);
    int n = 0, rc;
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        idx[n] = sqlite3_column_int64(st, 0);
        const unsigned char *t = sqlite3_column_text(st, 1);
        requests[n] = strdup(t ? (const char *)t : "");
        if (!requests[n]) break;
        n++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return n;
}

/* Stores item results and advances the job's counters in one transaction. */
int db_job_store(const char *id, int n, const long long *idx, const int *status, const char *const *result_ids,
                 const char *const *outputs, const size_t *lens) {
    db_conn *c = conn();
    if (!c) return -1;
    if (run_done(c, c->st[ST_BEGIN])) return -1;
    long long ok = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        sqlite3_stmt *st = c->st[ST_ITEM_STORE];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, idx[i]);
        sqlite3_bind_int(st, 3, status[i]);
        if (result_ids[i]) sqlite3_bind_text(st, 4, result_ids[i], -1, SQLITE_STATIC);
        else sqlite3_bind_null(st, 4);
        sqlite3_bind_blob64(st, 5, outputs[i], lens[i], SQLITE_STATIC);
        if (run_done(c, st)) return rollback_keep(c);
        if (sqlite3_changes(c->db) == 1) {
            if (status[i] == 200) ok++;
            else bad++;
        }
    }
    sqlite3_stmt *st = c->st[ST_JOB_COUNT];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, ok);
    sqlite3_bind_int64(st, 3, bad);
    sqlite3_bind_double(st, 4, ut_wall());
    if (run_done(c, st)) return rollback_keep(c);
    if (run_done(c, c->st[ST_COMMIT])) return rollback_keep(c);
    return 0;
}

/* Marks a running job whose items are all finished as done. */
int db_job_finish(const char *id) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_FINISH];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, ut_wall());
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* Reads finished items from an index on. */
int db_job_items(const char *id, long long from, int limit, db_item_fn fn, void *arg) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_ITEM_READ];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, from);
    sqlite3_bind_int(st, 3, limit);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *name = sqlite3_column_text(st, 1);
        const void *out = sqlite3_column_blob(st, 3);
        int len = sqlite3_column_bytes(st, 3);
        if (fn(sqlite3_column_int64(st, 0), name ? (const char *)name : "", sqlite3_column_int(st, 2),
               out ? (const char *)out : "", (size_t)len, arg))
            break;
        n++;
    }
    int ret = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? n : fail(c);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* Deletes a job and its items. */
int db_job_delete(const char *id) {
    db_conn *c = conn();
    if (!c) return -1;
    if (run_done(c, c->st[ST_BEGIN])) return -1;
    sqlite3_stmt *st = c->st[ST_ITEM_DEL];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (run_done(c, st)) return rollback_keep(c);
    st = c->st[ST_JOB_DEL];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (run_done(c, st)) return rollback_keep(c);
    int n = sqlite3_changes(c->db);
    if (run_done(c, c->st[ST_COMMIT])) return rollback_keep(c);
    return n;
}
