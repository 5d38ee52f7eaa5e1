/* guard.c - connection deadlines and the watchdog that enforces them (see guard.h). */
#include "guard.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

struct gd_conn {
    int fd;
    _Atomic long long deadline_ms;   /* monotonic ms; 0 = none */
    long long body_start_ms;         /* owner thread only */
    size_t body_bytes;               /* owner thread only */
    int in_body;                     /* between gd_body_start and gd_busy / gd_wait_request (owner thread) */
    int cut;                         /* shut down already (under mu) */
    gd_conn *prev, *next;            /* under mu */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static gd_conn *head;
static long n_open;
static unsigned long long n_cut;
static long long timeout_ms = 30000;
static int running, stopping;
static pthread_t watchdog;

/* Returns the monotonic clock in milliseconds. */
static long long now_ms(void) { return (long long)(ut_mono() * 1000.0); }

/* Shuts down the sockets of connections past their deadline, every quarter of a second. */
static void *watch(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 250 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&cv, &mu, &ts);
        long long now = now_ms();
        for (gd_conn *g = head; g; g = g->next) {
            long long d = atomic_load(&g->deadline_ms);
            if (g->cut || !d || now < d) continue;
            /* the socket stays open until gd_close returns (libmicrohttpd notifies before closing) */
            shutdown(g->fd, SHUT_RDWR);
            g->cut = 1;
            n_cut++;
        }
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Starts the watchdog. */
int gd_start(double timeout_s, char *err, size_t errlen) {
    timeout_ms = (long long)(timeout_s * 1000.0);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    pthread_condattr_destroy(&ca);
    stopping = 0;
    int rc = pthread_create(&watchdog, NULL, watch, NULL);
    if (rc) {
        snprintf(err, errlen, "cannot start the connection watchdog thread: %s", strerror(rc));
        return -1;
    }
    running = 1;
    return 0;
}

/* Stops the watchdog. */
void gd_stop(void) {
    if (!running) return;
    pthread_mutex_lock(&mu);
    stopping = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(watchdog, NULL);
    running = 0;
}

/* Registers a connection. */
gd_conn *gd_open(int fd) {
    gd_conn *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->fd = fd;
    atomic_store(&g->deadline_ms, now_ms() + timeout_ms);
    pthread_mutex_lock(&mu);
    g->next = head;
    if (head) head->prev = g;
    head = g;
    n_open++;
    pthread_mutex_unlock(&mu);
    return g;
}

/* Unregisters a connection. */
void gd_close(gd_conn *g) {
    if (!g) return;
    pthread_mutex_lock(&mu);
    if (g->prev) g->prev->next = g->next;
    else head = g->next;
    if (g->next) g->next->prev = g->prev;
    n_open--;
    pthread_mutex_unlock(&mu);
    free(g);
}

/* Waiting for the next request. */
void gd_wait_request(gd_conn *g) {
    if (!g) return;
    g->in_body = 0;
    atomic_store(&g->deadline_ms, now_ms() + timeout_ms);
}

/* A body upload begins. */
void gd_body_start(gd_conn *g) {
    if (!g) return;
    g->body_start_ms = now_ms();
    g->body_bytes = 0;
    g->in_body = 1;
    atomic_store(&g->deadline_ms, g->body_start_ms + timeout_ms);
}

/* Body bytes arrived. */
void gd_body_data(gd_conn *g, size_t n) {
    if (!g || !g->in_body) return;   /* (outside a body phase the deadline would be computed from a stale start) */
    g->body_bytes += n;
    long long earned = (long long)(g->body_bytes / (GD_MIN_BODY_RATE / 1000));
    atomic_store(&g->deadline_ms, g->body_start_ms + timeout_ms + earned);
}

/* Being answered. */
void gd_busy(gd_conn *g) {
    if (!g) return;
    g->in_body = 0;
    atomic_store(&g->deadline_ms, 0);
}

/* Counts. */
void gd_counts(long *open, unsigned long long *cut) {
    pthread_mutex_lock(&mu);
    *open = n_open;
    *cut = n_cut;
    pthread_mutex_unlock(&mu);
}
