/* test_conv.c - the optional depthwise convolution on q, k, v (conv_kernel, weights/FORMAT.md):
 * the dwconv op and a conv model's forward pass and gradients against the PyTorch reference
 * fixtures (tests/fixtures/grad_ops_conv, forward_conv3, grad_model_conv3), finite differences,
 * packed-batch independence, thread-count independence, identity warm start (exactly the conv-less function), loader validation, and the
 * CLI (init --conv, train --init F --conv K, checkpoint resume and export of a conv model).
 * Prints the max abs diff of every comparison and fails when one is over its tolerance. */
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "train.h"
#include "testutil.h"
#include "refutil.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the op ------------------------------------------------------------------------------------ */

static void test_op_fixture(void) {
    st_file f = {0};
    char err[512];
    CHECKF(st_open(&f, "tests/fixtures/grad_ops_conv.safetensors", err, sizeof err) == 0, "%s", err);
    int lens[16];
    size_t N;
    int B = fx_lens(&f, lens, &N);
    if (!B) { st_close(&f); return; }
    const int C = 20;
    printf("dwconv op vs reference (lens 1 2 6 11, C %d):\n", C);
    float out[20 * 20], dx[20 * 20], dw[5 * 20];
    for (int K = 1; K <= 5; K += 2) {
        char n[6][32];
        const char *sfx[] = { "x", "w", "dout", "out", "dx", "dw" };
        const float *t[6];
        for (int i = 0; i < 6; i++) {
            snprintf(n[i], sizeof n[i], "dwconv%d.%s", K, sfx[i]);
            t[i] = fx(&f, n[i], (i == 1 || i == 5) ? (size_t)K * C : N * C);
        }
        if (!t[0] || !t[1] || !t[2]) continue;
        dwconv_forward(out, t[0], t[1], lens, B, C, K);
        memset(dx, 0, sizeof dx);
        memset(dw, 0, sizeof dw);
        dwconv_backward(dx, dw, t[2], t[0], t[1], lens, B, C, K);
        compare(n[3], out, t[3], N * C, 1e-5 + 1e-4 * max_abs(t[3], N * C));
        compare(n[4], dx, t[4], N * C, 1e-5 + 1e-4 * max_abs(t[4], N * C));
        compare(n[5], dw, t[5], (size_t)K * C, 1e-5 + 1e-4 * max_abs(t[5], (size_t)K * C));
    }
    st_close(&f);
}

/* Straightforward dwconv (the definition) for checking the optimised op. */
static void naive_dwconv(float *out, const float *inp, const float *w, const int *lens, int B, int C,
                         int K) {
    size_t s0 = 0;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < lens[b]; t++)
            for (int c = 0; c < C; c++) {
                double acc = 0;
                for (int j = 0; j < K; j++) {
                    int u = t + j - (K - 1) / 2;
                    if (u >= 0 && u < lens[b]) acc += (double)w[j * C + c] * inp[(s0 + u) * C + c];
                }
                out[(s0 + t) * C + c] = (float)acc;
            }
        s0 += (size_t)lens[b];
    }
}

/* A batch big enough for the parallel paths, C channels, width K: 1 vs 2 threads give
 * bit-identical results (the threads' row ranges start elsewhere, so rows move between the
 * 8-row AVX-512 kernel, which runs where C % 16 == 0 and K <= 15, and the 4-row and 1-row
 * portable ones), the forward matches the definition, and the backward matches the transpose
 * identity <conv(x), g> = <x, conv^T(g)> and <dw, 1> = sum of the products. */
static void test_op_threads(int C, int K) {
    int lens[] = { 1, 2, 3, 700, 5, 260, 1 }, B = 7;
    size_t N = 0;
    for (int b = 0; b < B; b++) N += (size_t)lens[b];
    float *x = malloc(N * C * sizeof(float)), *g = malloc(N * C * sizeof(float));
    float *o1 = malloc(N * C * sizeof(float)), *o2 = malloc(N * C * sizeof(float));
    float *on = malloc(N * C * sizeof(float)), *d1 = calloc(N * C, sizeof(float));
    float *d2 = calloc(N * C, sizeof(float)), *w = malloc(sizeof(float) * K * C);
    float *dw1 = calloc((size_t)K * C, sizeof(float)), *dw2 = calloc((size_t)K * C, sizeof(float));
    uint64_t r = 12345;
    for (size_t i = 0; i < N * C; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(r >> 40) / (1 << 24) - 0.5);
        g[i] = (float)((double)((r >> 16) & 0xffffff) / (1 << 24) - 0.5);
    }
    for (int i = 0; i < K * C; i++) w[i] = (float)(0.1 * ((i * 37) % 17) - 0.8);
    pf_set_threads(1);
    dwconv_forward(o1, x, w, lens, B, C, K);
    dwconv_backward(d1, dw1, g, x, w, lens, B, C, K);
    pf_set_threads(2);
    dwconv_forward(o2, x, w, lens, B, C, K);
    dwconv_backward(d2, dw2, g, x, w, lens, B, C, K);
    pf_set_threads(1);
    naive_dwconv(on, x, w, lens, B, C, K);
    double dfw = max_diff(o1, on, N * C);
    printf("dwconv op, N %zu C %d K %d: forward vs definition max abs diff %.3g\n", N, C, K, dfw);
    CHECK(dfw < 1e-5);
    int same = memcmp(o1, o2, N * C * sizeof(float)) == 0 && memcmp(d1, d2, N * C * sizeof(float)) == 0 &&
               memcmp(dw1, dw2, sizeof(float) * K * C) == 0;
    printf("  1 vs 2 threads: %s\n", same ? "bit-identical" : "DIFFERENT");
    CHECK(same);
    /* <conv(x), g> == <x, dinp> and == sum_jc w[j,c] dw[j,c]  (both are sum_t,j,c of the same terms) */
    double a = 0, b = 0, c = 0;
    for (size_t i = 0; i < N * C; i++) { a += (double)o1[i] * g[i]; b += (double)x[i] * d1[i]; }
    for (int i = 0; i < K * C; i++) c += (double)w[i] * dw1[i];
    printf("  adjoint: <conv x, g> %.6f, <x, conv^T g> %.6f, <w, dw> %.6f\n", a, b, c);
    CHECK(fabs(a - b) < 1e-3 * (1 + fabs(a)) && fabs(a - c) < 1e-3 * (1 + fabs(a)));
    free(x); free(g); free(o1); free(o2); free(on); free(d1); free(d2); free(w); free(dw1); free(dw2);
}

/* ---- the conv model against the reference ------------------------------------------------------ */

static void test_model_grads(const pf_model *loaded) {
    st_file f = {0};
    char err[512];
    int lens[16];
    size_t T;
    const int32_t *tok, *tgt;
    int B = fx_batch(&f, "tests/fixtures/grad_model_conv3.safetensors", lens, &T, &tok, &tgt);
    if (!B) return;
    pf_model *m = NULL;
    CHECKF(pf_model_clone_owned(&m, loaded, err, sizeof err) == 0, "%s", err);
    if (!m) { st_close(&f); return; }
    grad_check(m, &f, tok, lens, B, tgt, "conv model");
    /* the loud fixture model: exact only (favor-softmax: stabilisers; favor-relu: a 1e-2 step
     * moves many pre-activations across the ReLU kink in this model). Every kernel is checked by
     * finite differences below on a normally initialised model with perturbed taps. */
    fd_check(m, tok, lens, B, tgt, 2, "conv fixture model");
    { /* normally initialised conv model with non-identity taps: every kernel */
        pf_model *im = NULL;
        CHECK(pf_model_init(&im, &m->cfg, 7, err, sizeof err) == 0);
        if (im) {
            for (int l = 0; l < im->cfg.n_layers; l++) {
                float *w[3] = { im->p.layers[l].conv_q, im->p.layers[l].conv_k, im->p.layers[l].conv_v };
                for (int j = 0; j < 3; j++)
                    for (int i = 0; i < im->cfg.conv_kernel * im->cfg.d_model; i++)
                        w[j][i] += (float)(0.25 * (((i * 7 + j * 3 + l) % 11) - 5) / 5.0);
            }
            fd_check(im, tok, lens, B, tgt, 0, "standard init + perturbed conv taps");
        }
        pf_model_free(im);
    }
    pf_model_free(m);
    st_close(&f);
}

/* ---- identity warm start ----------------------------------------------------------------------- */

static void test_warm_start(const pf_model *base) {
    char err[512];
    st_file f = {0};
    int lens[16];
    size_t T;
    const int32_t *tok, *tgt;
    int B = fx_batch(&f, "tests/fixtures/grad_model.safetensors", lens, &T, &tok, &tgt);
    if (!B) return;
    printf("identity warm start (model.safetensors extended with identity convs):\n");
    for (int K = 1; K <= 5; K += 2) {
        pf_model *ext = NULL;
        CHECKF(pf_model_add_conv(&ext, base, K, err, sizeof err) == 0, "%s", err);
        if (!ext) continue;
        CHECK(ext->cfg.conv_kernel == K && ext->n_params == base->n_params + 3u * K * base->cfg.d_model *
              base->cfg.n_layers);
        char label[16];
        snprintf(label, sizeof label, "K %d", K);
        same_function(base, ext, tok, lens, B, tgt, T, label);
        pf_model_free(ext);
    }
    /* init --conv K == init without conv + identity taps (same seed) */
    pf_config c = base->cfg;
    pf_model *i0 = NULL, *i3 = NULL, *x3 = NULL;
    CHECK(pf_model_init(&i0, &c, 99, err, sizeof err) == 0);
    c.conv_kernel = 3;
    CHECK(pf_model_init(&i3, &c, 99, err, sizeof err) == 0);
    if (i0 && i3 && pf_model_add_conv(&x3, i0, 3, err, sizeof err) == 0) {
        CHECK(i3->n_params == x3->n_params &&
              memcmp(i3->owned, x3->owned, i3->n_params * sizeof(float)) == 0);
        CHECK(i3->p.layers[1].conv_v[1 * c.d_model + 4] == 1.0f && i3->p.layers[1].conv_v[4] == 0.0f);
    } else CHECKF(0, "%s", err);
    pf_model_free(x3);
    x3 = NULL;
    CHECK(pf_model_add_conv(&x3, i3, 3, err, sizeof err) == -1 && strstr(err, "already"));
    CHECK(pf_model_add_conv(&x3, i0, 4, err, sizeof err) == -1 && strstr(err, "conv_kernel"));
    CHECK(pf_model_add_conv(&x3, i0, 0, err, sizeof err) == -1);
    pf_model_free(i0); pf_model_free(i3); pf_model_free(x3);
    st_close(&f);
}

/* ---- loader validation ------------------------------------------------------------------------- */

static void test_loader(const char *dir) {
    static const variant_case cases[] = {
        { "3", "layers.0.attn.conv_k", NULL, 1, 0, 0, "'layers.0.attn.conv_k' (shape [3, 16]) is missing; metadata conv_kernel=3" },
        { "3", NULL, "layers.0.attn.conv_v", 1, 0, 0, "'layers.0.attn.conv_v' has shape [5, 16], expected [3, 16]" },
        { NULL, NULL, NULL, 0, 1, 0, "unexpected tensor 'layers.0.attn.conv_q': depthwise convolution taps need metadata conv_kernel" },
        { "5", NULL, NULL, 1, 0, 0, "has shape [3, 16], expected [5, 16]" },
    };
    loader_cases(dir, "conv_kernel", "attn.conv_", cases, sizeof cases / sizeof cases[0]);
}

/* ---- CLI: init --conv, warm start, checkpoint resume and export -------------------------------- */

static void test_cli(const char *dir) {
    char cmd[4096], fa[512], p[6][512];
    const char *bin = tu_bin();
    if (cli_setup(dir, fa, p, 6) != 0) { CHECK(0); return; }
    pf_model *a = cli_init(dir, p[0], "--conv 3", "conv_kernel: 3", "--conv 4");
    if (a) {
        CHECK(a->cfg.conv_kernel == 3 && a->p.layers[0].conv_q[16 + 3] == 1.0f && a->p.layers[0].conv_q[3] == 0.0f);
        pf_model_free(a);
    }
    /* warm start: --init model.safetensors --conv 3 with lr 0 keeps exactly the same function */
    pf_model *ws = cli_warm_start(dir, fa, "tests/fixtures/model.safetensors", "--conv 3", p[1]);
    CHECK(ws && ws->cfg.conv_kernel == 3);
    pf_model_free(ws);
    /* --conv 5 on weights that already have conv 3 is refused */
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --init %s --conv 5 --out %s --steps 1 "
             "--quiet --threads 1 --eval-every 0 2>/dev/null", bin, fa, p[1], p[2]);
    CHECK(sh(cmd) == 1);
    /* a fresh conv model trains; --resume is exact; export keeps the conv */
    const char *arch = "--layers 1 --d-model 16 --heads 2 --d-ff 32 --features 8 --conv 3 --crop 64 "
                       "--batch-tokens 256 --eval-every 0 --quiet --threads 1 --steps 6 --warmup 2 --lr 3e-3 --seed 2";
    pf_model *u = resume_check(dir, fa, arch, "fresh --conv 3 model");
    if (u) {
        int moved = 0;      /* the taps trained (moved away from the identity) */
        for (int i = 0; i < 3 * 16; i++) moved |= u->p.layers[0].conv_k[i] != (i / 16 == 1 ? 1.0f : 0.0f);
        printf("  fresh --conv 3 model: taps %s\n", moved ? "trained" : "NOT trained");
        CHECK(moved && u->cfg.conv_kernel == 3);
    }
    pf_model_free(u);
    cli_cleanup(dir);
}

/* The AVX-512 8-row kernels (C % 16 == 0) and the portable ones give the same bits: channels are
 * independent, so the first 48 channels of a 56-channel run (portable kernels only) must equal a
 * 48-channel run on the same values (AVX-512 kernels where the CPU has them), for the output, the
 * input gradient and the weight gradient. */
static void test_kernel_paths(int K) {
    int lens[] = { 3, 700, 40, 260 }, B = 4;
    const int Ca = 48, Cb = 56;
    size_t N = 0;
    for (int b = 0; b < B; b++) N += (size_t)lens[b];
    float *x[2], *g[2], *o[2], *dx[2], *w[2], *dw[2];
    const int Cs[2] = { Ca, Cb };
    for (int v = 0; v < 2; v++) {
        x[v] = malloc(sizeof(float) * N * Cs[v]); g[v] = malloc(sizeof(float) * N * Cs[v]);
        o[v] = malloc(sizeof(float) * N * Cs[v]); dx[v] = calloc(N * Cs[v], sizeof(float));
        w[v] = malloc(sizeof(float) * K * Cs[v]); dw[v] = calloc((size_t)K * Cs[v], sizeof(float));
    }
    uint64_t r = 777;
    for (size_t p = 0; p < N; p++)
        for (int c = 0; c < Cb; c++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            const float xv = (float)((double)(r >> 40) / (1 << 24) - 0.5);
            const float gv = (float)((double)((r >> 16) & 0xffffff) / (1 << 24) - 0.5);
            for (int v = 0; v < 2; v++)
                if (c < Cs[v]) { x[v][p * Cs[v] + c] = xv; g[v][p * Cs[v] + c] = gv; }
        }
    for (int j = 0; j < K; j++)
        for (int c = 0; c < Cb; c++)
            for (int v = 0; v < 2; v++)
                if (c < Cs[v]) w[v][j * Cs[v] + c] = (float)(0.07 * ((j * 31 + c * 7) % 23) - 0.8);
    for (int v = 0; v < 2; v++) {
        dwconv_forward(o[v], x[v], w[v], lens, B, Cs[v], K);
        dwconv_backward(dx[v], dw[v], g[v], x[v], w[v], lens, B, Cs[v], K);
    }
    size_t diff = 0;
    for (size_t p = 0; p < N; p++)
        for (int c = 0; c < Ca; c++)
            diff += memcmp(&o[0][p * Ca + c], &o[1][p * Cb + c], sizeof(float)) != 0 ||
                    memcmp(&dx[0][p * Ca + c], &dx[1][p * Cb + c], sizeof(float)) != 0;
    for (int j = 0; j < K; j++)
        for (int c = 0; c < Ca; c++)
            diff += memcmp(&dw[0][j * Ca + c], &dw[1][j * Cb + c], sizeof(float)) != 0;
    printf("dwconv K %d: 48 channels (8-row kernels) vs the same channels of a 56-channel run: %zu values differ\n",
           K, diff);
    CHECK(diff == 0);
    for (int v = 0; v < 2; v++) { free(x[v]); free(g[v]); free(o[v]); free(dx[v]); free(w[v]); free(dw[v]); }
}

int main(void) {
    pf_set_threads(1);
    char err[512];
    char dir[] = "/tmp/test_conv.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    test_op_fixture();
    test_op_threads(40, 5);
    test_op_threads(48, 15);   /* the AVX-512 kernel: 3 groups of 16 channels, the widest K */
    test_op_threads(32, 7);
    test_op_threads(16, 1);
    test_op_threads(32, 17);   /* K over its limit: the portable kernels only */
    test_kernel_paths(15);
    test_kernel_paths(7);
    pf_model *m = NULL, *base = NULL;
    CHECKF(pf_model_load(&m, "tests/fixtures/model_conv3.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(pf_model_load(&base, "tests/fixtures/model.safetensors", err, sizeof err) == 0, "%s", err);
    if (m) {
        CHECK(m->cfg.conv_kernel == 3);
        forward_check(m, "tests/fixtures/forward_conv3.safetensors", "conv model (conv_kernel 3)");
        test_model_grads(m);
    }
    if (base) test_warm_start(base);
    test_loader(dir);
    test_cli(dir);
    pf_model_free(m);
    pf_model_free(base);
    rmdir(dir);
    return TEST_DONE();
}
