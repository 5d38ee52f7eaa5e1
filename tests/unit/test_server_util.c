/* test_server_util.c - small helpers of server/util.c: If-None-Match matching (RFC 9110's weak
 * comparison, lists, "*", a tag weakened by a proxy), hex ids, and ut_printf of long text. */
#include <string.h>
#include "testutil.h"
#include "util.h"

int main(void) {
    /* ut_json_int: integers and integral reals within +-2^53 */
    {
        json_t *v = json_loads("[5, 5.0, 1e2, -3.0, 2.5, \"5\", true, null, 1e300, -9007199254740992.0]", 0, NULL);
        long long x = 0;
        CHECK(v && ut_json_int(json_array_get(v, 0), &x) && x == 5);
        CHECK(ut_json_int(json_array_get(v, 1), &x) && x == 5);
        CHECK(ut_json_int(json_array_get(v, 2), &x) && x == 100);
        CHECK(ut_json_int(json_array_get(v, 3), &x) && x == -3);
        for (int i = 4; i < 9; i++) CHECK(!ut_json_int(json_array_get(v, (size_t)i), &x));
        CHECK(ut_json_int(json_array_get(v, 9), &x) && x == -9007199254740992LL);
        json_decref(v);
    }
    const char *t = "\"abc123\"";
    CHECK(ut_etag_match("\"abc123\"", t) == 1);
    CHECK(ut_etag_match("W/\"abc123\"", t) == 1);            /* nginx's gzip weakens the ETag */
    CHECK(ut_etag_match("\"abc123\"", "W/\"abc123\"") == 1);
    CHECK(ut_etag_match("\"x\", W/\"abc123\"", t) == 1);      /* a list */
    CHECK(ut_etag_match("\"x\",\"abc123\"", t) == 1);
    CHECK(ut_etag_match("  *  ", t) == 1);
    CHECK(ut_etag_match("\"x\", *", t) == 1);
    CHECK(ut_etag_match(NULL, t) == 0);
    CHECK(ut_etag_match("", t) == 0);
    CHECK(ut_etag_match("\"abc1234\"", t) == 0);             /* not a prefix or substring match */
    CHECK(ut_etag_match("\"xabc123\"", t) == 0);
    CHECK(ut_etag_match("\"abc123", t) == 0);                 /* unterminated */
    CHECK(ut_etag_match("abc123", t) == 0);                   /* unquoted */
    CHECK(ut_etag_match("*x", t) == 0);
    CHECK(ut_etag_match("bogus, \"abc123\"", t) == 1);        /* a malformed entry is skipped */
    CHECK(ut_etag_match("\"a,b\", \"abc123\"", t) == 1);      /* a comma inside a tag */
    CHECK(ut_etag_match("\"a,b\"", "\"a,b\"") == 1);
    CHECK(ut_is_hex64("0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef") == 1);
    CHECK(ut_is_hex64("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde") == 0);
    CHECK(ut_is_hex64("g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") == 0);
    /* ut_printf appends text of any length (it once cut everything after 255 bytes: a long FASTA
     * name dropped the result id from a job's key, a long mutant the rest of its JSON object) */
    {
        char name[1001];
        memset(name, 'N', 1000);
        name[1000] = '\0';
        ut_buf b = {0};
        ut_str(&b, "x");
        ut_printf(&b, "%s\t%s\n", name, "0123abcd");
        CHECK(b.len == 1 + 1000 + 1 + 8 + 1 && strlen(b.s) == b.len);
        CHECK(b.s[0] == 'x' && strcmp(b.s + 1001, "\t0123abcd\n") == 0);
        for (int i = 0; i < 3000; i++) ut_printf(&b, "%d,", i % 10);   /* many short appends */
        CHECK(b.len == 1011 + 6000 && strncmp(b.s + b.len - 4, "8,9,", 4) == 0 && !b.oom);
        ut_buf e = {0};
        ut_printf(&e, "%s", "");
        CHECK(e.len == 0 && e.s && e.s[0] == '\0');
        free(b.s);
        free(e.s);
    }
    return TEST_DONE();
}
