/* test_server_guard.c - connection deadlines (server/guard.c) on socket pairs: a connection waiting
 * for its request is shut down after the timeout, one being answered is not, a body that arrives
 * fast enough earns time and a trickle does not. */
#include "guard.h"
#include "testutil.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Returns 1 when the peer of s was shut down (reading gives end of stream), 0 while it is open. */
static int was_cut(int s) {
    struct pollfd p = {s, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    char c;
    ssize_t n = recv(s, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN);
}

/* Sleeps ms milliseconds. */
static void nap(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(void) {
    char err[128];
    CHECK(gd_start(0.4, err, sizeof err) == 0);
    int idle[2], busy[2], fast[2], slow[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, idle) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, busy) == 0 &&
          socketpair(AF_UNIX, SOCK_STREAM, 0, fast) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, slow) == 0);
    gd_conn *gi = gd_open(idle[0]), *gb = gd_open(busy[0]), *gf = gd_open(fast[0]), *gs = gd_open(slow[0]);
    CHECK(gi && gb && gf && gs);
    long open = 0;
    unsigned long long cut = 0;
    gd_counts(&open, &cut);
    CHECK(open == 4 && cut == 0);
    gd_busy(gb);                                  /* being answered: no deadline */
    gd_body_start(gf);
    gd_body_start(gs);
    for (int i = 0; i < 10; i++) {                /* 1 s: fast gets 64 KiB per 0.1 s, slow 10 bytes */
        gd_body_data(gf, 64 * 1024);
        gd_body_data(gs, 10);
        nap(100);
    }
    CHECK(was_cut(idle[1]));                      /* past 0.4 s waiting for a request */
    CHECK(was_cut(slow[1]));                      /* 100 bytes earn 6 ms: past the 0.4 s grace */
    CHECK(!was_cut(fast[1]));                     /* 640 KiB earn 40 s */
    CHECK(!was_cut(busy[1]));
    gd_counts(&open, &cut);
    CHECK(open == 4 && cut == 2);
    gd_wait_request(gb);                          /* answered; kept alive: waits for the next request */
    nap(900);
    CHECK(was_cut(busy[1]));
    gd_close(gi);
    gd_close(gb);
    gd_close(gf);
    gd_close(gs);
    gd_close(NULL);
    gd_counts(&open, &cut);
    CHECK(open == 0 && cut == 3);
    gd_stop();
    for (int i = 0; i < 2; i++) {
        close(idle[i]);
        close(busy[i]);
        close(fast[i]);
        close(slow[i]);
    }
    return TEST_DONE();
}
