/* refutil.h - helpers of the C tests that compare against the PyTorch reference fixtures
 * (tests/fixtures): max differences, fixture tensor lookup, a reporting comparison that prints
 * the max abs diff and fails the test when it is over its tolerance, and finite-difference checks
 * of the model's gradients. */
#ifndef PF_REFUTIL_H
#define PF_REFUTIL_H
#include "model.h"
#include "safetensors.h"
#include "testutil.h"
#include "train.h"

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
/* Central finite differences vs the analytic gradient: one entry of every parameter tensor, and
 * every tap row of the conv tensors. The favor-softmax stabilisers are constants in the analytic
 * gradient (FORMAT.md), so that kernel is checked only when first_kernel is 0 (a model whose
 * features stay far above the 1e-4 floor). */
static inline void fd_check(pf_model *m, const int32_t *tok, const int *lens, int B,
                            const int32_t *tgt, int first_kernel, const char *label) {
    char err[512];
    static pf_tensor_info info[64];
    int nt = pf_tensor_table(&m->cfg, &m->p, info, 64);
    tr_state *s = tr_state_new(m);
    float *g = malloc(m->n_params * sizeof(float)), *g2 = malloc(m->n_params * sizeof(float));
    printf("finite differences (%s):\n", label);
    for (int k = first_kernel; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        int ns;
        tr_forward_backward(s, kern, tok, lens, B, tgt, g, &ns, err, sizeof err);
        double worst = 0, worst_conv = 0;
        int checked = 0;
        for (int i = 0; i < nt; i++) {
            if (strstr(info[i].name, "attn.proj")) continue;
            int conv = strstr(info[i].name, "attn.conv_") != NULL;
            int reps = conv ? m->cfg.conv_kernel : 1;
            for (int rep = 0; rep < reps; rep++) {
                float *p = *info[i].slot;
                size_t j = conv ? (size_t)rep * m->cfg.d_model + (size_t)(5 + 7 * rep) % m->cfg.d_model
                                : (info[i].numel * 7 + 3) / 11 % info[i].numel;
                float keep = p[j];
                const float h = 1e-2f;
                p[j] = keep + h;
                double lp = tr_forward_backward(s, kern, tok, lens, B, tgt, g2, &ns, err, sizeof err);
                p[j] = keep - h;
                double lm = tr_forward_backward(s, kern, tok, lens, B, tgt, g2, &ns, err, sizeof err);
                p[j] = keep;
                double fd = (lp - lm) / (2 * h), an = g[p + j - m->owned];
                double rel = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-3);
                if (rel > worst) worst = rel;
                if (conv && rel > worst_conv) worst_conv = rel;
                CHECKF(rel < 0.05, "%s %s[%zu]: finite difference %g vs analytic %g", KERNELS[k],
                       info[i].name, j, fd, an);
                checked++;
            }
        }
        printf("  %-14s %d entries, worst relative error %.3g", KERNELS[k], checked, worst);
        if (m->cfg.conv_kernel > 0) printf(" (conv taps %.3g)", worst_conv);
        printf("\n");
    }
    free(g); free(g2);
    tr_state_free(s);
}

/* Loss and every gradient tensor of m on a fixture batch vs the PyTorch reference (the fixture's
 * loss.KERNEL and grad.KERNEL.TENSOR), for all three kernels: prints the max abs diffs (each conv
 * tensor on its own line) and fails over 1e-4 + 1e-3 * max |reference|. */
static inline void grad_check(pf_model *m, const st_file *f, const int32_t *tok, const int *lens,
                              int B, const int32_t *tgt, const char *label) {
    char err[512];
    tr_state *s = tr_state_new(m);
    float *g = malloc(m->n_params * sizeof(float));
    static pf_tensor_info info[64];
    int nt = pf_tensor_table(&m->cfg, &m->p, info, 64);
    printf("%s gradients vs reference:\n", label);
    for (int k = 0; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        int ns;
        double loss = tr_forward_backward(s, kern, tok, lens, B, tgt, g, &ns, err, sizeof err);
        char name[128];
        snprintf(name, sizeof name, "loss.%s", KERNELS[k]);
        const float *want = fx(f, name, 1);
        if (want) {
            printf("  %-48s |diff| %.3g\n", name, fabs(loss - want[0]));
            CHECK_CLOSE(loss, want[0], 1e-5);
        }
        double worst = 0, worst_abs = 0;
        const char *worst_name = "";
        int ntens = 0;
        for (int i = 0; i < nt; i++) {
            if (strstr(info[i].name, "attn.proj")) continue;
            snprintf(name, sizeof name, "grad.%s.%.63s", KERNELS[k], info[i].name);
            const float *w = fx(f, name, info[i].numel);
            if (!w) continue;
            const float *got = g + (*info[i].slot - m->owned);
            double d = max_diff(got, w, info[i].numel), tol = 1e-4 + 1e-3 * max_abs(w, info[i].numel);
            CHECKF(d <= tol, "%s: max abs diff %g > %g", name, d, tol);
            if (d / tol > worst) { worst = d / tol; worst_name = info[i].name; }
            if (d > worst_abs) worst_abs = d;
            if (strstr(info[i].name, "attn.conv_"))
                printf("  %-48s max abs diff %.3g (tol %.3g)\n", name, d, tol);
            ntens++;
        }
        printf("  grad.%s.* (%d tensors): max abs diff %.3g, worst diff/tol %.3g (%s)\n", KERNELS[k],
               ntens, worst_abs, worst, worst_name);
    }
    free(g);
    tr_state_free(s);
}

#endif
