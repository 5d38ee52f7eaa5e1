/* testutil.h - minimal assertions for the C unit tests. Each test program returns non-zero when
 * any check failed and prints every failed check with its file and line. */
#ifndef PF_TESTUTIL_H
#define PF_TESTUTIL_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tu_checks, tu_failures;

#define CHECK(cond) do { tu_checks++; if (!(cond)) { tu_failures++; \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECKF(cond, ...) do { tu_checks++; if (!(cond)) { tu_failures++; \
    fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CHECK_CLOSE(a, b, tol) do { double _a = (a), _b = (b); tu_checks++; \
    if (!(fabs(_a - _b) <= (tol)) ) { tu_failures++; fprintf(stderr, \
    "%s:%d: %s = %g, %s = %g, |diff| %g > %g\n", __FILE__, __LINE__, #a, _a, #b, _b, \
    fabs(_a - _b), (double)(tol)); } } while (0)
#define TEST_DONE() (printf("%d checks, %d failed\n", tu_checks, tu_failures), tu_failures ? 1 : 0)

/* Returns the directory of the build's binaries (env BIN, default "bin"). */
static inline const char *tu_bin(void) { const char *b = getenv("BIN"); return b && *b ? b : "bin"; }
#endif
