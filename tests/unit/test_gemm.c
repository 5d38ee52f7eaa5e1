/* test_gemm.c - model/gemm.h: the own products (bf16, and float32 on AVX-512) against a
 * double-precision product of the same operands (bf16-rounded for bf16), for every transpose, odd
 * and edge sizes (partial panels, odd K, K over one block), padded leading dimensions, alpha and
 * beta (beta 0 must not read C: NaNs there are ignored), untouched padding columns, the same bits
 * on 1 and 2 threads, and the precision switch (fp32 mode is cblas_sgemm exactly with
 * gm_fp32_own(0), the own float32 kernel otherwise), every operand packed tight against a guard
 * page, and the weight cache (same bits, dropped by address range and by pf_model_free); where the
 * CPU has AMX, both bf16 kernels (AMX tiles and AVX-512 BF16) and their agreement; the epilogue
 * fused into the products (gm_sgemm_w_ep, matmul_gelu_forward) against a pass after them; rows
 * computed alone with the same bits as in a whole product (every kernel). Exits 77
 * (skip) after the checks it can run on a CPU without AVX-512 BF16 (or AVX-512F).
 */
#include "gemm.h"
#include "model.h"
#include "ops.h"
#include "testutil.h"
#include "refutil.h"
#include "tokenizer.h"

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <sys/mman.h>

/* Rounds a float to bfloat16 (nearest even) and back, as VCVTNEPS2BF16 does for normal values. */
static float bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static int g_f32;   /* 1: the checks below test the own float32 product instead of the bf16 one */

/* An operand as the product under test sees it: bf16-rounded, or as is in float32. */
static float rnd(float f) { return g_f32 ? f : bf(f); }

/* The product under test (gm_sgemm_f32 or gm_sgemm_bf16). */
static void prod(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (g_f32) gm_sgemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else gm_sgemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static float urand(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* Checks one product of the given shape against the reference; returns the max relative error. */
static double check_one(int ta, int tb, int M, int N, int K, float alpha, float beta, uint64_t seed) {
    const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 7;
    const int ar = ta ? K : M, br = tb ? N : K;
    float *A = malloc(sizeof(float) * ((size_t)ar * lda + 1));
    float *B = malloc(sizeof(float) * ((size_t)br * ldb + 1));
    float *C = malloc(sizeof(float) * ((size_t)M * ldc + 1));
    float *C0 = malloc(sizeof(float) * ((size_t)M * ldc + 1));
    for (size_t i = 0; i < (size_t)ar * lda; i++) A[i] = urand(&seed);
    for (size_t i = 0; i < (size_t)br * ldb; i++) B[i] = urand(&seed);
    for (size_t i = 0; i < (size_t)M * ldc; i++)
        C0[i] = (i % ldc) >= (size_t)N ? 1234.5f : beta == 0.0f ? NAN : urand(&seed);
    memcpy(C, C0, sizeof(float) * (size_t)M * ldc);
    prod(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    double worst = 0;
    int bad_pad = 0, bad_val = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < ldc; j++) {
            const float got = C[(size_t)i * ldc + j];
            if (j >= N) { bad_pad += got != 1234.5f; continue; }
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                const double a = rnd(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                const double b = rnd(tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                ref += a * b;
                mag += fabs(a * b);
            }
            ref *= alpha;
            mag *= fabs(alpha);
            if (beta != 0.0f) {
                ref += (double)beta * C0[(size_t)i * ldc + j];
                mag += fabs((double)beta * C0[(size_t)i * ldc + j]);
            }
            const double err = fabs(got - ref) / (mag + 1e-30);
            if (!(err <= worst)) worst = err;   /* NaN makes it infinite */
            if (!(err <= 1e-5)) bad_val++;
        }
    }
    CHECKF(bad_val == 0 && bad_pad == 0,
           "ta %d tb %d M %d N %d K %d alpha %g beta %g: %d values off (worst relative %g), "
           "%d padding values changed", ta, tb, M, N, K, alpha, beta, bad_val, worst, bad_pad);
    free(A); free(B); free(C); free(C0);
    return worst;
}

/* Returns n floats that end right before an inaccessible page (a read or write past them faults);
 * base and len receive the mapping to munmap. */
static float *guarded(size_t n, void **base, size_t *len) {
    const size_t ps = 4096, bytes = n * sizeof(float), pages = (bytes + ps - 1) / ps + 1;
    char *p = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + (pages - 1) * ps, ps, PROT_NONE) != 0) { perror("mmap"); exit(2); }
    *base = p;
    *len = pages * ps;
    return (float *)(p + (pages - 1) * ps - bytes);
}

/* Every transpose and edge size with A, B and C packed tight (leading dimension = width) against a
 * guard page, per-call packing and cached weights alike: no access past any operand. */
static void check_guarded(void) {
    static const int Ms[] = {1, 13, 14, 15, 33}, Ns[] = {1, 17, 32, 33, 47}, Ks[] = {1, 2, 17, 33, 257};
    uint64_t seed = 3;
    int bad = 0, n = 0;
    CHECK(gm_set_precision(g_f32 ? GM_FP32 : GM_BF16) == 0);   /* gm_sgemm_w follows it */
    gm_weight_cache(1);
    for (int t = 0; t < 4; t++)
        for (int mi = 0; mi < 5; mi++)
            for (int ni = 0; ni < 5; ni++)
                for (int ki = 0; ki < 5; ki++) {
                    const int ta = t >> 1, tb = t & 1, M = Ms[mi], N = Ns[ni], K = Ks[ki];
                    const int lda = ta ? M : K, ldb = tb ? K : N, ar = ta ? K : M, br = tb ? N : K;
                    void *b1, *b2, *b3;
                    size_t l1, l2, l3;
                    float *A = guarded((size_t)ar * lda, &b1, &l1), *B = guarded((size_t)br * ldb, &b2, &l2);
                    float *C = guarded((size_t)M * N, &b3, &l3), *C0 = malloc(sizeof(float) * M * N);
                    for (int i = 0; i < ar * lda; i++) A[i] = urand(&seed);
                    for (int i = 0; i < br * ldb; i++) B[i] = urand(&seed);
                    for (int i = 0; i < M * N; i++) C0[i] = urand(&seed);
                    for (int w = 0; w < 2; w++) {
                        memcpy(C, C0, sizeof(float) * M * N);
                        if (w) gm_sgemm_w(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.5f, C, N);
                        else prod(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.5f, C, N);
                        for (int i = 0; i < M; i++)
                            for (int j = 0; j < N; j++) {
                                double r = 0.5 * C0[i * N + j], mag = fabs(r);
                                for (int k = 0; k < K; k++) {
                                    const double a = rnd(ta ? A[k * lda + i] : A[i * lda + k]);
                                    const double b = rnd(tb ? B[j * ldb + k] : B[k * ldb + j]);
                                    r += a * b;
                                    mag += fabs(a * b);
                                }
                                bad += !(fabs(C[i * N + j] - r) <= 1e-5 * mag + 1e-30);
                            }
                        n++;
                    }
                    gm_weight_cache_drop(B, sizeof(float) * (size_t)br * ldb);
                    munmap(b1, l1); munmap(b2, l2); munmap(b3, l3);
                    free(C0);
                }
    CHECKF(bad == 0, "%s: %d values off in %d guarded products", g_f32 ? "fp32" : "bf16", bad, n);
    CHECK(gm_weight_cache_count() == 0);
    gm_weight_cache(0);
    CHECK(gm_set_precision(GM_FP32) == 0);
    printf("%d products with every operand against a guard page: %d values off\n", n, bad);
}

/* favor_products_follow_precision: off is bit-identical to float32 OpenBLAS in the forward pass and
 * in the backward pass, in either precision; on in fp32 (the own float32 kernel) agrees with it to
 * float32 rounding, on in bf16 stays close to it. */
static void check_favor_products(void) {
    enum { B = 3, H = 4, dh = 16, m = 32 };
    const int lens[B] = { 5, 333, 64 };
    const int d = H * dh;
    const size_t T = 5 + 333 + 64;
    uint64_t s = 99;
    float *q = malloc(sizeof(float) * T * d), *k = malloc(sizeof(float) * T * d);
    float *v = malloc(sizeof(float) * T * d), *P = malloc(sizeof(float) * m * dh);
    float *dout = malloc(sizeof(float) * T * d);
    for (size_t i = 0; i < T * d; i++) { q[i] = urand(&s); k[i] = urand(&s); v[i] = urand(&s); dout[i] = urand(&s); }
    pf_draw_projection(P, m, dh, 3);
    size_t ns = T * H * m * 2 + (size_t)B * H * m * dh + (size_t)B * H * m + T * H;
    float *sb = malloc(sizeof(float) * ns), *out[4], *grad[4];
    float *scratch = malloc(sizeof(float) * favor_backward_scratch_batch(T, B, H, dh, m));
    float *fo = malloc(sizeof(float) * T * d);    /* the float32 forward output under each backward */
    favor_state st = { sb, sb + T * H * m, sb + 2 * T * H * m, sb + 2 * T * H * m + (size_t)B * H * m * dh,
                       sb + 2 * T * H * m + (size_t)B * H * m * dh + (size_t)B * H * m };
    const size_t n = T * d;
    for (int relu = 0; relu < 2; relu++) {
        /* 0: fp32 off, 1: fp32 on, 2: bf16 off, 3: bf16 on */
        for (int c = 0; c < 4; c++) {
            out[c] = malloc(sizeof(float) * n);
            grad[c] = malloc(sizeof(float) * 3 * n);    /* dq, dk, dv */
            CHECK(gm_set_precision(c < 2 ? GM_FP32 : GM_BF16) == 0);
            favor_products_follow_precision(c & 1);
            favor_forward_batch(out[c], &st, q, k, v, P, lens, B, H, dh, m, relu);
        }
        /* the backward products alone: every backward starts from the float32 forward pass (a
         * bf16 forward moves ReLU features across their kink, which no backward precision undoes) */
        for (int c = 0; c < 4; c++) {
            CHECK(gm_set_precision(GM_FP32) == 0);
            favor_products_follow_precision(0);
            favor_forward_batch(fo, &st, q, k, v, P, lens, B, H, dh, m, relu);
            CHECK(gm_set_precision(c < 2 ? GM_FP32 : GM_BF16) == 0);
            favor_products_follow_precision(c & 1);
            favor_backward_batch(grad[c], grad[c] + n, grad[c] + 2 * n, dout, fo, &st, q, k, v, P,
                                 lens, B, H, dh, m, relu, scratch);
        }
        favor_products_follow_precision(1);   /* the default again */
        CHECK(gm_set_precision(GM_FP32) == 0);
        double e = max_diff(out[3], out[0], n), mx = max_abs(out[0], n);
        printf("FAVOR+ %s products in bf16 vs float32: max |diff| %.3g (max |out| %.3g)\n",
               relu ? "relu" : "softmax", e, mx);
        const double e32 = max_diff(out[1], out[0], n);
        CHECKF(e32 <= 1e-5 * mx, "fp32 FAVOR+ products differ by %g (max |out| %g)", e32, mx);
        CHECK(memcmp(out[0], out[2], sizeof(float) * n) == 0);
        CHECKF(e > 0 && e <= 2e-2 * mx, "bf16 FAVOR+ products differ by %g (max |out| %g)", e, mx);
        const double g32 = max_diff(grad[1], grad[0], 3 * n), gmx = max_abs(grad[0], 3 * n);
        CHECKF(g32 <= 1e-5 * gmx, "fp32 FAVOR+ gradients differ by %g (max %g)", g32, gmx);
        CHECK(memcmp(grad[0], grad[2], sizeof(float) * 3 * n) == 0);
        static const char *gname[3] = { "dq", "dk", "dv" };
        for (int g = 0; g < 3; g++) {
            e = max_diff(grad[3] + g * n, grad[0] + g * n, n);
            mx = max_abs(grad[0] + g * n, n);
            printf("FAVOR+ %s backward %s in bf16 vs float32: max |diff| %.3g (max |%s| %.3g)\n",
                   relu ? "relu" : "softmax", gname[g], e, gname[g], mx);
            CHECKF(e > 0 && e <= 2e-2 * mx, "bf16 FAVOR+ %s differs by %g (max %g)", gname[g], e, mx);
        }
        for (int c = 0; c < 4; c++) { free(out[c]); free(grad[c]); }
    }
    free(q); free(k); free(v); free(P); free(sb); free(dout); free(scratch); free(fo);
}

/* Every transpose of the edge shapes below with four (alpha, beta; alpha 1 with beta 0 or 1 is
 * AMX's path that keeps C in the tiles), for the product under test;
 * returns the worst relative error. Shapes: single elements, partial and full panels (MR 14,
 * NR 32; AMX: 32 rows, K in tiles of 32), odd K, K over one block (256), several A blocks (224 rows), and two on two threads
 * with few A panels, which the threads split by B panels (each packing all of A). */
static double check_products(void) {
    static const int shapes[][3] = {
        {1, 1, 1}, {1, 33, 2}, {14, 32, 256}, {15, 33, 257}, {13, 31, 7}, {29, 65, 513},
        {100, 20, 600}, {238, 70, 300}, {3, 100, 1}, {450, 40, 64}, {20, 256, 1030},
        {64, 256, 300}, {5, 700, 400},
        /* AMX panels: 16 and 32 rows, one row past them, K at and just past a tile's 32 */
        {16, 32, 32}, {17, 32, 31}, {32, 64, 64}, {33, 31, 95},
        /* B packed in several rounds (gemm_packed): rounds of one K block alternating between the two
         * halves (N = 1,100), and rounds of several blocks with a shorter last one (N = 300) */
        {20, 1100, 1300}, {30, 300, 2000},
    };
    static const float ab[][2] = { {1.0f, 0.0f}, {0.5f, 1.0f}, {-2.0f, -0.5f}, {1.0f, 1.0f} };
    double worst = 0;
    uint64_t seed = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int t = 0; t < 4; t++)
            for (int c = 0; c < 4; c++) {
                double w = check_one(t >> 1, t & 1, shapes[si][0], shapes[si][1], shapes[si][2],
                                     ab[c][0], ab[c][1], seed++);
                if (w > worst) worst = w;
            }
    return worst;
}

/* A gm_epilogue step for the checks: c = c * c / 4 + arg[column] (not idempotent: a step run twice
 * or not at all shows; a wrong column index shows). */
static void test_ep(float *c, long ldc, int rows, int cols, int n0, const void *arg) {
    const float *b = (const float *)arg + n0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) c[i * ldc + j] = c[i * ldc + j] * c[i * ldc + j] * 0.25f + b[j];
}

/* The product under test gives the same bits on one thread and on two, for each transpose, with
 * the threads splitting A's panels (M x N x K) or B's (m x N x K). */
static void check_thread_bits_one(int M, int N, int K) {
    uint64_t s = 19;
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
    float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) A[i] = urand(&s);
    for (int i = 0; i < N * K; i++) B[i] = urand(&s);
    for (int t = 0; t < 4; t++) {
        const int ta = t >> 1, tb = t & 1;
        omp_set_num_threads(1);
        prod(ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C1, N);
        omp_set_num_threads(2);
        prod(ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C2, N);
        CHECKF(memcmp(C1, C2, sizeof(float) * M * N) == 0, "%s ta %d tb %d M %d: 1 and 2 threads differ",
               g_f32 ? "fp32" : "bf16", ta, tb, M);
    }
    free(A); free(B); free(C1); free(C2);
}

static void check_thread_bits(void) {
    check_thread_bits_one(700, 300, 600);
    check_thread_bits_one(64, 300, 600);
    check_thread_bits_one(40, 1100, 1300);   /* B packed in rounds that alternate halves */
}

/* A row of C does not depend on the rows around it: rows [r0, r1) of a product computed alone
 * (a product of r1 - r0 rows, so they fall elsewhere in the panels, some in partial tiles) have
 * the same bits as in the whole product, with beta 0 and 1 and K over several blocks (later K
 * blocks add to C), for the product under test (g_f32) on the current bf16 kernel. The forward
 * pass relies on it: a sequence's results do not depend on its batch. Returns the failures. */
static int check_row_independence(const char *what) {
    static const int rows[][2] = { {0, 32}, {0, 70}, {60, 70}, {33, 35}, {69, 70}, {5, 43} };
    const int M = 70, N = 45, K = 600;
    uint64_t s = 31;
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
    float *C0 = malloc(sizeof(float) * M * N), *C1 = malloc(sizeof(float) * M * N);
    float *C2 = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) A[i] = urand(&s);
    for (int i = 0; i < N * K; i++) B[i] = urand(&s);
    for (int i = 0; i < M * N; i++) C0[i] = urand(&s);
    int bad = 0;
    for (int b1 = 0; b1 < 2; b1++) {
        const float beta = b1 ? 1.0f : 0.0f;
        memcpy(C1, C0, sizeof(float) * M * N);
        prod(0, 1, M, N, K, 1.0f, A, K, B, K, beta, C1, N);
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
            const int r0 = rows[r][0], n = rows[r][1] - r0;
            memcpy(C2, C0, sizeof(float) * M * N);
            prod(0, 1, n, N, K, 1.0f, A + (size_t)r0 * K, K, B, K, beta, C2 + (size_t)r0 * N, N);
            const int same = memcmp(C1 + (size_t)r0 * N, C2 + (size_t)r0 * N, sizeof(float) * n * N) == 0;
            CHECKF(same, "%s: rows %d..%d alone (beta %g) differ from the same rows of the whole product",
                   what, r0, r0 + n - 1, beta);
            bad += !same;
        }
    }
    printf("%s: rows computed alone have the same bits as in the whole product%s\n", what, bad ? " (NOT)" : "");
    free(A); free(B); free(C0); free(C1); free(C2);
    return bad;
}

/* Where the CPU has AMX: it is the default bf16 kernel; the AVX-512 BF16 kernel, selected with
 * gm_bf16_amx(0), passes the same checks; the two agree to float32 summation order. */
static void check_amx(void) {
    const char *env = getenv("PERFORMER_AMX");
    CHECK(gm_bf16_is_amx() == !(env && !strcmp(env, "0")));   /* the default where AMX runs */
    CHECK(gm_bf16_amx(0) == 0 && !gm_bf16_is_amx());
    const double worst = check_products();
    printf("AVX-512 BF16 product (AMX off) vs double product of the rounded operands: worst relative error %.3g\n",
           worst);
    check_thread_bits();
    check_guarded();
    check_row_independence("AVX-512 BF16 product");
    CHECK(gm_bf16_amx(1) == 0 && gm_bf16_is_amx());
    /* the two kernels on the same operands: every value within 1e-5 of the sum of |products| */
    static const int shapes[][3] = { {700, 300, 600}, {33, 65, 513}, {256, 768, 4100} };
    double far = 0;
    uint64_t s = 23;
    for (int si = 0; si < 3; si++)
        for (int t = 0; t < 4; t++) {
            const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], ta = t >> 1, tb = t & 1;
            float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
            float *Aa = malloc(sizeof(float) * M * K), *Ba = malloc(sizeof(float) * N * K);
            float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
            float *Cm = malloc(sizeof(float) * M * N);
            for (int i = 0; i < M * K; i++) { A[i] = urand(&s); Aa[i] = fabsf(A[i]); }
            for (int i = 0; i < N * K; i++) { B[i] = urand(&s); Ba[i] = fabsf(B[i]); }
            const int lda = ta ? M : K, ldb = tb ? K : N;
            gm_sgemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C1, N);
            gm_sgemm_bf16(ta, tb, M, N, K, 1.0f, Aa, lda, Ba, ldb, 0.0f, Cm, N);   /* sum of |products| */
            CHECK(gm_bf16_amx(0) == 0);
            gm_sgemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C2, N);
            CHECK(gm_bf16_amx(1) == 0);
            for (int i = 0; i < M * N; i++) {
                const double e = fabs((double)C1[i] - C2[i]) / (Cm[i] + 1e-30);
                if (!(e <= far)) far = e;
            }
            free(A); free(B); free(Aa); free(Ba); free(C1); free(C2); free(Cm);
        }
    printf("AMX vs AVX-512 BF16 products: worst difference %.3g of the sum of |products|\n", far);
    CHECKF(far <= 1e-5, "AMX and AVX-512 BF16 products differ by %g of the sum of |products|", far);
}

int main(void) {
    int prec = -1;
    CHECK(gm_precision() == GM_FP32);
    CHECK(gm_parse_precision("bf16", &prec) == 0 && prec == GM_BF16);
    CHECK(gm_parse_precision("BFloat16", &prec) == 0 && prec == GM_BF16);
    CHECK(gm_parse_precision("fp32", &prec) == 0 && prec == GM_FP32);
    CHECK(gm_parse_precision("fp16", &prec) == -1 && gm_parse_precision(NULL, &prec) == -1);
    CHECK(gm_set_precision(7) == -1 && gm_precision() == GM_FP32);
    CHECK(!strcmp(gm_precision_name(GM_BF16), "bf16") && !strcmp(gm_precision_name(GM_FP32), "fp32"));

    /* fp32 mode: exactly cblas_sgemm with gm_fp32_own(0); the own kernel's bits otherwise */
    {
        uint64_t s = 5;
        const int M = 37, N = 45, K = 70;
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C1 = calloc((size_t)M * N, sizeof(float)), *C2 = calloc((size_t)M * N, sizeof(float));
        for (int i = 0; i < M * K; i++) A[i] = urand(&s);
        for (int i = 0; i < K * N; i++) B[i] = urand(&s);
        const int own = gm_fp32_is_own();
        CHECK(gm_fp32_own(0) == 0 && !gm_fp32_is_own());
        gm_sgemm(0, 0, M, N, K, 0.7f, A, K, B, N, 0.0f, C1, N);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 0.7f, A, K, B, N, 0.0f, C2, N);
        CHECK(memcmp(C1, C2, sizeof(float) * M * N) == 0);
        if (gm_avx512f_supported()) {
            CHECK(own == 1);   /* the default on an AVX-512 CPU */
            CHECK(gm_fp32_own(1) == 0 && gm_fp32_is_own());
            gm_sgemm(0, 0, M, N, K, 0.7f, A, K, B, N, 0.0f, C1, N);
            gm_sgemm_f32(0, 0, M, N, K, 0.7f, A, K, B, N, 0.0f, C2, N);
            CHECK(memcmp(C1, C2, sizeof(float) * M * N) == 0);
            g_f32 = 1;
            double worst = check_products();
            printf("own fp32 product vs double product: worst relative error %.3g\n", worst);
            check_guarded();
            check_thread_bits();
            check_row_independence("own float32 product");
            g_f32 = 0;
        } else {
            CHECK(own == 0 && gm_fp32_own(1) == -1 && !gm_fp32_is_own());
        }
        free(A); free(B); free(C1); free(C2);
    }

    if (!gm_bf16_supported()) {
        CHECK(gm_set_precision(GM_BF16) == -1 && gm_precision() == GM_FP32);
        printf("SKIP this CPU has no AVX-512 BF16 (fp32 checks: %d, %d failed)\n", tu_checks, tu_failures);
        return tu_failures ? 1 : 77;
    }

    double worst = check_products();
    printf("bf16 product vs double product of the rounded operands: worst relative error %.3g\n",
           worst);
    check_thread_bits();
    check_row_independence(gm_bf16_is_amx() ? "bf16 product on AMX tiles" : "bf16 product on AVX-512 BF16");

    check_guarded();
    check_favor_products();
    printf("bf16 kernel: %s\n", gm_bf16_is_amx() ? "AMX tiles" : "AVX-512 BF16");
    if (gm_amx_supported()) {
        check_amx();
    } else {
        CHECK(!gm_bf16_is_amx() && gm_bf16_amx(1) == -1 && !gm_bf16_is_amx());
        printf("no AMX on this CPU: the AVX-512 BF16 kernel alone checked\n");
    }

    /* K = 0 scales C by beta; alpha 0 likewise */
    {
        float c[4] = { 1, 2, 3, 4 }, a = 1, b = 1;
        gm_sgemm_bf16(0, 0, 2, 2, 0, 1.0f, &a, 1, &b, 2, 0.5f, c, 2);
        CHECK(c[0] == 0.5f && c[3] == 2.0f);
    }

    /* the same bits on one thread and on two */
    {
        uint64_t s = 9;
        const int M = 700, N = 300, K = 600;
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
        float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++) A[i] = urand(&s);
        for (int i = 0; i < N * K; i++) B[i] = urand(&s);
        omp_set_num_threads(1);
        gm_sgemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N);
        omp_set_num_threads(2);
        gm_sgemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
        CHECK(memcmp(C1, C2, sizeof(float) * M * N) == 0);

        /* the switch: gm_sgemm follows the process's precision */
        CHECK(gm_set_precision(GM_BF16) == 0 && gm_precision() == GM_BF16);
        gm_sgemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
        CHECK(memcmp(C1, C2, sizeof(float) * M * N) == 0);
        /* and differs from float32 by the rounding of the operands, about 2^-9 relative */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
        double md = 0, mref = 0;
        for (int i = 0; i < M * N; i++) {
            if (fabs(C1[i] - C2[i]) > md) md = fabs(C1[i] - C2[i]);
            if (fabs(C2[i]) > mref) mref = fabs(C2[i]);
        }
        printf("bf16 vs float32 product: max abs diff %.3g (max |C| %.3g)\n", md, mref);
        CHECK(md > 0 && md < 0.02 * mref);
        CHECK(gm_set_precision(GM_FP32) == 0 && gm_precision() == GM_FP32);
        free(A); free(B); free(C1); free(C2);
    }
    /* the weight cache of gm_sgemm_w: packed once per (B, ldb, N, K, tb), same bits as packing per
     * call, dropped by address range, emptied when turned off, unused in fp32 */
    {
        uint64_t s = 11;
        const int M = 50, N = 70, K = 300;
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
        float *C1 = malloc(sizeof(float) * M * K), *C2 = malloc(sizeof(float) * M * K);   /* M x max(N, K) */
        for (int i = 0; i < M * K; i++) A[i] = urand(&s);
        for (int i = 0; i < N * K; i++) B[i] = urand(&s);
        CHECK(gm_weight_cache_count() == 0);
        gm_sgemm_w(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N);    /* fp32: no cache */
        CHECK(gm_weight_cache_count() == 0);
        CHECK(gm_set_precision(GM_BF16) == 0);
        gm_sgemm_w(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N);    /* cache off: packs per call */
        CHECK(gm_weight_cache_count() == 0);
        gm_weight_cache(1);
        gm_sgemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N);
        for (int rep = 0; rep < 2; rep++) {
            memset(C2, 0, sizeof(float) * M * N);
            gm_sgemm_w(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
            CHECK(memcmp(C1, C2, sizeof(float) * M * N) == 0);
            CHECK(gm_weight_cache_count() == 1);
        }
        /* B as [K, N] (tb 0) is another entry; so is a sub-matrix with other N */
        gm_sgemm_w(0, 0, M, K, N, 1.0f, A, N, B, K, 0.0f, C2, K);
        gm_sgemm_w(0, 1, M, N - 3, K, 1.0f, A, K, B, K, 0.0f, C2, N);
        CHECK(gm_weight_cache_count() == 3);
        gm_sgemm_bf16(0, 1, M, N - 3, K, 1.0f, A, K, B, K, 0.0f, C1, N);
        gm_sgemm_w(0, 1, M, N - 3, K, 1.0f, A, K, B, K, 0.0f, C2, N);
        int same = 1;
        for (int i = 0; i < M; i++) same &= memcmp(C1 + i * N, C2 + i * N, sizeof(float) * (N - 3)) == 0;
        CHECK(same);
        gm_weight_cache_drop(A, sizeof(float) * M * K);              /* not a cached B: nothing */
        CHECK(gm_weight_cache_count() == 3);
        gm_weight_cache_drop(B, sizeof(float) * N * K);
        CHECK(gm_weight_cache_count() == 0);
        gm_sgemm_w(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
        CHECK(gm_weight_cache_count() == 1);
        gm_weight_cache(0);
        CHECK(gm_weight_cache_count() == 0);
        CHECK(gm_set_precision(GM_FP32) == 0);
        free(A); free(B); free(C1); free(C2);
    }

    /* the two loop orders of gemm_packed give the same bits: with B's packs cached (every K block
     * at hand: K blocks inside each block of A panels) and uncached with B over GM_BGROUP_BYTES
     * (rounds of K blocks, K blocks outermost); bf16 and, on AVX-512, the own float32 product;
     * beta 1 and alpha != 1 so that the later K blocks read back C */
    {
        uint64_t s = 13;
        const int M = 40, N = 70, K = 6000;   /* bf16: 24 K blocks of 48 KiB packs, rounds of 21 */
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
        float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++) A[i] = urand(&s);
        for (int i = 0; i < N * K; i++) B[i] = urand(&s);
        for (int f32 = 0; f32 < 1 + gm_avx512f_supported(); f32++) {
            CHECK(gm_set_precision(f32 ? GM_FP32 : GM_BF16) == 0);
            for (int i = 0; i < M * N; i++) C1[i] = C2[i] = urand(&s);
            gm_sgemm_w(0, 1, M, N, K, 0.5f, A, K, B, K, 1.0f, C1, N);   /* cache off: rounds */
            gm_weight_cache(1);
            gm_sgemm_w(0, 1, M, N, K, 0.5f, A, K, B, K, 1.0f, C2, N);   /* cached: K inside */
            CHECK(gm_weight_cache_count() == 1);
            gm_weight_cache(0);
            CHECKF(memcmp(C1, C2, sizeof(float) * M * N) == 0, "%s: cached and uncached B differ",
                   f32 ? "float32" : "bf16");
        }
        CHECK(gm_set_precision(GM_FP32) == 0);
        free(A); free(B); free(C1); free(C2);
    }

    /* gm_sgemm_w_ep: the epilogue on each finished block of C gives the same bits as the product
     * followed by the same step over all of C, once per element (the step is not idempotent), with
     * the column index right (a per-column term) and the padding columns past N untouched; every
     * product (the own float32 kernel, OpenBLAS, bf16 on each kernel), cached and uncached B (both
     * loop orders of gemm_packed), A or B split between the threads, beta 0 and 1 */
    {
        static const int shapes[][3] = { {700, 300, 600}, {40, 70, 6000}, {20, 1100, 256}, {1, 5, 3} };
        uint64_t s = 17;
        float col[1100];
        for (int j = 0; j < 1100; j++) col[j] = urand(&s);
        const gm_epilogue ep = { test_ep, col };
        int runs = 0;
        for (int impl = 0; impl < 5; impl++) {
            /* 0 own float32, 1 OpenBLAS, 2 bf16 AVX-512 BF16, 3 bf16 AMX, 4 bf16 with the cache */
            if ((impl == 0 && !gm_avx512f_supported()) || (impl >= 2 && !gm_bf16_supported()) ||
                (impl == 3 && !gm_amx_supported()))
                continue;
            if (impl == 1) CHECK(gm_fp32_own(0) == 0);
            if (impl >= 2) CHECK(gm_set_precision(GM_BF16) == 0);
            if (impl == 2 && gm_amx_supported()) CHECK(gm_bf16_amx(0) == 0);
            if (impl == 4) gm_weight_cache(1);
            for (int si = 0; si < 4; si++)
                for (int b1 = 0; b1 < 2; b1++) {
                    const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], ldc = N + 5;
                    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
                    float *C1 = malloc(sizeof(float) * M * ldc), *C2 = malloc(sizeof(float) * M * ldc);
                    for (int i = 0; i < M * K; i++) A[i] = urand(&s);
                    for (int i = 0; i < N * K; i++) B[i] = urand(&s);
                    for (int i = 0; i < M * ldc; i++) C1[i] = C2[i] = urand(&s);
                    const float beta = b1 ? 1.0f : 0.0f;
                    for (int t = 1; t <= 2; t++) {
                        omp_set_num_threads(t);
                        gm_sgemm_w(0, 1, M, N, K, 0.5f, A, K, B, K, beta, C1, ldc);
                        test_ep(C1, ldc, M, N, 0, col);
                        gm_sgemm_w_ep(0, 1, M, N, K, 0.5f, A, K, B, K, beta, C2, ldc, &ep);
                        CHECKF(memcmp(C1, C2, sizeof(float) * M * ldc) == 0,
                               "epilogue: product %d, %d x %d x %d, beta %g, %d threads: differs from a pass after",
                               impl, M, N, K, beta, t);
                        runs++;
                    }
                    free(A); free(B); free(C1); free(C2);
                }
            if (impl == 1) CHECK(gm_fp32_own(1) == 0 || !gm_avx512f_supported());
            if (impl == 2 && gm_amx_supported()) CHECK(gm_bf16_amx(1) == 0);
            if (impl == 4) gm_weight_cache(0);
            CHECK(gm_set_precision(GM_FP32) == 0);
        }
        printf("epilogue fused into the product: %d runs, the same bits as a pass after it\n", runs);
    }

    /* matmul_gelu_forward: GELU(x w^T + b) in the product's epilogue, the same bits as
     * matmul_forward without the bias then gelu_bias_forward; matmul_forward's and
     * matmul_residual's bias likewise as a pass after the product */
    for (int bf = 0; bf < 1 + gm_bf16_supported(); bf++) {
        uint64_t s = 29;
        const int N = 300, C = 256, OC = 1024;
        float *x = malloc(sizeof(float) * N * C), *w = malloc(sizeof(float) * OC * C), *b = malloc(sizeof(float) * OC);
        float *o1 = malloc(sizeof(float) * N * OC), *o2 = malloc(sizeof(float) * N * OC);
        for (int i = 0; i < N * C; i++) x[i] = urand(&s);
        for (int i = 0; i < OC * C; i++) w[i] = 0.1f * urand(&s);
        for (int i = 0; i < OC; i++) b[i] = urand(&s);
        CHECK(gm_set_precision(bf ? GM_BF16 : GM_FP32) == 0);
        matmul_forward(o1, x, w, NULL, N, C, OC);
        gelu_bias_forward(o1, b, N, OC);
        matmul_gelu_forward(o2, x, w, b, N, C, OC);
        CHECKF(memcmp(o1, o2, sizeof(float) * N * OC) == 0, "%s: matmul_gelu_forward differs from matmul + gelu_bias",
               bf ? "bf16" : "fp32");
        matmul_forward(o1, x, w, NULL, N, C, OC);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < OC; j++) o1[(size_t)i * OC + j] += b[j];
        matmul_forward(o2, x, w, b, N, C, OC);
        CHECKF(memcmp(o1, o2, sizeof(float) * N * OC) == 0, "%s: matmul_forward's bias is not added after the sum",
               bf ? "bf16" : "fp32");
        for (int i = 0; i < N * OC; i++) o2[i] = o1[i];
        gm_sgemm(0, 1, N, OC, C, 1.0f, x, C, w, C, 1.0f, o1, OC);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < OC; j++) o1[(size_t)i * OC + j] += b[j];
        matmul_residual(o2, x, w, b, N, C, OC);
        CHECKF(memcmp(o1, o2, sizeof(float) * N * OC) == 0, "%s: matmul_residual differs from product then bias",
               bf ? "bf16" : "fp32");
        CHECK(gm_set_precision(GM_FP32) == 0);
        free(x); free(w); free(b); free(o1); free(o2);
    }

    /* a model's packs go with it: pf_model_free drops them */
    {
        char err[512];
        pf_model *m = NULL;
        CHECKF(pf_model_load(&m, "tests/fixtures/model.safetensors", err, sizeof err) == 0, "%s", err);
        if (m) {
            CHECK(gm_set_precision(GM_BF16) == 0);
            gm_weight_cache(1);
            pf_ctx *ctx = pf_ctx_new(m);
            int32_t tok[40];
            tok[0] = TOK_CLS;
            for (int i = 1; i < 39; i++) tok[i] = TOK_RES0 + i % 20;
            tok[39] = TOK_EOS;
            float *logp = malloc(sizeof(float) * 40 * TOK_NRES), *logp2 = malloc(sizeof(float) * 40 * TOK_NRES);
            int len = 40;
            CHECK(ctx && pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, &len, 1, logp, NULL, err, sizeof err) == 0);
            const int cached = gm_weight_cache_count();
            CHECKF(cached > 0, "%d weight matrices cached after a forward", cached);
            CHECK(ctx && pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, &len, 1, logp2, NULL, err, sizeof err) == 0);
            CHECK(memcmp(logp, logp2, sizeof(float) * 40 * TOK_NRES) == 0 && gm_weight_cache_count() == cached);
            pf_ctx_free(ctx);
            pf_model_free(m);
            CHECKF(gm_weight_cache_count() == 0, "%d packs left after pf_model_free", gm_weight_cache_count());
            gm_weight_cache(0);
            CHECK(gm_set_precision(GM_FP32) == 0);
            free(logp); free(logp2);
        }
    }
    return TEST_DONE();
}
