/* config.c - options, environment variables and --help for performerd (see config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { OPT_STR, OPT_INT, OPT_SIZE } opt_type;

typedef struct {
    const char *name;           /* long option without "--"; env var is PERFORMERD_<NAME> */
    opt_type type;
    size_t off;                 /* offset in cfg */
    size_t cap;                 /* buffer size for OPT_STR */
    long min, max;              /* bounds for OPT_INT / OPT_SIZE */
    const char *metavar;
    const char *help;
} opt_def;

#define S(f) OPT_STR, offsetof(cfg, f), sizeof(((cfg *)0)->f), 0, 0
#define I(f, lo, hi) OPT_INT, offsetof(cfg, f), 0, lo, hi
#define Z(f, lo, hi) OPT_SIZE, offsetof(cfg, f), 0, lo, hi

static const opt_def opts[] = {
    {"bind", S(bind), "ADDR", "listen address (default 127.0.0.1; 0.0.0.0 or :: for all interfaces)"},
    {"port", I(port, 0, 65535), "N", "TCP port (default 8080; 0 picks a free port, logged at start-up)"},
    {"weights", S(weights), "FILE", "safetensors weights (default weights/model.safetensors)"},
    {"db", S(db), "FILE", "SQLite cache and request log (default var/cache.sqlite)"},
    {"threads", I(threads, 0, 1024), "N", "threads per forward pass (default 0 = all cores)"},
    {"workers", I(workers, 1, 64), "N", "inference worker threads (default 1)"},
    {"http-threads", I(http_threads, 1, 256), "N", "HTTP thread-pool size (default 4)"},
    {"max-length", I(max_length, 1, 10000000), "N", "max residues per sequence (default 40000)"},
    {"max-batch", I(max_batch, 1, 100000), "N", "max sequences per request (default 64)"},
    {"max-body", Z(max_body, 64, 1L << 30), "BYTES", "max request body, suffix k/m/g allowed (default 2m = 2 MiB)"},
    {"queue", I(queue, 1, 1000000), "N", "max pending inference requests before 429 (default 64)"},
    {"api-key", S(api_key), "KEY", "require 'Authorization: Bearer KEY' on all routes but /health, /ready and the page /"},
    {"cors-origin", S(cors_origin), "ORIGIN", "allowed browser origin(s), comma-separated, or * (default none)"},
    {"cache-max-mb", I(cache_max_mb, 0, 1L << 30), "MB", "bound of stored results, LRU eviction (default 1024; 0 = unbounded)"},
    {"timeout", I(timeout, 1, 86400), "SECONDS", "per-request deadline for inference (default 300)"},
    {"connection-timeout", I(conn_timeout, 1, 86400), "SECONDS", "idle timeout, and the deadline for a request's headers (default 30)"},
    {"max-connections", I(max_connections, 1, 1000000), "N", "concurrent connections (default 4096; the open-file limit is raised to fit)"},
    {"max-connections-per-ip", I(max_conn_per_ip, 0, 1000000), "N", "concurrent connections from one client address (default 0 = no limit)"},
    {"batch-tokens", I(batch_tokens, 0, 100000000), "N", "max tokens batched into one forward pass (default 4096; 0 = off)"},
    {"max-job-body", Z(max_job_body, 64, 1L << 32), "BYTES", "max POST /jobs body (FASTA or JSON), suffix k/m/g (default 16m)"},
    {"max-job-sequences", I(max_job_sequences, 1, 10000000), "N", "max sequences per POST /jobs job (default 10000)"},
    {"job-lease", I(job_lease, 2, 86400), "SECONDS", "a running job stays this daemon's this long unrenewed (renewed every third of it); a crashed daemon's job is queued again for any daemon of its model once it runs out (default 30)"},
    {"max-pll-length", I(max_pll_length, 1, 10000000), "N", "max residues scored by pseudo-likelihood (default 1024)"},
    {"max-score-tokens", I(max_score_tokens, 1, 1L << 40), "N", "max tokens one POST /score runs through the model (default 4194304)"},
    {"hot-cache-mb", I(hot_cache_mb, 0, 1L << 20), "MB", "in-memory map of hot results in front of the database (default 64; 0 = off)"},
    {"precision", S(precision), "fp32|bf16", "arithmetic of the weight products: fp32 (default) or bf16, bfloat16 with float32 sums, about 1.5-1.7x faster forward passes on CPUs with AVX-512 BF16 (results are cached per precision)"},
    {"request-log-days", I(request_log_days, 0, 36500), "DAYS", "rows of the requests table are kept this many days (default 30; 0 = forever)"},
    {"result-fsync", I(result_fsync, 0, 1), "0|1", "1: fsync each stored result before its 200 (survives power loss); 0: written to the WAL before the 200 (survives a daemon crash), fsynced within 1 s (default 0)"},
};
#define N_OPTS (sizeof opts / sizeof opts[0])

/* Fills c with the built-in defaults. */
void cfg_defaults(cfg *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->bind, sizeof c->bind, "127.0.0.1");
    c->port = 8080;
    snprintf(c->weights, sizeof c->weights, "weights/model.safetensors");
    snprintf(c->db, sizeof c->db, "var/cache.sqlite");
    c->threads = 0;
    c->workers = 1;
    c->http_threads = 4;
    c->max_length = 40000;
    c->max_batch = 64;
    c->max_body = 2L * 1024 * 1024;
    c->queue = 64;
    c->cache_max_mb = 1024;
    c->timeout = 300;
    c->conn_timeout = 30;
    c->max_connections = 4096;
    c->max_conn_per_ip = 0;
    c->batch_tokens = 4096;
    c->max_job_body = 16L * 1024 * 1024;
    c->max_job_sequences = 10000;
    c->job_lease = 30;
    c->max_pll_length = 1024;
    c->max_score_tokens = 4L * 1024 * 1024;
    c->hot_cache_mb = 64;
    c->result_fsync = 0;
    c->request_log_days = 30;
    snprintf(c->precision, sizeof c->precision, "fp32");
}

/* Returns the environment variable name for option name (PERFORMERD_MAX_BODY for max-body). */
static void env_name(const char *name, char *out, size_t cap) {
    size_t k = (size_t)snprintf(out, cap, "PERFORMERD_");
    for (; *name && k + 1 < cap; name++) out[k++] = *name == '-' ? '_' : (char)toupper((unsigned char)*name);
    out[k] = '\0';
}

/* Parses an integer with an optional k/m/g suffix (OPT_SIZE) strictly; returns 0 or -1. */
static int parse_num(const char *s, int allow_suffix, long *out) {
    char *end;
    errno = 0;
    while (isspace((unsigned char)*s)) s++;
    if (!*s || *s == '+') return -1;
    long v = strtol(s, &end, 10);
    if (errno || end == s) return -1;
    long mul = 1;
    if (allow_suffix && *end) {
        switch (tolower((unsigned char)*end)) {
        case 'k': mul = 1024L; break;
        case 'm': mul = 1024L * 1024; break;
        case 'g': mul = 1024L * 1024 * 1024; break;
        default: return -1;
        }
        end++;
        if (tolower((unsigned char)*end) == 'i') end++;
        if (tolower((unsigned char)*end) == 'b') end++;
    }
    if (*end) return -1;
    if (v > LONG_MAX / mul || v < LONG_MIN / mul) return -1;
    *out = v * mul;
    return 0;
}

/* Stores value into option o of c; returns 0 or -1 with err naming source and option. */
static int set_opt(cfg *c, const opt_def *o, const char *val, const char *src, char *err, size_t errlen) {
    char *base = (char *)c + o->off;
    if (o->type == OPT_STR) {
        if (strlen(val) >= o->cap) {
            snprintf(err, errlen, "%s: value too long (max %zu bytes)", src, o->cap - 1);
            return -1;
        }
        memcpy(base, val, strlen(val) + 1);
        return 0;
    }
    long v;
    if (parse_num(val, o->type == OPT_SIZE, &v) || v < o->min || v > o->max) {
        snprintf(err, errlen, "%s: invalid value '%.64s' (expected an integer from %ld to %ld%s)", src, val,
                 o->min, o->max, o->type == OPT_SIZE ? ", suffix k/m/g allowed" : "");
        return -1;
    }
    *(long *)base = v;
    return 0;
}

/* Prints the --help text (options, environment variables, defaults) to fp. */
void cfg_usage(FILE *fp) {
    fprintf(fp,
            "usage: performerd [OPTIONS]\n"
            "Serves masked-residue predictions, variant scores, embeddings, log-probabilities and\n"
            "asynchronous FASTA jobs of a Performer protein language model over HTTP/JSON.\n"
            "Routes: POST /predict, /score, /embed, /logits; GET /predict/{id} (and /score/{id}, /embed/{id},\n"
            "/logits/{id}); POST /jobs, GET /jobs, GET|DELETE /jobs/{id}, GET /jobs/{id}/result; GET / (web page),\n"
            "/health, /ready, /metrics, /model, /openapi.json\n\n"
            "Options (each also settable by the environment variable shown; the command line wins):\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64], left[96];
        env_name(opts[i].name, env, sizeof env);
        snprintf(left, sizeof left, "--%s %s", opts[i].name, opts[i].metavar);
        fprintf(fp, "  %-28s %s\n  %-28s [env %s]\n", left, opts[i].help, "", env);
    }
    fprintf(fp, "  %-28s %s\n  %-28s %s\n", "--help", "show this help and exit", "--version",
            "show the version and exit");
    fprintf(fp, "\nSIGTERM/SIGINT drain in-flight requests and exit 0. Logs: one JSON line per request on stderr.\n");
}

/* Applies PERFORMERD_* environment variables then argv to c. */
int cfg_load(cfg *c, int argc, char **argv, char *err, size_t errlen) {
    cfg_defaults(c);
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64];
        env_name(opts[i].name, env, sizeof env);
        const char *v = getenv(env);
        if (v && *v && set_opt(c, &opts[i], v, env, err, errlen)) return -1;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            cfg_usage(stdout);
            return 1;
        }
        if (!strcmp(arg, "--version")) {
            printf("performerd 1.0\n");
            return 1;
        }
        if (strncmp(arg, "--", 2)) {
            snprintf(err, errlen, "unexpected argument '%.64s' (see --help)", arg);
            return -1;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt_def *o = NULL;
        for (size_t i = 0; i < N_OPTS; i++)
            if (strlen(opts[i].name) == nlen && !strncmp(opts[i].name, name, nlen)) o = &opts[i];
        if (!o) {
            snprintf(err, errlen, "unknown option '%.64s' (see --help)", arg);
            return -1;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (a + 1 >= argc) {
                snprintf(err, errlen, "option --%s needs a value (%s)", o->name, o->metavar);
                return -1;
            }
            val = argv[++a];
            if (!strncmp(val, "--", 2)) {   /* "--cors-origin --db x": the value was forgotten */
                snprintf(err, errlen, "option --%s needs a value (%s), not the option '%.64s' (write --%s=%.64s "
                         "if that is the value)", o->name, o->metavar, val, o->name, val);
                return -1;
            }
        }
        char src[80];
        snprintf(src, sizeof src, "--%s", o->name);
        if (set_opt(c, o, val, src, err, errlen)) return -1;
    }
    if (c->threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->threads = n > 0 ? n : 1;
    }
    return 0;
}
