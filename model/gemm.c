/* gemm.c - see gemm.h. Both own products (bf16, and float32 on AVX-512 CPUs) are one Goto-style
 * blocked GEMM (gemm_packed) with two sets of packing routines and micro-kernels (gm_impl):
 *
 *   for each block of KC rows of the reduction (K):
 *     pack op(B)[kc, N] (a round of several K blocks at a time when B is not cached, see
 *       gemm_packed) into panels of NR = 32 columns: [panel][ku][32] dwords, where a dword is
 *       one float32 (ku = kc) or, in bf16, the pair of values at k and k+1 of one column
 *       (ku = kc/2, the operand layout of VDPBF16PS);
 *     bf16: pack op(A)[M, kc] into panels of MR = 14 rows: [panel][ku][14] dwords (float32 reads
 *       A in place: its micro-kernel broadcasts each value straight from A, row-major or not);
 *     for every (block of MC_PANELS A panels, B panel) of a thread's share: the 14 x 32
 *       micro-kernel keeps 28 float32 accumulators in registers over the ku dwords (VFMADD231PS
 *       with the A value broadcast, or VDPBF16PS) and stores alpha * acc + beta * C (the first K
 *       block) or C + alpha * acc (the next ones); it prefetches its C tile for writing as it
 *       starts, so that the tile's cache misses overlap its sums.
 *
 * When every K block of B's packs is at hand at once (cached weights, or B small enough to pack
 * in one round) the two outer loops swap: a thread runs all K blocks of one block of A panels
 * before the next, so that block's rows of C stay in cache between K blocks. Either order sums
 * each C element in K order, so the result is bit for bit the same (bench/README.md has the
 * measurements: the trainer's products gained 13-34%, inference passes no more than noise).
 *
 * Where the CPU has AMX (and Linux grants the tile state), the bf16 product runs a third gm_impl on
 * the same loop: 32 x 32 micro-kernels of TDPBF16PS on tiles (A packed [32][ku] with a row's pairs
 * contiguous, B as in AVX-512 BF16, ku padded to 16 dwords), 2.1x the trainer's tokens/s of the
 * VDPBF16PS kernel (weights/MODEL_CARD.md); gm_bf16_amx(0) or PERFORMER_AMX=0 keeps VDPBF16PS.
 *
 * Odd K, partial panels and partial tiles are zero-padded in the packs and masked in the stores,
 * so any M, N, K >= 0, leading dimension and transpose is valid. The bf16 packing converts float32
 * to bf16 with VCVTNEPS2BF16 (round to nearest even). Threads: each OpenMP thread owns a share of
 * A's panels (or of B's, see gemm_packed); the result does not depend on the thread count (each C
 * element is summed by one thread, in K order).
 *
 * Why an own float32 product: OpenBLAS picks its kernels by CPU type, and where it runs its AVX2
 * (Haswell) kernels on an AVX-512 CPU (OPENBLAS_CORETYPE=Haswell, or a CPU its build does not
 * know) a float32 product runs at half the machine's FMA rate. gm_fp32_own(0) goes back to
 * cblas_sgemm (bench/RESULTS.md compares both).
 *
 * gm_sgemm_w keeps the packed panels of weight matrices (B) in a small table keyed by pointer,
 * leading dimension, shape and transpose, so an inference pass packs only its activations; the
 * table is filled only while gm_weight_cache(1) is in force and pf_model_free drops a model's
 * entries. */
#include "gemm.h"

#include <assert.h>
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cblas.h>

#define MR 14                   /* rows of A per micro-kernel (28 accumulators + 3 operands) */
#define NR 32                   /* columns of B per micro-kernel (two zmm) */
#define GM_PACK_MAXR (MR > NR ? MR : NR)   /* the widest panel a pack writes */
#define KC 256                  /* reduction block: a B panel is 16 KiB in bf16, 32 KiB in float32 (L1) */
#define MC_PANELS 16            /* A panels per tile: 224 rows x KC: 112 KiB in bf16, 224 in float32 (L2) */
#define GM_PAR_MIN (1 << 20)    /* multiply-adds below which the product runs on one thread */
#define GM_BGROUP_BYTES (1 << 20)   /* B packs packed per round (whole K blocks, at least one) */

#define WCACHE_MAX 256          /* weight matrices the cache holds (the shipped model has 29) */

static int gm_mode = GM_FP32;

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define F32_TARGET __attribute__((target("avx512f")))

/* One packed product: how a block of K is packed (ku(kc) dwords per panel row, pack) and
 * multiplied (kernel). */
typedef struct {
    int pairs;   /* 1: a dword holds two bf16 values of consecutive k (ku = (kc + 1) / 2); 0: one float */
    int mr;      /* rows of A per micro-kernel (an A panel) */
    int kalign;  /* ku is rounded up to a multiple of this (the packs zero the extra dwords) */
    /* Packs rows [r0, r0 + R) x k [k0, k0 + kc) of src (kmajor: element (r, k) at src[k * ld + r],
     * else at src[r * ld + k]) into one panel dst[ku][R]; rows >= rows and k >= kc are zero. */
    void (*pack)(uint32_t *dst, int kmajor, const float *src, long ld, int rows, int r0, int k0,
                 int kc, int R);
    /* A's packing where it differs from pack (AMX: dst[R][ku], each row's dwords contiguous); NULL:
     * pack */
    void (*pack_a)(uint32_t *dst, int kmajor, const float *src, long ld, int rows, int r0, int k0,
                   int kc, int R);
    /* acc = sum over ku dwords of a[ku][MR] x b[ku][NR] (A packed; NULL where kernel_direct reads A
     * in place); stores rows < mr, columns < nc of C as alpha * acc + beta * C (first: the first K
     * block; beta 0 reads no C) or C + alpha * acc. */
    void (*kernel)(int ku, const uint32_t *a, const uint32_t *b, float *c, long ldc, int mr,
                   int nc, float alpha, float beta, int first);
    /* kernel with A read in place, element (i, k) at a[i * si + k * sk] (i < mr, k < ku; si or
     * sk is 1), no A pack; NULL where A must be packed (bf16 converts it). */
    void (*kernel_direct)(int ku, const float *a, long si, long sk, const uint32_t *b, float *c,
                          long ldc, int mr, int nc, float alpha, float beta, int first);
} gm_impl;

/* The weight cache: packed panels of B for every K block, [block][panel][ku][NR]. */
typedef struct {
    const float *b;
    int ldb, n, k, tb;
    const gm_impl *impl;
    uint32_t *pack;
} wentry;
static wentry wcache[WCACHE_MAX];
static int wcache_n, wcache_on;
static pthread_mutex_t wcache_mu = PTHREAD_MUTEX_INITIALIZER;

static int gm_own_f32 = -1;    /* -1: not decided yet (own kernel when the CPU has AVX-512F) */

/* 1 when this CPU executes AVX-512 BF16 (and AVX-512 BW/VL), else 0. */
int gm_bf16_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* Sets the process's precision; -1 (unchanged) for an unknown value or unsupported bf16. */
int gm_set_precision(int precision) {
    if (precision != GM_FP32 && precision != GM_BF16) return -1;
    if (precision == GM_BF16 && !gm_bf16_supported()) return -1;
    gm_mode = precision;
    return 0;
}

/* The current precision. */
int gm_precision(void) { return gm_mode; }

/* Parses a precision name; 0 or -1. */
int gm_parse_precision(const char *s, int *precision) {
    if (!s) return -1;
    if (!strcasecmp(s, "fp32") || !strcasecmp(s, "float32")) *precision = GM_FP32;
    else if (!strcasecmp(s, "bf16") || !strcasecmp(s, "bfloat16")) *precision = GM_BF16;
    else return -1;
    return 0;
}

/* Parses and sets the process's precision; 0, or -1 with err. */
int gm_select_precision(const char *name, char *err, size_t errlen) {
    int p;
    if (gm_parse_precision(name, &p) != 0) {
        snprintf(err, errlen, "--precision takes fp32 or bf16, not '%s'", name ? name : "");
        return -1;
    }
    if (gm_set_precision(p) != 0) {
        snprintf(err, errlen, "--precision bf16 needs a CPU with AVX-512 BF16; use fp32");
        return -1;
    }
    return 0;
}

/* The name of a precision. */
const char *gm_precision_name(int precision) { return precision == GM_BF16 ? "bf16" : "fp32"; }

static CBLAS_TRANSPOSE cb(int t) { return t ? CblasTrans : CblasNoTrans; }

static const gm_impl impl_bf16, impl_f32, impl_amx;
static const gm_impl *bf16_impl(void);
static void gemm_packed(const gm_impl *im, const gm_epilogue *ep, int ta, int tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc, const uint32_t *pre);

/* 1 when this CPU executes AVX-512F (the own float32 product, the 8-row convolution kernels). */
int gm_avx512f_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
}

/* Chooses whether float32 products use the own AVX-512 kernel (own = 1, the default where the CPU
 * has AVX-512F) or cblas_sgemm (0); 0, or -1 (unchanged) for own = 1 on a CPU without AVX-512F. */
int gm_fp32_own(int own) {
    if (own && !gm_avx512f_supported()) return -1;
    gm_own_f32 = own != 0;
    return 0;
}

/* 1 when float32 products use the own kernel, 0 when they call cblas_sgemm. */
int gm_fp32_is_own(void) {
    if (gm_own_f32 < 0) gm_own_f32 = gm_avx512f_supported();
    return gm_own_f32;
}

/* Row-major C = alpha op(A) op(B) + beta C in the process's precision. */
void gm_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    if (gm_mode == GM_BF16)
        gemm_packed(bf16_impl(), NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
    else if (gm_fp32_is_own())
        gemm_packed(&impl_f32, NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
    else
        cblas_sgemm(CblasRowMajor, cb(ta), cb(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* gm_sgemm in float32 with the own kernel (the CPU must have AVX-512F), whatever the settings. */
void gm_sgemm_f32(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_packed(&impl_f32, NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

/* Transposes the 16 x 16 dwords r[i][j] in place (r[j][i] afterwards). */
F32_TARGET static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
    }
    /* u[g + c], lane L: column 4L + c of rows g..g+3 */
    for (int g = 0; g < 16; g += 4) {
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
        const __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        r[4 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
}

/* Packs rows [r0, r0 + R) x k [k0, k0 + kc) of a matrix whose k runs contiguously along a row
 * (element (r, k) at src[r * ld + k]) into one panel dst[kc2][R] of bf16 pairs; rows >= rows and
 * k >= kc are zero. Blocks of 16 rows x 16 pairs are converted and transposed in registers. */
BF16_TARGET static void pack_kcontig(uint32_t *dst, const float *src, long ld, int rows, int r0,
                                     int k0, int kc, int R) {
    for (int i0 = 0; i0 < R; i0 += 16) {
        const int nd = R - i0 < 16 ? R - i0 : 16;                /* panel rows in this block */
        const __mmask16 md = (__mmask16)((1u << nd) - 1);
        for (int k = 0; k < kc; k += 32) {
            const int n = kc - k < 32 ? kc - k : 32;
            const __mmask16 mlo = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
            const __mmask16 mhi = (__mmask16)(n <= 16 ? 0 : n >= 32 ? 0xffff : (1u << (n - 16)) - 1);
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const int row = r0 + i0 + i;
                if (i < nd && row < rows) {
                    const float *s = src + (long)row * ld + k0 + k;
                    r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(mhi, s + 16),
                                                        _mm512_maskz_loadu_ps(mlo, s));
                } else {
                    r[i] = _mm512_setzero_si512();
                }
            }
            transpose16(r);
            const int np = (n + 1) / 2;
            for (int j = 0; j < np; j++)
                _mm512_mask_storeu_epi32(dst + (size_t)(k / 2 + j) * R + i0, md, r[j]);
        }
    }
}

/* For the 16 panel rows from i of a panel of R rows from r0 (of a matrix of rows rows): *mv = the
 * rows to read (those < rows), *md = the rows to write (those < R). */
static inline void row_masks(int rows, int r0, int i, int R, __mmask16 *mv, __mmask16 *md) {
    const int nr = rows - r0 - i;   /* valid source rows from here on */
    const int nd = R - i < 16 ? R - i : 16;
    const int nv = nr <= 0 ? 0 : nr < nd ? nr : nd;
    *mv = (__mmask16)(nv >= 16 ? 0xffff : (1u << nv) - 1);
    *md = (__mmask16)(nd >= 16 ? 0xffff : (1u << nd) - 1);
}

/* Packs rows [r0, r0 + R) x k [k0, k0 + kc) of a matrix stored k-major (element (r, k) at
 * src[k * ld + r]) into one panel dst[kc2][R] of bf16 pairs; rows >= rows and k >= kc are zero. */
BF16_TARGET static void pack_kstrided(uint32_t *dst, const float *src, long ld, int rows, int r0,
                                      int k0, int kc, int R) {
    const int kc2 = (kc + 1) / 2;
    /* word 2j <- word j (row k), word 2j + 1 <- word 16 + j (row k + 1) */
    const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    /* the masks of each block of 16 panel rows, the same for every k (computing them inside the
     * loop was a fifth of this function's time in the trainer's weight gradients) */
    __mmask16 mvs[(GM_PACK_MAXR + 15) / 16], mds[(GM_PACK_MAXR + 15) / 16];
    assert(R <= GM_PACK_MAXR);
    const int nb = (R + 15) / 16, kfull = kc / 2;   /* blocks per row; pairs with both rows */
    for (int bi = 0; bi < nb; bi++) row_masks(rows, r0, 16 * bi, R, &mvs[bi], &mds[bi]);
    for (int k2 = 0; k2 < kc2; k2++) {
        const float *s0 = src + (long)(k0 + 2 * k2) * ld + r0;
        const float *s1 = s0 + ld;
        uint32_t *d = dst + (size_t)k2 * R;
        for (int bi = 0; bi < nb; bi++) {
            const __m512 a = _mm512_maskz_loadu_ps(mvs[bi], s0 + 16 * bi);
            const __m512 b = k2 < kfull ? _mm512_maskz_loadu_ps(mvs[bi], s1 + 16 * bi) : _mm512_setzero_ps();
            /* both rows converted at once (a in words 0..15, b in 16..31), then interleaved into
             * the dwords (a_j, b_j) */
            const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a);
            _mm512_mask_storeu_epi32(d + 16 * bi, mds[bi], _mm512_permutexvar_epi16(ilv, ab));
        }
    }
}

/* Writes one row of a micro-kernel's 32 sums (r0: columns 0-15, r1: 16-31) to ci: alpha * sum +
 * beta * C where read (vb = beta, or 1 for a later K block), else alpha * sum; masks m0, m1 keep
 * the columns < nc (col_masks). */
F32_TARGET static inline __attribute__((always_inline)) void store_row(float *ci, __m512 r0, __m512 r1,
        __mmask16 m0, __mmask16 m1, __m512 va, __m512 vb, int read) {
    r0 = _mm512_mul_ps(va, r0);
    r1 = _mm512_mul_ps(va, r1);
    if (read) {
        r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, ci), r0);
        r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16), r1);
    }
    _mm512_mask_storeu_ps(ci, m0, r0);
    _mm512_mask_storeu_ps(ci + 16, m1, r1);
}

/* The masks of the columns < nc of a 32-column tile, in its two halves. */
static inline void col_masks(int nc, __mmask16 *m0, __mmask16 *m1) {
    *m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    *m1 = (__mmask16)(nc <= 16 ? 0 : nc >= 32 ? 0xffff : (1u << (nc - 16)) - 1);
}

/* Stores the 14 x 32 accumulators acc of a micro-kernel into rows < mr, columns < nc of C (see
 * gm_impl.kernel). */
F32_TARGET static inline __attribute__((always_inline)) void store_tile(__m512 acc[MR][2], float *c,
        long ldc, int mr, int nc, float alpha, float beta, int first) {
    __mmask16 m0, m1;
    col_masks(nc, &m0, &m1);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first ? beta : 1.0f);
    const int read = !first || beta != 0.0f;
    for (int i = 0; i < MR && i < mr; i++)
        store_row(c + (long)i * ldc, acc[i][0], acc[i][1], m0, m1, va, vb, read);
}

/* Prefetches, for writing, the cache lines of rows < mr, columns < nc of a micro-kernel's C tile,
 * so that their misses overlap the kernel's sums instead of stalling its stores at the end. */
static inline __attribute__((always_inline)) void prefetch_tile(const float *c, long ldc, int mr, int nc) {
    for (int i = 0; i < mr && i < MR; i++) {
        const float *ci = c + (long)i * ldc;
        __builtin_prefetch(ci, 1, 3);
        if (nc > 16) __builtin_prefetch(ci + 16, 1, 3);
        __builtin_prefetch(ci + nc - 1, 1, 3);
    }
}

/* The bf16 14 x 32 micro-kernel (gm_impl.kernel): VDPBF16PS over kc2 pairs. */
BF16_TARGET static void kernel_bf16(int kc2, const uint32_t *a, const uint32_t *b, float *c,
                                    long ldc, int mr, int nc, float alpha, float beta, int first) {
    prefetch_tile(c, ldc, mr, nc);
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int k2 = 0; k2 < kc2; k2++) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(b + (size_t)k2 * NR);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(b + (size_t)k2 * NR + 16);
        const uint32_t *ak = a + (size_t)k2 * MR;
        #pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
        }
    }
    store_tile(acc, c, ldc, mr, nc, alpha, beta, first);
}

/* The bf16 packing (gm_impl.pack): pairs of bf16 values. */
BF16_TARGET static void pack_bf16(uint32_t *dst, int kmajor, const float *src, long ld, int rows,
                                  int r0, int k0, int kc, int R) {
    if (kmajor) pack_kstrided(dst, src, ld, rows, r0, k0, kc, R);
    else pack_kcontig(dst, src, ld, rows, r0, k0, kc, R);
}

/* The float32 packing (gm_impl.pack): one float per dword, dst[kc][R]. Row-major sources are
 * transposed in registers 16 rows x 16 k at a time; k-major ones are copied row of k by row. */
F32_TARGET static void pack_f32(uint32_t *dst, int kmajor, const float *src, long ld, int rows,
                                int r0, int k0, int kc, int R) {
    if (kmajor) {
        for (int k = 0; k < kc; k++) {
            const float *s = src + (long)(k0 + k) * ld + r0;
            uint32_t *d = dst + (size_t)k * R;
            for (int i = 0; i < R; i += 16) {
                __mmask16 mv, md;
                row_masks(rows, r0, i, R, &mv, &md);
                _mm512_mask_storeu_ps((float *)(d + i), md, _mm512_maskz_loadu_ps(mv, s + i));
            }
        }
        return;
    }
    for (int i0 = 0; i0 < R; i0 += 16) {
        const int nd = R - i0 < 16 ? R - i0 : 16;                /* panel rows in this block */
        const __mmask16 md = (__mmask16)((1u << nd) - 1);
        for (int k = 0; k < kc; k += 16) {
            const int n = kc - k < 16 ? kc - k : 16;
            const __mmask16 mk = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const int row = r0 + i0 + i;
                r[i] = i < nd && row < rows
                           ? _mm512_castps_si512(_mm512_maskz_loadu_ps(mk, src + (long)row * ld + k0 + k))
                           : _mm512_setzero_si512();
            }
            transpose16(r);
            for (int j = 0; j < n; j++)
                _mm512_mask_storeu_epi32(dst + (size_t)(k + j) * R + i0, md, r[j]);
        }
    }
}

/* The float32 micro-kernel with A unpacked (gm_impl.kernel_direct), for one layout: broadcasts
 * A's values in place (rows mr..13 repeat row mr - 1, whose sums are never stored; tk: A
 * transposed, si = 1). Saves packing the activations on every call (a transpose of every
 * 16 x 16 block, or a copy). (Reading B in place too, when not cached, measured slower.) */
F32_TARGET static inline __attribute__((always_inline)) void f32_direct(
        int kc, const float *a, long si, long sk, const uint32_t *b, float *c, long ldc, int mr,
        int nc, float alpha, float beta, int first, int tk) {
    const float *ar[MR];
    for (int i = 0; i < MR; i++) ar[i] = a + (long)(i < mr ? i : mr - 1) * (tk ? 1 : si);
    prefetch_tile(c, ldc, mr, nc);
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    const float *bf = (const float *)b;
    for (int k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(bf + (size_t)k * NR);
        const __m512 b1 = _mm512_load_ps(bf + (size_t)k * NR + 16);
        const long ko = tk ? (long)k * sk : k;
        #pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            const __m512 av = _mm512_set1_ps(ar[i][ko]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    store_tile(acc, c, ldc, mr, nc, alpha, beta, first);
}

/* gm_impl.kernel_direct of the float32 product: one specialised f32_direct per layout. */
F32_TARGET static void kernel_f32_direct(int kc, const float *a, long si, long sk,
                                         const uint32_t *b, float *c, long ldc, int mr, int nc,
                                         float alpha, float beta, int first) {
    if (si == 1 && sk != 1) f32_direct(kc, a, si, sk, b, c, ldc, mr, nc, alpha, beta, first, 1);
    else f32_direct(kc, a, si, sk, b, c, ldc, mr, nc, alpha, beta, first, 0);
}


/* ---- AMX (Intel Advanced Matrix Extensions): the bf16 product on tiles ----
 * A 32 x 32 micro-kernel on eight tile registers: C tiles 0-3 (16 x 16 float32 each), A tiles 4-5
 * (16 rows x 16 dwords, a row's pairs contiguous: the A panel is [32][ku]), B tiles 6-7 (16 pairs
 * x 16 columns: the B panel's [ku][32] dwords read with a stride of 128 bytes, the VNNI layout
 * TDPBF16PS takes, which is the AVX-512 BF16 packing's). ku is padded to 16 dwords (32 k) with
 * zeros, one tile load's depth. TDPBF16PS, like VDPBF16PS, multiplies the bf16 pairs and
 * accumulates in float32 (denormal inputs and outputs flushed to zero). */
#define AMX_MR 32
#define AMX_KU 16
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

static __thread int amx_configured;   /* this thread's tile configuration is loaded */

/* Packs rows [r0, r0 + R) x k [k0, k0 + kc) of src (kmajor: element (r, k) at src[k * ld + r],
 * else at src[r * ld + k]) into dst[R][ku] of bf16 pairs, ku = kc2 rounded up to 16; rows >= rows
 * and k >= kc are zero (the A operand of TDPBF16PS: a row's k contiguous). */
BF16_TARGET static void pack_a_amx(uint32_t *dst, int kmajor, const float *src, long ld, int rows,
                                   int r0, int k0, int kc, int R) {
    const int kc2 = (kc + 1) / 2, ku = (kc2 + AMX_KU - 1) / AMX_KU * AMX_KU;
    const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int i0 = 0; i0 < R; i0 += 16) {
        __mmask16 mv, md;
        row_masks(rows, r0, i0, R, &mv, &md);
        const int nd = R - i0 < 16 ? R - i0 : 16;
        for (int j0 = 0; j0 < ku; j0 += 16) {          /* 16 pairs = 32 k */
            const int k = 2 * j0, n = kc - k <= 0 ? 0 : kc - k < 32 ? kc - k : 32;   /* valid k here */
            __m512i r[16];
            if (kmajor) {
                /* r[j]: the pair (k + 2j, k + 2j + 1) of 16 rows; transposed to r[row][j] */
                for (int j = 0; j < 16; j++) {
                    const float *s0 = src + (long)(k0 + k + 2 * j) * ld + r0 + i0;
                    const __m512 a = 2 * j < n ? _mm512_maskz_loadu_ps(mv, s0) : _mm512_setzero_ps();
                    const __m512 b = 2 * j + 1 < n ? _mm512_maskz_loadu_ps(mv, s0 + ld) : _mm512_setzero_ps();
                    r[j] = _mm512_permutexvar_epi16(ilv, (__m512i)_mm512_cvtne2ps_pbh(b, a));
                }
                transpose16(r);
            } else {
                /* row i's 32 k converted in place: words 0..31 are k..k+31, i.e. dword j is the pair
                 * (k + 2j, k + 2j + 1) */
                const __mmask16 mlo = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
                const __mmask16 mhi = (__mmask16)(n <= 16 ? 0 : n >= 32 ? 0xffff : (1u << (n - 16)) - 1);
                for (int i = 0; i < 16; i++) {
                    const float *s = src + (long)(r0 + i0 + i) * ld + k0 + k;
                    r[i] = (mv >> i) & 1 ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(mhi, s + 16),
                                                                        _mm512_maskz_loadu_ps(mlo, s))
                                         : _mm512_setzero_si512();
                }
            }
            for (int i = 0; i < nd; i++) _mm512_storeu_si512(dst + (size_t)(i0 + i) * ku + j0, r[i]);
        }
    }
}

/* The B packing of the AMX product: pack_bf16's [ku][R] pairs, the rows past kc2 up to ku (a
 * multiple of 16) zero. */
BF16_TARGET static void pack_b_amx(uint32_t *dst, int kmajor, const float *src, long ld, int rows,
                                   int r0, int k0, int kc, int R) {
    const int kc2 = (kc + 1) / 2, ku = (kc2 + AMX_KU - 1) / AMX_KU * AMX_KU;
    pack_bf16(dst, kmajor, src, ld, rows, r0, k0, kc, R);
    memset(dst + (size_t)kc2 * R, 0, sizeof(uint32_t) * (size_t)(ku - kc2) * R);
}

/* Loads this thread's tile configuration (eight tiles of 16 rows x 64 bytes) once. */
AMX_TARGET static void amx_config(void) {
    if (amx_configured) return;
    struct __attribute__((aligned(64))) {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    amx_configured = 1;
}

/* The AMX 32 x 32 micro-kernel (gm_impl.kernel): a[32][ku] x b[ku][32] over ku dwords (a multiple
 * of 16), stored like store_tile. With alpha 1 and a later K block, or beta 0 or 1, the
 * accumulator tiles start from C (or zero) and are stored back: C and the products are summed in
 * the tiles, in one order for every element. A partial tile (the last rows or columns) goes the
 * same way through a zero-padded copy, so that an element's value does not depend on where its
 * row falls in the panels: a sequence's bf16 results are the same whatever batch or group it runs
 * in. (Partial tiles used to be summed apart and added to C afterwards, which rounds differently:
 * the last sequence of each group came out up to 0.01 apart in log p, session 48.) */
AMX_TARGET static void kernel_amx(int ku, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                                  int mr, int nc, float alpha, float beta, int first) {
    amx_config();
    const long sa = (long)ku * 4;
    const int in_tiles = alpha == 1.0f && (!first || beta == 0.0f || beta == 1.0f);
    const int load = in_tiles && (!first || beta == 1.0f);
    float t[AMX_MR][NR] __attribute__((aligned(64)));
    __mmask16 m0, m1;
    col_masks(nc, &m0, &m1);
    /* where the tiles of each half (rows 0-15, 16-31) load and store C: in place when the half is
     * whole, else the padded copy t (only the rows < mr of it are read back) */
    float *cp[2];
    long ldp[2];
    int whole[2];
    for (int h = 0; h < 2; h++) {
        whole[h] = mr >= 16 * (h + 1) && nc == NR;
        cp[h] = whole[h] ? c + 16 * h * ldc : &t[16 * h][0];
        ldp[h] = whole[h] ? ldc : NR;
        if (load && !whole[h])
            for (int i = 16 * h; i < 16 * h + 16 && i < mr; i++) {
                const float *ci = c + (long)i * ldc;
                _mm512_store_ps(&t[i][0], _mm512_maskz_loadu_ps(m0, ci));
                _mm512_store_ps(&t[i][16], _mm512_maskz_loadu_ps(m1, ci + 16));
            }
    }
    if (load) {   /* (the rows of t past mr are never read back) */
        _tile_loadd(0, cp[0], ldp[0] * 4);
        _tile_loadd(1, cp[0] + 16, ldp[0] * 4);
        if (mr > 16) {
            _tile_loadd(2, cp[1], ldp[1] * 4);
            _tile_loadd(3, cp[1] + 16, ldp[1] * 4);
        }
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    if (mr > 16) {
        for (int k2 = 0; k2 < ku; k2 += AMX_KU) {
            _tile_loadd(4, a + k2, sa);
            _tile_loadd(5, a + (size_t)16 * ku + k2, sa);
            _tile_loadd(6, b + (size_t)k2 * NR, NR * 4);
            _tile_loadd(7, b + (size_t)k2 * NR + 16, NR * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    } else {   /* the rows 16..31 of the panel are padding */
        for (int k2 = 0; k2 < ku; k2 += AMX_KU) {
            _tile_loadd(4, a + k2, sa);
            _tile_loadd(6, b + (size_t)k2 * NR, NR * 4);
            _tile_loadd(7, b + (size_t)k2 * NR + 16, NR * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
    }
    if (in_tiles) {
        _tile_stored(0, cp[0], ldp[0] * 4);
        _tile_stored(1, cp[0] + 16, ldp[0] * 4);
        if (mr > 16) {
            _tile_stored(2, cp[1], ldp[1] * 4);
            _tile_stored(3, cp[1] + 16, ldp[1] * 4);
        }
        for (int h = 0; h < 2; h++)
            if (!whole[h])
                for (int i = 16 * h; i < 16 * h + 16 && i < mr; i++) {
                    float *ci = c + (long)i * ldc;
                    _mm512_mask_storeu_ps(ci, m0, _mm512_load_ps(&t[i][0]));
                    _mm512_mask_storeu_ps(ci + 16, m1, _mm512_load_ps(&t[i][16]));
                }
        return;
    }
    _tile_stored(0, &t[0][0], NR * 4);
    _tile_stored(1, &t[0][16], NR * 4);
    if (mr > 16) {
        _tile_stored(2, &t[16][0], NR * 4);
        _tile_stored(3, &t[16][16], NR * 4);
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first ? beta : 1.0f);
    const int read = !first || beta != 0.0f;
    for (int i = 0; i < mr && i < AMX_MR; i++)
        store_row(c + (long)i * ldc, _mm512_load_ps(&t[i][0]), _mm512_load_ps(&t[i][16]), m0, m1, va, vb, read);
}

static int gm_amx = -1;   /* -1: not decided yet (AMX where gm_amx_supported) */

static int amx_granted;   /* set once by amx_permit_once */

/* Asks Linux (5.16+) for the AMX tile state, ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, once. */
static void amx_permit_once(void) {
    amx_granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}

/* 1 when this CPU has AMX-BF16 (and AVX-512 BF16, for the packing) and the OS lets this process
 * use the tiles, else 0. */
int gm_amx_supported(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    /* CPUID leaf 7 sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE (read directly: clang 14's
     * __builtin_cpu_supports does not know the AMX feature names). */
    unsigned a, b, c, d;
    if (!gm_bf16_supported() || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) ||
        !(d & (1u << 24)))
        return 0;
    pthread_once(&once, amx_permit_once);
    return amx_granted;
}

/* Chooses the bf16 product's kernel: AMX tiles (amx = 1, the default where gm_amx_supported) or
 * AVX-512 BF16 (0); 0, or -1 (unchanged) for amx = 1 where AMX does not run. */
int gm_bf16_amx(int amx) {
    if (amx && !gm_amx_supported()) return -1;
    gm_amx = amx != 0;
    return 0;
}

/* 1 when bf16 products run on AMX tiles, 0 when on AVX-512 BF16. */
int gm_bf16_is_amx(void) {
    if (gm_amx < 0) {
        const char *e = getenv("PERFORMER_AMX");
        gm_amx = e && !strcmp(e, "0") ? 0 : gm_amx_supported();
    }
    return gm_amx;
}

static const gm_impl impl_bf16 = { 1, MR, 1, pack_bf16, NULL, kernel_bf16, NULL };
static const gm_impl impl_f32 = { 0, MR, 1, pack_f32, NULL, NULL, kernel_f32_direct };   /* A never packed */
static const gm_impl impl_amx = { 1, AMX_MR, AMX_KU, pack_b_amx, pack_a_amx, kernel_amx, NULL };

/* The bf16 product in use: AMX where it runs and is not turned off, else AVX-512 BF16. */
static const gm_impl *bf16_impl(void) { return gm_bf16_is_amx() ? &impl_amx : &impl_bf16; }

/* Dwords per panel row for a K block of kc (pairs in bf16), rounded up to the impl's kalign. */
static inline int ku_of(const gm_impl *im, int kc) {
    const int ku = im->pairs ? (kc + 1) / 2 : kc;
    return (ku + im->kalign - 1) / im->kalign * im->kalign;
}

/* Packs all of op(B)[K, N] block by block into dst ([block][panel][ku][NR], the blocks
 * npb * NR * ku_of(KC) apart). Single-threaded (once per weight matrix). */
static void pack_b_all(const gm_impl *im, uint32_t *dst, int tb, int N, int K, const float *B,
                       int ldb) {
    const int npb = (N + NR - 1) / NR;
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC, ku = ku_of(im, kc);
        uint32_t *blk = dst + (size_t)npb * NR * ku_of(im, KC) * (k0 / KC);
        for (int p = 0; p < npb; p++)
            im->pack(blk + (size_t)p * NR * ku, !tb, B, ldb, N, p * NR, k0, kc, NR);
    }
}

/* gm_sgemm in bf16 with float32 accumulation, whatever the process's precision. */
void gm_sgemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_packed(bf16_impl(), NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

/* Returns B's cached packs for impl im, packing them on first use; NULL when the cache is full or
 * out of memory (the caller then packs per call). */
static const uint32_t *wcache_get(const gm_impl *im, int tb, int N, int K, const float *B, int ldb) {
    const uint32_t *r = NULL;
    pthread_mutex_lock(&wcache_mu);
    for (int i = 0; i < wcache_n && !r; i++) {
        const wentry *e = &wcache[i];
        if (e->b == B && e->ldb == ldb && e->n == N && e->k == K && e->tb == tb && e->impl == im)
            r = e->pack;
    }
    if (!r && wcache_on && wcache_n < WCACHE_MAX) {
        const int npb = (N + NR - 1) / NR, nblk = (K + KC - 1) / KC;
        const size_t bytes = sizeof(uint32_t) * (size_t)npb * NR * ku_of(im, KC) * nblk;
        uint32_t *pk = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        if (pk) {
            pack_b_all(im, pk, tb, N, K, B, ldb);
            wcache[wcache_n++] = (wentry){B, ldb, N, K, tb, im, pk};
            r = pk;
        }
    }
    pthread_mutex_unlock(&wcache_mu);
    return r;
}

/* Runs ep (if any) over all of C[M, N] (the products that have no blocks of their own: OpenBLAS). */
static void epilogue_all(const gm_epilogue *ep, float *C, int ldc, int M, int N) {
    if (!ep || M <= 0 || N <= 0) return;
    #pragma omp parallel for if ((double)M * N > (1 << 16) && !omp_in_parallel())
    for (int i = 0; i < M; i += 16) ep->fn(C + (long)i * ldc, ldc, M - i < 16 ? M - i : 16, N, 0, ep->arg);
}

/* gm_sgemm with B a weight matrix, its packs cached, then ep (see gemm.h). */
void gm_sgemm_w_ep(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc, const gm_epilogue *ep) {
    const gm_impl *im = gm_mode == GM_BF16 ? bf16_impl() : gm_fp32_is_own() ? &impl_f32 : NULL;
    if (!im) {
        cblas_sgemm(CblasRowMajor, cb(ta), cb(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        epilogue_all(ep, C, ldc, M, N);
        return;
    }
    const uint32_t *pre = wcache_on && M > 0 && N > 0 && K > 0 ? wcache_get(im, tb, N, K, B, ldb) : NULL;
    gemm_packed(im, ep, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pre);
}

/* gm_sgemm with B a weight matrix, its packs cached (see gemm.h). */
void gm_sgemm_w(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc) {
    gm_sgemm_w_ep(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

/* Turns the weight cache on or off (off empties it). */
void gm_weight_cache(int on) {
    pthread_mutex_lock(&wcache_mu);
    wcache_on = on != 0;
    if (!wcache_on) {
        for (int i = 0; i < wcache_n; i++) free(wcache[i].pack);
        wcache_n = 0;
    }
    pthread_mutex_unlock(&wcache_mu);
}

/* Drops the cached packs of every B inside [base, base + bytes). */
void gm_weight_cache_drop(const void *base, size_t bytes) {
    const char *lo = base, *hi = lo + bytes;
    pthread_mutex_lock(&wcache_mu);
    for (int i = 0; i < wcache_n;) {
        const char *b = (const char *)wcache[i].b;
        if (b >= lo && b < hi) {
            free(wcache[i].pack);
            wcache[i] = wcache[--wcache_n];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&wcache_mu);
}

/* The number of cached weight matrices. */
int gm_weight_cache_count(void) {
    pthread_mutex_lock(&wcache_mu);
    int n = wcache_n;
    pthread_mutex_unlock(&wcache_mu);
    return n;
}

/* One K block [k0, k0 + kc) of A panels [q0, q1) x B panels [b0, b1) of gemm_packed: packs those A
 * panels into apt (unless the impl reads A in place), just before their use so that the packs are
 * still in L2 (packing all of a thread's panels first wrote them out to memory and read them
 * back), then runs the micro-kernels into C; bk = this K block's B packs. After the last K block
 * ep (if any) runs over the block's rows of C. */
static inline void gemm_block(const gm_impl *im, const gm_epilogue *ep, int ta, int M, int N, const float *A, int lda,
                              float *C, int ldc, float alpha, float beta, uint32_t *apt,
                              size_t apanel, const uint32_t *bk, int q0, int q1, int b0, int b1,
                              int k0, int kc, int K) {
    const int mrp = im->mr, ku = ku_of(im, kc), direct = im->kernel_direct != NULL;
    const int last = ep && k0 + kc >= K;
    if (!direct && b1 > b0)
        for (int p = q0; p < q1; p++)
            (im->pack_a ? im->pack_a : im->pack)(apt + apanel * p, ta, A, lda, M, p * mrp, k0, kc, mrp);
    for (int pb = b0; pb < b1; pb++) {
        const int n0 = pb * NR, nc = N - n0 < NR ? N - n0 : NR;
        for (int pa = q0; pa < q1; pa++) {
            const int m0 = pa * mrp, mr = M - m0 < mrp ? M - m0 : mrp;
            if (direct)
                im->kernel_direct(ku, ta ? A + (long)k0 * lda + m0 : A + (long)m0 * lda + k0,
                                  ta ? 1 : lda, ta ? lda : 1, bk + (size_t)pb * NR * ku,
                                  C + (long)m0 * ldc + n0, ldc, mr, nc, alpha, beta, k0 == 0);
            else
                im->kernel(ku, apt + apanel * pa, bk + (size_t)pb * NR * ku,
                           C + (long)m0 * ldc + n0, ldc, mr, nc, alpha, beta, k0 == 0);
        }
    }
    /* ep over the block's finished rows, row by row while they are still in L2 (on each tile
     * straight after its kernel it cost more than a separate pass: a tile's rows, 4 KiB apart in
     * fc1's output, share an L1 set and were evicted before ep read them, and AMX tile stores are
     * not forwarded to loads) */
    if (last && b1 > b0) {
        const int m0 = q0 * mrp, m1 = q1 * mrp < M ? q1 * mrp : M, n0 = b0 * NR, n1 = b1 * NR < N ? b1 * NR : N;
        ep->fn(C + (long)m0 * ldc + n0, ldc, m1 - m0, n1 - n0, n0, ep->arg);
    }
}

/* The packed product with impl im; pre = B's packs from the weight cache, or NULL to pack B here. */
static void gemm_packed(const gm_impl *im, const gm_epilogue *ep, int ta, int tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc, const uint32_t *pre) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {   /* C = beta C, as BLAS does */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(long)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(long)i * ldc + j];
        epilogue_all(ep, C, ldc, M, N);
        return;
    }
    const int mrp = im->mr;   /* rows per A panel */
    const int npa = (M + mrp - 1) / mrp, npb = (N + NR - 1) / NR;
    const int kcmax = K < KC ? K : KC, kumax = ku_of(im, kcmax), kublk = ku_of(im, KC);
    /* threads: each takes an equal share of the A panels (all B panels), or of the B panels
     * (every A panel: a private copy of the A packs) for a small A that splits unevenly. A
     * thread packs the A panels it uses itself, so with B's packs cached (inference) the threads
     * never wait for each other until the end; without the cache B is packed by all of them, a
     * barrier before and after. (A static split of fixed-size tiles left one thread waiting for the
     * other in a fifth of an L = 512 pass.) */
    const int par = (double)M * N * K > GM_PAR_MIN;
    const int nt = par && !omp_in_parallel() ? omp_get_max_threads() : 1;
    const long load_a = (long)((npa + nt - 1) / nt) * npb, load_b = (long)npa * ((npb + nt - 1) / nt);
    /* split B when that gives the busiest thread fewer panel pairs and A is small (each thread then
     * packs all of A: at L = 512, 37 panels, that cost more than it saved) */
    const int split_b = nt > 1 && npa < 4 * nt && load_b < load_a;
    const int direct = im->kernel_direct != NULL;   /* float32: A read in place, not packed */
    /* dwords of one A panel: its place in the packs is the same in every K block (with cached B the
     * threads run through the K blocks unsynchronised: a shorter last block packed at p * mr * ku
     * overwrote panels that another thread was still reading) */
    const size_t apanel = (size_t)mrp * kumax;
    uint32_t *ap = direct ? NULL : aligned_alloc(64, ((sizeof(uint32_t) * apanel * npa * (split_b ? nt : 1)) + 63) & ~(size_t)63);
    /* without the cache, B is packed by all threads in rounds of G K blocks (up to GM_BGROUP_BYTES),
     * alternating between two halves of bp: round r packs into half r % 2 while a slower thread may
     * still multiply with half (r - 1) % 2, so each round needs only the barrier that ends its
     * packing. (A barrier before and after every block's packing, each a futex sleep under
     * OMP_WAIT_POLICY=PASSIVE, held the trainer's weight gradients - M, N <= 1,024, K = 16,384 - at
     * 290-530 GFLOP/s; in rounds they ran at 600-670.) */
    const int nbk = (K + KC - 1) / KC;                 /* K blocks */
    const size_t bblk = (size_t)npb * NR * kumax;     /* dwords of one K block's B packs */
    int G = (int)(GM_BGROUP_BYTES / (sizeof(uint32_t) * bblk));
    if (G < 1) G = 1;
    if (G > nbk) G = nbk;
    const size_t bhalf = bblk * G;
    uint32_t *bp = pre ? NULL : aligned_alloc(64, ((sizeof(uint32_t) * bhalf * (nbk > G ? 2 : 1)) + 63) & ~(size_t)63);
    if ((!direct && !ap) || (!pre && !bp)) {   /* out of memory for the packs: the float32 product needs none */
        free(ap);
        free(bp);
        cblas_sgemm(CblasRowMajor, cb(ta), cb(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        epilogue_all(ep, C, ldc, M, N);
        return;
    }
    /* with every K block's B packs at hand at once (cached, or one round), each thread runs all
     * K blocks of one block of A panels before the next, so that C's rows of that block stay in
     * cache between the K blocks (K block outermost re-read and re-wrote all of C from memory
     * once per block) */
    const int kinner = pre || G >= nbk;
    #pragma omp parallel if (par)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int sb = split_b && nth > 1;
        const int a0 = sb ? 0 : (int)((long)npa * tid / nth), a1 = sb ? npa : (int)((long)npa * (tid + 1) / nth);
        const int b0 = sb ? (int)((long)npb * tid / nth) : 0, b1 = sb ? (int)((long)npb * (tid + 1) / nth) : npb;
        uint32_t *apt = ap && sb ? ap + apanel * npa * tid : ap;   /* this thread's A packs */
        if (kinner) {
            if (!pre) {                                /* the one round: every K block */
                #pragma omp for schedule(static)
                for (int x = 0; x < nbk * npb; x++) {
                    const int j = x / npb, p = x % npb, kj = j * KC, kcj = K - kj < KC ? K - kj : KC;
                    im->pack(bp + bblk * j + (size_t)p * NR * ku_of(im, kcj), !tb, B, ldb, N, p * NR,
                             kj, kcj, NR);
                }
            }
            for (int q0 = a0; q0 < a1; q0 += MC_PANELS) {
                const int q1 = q0 + MC_PANELS < a1 ? q0 + MC_PANELS : a1;
                for (int k0 = 0; k0 < K; k0 += KC) {
                    const int kc = K - k0 < KC ? K - k0 : KC, bi = k0 / KC;
                    const uint32_t *bk = pre ? pre + (size_t)npb * NR * kublk * bi : bp + bblk * bi;
                    gemm_block(im, ep, ta, M, N, A, lda, C, ldc, alpha, beta, apt, apanel, bk, q0, q1, b0, b1,
                               k0, kc, K);
                }
            }
        } else {
            for (int k0 = 0; k0 < K; k0 += KC) {
                const int kc = K - k0 < KC ? K - k0 : KC;
                const int bi = k0 / KC;                    /* this K block */
                uint32_t *half = bp + bhalf * ((bi / G) % 2);
                const uint32_t *bk = half + bblk * (bi % G);
                if (bi % G == 0) {                         /* a new round: pack blocks bi .. bi + nb - 1 */
                    const int nb = nbk - bi < G ? nbk - bi : G;
                    #pragma omp for schedule(static)
                    for (int x = 0; x < nb * npb; x++) {
                        const int j = x / npb, p = x % npb, kj = k0 + j * KC, kcj = K - kj < KC ? K - kj : KC;
                        im->pack(half + bblk * j + (size_t)p * NR * ku_of(im, kcj), !tb, B, ldb, N, p * NR,
                                 kj, kcj, NR);
                    }
                }
                /* blocks of MC_PANELS A panels (in L2) x this thread's B panels */
                for (int q0 = a0; q0 < a1; q0 += MC_PANELS) {
                    const int q1 = q0 + MC_PANELS < a1 ? q0 + MC_PANELS : a1;
                    gemm_block(im, ep, ta, M, N, A, lda, C, ldc, alpha, beta, apt, apanel, bk, q0, q1, b0, b1,
                               k0, kc, K);
                }
            }
        }
    }
    free(ap);
    free(bp);
}
