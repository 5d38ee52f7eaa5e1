/* config.h - performerd configuration: command-line options, PERFORMERD_* environment variables,
 * defaults and --help (prefix cfg_). Precedence: command line > environment > default. */
#ifndef PD_CONFIG_H
#define PD_CONFIG_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    char bind[256];             /* listen address (IPv4/IPv6 literal or host name) */
    long port;                  /* TCP port; 0 = any free port (the log line says which) */
    char weights[1024];         /* safetensors weights file */
    char db[1024];              /* SQLite cache/request database */
    long threads;               /* BLAS / element-wise threads per forward pass (0 = all cores) */
    long workers;               /* inference worker threads, each with its own pf_ctx */
    long http_threads;          /* libmicrohttpd thread-pool size */
    long max_length;            /* residues per sequence */
    long max_batch;             /* sequences per request */
    long max_body;              /* request body bytes */
    long queue;                 /* pending inference jobs before 429 */
    char api_key[512];          /* bearer token ("" = auth off) */
    char cors_origin[1024];     /* comma-separated allowed origins, "*" for any, "" = CORS off */
    long cache_max_mb;          /* bound of the stored results (MiB); 0 = unbounded */
    long timeout;               /* per-request deadline, seconds */
    long conn_timeout;          /* idle connection timeout and request-header deadline, seconds */
    long max_connections;       /* concurrent connections */
    long max_conn_per_ip;       /* concurrent connections per client address (0 = no limit) */
    long batch_tokens;          /* max framed tokens of one batched forward pass (0 = no batching) */
    long max_job_body;          /* POST /jobs body bytes */
    long max_job_sequences;     /* sequences per POST /jobs job */
    long job_lease;             /* seconds a running job's lease lasts unrenewed */
    long max_pll_length;        /* residues of a sequence scored by pseudo-likelihood */
    long max_score_tokens;      /* framed tokens one POST /score request may run through the model */
    long hot_cache_mb;          /* bound of the in-memory hot-result map (MiB); 0 = off */
    char precision[16];         /* "fp32" or "bf16" (or "float32", "bfloat16"): the weight products' arithmetic (model/gemm.h) */
    long result_fsync;          /* 1 = fsync each stored result before its 200; 0 = WAL write, background sync */
    long request_log_days;      /* retention of the requests table (days); 0 = forever */
} cfg;

/* Fills c with the built-in defaults. */
void cfg_defaults(cfg *c);

/* Applies PERFORMERD_* environment variables then argv to c (defaults first via cfg_defaults).
 * Returns 0 to run, 1 when --help/--version printed to out (exit 0), -1 with a one-line err. */
int cfg_load(cfg *c, int argc, char **argv, char *err, size_t errlen);

/* Prints the --help text (options, environment variables, defaults) to fp. */
void cfg_usage(FILE *fp);

#endif
