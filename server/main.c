/* main.c - performerd start-up, signals and drain. Every configuration problem (bad option,
 * missing/malformed weights, unwritable database, port in use) exits non-zero with one line on
 * stderr before serving; after start-up the process only ends through SIGTERM/SIGINT: stop
 * accepting, finish in-flight requests, stop the daemon, close the database, return 0. */
#include "cache.h"
#include "config.h"
#include "gemm.h"
#include "hot.h"
#include "http.h"
#include "jobs.h"
#include "jobs_async.h"
#include "model.h"
#include "openapi.h"
#include "page.h"
#include "reqlog.h"
#include "tokenizer.h"
#include "util.h"

#include <errno.h>
#include <execinfo.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_SECONDS 7.0        /* in-flight work gets this long; the whole exit stays under 10 s */

/* Prints "performerd: error: msg" and returns the exit status 1. */
static int fatal(const char *msg) {
    fprintf(stderr, "performerd: error: %s\n", msg);
    return 1;
}

/* Returns the GET /model body (malloc'd). */
static char *model_body(const pf_model *m, const cfg *c) {
    json_t *vocab = json_loads(tok_vocab_json(), 0, NULL);
    if (!vocab) vocab = json_array();
    json_t *prov = json_loads(m->cfg.provenance, JSON_DECODE_ANY, NULL);
    if (!prov) prov = json_string(m->cfg.provenance);
    if (!prov) prov = json_null();
    size_t exact_max = pf_exact_max_len(m);
    json_t *o = json_pack("{s:s, s:s, s:b, s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:s}, s:I, s:o, s:o, s:[s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s],"
                          " s:{s:I, s:I, s:I, s:i, s:i, s:I, s:I, s:I}}",
                          "name", m->cfg.name, "sha256", m->sha256, "trained", m->cfg.trained,
                          "precision", gm_precision_name(gm_precision()), "config", "n_layers", m->cfg.n_layers, "d_model", m->cfg.d_model, "n_heads", m->cfg.n_heads,
                          "d_ff", m->cfg.d_ff, "n_features", m->cfg.n_features, "conv_kernel", m->cfg.conv_kernel, "local_kernel", m->cfg.local_kernel, "kernel", pf_kernel_name(m->cfg.kernel),
                          "norm_eps", (double)m->cfg.norm_eps, "position", "sinusoidal",
                          "n_params", (json_int_t)m->n_params, "provenance", prov, "vocabulary", vocab,
                          "output_tokens", "A", "C", "D", "E", "F", "G", "H", "I", "K", "L", "M", "N", "P", "Q", "R", "S",
                          "T", "V", "W", "Y",
                          "limits", "max_body_bytes", (json_int_t)c->max_body, "max_length", (json_int_t)c->max_length,
                          "max_batch", (json_int_t)c->max_batch, "top_k_default", 5, "top_k_max", 25,
                          "queue", (json_int_t)c->queue, "timeout_s", (json_int_t)c->timeout,
                          "exact_kernel_max_tokens", (json_int_t)exact_max);
    if (!o) return NULL;
    json_t *lim = json_object_get(o, "limits");   /* the /score and /jobs limits too */
    json_object_set_new(lim, "max_pll_length", json_integer(c->max_pll_length));
    json_object_set_new(lim, "max_score_tokens", json_integer(c->max_score_tokens));
    json_object_set_new(lim, "max_job_body_bytes", json_integer(c->max_job_body));
    json_object_set_new(lim, "max_job_sequences", json_integer(c->max_job_sequences));
    if (!m->cfg.trained)
        json_object_set_new(o, "warning", json_string("this model is UNTRAINED (random initialisation): its predictions are"
                                                      " meaningless until trained weights are installed"));
    char *s = json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(6));
    json_decref(o);
    return s;
}

/* File descriptors kept for everything but client connections: listening socket, epoll, the
 * database (3 per thread), the weights, logs, libraries. */
#define FD_RESERVE 256

/* Raises the soft open-file limit to what --max-connections needs (up to the hard limit); when
 * the hard limit is lower, lowers max_connections to fit it and logs a warning. */
static void fit_open_files(cfg *c) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    rlim_t need = (rlim_t)c->max_connections + FD_RESERVE;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        long fit = (long)rl.rlim_cur - FD_RESERVE;
        if (fit < 16) fit = 16;
        char want[32], got[32], lim[32];
        snprintf(want, sizeof want, "%ld", c->max_connections);
        snprintf(got, sizeof got, "%ld", fit);
        snprintf(lim, sizeof lim, "%llu", (unsigned long long)rl.rlim_cur);
        http_log("warn", "the open-file limit is too low for --max-connections; serving fewer connections (raise the"
                 " hard limit: ulimit -Hn, or docker run --ulimit nofile=N)", "max_connections", want, "serving",
                 got, "nofile", lim, (char *)NULL);
        c->max_connections = fit;
    }
}

/* Appends s to buf at *at (at most cap bytes in all); async-signal-safe. */
static void crash_put(char *buf, size_t cap, size_t *at, const char *s) {
    while (*s && *at < cap) buf[(*at)++] = *s++;
}

/* A fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT): writes one JSON log line naming it and
 * the raw stack trace (one frame a line) to stderr, then lets the signal end the process as it would
 * have (the handler is reset and the signal raised again, delivered when this returns). Uses only
 * async-signal-safe calls (backtrace was called once at start-up, so it does not load libgcc here). */
static void crash_report(int sig) {
    char line[256];
    size_t at = 0;
    const char *name = sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGILL ? "SIGILL"
                     : sig == SIGFPE ? "SIGFPE" : sig == SIGABRT ? "SIGABRT" : "fatal signal";
    crash_put(line, sizeof line - 1, &at, "{\"level\":\"fatal\",\"msg\":\"crashed\",\"signal\":\"");
    crash_put(line, sizeof line - 1, &at, name);
    crash_put(line, sizeof line - 1, &at, "\",\"detail\":\"stack trace follows, one frame a line\"}\n");
    ssize_t w = write(STDERR_FILENO, line, at);
    (void)w;
    void *frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Installs crash_report for the fatal signals (once, before any thread starts); not under
 * AddressSanitizer, whose own report of a fault says more. */
static void install_crash_report(void) {
#ifdef __SANITIZE_ADDRESS__
    return;
#endif
    void *warm[2];
    backtrace(warm, 2);             /* loads libgcc's unwinder now, not inside the handler */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = crash_report;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

/* Logs a recovery of the database file (cache.h). */
static void db_event(const char *level, const char *msg, const char *detail) {
    http_log(level, msg, "detail", detail, (char *)NULL);
}

int main(int argc, char **argv) {
    cfg c;
    char err[1024];
    pf_omp_passive(argv);
    int rc = cfg_load(&c, argc, argv, err, sizeof err);
    if (rc == 1) return 0;
    if (rc < 0) {
        fprintf(stderr, "performerd: error: %s\n", err);
        return 2;
    }
    if (gm_select_precision(c.precision, err, sizeof err) != 0) {
        fprintf(stderr, "performerd: error: %s\n", err);
        return 2;
    }
    gm_weight_cache(1);   /* the served weights never change: bf16 packs them once */

    /* Signals are handled by sigwait in this thread only; every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    install_crash_report();

    fit_open_files(&c);
    pf_model *m = NULL, *mapped = NULL;
    struct stat wst;
    memset(&wst, 0, sizeof wst);
    stat(c.weights, &wst);          /* the file's identity now, for /ready's weights check */
    if (pf_model_load(&mapped, c.weights, err, sizeof err)) {
        char msg[4200];
        snprintf(msg, sizeof msg, "cannot load weights '%s': %s (make one with `bin/performer init --out %s`)", c.weights,
                 err, c.weights);
        return fatal(msg);
    }
    /* Serve from a private copy, not the file mapping: a weights file overwritten in place (cp over
     * it, a truncating editor) can then neither change the numbers served nor fault (SIGBUS) the
     * daemon; the new file is loaded by a restart. */
    int cloned = pf_model_clone_owned(&m, mapped, err, sizeof err);
    pf_model_free(mapped);
    if (cloned) {
        char msg[2200];
        snprintf(msg, sizeof msg, "cannot load weights '%s': %s", c.weights, err);
        return fatal(msg);
    }
    pf_set_threads((int)c.threads);
    db_set_log(db_event);
    /* Start-up: each step that fails goes to startup_failed, which undoes the steps done (in reverse
     * order) and returns 1; up[] says which were done. */
    enum { UP_DB, UP_HOT, UP_LOG, UP_JOBS, UP_RUNNER, UP_N };
    int up[UP_N] = {0}, fd = -1, port = 0;
    const char *why = err;
    json_t *mref = NULL;
    char *mbody = NULL, *api = NULL;
    if (db_init(c.db, (long long)c.cache_max_mb * 1024 * 1024, err, sizeof err)) goto startup_failed;
    up[UP_DB] = 1;
    db_set_result_fsync((int)c.result_fsync);
    up[UP_HOT] = 1;                 /* hc_free also undoes a partial hc_init */
    if (hc_init((size_t)c.hot_cache_mb * 1024 * 1024)) {
        why = "out of memory for the hot-result map (--hot-cache-mb)";
        goto startup_failed;
    }
    db_set_hooks(hc_take_touches, hc_evicted);
    rl_set_retention((double)c.request_log_days);
    if (rl_start(err, sizeof err)) goto startup_failed;
    up[UP_LOG] = 1;
    if ((fd = http_listen(c.bind, c.port, &port, err, sizeof err)) < 0) goto startup_failed;
    mref = tk_model_ref(m->cfg.name, m->sha256, m->cfg.trained);
    mbody = model_body(m, &c);
    api = api_openapi(&c);
    if (!mref || !mbody || !api) {
        why = "out of memory while preparing the model description";
        goto startup_failed;
    }
    jb_config jc = {(int)c.workers, c.queue, c.batch_tokens, (int)(c.max_batch > 64 ? c.max_batch : 64)};
    if (jb_start(m, mref, &jc, err, sizeof err)) goto startup_failed;
    up[UP_JOBS] = 1;
    http_env env = {&c, m, mbody, api, {0}, wst};
    env.tk.max_length = c.max_length;
    env.tk.max_batch = c.max_batch;
    env.tk.max_pll_length = c.max_pll_length;
    env.tk.max_score_tokens = c.max_score_tokens;
    env.tk.n_layers = m->cfg.n_layers;
    env.tk.d_model = m->cfg.d_model;
    size_t exact_max = m->cfg.kernel == PF_KERNEL_EXACT ? pf_exact_max_len(m) : 0;
    if (exact_max > 2 && (long)exact_max - 2 < env.tk.max_length) env.tk.max_length = (long)exact_max - 2;
    if (pg_init() != 0) {
        why = "the embedded web page (server/page.html) lacks its <script> or <style>";
        goto startup_failed;
    }
    if (ja_start(m, &env.tk, (double)c.job_lease, err, sizeof err)) goto startup_failed;
    up[UP_RUNNER] = 1;
    if (http_start(&env, fd, err, sizeof err)) goto startup_failed;
    char portbuf[16], thr[16], wk[16];
    snprintf(portbuf, sizeof portbuf, "%d", port);
    snprintf(thr, sizeof thr, "%ld", c.threads);
    snprintf(wk, sizeof wk, "%ld", c.workers);
    http_log("info", "listening", "bind", c.bind, "port", portbuf, "weights", c.weights, "model", m->cfg.name,
             "sha256", m->sha256, "trained", m->cfg.trained ? "true" : "false", "db", c.db, "threads", thr,
             "workers", wk, "precision", gm_precision_name(gm_precision()), "auth", c.api_key[0] ? "on" : "off", (char *)NULL);
    if (!m->cfg.trained)
        http_log("warn", "serving an UNTRAINED model (random initialisation); predictions are meaningless", (char *)NULL);

    int sig = 0;
    for (;;) {
        if (sigwait(&sigs, &sig) != 0) continue;
        if (sig == SIGHUP) {
            http_log("info", "SIGHUP ignored (restart to change configuration)", (char *)NULL);
            continue;
        }
        break;
    }
    double t0 = ut_mono();
    http_log("info", "draining", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", (char *)NULL);
    http_quiesce();
    ja_stop();                    /* no new job sequences; those queued finish or stay pending */
    int clean = jb_drain(DRAIN_SECONDS) == 0;
    /* answers of finished jobs (and requests still uploading, answered 503) get written */
    if (http_wait_idle(DRAIN_SECONDS + 1.0 - (ut_mono() - t0))) clean = 0;
    http_stop();
    rl_stop();                    /* every answered request's log row is written */
    int runner_done = ja_join(1.0) == 0;
    int joined = jb_stop(9.5 - (ut_mono() - t0) > 0.5 ? 9.5 - (ut_mono() - t0) : 0.5) == 0 && runner_done;
    if (joined) {
        db_close_all();
        hc_free();
        pf_model_free(m);
    }
    json_decref(mref);
    free(mbody);
    free(api);
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", ut_mono() - t0);
    http_log("info", "stopped", "drain", clean ? "complete" : "timed out (503 sent)", "seconds", secs, (char *)NULL);
    return 0;

startup_failed:
    if (up[UP_RUNNER]) ja_stop();
    if (up[UP_JOBS]) jb_drain(0);
    if (up[UP_RUNNER]) ja_join(2);
    if (up[UP_JOBS]) jb_stop(1);
    if (fd >= 0) close(fd);
    if (up[UP_LOG]) rl_stop();
    if (up[UP_DB]) db_close_all();
    if (up[UP_HOT]) hc_free();
    pf_model_free(m);
    json_decref(mref);
    free(mbody);
    free(api);
    return fatal(why);
}
