/* gemm.h - the matrix products of the model: float32 (the default; an own AVX-512 kernel where the
 * CPU has AVX-512F, else OpenBLAS sgemm) or a bfloat16 product with float32 accumulation (AVX-512
 * BF16, VDPBF16PS, or AMX tiles, TDPBF16PS, where the CPU has them), selected once per process.
 *
 * The bf16 mode rounds both operands to bfloat16 (8-bit mantissa, round to nearest even) and
 * accumulates their products in float32 (the operand rounding of PyTorch's CPU autocast, whose
 * outputs are bf16 too; here they stay float32). On one core of this project's machine it ran at
 * 2.1x OpenBLAS's AVX-512 float32 sgemm (3.65x its Haswell kernels in bench/RESULTS.md); the
 * rounding moves a product by about 0.2% of its largest output
 * (tests/unit/test_gemm.c; the effect on the model's quality: weights/MODEL_CARD.md, on its
 * speed: bench/RESULTS.md). Without AVX-512 BF16 in the CPU, gm_set_precision(GM_BF16) fails and
 * the process stays in float32. */
#ifndef PF_GEMM_H
#define PF_GEMM_H

#include <stddef.h>

enum { GM_FP32 = 0, GM_BF16 = 1 };

/* 1 when this CPU executes AVX-512F (the own float32 product needs it), else 0. */
int gm_avx512f_supported(void);

/* 1 when this CPU executes AVX-512 BF16 (and AVX-512 BW/VL), else 0. */
int gm_bf16_supported(void);

/* 1 when this CPU has AMX-BF16 tiles (Intel Sapphire Rapids and later) and Linux grants this
 * process their state (asked once, ARCH_REQ_XCOMP_PERM), else 0. */
int gm_amx_supported(void);

/* The bf16 product's kernel: AMX tiles (amx = 1; the default where gm_amx_supported() unless the
 * environment has PERFORMER_AMX=0) or AVX-512 BF16 (0). Both round the operands to bf16 and
 * accumulate in float32; they sum in different orders (results differ in the last bits). Returns
 * 0, or -1 (unchanged) for amx = 1 where AMX does not run. Call it at start-up. */
int gm_bf16_amx(int amx);

/* 1 when bf16 products run on AMX tiles, 0 when on AVX-512 BF16 (VDPBF16PS). */
int gm_bf16_is_amx(void);

/* Sets the precision of every later gm_sgemm in this process (GM_FP32 or GM_BF16). Returns 0, or
 * -1 (precision unchanged) for an unknown value or GM_BF16 on a CPU without AVX-512 BF16. Call it
 * before any thread runs products (start-up). */
int gm_set_precision(int precision);

/* The current precision (GM_FP32 unless gm_set_precision changed it). */
int gm_precision(void);

/* Parses "fp32"/"float32" or "bf16"/"bfloat16" into *precision; 0, or -1 for anything else. */
int gm_parse_precision(const char *s, int *precision);

/* Parses name as gm_parse_precision does and sets it as gm_set_precision does: 0, or -1 with a
 * one-line err ("--precision takes fp32 or bf16, not 'x'" or "--precision bf16 needs a CPU with
 * AVX-512 BF16; use fp32") and the precision unchanged. The programs' --precision options. */
int gm_select_precision(const char *name, char *err, size_t errlen);

/* The name of a precision ("fp32" or "bf16"). */
const char *gm_precision_name(int precision);

/* Row-major C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C, as cblas_sgemm(CblasRowMajor,
 * ...) with ta/tb 0 (no transpose) or 1 (transpose): op(A) is A[M,lda] or A^T of A[K,lda], op(B)
 * B[K,ldb] or B^T of B[N,ldb]. Runs in the process's precision; beta 0 never reads C. */
void gm_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* gm_sgemm where B is a weight matrix: with the weight cache on (gm_weight_cache) and the process
 * in bf16 or on the own float32 kernel, B's packed panels are packed once per (B, ldb, N, K, tb) and reused by later calls, which
 * then only pack A (the activations): short sequences no longer pay for re-packing the weights.
 * The caller promises B does not change while cached (see gm_weight_cache_drop). */
void gm_sgemm_w(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc);
/* An element-wise step applied to C's outputs once they are final: fn(c, ldc, rows, cols, n0, arg)
 * rewrites rows x cols of C starting at c, whose first column is column n0 of C (so that fn can
 * index a per-column bias). The packed products run it on each thread's block of C (up to 16
 * micro-kernel rows by its columns) right after the block's last K block, while it is still in
 * L2 (a separate pass over C read and wrote all of it from memory again); OpenBLAS's over all of
 * C at the end. fn must give each element a result that depends on that element and its column
 * only (blocks come in any order, on any thread). */
typedef struct {
    void (*fn)(float *c, long ldc, int rows, int cols, int n0, const void *arg);
    const void *arg;
} gm_epilogue;
/* gm_sgemm_w followed by ep (NULL: none), as if ep ran over all of C after the product. */
void gm_sgemm_w_ep(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc, const gm_epilogue *ep);

/* Turns the weight cache of gm_sgemm_w on (1) or off (0, the default: training changes its
 * weights every step); off also empties it. For inference processes (performerd, eval, predict). */
void gm_weight_cache(int on);

/* Drops every cached pack of a B inside [base, base + bytes) (pf_model_free calls it, so a later
 * model at the same address can never meet stale packs). Thread-safe against other cache calls,
 * but no product on those weights may be running (a pack in use would be freed). */
void gm_weight_cache_drop(const void *base, size_t bytes);

/* The number of weight matrices cached now (tests). */
int gm_weight_cache_count(void);

/* Float32 products (gm_sgemm, gm_sgemm_w in fp32) use the own AVX-512 kernel (own = 1, the default
 * on a CPU with AVX-512F) or OpenBLAS's cblas_sgemm (0). The own kernel sums in a different order
 * than OpenBLAS (results differ in the last bits) but, unlike it, gives the same bits for any
 * thread count. Returns 0, or -1 (unchanged) for own = 1 on a CPU without AVX-512F. Call it at
 * start-up, like gm_set_precision. */
int gm_fp32_own(int own);

/* 1 when float32 products use the own kernel, 0 when they call cblas_sgemm. */
int gm_fp32_is_own(void);

/* gm_sgemm always in float32 with the own kernel (the CPU must have AVX-512F), whatever the
 * settings; for tests and benchmarks. */
void gm_sgemm_f32(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);

/* gm_sgemm always in bf16 (the CPU must support it: gm_bf16_supported()), whatever the process's
 * precision; for tests and benchmarks. */
void gm_sgemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc);

#endif
