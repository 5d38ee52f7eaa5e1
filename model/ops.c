/* ops.c - Performer layer operations, forward and backward. See ops.h for the contracts and
 * weights/FORMAT.md for the mathematics. */
#include "ops.h"
#include "gemm.h"

#include <cblas.h>
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Element count up to which a loop stays on one thread. At 16,384 a 64-position pass (the server's
 * 62-residue requests: 64 x d_model 256 = 16,384) ran its layer norms, convolutions and attention on
 * one thread while the other waited: 4,096 made that pass 12% faster in float32 (3.42-3.56 ms ->
 * 3.03-3.18 ms, 6 interleaved runs each) and 13% in bf16, and left 16, 32, 128 positions and a
 * batch of 9 x 64 within noise. */
#define OMP_MIN 4096

void pe_fill(float *pe, int L, int C) {
    #pragma omp parallel for if ((size_t)L * C > OMP_MIN)
    for (int p = 0; p < L; p++) {
        for (int j = 0; j < C / 2; j++) {
            double freq = pow(10000.0, -(2.0 * j) / C);
            pe[(size_t)p * C + 2 * j] = (float)sin(p * freq);
            pe[(size_t)p * C + 2 * j + 1] = (float)cos(p * freq);
        }
        if (C % 2) pe[(size_t)p * C + C - 1] = (float)sin(p * pow(10000.0, -(double)(C - 1) / C));
    }
}

void embed_forward(float *out, const int32_t *tokens, const int *pos, const float *weight,
                   const float *pe, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int p = 0; p < N; p++) {
        const float *w = weight + (size_t)tokens[p] * C, *e = pe + (size_t)pos[p] * C;
        float *o = out + (size_t)p * C;
        for (int i = 0; i < C; i++) o[i] = w[i] + e[i];
    }
}

void embed_backward(float *dweight, const float *dout, const int32_t *tokens, int N, int C) {
    for (int p = 0; p < N; p++) {
        float *dw = dweight + (size_t)tokens[p] * C;
        const float *d = dout + (size_t)p * C;
        for (int i = 0; i < C; i++) dw[i] += d[i];
    }
}

/* One row of layernorm_forward on AVX-512 (C % 32 == 0): mean and variance summed in double
 * (four accumulators of 8), the output in float as the portable loop computes it. */
__attribute__((target("avx512f"))) static void layernorm_row_avx512(float *o, const float *x, const float *w,
                                                                   const float *b, int C, float eps,
                                                                   float *mean, float *rstd) {
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < C; i += 32) {
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(x + i)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8)));
        a2 = _mm512_add_pd(a2, _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 16)));
        a3 = _mm512_add_pd(a3, _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 24)));
    }
    const double m = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3))) / C;
    const __m512d md = _mm512_set1_pd(m);
    a0 = a1 = a2 = a3 = _mm512_setzero_pd();
    for (int i = 0; i < C; i += 32) {
        const __m512d t0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i)), md);
        const __m512d t1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8)), md);
        const __m512d t2 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i + 16)), md);
        const __m512d t3 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i + 24)), md);
        a0 = _mm512_fmadd_pd(t0, t0, a0);
        a1 = _mm512_fmadd_pd(t1, t1, a1);
        a2 = _mm512_fmadd_pd(t2, t2, a2);
        a3 = _mm512_fmadd_pd(t3, t3, a3);
    }
    const double v = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3))) / C;
    const float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
    const __m512 sv = _mm512_set1_ps(s), mv = _mm512_set1_ps(mf);
    for (int i = 0; i < C; i += 16) {
        const __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv), sv);
        _mm512_storeu_ps(o + i, _mm512_fmadd_ps(t, _mm512_loadu_ps(w + i), _mm512_loadu_ps(b + i)));
    }
    if (mean) *mean = mf;
    if (rstd) *rstd = s;
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
    if (C % 32 == 0 && gm_avx512f_supported()) {
        #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
        for (int p = 0; p < N; p++)
            layernorm_row_avx512(out + (size_t)p * C, inp + (size_t)p * C, w, b, C, eps,
                                 mean ? mean + p : NULL, rstd ? rstd + p : NULL);
        return;
    }
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int p = 0; p < N; p++) {
        const float *x = inp + (size_t)p * C;
        float *o = out + (size_t)p * C;
        double m = 0, v = 0;
        #pragma omp simd reduction(+:m)
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        #pragma omp simd reduction(+:v)
        for (int i = 0; i < C; i++) { double t = x[i] - m; v += t * t; }
        v /= C;
        float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
        for (int i = 0; i < C; i++) o[i] = (x[i] - mf) * s * w[i] + b[i];
        if (mean) mean[p] = mf;
        if (rstd) rstd[p] = s;
    }
}

#define COL_BLOCK_MAX 256   /* most columns per task of a column reduction */

/* Width of the column blocks a column reduction (sum over rows, in row order) is split into
 * across threads: a multiple of 16 floats, at most COL_BLOCK_MAX. Each task sums its block in a
 * local array and stores it once (threads writing next to each other would share cache lines). */
static int col_block(int C, size_t work) {
    int nt = 1;
#ifdef _OPENMP
    if (work > OMP_MIN) nt = omp_get_max_threads();
#else
    (void)work;
#endif
    int bw = (C + nt - 1) / nt;
    bw = (bw + 15) / 16 * 16;
    return bw < COL_BLOCK_MAX ? bw : COL_BLOCK_MAX;
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    /* dw, db: each channel summed over the rows in order (the result does not depend on the
     * thread count), blocks of channels in parallel */
    const int bw = col_block(C, (size_t)N * C);
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int c0 = 0; c0 < C; c0 += bw) {
        const int nc = c0 + bw < C ? bw : C - c0;
        float aw[COL_BLOCK_MAX], ab[COL_BLOCK_MAX];
        for (int i = 0; i < nc; i++) { aw[i] = dw[c0 + i]; ab[i] = db[c0 + i]; }
        for (int p = 0; p < N; p++) {
            const float *x = inp + (size_t)p * C + c0, *d = dout + (size_t)p * C + c0;
            const float m = mean[p], s = rstd[p];
            #pragma omp simd
            for (int i = 0; i < nc; i++) {
                aw[i] += (x[i] - m) * s * d[i];
                ab[i] += d[i];
            }
        }
        for (int i = 0; i < nc; i++) { dw[c0 + i] = aw[i]; db[c0 + i] = ab[i]; }
    }
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int p = 0; p < N; p++) {
        const float *x = inp + (size_t)p * C, *d = dout + (size_t)p * C;
        float *dx = dinp + (size_t)p * C;
        float m = mean[p], s = rstd[p];
        double dnorm_mean = 0, dnorm_norm_mean = 0;
        #pragma omp simd reduction(+:dnorm_mean, dnorm_norm_mean)
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = w[i] * d[i];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = w[i] * d[i];
            dx[i] += s * (dnorm - (float)dnorm_mean - norm * (float)dnorm_norm_mean);
        }
    }
}

/* erf(x) for float x, branch-free so the GELU loops vectorise: x·P(x²)/Q(x²) on [-4, 4] (outside
 * it erf is ±1 in float), the rational approximation of Eigen/XLA; max |error| 4.2e-7 over
 * [-10, 10] against double erf (measured when written). */
static const float ERF_P[7] = { -2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                                -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                                -1.60960333262415e-02f };   /* numerator in x², highest power first */
static const float ERF_Q[5] = { -1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                                -7.37332916720468e-03f, -1.42647390514189e-02f };   /* denominator */

static inline float erf_vec(float a) {
    float x = a > 4.0f ? 4.0f : (a < -4.0f ? -4.0f : a), x2 = x * x;
    float p = ERF_P[0], q = ERF_Q[0];
    for (int i = 1; i < 7; i++) p = p * x2 + ERF_P[i];
    for (int i = 1; i < 5; i++) q = q * x2 + ERF_Q[i];
    return x * p / q;
}

/* exp(x) for float x (clamped to [-87, 88]), branch-free: x = n·ln2 + r, 2^n from the exponent
 * bits, Cephes' degree-6 polynomial for e^r; max relative error 8.1e-8 (measured when written). */
static const float EXP_P[6] = { 1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                                1.6666665459e-1f, 5.0000001201e-1f };   /* Cephes, highest power first */

static inline float exp_vec(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = EXP_P[0];
    for (int i = 1; i < 6; i++) p = p * r + EXP_P[i];
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* GELU and its gradient on AVX-512 (the default where the CPU has AVX-512F) or in portable C. */
static int g_gelu_avx512 = -1;   /* -1: not decided yet */

int ops_gelu_avx512(int on) {
    if (on && !gm_avx512f_supported()) return -1;
    g_gelu_avx512 = on ? 1 : 0;
    return 0;
}

static int gelu_avx512(void) {
    if (g_gelu_avx512 < 0) g_gelu_avx512 = gm_avx512f_supported();
    return g_gelu_avx512;
}

/* The mask of the first min(n, 16) lanes. */
static inline __mmask16 lanes16(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* erf of 16 floats: erf_vec's rational approximation with fused multiply-adds, its division by
 * the denominator (which is below -0.014 everywhere) replaced by a reciprocal estimate and one
 * Newton step. */
__attribute__((target("avx512f"))) static inline __m512 erf16(__m512 a) {
    const __m512 x = _mm512_min_ps(_mm512_max_ps(a, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(ERF_P[0]), q = _mm512_set1_ps(ERF_Q[0]);
    for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(ERF_P[i]));
    for (int i = 1; i < 5; i++) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(ERF_Q[i]));
    __m512 r = _mm512_rcp14_ps(q);
    r = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, r, _mm512_set1_ps(1.0f)), r, r);
    return _mm512_mul_ps(_mm512_mul_ps(x, p), r);
}

/* GELU of 16 floats: 0.5 t (1 + erf(t / sqrt 2)) as h + h erf with h = t / 2. NaN stays NaN. */
__attribute__((target("avx512f"))) static inline __m512 gelu16(__m512 t) {
    const __m512 erf = erf16(_mm512_mul_ps(t, _mm512_set1_ps((float)M_SQRT1_2)));
    const __m512 h = _mm512_mul_ps(t, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(h, erf, h);
}

/* exp_vec of 16 floats with fused multiply-adds, 2^n applied by VSCALEFPS. */
__attribute__((target("avx512f"))) static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(EXP_P[0]);
    for (int i = 1; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P[i]));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* dinp[j] = dout[j] GELU'(x[j]) = dout[j] (Phi(x) + x phi(x)) for j < n, 16 at a time. */
__attribute__((target("avx512f"))) static void gelu_grad_span_avx512(float *dinp, const float *in,
                                                                    const float *dout, int n) {
    for (int j = 0; j < n; j += 16) {
        const __mmask16 m = lanes16(n - j);
        const __m512 x = _mm512_maskz_loadu_ps(m, in + j), half = _mm512_set1_ps(0.5f);
        const __m512 cdf = _mm512_fmadd_ps(half, erf16(_mm512_mul_ps(x, _mm512_set1_ps((float)M_SQRT1_2))), half);
        const __m512 pdf = _mm512_mul_ps(exp16(_mm512_mul_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(-0.5f))),
                                         _mm512_set1_ps(0.3989422804014327f));
        _mm512_mask_storeu_ps(dinp + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dout + j),
                                                         _mm512_fmadd_ps(x, pdf, cdf)));
    }
}

__attribute__((target("avx512f"))) static void gelu_span_avx512(float *out, const float *in,
                                                                const float *b, int n) {
    for (int j = 0; j < n; j += 16) {
        const __mmask16 m = lanes16(n - j);
        __m512 t = _mm512_maskz_loadu_ps(m, in + j);
        if (b) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(m, b + j));
        _mm512_mask_storeu_ps(out + j, m, gelu16(t));
    }
}

/* out[j] = GELU(in[j] + b[j]) for j < n (b may be NULL: no bias; out may equal in), the one GELU
 * of every forward path. */
static void gelu_span(float *out, const float *in, const float *b, int n) {
    if (gelu_avx512()) {
        gelu_span_avx512(out, in, b, n);
        return;
    }
    #pragma omp simd
    for (int j = 0; j < n; j++) {
        const float t = b ? in[j] + b[j] : in[j];
        out[j] = 0.5f * t * (1.0f + erf_vec(t * (float)M_SQRT1_2));
    }
}

/* gm_epilogue steps (arg: the bias, indexed from column n0): a tile of C += bias, and a tile of C
 * = GELU(C + bias) (gelu_bias_forward's arithmetic, element for element). */
static void ep_bias(float *c, long ldc, int rows, int cols, int n0, const void *arg) {
    const float *b = (const float *)arg + n0;
    for (int i = 0; i < rows; i++) {
        float *r = c + (size_t)i * (size_t)ldc;
        #pragma omp simd
        for (int j = 0; j < cols; j++) r[j] += b[j];
    }
}

static void ep_bias_gelu(float *c, long ldc, int rows, int cols, int n0, const void *arg) {
    const float *b = (const float *)arg + n0;
    for (int i = 0; i < rows; i++) gelu_span(c + (size_t)i * (size_t)ldc, c + (size_t)i * (size_t)ldc, b, cols);
}

void matmul_forward(float *out, const float *inp, const float *w, const float *b, int N, int C,
                    int OC) {
    const gm_epilogue ep = { ep_bias, b };
    gm_sgemm_w_ep(0, 1, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC, b ? &ep : NULL);
}

void matmul_gelu_forward(float *out, const float *inp, const float *w, const float *b, int N, int C,
                         int OC) {
    const gm_epilogue ep = { ep_bias_gelu, b };
    gm_sgemm_w_ep(0, 1, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC, &ep);
}

/* matmul_backward with dinp = beta * dinp + dout w (beta 0: dinp need not be initialised). */
static void matmul_backward_beta(float *dinp, float beta, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, int N, int C, int OC) {
    if (dinp)
        gm_sgemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, beta, dinp, C);
    gm_sgemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    if (db) {
        /* each column summed over the rows in order, blocks of columns in parallel */
        const int bw = col_block(OC, (size_t)N * OC);
        #pragma omp parallel for if ((size_t)N * OC > OMP_MIN)
        for (int o0 = 0; o0 < OC; o0 += bw) {
            const int no = o0 + bw < OC ? bw : OC - o0;
            float a[COL_BLOCK_MAX];
            for (int o = 0; o < no; o++) a[o] = db[o0 + o];
            for (int p = 0; p < N; p++) {
                const float *d = dout + (size_t)p * OC + o0;
                #pragma omp simd
                for (int o = 0; o < no; o++) a[o] += d[o];
            }
            for (int o = 0; o < no; o++) db[o0 + o] = a[o];
        }
    }
}

void matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int N, int C, int OC) {
    matmul_backward_beta(dinp, 1.0f, dw, db, dout, inp, w, N, C, OC);
}

void matmul_backward_set(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC) {
    matmul_backward_beta(dinp, 0.0f, dw, db, dout, inp, w, N, C, OC);
}

void gelu_forward(float *out, const float *inp, size_t n) {
    const size_t chunk = 4096;
    #pragma omp parallel for if (n > OMP_MIN)
    for (size_t i = 0; i < n; i += chunk) gelu_span(out + i, inp + i, NULL, (int)(n - i < chunk ? n - i : chunk));
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    if (gelu_avx512()) {
        const size_t chunk = 4096;
        #pragma omp parallel for if (n > OMP_MIN)
        for (size_t i = 0; i < n; i += chunk)
            gelu_grad_span_avx512(dinp + i, inp + i, dout + i, (int)(n - i < chunk ? n - i : chunk));
        return;
    }
    #pragma omp parallel for simd if (n > OMP_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erf_vec(x * (float)M_SQRT1_2));
        float pdf = exp_vec(-0.5f * x * x) * 0.3989422804014327f;
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

void gelu_bias_forward(float *x, const float *b, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int p = 0; p < N; p++) gelu_span(x + (size_t)p * C, x + (size_t)p * C, b, C);
}

void matmul_residual(float *out, const float *inp, const float *w, const float *b, int N, int C,
                     int OC) {
    /* beta 1: the product lands on the residual stream directly (no zeroed buffer, no extra add);
     * the bias joins each tile once its sum is final */
    const gm_epilogue ep = { ep_bias, b };
    gm_sgemm_w_ep(0, 1, N, OC, C, 1.0f, inp, C, w, C, 1.0f, out, OC, b ? &ep : NULL);
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
    #pragma omp parallel for simd if (n > OMP_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* ---- FAVOR+ ---------------------------------------------------------------------------------- */

static _Atomic int g_favor_follow = 1;

void favor_products_follow_precision(int on) { g_favor_follow = on != 0; }

/* C = alpha op(A) op(B) (row-major, ta/tb transpose flags): gm_sgemm when the FAVOR+ products
 * follow the precision, else float32 OpenBLAS. */
static void favor_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float *C, int ldc) {
    if (g_favor_follow)
        gm_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
    else
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}

/* Tokens in a packed batch of B sequences. */
static size_t seq_total(const int *lens, int B) {
    size_t t = 0;
    for (int b = 0; b < B; b++) t += (size_t)lens[b];
    return t;
}

/* Token offset of sequence b in a packed batch: lens[0] + ... + lens[b-1]. */
static size_t seq_start(const int *lens, int b) {
    size_t t = 0;
    for (int i = 0; i < b; i++) t += (size_t)lens[i];
    return t;
}

/* One row of positive softmax features in place: s[r] = ratio (exp(s[r] - half_c2 |x|^2 - mx) + eps),
 * s the raw scores c x . proj_r, mx the row's largest score (is_query) or kmax (keys). */
static inline void softmax_feature_row(float *s, const float *xr, int dh, int m, int is_query,
                                       float kmax, float ratio, float half_c2) {
    float g = 0;
    #pragma omp simd reduction(+:g)
    for (int j = 0; j < dh; j++) g += xr[j] * xr[j];
    g *= half_c2;
    float mx = kmax;
    if (is_query) {
        mx = -FLT_MAX;
        #pragma omp simd reduction(max:mx)
        for (int r = 0; r < m; r++) mx = s[r] > mx ? s[r] : mx;
    }
    const float off = g + mx;
    #pragma omp simd
    for (int r = 0; r < m; r++) s[r] = ratio * (exp_vec(s[r] - off) + FAVOR_SOFTMAX_EPS);
}

/* Writes phi [T, H, m] = feature map of x [T, H*dh] for a packed batch (all heads and sequences
 * at once: the projection is shared). is_query selects the per-row stabiliser of the softmax
 * kernel; keys use one maximum per (sequence, head), as a single sequence would. */
static void favor_features(float *phi, const float *x, const float *proj, const int *lens, int B,
                           int H, int dh, int m, int relu, int is_query) {
    const float c = powf((float)dh, -0.25f);
    const size_t rows = seq_total(lens, B) * (size_t)H;
    /* x viewed as [T*H, dh] is contiguous: one sgemm for every head of every sequence. */
    favor_sgemm(0, 1, (int)rows, m, dh, c, x, dh, proj, dh, phi, m);
    if (relu) {
        #pragma omp parallel for simd if (rows * m > OMP_MIN)
        for (size_t i = 0; i < rows * m; i++)
            phi[i] = (phi[i] > 0 ? phi[i] : 0.0f) + FAVOR_RELU_EPS;
        return;
    }
    const float ratio = 1.0f / sqrtf((float)m), half_c2 = 0.5f * c * c;
    /* one task per (sequence, head): its rows are position-strided by H */
    #pragma omp parallel for schedule(dynamic) if (rows * m > OMP_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const size_t s0 = seq_start(lens, b);
        const int L = lens[b];
        /* every inner loop is a SIMD loop (max and sum reductions, exp_vec): with scalar expf
         * and scalar max loops this was a fifth of a favor-softmax pass at L = 32,768 */
        float kmax = -FLT_MAX;
        if (!is_query)
            for (int p = 0; p < L; p++) {
                const float *s = phi + ((s0 + p) * H + h) * m;
                #pragma omp simd reduction(max:kmax)
                for (int r = 0; r < m; r++) kmax = s[r] > kmax ? s[r] : kmax;
            }
        for (int p = 0; p < L; p++) {
            const size_t row = (s0 + p) * H + h;
            softmax_feature_row(phi + row * m, x + row * dh, dh, m, is_query, kmax, ratio, half_c2);
        }
    }
}

void favor_forward_batch(float *out, favor_state *st, const float *q, const float *k,
                         const float *v, const float *proj, const int *lens, int B, int H, int dh,
                         int m, int relu) {
    const int d = H * dh;
    const size_t T = seq_total(lens, B);
    (void)T;    /* only the parallel region's size test uses it (unused without OpenMP) */
    favor_features(st->phi_q, q, proj, lens, B, H, dh, m, relu, 1);
    favor_features(st->phi_k, k, proj, lens, B, H, dh, m, relu, 0);
    /* one task per (sequence, head); the small products run single-threaded inside the region
     * (OpenBLAS does not nest threads under OpenMP), so short sequences cost no fork/join each */
    #pragma omp parallel for schedule(dynamic) if (T * d > OMP_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H, L = lens[b];
        const size_t s0 = seq_start(lens, b);
        float *kv = st->kv + (size_t)bh * m * dh, *z = st->z + (size_t)bh * m;
        const float *pk = st->phi_k + s0 * H * m + (size_t)h * m;
        const float *pq = st->phi_q + s0 * H * m + (size_t)h * m;
        float *o = out + s0 * d + (size_t)h * dh;
        /* KV = phi_k^T V  [m, dh] */
        favor_sgemm(1, 0, m, dh, L, 1.0f, pk, H * m, v + s0 * d + (size_t)h * dh, d, kv, dh);
        /* z = column sums of phi_k */
        for (int r = 0; r < m; r++) z[r] = 0;
        for (int p = 0; p < L; p++) {
            const float *row = pk + (size_t)p * H * m;
            #pragma omp simd
            for (int r = 0; r < m; r++) z[r] += row[r];
        }
        /* numerator = phi_q KV, written straight into the head's columns of out */
        favor_sgemm(0, 0, L, dh, m, 1.0f, pq, H * m, kv, dh, o, d);
        for (int p = 0; p < L; p++) {
            const float *pqr = pq + (size_t)p * H * m;
            float den = 0;
            #pragma omp simd reduction(+:den)
            for (int r = 0; r < m; r++) den += pqr[r] * z[r];
            st->den[(s0 + p) * H + h] = den;
            const float inv = 1.0f / den;
            float *orow = o + (size_t)p * d;
            for (int j = 0; j < dh; j++) orow[j] *= inv;
        }
    }
}

/* ---- FAVOR+ for inference, fused -------------------------------------------------------------
 * favor_forward_fused computes what favor_forward_batch computes, for one (sequence, head) at a
 * time, without writing the features to memory: phase 1 walks the keys in blocks of FZ_BLOCK rows
 * (features of 4 rows at a time from the key rows, then KV += phi_k^T V and z += colsum(phi_k)
 * with 8 rows of KV held in registers), phase 2 the queries 8 rows at a time (features, then
 * numerator phi_q KV and denominator phi_q . z, divided). Everything a task touches besides q, k,
 * v and out stays in L1 (KV m x 32, one block of features). The generic path wrote phi_q and
 * phi_k [T, H, m] out and read them back and ran eight small products per head (a quarter of a
 * pass at L = 4,096). Float32 throughout (also in bf16 mode): its three products on VDPBF16PS
 * (operands paired in bf16, half the instructions) made bf16 passes 1.07-1.15x slower on the AMX
 * machine (L = 62 to 4,096, session 47), the pairing costing more than the FMAs it saved. The
 * feature scores on AMX tiles, each operand split into two bf16 (hi.hi + lo.hi + hi.lo, about
 * float32 accurate), ran 1.00-1.06x (62 x 16, 512 x 1 and 16, 4,096 x 1; session 48): the scores
 * went from 12.8% to 9.2% of a bf16 pass at L = 4,096, bound by loading the q and k rows (1 KiB
 * apart) rather than by their FMAs, and the ReLU moved to a pass of its own. Not kept. */

#define FZ_BLOCK 32    /* key rows per block of phase 1 */
#define FZ_QROWS 8     /* query rows per step of phase 2 (16 accumulators) */
#define FZ_MAXM 128    /* most features the fused path takes (its buffers live on the stack) */
#define FZ_DH 32       /* the head width it takes (two zmm per row) */
#define FZ_TARGET __attribute__((target("avx512f")))
#define FZ_INLINE static inline __attribute__((always_inline))

/* s[i][c0 .. c0 + 16 NG) = x_i . pt[:, c0 ..] for rows x_i = x + min(i, nr - 1) * ldx (i < 4),
 * written to s + i * m (NG <= 4 groups of 16 columns; pt is [FZ_DH][m]). */
FZ_TARGET FZ_INLINE void fz_scores4(float *s, const float *x, long ldx, int nr, const float *pt,
                                    int m, int c0, const int NG, const int relu) {
    const float *xr[4];
    for (int i = 0; i < 4; i++) xr[i] = x + (long)(i < nr ? i : nr - 1) * ldx;
    __m512 acc[4][4];
    #pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        #pragma GCC unroll 4
        for (int g = 0; g < NG; g++) acc[i][g] = _mm512_setzero_ps();
    #pragma GCC unroll 8
    for (int j = 0; j < FZ_DH; j++) {
        __m512 pv[4];
        #pragma GCC unroll 4
        for (int g = 0; g < NG; g++) pv[g] = _mm512_loadu_ps(pt + (size_t)j * m + c0 + 16 * g);
        #pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m512 xv = _mm512_set1_ps(xr[i][j]);
            #pragma GCC unroll 4
            for (int g = 0; g < NG; g++) acc[i][g] = _mm512_fmadd_ps(xv, pv[g], acc[i][g]);
        }
    }
    const __m512 zero = _mm512_setzero_ps(), eps = _mm512_set1_ps(FAVOR_RELU_EPS);
    #pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        #pragma GCC unroll 4
        for (int g = 0; g < NG; g++)
            _mm512_storeu_ps(s + (size_t)i * m + c0 + 16 * g,
                             relu ? _mm512_add_ps(_mm512_max_ps(acc[i][g], zero), eps) : acc[i][g]);
}

/* Scores of 4 rows (see fz_scores4) over all m columns (m % 16 == 0, m <= FZ_MAXM): raw, or with
 * relu the ReLU features max(s, 0) + eps. */
FZ_TARGET static void fz_scores(float *s, const float *x, long ldx, int nr, const float *pt, int m,
                                int relu) {
    for (int c0 = 0; c0 < m; c0 += 64) {
        switch (((m - c0) >= 64 ? 4 : (m - c0) / 16) * 2 + (relu != 0)) {
#define FZ_CASE(g) \
        case 2 * (g): fz_scores4(s, x, ldx, nr, pt, m, c0, g, 0); break; \
        case 2 * (g) + 1: fz_scores4(s, x, ldx, nr, pt, m, c0, g, 1); break;
        FZ_CASE(1) FZ_CASE(2) FZ_CASE(3) FZ_CASE(4)
#undef FZ_CASE
        default: break;
        }
    }
}

/* What every (sequence, head) task of favor_forward_fused shares, set once per call. */
typedef struct {
    const float *pt;        /* c proj^T [FZ_DH][m]: the feature scale folded into the projection */
    int m, d, relu;         /* features, row stride of q/k/v/out, the ReLU kernel (else softmax) */
    float ratio, half_c2;   /* softmax features: 1 / sqrt(m), c^2 / 2 */
} fz_args;

/* Features phi[i][m] of the n rows x + i * d (4 rows at a time; rows up to n rounded up to 4 are
 * written, from repeats of the last); softmax: as favor_features, with the row's maximum
 * (is_query) or kmax (keys) as stabiliser. */
FZ_TARGET static void fz_features(float *phi, const float *x, int n, int is_query, float kmax,
                                  const fz_args *a) {
    const int m = a->m;
    for (int i = 0; i < n; i += 4) {
        const int nr = n - i < 4 ? n - i : 4;
        const float *xr = x + (long)i * a->d;
        fz_scores(phi + (size_t)i * m, xr, a->d, nr, a->pt, m, a->relu);
        if (!a->relu)
            for (int r = 0; r < nr; r++)
                softmax_feature_row(phi + (size_t)(i + r) * m, xr + (long)r * a->d, FZ_DH, m,
                                    is_query, kmax, a->ratio, a->half_c2);
    }
}

/* One (sequence, head) of favor_forward_fused: q, k, v, out point at the head's columns of the
 * sequence's first row (rows a->d apart). */
FZ_TARGET static void fz_head(float *out, const float *q, const float *k, const float *v, int L,
                              const fz_args *a) {
    const int d = a->d, m = a->m, relu = a->relu;
    const float *pt = a->pt;
    float kv[FZ_MAXM * FZ_DH] __attribute__((aligned(64)));
    float z[FZ_MAXM] __attribute__((aligned(64)));
    float phi[FZ_BLOCK * FZ_MAXM] __attribute__((aligned(64)));
    memset(kv, 0, sizeof(float) * (size_t)m * FZ_DH);
    memset(z, 0, sizeof(float) * (size_t)m);
    /* softmax keys: one stabiliser per (sequence, head), the largest raw score */
    float kmax = -FLT_MAX;
    if (!relu)
        for (int p = 0; p < L; p += 4) {
            const int nr = L - p < 4 ? L - p : 4;
            fz_scores(phi, k + (long)p * d, d, nr, pt, m, 0);
            for (int i = 0; i < nr; i++)
                for (int r = 0; r < m; r++) kmax = phi[i * m + r] > kmax ? phi[i * m + r] : kmax;
        }
    /* phase 1: KV = phi_k^T V, z = column sums of phi_k */
    for (int p0 = 0; p0 < L; p0 += FZ_BLOCK) {
        const int P = L - p0 < FZ_BLOCK ? L - p0 : FZ_BLOCK;
        fz_features(phi, k + (long)p0 * d, P, 0, kmax, a);
        for (int i = 0; i < P; i++) {
            const float *pr = phi + (size_t)i * m;
            #pragma omp simd
            for (int r = 0; r < m; r++) z[r] += pr[r];
        }
        for (int r0 = 0; r0 < m; r0 += 8) {
            __m512 a[8][2];
            #pragma GCC unroll 8
            for (int rr = 0; rr < 8; rr++) {
                a[rr][0] = _mm512_load_ps(kv + (size_t)(r0 + rr) * FZ_DH);
                a[rr][1] = _mm512_load_ps(kv + (size_t)(r0 + rr) * FZ_DH + 16);
            }
            for (int i = 0; i < P; i++) {
                const float *vr = v + (long)(p0 + i) * d, *pr = phi + (size_t)i * m + r0;
                const __m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16);
                #pragma GCC unroll 8
                for (int rr = 0; rr < 8; rr++) {
                    const __m512 b = _mm512_set1_ps(pr[rr]);
                    a[rr][0] = _mm512_fmadd_ps(b, v0, a[rr][0]);
                    a[rr][1] = _mm512_fmadd_ps(b, v1, a[rr][1]);
                }
            }
            #pragma GCC unroll 8
            for (int rr = 0; rr < 8; rr++) {
                _mm512_store_ps(kv + (size_t)(r0 + rr) * FZ_DH, a[rr][0]);
                _mm512_store_ps(kv + (size_t)(r0 + rr) * FZ_DH + 16, a[rr][1]);
            }
        }
    }
    /* phase 2: out = (phi_q KV) / (phi_q . z), FZ_QROWS query rows at a time */
    for (int p = 0; p < L; p += FZ_QROWS) {
        const int nq = L - p < FZ_QROWS ? L - p : FZ_QROWS;
        fz_features(phi, q + (long)p * d, nq, 1, 0.0f, a);
        float den[FZ_QROWS];
        for (int i = 0; i < FZ_QROWS; i++) {
            const float *pr = phi + (size_t)(i < nq ? i : 0) * m;
            float s = 0;
            #pragma omp simd reduction(+:s)
            for (int r = 0; r < m; r++) s += pr[r] * z[r];
            den[i] = s;
        }
        __m512 o[FZ_QROWS][2];
        #pragma GCC unroll 8
        for (int i = 0; i < FZ_QROWS; i++) o[i][0] = o[i][1] = _mm512_setzero_ps();
        for (int r = 0; r < m; r++) {
            const __m512 k0 = _mm512_load_ps(kv + (size_t)r * FZ_DH), k1 = _mm512_load_ps(kv + (size_t)r * FZ_DH + 16);
            #pragma GCC unroll 8
            for (int i = 0; i < FZ_QROWS; i++) {
                const __m512 b = _mm512_set1_ps(phi[(size_t)i * m + r]);
                o[i][0] = _mm512_fmadd_ps(b, k0, o[i][0]);
                o[i][1] = _mm512_fmadd_ps(b, k1, o[i][1]);
            }
        }
        for (int i = 0; i < nq; i++) {
            const __m512 inv = _mm512_set1_ps(1.0f / den[i]);
            float *orow = out + (long)(p + i) * d;
            _mm512_storeu_ps(orow, _mm512_mul_ps(o[i][0], inv));
            _mm512_storeu_ps(orow + 16, _mm512_mul_ps(o[i][1], inv));
        }
    }
}

int favor_fused_ok(int dh, int m) {
    return gm_avx512f_supported() && dh == FZ_DH && m > 0 && m % 16 == 0 && m <= FZ_MAXM;
}

int favor_forward_fused(float *out, const float *q, const float *k, const float *v,
                        const float *proj, const int *lens, int B, int H, int dh, int m, int relu) {
    if (!favor_fused_ok(dh, m)) return -1;
    const int d = H * dh;
    const size_t T = seq_total(lens, B);
    (void)T;
    float pt[FZ_DH * FZ_MAXM];
    const float c = powf((float)dh, -0.25f);
    for (int r = 0; r < m; r++)
        for (int j = 0; j < dh; j++) pt[(size_t)j * m + r] = c * proj[(size_t)r * dh + j];
    const fz_args a = { pt, m, d, relu, 1.0f / sqrtf((float)m), 0.5f * c * c };
    #pragma omp parallel for schedule(dynamic) if (T * d > OMP_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        if (lens[b] <= 0) continue;
        const size_t o = seq_start(lens, b) * d + (size_t)h * dh;
        fz_head(out + o, q + o, k + o, v + o, lens[b], &a);
    }
    return 0;
}

void favor_forward(float *out, favor_state *st, const float *q, const float *k, const float *v,
                   const float *proj, int L, int H, int dh, int m, int relu) {
    favor_forward_batch(out, st, q, k, v, proj, &L, 1, H, dh, m, relu);
}

size_t favor_backward_scratch_batch(size_t T, int B, int H, int dh, int m) {
    return 2 * T * H * m + T * H * dh + (size_t)B * H * m * dh + (size_t)B * H * m + T * H;
}

/* Turns dphi [rows, m] (gradient w.r.t. the features) into dx [rows, dh] (overwritten). */
static void favor_features_backward(float *dx, float *dphi, const float *phi, const float *x,
                                    const float *proj, size_t rows, int dh, int m, int relu) {
    const float c = powf((float)dh, -0.25f);
    const size_t n = rows * m;
    if (relu) {
        /* phi = relu(s) + eps, so phi > eps exactly where s > 0 */
        #pragma omp parallel for simd if (n > OMP_MIN)
        for (size_t i = 0; i < n; i++)
            dphi[i] = phi[i] > FAVOR_RELU_EPS ? dphi[i] : 0.0f;
    } else {
        const float re = FAVOR_SOFTMAX_EPS / sqrtf((float)m);
        #pragma omp parallel for simd if (n > OMP_MIN)
        for (size_t i = 0; i < n; i++) dphi[i] *= phi[i] - re;  /* d(exp)/da */
    }
    favor_sgemm(0, 0, (int)rows, dh, m, c, dphi, m, proj, dh, dx, dh);
    if (!relu) {
        /* a = s - g - max: dg = -sum_r da; g = c^2 |x|^2 / 2 */
        #pragma omp parallel for if (n > OMP_MIN)
        for (size_t row = 0; row < rows; row++) {
            const float *da = dphi + row * m;
            float dg = 0;
            for (int r = 0; r < m; r++) dg -= da[r];
            const float *xr = x + row * dh;
            float *dxr = dx + row * dh;
            for (int j = 0; j < dh; j++) dxr[j] += dg * c * c * xr[j];
        }
    }
}

void favor_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const favor_state *st, const float *q, const float *k, const float *v,
                          const float *proj, const int *lens, int B, int H, int dh, int m,
                          int relu, float *scratch) {
    const int d = H * dh;
    const size_t T = seq_total(lens, B);
    float *dphi_q = scratch;
    float *dphi_k = dphi_q + T * H * m;
    float *dnum = dphi_k + T * H * m;
    float *dkv = dnum + T * d;
    float *dz = dkv + (size_t)B * H * m * dh;
    float *dden = dz + (size_t)B * H * m;
    /* out = num / den: dnum = dout / den, dden = -(dout . out) / den */
    #pragma omp parallel for if (T * d > OMP_MIN)
    for (size_t p = 0; p < T; p++)
        for (int h = 0; h < H; h++) {
            size_t o = p * d + (size_t)h * dh;
            float den = st->den[p * H + h], dot = 0;
            for (int j = 0; j < dh; j++) {
                dnum[o + j] = dout[o + j] / den;
                dot += dout[o + j] * out[o + j];
            }
            dden[p * H + h] = -dot / den;
        }
    #pragma omp parallel for schedule(dynamic) if (T * d > OMP_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H, L = lens[b];
        const size_t s0 = seq_start(lens, b), hm = s0 * H * m + (size_t)h * m, hd = s0 * d + (size_t)h * dh;
        const float *kv = st->kv + (size_t)bh * m * dh, *z = st->z + (size_t)bh * m;
        const float *pq = st->phi_q + hm, *pk = st->phi_k + hm;
        float *dkv_h = dkv + (size_t)bh * m * dh, *dz_h = dz + (size_t)bh * m;
        /* num = phi_q KV: dphi_q = dnum KV^T, dKV = phi_q^T dnum */
        favor_sgemm(0, 1, L, m, dh, 1.0f, dnum + hd, d, kv, dh, dphi_q + hm, H * m);
        favor_sgemm(1, 0, m, dh, L, 1.0f, pq, H * m, dnum + hd, d, dkv_h, dh);
        /* den = phi_q . z: dphi_q += dden z, dz = phi_q^T dden */
        for (int r = 0; r < m; r++) dz_h[r] = 0;
        for (int p = 0; p < L; p++) {
            const float dd = dden[(s0 + p) * H + h];
            float *dpq = dphi_q + hm + (size_t)p * H * m;
            const float *pqr = pq + (size_t)p * H * m;
            #pragma omp simd
            for (int r = 0; r < m; r++) { dpq[r] += dd * z[r]; dz_h[r] += dd * pqr[r]; }
        }
        /* KV = phi_k^T V: dphi_k = V dKV^T, dV = phi_k dKV; z = sum phi_k: dphi_k += dz */
        favor_sgemm(0, 1, L, m, dh, 1.0f, v + hd, d, dkv_h, dh, dphi_k + hm, H * m);
        favor_sgemm(0, 0, L, dh, m, 1.0f, pk, H * m, dkv_h, dh, dv + hd, d);
        for (int p = 0; p < L; p++) {
            float *dpk = dphi_k + hm + (size_t)p * H * m;
            #pragma omp simd
            for (int r = 0; r < m; r++) dpk[r] += dz_h[r];
        }
    }
    favor_features_backward(dq, dphi_q, st->phi_q, q, proj, T * H, dh, m, relu);
    favor_features_backward(dk, dphi_k, st->phi_k, k, proj, T * H, dh, m, relu);
}

void favor_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                    const favor_state *st, const float *q, const float *k, const float *v,
                    const float *proj, int L, int H, int dh, int m, int relu, float *scratch) {
    favor_backward_batch(dq, dk, dv, dout, out, st, q, k, v, proj, &L, 1, H, dh, m, relu, scratch);
}

/* ---- exact softmax attention --------------------------------------------------------------- */

/* In place softmax of each row of x[N, C] (SIMD max and sum, exp_vec). */
static void softmax_rows(float *x, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int p = 0; p < N; p++) {
        float *r = x + (size_t)p * C, mx = -FLT_MAX, s = 0;
        #pragma omp simd reduction(max:mx)
        for (int i = 0; i < C; i++) mx = r[i] > mx ? r[i] : mx;
        #pragma omp simd reduction(+:s)
        for (int i = 0; i < C; i++) { r[i] = exp_vec(r[i] - mx); s += r[i]; }
        float inv = 1.0f / s;
        #pragma omp simd
        for (int i = 0; i < C; i++) r[i] *= inv;
    }
}

/* C = alpha op(A) op(B) in float32 whatever the process's precision (the exact attention's
 * products): the own float32 kernel where there is one, else OpenBLAS. */
static void f32_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float *C, int ldc) {
    if (gm_fp32_is_own())
        gm_sgemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
    else
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}

void exact_forward(float *out, float *att, const float *q, const float *k, const float *v, int L,
                   int H, int dh, int save_all) {
    const int d = H * dh;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int h = 0; h < H; h++) {
        float *a = att + (save_all ? (size_t)h * L * L : 0);
        f32_gemm(0, 1, L, L, dh, scale, q + (size_t)h * dh, d, k + (size_t)h * dh, d, a, L);
        softmax_rows(a, L, L);
        f32_gemm(0, 0, L, dh, L, 1.0f, a, L, v + (size_t)h * dh, d, out + (size_t)h * dh, d);
    }
}

void exact_backward(float *dq, float *dk, float *dv, const float *dout, const float *att,
                    const float *q, const float *k, const float *v, int L, int H, int dh,
                    float *scratch) {
    const int d = H * dh;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int h = 0; h < H; h++) {
        const float *a = att + (size_t)h * L * L;
        const size_t o = (size_t)h * dh;
        f32_gemm(1, 0, L, dh, L, 1.0f, a, L, dout + o, d, dv + o, d);
        float *ds = scratch;
        f32_gemm(0, 1, L, L, dh, 1.0f, dout + o, d, v + o, d, ds, L);
        for (int p = 0; p < L; p++) {
            float *r = ds + (size_t)p * L;
            const float *ar = a + (size_t)p * L;
            float dot = 0;
            for (int i = 0; i < L; i++) dot += r[i] * ar[i];
            for (int i = 0; i < L; i++) r[i] = ar[i] * (r[i] - dot);
        }
        f32_gemm(0, 0, L, dh, L, scale, ds, L, k + o, d, dq + o, d);
        f32_gemm(1, 0, L, dh, L, scale, ds, L, q + o, d, dk + o, d);
    }
}

/* ---- depthwise convolution over positions (Primer-style, on q, k, v) -------------------------- */

/* Splits rows 0..N-1 evenly among the threads of the current parallel region: this thread's range
 * [*p0, *p1), and the sequence *b (starting at row *s0) that contains row *p0. */
static void dw_rows(const int *lens, int B, size_t N, size_t *p0, size_t *p1, int *b, size_t *s0) {
    int nt = 1, id = 0;
#ifdef _OPENMP
    nt = omp_get_num_threads();
    id = omp_get_thread_num();
#endif
    *p0 = N * (size_t)id / (size_t)nt;
    *p1 = N * (size_t)(id + 1) / (size_t)nt;
    *b = 0;
    *s0 = 0;
    while (*b < B - 1 && *s0 + (size_t)lens[*b] <= *p0) { *s0 += (size_t)lens[*b]; (*b)++; }
}

/* The kernels below keep the sums of DW_CH channels in fixed-size local arrays that GCC holds in
 * vector registers across the taps (4 AVX-512 registers per row), and store each sum once. Every
 * path adds the same products in the same order (tap j ascending for out and dinp, position t
 * ascending for dw), so results do not depend on which path or thread handles a row or channel. */
#define DW_CH 64        /* channels per register block */
#define DW_ROWS 4       /* rows per register block of the forward and the input gradient */

/* Rows i < DW_ROWS, channels c < DW_CH: o[i*C + c] = (add ? o[i*C + c] : 0)
 * + sum_{j<n} w[j*C + c] * x[i*C + j*xs + c]. */
static void dw_taps4(float *restrict o, const float *restrict x, const float *restrict w, size_t C,
                     ptrdiff_t xs, int n, int add) {
    float a0[DW_CH], a1[DW_CH], a2[DW_CH], a3[DW_CH];
    for (int c = 0; c < DW_CH; c++) {
        a0[c] = add ? o[c] : 0.0f;
        a1[c] = add ? o[C + c] : 0.0f;
        a2[c] = add ? o[2 * C + c] : 0.0f;
        a3[c] = add ? o[3 * C + c] : 0.0f;
    }
    for (int j = 0; j < n; j++) {
        const float *wj = w + (size_t)j * C, *xj = x + j * xs;
        #pragma omp simd
        for (int c = 0; c < DW_CH; c++) {
            a0[c] = fmaf(wj[c], xj[c], a0[c]);
            a1[c] = fmaf(wj[c], xj[C + c], a1[c]);
            a2[c] = fmaf(wj[c], xj[2 * C + c], a2[c]);
            a3[c] = fmaf(wj[c], xj[3 * C + c], a3[c]);
        }
    }
    for (int c = 0; c < DW_CH; c++) {
        o[c] = a0[c];
        o[C + c] = a1[c];
        o[2 * C + c] = a2[c];
        o[3 * C + c] = a3[c];
    }
}

/* dw_taps4 for one row. */
static void dw_taps1(float *restrict o, const float *restrict x, const float *restrict w, size_t C,
                     ptrdiff_t xs, int n, int add) {
    float a0[DW_CH];
    for (int c = 0; c < DW_CH; c++) a0[c] = add ? o[c] : 0.0f;
    for (int j = 0; j < n; j++) {
        const float *wj = w + (size_t)j * C, *xj = x + j * xs;
        #pragma omp simd
        for (int c = 0; c < DW_CH; c++) a0[c] = fmaf(wj[c], xj[c], a0[c]);
    }
    for (int c = 0; c < DW_CH; c++) o[c] = a0[c];
}

/* nr (1 or DW_ROWS) whole rows of C channels: row i, channel c is
 * o[i*C + c] = (add ? o[i*C + c] : 0) + sum_{j<n} w[j*C + c] * x[i*C + j*xs + c]. */
static void dw_taps(float *o, const float *x, const float *w, int C, ptrdiff_t xs, int n, int add,
                    int nr) {
    const size_t Cs = (size_t)C;
    int c0 = 0;
    for (; c0 + DW_CH <= C; c0 += DW_CH) {
        if (nr == DW_ROWS) dw_taps4(o + c0, x + c0, w + c0, Cs, xs, n, add);
        else dw_taps1(o + c0, x + c0, w + c0, Cs, xs, n, add);
    }
    for (int i = 0; i < nr && c0 < C; i++) {    /* the last C % DW_CH channels */
        float *oi = o + i * Cs + c0;
        const float *xi = x + i * Cs + c0, *wc = w + c0;
        if (!add) for (int c = 0; c < C - c0; c++) oi[c] = 0.0f;
        for (int j = 0; j < n; j++) {
            const float *wj = wc + (size_t)j * Cs, *xj = xi + j * xs;
            for (int c = 0; c < C - c0; c++) oi[c] = fmaf(wj[c], xj[c], oi[c]);
        }
    }
}

#define DW_SLIDE 8      /* rows per block of the AVX-512 kernels below */
#define DW_SLIDE_MAXK 15

/* Rows i < R (R <= DW_SLIDE) of a block, channels c < 16, the K taps' weights held in registers
 * while the input rows stream past, each loaded once (dw_taps4 loads every input row K times).
 * With X(q) = x[(x0 + q)*C + c] for q in [qlo, qhi) (the rows inside the sequence) and no term
 * for any other q:
 *   forward (rev 0): o[i*C + c] = sum_{j<K} w[j*C + c] * X(i + j), q in 0..K+6;
 *   input gradient (rev 1): o[i*C + c] += sum_{j<K} w[j*C + c] * X(i - j), q in -(K-1)..7.
 * So the rows at a sequence's edges and its last R < DW_SLIDE rows run here too. A fused
 * multiply-add per term, taps in ascending order, as dw_taps does, so every row gets the same
 * bits whichever kernel computes it. */
__attribute__((target("avx512f,fma"))) static inline __attribute__((always_inline)) void dw_slide16(
        float *o, const float *x, ptrdiff_t x0, const float *w, size_t C, const int K, const int rev,
        int qlo, int qhi, int R) {
    __m512 wv[DW_SLIDE_MAXK], acc[DW_SLIDE];
    #pragma GCC unroll 15
    for (int j = 0; j < K; j++) wv[j] = _mm512_loadu_ps(w + (size_t)j * C);
    #pragma GCC unroll 8
    for (int i = 0; i < DW_SLIDE; i++)
        acc[i] = rev && i < R ? _mm512_loadu_ps(o + (size_t)i * C) : _mm512_setzero_ps();
    #pragma GCC unroll 22
    for (int n = 0; n < K + DW_SLIDE - 1; n++) {
        const int q = rev ? DW_SLIDE - 1 - n : n;   /* input row; the reverse pass walks down */
        if (q < qlo || q >= qhi) continue;          /* outside the sequence: no term */
        const __m512 xv = _mm512_loadu_ps(x + (x0 + q) * (ptrdiff_t)C);
        #pragma GCC unroll 8
        for (int i = 0; i < DW_SLIDE; i++) {
            const int j = rev ? i - q : q - i;
            if (j >= 0 && j < K) acc[i] = _mm512_fmadd_ps(wv[j], xv, acc[i]);
        }
    }
    #pragma GCC unroll 8
    for (int i = 0; i < DW_SLIDE; i++)
        if (i < R) _mm512_storeu_ps(o + (size_t)i * C, acc[i]);
}

/* R <= DW_SLIDE whole rows of C channels (C % 16 == 0, K odd <= DW_SLIDE_MAXK) with dw_slide16
 * (forward, or input gradient with rev; x0, qlo, qhi as there), the tap count a constant in each
 * instance. */
__attribute__((target("avx512f,fma"))) static void dw_slide(float *o, const float *x, ptrdiff_t x0,
                                                          const float *w, int C, int K, int rev,
                                                          int qlo, int qhi, int R) {
    for (int c0 = 0; c0 < C; c0 += 16) {
        float *oc = o + c0;
        const float *xc = x + c0, *wc = w + c0;
        const size_t Cs = (size_t)C;
        switch (K * 2 + (rev != 0)) {
#define DW_CASE(k) \
        case 2 * (k): dw_slide16(oc, xc, x0, wc, Cs, k, 0, qlo, qhi, R); break; \
        case 2 * (k) + 1: dw_slide16(oc, xc, x0, wc, Cs, k, 1, qlo, qhi, R); break;
        DW_CASE(1) DW_CASE(3) DW_CASE(5) DW_CASE(7) DW_CASE(9) DW_CASE(11) DW_CASE(13) DW_CASE(15)
#undef DW_CASE
        default: break;   /* dw_slide_ok admits odd K <= 15 only */
        }
    }
}

/* 1 when dw_slide can run: an AVX-512 CPU, whole groups of 16 channels, an odd K up to 15. */
static int dw_slide_ok(int C, int K) {
    return gm_avx512f_supported() && C % 16 == 0 && K % 2 == 1 && K <= DW_SLIDE_MAXK;
}

/* The row loop of the convolution (back 0: out[p] = sum_j w[j] in[p + j - r]) and of its input
 * gradient (back 1: out[p] += sum_j w[j] in[p - j + r]), taps inside p's own sequence only:
 * rows split over the threads; with dw_slide, DW_SLIDE rows of one sequence at a time (edges and
 * all); otherwise DW_ROWS rows where every tap of them is inside, the sequence's edges one row at
 * a time. */
static void dw_apply(float *out, const float *in, const float *w, const int *lens, int B, int C,
                     int K, int back) {
    size_t N = 0;
    for (int b = 0; b < B; b++) N += (size_t)lens[b];
    const int r = (K - 1) / 2, slide = dw_slide_ok(C, K);
    const ptrdiff_t xs = back ? -(ptrdiff_t)C : (ptrdiff_t)C;   /* from one tap's row to the next */
    #pragma omp parallel if (N * C > OMP_MIN)
    {
        size_t p0, p1, s0;
        int b;
        dw_rows(lens, B, N, &p0, &p1, &b, &s0);
        for (size_t p = p0; p < p1;) {
            while (p >= s0 + (size_t)lens[b]) s0 += (size_t)lens[b++];
            const int t = (int)(p - s0), L = lens[b];
            /* the row of tap 0 (in range whenever every tap of row p is) */
            const ptrdiff_t x0 = back ? (ptrdiff_t)p + r : (ptrdiff_t)p - r;
            if (slide) {
                /* rows p .. p + R - 1 of this sequence and this thread; input rows x0 + q inside
                 * the sequence for q in [qlo, qhi) */
                int R = L - t < DW_SLIDE ? L - t : DW_SLIDE;
                if ((size_t)R > p1 - p) R = (int)(p1 - p);
                const int qlo = back ? -(t + r) : r - t, qhi = back ? L - t - r : L - t + r;
                dw_slide(out + p * C, in, x0, w, C, K, back, qlo, qhi, R);
                p += (size_t)R;
                continue;
            }
            if (t >= r && t + DW_ROWS - 1 + r < L && p + DW_ROWS <= p1) {
                /* DW_ROWS rows whose K taps are all inside the sequence */
                dw_taps(out + p * C, in + x0 * C, w, C, xs, K, back, DW_ROWS);
                p += DW_ROWS;
                continue;
            }
            /* taps [j0, j1) of row p are inside its sequence */
            const int j0 = back ? (t + r - L + 1 > 0 ? t + r - L + 1 : 0) : (r - t > 0 ? r - t : 0);
            const int j1 = back ? (t + r + 1 < K ? t + r + 1 : K) : (L - t + r < K ? L - t + r : K);
            const ptrdiff_t xj0 = back ? x0 - j0 : x0 + j0;
            dw_taps(out + p * C, in + xj0 * C, w + (size_t)j0 * C, C, xs, j1 - j0, back, 1);
            p++;
        }
    }
}

void dwconv_forward(float *out, const float *inp, const float *w, const int *lens, int B, int C,
                    int K) {
    dw_apply(out, inp, w, lens, B, C, K, 0);
}

#define DW_BLOCK 128    /* most channels per task of the weight gradient */
#define DW_TAPS 4       /* taps per register block of the weight gradient */
#define DW_TILE 128     /* interior rows per tile of the weight gradient (its inputs stay in L2) */

/* Taps j < nt (<= DW_TAPS), channels c < DW_CH: acc[j*DW_BLOCK + c] += sum_{t<nr} g[t*C + c]
 * * x[(t + j)*C + c], each sum over t in order in registers. Taps nt..DW_TAPS-1 repeat tap nt-1
 * (every load stays in range) and are not stored. */
static void dw_grad_taps(float *restrict acc, const float *restrict g, const float *restrict x,
                         size_t C, int nr, int nt) {
    const float *x0 = x, *x1 = x + (nt > 1 ? 1 : 0) * C, *x2 = x + (nt > 2 ? 2 : nt - 1) * C;
    const float *x3 = x + (size_t)(nt > 3 ? 3 : nt - 1) * C;
    float a0[DW_CH], a1[DW_CH], a2[DW_CH], a3[DW_CH];
    for (int c = 0; c < DW_CH; c++) {
        a0[c] = acc[c];
        a1[c] = nt > 1 ? acc[DW_BLOCK + c] : 0.0f;
        a2[c] = nt > 2 ? acc[2 * DW_BLOCK + c] : 0.0f;
        a3[c] = nt > 3 ? acc[3 * DW_BLOCK + c] : 0.0f;
    }
    for (int t = 0; t < nr; t++) {
        const size_t o = (size_t)t * C;
        #pragma omp simd
        for (int c = 0; c < DW_CH; c++) {
            const float gc = g[o + c];
            a0[c] += gc * x0[o + c];
            a1[c] += gc * x1[o + c];
            a2[c] += gc * x2[o + c];
            a3[c] += gc * x3[o + c];
        }
    }
    for (int c = 0; c < DW_CH; c++) {
        acc[c] = a0[c];
        if (nt > 1) acc[DW_BLOCK + c] = a1[c];
        if (nt > 2) acc[2 * DW_BLOCK + c] = a2[c];
        if (nt > 3) acc[3 * DW_BLOCK + c] = a3[c];
    }
}

/* Taps j < K, channels c < 16: acc[j*DW_BLOCK + c] += sum_{t<nr} g[t*C + c] * x[(t + j)*C + c],
 * all K sums in registers while the rows stream past, 8 rows of g at a time (each x row loaded
 * once per 8 rows, not K times as in dw_grad_taps). Each sum over t in ascending order, multiply
 * then add, as dw_grad_taps, so the bits do not depend on the kernel. */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void dw_grad_slide16(
        float *acc, const float *g, const float *x, size_t C, int nr, const int K) {
    __m512 a[DW_SLIDE_MAXK];
    #pragma GCC unroll 15
    for (int j = 0; j < K; j++) a[j] = _mm512_loadu_ps(acc + (size_t)j * DW_BLOCK);
    int t = 0;
    for (; t + DW_SLIDE <= nr; t += DW_SLIDE) {
        __m512 gv[DW_SLIDE];
        #pragma GCC unroll 8
        for (int i = 0; i < DW_SLIDE; i++) gv[i] = _mm512_loadu_ps(g + (size_t)(t + i) * C);
        #pragma GCC unroll 22
        for (int u = 0; u < K + DW_SLIDE - 1; u++) {   /* x row t + u */
            const __m512 xv = _mm512_loadu_ps(x + (size_t)(t + u) * C);
            #pragma GCC unroll 8
            for (int i = 0; i < DW_SLIDE; i++) {
                const int j = u - i;
                if (j >= 0 && j < K) a[j] = _mm512_add_ps(a[j], _mm512_mul_ps(gv[i], xv));
            }
        }
    }
    for (; t < nr; t++) {
        const __m512 gt = _mm512_loadu_ps(g + (size_t)t * C);
        #pragma GCC unroll 15
        for (int j = 0; j < K; j++)
            a[j] = _mm512_add_ps(a[j], _mm512_mul_ps(gt, _mm512_loadu_ps(x + (size_t)(t + j) * C)));
    }
    #pragma GCC unroll 15
    for (int j = 0; j < K; j++) _mm512_storeu_ps(acc + (size_t)j * DW_BLOCK, a[j]);
}

/* dw_grad_slide16 over nc channels (a multiple of 16; K odd <= DW_SLIDE_MAXK), the tap count a
 * constant in each instance. */
__attribute__((target("avx512f"))) static void dw_grad_slide(float *acc, const float *g,
                                                           const float *x, size_t C, int nr,
                                                           int nc, int K) {
    for (int q = 0; q < nc; q += 16) {
        switch (K) {
#define DW_CASE(k) case k: dw_grad_slide16(acc + q, g + q, x + q, C, nr, k); break;
        DW_CASE(1) DW_CASE(3) DW_CASE(5) DW_CASE(7) DW_CASE(9) DW_CASE(11) DW_CASE(13) DW_CASE(15)
#undef DW_CASE
        default: break;   /* dw_slide_ok admits odd K <= 15 only */
        }
    }
}

/* acc[j*DW_BLOCK + c] += g[c] * x[j*C + c] for taps j < n and channels c < nc (one row). */
static void dw_grad_row(float *acc, const float *g, const float *x, size_t C, int n, int nc) {
    for (int j = 0; j < n; j++) {
        float *a = acc + (size_t)j * DW_BLOCK;
        const float *xj = x + (size_t)j * C;
        #pragma omp simd
        for (int c = 0; c < nc; c++) a[c] += g[c] * xj[c];
    }
}

void dwconv_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                     const int *lens, int B, int C, int K) {
    size_t N = 0;
    for (int b = 0; b < B; b++) N += (size_t)lens[b];
    const int r = (K - 1) / 2, slide = dw_slide_ok(C, K);
    /* dinp[s] += sum_j w[j] * dout[s - j + r], over the positions of s's own sequence */
    dw_apply(dinp, dout, w, lens, B, C, K, 1);
    /* dw[j, c] += sum_t dout[t, c] inp[t + j - r, c]: parallel over blocks of channels (as wide as
     * the threads allow, a multiple of 16, at most DW_BLOCK), each channel summed over all
     * positions in order, so the result does not depend on the thread count or block width.
     * A sequence's interior rows (all taps inside it) go in tiles of DW_TILE rows, DW_TAPS taps x
     * DW_CH channels at a time in registers; its first and last r rows one by one. */
    const int par = N * (size_t)C > OMP_MIN;   /* enough work for the threads */
    (void)par;                                 /* (read by OpenMP only) */
    int nt = 1;
#ifdef _OPENMP
    if (par) nt = omp_get_max_threads();
#endif
    int bw = (C + nt - 1) / nt;
    bw = (bw + 15) / 16 * 16;
    if (bw > DW_BLOCK) bw = DW_BLOCK;
    const int nblk = (C + bw - 1) / bw;
    const size_t Cs = (size_t)C;
    #pragma omp parallel for if (par)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * bw, nc = C - c0 < bw ? C - c0 : bw, nv = nc / DW_CH * DW_CH;
        float acc[PF_DW_MAX_K * DW_BLOCK];    /* [tap][channel of the block] */
        memset(acc, 0, sizeof acc);
        size_t s0 = 0;
        for (int b = 0; b < B; b++) {
            const int L = lens[b];
            const int ia = r < L ? r : L, ib = L - r > ia ? L - r : ia;   /* interior: [ia, ib) */
            for (int t = 0; t < L; t++) {
                if (t == ia && ia < ib) {
                    for (int t0 = ia; t0 < ib; t0 += DW_TILE) {
                        const int nr = ib - t0 < DW_TILE ? ib - t0 : DW_TILE;
                        const float *g = dout + (s0 + t0) * Cs + c0;
                        const float *x = inp + (s0 + t0 - r) * Cs + c0;
                        if (slide) {   /* C % 16 == 0, so nc is a multiple of 16 too */
                            dw_grad_slide(acc, g, x, Cs, nr, nc, K);
                            continue;
                        }
                        for (int q = 0; q < nv; q += DW_CH)
                            for (int j = 0; j < K; j += DW_TAPS)
                                dw_grad_taps(acc + (size_t)j * DW_BLOCK + q, g + q,
                                             x + (size_t)j * Cs + q, Cs, nr,
                                             K - j < DW_TAPS ? K - j : DW_TAPS);
                        for (int i = 0; i < nr && nv < nc; i++)    /* the last nc % DW_CH */
                            dw_grad_row(acc + nv, g + i * Cs + nv, x + i * Cs + nv, Cs, K, nc - nv);
                    }
                    t = ib - 1;
                    continue;
                }
                const int j0 = r - t > 0 ? r - t : 0, j1 = L - t + r < K ? L - t + r : K;
                dw_grad_row(acc + (size_t)j0 * DW_BLOCK, dout + (s0 + t) * Cs + c0,
                            inp + (s0 + t + j0 - r) * Cs + c0, Cs, j1 - j0, nc);
            }
            s0 += (size_t)L;
        }
        for (int j = 0; j < K; j++)
            for (int c = 0; c < nc; c++) dw[(size_t)j * C + c0 + c] += acc[(size_t)j * DW_BLOCK + c];
    }
}

/* ---- output -------------------------------------------------------------------------------- */

void log_softmax_rows(float *x, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C > OMP_MIN)
    for (int p = 0; p < N; p++) {
        float *r = x + (size_t)p * C, mx = -FLT_MAX;
        for (int i = 0; i < C; i++) if (r[i] > mx) mx = r[i];
        double s = 0;
        for (int i = 0; i < C; i++) s += exp((double)(r[i] - mx));
        float lse = mx + (float)log(s);
        for (int i = 0; i < C; i++) r[i] -= lse;
    }
}

double xent_forward_backward(float *dlogits, const float *logits, const int32_t *targets, int N,
                             int C, int *n_scored) {
    int n = 0;
    for (int p = 0; p < N; p++) n += targets[p] >= 0;
    if (n_scored) *n_scored = n;
    double loss = 0;
    for (int p = 0; p < N; p++) {
        const float *r = logits + (size_t)p * C;
        float *dr = dlogits ? dlogits + (size_t)p * C : NULL;
        if (targets[p] < 0) {
            if (dr) memset(dr, 0, sizeof(float) * C);
            continue;
        }
        float mx = -FLT_MAX;
        for (int i = 0; i < C; i++) if (r[i] > mx) mx = r[i];
        double s = 0;
        for (int i = 0; i < C; i++) s += exp((double)(r[i] - mx));
        double lse = mx + log(s);
        loss += lse - r[targets[p]];
        if (dr)
            for (int i = 0; i < C; i++)
                dr[i] = (float)((exp(r[i] - lse) - (i == targets[p])) / n);
    }
    return n ? loss / n : 0.0;
}
