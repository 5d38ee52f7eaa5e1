/* refutil.h - helpers of the C tests that compare against the PyTorch reference fixtures
 * (tests/fixtures): max differences, fixture tensor lookup, and a reporting comparison that prints
 * the max abs diff and fails the test when it is over its tolerance. */
#ifndef PF_REFUTIL_H
#define PF_REFUTIL_H
#include "safetensors.h"
#include "testutil.h"

static const char *const KERNELS[] = { "favor-softmax", "favor-relu", "exact" };

/* Returns max |a - b| over n floats (NaN counts as infinitely far). */
static inline double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) { double d = fabs((double)a[i] - b[i]); if (!(d <= m)) m = d; }
    return m;
}

/* Returns max |a| over n floats. */
static inline double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

/* Returns the fixture tensor's data (numel elements, 0 = any) or fails the test. */
static inline const void *fx(const st_file *f, const char *name, size_t numel) {
    const st_tensor *t = st_find(f, name);
    CHECKF(t != NULL, "fixture tensor %s missing", name);
    if (!t) return NULL;
    CHECKF(numel == 0 || t->numel == numel, "%s has %zu elements, expected %zu", name, t->numel, numel);
    return t->numel == numel || numel == 0 ? t->data : NULL;
}

/* Compares and reports one tensor. */
static inline void compare(const char *what, const float *got, const float *want, size_t n, double tol) {
    if (!got || !want) return;
    double d = max_diff(got, want, n);
    printf("  %-48s max abs diff %.3g (tol %.3g)\n", what, d, tol);
    CHECKF(d <= tol, "%s: max abs diff %g > %g", what, d, tol);
}
#endif
