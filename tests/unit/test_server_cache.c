/* test_server_cache.c - the SQLite cache of performerd (server/cache.c): schema/migrations, the
 * application id (another program's database refused), put/get, LRU eviction under the size bound,
 * the request log, refusing a newer schema, and the job store (a job inserted once, its states,
 * pending items, results and counters, reading back, the claim by one owner, lease renewal, requeue
 * once a lease has run out, release, delete), and who checkpoints a grown WAL (db_set_checkpointer). */
#include "cache.h"
#include "testutil.h"

#include <sqlite3.h>
#include <unistd.h>

#include "dbutil.h"

/* db_job_items callback: appends "idx:name:status:output;" to the buffer at arg. */
static int collect(long long idx, const char *name, int status, const char *out, size_t len, void *arg) {
    char *b = arg;
    size_t n = strlen(b);
    snprintf(b + n, 512 - n, "%lld:%s:%d:%.*s;", idx, name, status, (int)len, out);
    return 0;
}

static int wakes;

/* db_checkpoint_fn of the test: counts the calls. */
static void count_wake(void) { wakes++; }

/* Frames in the WAL of path that a checkpoint on a separate connection finds (it backfills them). */
static int wal_frames(const char *path) {
    sqlite3 *db;
    int log = -1, done = -1;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);   /* opens the WAL */
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    sqlite3_close(db);
    return log;
}

/* Stores n results of 16 KB with ids from tag, one commit each. */
static void put_big(const char *tag, int n) {
    static char blob[16384];
    memset(blob, 'w', sizeof blob);
    for (int i = 0; i < n; i++) {
        char id[64];
        snprintf(id, sizeof id, "%s-%d", tag, i);
        db_result r = {id, "{}", blob, sizeof blob};
        CHECK(db_put_many("sha", &r, 1, NULL) == 0);
    }
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
        CHECK(q(v1, "PRAGMA application_id") == DB_APPLICATION_ID);   /* set on the first migration */
        CHECK(q(v1, "SELECT count(*) FROM sqlite_master WHERE name = 'requests_result'") == 1);
        CHECK(q(v1, "SELECT count(*) FROM sqlite_master WHERE name IN ('jobs', 'job_items', 'jobs_queue')") == 3);
        /* newer than this daemon: refused */
        sqlite3_open(v1, &db);
        sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL);
        sqlite3_close(db);
        CHECK(db_init(v1, 0, err, sizeof err) == -1 && strstr(err, "newer"));
    }

    /* another program's database: refused and left as it was */
    {
        char other[300];
        snprintf(other, sizeof other, "%s/other.sqlite", dir);
        sqlite3 *db;
        sqlite3_open(other, &db);
        sqlite3_exec(db, "CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('keep');", NULL, NULL, NULL);
        sqlite3_close(db);
        CHECK(db_init(other, 0, err, sizeof err) == -1 && strstr(err, "another program") && strstr(err, "--db"));
        CHECK(q(other, "SELECT count(*) FROM sqlite_master") == 1 && q(other, "PRAGMA user_version") == 0);
        CHECK(q(other, "PRAGMA application_id") == 0);
        sqlite3_open(other, &db);   /* another application's id, even with performerd's schema version */
        sqlite3_exec(db, "PRAGMA application_id = 7; PRAGMA user_version = 2;", NULL, NULL, NULL);
        sqlite3_close(db);
        CHECK(db_init(other, 0, err, sizeof err) == -1 && strstr(err, "application_id 7"));
        CHECK(q(other, "SELECT count(*) FROM sqlite_master") == 1 && q(other, "PRAGMA user_version") == 2);
        /* an empty SQLite file (no tables) is taken */
        snprintf(other, sizeof other, "%s/empty.sqlite", dir);
        sqlite3_open(other, &db);
        sqlite3_exec(db, "VACUUM", NULL, NULL, NULL);
        sqlite3_close(db);
        CHECKF(db_init(other, 0, err, sizeof err) == 0, "%s", err);
        CHECK(q(other, "PRAGMA application_id") == DB_APPLICATION_ID);
    }

    CHECKF(db_init(path, 2000, err, sizeof err) == 0, "%s", err);
    CHECK(q(path, "PRAGMA user_version") == DB_SCHEMA_VERSION);
    CHECK(q(path, "PRAGMA application_id") == DB_APPLICATION_ID);
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

    /* the job store */
    {
        db_job j;
        memset(&j, 0, sizeof j);
        snprintf(j.id, sizeof j.id, "job1");
        snprintf(j.task, sizeof j.task, "embed");
        j.params = "{\"layer\":-1}";
        snprintf(j.model_sha256, sizeof j.model_sha256, "sha");
        const char *names[3] = {"a", "b", "c"}, *reqs[3] = {"{\"sequence\":\"A\"}", "{\"sequence\":\"C\"}",
                                                         "{\"sequence\":\"D\"}"};
        CHECK(db_job_insert(&j, 3, names, reqs) == 0);
        CHECK(db_job_insert(&j, 3, names, reqs) == 1);                    /* the same id: stored once */
        CHECK(q(path, "SELECT count(*) FROM job_items WHERE job_id = 'job1'") == 3);
        db_job g;
        CHECK(db_job_get("job1", &g) == 1 && !strcmp(g.state, "queued") && g.total == 3 && !strcmp(g.params, j.params) &&
              g.started_at == 0);
        db_job_clear(&g);
        CHECK(db_job_get("nope", &g) == 0);
        char id[65];
        CHECK(db_job_next("sha", id) == 1 && !strcmp(id, "job1"));
        CHECK(db_job_next("other-model", id) == 0);
        CHECK(db_job_claim("job1", "ownerA", 60) == 1);
        CHECK(db_job_claim("job1", "ownerB", 60) == 0);                  /* only a queued job is claimed */
        CHECK(db_job_set_state("job1", "running", ",queued,") == 0);      /* only from the listed states */
        CHECK(db_job_next("sha", id) == 0);
        CHECK(db_job_renew("job1", "ownerA", 60) == 1 && db_job_renew("job1", "ownerB", 60) == 0);
        CHECK(db_job_requeue_expired("sha") == 0);                        /* the lease runs: left alone */
        {   /* a check that finds no run-out lease takes no write lock: it answers while another
             * connection holds one (a write would wait out the busy timeout and fail) */
            sqlite3 *w = NULL;
            CHECK(sqlite3_open(path, &w) == SQLITE_OK &&
                  sqlite3_exec(w, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
            CHECK(db_job_requeue_expired("sha") == 0);
            sqlite3_exec(w, "ROLLBACK", NULL, NULL, NULL);
            sqlite3_close(w);
        }
        CHECK(q(path, "SELECT count(*) FROM jobs WHERE owner = 'ownerA' AND lease_until > strftime('%s','now') + 50") == 1);
        long long idx[4];
        char *rq[4];
        CHECK(db_job_pending("job1", -1, 2, idx, rq) == 2 && idx[0] == 0 && idx[1] == 1 && !strcmp(rq[1], reqs[1]));
        free(rq[0]), free(rq[1]);
        const int status[2] = {200, 422};
        const char *rids[2] = {"r0", NULL}, *outs[2] = {"{\"x\":1}", "{\"error\":\"bad\"}"};
        const size_t lens[2] = {7, 15};
        CHECK(db_job_store("job1", 2, idx, status, rids, outs, lens) == 0);
        CHECK(db_job_store("job1", 2, idx, status, rids, outs, lens) == 0);   /* again: counted once */
        CHECK(db_job_get("job1", &g) == 1 && g.done == 1 && g.failed == 1 && g.started_at > 0);
        db_job_clear(&g);
        CHECK(db_job_finish("job1") == 0);                                /* one item left */
        CHECK(db_job_pending("job1", -1, 4, idx, rq) == 1 && idx[0] == 2);
        free(rq[0]);
        CHECK(db_job_renew("job1", "ownerA", -1) == 1);                   /* the lease has run out (a crash) */
        CHECK(db_job_requeue_expired("other-model") == 0);   /* a daemon of another model leaves it running */
        CHECK(db_job_requeue_expired("sha") == 1 && db_job_next("sha", id) == 1);   /* any daemon of the model */
        CHECK(q(path, "SELECT count(*) FROM jobs WHERE owner IS NULL AND lease_until IS NULL") == 1);
        CHECK(db_job_renew("job1", "ownerA", 60) == 0);                   /* the old owner has lost it */
        CHECK(db_job_claim("job1", "ownerB", 60) == 1);
        CHECK(db_job_release("job1", "ownerA") == 0);                     /* only the owner releases */
        CHECK(db_job_release("job1", "ownerB") == 1 && db_job_claim("job1", "ownerB", 60) == 1);   /* a stop, a start */
        const int st2[1] = {200};
        const char *rid2[1] = {"r2"}, *out2[1] = {"{\"x\":2}"};
        const size_t len2[1] = {7};
        CHECK(db_job_store("job1", 1, idx, st2, rid2, out2, len2) == 0);
        CHECK(db_job_finish("job1") == 1);
        CHECK(q(path, "SELECT count(*) FROM jobs WHERE owner IS NULL AND lease_until IS NULL") == 1);   /* lease ended */
        char seen[512] = "";
        CHECK(db_job_items("job1", 0, 10, collect, seen) == 3);
        CHECKF(!strcmp(seen, "0:a:200:{\"x\":1};1:b:422:{\"error\":\"bad\"};2:c:200:{\"x\":2};"), "%s", seen);
        seen[0] = '\0';
        CHECK(db_job_items("job1", 1, 1, collect, seen) == 1 && !strncmp(seen, "1:b:", 4));
        CHECK(db_job_get("job1", &g) == 1 && !strcmp(g.state, "done") && g.finished_at > 0 && g.done == 2);
        db_job_clear(&g);
        db_job *list = NULL;
        int nl = 0;
        CHECK(db_job_list(10, &list, &nl) == 0 && nl == 1 && !strcmp(list[0].id, "job1"));
        for (int i = 0; i < nl; i++) db_job_clear(&list[i]);
        free(list);
        CHECK(db_job_set_state("job1", "cancelled", ",queued,running,") == 0);   /* done is final */
        CHECK(db_job_delete("job1") == 1 && db_job_get("job1", &g) == 0);
        CHECK(q(path, "SELECT count(*) FROM job_items") == 0);
    }
    /* a grown WAL: with a checkpointer set, commits only wake it (the WAL keeps growing until it
     * runs db_checkpoint) up to DB_CHECKPOINT_INLINE_PAGES, where a commit checkpoints anyway;
     * without one, commits checkpoint it themselves at DB_CHECKPOINT_PAGES. (A 16 KB result
     * writes about 13 WAL frames: overflow pages, the row, two indexes, the size row.) */
    {
        wal_frames(path);                  /* start from a checkpointed WAL */
        put_big("x", 1);                   /* the first commit after it starts the WAL over */
        db_set_checkpointer(count_wake);
        put_big("w", 150);
        CHECKF(wakes == 1, "%d wake-ups", wakes);   /* once until it runs */
        int frames = wal_frames(path);
        CHECKF(frames >= 1500 && frames < DB_CHECKPOINT_INLINE_PAGES, "WAL frames %d: a commit checkpointed", frames);
        CHECK(db_checkpoint() == 0);       /* asked for: runs */
        CHECK(db_checkpoint() == 0);       /* not asked for again: nothing to do */
        put_big("y", 100);
        CHECKF(wakes == 2, "%d wake-ups", wakes);
        put_big("z", 350);                 /* ~4,500 frames: past DB_CHECKPOINT_INLINE_PAGES, no db_checkpoint */
        frames = wal_frames(path);
        CHECKF(DB_CHECKPOINT_INLINE_PAGES <= 4000 && frames > 0 && frames < 4000, "WAL frames %d: not bounded", frames);
        CHECKF(wakes == 2, "%d wake-ups", wakes);
        db_set_checkpointer(NULL);
        CHECK(db_checkpoint() == 0);
        wal_frames(path);
        put_big("v", 200);
        frames = wal_frames(path);
        CHECKF(frames > 0 && frames < DB_CHECKPOINT_PAGES + 50, "WAL frames %d: commits did not checkpoint", frames);
        CHECKF(wakes == 2, "%d wake-ups", wakes);
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
