/* test_server_hot.c - the hot-result map (server/hot.c) and the request log queue
 * (server/reqlog.c): lookups by id and by request body, responses marked "cached":true, the byte
 * bound and LRU order, blobs outliving their entry, removal and the epoch race check, LRU refreshes
 * handed to SQLite so that the database evicts in true LRU order (and its evictions leave the map),
 * and the log queue: many rows in few transactions, every row written by rl_stop. */
#include "cache.h"
#include "hot.h"
#include "reqlog.h"
#include "testutil.h"

#include <sqlite3.h>
#include <unistd.h>

#include "dbutil.h"

/* Writes a 64-hex id made of one repeated digit c. */
static void mkid(char id[65], char c) {
    memset(id, c, 64);
    id[64] = '\0';
}

/* Returns 1 when blob b holds exactly text. */
static int blob_is(hc_blob *b, const char *text) {
    size_t len;
    const char *d = hc_blob_data(b, &len);
    return len == strlen(text) && !memcmp(d, text, len);
}

int main(void) {
    char a[65], b[65], c[65], d[65], got[65];
    mkid(a, 'a');
    mkid(b, 'b');
    mkid(c, 'c');
    mkid(d, 'd');
    const char *resp = "{\"id\":\"x\",\"cached\":false,\"v\":1}";

    /* disabled: every lookup misses, inserts are dropped */
    CHECK(hc_init(0) == 0);
    CHECK(hc_put(a, resp, strlen(resp), hc_epoch()) == 0 && hc_get(a) == NULL);

    /* by id and by body; stored marked "cached":true */
    CHECK(hc_init(64 * 1024) == 0);
    CHECK(hc_get(a) == NULL);
    CHECK(hc_put(a, resp, strlen(resp), hc_epoch()) == 1);
    CHECK(hc_put(a, resp, strlen(resp), hc_epoch()) == 1);            /* present: fine */
    hc_blob *x = hc_get(a);
    CHECK(x && blob_is(x, "{\"id\":\"x\",\"cached\":true ,\"v\":1}"));
    const char *body = "{\"sequence\":\"MKT<mask>LLV\"}";
    CHECK(hc_get_body(0, body, strlen(body), got) == NULL);
    CHECK(hc_alias(0, body, strlen(body), a) == 1);
    CHECK(hc_alias(0, body, strlen(body), a) == 1);                    /* once */
    CHECK(hc_alias(0, body, strlen(body), b) == 0);                    /* b is not in the map */
    hc_blob *y = hc_get_body(0, body, strlen(body), got);
    CHECK(y == x && !strcmp(got, a));
    hc_blob_release(y);
    CHECK(hc_get_body(1, body, strlen(body), got) == NULL);            /* another route */
    CHECK(hc_get_body(0, body, strlen(body) - 1, got) == NULL);        /* another body */
    hc_stats_t s;
    hc_stats(&s);
    CHECK(s.entries == 1 && s.aliases == 1 && s.hits == 2 && s.bytes > strlen(resp));

    /* removal: the entry and its aliases go; a blob still referenced lives on */
    hc_remove(a);
    CHECK(hc_get(a) == NULL && hc_get_body(0, body, strlen(body), got) == NULL);
    CHECK(blob_is(x, "{\"id\":\"x\",\"cached\":true ,\"v\":1}"));
    hc_blob_release(x);
    hc_stats(&s);
    CHECK(s.entries == 0 && s.aliases == 0 && s.bytes == 0);

    /* the epoch: an insert that raced with the removal of its id is refused, others are not */
    unsigned long long e0 = hc_epoch();
    hc_remove(b);
    CHECK(hc_put(b, resp, strlen(resp), e0) == 0);
    CHECK(hc_put(c, resp, strlen(resp), e0) == 1);
    CHECK(hc_put(b, resp, strlen(resp), hc_epoch()) == 1);
    e0 = hc_epoch();
    hc_remove(NULL);                                                  /* everything */
    CHECK(hc_get(b) == NULL && hc_get(c) == NULL);
    CHECK(hc_put(d, resp, strlen(resp), e0) == 0);

    /* the byte bound: least recently used entries leave first; oversized entries are refused */
    CHECK(hc_init(16 * 1024) == 0);
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char ids[8][65];
    for (int i = 0; i < 8; i++) {
        snprintf(ids[i], sizeof ids[i], "%064d", i);
        CHECK(hc_put(ids[i], big, strlen(big), hc_epoch()) == 1);
        if (i == 3) hc_blob_release(hc_get(ids[0]));                  /* 0 is now recent */
    }
    hc_stats(&s);
    CHECK(s.bytes <= 16 * 1024 && s.evictions > 0 && s.entries < 8);
    x = hc_get(ids[0]);
    CHECK(x != NULL);                                                 /* used recently: kept */
    hc_blob_release(x);
    CHECK(hc_get(ids[1]) == NULL);                                    /* least recently used: gone */
    x = hc_get(ids[7]);
    CHECK(x != NULL);
    hc_blob_release(x);
    char huge[5000];
    memset(huge, 'y', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    CHECK(hc_put(d, huge, strlen(huge), hc_epoch()) == 0);            /* over a quarter of the bound */

    /* pending LRU refreshes: one per hit entry, counting its hits */
    db_touch t[16];
    int nt = hc_take_touches(t, 16);
    CHECK(nt >= 2);
    long hits0 = 0;
    for (int i = 0; i < nt; i++)
        if (!strcmp(t[i].id, ids[0])) hits0 = t[i].hits;
    CHECK(hits0 == 2);
    CHECK(hc_take_touches(t, 16) == 0);                               /* handed out once */

    /* with SQLite: hits served from memory refresh the database's LRU order before it evicts, and
     * what the database evicts leaves the map */
    char dir[] = "/tmp/pd-hot-XXXXXX", path[256], err[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/h.sqlite", dir);
    CHECKF(db_init(path, 2000, err, sizeof err) == 0, "%s", err);
    CHECK(hc_init(1 << 20) == 0);
    db_set_hooks(hc_take_touches, hc_evicted);
    char r600[600];
    memset(r600, 'r', sizeof r600 - 1);
    r600[sizeof r600 - 1] = '\0';
    const char *put_ids[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        unsigned long long ep = hc_epoch();
        CHECK(db_put(put_ids[i], "sha", "{}", r600, 599, NULL) == 0);
        CHECK(hc_put(put_ids[i], r600, 599, ep) == 1);
        usleep(2000);
    }
    x = hc_get(a);                                                    /* a: hit in memory only */
    CHECK(x != NULL);
    hc_blob_release(x);
    usleep(2000);
    long ev = 0;
    db_result r = {d, "{}", r600, 599};
    CHECK(db_put_many("sha", &r, 1, &ev) == 0 && ev == 1);
    char *out = NULL;
    size_t len = 0;
    CHECK(db_get(b, &out, &len) == 0);                                /* b was the least recently used */
    CHECK(db_get(a, &out, &len) == 1);
    free(out);
    CHECK(hc_get(b) == NULL);                                         /* evicted from the map too */
    x = hc_get(c);
    CHECK(x != NULL);
    hc_blob_release(x);
    CHECK(q(path, "SELECT hits FROM results WHERE id = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'")
          == 2);                                                      /* the memory hit + this db_get */

    /* one transaction for several results; the bound never evicts the results of the same call */
    db_result two[2] = {{a, "{}", r600, 599}, {b, "{}", r600, 599}};
    CHECK(db_put_many("sha", two, 2, &ev) == 0);
    CHECK(db_get(b, &out, &len) == 1);
    free(out);

    /* the request log queue: rows are written by the writer thread; rl_stop writes what is left */
    long long before = q(path, "SELECT count(*) FROM requests");
    CHECK(rl_start(err, sizeof err) == 0);
    db_log_row row;
    memset(&row, 0, sizeof row);
    row.route = "/predict";
    snprintf(row.method, sizeof row.method, "POST");
    snprintf(row.client, sizeof row.client, "127.0.0.1");
    row.status = 200;
    for (int i = 0; i < 5000; i++) {
        row.time = i;
        snprintf(row.request_id, sizeof row.request_id, "r%d", i);
        row.cache_hit = i & 1;
        rl_push(&row);
    }
    usleep(300000);
    long long mid = q(path, "SELECT count(*) FROM requests");
    CHECKF(mid - before == 5000, "%lld rows written while running", mid - before);   /* a flush starts at once */
    for (int i = 0; i < 3000; i++) {
        snprintf(row.request_id, sizeof row.request_id, "s%d", i);
        rl_push(&row);
    }
    rl_stop();                                                        /* clean stop: nothing lost */
    CHECK(q(path, "SELECT count(*) FROM requests") - before == 8000);
    CHECK(q(path, "SELECT count(*) FROM requests WHERE request_id = 's2999' AND route = '/predict'") == 1);
    CHECK(rl_dropped() == 0);
    rl_push(&row);                                                    /* no writer: written at once */
    CHECK(q(path, "SELECT count(*) FROM requests") - before == 8001);

    db_set_hooks(NULL, NULL);
    db_close_all();
    hc_free();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return TEST_DONE();
}
