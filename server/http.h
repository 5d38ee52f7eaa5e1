/* http.h - the libmicrohttpd front end of performerd (prefix http_): listening socket, routing
 * (model routes, jobs, the web page),
 * per-connection body accumulation with a hard cap, auth, CORS, common headers, the one JSON error
 * shape, request logging (stderr line + requests table + metrics), and suspend/resume around the
 * inference queue. */
#ifndef PD_HTTP_H
#define PD_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <sys/stat.h>
#include "config.h"
#include "model.h"
#include "task.h"

typedef struct {
    const cfg *c;
    const pf_model *model;
    const char *model_body;     /* GET /model JSON */
    const char *openapi_body;   /* GET /openapi.json JSON */
    tk_limits tk;               /* per-request limits of the model routes and job sequences */
    struct stat weights_stat;   /* the weights file when it was loaded (for /ready's weights check) */
} http_env;

/* Creates, binds and listens on c->bind:c->port (port 0 = any free one). Returns the socket and
 * *port_out (the actual port), or -1 with a one-line err (e.g. address already in use). */
int http_listen(const char *bind, long port, int *port_out, char *err, size_t errlen);

/* Starts serving on listen_fd with env (kept by reference). Returns 0 or -1 with err. */
int http_start(const http_env *env, int listen_fd, char *err, size_t errlen);

/* Stops accepting new connections (closes the listening socket); open ones are still served and
 * new requests on them get 503 + Connection: close. */
void http_quiesce(void);

/* Waits up to timeout_s until no request is in progress (all answers sent). Returns 0, or -1 on
 * timeout. */
int http_wait_idle(double timeout_s);

/* Stops the daemon, closing all connections (call after jb_drain: none may be suspended). */
void http_stop(void);

/* Writes one structured JSON log line (level, msg, then key/value string pairs, NULL-terminated)
 * to stderr in a single write. */
void http_log(const char *level, const char *msg, ...);

#endif
