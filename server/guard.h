/* guard.h - deadlines for slow or idle client connections (prefix gd_), against slowloris-style
 * clients that trickle bytes to stay under an idle timeout. Every open connection has a deadline:
 * while it waits for a request, the complete request headers must arrive within the timeout of the
 * connection opening (or of its previous response); while it uploads a body, the body must arrive
 * at GD_MIN_BODY_RATE bytes/s on average after a grace of the timeout; while it is being answered
 * it has none. A watchdog thread shuts down (shutdown(2)) the socket of a connection past its
 * deadline; libmicrohttpd then sees the end of the stream and closes it as usual. */
#ifndef PD_GUARD_H
#define PD_GUARD_H

#include <stddef.h>

#define GD_MIN_BODY_RATE (16 * 1024)   /* bytes/s a request body must average after the grace */

typedef struct gd_conn gd_conn;

/* Starts the watchdog with the per-connection timeout (seconds). Returns 0 or -1 with err. */
int gd_start(double timeout_s, char *err, size_t errlen);

/* Stops and joins the watchdog; connections still registered are freed by gd_close as usual. */
void gd_stop(void);

/* Registers a newly accepted connection (socket fd), waiting for its first request. Returns its
 * handle, or NULL when out of memory (the connection then has only libmicrohttpd's idle timeout). */
gd_conn *gd_open(int fd);

/* Unregisters and frees a connection; call before its socket is closed. NULL is fine. */
void gd_close(gd_conn *g);

/* The connection waits for its next request: deadline = now + timeout. NULL is fine. */
void gd_wait_request(gd_conn *g);

/* The connection starts uploading a request body (the headers are complete). NULL is fine. */
void gd_body_start(gd_conn *g);

/* n more body bytes arrived: deadline = body start + timeout + bytes so far / GD_MIN_BODY_RATE. */
void gd_body_data(gd_conn *g, size_t n);

/* The request is complete and being answered: no deadline. NULL is fine. */
void gd_busy(gd_conn *g);

/* Returns the registered connections and the number cut by a deadline so far. */
void gd_counts(long *open, unsigned long long *cut);

#endif
