/* http.c - libmicrohttpd glue, routing, auth, CORS, errors, logging (see http.h). */
#include "http.h"
#include "cache.h"
#include "jobs.h"
#include "metrics.h"
#include "predict.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { R_NONE, R_PREDICT, R_PREDICT_ID, R_HEALTH, R_READY, R_METRICS, R_MODEL, R_OPENAPI };

static const struct {
    const char *path;           /* exact path ("" for the id route) */
    const char *label;          /* metrics/log label */
    const char *allow;          /* Allow header */
    int is_post;
} routes[] = {
    [R_NONE] = {"", "other", "", 0},
    [R_PREDICT] = {"/predict", "/predict", "POST, OPTIONS", 1},
    [R_PREDICT_ID] = {"", "/predict/{id}", "GET, HEAD, OPTIONS", 0},
    [R_HEALTH] = {"/health", "/health", "GET, HEAD, OPTIONS", 0},
    [R_READY] = {"/ready", "/ready", "GET, HEAD, OPTIONS", 0},
    [R_METRICS] = {"/metrics", "/metrics", "GET, HEAD, OPTIONS", 0},
    [R_MODEL] = {"/model", "/model", "GET, HEAD, OPTIONS", 0},
    [R_OPENAPI] = {"/openapi.json", "/openapi.json", "GET, HEAD, OPTIONS", 0},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

/* Per-request state (MHD con_cls), freed in the completion callback. */
typedef struct {
    double t0;
    int route;
    char method[12];
    char path[160];
    char request_id[130];
    char client[64];
    int status;
    int cache;                  /* -1 not applicable, 0 MISS, 1 HIT */
    char result_id[65];
    char *body;                 /* accumulated upload */
    size_t len, cap, discarded;
    int overflow;
    int reading;                /* a POST /predict whose body is accumulated */
    int waiting;                /* suspended on a job */
    jb_job *job;
    double queue_s, forward_s;
    int batch_jobs;
} req_st;

static const http_env *env;
static struct MHD_Daemon *daemon_;
static int listen_fd_ = -1;
static volatile int quiesced;
static pthread_mutex_t active_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t active_cv = PTHREAD_COND_INITIALIZER;
static long active;             /* requests begun and not yet completed */
static double t_start;

/* ---- logging ---------------------------------------------------------------------------------- */

/* Writes the ISO-8601 UTC time with milliseconds into out. */
static void iso_now(char *out, size_t cap) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Writes a JSON object as one line to stderr with one write(2). */
static void emit(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!s) return;
    size_t n = strlen(s);
    s[n] = '\n';                /* replace the NUL; write n + 1 bytes */
    ssize_t w = write(2, s, n + 1);
    (void)w;
    free(s);
}

/* Replaces bytes that are not printable ASCII by '?', so log and JSON strings stay valid. */
static void sanitize(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) *s = '?';
}

/* Writes one structured log line with string key/value pairs. */
void http_log(const char *level, const char *msg, ...) {
    char ts[40];
    iso_now(ts, sizeof ts);
    json_t *o = json_pack("{s:s, s:s, s:s}", "time", ts, "level", level, "msg", msg);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        char buf[512];
        snprintf(buf, sizeof buf, "%s", v ? v : "");
        sanitize(buf);
        json_object_set_new(o, k, json_string(buf));
    }
    va_end(ap);
    emit(o);
}

/* Routes MHD's own error messages into the structured log. */
static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
    http_log("warn", "libmicrohttpd", "detail", buf, (char *)NULL);
}

/* ---- listening socket --------------------------------------------------------------------------- */

/* Creates, binds and listens. */
int http_listen(const char *bind_addr, long port, int *port_out, char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL;
    char ps[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(ps, sizeof ps, "%ld", port);
    int rc = getaddrinfo(bind_addr && *bind_addr ? bind_addr : NULL, ps, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "cannot resolve bind address '%s': %s", bind_addr, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1, zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 511) == 0) break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen on %s:%ld: %s%s", bind_addr, port, strerror(saved),
                 saved == EADDRINUSE ? " (another process uses this port; choose one with --port)" : "");
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    *port_out = (int)port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port_out = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                             : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* ---- responses ---------------------------------------------------------------------------------- */

/* Returns the allowed origin string to send for the request's Origin header, or NULL. */
static const char *allowed_origin(struct MHD_Connection *conn, const char **origin_out) {
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    *origin_out = origin;
    const char *list = env->c->cors_origin;
    if (!origin || !*list) return NULL;
    size_t ol = strlen(origin);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && t[-1] == ' ') t--;
        size_t l = (size_t)(t - p);
        if (l == 1 && *p == '*') return "*";
        if (l && l == ol && !strncmp(p, origin, l)) return origin;
        p = e;
    }
    return NULL;
}

/* Adds the headers every response carries: request id, CORS, timing. */
static void add_common(struct MHD_Connection *conn, struct MHD_Response *r, req_st *st) {
    char buf[256];
    MHD_add_response_header(r, "X-Request-Id", st->request_id);
    const char *origin, *allow = allowed_origin(conn, &origin);
    if (allow) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", allow);
        if (strcmp(allow, "*")) MHD_add_response_header(r, "Vary", "Origin");
        MHD_add_response_header(r, "Access-Control-Expose-Headers",
                                "X-Request-Id, X-Cache, ETag, Retry-After, Server-Timing, X-Response-Time");
    }
    double total = (ut_mono() - st->t0) * 1000.0;
    snprintf(buf, sizeof buf, "%.3fms", total);
    MHD_add_response_header(r, "X-Response-Time", buf);
    if (st->job)
        snprintf(buf, sizeof buf, "queue;dur=%.3f, forward;dur=%.3f, total;dur=%.3f", st->queue_s * 1000.0,
                 st->forward_s * 1000.0, total);
    else
        snprintf(buf, sizeof buf, "total;dur=%.3f", total);
    MHD_add_response_header(r, "Server-Timing", buf);
    if (quiesced || jb_draining()) MHD_add_response_header(r, "Connection", "close");
}

/* Queues a response whose body (malloc'd, may be NULL for none) is handed to MHD. */
static enum MHD_Result send_body(struct MHD_Connection *conn, req_st *st, int status, const char *ctype, char *body,
                                 size_t len, const char *const *extra) {
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
                                  : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(r, "Content-Type", ctype);
    for (int i = 0; extra && extra[i]; i += 2) MHD_add_response_header(r, extra[i], extra[i + 1]);
    add_common(conn, r, st);
    st->status = status;
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Queues a static/shared text body (copied). */
static enum MHD_Result send_text(struct MHD_Connection *conn, req_st *st, int status, const char *ctype,
                                 const char *text, const char *const *extra) {
    size_t n = strlen(text);
    char *b = malloc(n + 1);
    if (!b) return MHD_NO;
    memcpy(b, text, n + 1);
    return send_body(conn, st, status, ctype, b, n, extra);
}

/* Queues the one JSON error shape; steals details. extra: header name/value pairs, NULL-ended. */
static enum MHD_Result send_error(struct MHD_Connection *conn, req_st *st, int status, const char *type,
                                  const char *msg, json_t *details, const char *const *extra) {
    size_t n = 0;
    char *b = pr_error_body(type, msg, st->request_id, details, &n);
    return send_body(conn, st, status, "application/json", b, n, extra);
}

/* Sends a JSON object (stolen). */
static enum MHD_Result send_json(struct MHD_Connection *conn, req_st *st, int status, json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!s) return send_error(conn, st, 500, "internal", "out of memory", NULL, NULL);
    return send_body(conn, st, status, "application/json", s, strlen(s), NULL);
}

/* ---- request helpers ---------------------------------------------------------------------------- */

/* Returns the route of a path (R_NONE when unknown). */
static int route_of(const char *url) {
    for (size_t i = 1; i < N_ROUTES; i++)
        if (routes[i].path[0] && !strcmp(url, routes[i].path)) return (int)i;
    if (!strncmp(url, "/predict/", 9) && url[9]) return R_PREDICT_ID;
    return R_NONE;
}

/* Returns 1 when the request's bearer token matches --api-key (or auth is off). */
static int authorized(struct MHD_Connection *conn) {
    if (!env->c->api_key[0]) return 1;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    return ut_secret_equal(h, env->c->api_key);
}

/* Returns 1 for application/json, application/<x>+json (parameters allowed) or no Content-Type. */
static int json_content_type(const char *ct) {
    if (!ct) return 1;
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, ";");
    while (n && ct[n - 1] == ' ') n--;
    if (n == 16 && !strncasecmp(ct, "application/json", 16)) return 1;
    if (n > 17 && !strncasecmp(ct, "application/", 12) && !strncasecmp(ct + n - 5, "+json", 5)) return 1;
    return 0;
}

/* Fills st->request_id from X-Request-Id when it is 1..128 safe characters, else a random one. */
static void set_request_id(struct MHD_Connection *conn, req_st *st) {
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (h) {
        size_t n = strlen(h), ok = n > 0 && n <= 128;
        for (size_t i = 0; ok && i < n; i++) {
            char c = h[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                 c == '_' || c == '.' || c == ':';
        }
        if (ok) {
            memcpy(st->request_id, h, n + 1);
            return;
        }
    }
    ut_random_hex(st->request_id, 16);
}

/* Fills st->client with the peer address. */
static void set_client(struct MHD_Connection *conn, req_st *st) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(st->client, sizeof st->client, "?");
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, st->client, sizeof st->client);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, st->client, sizeof st->client);
}

/* ---- GET routes --------------------------------------------------------------------------------- */

/* Returns 1 when the DB accepts writes and the daemon is not draining. */
static int is_ready(int *db_ok) {
    *db_ok = db_ping() == 0;
    return *db_ok && !quiesced && !jb_draining();
}

/* Answers GET /predict/{id}. */
static enum MHD_Result get_result(struct MHD_Connection *conn, req_st *st, const char *url) {
    const char *id = url + 9;
    if (!ut_is_hex64(id)) {
        json_t *d = json_pack("{s:s}", "expected", "64 hexadecimal characters (the \"id\" of a POST /predict response)");
        return send_error(conn, st, 400, "invalid_id", "malformed result id", d, NULL);
    }
    char lid[65];
    for (int i = 0; i < 64; i++) lid[i] = (char)(id[i] >= 'A' && id[i] <= 'F' ? id[i] + 32 : id[i]);
    lid[64] = '\0';
    memcpy(st->result_id, lid, 65);
    char etag[70];
    snprintf(etag, sizeof etag, "\"%s\"", lid);
    char *body = NULL;
    size_t len = 0;
    int rc = db_get(lid, &body, &len);
    if (rc < 0) {
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 503, "storage_unavailable", "the result database is unavailable; retry later",
                          NULL, extra);
    }
    if (rc == 0) {
        json_t *d = json_pack("{s:s}", "id", lid);
        return send_error(conn, st, 404, "not_found", "no stored result with this id (never computed, or evicted)",
                          d, NULL);
    }
    st->cache = 1;
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    if (inm && (strstr(inm, lid) || !strcmp(inm, "*"))) {
        free(body);
        const char *extra[] = {"ETag", etag, "X-Cache", "HIT", NULL};
        return send_body(conn, st, 304, NULL, NULL, 0, extra);
    }
    pr_mark_cached(body, len);
    const char *extra[] = {"ETag", etag, "X-Cache", "HIT", NULL};
    return send_body(conn, st, 200, "application/json", body, len, extra);
}

/* Answers the GET routes. */
static enum MHD_Result handle_get(struct MHD_Connection *conn, req_st *st, const char *url) {
    switch (st->route) {
    case R_HEALTH: {
        int draining = quiesced || jb_draining();
        return send_json(conn, st, 200, json_pack("{s:s, s:f, s:b}", "status", draining ? "draining" : "ok",
                                                  "uptime_s", ut_mono() - t_start, "draining", draining));
    }
    case R_READY: {
        int db_ok, ready = is_ready(&db_ok);
        int draining = quiesced || jb_draining();
        json_t *checks = json_pack("{s:s, s:s, s:s}", "weights", "ok", "database", db_ok ? "ok" : "unwritable",
                                   "lifecycle", draining ? "draining" : "serving");
        if (ready) return send_json(conn, st, 200, json_pack("{s:s, s:o}", "status", "ready", "checks", checks));
        const char *extra[] = {"Retry-After", "5", NULL};
        char msg[128];
        snprintf(msg, sizeof msg, "not ready: %s", draining ? "draining (shutting down)" : "database not writable");
        return send_error(conn, st, 503, draining ? "draining" : "not_ready", msg, json_pack("{s:o}", "checks", checks),
                          extra);
    }
    case R_METRICS: {
        long q, r;
        jb_counts(&q, &r);
        char *text = mt_render(q, r, !(quiesced || jb_draining()), env->model->cfg.trained);
        if (!text) return send_error(conn, st, 500, "internal", "out of memory", NULL, NULL);
        return send_body(conn, st, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text), NULL);
    }
    case R_MODEL:
        return send_text(conn, st, 200, "application/json", env->model_body, NULL);
    case R_OPENAPI:
        return send_text(conn, st, 200, "application/json", env->openapi_body, NULL);
    case R_PREDICT_ID:
        return get_result(conn, st, url);
    }
    return send_error(conn, st, 404, "not_found", "unknown route", NULL, NULL);
}

/* ---- POST /predict ------------------------------------------------------------------------------ */

/* Job completion: wakes the suspended connection (any thread). */
static void job_done(jb_job *job, void *arg) {
    (void)job;
    MHD_resume_connection((struct MHD_Connection *)arg);
}

/* Answers a finished job. */
static enum MHD_Result send_job_result(struct MHD_Connection *conn, req_st *st) {
    jb_job *j = st->job;
    st->queue_s = j->queue_s;
    st->forward_s = j->forward_s;
    st->batch_jobs = j->batch_jobs;
    if (j->status == 200) {
        char etag[70];
        snprintf(etag, sizeof etag, "\"%s\"", j->req->id);
        char *body = j->body;
        size_t len = j->body_len;
        j->body = NULL;             /* ownership moves to MHD */
        char bj[16];
        snprintf(bj, sizeof bj, "%d", j->batch_jobs);
        const char *extra[] = {"ETag", etag, "X-Cache", "MISS", "X-Batch-Requests", bj, NULL};
        return send_body(conn, st, 200, "application/json", body, len, extra);
    }
    const char *extra[] = {"Retry-After", "2", NULL};
    return send_error(conn, st, j->status, j->err_type, j->err_msg, NULL, j->status == 503 ? extra : NULL);
}

/* Handles the complete body of POST /predict: validate, cache lookup, or queue and suspend. */
static enum MHD_Result predict(struct MHD_Connection *conn, req_st *st) {
    if (st->overflow) {
        char msg[160];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %ld bytes (--max-body)", env->c->max_body);
        return send_error(conn, st, 413, "payload_too_large", msg, json_pack("{s:I}", "limit",
                          (json_int_t)env->c->max_body), NULL);
    }
    pr_limits lim = {env->c->max_length, env->c->max_batch};
    size_t exact_max = env->model->cfg.kernel == PF_KERNEL_EXACT ? pf_exact_max_len(env->model) : 0;
    if (exact_max > 2 && (long)exact_max - 2 < lim.max_length) lim.max_length = (long)exact_max - 2;
    pr_request *req = NULL;
    pr_error e;
    if (pr_parse(st->body, st->len, &lim, env->model->sha256, &req, &e))
        return send_error(conn, st, e.status, e.type, e.msg, e.details, NULL);
    memcpy(st->result_id, req->id, sizeof req->id);
    char etag[70];
    snprintf(etag, sizeof etag, "\"%s\"", req->id);
    char *body = NULL;
    size_t len = 0;
    int rc = db_get(req->id, &body, &len);
    if (rc < 0) {
        pr_free(req);
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 503, "storage_unavailable", "the result database is unavailable; retry later",
                          NULL, extra);
    }
    mt_cache(rc == 1);
    if (rc == 1) {
        pr_free(req);
        st->cache = 1;
        pr_mark_cached(body, len);
        const char *extra[] = {"ETag", etag, "X-Cache", "HIT", NULL};
        return send_body(conn, st, 200, "application/json", body, len, extra);
    }
    st->cache = 0;
    int res = jb_reserve();
    if (res == -1) {
        pr_free(req);
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 429, "queue_full", "the inference queue is full; retry after a second",
                          json_pack("{s:I}", "queue_limit", (json_int_t)env->c->queue), extra);
    }
    if (res == -2) {
        pr_free(req);
        const char *extra[] = {"Retry-After", "5", NULL};
        return send_error(conn, st, 503, "draining", "the server is shutting down; retry on another instance", NULL,
                          extra);
    }
    st->waiting = 1;
    MHD_suspend_connection(conn);   /* before submitting, so the job cannot resume us first */
    st->job = jb_submit(req, ut_mono() + (double)env->c->timeout, job_done, conn);
    if (!st->job) {
        st->waiting = 0;
        MHD_resume_connection(conn);
        st->overflow = 2;           /* answered as out of memory on the resumed call */
    }
    return MHD_YES;
}

/* ---- MHD callbacks ------------------------------------------------------------------------------ */

/* Answers OPTIONS (CORS preflight or plain). */
static enum MHD_Result options(struct MHD_Connection *conn, req_st *st) {
    const char *origin, *allow = allowed_origin(conn, &origin);
    const char *allow_methods = routes[st->route].allow;
    if (!origin) {
        const char *extra[] = {"Allow", allow_methods, NULL};
        return send_body(conn, st, 204, NULL, NULL, 0, extra);
    }
    if (!allow) {
        char msg[300];
        snprintf(msg, sizeof msg, "origin not allowed (configure it with --cors-origin)");
        return send_error(conn, st, 403, "cors_origin_denied", msg, NULL, NULL);
    }
    const char *extra[] = {"Allow", allow_methods, "Access-Control-Allow-Methods", allow_methods,
                           "Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-Id",
                           "Access-Control-Max-Age", "600", NULL};
    return send_body(conn, st, 204, NULL, NULL, 0, extra);
}

/* Answers every request except a well-formed POST /predict, from the headers alone (on the final
 * call, so that MHD keeps the connection alive). Returns 1 when a response was queued (*ret set),
 * 0 when the request is a POST /predict to read. */
static int decide(struct MHD_Connection *conn, req_st *st, const char *url, enum MHD_Result *ret) {
    int is_get = !strcmp(st->method, "GET") || !strcmp(st->method, "HEAD");
    if (!strcmp(st->method, "OPTIONS")) {
        *ret = st->route == R_NONE ? send_error(conn, st, 404, "not_found", "unknown route", NULL, NULL)
                                   : options(conn, st);
        return 1;
    }
    if (st->route != R_HEALTH && st->route != R_READY && !authorized(conn)) {
        const char *extra[] = {"WWW-Authenticate", "Bearer realm=\"performerd\"", NULL};
        *ret = send_error(conn, st, 401, "unauthorized", "missing or invalid bearer token (Authorization: Bearer KEY)",
                          NULL, extra);
        return 1;
    }
    if (st->route == R_NONE) {
        json_t *d = json_pack("{s:[s,s,s,s,s,s,s]}", "routes", "POST /predict", "GET /predict/{id}", "GET /health",
                              "GET /ready", "GET /metrics", "GET /model", "GET /openapi.json");
        *ret = send_error(conn, st, 404, "not_found", "unknown route", d, NULL);
        return 1;
    }
    int ok_method = routes[st->route].is_post ? !strcmp(st->method, "POST") : is_get;
    if (!ok_method) {
        const char *extra[] = {"Allow", routes[st->route].allow, NULL};
        char msg[128];
        snprintf(msg, sizeof msg, "method %s not allowed on %s (allowed: %s)", st->method, routes[st->route].label,
                 routes[st->route].allow);
        *ret = send_error(conn, st, 405, "method_not_allowed", msg, NULL, extra);
        return 1;
    }
    if (!routes[st->route].is_post) {
        *ret = handle_get(conn, st, url);
        return 1;
    }
    if (quiesced || jb_draining()) {
        const char *extra[] = {"Retry-After", "5", NULL};
        *ret = send_error(conn, st, 503, "draining", "the server is shutting down; retry on another instance", NULL,
                          extra);
        return 1;
    }
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!json_content_type(ct)) {
        char got[96];
        snprintf(got, sizeof got, "%s", ct);
        sanitize(got);
        char msg[200];
        snprintf(msg, sizeof msg, "unsupported content type '%s' (send application/json)", got);
        *ret = send_error(conn, st, 415, "unsupported_media_type", msg, NULL, NULL);
        return 1;
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (errno || (unsigned long long)env->c->max_body < v) {
            char msg[160];
            snprintf(msg, sizeof msg, "request body of %s bytes exceeds the limit of %ld bytes (--max-body)", cl,
                     env->c->max_body);
            sanitize(msg);
            *ret = send_error(conn, st, 413, "payload_too_large", msg,
                              json_pack("{s:I}", "limit", (json_int_t)env->c->max_body), NULL);
            return 1;
        }
    }
    return 0;
}

/* The MHD access handler. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)cls;
    (void)version;
    req_st *st = *con_cls;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st) return MHD_NO;
        *con_cls = st;
        pthread_mutex_lock(&active_mu);
        active++;
        pthread_mutex_unlock(&active_mu);
        st->t0 = ut_mono();
        st->cache = -1;
        st->route = route_of(url);
        snprintf(st->method, sizeof st->method, "%s", method);
        sanitize(st->method);
        snprintf(st->path, sizeof st->path, "%s", url);
        sanitize(st->path);
        set_request_id(conn, st);
        set_client(conn, st);
        /* A POST /predict that will be refused is answered before its body is read (413 on
         * Content-Length, 415, 401, 503); MHD then closes the connection instead of reading. */
        if (st->route == R_PREDICT && !strcmp(st->method, "POST")) {
            enum MHD_Result ret;
            if (decide(conn, st, url, &ret)) return ret;
            st->reading = 1;
        }
        return MHD_YES;             /* everything else is answered on the final call (keep-alive) */
    }
    if (st->status) {               /* answered already; swallow any remaining upload */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!st->reading || st->overflow || st->len + n > (size_t)env->c->max_body) {
            st->overflow = st->reading;   /* keep reading to answer 413, but bound what we swallow */
            st->discarded += n;
            return st->discarded > (size_t)env->c->max_body * 4 + (1u << 20) ? MHD_NO : MHD_YES;
        }
        if (st->len + n > st->cap) {
            size_t nc = st->cap ? st->cap : 4096;
            while (nc < st->len + n) nc *= 2;
            if (nc > (size_t)env->c->max_body) nc = (size_t)env->c->max_body;
            char *p = realloc(st->body, nc);
            if (!p) return MHD_NO;
            st->body = p;
            st->cap = nc;
        }
        memcpy(st->body + st->len, upload_data, n);
        st->len += n;
        return MHD_YES;
    }
    if (!st->reading) {
        enum MHD_Result ret;
        if (decide(conn, st, url, &ret)) return ret;
        return send_error(conn, st, 500, "internal", "unroutable request", NULL, NULL);
    }
    if (st->job) return send_job_result(conn, st);
    if (st->overflow == 2)
        return send_error(conn, st, 503, "out_of_memory", "out of memory; retry later", NULL, NULL);
    return predict(conn, st);
}

/* Completion: metrics, requests table, log line, free the state. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)conn;
    req_st *st = *con_cls;
    if (!st) return;
    *con_cls = NULL;
    double dur = ut_mono() - st->t0;
    int status = st->status ? st->status : 499;   /* 499: client went away before an answer */
    const char *label = routes[st->route].label;
    mt_request(label, st->method, status, dur);
    db_log_request(ut_wall(), st->request_id, st->result_id[0] ? st->result_id : NULL, st->method, label, status,
                   dur * 1000.0, st->cache == 1, st->client);
    char ts[40];
    iso_now(ts, sizeof ts);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:s}", "time", ts, "level",
                          status >= 500 ? "error" : status >= 400 ? "warn" : "info", "msg", "request", "request_id",
                          st->request_id, "method", st->method, "path", st->path, "route", label, "status", status,
                          "duration_ms", dur * 1000.0, "client", st->client);
    if (o) {
        if (st->cache >= 0) json_object_set_new(o, "cache", json_string(st->cache ? "HIT" : "MISS"));
        if (st->result_id[0]) json_object_set_new(o, "result_id", json_string(st->result_id));
        if (st->job) {
            json_object_set_new(o, "queue_ms", json_real(st->queue_s * 1000.0));
            json_object_set_new(o, "forward_ms", json_real(st->forward_s * 1000.0));
            json_object_set_new(o, "batch_requests", json_integer(st->batch_jobs));
        }
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) json_object_set_new(o, "terminated", json_true());
        emit(o);
    }
    jb_release(st->job);
    free(st->body);
    free(st);
    pthread_mutex_lock(&active_mu);
    if (--active == 0) pthread_cond_broadcast(&active_cv);
    pthread_mutex_unlock(&active_mu);
}

/* Waits up to timeout_s for every begun request to complete. */
int http_wait_idle(double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + (timeout_s > 0 ? timeout_s : 0);
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    pthread_mutex_lock(&active_mu);
    while (active > 0 && pthread_cond_timedwait(&active_cv, &active_mu, &ts) == 0) {}
    int rc = active > 0 ? -1 : 0;
    pthread_mutex_unlock(&active_mu);
    return rc;
}

/* Starts the daemon. */
int http_start(const http_env *e, int listen_fd, char *err, size_t errlen) {
    env = e;
    t_start = ut_mono();
    listen_fd_ = listen_fd;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    daemon_ = MHD_start_daemon(flags, 0, NULL, NULL, &on_request, NULL,
                               MHD_OPTION_EXTERNAL_LOGGER, &mhd_logger, NULL,
                               MHD_OPTION_LISTEN_SOCKET, listen_fd,
                               MHD_OPTION_THREAD_POOL_SIZE, (unsigned)e->c->http_threads,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)e->c->conn_timeout,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)e->c->max_connections,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                               MHD_OPTION_NOTIFY_COMPLETED, &on_completed, NULL,
                               MHD_OPTION_END);
    if (!daemon_) {
        snprintf(err, errlen, "cannot start the HTTP server (libmicrohttpd); see the log line above");
        return -1;
    }
    return 0;
}

/* Stops accepting connections. */
void http_quiesce(void) {
    if (!daemon_ || quiesced) return;
    quiesced = 1;
    MHD_socket fd = MHD_quiesce_daemon(daemon_);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    listen_fd_ = -1;
}

/* Stops the daemon. */
void http_stop(void) {
    if (daemon_) MHD_stop_daemon(daemon_);
    daemon_ = NULL;
    if (listen_fd_ >= 0) close(listen_fd_);
    listen_fd_ = -1;
}
