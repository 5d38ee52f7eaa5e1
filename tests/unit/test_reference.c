/* test_reference.c - the C forward pass and backward passes against the PyTorch reference
 * fixtures (tests/fixtures, made by tests/reference/make_fixtures.py). Prints the max abs diff
 * per tensor and fails when any is over its tolerance. Also checks gradients by finite
 * differences and batch independence. */
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "train.h"
#include "testutil.h"
#include "refutil.h"

#include <stdlib.h>

/* Checks one per-op gradient tensor with the fixture tolerance 1e-5 + 1e-4 max|expected|. */
static void cmp_op(const st_file *f, const char *name, const float *got, size_t n) {
    const float *want = fx(f, name, n);
    if (!want) return;
    compare(name, got, want, n, 1e-5 + 1e-4 * max_abs(want, n));
}

static void test_ops(void) {
    st_file f = {0};
    char err[512];
    CHECKF(st_open(&f, "tests/fixtures/grad_ops.safetensors", err, sizeof err) == 0, "%s", err);
    printf("operations vs reference:\n");
    float out[2048], d1[2048], d2[2048], d3[2048], d4[2048];
    { /* layernorm */
        const float *x = fx(&f, "layernorm.x", 224), *w = fx(&f, "layernorm.w", 32), *b = fx(&f, "layernorm.b", 32);
        const float *dout = fx(&f, "layernorm.dout", 224);
        float mean[7], rstd[7];
        layernorm_forward(out, mean, rstd, x, w, b, 7, 32, 1e-5f);
        cmp_op(&f, "layernorm.out", out, 224);
        memset(d1, 0, sizeof d1); memset(d2, 0, sizeof d2); memset(d3, 0, sizeof d3);
        layernorm_backward(d1, d2, d3, dout, x, w, mean, rstd, 7, 32);
        cmp_op(&f, "layernorm.dx", d1, 224); cmp_op(&f, "layernorm.dw", d2, 32); cmp_op(&f, "layernorm.db", d3, 32);
    }
    { /* layernorm_forward against double, on AVX-512 rows (C % 32 == 0) and the portable loop */
        const int cs[2] = { 256, 40 };
        for (int ci = 0; ci < 2; ci++) {
            const int N = 5, C = cs[ci];
            float x[5 * 256], w[256], b[256], o[5 * 256], mean[5], rstd[5];
            uint64_t st = 31;
            for (int i = 0; i < N * C; i++) x[i] = 3.0f + 2.0f * (float)((st = st * 6364136223846793005ULL + 1) >> 40) / 16777216.0f;
            for (int i = 0; i < C; i++) { w[i] = 0.5f + 0.01f * (float)i; b[i] = 0.1f - 0.002f * (float)i; }
            layernorm_forward(o, mean, rstd, x, w, b, N, C, 1e-5f);
            double worst = 0;
            for (int p = 0; p < N; p++) {
                double m = 0, v = 0;
                for (int i = 0; i < C; i++) m += x[p * C + i];
                m /= C;
                for (int i = 0; i < C; i++) v += (x[p * C + i] - m) * (x[p * C + i] - m);
                const double r = 1.0 / sqrt(v / C + 1e-5);
                for (int i = 0; i < C; i++) {
                    const double e = fabs(o[p * C + i] - ((x[p * C + i] - m) * r * w[i] + b[i]));
                    if (!(e <= worst)) worst = e;
                }
                CHECK(fabs(mean[p] - m) <= 1e-6 * fabs(m) && fabs(rstd[p] - r) <= 1e-6 * r);
            }
            printf("  layernorm_forward C = %d vs double: max abs diff %.3g\n", C, worst);
            CHECKF(worst <= 4e-6, "layernorm_forward (C = %d) is %g off double", C, worst);
        }
    }
    { /* gelu */
        const float *x = fx(&f, "gelu.x", 224), *dout = fx(&f, "gelu.dout", 224);
        gelu_forward(out, x, 224);
        cmp_op(&f, "gelu.out", out, 224);
        memset(d1, 0, sizeof d1);
        gelu_backward(d1, x, dout, 224);
        cmp_op(&f, "gelu.dx", d1, 224);
    }
    { /* GELU and its gradient over [-10, 10] against double erf, on AVX-512 (where the CPU has it)
       * and in portable C; NaN stays NaN and huge inputs give x or 0; gelu_bias_forward is gelu_forward of x + b */
        enum { NG = 20001 };
        float *x = malloc(sizeof(float) * NG), *y = malloc(sizeof(float) * NG), *yb = malloc(sizeof(float) * NG);
        float *b = malloc(sizeof(float) * NG), *xb = malloc(sizeof(float) * NG);
        for (int i = 0; i < NG; i++) {
            x[i] = -10.0f + 1e-3f * (float)i;
            b[i] = 0.25f * (float)(i % 7) - 0.75f;
            xb[i] = x[i] - b[i];
        }
        for (int simd = 1; simd >= 0; simd--) {
            if (ops_gelu_avx512(simd) != 0) continue;
            gelu_forward(y, x, NG);
            double worst = 0;
            for (int i = 0; i < NG; i++) {
                const double want = 0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0)));
                const double e = fabs(y[i] - want) / (1.0 + fabs(want));
                if (!(e <= worst)) worst = e;
            }
            printf("  GELU (%s) vs double over [-10, 10]: max |diff| / (1 + |GELU|) %.3g\n",
                   simd ? "AVX-512" : "portable", worst);
            CHECKF(worst <= 2e-6, "GELU (%s) is %g off double erf", simd ? "AVX-512" : "portable", worst);
            for (int i = 0; i < NG; i++) yb[i] = 1.0f;
            gelu_backward(y, x, yb, NG);
            worst = 0;
            for (int i = 0; i < NG; i++) {
                const double want = 0.5 * (1.0 + erf(x[i] / sqrt(2.0))) + x[i] * exp(-0.5 * x[i] * x[i]) / sqrt(2.0 * M_PI);
                const double e = fabs(y[i] - want) / (1.0 + fabs(want));
                if (!(e <= worst)) worst = e;
            }
            printf("  GELU' (%s) vs double over [-10, 10]: max |diff| / (1 + |GELU'|) %.3g\n",
                   simd ? "AVX-512" : "portable", worst);
            CHECKF(worst <= 2e-6, "GELU' (%s) is %g off double", simd ? "AVX-512" : "portable", worst);
            float sp[4] = { NAN, 1e30f, -1e30f, 0.0f }, so[4];
            gelu_forward(so, sp, 4);
            CHECK(isnan(so[0]) && so[1] == 1e30f && so[2] == 0.0f && so[3] == 0.0f);
            memcpy(yb, xb, sizeof(float) * NG);
            gelu_bias_forward(yb, b, 1, NG);
            for (int i = 0; i < NG; i++) y[i] = xb[i] + b[i];   /* not always x[i] exactly */
            gelu_forward(y, y, NG);
            CHECK(memcmp(y, yb, sizeof(float) * NG) == 0);
        }
        CHECK(ops_gelu_avx512(1) == 0 || ops_gelu_avx512(0) == 0);   /* back to the default */
        free(x); free(y); free(yb); free(b); free(xb);
    }
    { /* linear */
        const float *x = fx(&f, "linear.x", 224), *w = fx(&f, "linear.w", 768), *b = fx(&f, "linear.b", 24);
        const float *dout = fx(&f, "linear.dout", 168);
        matmul_forward(out, x, w, b, 7, 32, 24);
        cmp_op(&f, "linear.out", out, 168);
        memset(d1, 0, sizeof d1); memset(d2, 0, sizeof d2); memset(d3, 0, sizeof d3);
        matmul_backward(d1, d2, d3, dout, x, w, 7, 32, 24);
        cmp_op(&f, "linear.dx", d1, 224); cmp_op(&f, "linear.dw", d2, 768); cmp_op(&f, "linear.db", d3, 24);
    }
    const char *an[] = { "attn_favor_softmax", "attn_favor_relu", "attn_exact" };
    for (int k = 0; k < 3; k++) { /* attention, one head */
        char n[5][64];
        const char *sfx[] = { "q", "k", "v", "proj", "dout" };
        const float *in[5];
        for (int i = 0; i < 5; i++) {
            snprintf(n[i], 64, "%s.%s", an[k], sfx[i]);
            in[i] = fx(&f, n[i], i == 3 ? 128 : 184);
        }
        const int L = 23, dh = 8, M = 16;
        float phq[23 * 16], phk[23 * 16], kv[16 * 8], z[16], den[23], att[23 * 23];
        float scratch[4096];
        if (k < 2) {
            favor_state st = { phq, phk, kv, z, den };
            favor_forward(out, &st, in[0], in[1], in[2], in[3], L, 1, dh, M, k == 1);
            favor_backward(d1, d2, d3, in[4], out, &st, in[0], in[1], in[2], in[3], L, 1, dh, M, k == 1, scratch);
        } else {
            exact_forward(out, att, in[0], in[1], in[2], L, 1, dh, 1);
            exact_backward(d1, d2, d3, in[4], att, in[0], in[1], in[2], L, 1, dh, scratch);
        }
        char nm[64];
        snprintf(nm, 64, "%s.out", an[k]); cmp_op(&f, nm, out, 184);
        snprintf(nm, 64, "%s.dq", an[k]); cmp_op(&f, nm, d1, 184);
        snprintf(nm, 64, "%s.dk", an[k]); cmp_op(&f, nm, d2, 184);
        snprintf(nm, 64, "%s.dv", an[k]); cmp_op(&f, nm, d3, 184);
    }
    { /* cross-entropy */
        const float *lg = fx(&f, "xent.logits", 180);
        const int32_t *tg = fx(&f, "xent.targets", 9);
        const float *loss = fx(&f, "xent.loss", 1);
        int ns;
        double l = xent_forward_backward(d1, lg, tg, 9, 20, &ns);
        if (loss) CHECK_CLOSE(l, loss[0], 1e-5);
        printf("  %-48s |diff| %.3g\n", "xent.loss", loss ? fabs(l - loss[0]) : -1.0);
        CHECK(ns == 6);
        cmp_op(&f, "xent.dlogits", d1, 180);
    }
    { /* embedding + positions */
        const int32_t *tk = fx(&f, "embed.tokens", 7);
        const float *w = fx(&f, "embed.weight", 960), *dout = fx(&f, "embed.dout", 224);
        float pe[7 * 32];
        int pos[7] = { 0, 1, 2, 3, 4, 5, 6 };
        pe_fill(pe, 7, 32);
        embed_forward(out, tk, pos, w, pe, 7, 32);
        cmp_op(&f, "embed.out", out, 224);
        memset(d4, 0, sizeof d4);
        embed_backward(d4, dout, tk, 7, 32);
        cmp_op(&f, "embed.dweight", d4, 960);
    }
    st_close(&f);
}

static void test_model_grads(pf_model *loaded) {
    st_file f = {0};
    char err[512];
    CHECKF(st_open(&f, "tests/fixtures/grad_model.safetensors", err, sizeof err) == 0, "%s", err);
    pf_model *m = NULL;
    CHECKF(pf_model_clone_owned(&m, loaded, err, sizeof err) == 0, "%s", err);
    const st_tensor *lt = st_find(&f, "lens");
    if (!lt || !m) return;
    int B = (int)lt->numel, lens[16];
    size_t T = 0;
    for (int b = 0; b < B; b++) { lens[b] = ((const int32_t *)lt->data)[b]; T += lens[b]; }
    const int32_t *tok = fx(&f, "tokens", T), *tgt = fx(&f, "targets", T);
    grad_check(m, &f, tok, lens, B, tgt, "model");
    fd_check(m, tok, lens, B, tgt, 1, "fixture model");
    pf_model_free(m);
    st_close(&f);
}

int main(void) {
    pf_set_threads(1);
    char err[512];
    pf_model *m = NULL;
    CHECKF(pf_model_load(&m, "tests/fixtures/model.safetensors", err, sizeof err) == 0, "%s", err);
    if (!m) return TEST_DONE();
    forward_check(m, "tests/fixtures/forward.safetensors", "model.safetensors");
    { /* heads of 32 and 32 features: the fused FAVOR+ kernel (where the CPU has AVX-512) */
        pf_model *m32 = NULL;
        CHECKF(pf_model_load(&m32, "tests/fixtures/model_dh32.safetensors", err, sizeof err) == 0, "%s", err);
        if (m32) {
            const int dh = m32->cfg.d_model / m32->cfg.n_heads;
            printf("model_dh32: heads of %d, %d features: FAVOR+ %s\n", dh, m32->cfg.n_features,
                   favor_fused_ok(dh, m32->cfg.n_features) ? "fused (favor_forward_fused)" : "generic (no AVX-512)");
            forward_check(m32, "tests/fixtures/forward_dh32.safetensors", "model_dh32.safetensors");
            pf_model_free(m32);
        }
    }
    test_ops();
    test_model_grads(m);
    { /* finite differences on a normally initialised model, every kernel */
        pf_model *im = NULL;
        pf_config c = m->cfg;
        CHECK(pf_model_init(&im, &c, 7, err, sizeof err) == 0);
        st_file f = {0};
        CHECK(st_open(&f, "tests/fixtures/grad_model.safetensors", err, sizeof err) == 0);
        const st_tensor *lt = st_find(&f, "lens");
        if (im && lt) {
            int lens[16], B = (int)lt->numel;
            for (int b = 0; b < B; b++) lens[b] = ((const int32_t *)lt->data)[b];
            fd_check(im, st_find(&f, "tokens")->data, lens, B, st_find(&f, "targets")->data, 0, "standard init");
        }
        st_close(&f);
        pf_model_free(im);
    }
    pf_model_free(m);
    return TEST_DONE();
}
