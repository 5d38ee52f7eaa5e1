/* test_favor.c - FAVOR+ properties from the paper, measured on the C kernels: the attention output
 * converges to exact softmax attention as the number of random features m grows, and orthogonal
 * features give a lower mean-squared error than i.i.d. Gaussian features at equal m (averaged over
 * seeds). Also: linear memory (no L x L buffer) and a 34,350-residue forward pass of a tiny model,
 * and the exact kernel's refusal over its memory limit; the packed-batch attention equals attention
 * of each sequence alone and does not depend on the thread count; a forward pass cut into groups
 * of sequences (pf_set_group_tokens), one after another or side by side on the threads
 * (pf_set_seq_parallel_len), gives what the whole batch at once gives (in bf16 bit for bit, on
 * each bf16 kernel); the fused inference attention equals the generic one. */
#include "gemm.h"
#include "model.h"
#include "ops.h"
#include "rng.h"
#include "testutil.h"
#include "refutil.h"

#include <stdlib.h>

/* Mean squared error of FAVOR+ softmax attention vs exact attention for one random problem. */
static double favor_mse(int L, int dh, int m, uint64_t seed, int orthogonal) {
    rng_t r;
    rng_seed(&r, seed);
    float *q = malloc(sizeof(float) * L * dh), *k = malloc(sizeof(float) * L * dh);
    float *v = malloc(sizeof(float) * L * dh), *P = malloc(sizeof(float) * m * dh);
    float *o1 = malloc(sizeof(float) * L * dh), *o2 = malloc(sizeof(float) * L * dh);
    float *att = malloc(sizeof(float) * L * L);
    float *phq = malloc(sizeof(float) * L * m), *phk = malloc(sizeof(float) * L * m);
    float *kv = malloc(sizeof(float) * m * dh), *z = malloc(sizeof(float) * m), *den = malloc(sizeof(float) * L);
    for (int i = 0; i < L * dh; i++) {
        q[i] = (float)(0.5 * rng_normal(&r));
        k[i] = (float)(0.5 * rng_normal(&r));
        v[i] = (float)rng_normal(&r);
    }
    if (orthogonal) pf_draw_projection(P, m, dh, seed * 31 + 7);
    else for (int i = 0; i < m * dh; i++) P[i] = (float)rng_normal(&r);
    favor_state st = { phq, phk, kv, z, den };
    favor_forward(o1, &st, q, k, v, P, L, 1, dh, m, 0);
    exact_forward(o2, att, q, k, v, L, 1, dh, 0);
    double e = 0;
    for (int i = 0; i < L * dh; i++) e += (double)(o1[i] - o2[i]) * (o1[i] - o2[i]);
    free(q); free(k); free(v); free(P); free(o1); free(o2); free(att); free(phq); free(phk);
    free(kv); free(z); free(den);
    return e / (L * dh);
}

static void test_convergence(void) {
    const int L = 64, dh = 16, seeds = 24;
    int ms[] = { 16, 64, 256 };
    double mse[3];
    for (int i = 0; i < 3; i++) {
        mse[i] = 0;
        for (int s = 0; s < seeds; s++) mse[i] += favor_mse(L, dh, ms[i], 1000 + s, 1);
        mse[i] /= seeds;
        printf("favor-softmax vs exact: m=%-4d MSE %.3g\n", ms[i], mse[i]);
    }
    CHECKF(mse[1] < mse[0] && mse[2] < mse[1], "MSE does not fall with m");
    CHECKF(mse[2] < 0.5 * mse[0], "MSE at m=256 (%g) not well below m=16 (%g)", mse[2], mse[0]);
}

static void test_orthogonal(void) {
    const int L = 64, dh = 16, m = 32, seeds = 60;
    double ort = 0, iid = 0;
    for (int s = 0; s < seeds; s++) {
        ort += favor_mse(L, dh, m, 5000 + s, 1);
        iid += favor_mse(L, dh, m, 5000 + s, 0);
    }
    printf("m=%d over %d seeds: orthogonal MSE %.4g, iid MSE %.4g (ratio %.3f)\n", m, seeds, ort / seeds,
           iid / seeds, ort / iid);
    CHECKF(ort < iid, "orthogonal features (%g) not better than iid (%g)", ort / seeds, iid / seeds);
}

static void test_long_sequence(void) {
    pf_config c = { .n_layers = 1, .d_model = 16, .n_heads = 2, .d_ff = 32, .n_features = 8,
                    .kernel = PF_KERNEL_FAVOR_SOFTMAX, .norm_eps = 1e-5f };
    char err[512];
    pf_model *m = NULL;
    CHECKF(pf_model_init(&m, &c, 3, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    const int n = 34350, L = n + 2;   /* titin */
    int32_t *tok = malloc(sizeof(int32_t) * L);
    float *logp = malloc(sizeof(float) * L * 20);
    tok[0] = TOK_CLS;
    tok[L - 1] = TOK_EOS;
    for (int i = 1; i <= n; i++) tok[i] = TOK_RES0 + (i * 7) % 20;
    tok[1234] = TOK_MASK;
    pf_ctx *ctx = pf_ctx_new(m);
    for (int kk = 0; kk < 2; kk++) {
        pf_kernel kern = kk ? PF_KERNEL_FAVOR_RELU : PF_KERNEL_FAVOR_SOFTMAX;
        int rc = pf_forward(ctx, m, kern, tok, &L, 1, logp, NULL, err, sizeof err);
        CHECKF(rc == 0, "%s forward at L=%d: %s", pf_kernel_name(kern), L, err);
        int finite = 1;
        for (size_t i = 0; i < (size_t)L * 20; i++) finite &= isfinite(logp[i]);
        CHECKF(finite, "non-finite log-probs at L=%d", L);
        double s = 0;
        for (int j = 0; j < 20; j++) s += exp(logp[1234 * 20 + j]);
        CHECK_CLOSE(s, 1.0, 1e-4);
    }
    printf("forward at L=%d (titin) with favor-softmax and favor-relu: ok\n", L);
    /* exact attention must refuse a length whose L x L buffer exceeds its limit */
    pf_set_exact_mem_limit((size_t)64 << 20);   /* 64 MiB -> 4096 positions */
    int rc = pf_forward(ctx, m, PF_KERNEL_EXACT, tok, &L, 1, logp, NULL, err, sizeof err);
    CHECKF(rc == -1 && strstr(err, "exact attention"), "exact kernel at L=%d: rc %d, err '%s'", L, rc, err);
    printf("exact at L=%d refused: %s\n", L, err);
    int L2 = 4000;
    tok[L2 - 1] = TOK_EOS;
    rc = pf_forward(ctx, m, PF_KERNEL_EXACT, tok, &L2, 1, logp, NULL, err, sizeof err);
    CHECKF(rc == 0, "exact at L=%d under the limit: %s", L2, err);
    pf_set_exact_mem_limit((size_t)1 << 30);
    pf_ctx_free(ctx);
    pf_model_free(m);
    free(tok); free(logp);
}

/* The feed-forward block in chunks of rows (pf_set_ffn_rows) gives the log-probs of the whole block
 * at once, for a sequence longer than the default chunk and chunks that do not divide it. */
static void test_ffn_rows(void) {
    pf_config c = { .n_layers = 2, .d_model = 32, .n_heads = 4, .d_ff = 64, .n_features = 16,
                    .kernel = PF_KERNEL_FAVOR_RELU, .norm_eps = 1e-5f };
    char err[512];
    pf_model *m = NULL;
    CHECKF(pf_model_init(&m, &c, 5, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    int lens[2] = { PF_FFN_ROWS_DEFAULT + 901, 77 };
    const int T = lens[0] + lens[1];
    int32_t *tok = malloc(sizeof(int32_t) * T);
    for (int i = 0; i < T; i++) tok[i] = TOK_RES0 + (i * 13 + i / 7) % 20;
    tok[0] = TOK_CLS; tok[lens[0] - 1] = TOK_EOS; tok[lens[0]] = TOK_CLS; tok[T - 1] = TOK_EOS;
    const size_t rows[] = { 0, PF_FFN_ROWS_DEFAULT, PF_FFN_ROWS_AMX_DEFAULT, 333, 1 };
    float *ref = NULL;
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        pf_set_ffn_rows(rows[r]);
        pf_ctx *ctx = pf_ctx_new(m);   /* a fresh arena sized for this setting */
        float *logp = malloc(sizeof(float) * T * 20);
        CHECKF(pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, lens, 2, logp, NULL, err, sizeof err) == 0, "%s", err);
        if (!ref) {
            ref = logp;
        } else {
            const double mx = max_diff(logp, ref, (size_t)T * 20);
            printf("feed-forward %zu rows at a time vs all at once: max |diff| %.3g\n", rows[r], mx);
            CHECKF(mx <= 1e-5, "ffn rows %zu: max |diff| %g", rows[r], mx);
            free(logp);
        }
        pf_ctx_free(ctx);
    }
    /* one arena across settings: growing the chunk after a smaller one grows the buffer */
    pf_ctx *ctx = pf_ctx_new(m);
    float *logp = malloc(sizeof(float) * T * 20);
    pf_set_ffn_rows(64);
    CHECK(pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, lens, 2, logp, NULL, err, sizeof err) == 0);
    pf_set_ffn_rows(0);
    CHECK(pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, lens, 2, logp, NULL, err, sizeof err) == 0);
    const double mx = max_diff(logp, ref, (size_t)T * 20);
    CHECKF(mx <= 1e-5, "reused arena: max |diff| %g", mx);
    pf_ctx_free(ctx);
    free(logp); free(ref); free(tok);
    pf_model_free(m);
    /* the initial settings pick the chunk and group sizes by the products' kernel (AMX tiles:
     * their own defaults); explicit ones hold everywhere */
    pf_set_ffn_rows(PF_FFN_ROWS_AUTO);
    pf_set_group_tokens(PF_GROUP_TOKENS_AUTO);
    CHECK(pf_ffn_rows() == PF_FFN_ROWS_DEFAULT && pf_group_tokens() == PF_GROUP_TOKENS_DEFAULT);
    CHECK(pf_seq_group_tokens() == PF_SEQ_GROUP_TOKENS_DEFAULT);
    if (gm_bf16_supported() && gm_set_precision(GM_BF16) == 0) {
        const int amx = gm_bf16_is_amx();
        if (gm_bf16_amx(0) == 0) {
            CHECK(pf_ffn_rows() == PF_FFN_ROWS_DEFAULT && pf_group_tokens() == PF_GROUP_TOKENS_DEFAULT);
            CHECK(pf_seq_group_tokens() == PF_SEQ_GROUP_TOKENS_DEFAULT);
            printf("bf16 on AVX-512 BF16: feed-forward rows %zu, group tokens %zu\n", pf_ffn_rows(), pf_group_tokens());
        }
        if (gm_amx_supported() && gm_bf16_amx(1) == 0) {
            CHECK(pf_ffn_rows() == PF_FFN_ROWS_AMX_DEFAULT && pf_group_tokens() == PF_GROUP_TOKENS_AMX_DEFAULT);
            CHECK(pf_seq_group_tokens() == PF_SEQ_GROUP_TOKENS_AMX_DEFAULT);
            printf("bf16 on AMX: feed-forward rows %zu, group tokens %zu, sequence-parallel group tokens %zu\n",
                   pf_ffn_rows(), pf_group_tokens(), pf_seq_group_tokens());
            pf_set_ffn_rows(333);
            pf_set_group_tokens(777);
            pf_set_seq_group_tokens(99);
            CHECK(pf_ffn_rows() == 333 && pf_group_tokens() == 777 && pf_seq_group_tokens() == 99);
            pf_set_ffn_rows(PF_FFN_ROWS_AUTO);
            pf_set_group_tokens(PF_GROUP_TOKENS_AUTO);
            pf_set_seq_group_tokens(PF_SEQ_GROUP_TOKENS_AUTO);
        }
        gm_bf16_amx(amx);
        gm_set_precision(GM_FP32);
    }
    CHECK(pf_ffn_rows() == PF_FFN_ROWS_DEFAULT && pf_group_tokens() == PF_GROUP_TOKENS_DEFAULT);
    pf_set_ffn_rows(333);
    CHECK(pf_ffn_rows() == 333);
    pf_set_ffn_rows(PF_FFN_ROWS_AUTO);
}

/* favor_forward_batch / favor_backward_batch over a packed batch (lengths 1 .. 300, so the
 * parallel paths run) equal favor_forward / favor_backward of each sequence on its own, for both
 * kernels, and the batch result does not depend on the thread count (bit-identical). */
static void test_packed_batch(void) {
    enum { B = 6, H = 4, dh = 8, m = 16 };
    const int lens[B] = { 1, 300, 7, 129, 2, 64 };
    const int d = H * dh;
    size_t T = 0;
    for (int b = 0; b < B; b++) T += (size_t)lens[b];
    rng_t r;
    rng_seed(&r, 77);
    float *buf[5];
    for (int i = 0; i < 5; i++) {   /* q, k, v, dout, proj */
        buf[i] = malloc(sizeof(float) * T * d);
        for (size_t j = 0; j < T * d; j++) buf[i][j] = (float)(0.7 * rng_normal(&r));
    }
    pf_draw_projection(buf[4], m, dh, 5);
    size_t ns = T * H * m * 2 + (size_t)B * H * m * dh + (size_t)B * H * m + T * H;
    size_t nsc = favor_backward_scratch_batch(T, B, H, dh, m);
    float *out[3], *st_buf[3], *grad[3][3], *sc = malloc(sizeof(float) * nsc);
    for (int v = 0; v < 3; v++) {   /* 0: per sequence, 1: batch on 2 threads, 2: batch on 1 */
        out[v] = malloc(sizeof(float) * T * d);
        st_buf[v] = malloc(sizeof(float) * ns);
        for (int g = 0; g < 3; g++) grad[v][g] = malloc(sizeof(float) * T * d);
    }
    for (int relu = 0; relu < 2; relu++) {
        for (int v = 0; v < 3; v++) {
            pf_set_threads(v == 2 ? 1 : 2);
            float *p = st_buf[v];
            favor_state st = { p, p + T * H * m, p + 2 * T * H * m,
                               p + 2 * T * H * m + (size_t)B * H * m * dh,
                               p + 2 * T * H * m + (size_t)B * H * m * dh + (size_t)B * H * m };
            if (v == 0) {
                size_t o = 0;
                for (int b = 0; b < B; b++) {
                    favor_state s1 = { st.phi_q + o * H * m, st.phi_k + o * H * m,
                                       st.kv + (size_t)b * H * m * dh, st.z + (size_t)b * H * m,
                                       st.den + o * H };
                    size_t od = o * d;
                    favor_forward(out[v] + od, &s1, buf[0] + od, buf[1] + od, buf[2] + od, buf[4],
                                  lens[b], H, dh, m, relu);
                    favor_backward(grad[v][0] + od, grad[v][1] + od, grad[v][2] + od, buf[3] + od,
                                   out[v] + od, &s1, buf[0] + od, buf[1] + od, buf[2] + od, buf[4],
                                   lens[b], H, dh, m, relu, sc);
                    o += (size_t)lens[b];
                }
            } else {
                favor_forward_batch(out[v], &st, buf[0], buf[1], buf[2], buf[4], lens, B, H, dh, m,
                                    relu);
                favor_backward_batch(grad[v][0], grad[v][1], grad[v][2], buf[3], out[v], &st,
                                     buf[0], buf[1], buf[2], buf[4], lens, B, H, dh, m, relu, sc);
            }
        }
        double e = max_diff(out[0], out[1], T * d);
        for (int g = 0; g < 3; g++) {
            double eg = max_diff(grad[0][g], grad[1][g], T * d);
            if (eg > e) e = eg;
        }
        int same = max_diff(out[1], out[2], T * d) == 0;
        for (int g = 0; g < 3; g++) same &= max_diff(grad[1][g], grad[2][g], T * d) == 0;
        printf("%s packed batch of %d (T=%zu) vs one sequence at a time: max |diff| %.3g "
               "(out, dq, dk, dv); 1 vs 2 threads: %s\n", relu ? "favor-relu" : "favor-softmax",
               B, T, e, same ? "bit-identical" : "DIFFERENT");
        CHECKF(e <= 1e-5, "packed batch differs from per-sequence attention by %g", e);
        CHECKF(same, "packed batch depends on the thread count");
    }
    pf_set_threads(2);
    for (int v = 0; v < 3; v++) {
        free(out[v]); free(st_buf[v]);
        for (int g = 0; g < 3; g++) free(grad[v][g]);
    }
    for (int i = 0; i < 5; i++) free(buf[i]);
    free(sc);
}

/* favor_forward_fused (the inference path) equals favor_forward_batch with float32 OpenBLAS
 * products over a packed batch whose lengths cut the fused kernel's blocks (4 query rows, 32 key
 * rows) everywhere, for both kernels and m = 16, 48, 64, 128 (one to eight groups of 16 features,
 * so every column-group width of the score kernel runs), with large scores (softmax's stabilisers);
 * it does not depend on the thread count, and it declines the shapes it does not take. */
static void test_fused(void) {
    enum { B = 9, H = 3, dh = 32 };
    const int lens[B] = { 1, 3, 4, 5, 31, 32, 33, 300, 67 };
    const int d = H * dh, ms[] = { 16, 48, 64, 128 };
    if (!favor_fused_ok(dh, 64)) {
        printf("favor_forward_fused: no AVX-512 on this CPU, the generic path runs (checked it declines)\n");
        float x = 0;
        CHECK(favor_forward_fused(&x, &x, &x, &x, &x, lens, 1, 1, dh, 64, 1) == -1);
        return;
    }
    size_t T = 0;
    for (int b = 0; b < B; b++) T += (size_t)lens[b];
    rng_t r;
    rng_seed(&r, 91);
    float *q = malloc(sizeof(float) * T * d), *k = malloc(sizeof(float) * T * d);
    float *v = malloc(sizeof(float) * T * d), *P = malloc(sizeof(float) * 128 * dh);
    float *ref = malloc(sizeof(float) * T * d), *o1 = malloc(sizeof(float) * T * d);
    float *o2 = malloc(sizeof(float) * T * d);
    float *stb = malloc(sizeof(float) * (T * H * 128 * 2 + (size_t)B * H * 128 * dh + (size_t)B * H * 128 + T * H));
    for (size_t j = 0; j < T * d; j++) {
        q[j] = (float)(1.5 * rng_normal(&r));   /* scores up to ~10: exp features need the stabilisers */
        k[j] = (float)(1.5 * rng_normal(&r));
        v[j] = (float)rng_normal(&r);
    }
    favor_products_follow_precision(0);
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
        const int m = ms[mi];
        pf_draw_projection(P, m, dh, 11 + (uint64_t)m);
        for (int relu = 0; relu < 2; relu++) {
            favor_state st = { stb, stb + T * H * m, stb + 2 * T * H * m,
                               stb + 2 * T * H * m + (size_t)B * H * m * dh,
                               stb + 2 * T * H * m + (size_t)B * H * m * dh + (size_t)B * H * m };
            favor_forward_batch(ref, &st, q, k, v, P, lens, B, H, dh, m, relu);
            pf_set_threads(2);
            CHECK(favor_forward_fused(o1, q, k, v, P, lens, B, H, dh, m, relu) == 0);
            pf_set_threads(1);
            CHECK(favor_forward_fused(o2, q, k, v, P, lens, B, H, dh, m, relu) == 0);
            const double e = max_diff(o1, ref, T * d), scale = max_abs(ref, T * d);
            const int same = max_diff(o1, o2, T * d) == 0;
            printf("%s m = %3d: fused vs generic (float32 OpenBLAS) max |diff| %.3g (max |out| %.3g); "
                   "1 vs 2 threads: %s\n", relu ? "favor-relu   " : "favor-softmax", m, e, scale,
                   same ? "bit-identical" : "DIFFERENT");
            CHECKF(e <= 2e-5 * (scale > 1 ? scale : 1), "fused FAVOR+ differs by %g (m = %d, relu %d)", e, m, relu);
            CHECKF(same, "fused FAVOR+ depends on the thread count (m = %d)", m);
        }
    }
    favor_products_follow_precision(1);
    pf_set_threads(2);
    /* shapes it declines, writing nothing */
    o1[0] = 42.0f;
    CHECK(favor_forward_fused(o1, q, k, v, P, lens, 1, 6, 16, 64, 1) == -1);   /* dh 16 */
    CHECK(favor_forward_fused(o1, q, k, v, P, lens, 1, 3, dh, 72, 1) == -1);   /* m not a multiple of 16 */
    CHECK(favor_forward_fused(o1, q, k, v, P, lens, 1, 3, dh, 256, 1) == -1);  /* m over 128 */
    CHECK(o1[0] == 42.0f);
    free(q); free(k); free(v); free(P); free(ref); free(o1); free(o2); free(stb);
}

/* T packed tokens of the framed sequences lens[] (<cls>, random residues, <eos>) drawn from seed;
 * the caller frees them. */
static int32_t *framed_tokens(const int *lens, size_t T, uint64_t seed) {
    int32_t *tok = malloc(sizeof(int32_t) * T);
    rng_t r;
    rng_seed(&r, seed);
    for (size_t i = 0, b = 0, p = 0; i < T; i++) {
        tok[i] = p == 0 ? TOK_CLS : p + 1 == (size_t)lens[b] ? TOK_EOS : TOK_RES0 + (int)rng_below(&r, 25);
        if (++p == (size_t)lens[b]) { p = 0; b++; }
    }
    return tok;
}

/* pf_forward_ex over one packed batch with group sizes from "whole batch" to "one sequence per
 * group" (and one sequence longer than the group): the same log-probs and hidden states as the
 * whole batch at once and as each sequence alone, for the final and an inner layer. */
static void test_forward_groups(void) {
    pf_config c = { .n_layers = 2, .d_model = 32, .n_heads = 4, .d_ff = 64, .n_features = 16,
                    .kernel = PF_KERNEL_FAVOR_RELU, .norm_eps = 1e-5f, .conv_kernel = 5,
                    .local_kernel = 5 };
    char err[512];
    pf_model *m = NULL;
    CHECKF(pf_model_init(&m, &c, 11, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    enum { B = 7 };
    /* the own float32 product sums each row alone: the same bits; OpenBLAS: float32 rounding */
    const double tol = gm_fp32_is_own() ? 0.0 : 1e-5;
    const int lens[B] = { 40, 3, 700, 129, 2, 64, 300 };
    size_t T = 0;
    for (int b = 0; b < B; b++) T += (size_t)lens[b];
    int32_t *tok = framed_tokens(lens, T, 9);
    const size_t d = 32;
    float *lp0 = malloc(sizeof(float) * T * 20), *h0 = malloc(sizeof(float) * T * d);
    float *lp = malloc(sizeof(float) * T * 20), *h = malloc(sizeof(float) * T * d);
    const size_t groups[] = { 0, 1, 64, 200, 800, PF_GROUP_TOKENS_DEFAULT };
    for (int layer = -1; layer <= 1; layer += 2) {
        pf_ctx *ctx = pf_ctx_new(m);
        pf_set_group_tokens(0);
        pf_set_seq_parallel_len(0);
        CHECKF(pf_forward_ex(ctx, m, PF_KERNEL_DEFAULT, tok, lens, B, lp0, h0, layer, err, sizeof err) == 0, "%s", err);
        pf_ctx_free(ctx);
        const size_t ngs = sizeof groups / sizeof groups[0];
        for (size_t g = 0; g < 3 * ngs; g++) {
            /* one group after another; sequence-parallel; sequence-parallel, 3 groups a thread */
            const int sp = (int)(g / ngs), per = sp == 2 ? 3 : 1;
            ctx = pf_ctx_new(m);   /* a fresh arena: sized for the largest group alone */
            pf_set_group_tokens(groups[g % ngs]);
            pf_set_seq_parallel_len(sp ? 1000 : 0);
            pf_set_seq_groups(per);
            CHECKF(pf_forward_ex(ctx, m, PF_KERNEL_DEFAULT, tok, lens, B, lp, h, layer, err, sizeof err) == 0, "%s", err);
            double e = max_diff(lp, lp0, T * 20), eh = max_diff(h, h0, T * d);
            printf("forward in groups of %zu tokens%s, %d a thread (layer %d) vs the whole batch: "
                   "max |diff| log-probs %.3g, hidden %.3g\n", groups[g % ngs],
                   sp ? ", sequence-parallel" : "", per, layer, e, eh);
            CHECKF(e <= tol && eh <= tol, "groups %zu (sp %d) differ by %g / %g", g, sp, e, eh);
            pf_ctx_free(ctx);
        }
        pf_set_seq_groups(PF_SEQ_GROUPS_DEFAULT);
        /* each sequence alone, with the default grouping */
        double e = 0;
        size_t off = 0;
        for (int b = 0; b < B; b++) {
            ctx = pf_ctx_new(m);
            CHECKF(pf_forward_ex(ctx, m, PF_KERNEL_DEFAULT, tok + off, &lens[b], 1, lp, h, layer, err, sizeof err) == 0, "%s", err);
            double eb = max_diff(lp, lp0 + off * 20, (size_t)lens[b] * 20);
            double ebh = max_diff(h, h0 + off * d, (size_t)lens[b] * d);
            if (eb > e) e = eb;
            if (ebh > e) e = ebh;
            off += (size_t)lens[b];
            pf_ctx_free(ctx);
        }
        printf("each sequence alone vs the whole batch (layer %d): max |diff| %.3g\n", layer, e);
        CHECKF(e <= tol, "a sequence alone differs from its batch by %g", e);
    }
    /* the exact kernel, sequence-parallel, against itself one sequence at a time */
    {
        pf_ctx *ctx = pf_ctx_new(m);
        pf_set_group_tokens(0);
        pf_set_seq_parallel_len(0);
        CHECKF(pf_forward(ctx, m, PF_KERNEL_EXACT, tok, lens, B, lp0, NULL, err, sizeof err) == 0, "%s", err);
        pf_set_group_tokens(PF_GROUP_TOKENS_AUTO);
        pf_set_seq_parallel_len(1000);
        CHECKF(pf_forward(ctx, m, PF_KERNEL_EXACT, tok, lens, B, lp, NULL, err, sizeof err) == 0, "%s", err);
        double e = max_diff(lp, lp0, T * 20);
        printf("exact kernel, sequence-parallel vs whole batch: max |diff| %.3g\n", e);
        CHECKF(e <= tol, "exact sequence-parallel differs by %g", e);
        pf_ctx_free(ctx);
    }
    pf_set_group_tokens(PF_GROUP_TOKENS_AUTO);
    pf_set_seq_parallel_len(PF_SEQ_PARALLEL_LEN_DEFAULT);
    free(tok); free(lp0); free(h0); free(lp); free(h);
    pf_model_free(m);
}

/* bf16 products (each kernel the CPU has: AMX tiles, AVX-512 BF16): a sequence's log-probs have
 * the same bits whatever batch or group it runs in - the whole batch sequence-parallel (default
 * group caps), in groups of 64 tokens or 100-token sequence-parallel groups, one group after
 * another, on one thread, and each sequence alone - so the daemon's cached bf16 results do not
 * depend on which requests were batched together. Sequence lengths are not multiples of 32, so
 * sequences fall in partial tiles of the products; d_ff 576 takes fc2 over three K blocks, and
 * four layers keep a difference from being absorbed by the bf16 rounding of the next product's
 * inputs (with two, the old AMX kernel's partial tiles passed). */
static void test_bf16_batch_bits(void) {
    if (!gm_bf16_supported()) { printf("bf16 batch bits: no AVX-512 BF16 on this CPU, skipped\n"); return; }
    pf_config c = { .n_layers = 4, .d_model = 64, .n_heads = 2, .d_ff = 576, .n_features = 32,
                    .kernel = PF_KERNEL_FAVOR_RELU, .norm_eps = 1e-5f, .conv_kernel = 5,
                    .local_kernel = 5 };
    char err[512];
    pf_model *m = NULL;
    CHECKF(pf_model_init(&m, &c, 13, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    enum { B = 9 };
    const int lens[B] = { 40, 3, 250, 129, 2, 64, 37, 71, 100 };
    size_t T = 0;
    for (int b = 0; b < B; b++) T += (size_t)lens[b];
    int32_t *tok = framed_tokens(lens, T, 17);
    float *lp0 = malloc(sizeof(float) * T * 20), *lp = malloc(sizeof(float) * T * 20);
    const int amx0 = gm_bf16_is_amx();
    CHECK(gm_set_precision(GM_BF16) == 0);
    for (int kern = 0; kern < 2; kern++) {   /* 0 AVX-512 BF16, 1 AMX */
        if (kern == 1 && !gm_amx_supported()) continue;
        CHECK(gm_bf16_amx(kern) == 0);
        pf_set_seq_parallel_len(1000);
        pf_ctx *ctx = pf_ctx_new(m);
        CHECKF(pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, lens, B, lp0, NULL, err, sizeof err) == 0, "%s", err);
        pf_ctx_free(ctx);
        int diff = 0;
        for (int v = 0; v < 4; v++) {
            /* 0 groups of 64 tokens, one after another; 1 sequence-parallel groups of 100 tokens;
             * 2 one thread; 3 each sequence alone */
            pf_set_seq_parallel_len(v == 1 ? 1000 : 0);
            pf_set_group_tokens(v == 0 ? 64 : PF_GROUP_TOKENS_AUTO);
            pf_set_seq_group_tokens(v == 1 ? 100 : PF_SEQ_GROUP_TOKENS_AUTO);
            if (v == 2) pf_set_threads(1);
            if (v < 3) {
                ctx = pf_ctx_new(m);
                CHECKF(pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok, lens, B, lp, NULL, err, sizeof err) == 0, "%s", err);
                pf_ctx_free(ctx);
            } else {
                for (int b = 0, off = 0; b < B; off += lens[b++]) {
                    ctx = pf_ctx_new(m);
                    CHECKF(pf_forward(ctx, m, PF_KERNEL_DEFAULT, tok + off, &lens[b], 1, lp + (size_t)off * 20,
                                      NULL, err, sizeof err) == 0, "%s", err);
                    pf_ctx_free(ctx);
                }
            }
            pf_set_threads(2);
            const int same = memcmp(lp, lp0, sizeof(float) * T * 20) == 0;
            CHECKF(same, "bf16 on %s: variant %d differs from the whole batch by %g", kern ? "AMX" : "AVX-512 BF16",
                   v, max_diff(lp, lp0, T * 20));
            diff += !same;
        }
        printf("bf16 on %s: groups of 64, sequence-parallel groups of 100, one thread, each sequence alone: "
               "%s the whole batch's bits\n", kern ? "AMX" : "AVX-512 BF16", diff ? "NOT" : "all");
    }
    pf_set_seq_parallel_len(PF_SEQ_PARALLEL_LEN_DEFAULT);
    pf_set_group_tokens(PF_GROUP_TOKENS_AUTO);
    pf_set_seq_group_tokens(PF_SEQ_GROUP_TOKENS_AUTO);
    gm_bf16_amx(amx0);
    CHECK(gm_set_precision(GM_FP32) == 0);
    free(tok); free(lp0); free(lp);
    pf_model_free(m);
}

/* pf_forward_span: a thread's share of a sequence-parallel batch, else the whole batch. */
static void test_forward_span(void) {
    int lens[10];
    for (int i = 0; i < 10; i++) lens[i] = 64;
    pf_set_threads(2);
    pf_set_seq_parallel_len(1024);
    CHECK(pf_forward_span(lens, 8) == 4 * 64);
    CHECK(pf_forward_span(lens, 9) == 5 * 64);     /* 9 equal sequences take as long as 10 */
    CHECK(pf_forward_span(lens, 10) == 5 * 64);
    CHECK(pf_forward_span(lens, 1) == 64);         /* one sequence: every operation on all threads */
    lens[0] = 2000;                                /* over the length limit: not sequence-parallel */
    CHECK(pf_forward_span(lens, 4) == 2000 + 3 * 64);
    lens[0] = 600;                                 /* 600 | 64 x 8 = 512: one thread each */
    CHECK(pf_forward_span(lens, 9) == 600);
    pf_set_seq_parallel_len(0);
    CHECK(pf_forward_span(lens, 9) == 600 + 8 * 64);
    /* two groups a thread, each to the thread free first: 10 x 64 are cut 2, 3, 2, 3 (the nearest
     * boundaries to quarters), so a thread gets 2 + 2 or 3 + 3 sequences, not 5 */
    for (int i = 0; i < 10; i++) lens[i] = 64;
    pf_set_seq_parallel_len(1024);
    pf_set_seq_groups(2);
    CHECK(pf_forward_span(lens, 8) == 4 * 64);
    CHECK(pf_forward_span(lens, 10) == 6 * 64);
    lens[0] = 600;                                 /* 600 | 64 | 3 x 64 | 4 x 64: 600 | 7 x 64 */
    CHECK(pf_forward_span(lens, 9) == 600);
    lens[1] = 700;                                 /* 600 | 700 | 64 | 6 x 64: the thread of
                                                      600 is free first for both the third and the
                                                      fourth (round-robin would give 700 + 384) */
    CHECK(pf_forward_span(lens, 9) == 600 + 64 + 6 * 64);
    pf_set_seq_groups(PF_SEQ_GROUPS_DEFAULT);
    lens[0] = 600;
    lens[1] = 64;
    pf_set_seq_parallel_len(0);
    pf_set_threads(1);
    pf_set_seq_parallel_len(1024);
    CHECK(pf_forward_span(lens, 9) == 600 + 8 * 64);   /* one thread */
    pf_set_seq_parallel_len(PF_SEQ_PARALLEL_LEN_DEFAULT);
    pf_set_threads(2);
}

int main(void) {
    pf_set_threads(2);
    test_forward_span();
    test_forward_groups();
    test_packed_batch();
    test_fused();
    test_convergence();
    test_orthogonal();
    test_long_sequence();
    test_ffn_rows();
    test_bf16_batch_bits();
    return TEST_DONE();
}
