/* test_local.c - the optional local block per layer (local_kernel, weights/FORMAT.md):
 * x += local.out(GELU(dwconv(LN(x)))) between attention and the feed-forward block. The forward
 * pass and gradients of a local model and of a model with both conv and local against the PyTorch
 * reference fixtures (tests/fixtures/forward_local3, grad_model_local3, forward_conv3_local3,
 * grad_model_conv3_local3), finite differences (local taps included), packed-batch independence,
 * the identity warm start (exactly the function of the model without local blocks), the random
 * init, loader validation, and the CLI (init --local, train --init F --local K, checkpoint resume
 * and export of a local model). Prints the max abs diff of every comparison and fails when one is
 * over its tolerance. */
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "train.h"
#include "testutil.h"
#include "refutil.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the local models against the reference ----------------------------------------------------- */

/* Gradients of a loaded fixture model vs its grad fixture, then finite differences on it (from
 * kernel first_kernel: 2 = exact only, as for the conv fixture model: the loud fixture's
 * favor-softmax stabilisers are constants in the analytic gradient and a 1e-2 step moves
 * favor-relu pre-activations across the ReLU kink) and on a normally initialised model of the
 * same config with perturbed local taps (every kernel). */
static void test_model_grads(const pf_model *loaded, const char *fixture, int first_kernel,
                             const char *label) {
    st_file f = {0};
    char err[512];
    int lens[16];
    size_t T;
    const int32_t *tok, *tgt;
    int B = fx_batch(&f, fixture, lens, &T, &tok, &tgt);
    pf_model *m = NULL;
    if (B) CHECKF(pf_model_clone_owned(&m, loaded, err, sizeof err) == 0, "%s", err);
    if (!B || !m) { pf_model_free(m); if (B) st_close(&f); return; }
    grad_check(m, &f, tok, lens, B, tgt, label);
    fd_check(m, tok, lens, B, tgt, first_kernel, label);
    pf_model *im = NULL;
    CHECK(pf_model_init(&im, &m->cfg, 7, err, sizeof err) == 0);
    if (im) {
        for (int l = 0; l < im->cfg.n_layers; l++)
            for (int i = 0; i < im->cfg.local_kernel * im->cfg.d_model; i++)
                im->p.layers[l].local_conv[i] += (float)(0.25 * (((i * 7 + l) % 11) - 5) / 5.0);
        fd_check(im, tok, lens, B, tgt, 0, "standard init + perturbed local taps");
    }
    pf_model_free(im);
    pf_model_free(m);
    st_close(&f);
}

/* ---- identity warm start and random init ------------------------------------------------------- */

/* Identity local blocks added to base (K 1, 3, 5) and to conv (conv 3 + local 3) compute exactly
 * their function on the batch (tok, lens, B, tgt, T tokens); refusals of add_local; init --local. */
static void test_warm_start(const pf_model *base, const pf_model *conv, const int32_t *tok,
                            const int *lens, int B, const int32_t *tgt, size_t T) {
    char err[512];
    const size_t d = (size_t)base->cfg.d_model;
    printf("identity warm start (model.safetensors / model_conv3.safetensors + identity local blocks):\n");
    for (int K = 1; K <= 5; K += 2) {
        pf_model *ext = NULL;
        CHECKF(pf_model_add_local(&ext, base, K, err, sizeof err) == 0, "%s", err);
        if (!ext) continue;
        CHECK(ext->cfg.local_kernel == K && ext->cfg.conv_kernel == 0 &&
              ext->n_params == base->n_params + (3 * d + K * d + d * d) * base->cfg.n_layers);
        CHECK(ext->p.layers[1].local_ln_w[3] == 1.0f && ext->p.layers[1].local_ln_b[3] == 0.0f &&
              ext->p.layers[1].local_out_w[5] == 0.0f && ext->p.layers[1].local_out_b[5] == 0.0f &&
              ext->p.layers[1].local_conv[(K - 1) / 2 * d + 2] == 1.0f);
        char label[32];
        snprintf(label, sizeof label, "K %d", K);
        same_function(base, ext, tok, lens, B, tgt, T, label);
        pf_model_free(ext);
    }
    pf_model *both = NULL;
    CHECKF(pf_model_add_local(&both, conv, 3, err, sizeof err) == 0, "%s", err);
    if (both) {
        CHECK(both->cfg.conv_kernel == 3 && both->cfg.local_kernel == 3);
        same_function(conv, both, tok, lens, B, tgt, T, "conv 3 + local 3");
    }
    CHECK(pf_model_add_local(&both, both, 3, err, sizeof err) == -1 && strstr(err, "already") &&
          strstr(err, "local_kernel 3"));
    CHECK(pf_model_add_local(&both, base, 4, err, sizeof err) == -1 && strstr(err, "local_kernel"));
    CHECK(pf_model_add_local(&both, base, 0, err, sizeof err) == -1 && strstr(err, "local_kernel"));
    CHECK(pf_model_add_local(&both, base, 33, err, sizeof err) == -1);
    /* init --local K: the other tensors equal those of the init without local blocks (same
     * seed); LN 1/0, identity taps, out.weight N(0, 0.02 / sqrt(2 n_layers)), out.bias 0 */
    pf_config c = base->cfg;
    pf_model *i0 = NULL, *i3 = NULL;
    CHECK(pf_model_init(&i0, &c, 99, err, sizeof err) == 0);
    c.local_kernel = 3;
    c.conv_kernel = 3;
    CHECK(pf_model_init(&i3, &c, 99, err, sizeof err) == 0);
    if (i0 && i3) {
        static pf_tensor_info t0[64], t3[64];
        int n0 = pf_tensor_table(&i0->cfg, &i0->p, t0, 64), n3 = pf_tensor_table(&i3->cfg, &i3->p, t3, 64);
        int same = 1, shared = 0;
        for (int i = 0, j = 0; i < n0 && j < n3; j++) {
            if (strcmp(t0[i].name, t3[j].name) != 0) continue;
            same &= memcmp(*t0[i].slot, *t3[j].slot, t0[i].numel * sizeof(float)) == 0;
            i++;
            shared++;
        }
        const pf_layer *L1 = &i3->p.layers[1];
        double ss = 0;
        for (size_t i = 0; i < d * d; i++) ss += (double)L1->local_out_w[i] * L1->local_out_w[i];
        double sd = sqrt(ss / (double)(d * d)), want = 0.02 / sqrt(2.0 * c.n_layers);
        int taps = L1->local_conv[d + 4] == 1.0f && L1->local_conv[4] == 0.0f && L1->local_conv[2 * d + 4] == 0.0f;
        printf("  init --conv 3 --local 3: %d shared tensors %s; local.out.weight std %.4f (want %.4f); "
               "taps %s\n", shared, same ? "equal the init without" : "DIFFER", sd, want,
               taps ? "identity" : "NOT identity");
        CHECK(same && shared == n0 && taps && fabs(sd - want) < 0.25 * want);
        CHECK(L1->local_ln_w[0] == 1.0f && L1->local_ln_b[0] == 0.0f && L1->local_out_b[0] == 0.0f);
        CHECK(memcmp(i3->p.layers[0].local_out_w, L1->local_out_w, d * d * sizeof(float)) != 0);
    }
    pf_model_free(i0); pf_model_free(i3); pf_model_free(both);
}

/* ---- loader validation ------------------------------------------------------------------------- */

/* The local block's own loader cases (loader_cases adds the metadata values): a missing tensor
 * of each kind, wrong shapes, local tensors without local_kernel, a wrong local_kernel. */
static const variant_case LOCAL_CASES[] = {
    { "3", "layers.0.local.conv", NULL, 1, 0, 0, "'layers.0.local.conv' (shape [3, 16]) is missing; metadata local_kernel=3" },
    { "3", "layers.0.local.ln.bias", NULL, 1, 0, 0, "'layers.0.local.ln.bias' (shape [16]) is missing; metadata local_kernel=3" },
    { "3", "layers.0.local.out.weight", NULL, 1, 0, 0, "'layers.0.local.out.weight' (shape [16, 16]) is missing" },
    { "3", NULL, "layers.0.local.conv", 1, 0, 0, "'layers.0.local.conv' has shape [5, 16], expected [3, 16] = [local_kernel, d_model]" },
    { "3", NULL, "layers.0.local.out.weight", 1, 0, 0, "'layers.0.local.out.weight' has shape [5, 16], expected [16, 16]" },
    { NULL, NULL, NULL, 0, 1, 0, "unexpected tensor 'layers.0.local.ln.weight': local block tensors need metadata local_kernel" },
    { "5", NULL, NULL, 1, 0, 0, "has shape [3, 16], expected [5, 16] = [local_kernel, d_model]" },
};

/* ---- CLI: init --local, warm start, checkpoint resume and export ------------------------------- */

static void test_cli(const char *dir) {
    char cmd[4096], fa[512], p[4][512];
    if (cli_setup(dir, fa, p, 4) != 0) { CHECK(0); return; }
    pf_model *a = cli_init(dir, p[0], "--local 3 --conv 3", "local_kernel: 3", "--local 4");
    CHECK(a && a->cfg.local_kernel == 3 && a->cfg.conv_kernel == 3 &&
          a->p.layers[0].local_conv[16 + 3] == 1.0f && a->p.layers[0].local_conv[3] == 0.0f);
    pf_model_free(a);
    const char *bin = tu_bin();
    /* warm start: --init F --local 3 with lr 0 keeps exactly the same function, for F without
     * conv and for F with conv 3 (--conv 3 --local 3: the conv is already there) */
    const char *inits[2] = { "tests/fixtures/model.safetensors", "tests/fixtures/model_conv3.safetensors" };
    for (int i = 0; i < 2; i++) {
        pf_model *ws = cli_warm_start(dir, fa, inits[i], i ? "--local 3 --conv 3" : "--local 3", p[1]);
        CHECK(ws && ws->cfg.local_kernel == 3 && ws->cfg.conv_kernel == 3 * i);
        pf_model_free(ws);
    }
    /* both parts added at once: --init model.safetensors --conv 3 --local 3 */
    pf_model *ws = cli_warm_start(dir, fa, inits[0], "--conv 3 --local 3", p[2]);
    CHECK(ws && ws->cfg.local_kernel == 3 && ws->cfg.conv_kernel == 3);
    pf_model_free(ws);
    /* --local 5 on weights that already have local 3 is refused */
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --init %s --local 5 --out %s --steps 1 "
             "--quiet --threads 1 --eval-every 0 2>%s/refuse.log && exit 9; grep -q 'local_kernel 3' %s/refuse.log",
             bin, fa, p[1], p[3], dir, dir);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    /* a fresh conv + local model trains; --resume is exact; export keeps both */
    const char *arch = "--layers 1 --d-model 16 --heads 2 --d-ff 32 --features 8 --conv 3 --local 3 "
                       "--crop 64 --batch-tokens 256 --eval-every 0 --quiet --threads 1 --steps 6 --warmup 2 "
                       "--lr 3e-3 --seed 2";
    pf_model *u = resume_check(dir, fa, arch, "fresh --conv 3 --local 3 model");
    if (u) {
        int moved = 0;      /* the local taps trained (moved away from the identity) */
        for (int i = 0; i < 3 * 16; i++) moved |= u->p.layers[0].local_conv[i] != (i / 16 == 1 ? 1.0f : 0.0f);
        printf("  fresh --conv 3 --local 3 model: local taps %s\n", moved ? "trained" : "NOT trained");
        CHECK(moved && u->cfg.local_kernel == 3 && u->cfg.conv_kernel == 3);
    }
    pf_model_free(u);
    /* a checkpoint whose local_kernel is not a valid width is refused by --resume, naming the key */
    snprintf(cmd, sizeof cmd, "sed -i 's/\"local_kernel\":\"3\"/\"local_kernel\":\"4\"/' %s/r.ckpt && "
             "grep -q '\"local_kernel\":\"4\"' %s/r.ckpt && %s/performer train --fasta %s --out %s "
             "--ckpt %s/r.ckpt %s --resume 2>%s/badckpt.log && exit 9; "
             "grep -q 'checkpoint metadata local_kernel = \"4\" is invalid' %s/badckpt.log",
             dir, dir, bin, fa, p[3], dir, arch, dir, dir);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    cli_cleanup(dir);
}

int main(void) {
    pf_set_threads(1);
    char err[512];
    char dir[] = "/tmp/test_local.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    pf_model *m = NULL, *mc = NULL, *base = NULL, *conv = NULL;
    CHECKF(pf_model_load(&m, "tests/fixtures/model_local3.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(pf_model_load(&mc, "tests/fixtures/model_conv3_local3.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(pf_model_load(&base, "tests/fixtures/model.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(pf_model_load(&conv, "tests/fixtures/model_conv3.safetensors", err, sizeof err) == 0, "%s", err);
    if (m) {
        CHECK(m->cfg.local_kernel == 3 && m->cfg.conv_kernel == 0);
        forward_check(m, "tests/fixtures/forward_local3.safetensors", "local model (local_kernel 3)");
        test_model_grads(m, "tests/fixtures/grad_model_local3.safetensors", 2, "local model");
    }
    if (mc) {
        CHECK(mc->cfg.local_kernel == 3 && mc->cfg.conv_kernel == 3);
        forward_check(mc, "tests/fixtures/forward_conv3_local3.safetensors",
                      "conv + local model (conv_kernel 3, local_kernel 3)");
        test_model_grads(mc, "tests/fixtures/grad_model_conv3_local3.safetensors", 2,
                         "conv + local model");
    }
    st_file f = {0};
    int lens[16];
    size_t T;
    const int32_t *tok, *tgt;
    int B = fx_batch(&f, "tests/fixtures/grad_model.safetensors", lens, &T, &tok, &tgt);
    if (base && conv && B) test_warm_start(base, conv, tok, lens, B, tgt, T);
    if (B) st_close(&f);
    loader_cases(dir, "local_kernel", ".local.", LOCAL_CASES, sizeof LOCAL_CASES / sizeof LOCAL_CASES[0]);
    test_cli(dir);
    pf_model_free(m);
    pf_model_free(mc);
    pf_model_free(base);
    pf_model_free(conv);
    rmdir(dir);
    return TEST_DONE();
}
