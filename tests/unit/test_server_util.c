/* test_server_util.c - small helpers of server/util.c: If-None-Match matching (RFC 9110's weak
 * comparison, lists, "*", a tag weakened by a proxy) and hex ids. */
#include "testutil.h"
#include "util.h"

int main(void) {
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
    return TEST_DONE();
}
