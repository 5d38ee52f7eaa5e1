/* cache.c - SQLite result cache and request log (see cache.h). */
#include "cache.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DB_JOB_COLS "id, task, params, model_sha256, state, total, done, failed, created_at, started_at," \
                    " finished_at, updated_at, owner, lease_until"

enum { ST_GET, ST_TOUCH, ST_INS, ST_REFRESH, ST_BYTES, ST_OLDEST, ST_DEL, ST_TOUCH_N, ST_LOG, ST_PING, ST_BEGIN, ST_COMMIT,
       ST_ROLLBACK, ST_STATS, ST_JOB_INS, ST_ITEM_INS, ST_JOB_GET, ST_JOB_LIST, ST_JOB_NEXT, ST_JOB_STATE,
       ST_JOB_REQUEUE, ST_JOB_EXPIRED, ST_JOB_STATES, ST_JOB_CLAIM, ST_JOB_RENEW, ST_JOB_RELEASE, ST_ITEM_PENDING, ST_ITEM_STORE, ST_JOB_COUNT, ST_ITEM_READ, ST_ITEM_DEL, ST_JOB_DEL,
       ST_JOB_FINISH, ST_LOG_PRUNE, ST_N };

static const char *const stmt_sql[ST_N] = {
    [ST_GET] = "SELECT response FROM results WHERE id = ?1",
    [ST_TOUCH] = "UPDATE results SET last_used_at = ?2, hits = hits + 1 WHERE id = ?1",
    [ST_INS] = "INSERT OR IGNORE INTO results (id, model_sha256, request, response, bytes, created_at, last_used_at)"
               " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    [ST_REFRESH] = "UPDATE results SET last_used_at = ?2 WHERE id = ?1",
    [ST_BYTES] = "SELECT bytes FROM cache_stats WHERE id = 1",
    [ST_OLDEST] = "SELECT id FROM results ORDER BY last_used_at LIMIT ?1",
    [ST_DEL] = "DELETE FROM results WHERE id = ?1",
    [ST_TOUCH_N] = "UPDATE results SET last_used_at = max(last_used_at, ?2), hits = hits + ?3 WHERE id = ?1",
    [ST_LOG] = "INSERT INTO requests (time, request_id, result_id, method, route, status, duration_ms, cache_hit,"
               " client) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_LOG_PRUNE] = "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE time < ?1 ORDER BY time"
                     " LIMIT ?2)",
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
                     " finished_at = CASE WHEN ?2 IN ('done', 'cancelled') THEN ?3 ELSE NULL END,"
                     " owner = CASE WHEN ?2 = 'running' THEN owner END,"
                     " lease_until = CASE WHEN ?2 = 'running' THEN lease_until END"
                     " WHERE id = ?1 AND (?4 IS NULL OR instr(?4, ',' || state || ',') > 0)",
    [ST_JOB_REQUEUE] = "UPDATE jobs SET state = 'queued', updated_at = ?1, owner = NULL, lease_until = NULL"
                       " WHERE state = 'running' AND model_sha256 = ?2 AND (lease_until IS NULL OR lease_until < ?1)",
    [ST_JOB_EXPIRED] = "SELECT 1 FROM jobs WHERE state = 'running' AND model_sha256 = ?2"
                       " AND (lease_until IS NULL OR lease_until < ?1) LIMIT 1",
    [ST_JOB_STATES] = "SELECT state, count(*) FROM jobs GROUP BY state",
    [ST_JOB_CLAIM] = "UPDATE jobs SET state = 'running', owner = ?2, lease_until = ?3, updated_at = ?4,"
                     " started_at = coalesce(started_at, ?4), finished_at = NULL WHERE id = ?1 AND state = 'queued'",
    [ST_JOB_RENEW] = "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND owner = ?2 AND state = 'running'",
    [ST_JOB_RELEASE] = "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, updated_at = ?3"
                       " WHERE id = ?1 AND owner = ?2 AND state = 'running'",
    [ST_ITEM_PENDING] = "SELECT idx, request FROM job_items WHERE job_id = ?1 AND idx > ?2 AND status IS NULL"
                        " ORDER BY idx LIMIT ?3",
    [ST_ITEM_STORE] = "UPDATE job_items SET status = ?3, result_id = ?4, output = ?5"
                      " WHERE job_id = ?1 AND idx = ?2 AND status IS NULL",
    [ST_JOB_COUNT] = "UPDATE jobs SET done = done + ?2, failed = failed + ?3, updated_at = ?4 WHERE id = ?1",
    [ST_ITEM_READ] = "SELECT idx, name, status, output FROM job_items WHERE job_id = ?1 AND idx >= ?2"
                     " AND status IS NOT NULL ORDER BY idx LIMIT ?3",
    [ST_ITEM_DEL] = "DELETE FROM job_items WHERE job_id = ?1",
    [ST_JOB_DEL] = "DELETE FROM jobs WHERE id = ?1",
    [ST_JOB_FINISH] = "UPDATE jobs SET state = 'done', updated_at = ?2, finished_at = ?2, owner = NULL,"
                      " lease_until = NULL WHERE id = ?1 AND"
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
    /* 4: a running job's owner (one daemon process) and the time its lease ends: the owner renews it
     * while it works, and any daemon of the model queues the job again once the lease has run out
     * (a crashed daemon's job), not while its owner is alive. */
    ("ALTER TABLE jobs ADD COLUMN owner TEXT;"
     "ALTER TABLE jobs ADD COLUMN lease_until REAL;"),
};

typedef struct db_conn {
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    int durable;                /* synchronous mode set: 0 as opened (NORMAL), 1 NORMAL, 2 FULL */
    struct db_conn *next;
} db_conn;

static char g_path[1024];
static long long g_max_bytes;
static int g_result_fsync = 1;                              /* db_set_result_fsync */
static atomic_int g_unsynced;                               /* results committed without an fsync */
static db_touch_fn g_take_touches;                          /* db_set_hooks */
static db_evict_fn g_evicted_hook;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;   /* g_all while readers add to it */
static db_conn *g_all;
static __thread db_conn *t_conn;
static __thread unsigned t_gen;                             /* g_gen when t_conn was opened */
static __thread char t_err[256];
static __thread int t_code;                                 /* SQLite result code of the last failure */

/* The database file as a whole. Every public operation holds g_rw for reading; checking the file
 * and recovering from a deleted or replaced file holds it for writing, so no connection is in use
 * then. g_keeper is the start-up connection, kept open for the daemon's lifetime: it is the source
 * of the restore when the file is deleted (the open descriptors keep the old inode readable). */
enum { DB_OK, DB_RESTORE_PENDING, DB_BROKEN };
#define DB_CHECK_MS 1000            /* how often the file's identity is checked */
static pthread_rwlock_t g_rw;
static sqlite3 *g_keeper;
static dev_t g_dev;
static ino_t g_ino;
static int g_state = DB_OK;
static unsigned g_gen = 1;          /* bumped when every connection was closed (t_conn is stale) */
static char g_broken[700];          /* why the database is unavailable (DB_BROKEN) */
static _Atomic long long g_next_check;

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

static _Atomic(db_checkpoint_fn) g_ckpt_wake;   /* db_set_checkpointer */
static atomic_int g_ckpt_wanted;                   /* a commit asked for a checkpoint */
static atomic_ullong g_ckpt_runs;                  /* checkpoints db_checkpoint ran */

/* sqlite3_wal_hook of every connection, in place of SQLite's auto-checkpoint: at DB_CHECKPOINT_PAGES
 * pages, wakes the checkpointer (once until it runs), or without one (or at DB_CHECKPOINT_INLINE_PAGES)
 * checkpoints here. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages) {
    (void)arg;
    if (pages < DB_CHECKPOINT_PAGES) return SQLITE_OK;
    db_checkpoint_fn wake = atomic_load(&g_ckpt_wake);
    if (wake && pages < DB_CHECKPOINT_INLINE_PAGES) {
        if (!atomic_exchange(&g_ckpt_wanted, 1)) wake();
    } else {
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    }
    return SQLITE_OK;
}

/* Opens a raw connection with busy_timeout and the session settings (create: create the file when
 * missing; only start-up and recovery do, so a deleted file is never silently replaced by an empty
 * one); returns NULL + err. */
static sqlite3 *open_raw(const char *path, int create, char *err, size_t errlen) {
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 10000);
    sqlite3_extended_result_codes(db, 1);
    sqlite3_wal_hook(db, wal_hook, NULL);   /* replaces the auto-checkpoint (see wal_hook) */
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

/* Returns the first integer of a one-row query on db (-1 when it fails). */
static long long query_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Whether the open database (schema version version) belongs to another program: an application id
 * other than performerd's, or none and no schema version but tables of its own. Returns 0, or 1
 * (or -1 when it cannot tell) with a one-line err naming the file and the fix. */
static int foreign_file(sqlite3 *db, const char *path, long long version, char *err, size_t errlen) {
    const long long app = query_int(db, "PRAGMA application_id");
    const long long tables = query_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'");
    if (app < 0 || tables < 0) {
        snprintf(err, errlen, "cannot read database '%s': %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (app == DB_APPLICATION_ID || (app == 0 && (version > 0 || tables == 0))) return 0;
    if (app != 0)
        snprintf(err, errlen, "database '%s' belongs to another application (application_id %lld, performerd's is"
                 " %d): use another --db", path, app, DB_APPLICATION_ID);
    else
        snprintf(err, errlen, "database '%s' holds %lld table(s) of another program and no performerd schema: use"
                 " another --db (performerd does not write into other databases)", path, tables);
    return 1;
}

/* Opens (creating it and its directory when missing) a database file, sets WAL mode, applies the
 * migrations and probes a write. Returns the connection, or NULL with a one-line err. */
static sqlite3 *open_file(const char *path, char *err, size_t errlen) {
    char e[512] = "";
    make_parent(path);
    sqlite3 *db = open_raw(path, 1, e, sizeof e);
    if (!db) {
        snprintf(err, errlen, "cannot open database '%s': %s (is the directory writable?)", path, e);
        return NULL;
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
        return NULL;
    }
    sqlite3_free(mode);
    if (exec_sql(db, "BEGIN IMMEDIATE", e, sizeof e)) goto fail;
    const long long version = query_int(db, "PRAGMA user_version");
    if (foreign_file(db, path, version, err, errlen)) {
        exec_sql(db, "ROLLBACK", e, sizeof e);
        sqlite3_close(db);
        return NULL;
    }
    if (version < 0 || version > DB_SCHEMA_VERSION) {
        exec_sql(db, "ROLLBACK", e, sizeof e);
        snprintf(err, errlen, "database '%s' has schema version %lld, newer than this daemon's %d (use a newer"
                 " performerd or another --db)", path, version, DB_SCHEMA_VERSION);
        sqlite3_close(db);
        return NULL;
    }
    for (int v = (int)version; v < DB_SCHEMA_VERSION; v++) {
        char sql[64];
        if (exec_sql(db, migrations[v], e, sizeof e)) {
            char e2[64];
            exec_sql(db, "ROLLBACK", e2, sizeof e2);
            snprintf(err, errlen, "database '%s': migration to schema version %d failed: %s", path, v + 1, e);
            sqlite3_close(db);
            return NULL;
        }
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
        if (exec_sql(db, sql, e, sizeof e)) goto fail;
    }
    /* DB_APPLICATION_ID (a literal: exec_sql takes literals only; the unit test reads it back) */
    if (exec_sql(db, "PRAGMA application_id = 1349666404", e, sizeof e)) goto fail;
    if (exec_sql(db, "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', strftime('%s','now'))", e,
                 sizeof e))
        goto fail;
    if (exec_sql(db, "COMMIT", e, sizeof e)) goto fail;
    return db;
fail:
    snprintf(err, errlen, "database '%s' is not writable: %s", path, e);
    exec_sql(db, "ROLLBACK", e, sizeof e);
    sqlite3_close(db);
    return NULL;
}

/* Records the identity (device, inode) of the file at g_path; 0 or -1. */
static int remember_identity(void) {
    struct stat st;
    if (stat(g_path, &st)) return -1;
    g_dev = st.st_dev;
    g_ino = st.st_ino;
    return 0;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void close_all(int keeper);
static void recover(void);
static void log_event(const char *level, const char *msg, const char *detail);

/* Initialises g_rw, writer-preferring (a recovery is not starved by a stream of operations). */
static void init_lock(void) {
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&g_rw, &ra);
    pthread_rwlockattr_destroy(&ra);
}

/* Opens, migrates and probes the database, and keeps the connection as the keeper. */
int db_init(const char *path, long long max_bytes, char *err, size_t errlen) {
    if (strlen(path) >= sizeof g_path - 16) {
        snprintf(err, errlen, "database path too long");
        return -1;
    }
    pthread_once(&g_once, init_lock);
    close_all(1);                   /* a second db_init (tests) starts over */
    sqlite3 *db = open_file(path, err, errlen);
    if (!db) return -1;
    snprintf(g_path, sizeof g_path, "%s", path);
    g_max_bytes = max_bytes;
    g_keeper = db;
    g_state = DB_OK;
    remember_identity();
    atomic_store(&g_next_check, 0);
    return 0;
}

/* Returns this thread's connection, opening it and preparing statements on first use (or after a
 * recovery closed them all). Call with g_rw held for reading. */
static db_conn *conn(void) {
    if (t_conn && t_gen == g_gen) return t_conn;
    t_conn = NULL;                  /* closed and freed by a recovery */
    if (!g_path[0]) {
        snprintf(t_err, sizeof t_err, "database not initialised");
        return NULL;
    }
    if (g_state == DB_BROKEN) {
        snprintf(t_err, sizeof t_err, "%.250s", g_broken);
        return NULL;
    }
    db_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->db = open_raw(g_path, 0, t_err, sizeof t_err);
    if (!c->db) {
        free(c);
        atomic_store(&g_next_check, 0);   /* the file may be gone: check at once */
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
    t_gen = g_gen;
    return c;
}

/* Closes every per-thread connection (they become stale for their threads) and, with keeper, the
 * keeper too. Call with g_rw held for writing, or when no other thread runs. */
static void close_all(int keeper) {
    pthread_mutex_lock(&g_mu);
    db_conn *c = g_all;
    g_all = NULL;
    pthread_mutex_unlock(&g_mu);
    while (c) {
        db_conn *next = c->next;
        for (int i = 0; i < ST_N; i++) sqlite3_finalize(c->st[i]);
        sqlite3_close_v2(c->db);
        free(c);
        c = next;
    }
    if (keeper && g_keeper) {
        sqlite3_close_v2(g_keeper);
        g_keeper = NULL;
    }
    t_conn = NULL;
    g_gen++;
}

/* Closes every connection, the keeper last (the last close checkpoints: a clean stop leaves one
 * file); a file deleted since the last check is restored first, so nothing committed is lost. */
void db_close_all(void) {
    if (g_path[0] && g_keeper) {
        pthread_rwlock_wrlock(&g_rw);
        recover();
        if (g_state == DB_RESTORE_PENDING)
            log_event("error", "the database file was deleted and could not be restored; what it held since the"
                      " last start is lost", g_path);
        pthread_rwlock_unlock(&g_rw);
    }
    close_all(1);
}

static db_log_fn g_log;

/* Sets the function that logs recoveries of the database file. */
void db_set_log(db_log_fn fn) { g_log = fn; }

/* Logs one event through g_log. */
static void log_event(const char *level, const char *msg, const char *detail) {
    if (g_log) g_log(level, msg, detail);
}

/* fsyncs the directory holding path (so a rename in it is durable). */
static void sync_parent(const char *path) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* The file was deleted while open: copies the database, as the keeper still reads it, to a new file
 * at g_path (SQLite online backup into PATH.restore, then rename), closing every old connection
 * first (their -wal/-shm files, unlinked too, belong to the deleted file). Returns 0, or -1 with
 * err and nothing changed (the old connections stay usable for reads). g_rw held for writing. */
static int restore_deleted(char *err, size_t errlen) {
    char tmp[1100], side[1100];
    snprintf(tmp, sizeof tmp, "%s.restore", g_path);
    make_parent(g_path);
    static const char *const sfx[] = {"", "-journal", "-wal", "-shm"};
    for (int i = 0; i < 4; i++) {
        snprintf(side, sizeof side, "%s%s", tmp, sfx[i]);
        unlink(side);
    }
    sqlite3 *dst = open_raw(tmp, 1, err, errlen);
    if (!dst) return -1;
    sqlite3_backup *b = sqlite3_backup_init(dst, "main", g_keeper, "main");
    int rc = b ? sqlite3_backup_step(b, -1) : sqlite3_errcode(dst);
    if (b) sqlite3_backup_finish(b);
    char e[256] = "";
    if (rc == SQLITE_DONE && !exec_sql(dst, "PRAGMA journal_mode = WAL", e, sizeof e)) {
        sqlite3_stmt *st = NULL;      /* the copy must be sound before it replaces anything */
        if (sqlite3_prepare_v2(dst, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW ||
            !sqlite3_column_text(st, 0) || strcmp((const char *)sqlite3_column_text(st, 0), "ok"))
            snprintf(e, sizeof e, "the copy fails PRAGMA quick_check");
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_DONE || e[0]) {
        snprintf(err, errlen, "cannot copy the deleted database to '%.300s': %.200s", tmp, e[0] ? e : sqlite3_errstr(rc));
        sqlite3_close_v2(dst);
        unlink(tmp);
        return -1;
    }
    if (sqlite3_close(dst) != SQLITE_OK) {
        snprintf(err, errlen, "cannot close the copy '%.300s'", tmp);
        unlink(tmp);
        return -1;
    }
    close_all(1);
    for (int i = 2; i < 4; i++) {   /* the deleted file's stale -wal/-shm, if still there */
        snprintf(side, sizeof side, "%s%s", g_path, sfx[i]);
        unlink(side);
    }
    if (rename(tmp, g_path)) {
        snprintf(err, errlen, "cannot move the copy into place: %s", strerror(errno));
        return -2;                  /* the old connections are closed: the copy is the data now */
    }
    sync_parent(g_path);
    return 0;
}

/* Checks the database file (g_rw held for writing) and recovers: when it was deleted, restores it
 * from the keeper; when another file took its place, or the database was unusable, closes every
 * connection and opens (migrating) the file now at the path. */
static void recover(void) {
    struct stat st;
    int rc = stat(g_path, &st);
    int missing = rc != 0 && errno == ENOENT;
    if (rc != 0 && !missing) return;            /* cannot tell (EACCES, EIO): leave as is */
    if (!missing && g_state == DB_OK && st.st_dev == g_dev && st.st_ino == g_ino) return;
    char err[600] = "";
    if (missing && g_keeper && g_state != DB_BROKEN) {
        int r = restore_deleted(err, sizeof err);
        if (r == 0) {
            g_keeper = open_file(g_path, err, sizeof err);
            if (g_keeper && !remember_identity()) {
                g_state = DB_OK;
                log_event("warn", "the database file was deleted while running; restored it from the open database",
                          g_path);
                return;
            }
        }
        if (r == -2) log_event("error", "the database file was deleted while running; its copy could not be moved"
                               " into place and is left next to it (.restore)", err);
        if (r == -1) {              /* nothing changed: keep serving reads, retry at the next check */
            if (g_state != DB_RESTORE_PENDING) log_event("error", "the database file was deleted while running and"
                                                         " cannot be restored yet; retrying", err);
            g_state = DB_RESTORE_PENDING;
            return;
        }
    }
    /* another file at the path, or no database: start over on whatever is (or can be created) there */
    close_all(1);
    if (g_evicted_hook) g_evicted_hook(NULL);   /* what was stored may be gone */
    g_keeper = open_file(g_path, err, sizeof err);
    if (g_keeper && !remember_identity()) {
        int was = g_state;
        g_state = DB_OK;
        log_event("warn", missing ? "created a new, empty database file" : was == DB_OK ? "the database file was"
                  " replaced while running; now using the new file" : "the database is available again", g_path);
        return;
    }
    if (g_keeper) {
        sqlite3_close_v2(g_keeper);
        g_keeper = NULL;
    }
    if (g_state != DB_BROKEN) log_event("error", "the database is unavailable; retrying every second", err);
    snprintf(g_broken, sizeof g_broken, "database unavailable: %s", err);
    g_state = DB_BROKEN;
}

/* Checks the file's identity (before every write, else once per DB_CHECK_MS), recovering when it
 * changed. Call without g_rw held. */
static void check_file(int write) {
    long long now = (long long)(ut_mono() * 1000.0), due = atomic_load(&g_next_check);
    if (!write && (now < due || !atomic_compare_exchange_strong(&g_next_check, &due, now + DB_CHECK_MS))) return;
    struct stat st;
    int rc = stat(g_path, &st), stat_errno = rc ? errno : 0;
    pthread_rwlock_rdlock(&g_rw);
    int same = rc == 0 && g_state == DB_OK && st.st_dev == g_dev && st.st_ino == g_ino;
    pthread_rwlock_unlock(&g_rw);
    if (same || (rc != 0 && stat_errno != ENOENT)) return;
    pthread_rwlock_wrlock(&g_rw);
    recover();
    pthread_rwlock_unlock(&g_rw);
}

/* Begins a public operation: checks the file (always before a write: a write must not go to a
 * deleted file that nobody will see again), then holds g_rw for reading. */
static void enter(int write) {
    if (g_path[0]) check_file(write);
    pthread_rwlock_rdlock(&g_rw);
}

/* Ends a public operation. */
static void leave(void) { pthread_rwlock_unlock(&g_rw); }

/* Records the connection's error message for db_last_error. */
static int fail(db_conn *c) {
    snprintf(t_err, sizeof t_err, "%s", sqlite3_errmsg(c->db));
    t_code = sqlite3_errcode(c->db);
    return -1;
}

/* After a failed operation: when the failure is one of the file (read-only, I/O, cannot open, full,
 * corrupt), closes this thread's connection so that the next operation opens a fresh one. (A
 * connection that opened its -wal file while the file was read-only stays read-only for its whole
 * life; so would this thread.) Returns 1 when it closed the connection (a retry then opens a fresh
 * one), else 0. Call with g_rw held for reading. */
static int drop_if_broken(void) {
    int code = t_code & 0xff;
    t_code = 0;
    if (!t_conn || t_gen != g_gen || !(code == SQLITE_READONLY || code == SQLITE_IOERR || code == SQLITE_CANTOPEN ||
                                       code == SQLITE_FULL || code == SQLITE_CORRUPT || code == SQLITE_NOTADB ||
                                       code == SQLITE_PERM))
        return 0;
    db_conn *c = t_conn;
    pthread_mutex_lock(&g_mu);
    for (db_conn **p = &g_all; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    for (int i = 0; i < ST_N; i++) sqlite3_finalize(c->st[i]);
    sqlite3_close_v2(c->db);
    free(c);
    t_conn = NULL;
    return 1;
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
static int get_locked(const char *id, char **body, size_t *len) {
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

/* Sets the connection's synchronous mode (FULL: fsync at every commit; NORMAL: the WAL is synced at
 * checkpoints) when it differs. Returns 0 or -1. */
static int set_sync(db_conn *c, int full) {
    if (c->durable == (full ? 2 : 1)) return 0;
    char e[128];
    if (full ? exec_sql(c->db, "PRAGMA synchronous = FULL", e, sizeof e)
             : exec_sql(c->db, "PRAGMA synchronous = NORMAL", e, sizeof e))
        return fail(c);
    c->durable = full ? 2 : 1;
    return 0;
}

/* Applies the LRU refreshes handed out by the touch hook (inside the caller's transaction). An
 * UPDATE that fails is skipped: an LRU time is not worth a failed write. */
static void apply_touches(db_conn *c) {
    if (!g_take_touches) return;
    db_touch t[64];
    for (int round = 0; round < 64; round++) {   /* bounded: hits keep arriving meanwhile */
        int n = g_take_touches(t, 64);
        for (int i = 0; i < n; i++) {
            sqlite3_stmt *st = c->st[ST_TOUCH_N];
            sqlite3_bind_text(st, 1, t[i].id, -1, SQLITE_STATIC);
            sqlite3_bind_double(st, 2, t[i].last_used);
            sqlite3_bind_int64(st, 3, t[i].hits);
            run_done(c, st);
        }
        if (n < 64) break;
    }
}

/* Stores results and evicts beyond the bound, in one transaction; the evicted ids are reported to
 * the eviction hook after the commit. */
static int put_locked(const char *model_sha256, const db_result *r, int n, long *evicted) {
    db_conn *c = conn();
    if (evicted) *evicted = 0;
    if (!c) return -1;
    if (set_sync(c, g_result_fsync)) return -1;
    if (run_done(c, c->st[ST_BEGIN])) return -1;
    apply_touches(c);
    double now = ut_wall();
    char (*gone)[65] = NULL;        /* evicted ids, reported after the commit */
    long n_evicted = 0, gone_cap = 0;
    sqlite3_stmt *st;
    for (int k = 0; k < n; k++) {
        st = c->st[ST_INS];
        sqlite3_bind_text(st, 1, r[k].id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, model_sha256, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, r[k].request_json, -1, SQLITE_STATIC);
        sqlite3_bind_blob64(st, 4, r[k].body, r[k].len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)(r[k].len + strlen(r[k].request_json)));
        sqlite3_bind_double(st, 6, now);
        if (run_done(c, st)) goto rollback;
        if (sqlite3_changes(c->db) == 0) {
            st = c->st[ST_REFRESH];
            sqlite3_bind_text(st, 1, r[k].id, -1, SQLITE_STATIC);
            sqlite3_bind_double(st, 2, now);
            if (run_done(c, st)) goto rollback;
        }
    }
    while (g_max_bytes > 0) {
        st = c->st[ST_BYTES];
        long long bytes = 0;
        if (sqlite3_step(st) == SQLITE_ROW) bytes = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        if (bytes <= g_max_bytes) break;
        /* the least recently used result that is not one of this put's (among the n + 1 oldest,
         * at least one is not, unless only this put's results are left) */
        st = c->st[ST_OLDEST];
        sqlite3_bind_int(st, 1, n + 1);
        char id[65] = "";
        int rc = SQLITE_DONE;
        while (!id[0] && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *cand = (const char *)sqlite3_column_text(st, 0);
            int ours = !cand;
            for (int k = 0; cand && k < n && !ours; k++) ours = !strcmp(cand, r[k].id);
            if (!ours) snprintf(id, sizeof id, "%s", cand);
        }
        if (!id[0] && rc != SQLITE_DONE) fail(c);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (!id[0] && rc != SQLITE_DONE) goto rollback;
        if (!id[0]) break;              /* only the new results are left */
        st = c->st[ST_DEL];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        if (run_done(c, st)) goto rollback;
        if (sqlite3_changes(c->db) == 0) break;
        if (n_evicted == gone_cap) {
            long nc = gone_cap ? gone_cap * 2 : 16;
            char (*p)[65] = realloc(gone, (size_t)nc * sizeof *gone);
            if (!p) {
                snprintf(t_err, sizeof t_err, "out of memory");
                goto rollback;
            }
            gone = p;
            gone_cap = nc;
        }
        memcpy(gone[n_evicted++], id, 65);
    }
    if (run_done(c, c->st[ST_COMMIT])) goto rollback;
    if (g_evicted_hook)
        for (long i = 0; i < n_evicted; i++) g_evicted_hook(gone[i]);
    free(gone);
    if (!g_result_fsync) atomic_store(&g_unsynced, 1);
    if (evicted) *evicted = n_evicted;
    return 0;
rollback:
    {
        char keep[256];
        snprintf(keep, sizeof keep, "%s", t_err);
        run_done(c, c->st[ST_ROLLBACK]);
        snprintf(t_err, sizeof t_err, "%s", keep);
    }
    free(gone);
    return -1;
}

/* Binds text or NULL. */
static void bind_opt(sqlite3_stmt *st, int i, const char *s) {
    if (s && *s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

/* Appends one request row. */
static int log_request_locked(double time, const char *request_id, const char *result_id, const char *method, const char *route,
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

/* Appends request rows and applies pending LRU refreshes, in one transaction (synchronous=NORMAL:
 * the log is not worth an fsync). */
static int log_batch_locked(const db_log_row *rows, int n) {
    db_conn *c = conn();
    if (!c) return -1;
    if (set_sync(c, 0)) return -1;
    if (run_done(c, c->st[ST_BEGIN])) return -1;
    apply_touches(c);
    for (int i = 0; i < n; i++) {
        const db_log_row *r = &rows[i];
        sqlite3_stmt *st = c->st[ST_LOG];
        sqlite3_bind_double(st, 1, r->time);
        bind_opt(st, 2, r->request_id);
        bind_opt(st, 3, r->result_id);
        sqlite3_bind_text(st, 4, r->method[0] ? r->method : "?", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, r->route ? r->route : "?", -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, r->status);
        sqlite3_bind_double(st, 7, r->duration_ms);
        sqlite3_bind_int(st, 8, r->cache_hit ? 1 : 0);
        bind_opt(st, 9, r->client);
        if (run_done(c, st)) {
            char keep[256];
            snprintf(keep, sizeof keep, "%s", t_err);
            run_done(c, c->st[ST_ROLLBACK]);
            snprintf(t_err, sizeof t_err, "%s", keep);
            return -1;
        }
    }
    if (run_done(c, c->st[ST_COMMIT])) {
        char keep[256];
        snprintf(keep, sizeof keep, "%s", t_err);
        run_done(c, c->st[ST_ROLLBACK]);
        snprintf(t_err, sizeof t_err, "%s", keep);
        return -1;
    }
    return 0;
}

/* Checkpoints the WAL (PASSIVE: never waits for readers or writers), which syncs what was committed
 * with synchronous=NORMAL. Returns 0 or -1. */
static int sync_locked(void) {
    db_conn *c = conn();
    if (!c) return -1;
    int log = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) return fail(c);
    return 0;
}

/* Probes writability. */
static int ping_locked(void) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_PING];
    char v[32];
    snprintf(v, sizeof v, "%.3f", ut_wall());
    sqlite3_bind_text(st, 1, v, -1, SQLITE_TRANSIENT);
    return run_done(c, st);
}

/* Returns the number of stored results and their bytes. */
static int stats_locked(long long *results, long long *bytes) {
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
    col_text(st, 12, j->owner, sizeof j->owner);
    j->lease_until = sqlite3_column_type(st, 13) == SQLITE_NULL ? 0 : sqlite3_column_double(st, 13);
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
static int job_insert_locked(const db_job *j, long long n, const char *const *names, const char *const *requests) {
    db_conn *c = conn();
    if (!c) return -1;
    if (set_sync(c, 1)) return -1;
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
static int job_get_locked(const char *id, db_job *j) {
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
static int job_list_locked(int limit, db_job **out, int *n) {
    db_conn *c = conn();
    *out = NULL;
    *n = 0;
    if (!c) return -1;
    db_job *v = calloc((size_t)(limit > 0 ? limit : 1), sizeof *v);
    if (!v) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_LIST];
    sqlite3_bind_int(st, 1, limit);
    int rc = SQLITE_DONE, oom = 0;
    while (*n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (job_row(st, &v[*n])) { oom = 1; break; }
        (*n)++;
    }
    /* a failed step or out of memory: an error (503), not a list cut short */
    int ret = rc != SQLITE_ROW && rc != SQLITE_DONE ? fail(c) : oom ? -1 : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (ret < 0) {
        if (oom && rc == SQLITE_ROW) { snprintf(t_err, sizeof t_err, "out of memory"); t_code = SQLITE_NOMEM; }
        for (int i = 0; i < *n; i++) db_job_clear(&v[i]);
        free(v);
        v = NULL;
        *n = 0;
    }
    *out = v;
    return ret;
}

/* Counts the jobs by state. */
static int job_states_locked(long long counts[4]) {
    static const char *const names[4] = DB_JOB_STATE_NAMES;
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_STATES];
    for (int i = 0; i < 4; i++) counts[i] = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *s = (const char *)sqlite3_column_text(st, 0);
        for (int i = 0; i < 4; i++)
            if (s && !strcmp(s, names[i])) counts[i] = sqlite3_column_int64(st, 1);
    }
    int ret = rc == SQLITE_DONE ? 0 : fail(c);
    sqlite3_reset(st);
    return ret;
}

/* Finds the oldest queued job of a model. */
static int job_next_locked(const char *model_sha256, char id[65]) {
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
static int job_set_state_locked(const char *id, const char *state, const char *from) {
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

/* Puts running jobs whose lease has run out back in the queue. A read finds them first: an idle
 * daemon checks every 2 s, and most checks find none, so they take no write lock. */
static int job_requeue_expired_locked(const char *model_sha256) {
    db_conn *c = conn();
    if (!c) return -1;
    const double now = ut_wall();
    sqlite3_stmt *st = c->st[ST_JOB_EXPIRED];
    sqlite3_bind_double(st, 1, now);
    sqlite3_bind_text(st, 2, model_sha256, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), found = rc == SQLITE_ROW;
    if (!found && rc != SQLITE_DONE) fail(c);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (!found) return rc == SQLITE_DONE ? 0 : -1;
    st = c->st[ST_JOB_REQUEUE];
    sqlite3_bind_double(st, 1, now);
    sqlite3_bind_text(st, 2, model_sha256, -1, SQLITE_STATIC);
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* Runs one of the owner statements (ST_JOB_CLAIM, ST_JOB_RENEW: lease_until = now + lease_s;
 * ST_JOB_RELEASE) on job id for owner; returns the rows changed (0/1) or -1. */
static int job_owner_locked(int which, const char *id, const char *owner, double lease_s) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[which];
    const double now = ut_wall();
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    if (which == ST_JOB_RELEASE) {
        sqlite3_bind_double(st, 3, now);
    } else {
        sqlite3_bind_double(st, 3, now + lease_s);
        if (which == ST_JOB_CLAIM) sqlite3_bind_double(st, 4, now);
    }
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* Reads pending items. */
static int job_pending_locked(const char *id, long long after, int limit, long long *idx, char **requests) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_ITEM_PENDING];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int(st, 3, limit);
    int n = 0, rc = SQLITE_DONE, oom = 0;
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        idx[n] = sqlite3_column_int64(st, 0);
        const unsigned char *t = sqlite3_column_text(st, 1);
        requests[n] = strdup(t ? (const char *)t : "");
        if (!requests[n]) { oom = 1; break; }
        n++;
    }
    /* a failed step is an error, not the end of the pending items (the runner would take the job for
     * finished and leave it running); out of memory before the first item likewise */
    int ret = rc != SQLITE_ROW && rc != SQLITE_DONE ? fail(c) : (oom && n == 0) ? -1 : n;
    if (ret < 0) {
        if (oom) { snprintf(t_err, sizeof t_err, "out of memory"); t_code = SQLITE_NOMEM; }
        while (n > 0) free(requests[--n]);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* Stores item results and advances the job's counters in one transaction. */
static int job_store_locked(const char *id, int n, const long long *idx, const int *status, const char *const *result_ids,
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
static int job_finish_locked(const char *id) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_JOB_FINISH];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, ut_wall());
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* Reads finished items from an index on. */
static int job_items_locked(const char *id, long long from, int limit, db_item_fn fn, void *arg) {
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
static int job_delete_locked(const char *id) {
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

/* ---- public operations: each holds g_rw for reading (see enter) ---------------------------------- */

/* rc = call; an operation that failed because this thread's connection broke (e.g. it was opened
 * while the file was read-only: it stays read-only) runs once more on a fresh connection. The
 * operations that use it write in one transaction that rolls back on failure (or only check), so
 * the retry cannot apply anything twice. */
#define RETRY_FRESH(rc, call)                                             \
    do {                                                                  \
        (rc) = (call);                                                    \
        if ((rc) < 0 && drop_if_broken()) (rc) = (call); /* fresh conn */ \
        if ((rc) < 0) drop_if_broken();                                   \
    } while (0)

/* See cache.h (under the read lock). */
int db_get(const char *id, char **body, size_t *len) {
    enter(0);
    int rc = get_locked(id, body, len);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_put(const char *id, const char *model_sha256, const char *request_json, const char *body, size_t len,
           long *evicted) {
    db_result r = {id, request_json, body, len};
    return db_put_many(model_sha256, &r, 1, evicted);
}

/* See cache.h (under the read lock). */
int db_put_many(const char *model_sha256, const db_result *r, int n, long *evicted) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, put_locked(model_sha256, r, n, evicted));
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_log_batch(const db_log_row *rows, int n) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, log_batch_locked(rows, n));
    leave();
    return rc;
}

/* Deletes up to limit request rows older than before (one statement, autocommit). */
static int log_prune_locked(double before, int limit) {
    db_conn *c = conn();
    if (!c) return -1;
    sqlite3_stmt *st = c->st[ST_LOG_PRUNE];
    sqlite3_bind_double(st, 1, before);
    sqlite3_bind_int(st, 2, limit);
    if (run_done(c, st)) return -1;
    return sqlite3_changes(c->db);
}

/* See cache.h (under the read lock). */
int db_log_prune(double before, int limit) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, log_prune_locked(before, limit));
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_sync(void) {
    if (!atomic_exchange(&g_unsynced, 0)) return 0;
    enter(1);
    int rc = sync_locked();
    if (rc < 0) {
        atomic_store(&g_unsynced, 1);
        drop_if_broken();
    }
    leave();
    return rc;
}

/* See cache.h. */
void db_set_checkpointer(db_checkpoint_fn wake) { atomic_store(&g_ckpt_wake, wake); }

/* See cache.h (under the read lock). */
int db_checkpoint(void) {
    if (!atomic_exchange(&g_ckpt_wanted, 0)) return 0;
    atomic_fetch_add(&g_ckpt_runs, 1);
    enter(1);
    int rc = sync_locked();
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h. */
unsigned long long db_checkpoints(void) { return atomic_load(&g_ckpt_runs); }

/* Sets whether results are fsynced at their commit. */
void db_set_result_fsync(int on) { g_result_fsync = on != 0; }

/* Sets the touch source and the eviction hook. */
void db_set_hooks(db_touch_fn touches, db_evict_fn evicted) {
    g_take_touches = touches;
    g_evicted_hook = evicted;
}

/* See cache.h (under the read lock). */
int db_log_request(double time, const char *request_id, const char *result_id, const char *method, const char *route,
                   int status, double duration_ms, int cache_hit, const char *client) {
    enter(1);
    int rc = log_request_locked(time, request_id, result_id, method, route, status, duration_ms, cache_hit, client);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_ping(void) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, ping_locked());
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_stats(long long *results, long long *bytes) {
    enter(0);
    int rc = stats_locked(results, bytes);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_insert(const db_job *j, long long n, const char *const *names, const char *const *requests) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_insert_locked(j, n, names, requests));
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_get(const char *id, db_job *j) {
    enter(0);
    int rc = job_get_locked(id, j);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_list(int limit, db_job **out, int *n) {
    enter(0);
    int rc = job_list_locked(limit, out, n);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_next(const char *model_sha256, char id[65]) {
    enter(0);
    int rc = job_next_locked(model_sha256, id);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_states(long long counts[4]) {
    enter(0);
    int rc = job_states_locked(counts);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_set_state(const char *id, const char *state, const char *from) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_set_state_locked(id, state, from));
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_requeue_expired(const char *model_sha256) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_requeue_expired_locked(model_sha256));
    leave();
    return rc;
}

/* db_job_claim, db_job_renew and db_job_release (under the read lock). */
static int job_owner(int which, const char *id, const char *owner, double lease_s) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_owner_locked(which, id, owner, lease_s));
    leave();
    return rc;
}

/* See cache.h. */
int db_job_claim(const char *id, const char *owner, double lease_s) {
    return job_owner(ST_JOB_CLAIM, id, owner, lease_s);
}

/* See cache.h. */
int db_job_renew(const char *id, const char *owner, double lease_s) {
    return job_owner(ST_JOB_RENEW, id, owner, lease_s);
}

/* See cache.h. */
int db_job_release(const char *id, const char *owner) { return job_owner(ST_JOB_RELEASE, id, owner, 0); }

/* See cache.h (under the read lock). */
int db_job_pending(const char *id, long long after, int limit, long long *idx, char **requests) {
    enter(0);
    int rc = job_pending_locked(id, after, limit, idx, requests);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_store(const char *id, int n, const long long *idx, const int *status, const char *const *result_ids,
                 const char *const *outputs, const size_t *lens) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_store_locked(id, n, idx, status, result_ids, outputs, lens));
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_finish(const char *id) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_finish_locked(id));
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_items(const char *id, long long from, int limit, db_item_fn fn, void *arg) {
    enter(0);
    int rc = job_items_locked(id, from, limit, fn, arg);
    if (rc < 0) drop_if_broken();
    leave();
    return rc;
}

/* See cache.h (under the read lock). */
int db_job_delete(const char *id) {
    enter(1);
    int rc;
    RETRY_FRESH(rc, job_delete_locked(id));
    leave();
    return rc;
}
