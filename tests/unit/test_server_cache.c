/* test_server_cache.c - the SQLite cache of performerd (server/cache.c): schema/migrations,
 * put/get, LRU eviction under the size bound, the request log, refusing a newer schema. */
#include "cache.h"
#include "testutil.h"

#include <sqlite3.h>
#include <unistd.h>

/* Runs one SQL statement on a separate connection; returns the first column of the first row. */
static long long q(const char *path, const char *sql) {
    sqlite3 *db;
    sqlite3_stmt *st;
    long long v = -1;
    sqlite3_open(path, &db);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
}

int main(void) {
    char dir[] = "/tmp/pd-cache-XXXXXX", path[256], err[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/sub/dir/c.sqlite", dir);   /* parents are created */

    /* a version-1 database is migrated to the current version */
    {
        char v1[300];
        snprintf(v1, sizeof v1, "%s/v1.sqlite", dir);
        sqlite3 *db;
        sqlite3_open(v1, &db);
        sqlite3_exec(db,
                     "CREATE TABLE results (id TEXT PRIMARY KEY, model_sha256 TEXT NOT NULL, request TEXT NOT NULL,"
                     " response BLOB NOT NULL, bytes INTEGER NOT NULL, created_at REAL NOT NULL, last_used_at REAL"
                     " NOT NULL, hits INTEGER NOT NULL DEFAULT 0); CREATE INDEX results_lru ON results (last_used_at);"
                     "CREATE TABLE requests (seq INTEGER PRIMARY KEY, time REAL NOT NULL, request_id TEXT, result_id"
                     " TEXT, method TEXT NOT NULL, route TEXT NOT NULL, status INTEGER NOT NULL, duration_ms REAL NOT"
                     " NULL, cache_hit INTEGER NOT NULL, client TEXT); CREATE INDEX requests_time ON requests (time);"
                     "CREATE TABLE cache_stats (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL, bytes"
                     " INTEGER NOT NULL); INSERT INTO cache_stats VALUES (1, 0, 0);"
                     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); PRAGMA user_version = 1;",
                     NULL, NULL, NULL);
        sqlite3_close(db);
        CHECKF(db_init(v1, 0, err, sizeof err) == 0, "%s", err);
        CHECK(q(v1, "PRAGMA user_version") == DB_SCHEMA_VERSION);
        CHECK(q(v1, "SELECT count(*) FROM sqlite_master WHERE name = 'requests_result'") == 1);
        /* newer than this daemon: refused */
        sqlite3_open(v1, &db);
        sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL);
        sqlite3_close(db);
        CHECK(db_init(v1, 0, err, sizeof err) == -1 && strstr(err, "newer"));
    }

    CHECKF(db_init(path, 2000, err, sizeof err) == 0, "%s", err);
    CHECK(q(path, "PRAGMA user_version") == DB_SCHEMA_VERSION);
    char *body = NULL;
    size_t len = 0;
    CHECK(db_get("a", &body, &len) == 0);
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    long ev = -1;
    CHECK(db_put("a", "sha", "{}", big, 599, &ev) == 0 && ev == 0);
    CHECK(db_get("a", &body, &len) == 1 && len == 599 && !memcmp(body, big, 599));
    free(body);
    CHECK(db_put("a", "sha", "{}", big, 599, &ev) == 0 && ev == 0);   /* stored once */
    CHECK(q(path, "SELECT count(*) FROM results") == 1);
    usleep(2000);
    CHECK(db_put("b", "sha", "{}", big, 599, &ev) == 0 && ev == 0);
    usleep(2000);
    CHECK(db_put("c", "sha", "{}", big, 599, &ev) == 0 && ev == 0);   /* 3 x 601 bytes <= 2000 */
    usleep(2000);
    CHECK(db_get("a", &body, &len) == 1);                               /* a is now most recent */
    free(body);
    usleep(2000);
    CHECK(db_put("d", "sha", "{}", big, 599, &ev) == 0 && ev == 1);    /* evicts b, the LRU one */
    CHECK(db_get("b", &body, &len) == 0);
    CHECK(db_get("a", &body, &len) == 1);
    free(body);
    long long n = 0, bytes = 0;
    CHECK(db_stats(&n, &bytes) == 0 && n == 3 && bytes == 3 * 601);
    CHECK(q(path, "SELECT hits FROM results WHERE id = 'a'") == 3);

    CHECK(db_log_request(1.5, "rid", "a", "POST", "/predict", 200, 3.5, 1, "127.0.0.1") == 0);
    CHECK(db_log_request(2.5, NULL, NULL, "GET", "/health", 200, 0.1, 0, NULL) == 0);
    CHECK(q(path, "SELECT count(*) FROM requests") == 2);
    CHECK(q(path, "SELECT cache_hit FROM requests WHERE request_id = 'rid'") == 1);
    CHECK(db_ping() == 0);
    {
        sqlite3 *db;
        sqlite3_stmt *st;
        sqlite3_open(path, &db);
        sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL);
        CHECK(sqlite3_step(st) == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(st, 0), "wal"));
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    db_close_all();

    /* an unusable path (its parent is a regular file) fails with a message */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/sub/dir/c.sqlite/inner.sqlite", dir);
    CHECK(db_init(bad, 0, err, sizeof err) == -1 && strlen(err) > 0);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return TEST_DONE();
}
