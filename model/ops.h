/* ops.h - the layer operations of the Performer, forward and backward (llm.c style):
 * <op>_forward(out, in, ...) and <op>_backward(dinp, ..., dout, ...). All tensors are row-major
 * float32; N is a number of rows (positions), C/OC widths. Backward functions ACCUMULATE (+=) into
 * parameter gradients and into dinp unless the comment says they overwrite. Matrix products go
 * through gm_sgemm (gemm.h: OpenBLAS float32, or bf16 when the process selected it); the attention
 * products use cblas_sgemm directly, always float32. */
#ifndef PF_OPS_H
#define PF_OPS_H

#include <stddef.h>
#include <stdint.h>

#define FAVOR_SOFTMAX_EPS 1e-4f     /* stabiliser added to exp features (FORMAT.md) */
#define FAVOR_RELU_EPS 1e-3f        /* kernel epsilon of the generalized ReLU kernel */
#define PF_DW_MAX_K 31              /* largest (odd) width dwconv_forward/backward accept */

/* Fills pe[L, C] with the sinusoidal position encoding of FORMAT.md for positions 0..L-1. */
void pe_fill(float *pe, int L, int C);

/* out[p] = weight[tokens[p]] + pe[pos[p]] for p < N (pos = position inside its sequence). */
void embed_forward(float *out, const int32_t *tokens, const int *pos, const float *weight,
                   const float *pe, int N, int C);

/* dweight[tokens[p]] += dout[p]. */
void embed_backward(float *dweight, const float *dout, const int32_t *tokens, int N, int C);

/* LayerNorm over C: out = (x - mean) * rstd * w + b; saves mean[N], rstd[N] (may be NULL at
 * inference). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps);

/* Accumulates dinp, dw, db from dout given the saved mean/rstd. */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C);

/* out[N, OC] = inp[N, C] w[OC, C]^T + b[OC] (b may be NULL; added to each finished tile of the
 * product, after its sum). */
void matmul_forward(float *out, const float *inp, const float *w, const float *b, int N, int C,
                    int OC);

/* dinp += dout w; dw += dout^T inp; db += column sums of dout (dinp/db may be NULL). */
void matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int N, int C, int OC);

/* As matmul_backward, but dinp = dout w (overwritten, need not be initialised). */
void matmul_backward_set(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC);

/* out = GELU(inp) element-wise (exact erf form: a rational approximation of erf, within 1e-6 of
 * GELU in double; tests/unit/test_reference.c); out may equal inp. */
void gelu_forward(float *out, const float *inp, size_t n);

/* GELU (gelu_forward, gelu_bias_forward, matmul_gelu_forward) and gelu_backward on AVX-512
 * (on = 1, the default where the CPU has AVX-512F) or in portable C (0); the two differ in the
 * last bits. Returns 0, or -1 (unchanged) for 1 on a CPU without AVX-512F. For tests. */
int ops_gelu_avx512(int on);

/* dinp = dout * GELU'(inp) (overwrites dinp). */
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* x [N, C] = GELU(x + b) in place (the fc1 bias fused into the activation; inference only). */
void gelu_bias_forward(float *x, const float *b, int N, int C);

/* out [N, OC] = GELU(inp [N, C] w^T + b), the bias and GELU applied to each tile of the product as
 * it is finished (gm_epilogue): the same bits as matmul_forward without b then gelu_bias_forward,
 * without their second pass over out (inference only). */
void matmul_gelu_forward(float *out, const float *inp, const float *w, const float *b, int N, int C,
                         int OC);

/* out [N, OC] += inp [N, C] w^T + b (b may be NULL): a projection added straight onto the residual
 * stream (inference only). */
void matmul_residual(float *out, const float *inp, const float *w, const float *b, int N, int C,
                     int OC);

/* out = a + b, element-wise (a residual connection; out may be a or b). */
void residual_forward(float *out, const float *a, const float *b, size_t n);

/* Saved state of FAVOR+ attention for a packed batch of B sequences, T tokens in all (all heads).
 * Sizes: phi_q, phi_k [T, H, m]; kv [B, H, m, dh]; z [B, H, m]; den [T, H]. */
typedef struct {
    float *phi_q, *phi_k, *kv, *z, *den;
} favor_state;

/* Chooses the matrix products of FAVOR+ (favor_forward_batch: features, phi_k^T V, phi_q KV;
 * favor_backward_batch: their four gradients and the features'; the trainer's attention, and
 * inference's where favor_forward_fused declines the shape): 1 (the default) = through
 * gm_sgemm, i.e. bf16 operands with float32 sums when the process is in bf16 (gm_set_precision),
 * like the weight products (in bench/RESULTS.md the bf16 forward pass's speed over float32 rose
 * from 2.13x to 2.58x at 512 positions and from 1.97x to 2.57x at 4,096; the trainer 1.05x);
 * 0 = float32 OpenBLAS whatever the precision, for tests that compare the two. */
void favor_products_follow_precision(int on);

/* Bidirectional FAVOR+ attention of each sequence of a packed batch (lens[B], attention stays
 * inside a sequence): q, k, v, out are [T, H*dh] (head h = columns h*dh..); proj [m, dh]; relu
 * selects the generalized ReLU kernel, else positive softmax features. Overwrites out and the
 * state. Threads over (sequence, head) pairs; the result does not depend on the thread count. */
void favor_forward_batch(float *out, favor_state *st, const float *q, const float *k,
                         const float *v, const float *proj, const int *lens, int B, int H, int dh,
                         int m, int relu);

/* 1 when favor_forward_fused takes this shape: an AVX-512 CPU, dh = 32, m a multiple of 16 up to
 * 128. */
int favor_fused_ok(int dh, int m);

/* favor_forward_batch for inference: the same attention (out only, no saved state), each
 * (sequence, head) computed in one pass over its rows without storing the features, float32
 * whatever the precision. Returns 0, or -1 (nothing written) where favor_fused_ok(dh, m) is 0. */
int favor_forward_fused(float *out, const float *q, const float *k, const float *v,
                        const float *proj, const int *lens, int B, int H, int dh, int m, int relu);

/* favor_forward_batch of one sequence of length L. */
void favor_forward(float *out, favor_state *st, const float *q, const float *k, const float *v,
                   const float *proj, int L, int H, int dh, int m, int relu);

/* Backward of favor_forward_batch: OVERWRITES dq, dk, dv [T, H*dh] from dout and the saved state;
 * scratch holds favor_backward_scratch_batch(T, B, ...) floats. proj is constant (no gradient). */
void favor_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const favor_state *st, const float *q, const float *k, const float *v,
                          const float *proj, const int *lens, int B, int H, int dh, int m,
                          int relu, float *scratch);

/* Backward of favor_forward (one sequence of length L; scratch as favor_backward_batch with
 * T = L, B = 1). */
void favor_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                    const favor_state *st, const float *q, const float *k, const float *v,
                    const float *proj, int L, int H, int dh, int m, int relu, float *scratch);

/* Floats of scratch favor_backward_batch needs: 2*T*H*m + T*H*dh + B*H*m*dh + B*H*m + T*H. */
size_t favor_backward_scratch_batch(size_t T, int B, int H, int dh, int m);

/* Exact softmax attention of one sequence, one head at a time. att [H, L, L] receives the
 * attention probabilities when save_all is set, else att is one [L, L] buffer reused per head. */
void exact_forward(float *out, float *att, const float *q, const float *k, const float *v, int L,
                   int H, int dh, int save_all);

/* Backward of exact_forward with saved att [H, L, L]: OVERWRITES dq, dk, dv; scratch [L, L]. */
void exact_backward(float *dq, float *dk, float *dv, const float *dout, const float *att,
                    const float *q, const float *k, const float *v, int L, int H, int dh,
                    float *scratch);

/* Depthwise (per-channel) centred convolution along the positions of each sequence of a packed
 * batch (B sequences of lens[b] rows, back to back, N = sum lens): out[t, c] = sum_{j<K} w[j, c]
 * * inp[t + j - (K-1)/2, c], with inp = 0 outside the row's own sequence. K odd, <= PF_DW_MAX_K;
 * w [K, C];
 * OVERWRITES out [N, C] (out != inp). */
void dwconv_forward(float *out, const float *inp, const float *w, const int *lens, int B, int C,
                    int K);

/* Backward of dwconv_forward: dinp [N, C] += conv^T(dout); dw [K, C] += sum over positions of
 * dout[t, c] * inp[t + j - (K-1)/2, c] (deterministic: no reduction order depends on threads). */
void dwconv_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                     const int *lens, int B, int C, int K);

/* In place log_softmax of each row of x[N, C]. */
void log_softmax_rows(float *x, int N, int C);

/* Masked-LM cross-entropy: logits [N, C], targets[N] in 0..C-1 or -1 (unscored). Returns the
 * mean negative log-likelihood over scored rows (0 when none) and, when dlogits != NULL,
 * OVERWRITES dlogits with the gradient of that mean. *n_scored receives the count. */
double xent_forward_backward(float *dlogits, const float *logits, const int32_t *targets, int N,
                             int C, int *n_scored);

#endif
