/* http.c - libmicrohttpd glue, routing, auth, CORS, errors, logging (see http.h). */
#include "http.h"
#include "batch.h"
#include "cache.h"
#include "guard.h"
#include "hot.h"
#include "jobs.h"
#include "jobs_async.h"
#include "metrics.h"
#include "page.h"
#include "predict.h"
#include "reqlog.h"
#include "task.h"
#include "util.h"

#include "safetensors.h"

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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { R_NONE, R_PREDICT, R_SCORE, R_EMBED, R_LOGITS, R_PREDICT_ID, R_SCORE_ID, R_EMBED_ID, R_LOGITS_ID, R_JOBS,
       R_JOB_ID, R_JOB_RESULT, R_PAGE, R_HEALTH, R_READY, R_METRICS, R_MODEL, R_OPENAPI };

#define M_GET 1                 /* GET and HEAD */
#define M_POST 2
#define M_DELETE 4

static const struct {
    const char *path;           /* exact path, or the prefix of an id route ("/predict/") */
    const char *label;          /* metrics/log label */
    const char *allow;          /* Allow header */
    int methods;                /* M_* */
    int id_route;               /* path is a prefix followed by an id */
} routes[] = {
    [R_NONE] = {"", "other", "", 0, 0},
    [R_PREDICT] = {"/predict", "/predict", "POST, OPTIONS", M_POST, 0},
    [R_SCORE] = {"/score", "/score", "POST, OPTIONS", M_POST, 0},
    [R_EMBED] = {"/embed", "/embed", "POST, OPTIONS", M_POST, 0},
    [R_LOGITS] = {"/logits", "/logits", "POST, OPTIONS", M_POST, 0},
    [R_PREDICT_ID] = {"/predict/", "/predict/{id}", "GET, HEAD, OPTIONS", M_GET, 1},
    [R_SCORE_ID] = {"/score/", "/score/{id}", "GET, HEAD, OPTIONS", M_GET, 1},
    [R_EMBED_ID] = {"/embed/", "/embed/{id}", "GET, HEAD, OPTIONS", M_GET, 1},
    [R_LOGITS_ID] = {"/logits/", "/logits/{id}", "GET, HEAD, OPTIONS", M_GET, 1},
    [R_JOBS] = {"/jobs", "/jobs", "GET, HEAD, POST, OPTIONS", M_GET | M_POST, 0},
    [R_JOB_ID] = {"/jobs/", "/jobs/{id}", "GET, HEAD, DELETE, OPTIONS", M_GET | M_DELETE, 1},
    [R_JOB_RESULT] = {"", "/jobs/{id}/result", "GET, HEAD, OPTIONS", M_GET, 0},
    [R_PAGE] = {"/", "/", "GET, HEAD, OPTIONS", M_GET, 0},
    [R_HEALTH] = {"/health", "/health", "GET, HEAD, OPTIONS", M_GET, 0},
    [R_READY] = {"/ready", "/ready", "GET, HEAD, OPTIONS", M_GET, 0},
    [R_METRICS] = {"/metrics", "/metrics", "GET, HEAD, OPTIONS", M_GET, 0},
    [R_MODEL] = {"/model", "/model", "GET, HEAD, OPTIONS", M_GET, 0},
    [R_OPENAPI] = {"/openapi.json", "/openapi.json", "GET, HEAD, OPTIONS", M_GET, 0},
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
    int reading;                /* a POST whose body is accumulated */
    int waiting;                /* suspended on a job */
    jb_job *job;
    double queue_s, forward_s;
    double store_s;             /* the job's result commit (jb_job.store_s) */
    double resume_s;            /* from the job being done to its answer being built here */
    double t_answer;            /* ut_mono() when the job's answer was built here (0: none) */
    int batch_jobs;
    gd_conn *guard;             /* the connection's deadline (guard.h), or NULL */
} req_st;

static const http_env *env;
static struct MHD_Daemon *daemon_;
static int listen_fd_ = -1;
static volatile int quiesced;
static pthread_mutex_t active_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t active_cv = PTHREAD_COND_INITIALIZER;
static long active;             /* requests begun and not yet completed */
static double t_start;
static tk_limits tk_lim;        /* per-request limits of the model routes */

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

/* A log line being built in a fixed buffer: appends past cap are truncated (never overrun). */
typedef struct {
    char *s;
    size_t len, cap;
} lb;

/* Appends n bytes (truncated at cap). */
static void lb_put(lb *b, const char *s, size_t n) {
    if (n > b->cap - b->len) n = b->cap - b->len;
    memcpy(b->s + b->len, s, n);
    b->len += n;
}

/* Appends key (literal JSON text such as ,"route":) and v as a JSON string (v is printable ASCII:
 * sanitized; quotes and backslashes are escaped). */
static void lb_key(lb *b, const char *key, const char *v) {
    lb_put(b, key, strlen(key));
    char tmp[600];
    size_t k = 0;
    tmp[k++] = '"';
    for (; *v && k < sizeof tmp - 3; v++) {
        if (*v == '"' || *v == '\\') tmp[k++] = '\\';
        tmp[k++] = *v;
    }
    tmp[k++] = '"';
    lb_put(b, tmp, k);
}

/* Appends key and a number: an integer, or (real) 6 significant digits as valid JSON. */
static void lb_num(lb *b, const char *key, double v, int real) {
    lb_put(b, key, strlen(key));
    char tmp[40];
    int n = real ? snprintf(tmp, sizeof tmp, "%.6g", isfinite(v) ? v : 0.0) : snprintf(tmp, sizeof tmp, "%.0f", v);
    if (real && !strpbrk(tmp, ".eEn")) n += snprintf(tmp + n, sizeof tmp - (size_t)n, ".0");
    lb_put(b, tmp, (size_t)n);
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

/* libmicrohttpd's fatal internal error (MHD_PANIC): logs it as one JSON line naming the place and
 * the reason, then aborts (the crash report in main.c follows with the stack trace). */
static void mhd_panic(void *cls, const char *file, unsigned int line, const char *reason) {
    (void)cls;
    char where[300], ln[16];
    snprintf(where, sizeof where, "%s", file ? file : "?");
    snprintf(ln, sizeof ln, "%u", line);
    http_log("fatal", "libmicrohttpd panic", "file", where, "line", ln, "detail", reason ? reason : "", (char *)NULL);
    abort();
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
    /* with CORS configured the answer depends on Origin (with or without the allow header): a shared
     * cache must not hand the copy made for one origin (or none) to another */
    if (*env->c->cors_origin) MHD_add_response_header(r, "Vary", "Origin");
    if (allow) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", allow);
        MHD_add_response_header(r, "Access-Control-Expose-Headers",
                                "X-Request-Id, X-Cache, ETag, Retry-After, Server-Timing, X-Response-Time, Location, "
                                "X-Job-State, X-Job-Total, X-Batch-Requests");
    }
    double total = (ut_mono() - st->t0) * 1000.0;
    snprintf(buf, sizeof buf, "%.3fms", total);
    MHD_add_response_header(r, "X-Response-Time", buf);
    if (st->job)
        snprintf(buf, sizeof buf, "queue;dur=%.3f, forward;dur=%.3f, store;dur=%.3f, total;dur=%.3f",
                 st->queue_s * 1000.0, st->forward_s * 1000.0, st->store_s * 1000.0, total);
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

/* Queues a 200 answer from the hot map: the blob's bytes are handed to MHD without a copy (the
 * reference is dropped when MHD is done with them). Takes the caller's reference to b. */
static enum MHD_Result send_blob(struct MHD_Connection *conn, req_st *st, hc_blob *b, const char *id) {
    size_t len;
    const char *data = hc_blob_data(b, &len);
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback_cls(len, (void *)data,
                                                                                    hc_blob_free_cb, b);
    if (!r) {
        hc_blob_release(b);
        return MHD_NO;
    }
    char etag[70];
    snprintf(etag, sizeof etag, "\"%s\"", id);
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "ETag", etag);
    MHD_add_response_header(r, "X-Cache", "HIT");
    add_common(conn, r, st);
    st->status = 200;
    enum MHD_Result ret = MHD_queue_response(conn, 200, r);
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
    static const char *const retry[] = {"Retry-After", "1", NULL};   /* every 503 says when to retry */
    return send_body(conn, st, status, "application/json", b, n, status == 503 && !extra ? retry : extra);
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
    for (size_t i = 1; i < N_ROUTES; i++) {
        if (!routes[i].path[0]) continue;
        if (!routes[i].id_route && !strcmp(url, routes[i].path)) return (int)i;
        size_t n = strlen(routes[i].path);
        if (routes[i].id_route && !strncmp(url, routes[i].path, n) && url[n]) {
            if (i == R_JOB_ID) {
                const char *slash = strchr(url + n, '/');
                if (slash) return slash > url + n && !strcmp(slash, "/result") ? R_JOB_RESULT : R_NONE;
            }
            return (int)i;
        }
    }
    return R_NONE;
}

/* Returns the task of a model route. */
static tk_kind kind_of(int route) {
    return route == R_SCORE ? TK_SCORE : route == R_EMBED ? TK_EMBED : route == R_LOGITS ? TK_LOGITS : TK_PREDICT;
}

/* Returns 1 for a POST whose body is read (the model routes and POST /jobs). */
static int reads_body(const req_st *st) {
    return !strcmp(st->method, "POST") && (st->route == R_PREDICT || st->route == R_SCORE || st->route == R_EMBED ||
                                           st->route == R_LOGITS || st->route == R_JOBS);
}

/* Returns the body limit of the request's route. */
static long body_cap(const req_st *st) { return st->route == R_JOBS ? env->c->max_job_body : env->c->max_body; }

/* The most body bytes swallowed unread for a request being refused (see on_request). */
static unsigned long long discard_cap(const req_st *st) { return (unsigned long long)body_cap(st) * 4 + (1u << 20); }

/* Reads the request's Content-Length into *v: 1 when given, 0 when absent, -1 when not a number. */
static int content_length(struct MHD_Connection *conn, unsigned long long *v) {
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (!cl) return 0;
    char *end;
    errno = 0;
    *v = strtoull(cl, &end, 10);
    return errno || end == cl ? -1 : 1;
}

/* Returns the option that sets body_cap. */
static const char *body_cap_option(const req_st *st) { return st->route == R_JOBS ? "--max-job-body" : "--max-body"; }

/* Returns 1 when the request's bearer token matches --api-key (or auth is off). */
static int authorized(struct MHD_Connection *conn) {
    if (!env->c->api_key[0]) return 1;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    return ut_secret_equal(h, env->c->api_key);
}

/* Returns 1 for application/json or application/<x>+json (parameters allowed); 0 for anything
 * else, no Content-Type included. */
static int json_content_type(const char *ct) {
    if (!ct) return 0;   /* no type: a browser's cross-site "simple" request, sent without a preflight */
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, ";");
    while (n && ct[n - 1] == ' ') n--;
    if (n == 16 && !strncasecmp(ct, "application/json", 16)) return 1;
    if (n > 17 && !strncasecmp(ct, "application/", 12) && !strncasecmp(ct + n - 5, "+json", 5)) return 1;
    return 0;
}

/* Returns 1 for a FASTA content type (text/x-fasta, application/x-fasta, text/fasta,
 * chemical/seq-aa-fasta; parameters allowed). Not text/plain: a browser sends it cross-site without
 * a CORS preflight, so any web page a lab member opens could queue jobs on their daemon. */
static int fasta_content_type(const char *ct) {
    static const char *const types[] = {"text/x-fasta", "application/x-fasta", "text/fasta",
                                        "chemical/seq-aa-fasta", NULL};
    if (!ct) return 0;
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, ";");
    while (n && ct[n - 1] == ' ') n--;
    for (const char *const *t = types; *t; t++)
        if (n == strlen(*t) && !strncasecmp(ct, *t, n)) return 1;
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

/* The weights file as last checked: identity and verdict (under wcheck_mu). */
static pthread_mutex_t wcheck_mu = PTHREAD_MUTEX_INITIALIZER;
static struct stat wcheck_st;
static int wcheck_init;
static const char *wcheck_state = "ok";
static char wcheck_sha[65];

/* Returns "ok" when the weights file on disk is the one being served, "changed" when it holds other
 * weights (their SHA-256 in file_sha), or "missing". The file is hashed again only when its
 * identity (device, inode, size, modification time) changes. The served model never changes: it is
 * a private copy made at start-up; a restart loads the new file. */
static const char *weights_check(char file_sha[65]) {
    struct stat now;
    pthread_mutex_lock(&wcheck_mu);
    if (!wcheck_init) {
        wcheck_st = env->weights_stat;
        wcheck_init = 1;
    }
    if (stat(env->c->weights, &now) != 0) {
        if (strcmp(wcheck_state, "missing"))
            http_log("warn", "the weights file is gone; still serving the model loaded at start-up", "weights",
                     env->c->weights, "sha256", env->model->sha256, (char *)NULL);
        wcheck_state = "missing";
        memset(&wcheck_st, 0, sizeof wcheck_st);
    } else if (now.st_dev != wcheck_st.st_dev || now.st_ino != wcheck_st.st_ino || now.st_size != wcheck_st.st_size ||
               now.st_mtim.tv_sec != wcheck_st.st_mtim.tv_sec || now.st_mtim.tv_nsec != wcheck_st.st_mtim.tv_nsec) {
        char sha[65], e[512];
        if (st_sha256_file(env->c->weights, sha, e, sizeof e) == 0) {
            wcheck_st = now;
            const char *was = wcheck_state;
            wcheck_state = strcmp(sha, env->model->sha256) ? "changed" : "ok";
            memcpy(wcheck_sha, sha, sizeof wcheck_sha);
            if (strcmp(was, wcheck_state))
                http_log(strcmp(wcheck_state, "ok") ? "warn" : "info",
                         strcmp(wcheck_state, "ok") ? "the weights file changed on disk; still serving the model loaded"
                                                      " at start-up (restart to load the new one)"
                                                    : "the weights file matches the served model again",
                         "weights", env->c->weights, "serving_sha256", env->model->sha256, "file_sha256", sha,
                         (char *)NULL);
        }
    }
    const char *state = wcheck_state;
    memcpy(file_sha, wcheck_sha, 65);
    pthread_mutex_unlock(&wcheck_mu);
    return state;
}

/* Returns 1 when the DB accepts writes and the daemon is not draining. */
static int is_ready(int *db_ok) {
    *db_ok = db_ping() == 0;
    return *db_ok && !quiesced && !jb_draining();
}

/* Answers GET /predict/{id} (and /score/{id}, /embed/{id}, /logits/{id}: ids are one namespace). */
static enum MHD_Result get_result(struct MHD_Connection *conn, req_st *st, const char *url) {
    const char *id = url + strlen(routes[st->route].path);
    if (!ut_is_hex64(id)) {
        json_t *d = json_pack("{s:s}", "expected", "64 hexadecimal characters (the \"id\" of a POST /predict, /score,"
                              " /embed or /logits response)");
        return send_error(conn, st, 400, "invalid_id", "malformed result id", d, NULL);
    }
    char lid[65];
    for (int i = 0; i < 64; i++) lid[i] = (char)(id[i] >= 'A' && id[i] <= 'F' ? id[i] + 32 : id[i]);
    lid[64] = '\0';
    memcpy(st->result_id, lid, 65);
    char etag[70];
    snprintf(etag, sizeof etag, "\"%s\"", lid);
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    int not_modified = ut_etag_match(inm, etag);
    hc_blob *hb = NULL;
    char *body = NULL;
    size_t len = 0;
    int rc = hc_lookup(lid, 1, &hb, &body, &len);
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
    const char *extra[] = {"ETag", etag, "X-Cache", "HIT", NULL};
    if (not_modified) {
        hc_blob_release(hb);
        free(body);
        return send_body(conn, st, 304, NULL, NULL, 0, extra);
    }
    if (hb) return send_blob(conn, st, hb, lid);
    return send_body(conn, st, 200, "application/json", body, len, extra);
}

/* Copies the 64-hex job id of a /jobs/{id}[/result] URL (lower case) to id; 0, or -1 when malformed. */
static int job_id_of(const char *url, char id[65]) {
    const char *p = url + 6;
    size_t n = strcspn(p, "/");
    if (n != 64) return -1;
    char tmp[65];
    memcpy(tmp, p, 64);
    tmp[64] = '\0';
    if (!ut_is_hex64(tmp)) return -1;
    for (int i = 0; i < 65; i++) id[i] = (char)(tmp[i] >= 'A' && tmp[i] <= 'F' ? tmp[i] + 32 : tmp[i]);
    return 0;
}

/* Reads the job of a /jobs/{id} URL into *j; on failure queues the error and returns 0 with *ret. */
static int load_job(struct MHD_Connection *conn, req_st *st, const char *url, db_job *j, enum MHD_Result *ret) {
    char id[65];
    if (job_id_of(url, id)) {
        *ret = send_error(conn, st, 400, "invalid_id", "malformed job id",
                          json_pack("{s:s}", "expected", "64 hexadecimal characters (the \"id\" of POST /jobs)"), NULL);
        return 0;
    }
    memcpy(st->result_id, id, sizeof id);
    int rc = db_job_get(id, j);
    if (rc < 0) {
        const char *extra[] = {"Retry-After", "1", NULL};
        *ret = send_error(conn, st, 503, "storage_unavailable", "the job database is unavailable; retry later", NULL,
                          extra);
        return 0;
    }
    if (rc == 0) {
        *ret = send_error(conn, st, 404, "not_found", "no job with this id (never submitted, or deleted)",
                          json_pack("{s:s}", "id", id), NULL);
        return 0;
    }
    return 1;
}

/* Answers GET /jobs: the most recent jobs (?limit=N, default 50, at most 1000). */
static enum MHD_Result list_jobs(struct MHD_Connection *conn, req_st *st) {
    long limit = 50;
    const char *l = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (l) {
        char *end;
        errno = 0;
        limit = strtol(l, &end, 10);
        if (errno || end == l || *end || limit < 1 || limit > 1000)
            return send_error(conn, st, 422, "invalid_limit", "limit must be an integer from 1 to 1000",
                              json_pack("{s:i, s:i}", "min", 1, "max", 1000), NULL);
    }
    db_job *v = NULL;
    int n = 0;
    if (db_job_list((int)limit, &v, &n)) {
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 503, "storage_unavailable", "the job database is unavailable; retry later", NULL,
                          extra);
    }
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(a, ja_job_json(&v[i]));
        db_job_clear(&v[i]);
    }
    free(v);
    return send_json(conn, st, 200, json_pack("{s:o}", "jobs", a));
}

/* Streams the JSON Lines of a job's finished sequences (see reader). */
typedef struct {
    char id[65];
    long long next;             /* next index to read */
    ut_buf buf;                 /* lines read, not yet sent */
    size_t sent;                /* bytes of buf already sent */
    int eof, failed;
    int full;                   /* the last refill stopped at RESULT_REFILL_BYTES */
} result_reader;

/* A refill of a job's result stream stops once this many bytes are buffered: the memory of a
 * download is bounded by it plus one sequence's line, whatever the size of the items (64 per-residue
 * embeddings of long sequences are gigabytes). */
#define RESULT_REFILL_BYTES ((size_t)1 << 20)

/* db_job_items callback: appends one line; stops the refill once RESULT_REFILL_BYTES are buffered. */
static int append_line(long long idx, const char *name, int status, const char *out, size_t len, void *arg) {
    result_reader *r = arg;
    bt_result_line(&r->buf, idx, name, status, out, len);
    r->next = idx + 1;
    if (r->buf.oom) return 1;
    r->full = r->buf.len >= RESULT_REFILL_BYTES;
    return r->full;
}

/* MHD content reader: refills from SQLite up to 64 sequences (and about RESULT_REFILL_BYTES) at a
 * time. */
static ssize_t read_results(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    result_reader *r = cls;
    if (r->sent == r->buf.len) {
        r->buf.len = 0;
        r->sent = 0;
        if (r->eof) return MHD_CONTENT_READER_END_OF_STREAM;
        r->full = 0;
        int n = db_job_items(r->id, r->next, 64, append_line, r);
        if (n < 0 || r->buf.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (n < 64 && !r->full) r->eof = 1;   /* fewer rows than asked for: none left */
        if (r->buf.len == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    }
    size_t k = r->buf.len - r->sent < max ? r->buf.len - r->sent : max;
    memcpy(buf, r->buf.s + r->sent, k);
    r->sent += k;
    return (ssize_t)k;
}

/* Frees a reader. */
static void free_reader(void *cls) {
    result_reader *r = cls;
    free(r->buf.s);
    free(r);
}

/* Answers GET /jobs/{id}/result: 409 until the job is done unless ?partial=true. */
static enum MHD_Result job_result(struct MHD_Connection *conn, req_st *st, const char *url) {
    db_job j;
    enum MHD_Result ret;
    if (!load_job(conn, st, url, &j, &ret)) return ret;
    const char *partial = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "partial");
    if (partial && !*partial) partial = NULL;   /* "?partial=": as if absent */
    int want_partial = partial && (!strcasecmp(partial, "true") || !strcmp(partial, "1"));
    if (partial && !want_partial && strcasecmp(partial, "false") && strcmp(partial, "0")) {
        db_job_clear(&j);
        json_t *d = json_pack("{s:s}", "field", "partial");
        return send_error(conn, st, 400, "invalid_type", "?partial= takes true, false, 1 or 0", d, NULL);
    }
    char total[32], state[16];
    snprintf(total, sizeof total, "%lld", j.total);
    snprintf(state, sizeof state, "%s", j.state);
    if (strcmp(j.state, "done") && !want_partial) {
        json_t *d = json_pack("{s:s, s:f, s:I}", "state", j.state, "progress",
                              j.total ? (double)(j.done + j.failed) / (double)j.total : 1.0, "total",
                              (json_int_t)j.total);
        char msg[200];
        snprintf(msg, sizeof msg, "the job is %s, not done: poll GET /jobs/%s, or ask for the finished sequences so far"
                 " with ?partial=true", j.state, j.id);
        db_job_clear(&j);
        return send_error(conn, st, 409, "job_not_finished", msg, d, NULL);
    }
    result_reader *r = calloc(1, sizeof *r);
    if (!r) {
        db_job_clear(&j);
        return send_error(conn, st, 500, "internal", "out of memory", NULL, NULL);
    }
    memcpy(r->id, j.id, sizeof r->id);
    db_job_clear(&j);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, read_results, r,
                                                                  free_reader);
    if (!resp) {
        free_reader(r);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/x-ndjson");
    MHD_add_response_header(resp, "X-Job-State", state);
    MHD_add_response_header(resp, "X-Job-Total", total);
    add_common(conn, resp, st);
    st->status = 200;
    ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Answers GET / with the web page (CSP, no sniffing, no referrer, revalidated). */
static enum MHD_Result page(struct MHD_Connection *conn, req_st *st) {
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    const char *extra[] = {"Content-Security-Policy", pg_csp(), "X-Content-Type-Options", "nosniff",
                           "Referrer-Policy", "no-referrer", "X-Frame-Options", "DENY", "Cache-Control", "no-cache",
                           "ETag", pg_etag(), NULL};
    if (ut_etag_match(inm, pg_etag())) return send_body(conn, st, 304, NULL, NULL, 0, extra);
    size_t len;
    const char *html = pg_html(&len);
    char *b = malloc(len);
    if (!b) return send_error(conn, st, 500, "internal", "out of memory", NULL, NULL);
    memcpy(b, html, len);
    return send_body(conn, st, 200, "text/html; charset=utf-8", b, len, extra);
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
        char file_sha[65];
        const char *weights = weights_check(file_sha);
        json_t *checks = json_pack("{s:s, s:s, s:s, s:s}", "weights", weights, "serving_sha256", env->model->sha256,
                                   "database", db_ok ? "ok" : "unwritable", "lifecycle",
                                   draining ? "draining" : "serving");
        if (!strcmp(weights, "changed")) json_object_set_new(checks, "file_sha256", json_string(file_sha));
        if (!db_ok) json_object_set_new(checks, "database_error", json_string(db_last_error()));
        if (ready) return send_json(conn, st, 200, json_pack("{s:s, s:o}", "status", "ready", "checks", checks));
        const char *extra[] = {"Retry-After", "5", NULL};
        char msg[128];
        snprintf(msg, sizeof msg, "not ready: %s", draining ? "draining (shutting down)" : "database not writable");
        return send_error(conn, st, 503, draining ? "draining" : "not_ready", msg, json_pack("{s:o}", "checks", checks),
                          extra);
    }
    case R_METRICS: {
        mt_gauges g = {0};
        char file_sha[65];
        jb_counts(&g.queue_depth, &g.running);
        g.background_depth = jb_background_depth();
        int db_ok;
        g.ready = is_ready(&db_ok);   /* as /ready decides: database writable (one small write), not draining */
        g.trained = env->model->cfg.trained;
        g.weights_changed = strcmp(weights_check(file_sha), "ok") != 0;
        gd_counts(&g.connections, &g.connections_cut);
        g.log_dropped = rl_dropped();
        g.log_pruned = rl_pruned();
        g.db_checkpoints = db_checkpoints();
        hc_stats_t hs;
        hc_stats(&hs);
        g.hot_hits = hs.hits;
        g.hot_evictions = hs.evictions;
        g.hot_entries = hs.entries;
        g.hot_bytes = hs.bytes;
        g.jobs_known = db_job_states(g.jobs_by_state) == 0;
        g.jobs_requeued = ja_requeued();
        char *text = mt_render(&g);
        if (!text) return send_error(conn, st, 500, "internal", "out of memory", NULL, NULL);
        return send_body(conn, st, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text), NULL);
    }
    case R_MODEL:
        return send_text(conn, st, 200, "application/json", env->model_body, NULL);
    case R_OPENAPI:
        return send_text(conn, st, 200, "application/json", env->openapi_body, NULL);
    case R_PREDICT_ID:
    case R_SCORE_ID:
    case R_EMBED_ID:
    case R_LOGITS_ID:
        return get_result(conn, st, url);
    case R_JOBS:
        return list_jobs(conn, st);
    case R_JOB_ID: {
        db_job j;
        enum MHD_Result ret;
        if (!load_job(conn, st, url, &j, &ret)) return ret;
        json_t *o = ja_job_json(&j);
        db_job_clear(&j);
        return send_json(conn, st, 200, o);
    }
    case R_JOB_RESULT:
        return job_result(conn, st, url);
    case R_PAGE:
        return page(conn, st);
    }
    return send_error(conn, st, 404, "not_found", "unknown route", NULL, NULL);
}

/* Answers DELETE /jobs/{id}: cancels a queued or running job (200, its status), or deletes a
 * finished or cancelled one with its results (204). */
static enum MHD_Result delete_job(struct MHD_Connection *conn, req_st *st, const char *url) {
    db_job j;
    enum MHD_Result ret;
    if (!load_job(conn, st, url, &j, &ret)) return ret;
    int active_job = !strcmp(j.state, "queued") || !strcmp(j.state, "running");
    int rc = active_job ? ja_cancel(j.id) : db_job_delete(j.id);
    if (rc >= 0 && active_job && rc == 0) rc = db_job_delete(j.id);   /* finished meanwhile */
    else if (rc == 1 && active_job) {
        db_job_clear(&j);
        if (db_job_get(st->result_id, &j) == 1) {
            json_t *o = ja_job_json(&j);
            db_job_clear(&j);
            return send_json(conn, st, 200, o);
        }
        return send_body(conn, st, 204, NULL, NULL, 0, NULL);
    }
    db_job_clear(&j);
    if (rc < 0) {
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 503, "storage_unavailable", "the job database is unavailable; retry later", NULL,
                          extra);
    }
    return send_body(conn, st, 204, NULL, NULL, 0, NULL);
}

/* ---- POST /predict, /score, /embed, /logits, /jobs ------------------------------------------------------------------------------ */

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
    st->store_s = j->store_s;
    st->t_answer = ut_mono();
    st->resume_s = st->t_answer - j->t_done;
    st->batch_jobs = j->batch_jobs;
    if (j->status == 200) {
        char etag[70];
        snprintf(etag, sizeof etag, "\"%s\"", j->req->id);
        char *body = j->body;
        size_t len = j->body_len;
        j->body = NULL;             /* ownership moves to MHD */
        hc_alias((int)kind_of(st->route), st->body ? st->body : "", st->len, j->req->id);
        char bj[16];
        snprintf(bj, sizeof bj, "%d", j->batch_jobs);
        /* a job answered from a result stored while it waited (an identical request ran first)
         * is a HIT and was in no batch */
        st->cache = j->cached;
        const char *hit[] = {"ETag", etag, "X-Cache", "HIT", NULL};
        const char *miss[] = {"ETag", etag, "X-Cache", "MISS", "X-Batch-Requests", bj, NULL};
        return send_body(conn, st, 200, "application/json", body, len, j->cached ? hit : miss);
    }
    const char *extra[] = {"Retry-After", "2", NULL};
    return send_error(conn, st, j->status, j->err_type, j->err_msg, NULL, j->status == 503 ? extra : NULL);
}

/* Queues 413 for a body over the route's limit. */
static enum MHD_Result too_large(struct MHD_Connection *conn, req_st *st) {
    char msg[160];
    snprintf(msg, sizeof msg, "request body exceeds the limit of %ld bytes (%s)", body_cap(st), body_cap_option(st));
    return send_error(conn, st, 413, "payload_too_large", msg, json_pack("{s:I}", "limit", (json_int_t)body_cap(st)),
                      NULL);
}

/* MHD_get_connection_values iterator: copies query arguments into a JSON object of strings. */
/* The query string of a POST /jobs: its arguments as strings, and the first key given twice. */
typedef struct {
    json_t *args;
    char dup[64];
} job_query;

/* MHD_KeyValueIterator: adds one query argument to a job_query (cls); a repeated key is noted in
 * dup (the first one), never silently overwritten. */
static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    job_query *q = cls;
    if (!key) return MHD_YES;
    if (json_object_get(q->args, key)) {
        if (!q->dup[0]) {
            snprintf(q->dup, sizeof q->dup, "%s", key);
            sanitize(q->dup);
        }
        return MHD_YES;
    }
    json_object_set_new(q->args, key, json_string(value ? value : ""));
    return MHD_YES;
}

/* Handles the complete body of POST /jobs: validate every sequence, store (or find) the job. */
static enum MHD_Result submit_job(struct MHD_Connection *conn, req_st *st) {
    if (st->overflow) return too_large(conn, st);
    bt_limits lim = {env->c->max_job_sequences, tk_lim};
    bt_submission *sub = NULL;
    pr_error e;
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    int rc;
    job_query q = {json_object(), ""};
    if (!q.args) return send_error(conn, st, 503, "out_of_memory", "out of memory; retry later", NULL, NULL);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    const char *first = json_object_size(q.args) ? json_object_iter_key(json_object_iter(q.args)) : NULL;
    char msg[200];
    if (q.dup[0]) {                   /* ?task=logits&task=embed: which one was meant? */
        snprintf(msg, sizeof msg, "query parameter \"%s\" given more than once", q.dup);
        json_t *det = json_pack("{s:s}", "field", q.dup);
        json_decref(q.args);
        return send_error(conn, st, 400, "unknown_field", msg, det, NULL);
    }
    const int fasta = fasta_content_type(ct);
    if (!fasta && first) {            /* a JSON body carries its task and params itself */
        char k[64];
        snprintf(k, sizeof k, "%s", first);
        sanitize(k);
        snprintf(msg, sizeof msg, "query parameter \"%s\" with a JSON body: put \"task\" and \"params\" in the "
                 "body (query parameters are read with a FASTA body only)", k);
        json_t *det = json_pack("{s:s}", "field", k);
        json_decref(q.args);
        return send_error(conn, st, 400, "unknown_field", msg, det, NULL);
    }
    if (fasta)
        rc = bt_parse_fasta(st->body ? st->body : "", st->len, json_string_value(json_object_get(q.args, "task")),
                            q.args, &lim, ut_model_key(env->model->sha256), &sub, &e);
    else
        rc = bt_parse_json(st->body, st->len, &lim, ut_model_key(env->model->sha256), &sub, &e);
    json_decref(q.args);
    if (rc) return send_error(conn, st, e.status, e.type, e.msg, e.details, NULL);
    memcpy(st->result_id, sub->id, sizeof sub->id);
    int created = ja_submit(sub);
    db_job j;
    if (created < 0 || db_job_get(sub->id, &j) != 1) {
        bt_free(sub);
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 503, "storage_unavailable", "the job database is unavailable; retry later", NULL,
                          extra);
    }
    char loc[80];
    snprintf(loc, sizeof loc, "/jobs/%s", sub->id);
    bt_free(sub);
    json_t *o = ja_job_json(&j);
    db_job_clear(&j);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(o);
    if (!s) return send_error(conn, st, 500, "internal", "out of memory", NULL, NULL);
    const char *extra[] = {"Location", loc, NULL};
    return send_body(conn, st, created ? 202 : 200, "application/json", s, strlen(s), extra);
}

/* Handles the complete body of POST /predict, /score, /embed or /logits: validate, cache lookup, or
 * queue and suspend. */
/* MHD_get_connection_values callback: copies the first key into cls (char[64]) and stops. */
static enum MHD_Result first_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    (void)value;
    snprintf(cls, 64, "%s", key ? key : "");
    return MHD_NO;
}

static enum MHD_Result analyze(struct MHD_Connection *conn, req_st *st) {
    if (st->overflow) return too_large(conn, st);
    char k[64] = "";
    if (MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, first_arg, k) > 0) {
        /* ?top_k=1 would otherwise be ignored without a word (the answer computed with top_k 5) */
        sanitize(k);
        char msg[200];
        snprintf(msg, sizeof msg, "query parameter \"%s\" on %s: the parameters go in the JSON body", k,
                 routes[st->route].label);
        return send_error(conn, st, 400, "unknown_field", msg, json_pack("{s:s}", "field", k), NULL);
    }
    int kind = (int)kind_of(st->route);
    const char *raw = st->body ? st->body : "";
    hc_blob *hb = hc_get_body(kind, raw, st->len, st->result_id);   /* this exact body was answered before */
    if (hb) {
        mt_cache(1);
        st->cache = 1;
        return send_blob(conn, st, hb, st->result_id);
    }
    tk_request *req = NULL;
    pr_error e;
    if (tk_parse(kind_of(st->route), st->body, st->len, &tk_lim, ut_model_key(env->model->sha256), &req, &e))
        return send_error(conn, st, e.status, e.type, e.msg, e.details, NULL);
    memcpy(st->result_id, req->id, sizeof req->id);
    char *body = NULL;
    size_t len = 0;
    int rc = hc_lookup(req->id, 1, &hb, &body, &len);
    if (rc < 0) {
        tk_free(req);
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 503, "storage_unavailable", "the result database is unavailable; retry later",
                          NULL, extra);
    }
    mt_cache(rc > 0);
    if (rc > 0) {
        hc_alias(kind, raw, st->len, req->id);   /* only when the result is in the map (now) */
        st->cache = 1;
        if (hb) {
            tk_free(req);
            return send_blob(conn, st, hb, st->result_id);
        }
        char etag[70];
        snprintf(etag, sizeof etag, "\"%s\"", req->id);
        tk_free(req);
        const char *extra[] = {"ETag", etag, "X-Cache", "HIT", NULL};
        return send_body(conn, st, 200, "application/json", body, len, extra);
    }
    st->cache = 0;
    int res = jb_reserve();
    if (res == -1) {
        tk_free(req);
        const char *extra[] = {"Retry-After", "1", NULL};
        return send_error(conn, st, 429, "queue_full", "the inference queue is full; retry after a second",
                          json_pack("{s:I}", "queue_limit", (json_int_t)env->c->queue), extra);
    }
    if (res == -2) {
        tk_free(req);
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
                           "Access-Control-Allow-Headers", "Authorization, Content-Type, If-None-Match, X-Request-Id",
                           "Access-Control-Max-Age", "600", NULL};
    return send_body(conn, st, 204, NULL, NULL, 0, extra);
}

/* What bad_framing counts among the request headers. */
typedef struct {
    int n_length, lengths_differ, n_host, n_te, te_other;
    char length[32];
} framing;

/* MHD_KeyValueIterator: counts Content-Length (and whether the values differ), Host and
 * Transfer-Encoding headers (and codings other than "chunked") into the framing at cls. */
static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    framing *f = cls;
    if (!key) return MHD_YES;
    if (!value) value = "";
    if (!strcasecmp(key, "Content-Length")) {
        if (f->n_length++ == 0) snprintf(f->length, sizeof f->length, "%s", value);
        else if (strcmp(f->length, value)) f->lengths_differ = 1;
    } else if (!strcasecmp(key, "Host")) {
        f->n_host++;
    } else if (!strcasecmp(key, "Transfer-Encoding")) {
        f->n_te++;
        /* exactly what libmicrohttpd reads as chunked (it drops leading blanks only): "chunked "
         * would otherwise be read to the end of the connection */
        while (*value == ' ' || *value == '\t') value++;
        if (strcasecmp(value, "chunked")) f->te_other = 1;
    }
    return MHD_YES;
}

/* Refuses a request whose body framing this daemon (and a proxy in front of it) could read two ways
 * (RFC 9112 6.1-6.3, 3.2): Content-Length headers that disagree, Content-Length with
 * Transfer-Encoding, or more than one Host: 400; a transfer coding other than chunked: 501. The
 * answer closes the connection (the rest of the stream cannot be trusted: request smuggling).
 * Returns 1 with *ret set when refused. */
static int bad_framing(struct MHD_Connection *conn, req_st *st, const char *version, enum MHD_Result *ret) {
    framing f = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, framing_header, &f);
    const char *extra[] = {"Connection", "close", NULL};
    const char *msg = NULL;
    if (f.lengths_differ) msg = "Content-Length headers that disagree";
    else if (f.n_length && f.n_te) msg = "both Content-Length and Transfer-Encoding";
    else if (f.n_host > 1) msg = "more than one Host header";
    else if (!f.n_host && version && !strcmp(version, MHD_HTTP_VERSION_1_1))
        msg = "an HTTP/1.1 request without a Host header (RFC 9112 3.2)";
    else if (f.n_te && version && !strcmp(version, MHD_HTTP_VERSION_1_0)) msg = "Transfer-Encoding in HTTP/1.0";
    if (msg) {
        char m[160];
        snprintf(m, sizeof m, "malformed request framing: %s", msg);
        *ret = send_error(conn, st, 400, "bad_request", m, NULL, extra);
        return 1;
    }
    if (f.te_other || f.n_te > 1) {
        *ret = send_error(conn, st, 501, "not_implemented",
                          "unsupported Transfer-Encoding (only one, exactly \"chunked\", is accepted)", NULL, extra);
        return 1;
    }
    return 0;
}

/* A refusal decided from the request line and headers alone: what send_error is given. */
typedef struct {
    int status;
    const char *type;
    char msg[256];
    json_t *details;           /* owned until sent or dropped */
    const char *extra[3];      /* one header name/value pair, NULL-ended */
} refusal;

/* Fills r and returns 1 when the request (not OPTIONS) is refused from its headers: 401 without the
 * key, 404 unknown route, 405 method; for a request with a body to read also 503 draining, 415
 * Content-Encoding or Content-Type, 413 announced Content-Length. Returns 0 otherwise. */
static int refused(struct MHD_Connection *conn, req_st *st, refusal *r) {
    memset(r, 0, sizeof *r);
    int is_get = !strcmp(st->method, "GET") || !strcmp(st->method, "HEAD");
    if (st->route != R_HEALTH && st->route != R_READY && st->route != R_PAGE && !authorized(conn)) {
        *r = (refusal){401, "unauthorized", "missing or invalid bearer token (Authorization: Bearer KEY)", NULL,
                       {"WWW-Authenticate", "Bearer realm=\"performerd\"", NULL}};
        return 1;
    }
    if (st->route == R_NONE) {
        *r = (refusal){404, "not_found", "unknown route", NULL, {NULL}};
        r->details = json_pack("{s:[s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s]}", "routes", "POST /predict", "POST /score",
                               "POST /embed", "POST /logits", "GET /predict/{id}", "POST /jobs", "GET /jobs",
                               "GET /jobs/{id}", "DELETE /jobs/{id}", "GET /jobs/{id}/result", "GET /", "GET /health",
                               "GET /ready", "GET /metrics", "GET /model", "GET /openapi.json",
                               "GET /score/{id}, /embed/{id}, /logits/{id}");
        return 1;
    }
    int m = routes[st->route].methods;
    int ok_method = (is_get && (m & M_GET)) || (!strcmp(st->method, "POST") && (m & M_POST)) ||
                    (!strcmp(st->method, "DELETE") && (m & M_DELETE));
    if (!ok_method) {
        *r = (refusal){405, "method_not_allowed", "", NULL, {"Allow", routes[st->route].allow, NULL}};
        snprintf(r->msg, sizeof r->msg, "method %s not allowed on %s (allowed: %s)", st->method,
                 routes[st->route].label, routes[st->route].allow);
        return 1;
    }
    if (is_get || !strcmp(st->method, "DELETE")) return 0;
    if (quiesced || jb_draining()) {
        *r = (refusal){503, "draining", "the server is shutting down; retry on another instance", NULL,
                       {"Retry-After", "5", NULL}};
        return 1;
    }
    const char *ce = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Encoding");
    if (ce && strcasecmp(ce, "identity")) {   /* a gzip body would otherwise be "invalid JSON" */
        char got[64];
        snprintf(got, sizeof got, "%s", ce);
        sanitize(got);
        *r = (refusal){415, "unsupported_media_type", "", NULL, {NULL}};
        snprintf(r->msg, sizeof r->msg, "unsupported Content-Encoding '%s': send the body uncompressed", got);
        return 1;
    }
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!json_content_type(ct) && !(st->route == R_JOBS && fasta_content_type(ct))) {
        char got[96];
        snprintf(got, sizeof got, "%s", ct ? ct : "");
        sanitize(got);
        *r = (refusal){415, "unsupported_media_type", "", NULL, {NULL}};
        if (ct)
            snprintf(r->msg, sizeof r->msg, "unsupported content type '%s' (send application/json%s)", got,
                     st->route == R_JOBS ? ", or FASTA as text/x-fasta" : "");
        else
            snprintf(r->msg, sizeof r->msg, "no Content-Type: send application/json%s",
                     st->route == R_JOBS ? ", or FASTA as text/x-fasta" : "");
        return 1;
    }
    unsigned long long v = 0;
    const int has = content_length(conn, &v);
    if (has && (has < 0 || (unsigned long long)body_cap(st) < v)) {
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        *r = (refusal){413, "payload_too_large", "", NULL, {NULL}};
        snprintf(r->msg, sizeof r->msg, "request body of %s bytes exceeds the limit of %ld bytes (%s)", cl,
                 body_cap(st), body_cap_option(st));
        sanitize(r->msg);
        r->details = json_pack("{s:I}", "limit", (json_int_t)body_cap(st));
        return 1;
    }
    return 0;
}

/* Answers every request except a well-formed POST with a body to read, from the headers alone (on
 * the final call, so that MHD keeps the connection alive). Returns 1 when a response was queued
 * (*ret set), 0 when the request is a POST whose body is to be read. */
static int decide(struct MHD_Connection *conn, req_st *st, const char *url, enum MHD_Result *ret) {
    if (!strcmp(st->method, "OPTIONS")) {
        *ret = st->route == R_NONE ? send_error(conn, st, 404, "not_found", "unknown route", NULL, NULL)
                                   : options(conn, st);
        return 1;
    }
    refusal r;
    if (refused(conn, st, &r)) {
        *ret = send_error(conn, st, r.status, r.type, r.msg, r.details, r.extra[0] ? r.extra : NULL);
        return 1;
    }
    if (!strcmp(st->method, "GET") || !strcmp(st->method, "HEAD")) {
        *ret = handle_get(conn, st, url);
        return 1;
    }
    if (!strcmp(st->method, "DELETE")) {
        *ret = delete_job(conn, st, url);
        return 1;
    }
    return 0;
}

/* Returns 1 when this body-reading request is refused from its headers and the refusal should wait
 * for the body (no Expect: 100-continue, and a Content-Length, if any, within discard_cap); decide()
 * sends it at the end of the body. */
static int refuse_later(struct MHD_Connection *conn, req_st *st) {
    const char *ex = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");
    if (ex && !strcasecmp(ex, "100-continue")) return 0;
    unsigned long long v = 0;
    int has = content_length(conn, &v);
    if (has < 0 || (has && v > discard_cap(st))) return 0;
    refusal r;
    if (!refused(conn, st, &r)) return 0;
    json_decref(r.details);
    return 1;
}

/* The MHD access handler. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)cls;
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
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        st->guard = ci ? ci->socket_context : NULL;
        enum MHD_Result fret;
        if (bad_framing(conn, st, version, &fret)) {
            gd_busy(st->guard);
            return fret;
        }
        /* A POST that will be refused (413 on Content-Length, 415, 401, 503) is answered before its
         * body is read when the client asked first (Expect: 100-continue) or announced more than
         * discard_cap; MHD then closes the connection instead of reading. Otherwise its body is read
         * and thrown away and the refusal sent at the end: a client that writes its whole body before
         * reading (Python's urllib and http.client) would meet a reset connection, not the answer. */
        if (reads_body(st)) {
            enum MHD_Result ret;
            if (refuse_later(conn, st)) {
                gd_body_start(st->guard);   /* the body must still arrive at a minimum average rate */
                return MHD_YES;             /* reading stays 0: the body is discarded, decide() at the end */
            }
            if (decide(conn, st, url, &ret)) {
                gd_busy(st->guard);
                return ret;
            }
            st->reading = 1;
            gd_body_start(st->guard);   /* the body must now arrive at a minimum average rate */
        } else {
            /* answered on the final call, after any body (a POST to an unknown route, a GET with a
             * body) has been read and thrown away, at the same minimum rate */
            gd_body_start(st->guard);
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
        gd_body_data(st->guard, n);
        size_t cap = (size_t)body_cap(st);
        if (!st->reading || st->overflow || st->len + n > cap) {
            st->overflow = st->reading;   /* keep reading to answer 413, but bound what we swallow */
            st->discarded += n;
            return st->discarded > discard_cap(st) ? MHD_NO : MHD_YES;
        }
        if (st->len + n > st->cap) {
            size_t nc = st->cap ? st->cap : 4096;
            while (nc < st->len + n) nc *= 2;
            if (nc > cap) nc = cap;
            char *p = realloc(st->body, nc);
            if (!p) return MHD_NO;
            st->body = p;
            st->cap = nc;
        }
        memcpy(st->body + st->len, upload_data, n);
        st->len += n;
        return MHD_YES;
    }
    gd_busy(st->guard);             /* the request is complete: being answered */
    if (!st->reading) {
        enum MHD_Result ret;
        if (decide(conn, st, url, &ret)) return ret;
        return send_error(conn, st, 500, "internal", "unroutable request", NULL, NULL);
    }
    if (st->job) return send_job_result(conn, st);
    if (st->overflow == 2)
        return send_error(conn, st, 503, "out_of_memory", "out of memory; retry later", NULL, NULL);
    if (st->route == R_JOBS) return submit_job(conn, st);
    return analyze(conn, st);
}

/* Completion: metrics, requests table, log line, free the state. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)conn;
    req_st *st = *con_cls;
    if (!st) return;
    *con_cls = NULL;
    gd_wait_request(st->guard);     /* a kept-alive connection waits for its next request */
    double dur = ut_mono() - st->t0;
    int status = st->status ? st->status : 499;   /* 499: client went away before an answer */
    const char *label = routes[st->route].label;
    mt_request(label, st->method, status, dur);
    /* a probe or scrape answered 2xx (a container healthcheck every 10 s, Prometheus) is counted in
     * /metrics but neither logged nor written to the requests table, which would otherwise grow by
     * a row per probe forever */
    const int probe = (st->route == R_HEALTH || st->route == R_READY || st->route == R_METRICS) &&
                      status >= 200 && status < 300 && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (probe) goto done;
    db_log_row row;
    row.time = ut_wall();
    memcpy(row.request_id, st->request_id, sizeof row.request_id);
    memcpy(row.result_id, st->result_id, sizeof row.result_id);
    memcpy(row.method, st->method, sizeof row.method);
    row.route = label;
    row.status = status;
    row.duration_ms = dur * 1000.0;
    row.cache_hit = st->cache == 1;
    memcpy(row.client, st->client, sizeof row.client);
    rl_push(&row);
    char ts[40], line[2048];
    iso_now(ts, sizeof ts);
    lb b = {line, 0, sizeof line - 2};   /* 2 bytes kept for the closing "}\n" */
    lb_key(&b, "{\"time\":", ts);
    lb_key(&b, ",\"level\":", status >= 500 ? "error" : status >= 400 ? "warn" : "info");
    lb_key(&b, ",\"msg\":", "request");
    lb_key(&b, ",\"request_id\":", st->request_id);
    lb_key(&b, ",\"method\":", st->method);
    lb_key(&b, ",\"path\":", st->path);
    lb_key(&b, ",\"route\":", label);
    lb_num(&b, ",\"status\":", status, 0);
    lb_num(&b, ",\"duration_ms\":", dur * 1000.0, 1);
    lb_key(&b, ",\"client\":", st->client);
    if (st->cache >= 0) lb_key(&b, ",\"cache\":", st->cache ? "HIT" : "MISS");
    if (st->result_id[0]) lb_key(&b, ",\"result_id\":", st->result_id);
    if (st->job) {
        /* the parts of duration_ms in order; the job (held until here) has the times the worker set:
         * build is its time on the batch outside forward passes and the commit (all of it for a job
         * answered from a result stored while it waited) */
        const jb_job *j = st->job;
        const int answered = st->t_answer > 0;
        const double build = j->t_done - (j->t_submit + j->queue_s) - j->forward_s - j->store_s;
        if (answered) lb_num(&b, ",\"before_queue_ms\":", (j->t_submit - st->t0) * 1000.0, 1);
        lb_num(&b, ",\"queue_ms\":", st->queue_s * 1000.0, 1);
        lb_num(&b, ",\"forward_ms\":", st->forward_s * 1000.0, 1);
        if (answered) lb_num(&b, ",\"build_ms\":", (build > 0 ? build : 0) * 1000.0, 1);
        lb_num(&b, ",\"store_ms\":", st->store_s * 1000.0, 1);
        lb_num(&b, ",\"resume_ms\":", st->resume_s * 1000.0, 1);
        if (answered) lb_num(&b, ",\"answer_ms\":", (st->t0 + dur - st->t_answer) * 1000.0, 1);
        lb_num(&b, ",\"batch_requests\":", st->batch_jobs, 0);
    }
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) lb_put(&b, ",\"terminated\":true", strlen(",\"terminated\":true"));
    memcpy(line + b.len, "}\n", 2);
    b.len += 2;
    ssize_t wr = write(2, line, b.len);
    (void)wr;
done:
    jb_release(st->job);
    free(st->body);
    free(st);
    pthread_mutex_lock(&active_mu);
    if (--active == 0) pthread_cond_broadcast(&active_cv);
    pthread_mutex_unlock(&active_mu);
}

/* Registers each accepted connection with the deadline watchdog (guard.h), and unregisters it
 * before libmicrohttpd closes its socket. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    (void)cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = ci ? gd_open(ci->connect_fd) : NULL;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        gd_close(*socket_context);
        *socket_context = NULL;
    }
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
    tk_lim = e->tk;
    listen_fd_ = listen_fd;
    if (gd_start((double)e->c->conn_timeout, err, errlen)) return -1;
    MHD_set_panic_func(&mhd_panic, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    daemon_ = MHD_start_daemon(flags, 0, NULL, NULL, &on_request, NULL,
                               MHD_OPTION_EXTERNAL_LOGGER, &mhd_logger, NULL,
                               MHD_OPTION_LISTEN_SOCKET, listen_fd,
                               MHD_OPTION_THREAD_POOL_SIZE, (unsigned)e->c->http_threads,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)e->c->conn_timeout,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)e->c->max_connections,
                               MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)e->c->max_conn_per_ip,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                               MHD_OPTION_NOTIFY_COMPLETED, &on_completed, NULL,
                               MHD_OPTION_NOTIFY_CONNECTION, &on_connection, NULL,
                               MHD_OPTION_END);
    if (!daemon_) {
        gd_stop();
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
    gd_stop();
    if (listen_fd_ >= 0) close(listen_fd_);
    listen_fd_ = -1;
}
