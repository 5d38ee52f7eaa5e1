/* test_server_config.c - performerd options: defaults, PERFORMERD_* environment variables,
 * command-line precedence, value checking (server/config.c). */
#include "config.h"
#include "testutil.h"

#include <stdlib.h>

int main(void) {
    cfg c;
    char err[256];
    char *argv0[] = {"performerd", NULL};
    unsetenv("PERFORMERD_PORT");
    unsetenv("PERFORMERD_MAX_BODY");
    CHECK(cfg_load(&c, 1, argv0, err, sizeof err) == 0);
    CHECK(c.port == 8080 && c.max_body == 2 * 1024 * 1024 && c.max_length == 40000 && c.max_batch == 64);
    CHECK(!strcmp(c.weights, "weights/model.safetensors") && !strcmp(c.db, "var/cache.sqlite"));
    CHECK(c.threads >= 1 && c.api_key[0] == '\0');
    CHECK(c.max_job_body == 16L * 1024 * 1024 && c.max_job_sequences == 10000 && c.max_pll_length == 1024 &&
          c.max_score_tokens == 4L * 1024 * 1024);
    CHECK(c.max_connections == 4096 && c.max_conn_per_ip == 0 && c.conn_timeout == 30);
    char *argv2[] = {"performerd", "--max-job-body", "32m", "--max-pll-length=200", NULL};
    setenv("PERFORMERD_MAX_JOB_SEQUENCES", "7", 1);
    CHECK(cfg_load(&c, 4, argv2, err, sizeof err) == 0);
    CHECK(c.max_job_body == 32L * 1024 * 1024 && c.max_pll_length == 200 && c.max_job_sequences == 7);
    unsetenv("PERFORMERD_MAX_JOB_SEQUENCES");
    char *argv3[] = {"performerd", "--max-connections", "20000", "--max-connections-per-ip=8", NULL};
    CHECK(cfg_load(&c, 4, argv3, err, sizeof err) == 0);
    CHECK(c.max_connections == 20000 && c.max_conn_per_ip == 8);
    char *bad0[] = {"performerd", "--max-score-tokens", "0", NULL};
    CHECK(cfg_load(&c, 3, bad0, err, sizeof err) == -1 && strstr(err, "--max-score-tokens"));

    setenv("PERFORMERD_PORT", "9000", 1);
    setenv("PERFORMERD_MAX_BODY", "1m", 1);
    setenv("PERFORMERD_CORS_ORIGIN", "https://a.example", 1);
    CHECK(cfg_load(&c, 1, argv0, err, sizeof err) == 0);
    CHECK(c.port == 9000 && c.max_body == 1024 * 1024 && !strcmp(c.cors_origin, "https://a.example"));
    char *argv1[] = {"performerd", "--port", "9100", "--max-body=4096", "--api-key", "k", NULL};
    CHECK(cfg_load(&c, 6, argv1, err, sizeof err) == 0);
    CHECK(c.port == 9100 && c.max_body == 4096 && !strcmp(c.api_key, "k"));   /* command line wins */

    char *bad1[] = {"performerd", "--port", "70000", NULL};
    CHECK(cfg_load(&c, 3, bad1, err, sizeof err) == -1 && strstr(err, "--port"));
    char *bad2[] = {"performerd", "--max-batch", NULL};
    CHECK(cfg_load(&c, 2, bad2, err, sizeof err) == -1 && strstr(err, "needs a value"));
    char *bad2b[] = {"performerd", "--cors-origin", "--db", "x.sqlite", NULL};   /* the value was forgotten */
    CHECK(cfg_load(&c, 4, bad2b, err, sizeof err) == -1 && strstr(err, "needs a value") && strstr(err, "--db"));
    char *ok2b[] = {"performerd", "--cors-origin=--db", NULL};                  /* said explicitly: taken */
    CHECK(cfg_load(&c, 2, ok2b, err, sizeof err) == 0 && !strcmp(c.cors_origin, "--db"));
    char *bad3[] = {"performerd", "--frobnicate", "1", NULL};
    CHECK(cfg_load(&c, 3, bad3, err, sizeof err) == -1 && strstr(err, "unknown option"));
    char *bad4[] = {"performerd", "--queue", "12abc", NULL};
    CHECK(cfg_load(&c, 3, bad4, err, sizeof err) == -1);
    setenv("PERFORMERD_PORT", "x", 1);
    CHECK(cfg_load(&c, 1, argv0, err, sizeof err) == -1 && strstr(err, "PERFORMERD_PORT"));
    unsetenv("PERFORMERD_PORT");
    unsetenv("PERFORMERD_MAX_BODY");
    unsetenv("PERFORMERD_CORS_ORIGIN");
    return TEST_DONE();
}
