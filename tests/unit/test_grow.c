/* test_grow.c - warm starts that change the architecture: `train --init F --layers N` appends
 * N - L identity layers on top of F's L layers (the same function at step 0, bit for bit), the new
 * layers learn once training starts, a grown model resumes exactly, and the architecture options
 * that cannot change on a warm start (--d-model, --heads, --d-ff, --features, --kernel) or that
 * would remove layers are refused with a message naming them instead of being ignored. */
#include "refutil.h"

/* Max |a - b| over the n floats of two tensors. */
static double tdiff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* pf_model_extend directly: layers added on top are the identity; the old layers are copied; the
 * new layers' inputs are drawn (not zero) and their residual projections are zero. */
static void test_extend(const pf_model *base) {
    char err[512];
    pf_model *g = NULL, *g2 = NULL, *bad = NULL;
    CHECKF(pf_model_extend(&g, base, 0, 0, base->cfg.n_layers + 2, 7, err, sizeof err) == 0, "%s", err);
    if (!g) return;
    const int L = base->cfg.n_layers, d = base->cfg.d_model, F = base->cfg.d_ff;
    CHECK(g->cfg.n_layers == L + 2 && strcmp(g->sha256, base->sha256) != 0);
    double fd = fwd_diff(base, g);
    printf("  extend %d -> %d layers: logp max abs diff %.3g vs the original\n", L, L + 2, fd);
    CHECK(fd == 0.0);
    CHECK(tdiff(g->p.layers[0].wq, base->p.layers[0].wq, (size_t)d * d) == 0 &&
          tdiff(g->p.layers[L - 1].fc2_w, base->p.layers[L - 1].fc2_w, (size_t)d * F) == 0);
    for (int l = L; l < L + 2; l++) {
        const pf_layer *n = &g->p.layers[l];
        double wq = 0, fc1 = 0, wo = 0, fc2 = 0;
        for (size_t i = 0; i < (size_t)d * d; i++) { wq = fmax(wq, fabs(n->wq[i])); wo = fmax(wo, fabs(n->wo[i])); }
        for (size_t i = 0; i < (size_t)d * F; i++) { fc1 = fmax(fc1, fabs(n->fc1_w[i])); fc2 = fmax(fc2, fabs(n->fc2_w[i])); }
        CHECKF(wq > 0 && fc1 > 0 && wo == 0 && fc2 == 0 && n->ln1_w[0] == 1.0f && n->ln2_b[0] == 0.0f,
               "layer %d: max |wq| %g |fc1| %g |wo| %g |fc2| %g", l, wq, fc1, wo, fc2);
    }
    /* deterministic per seed; another seed draws other new layers */
    CHECK(pf_model_extend(&g2, base, 0, 0, L + 2, 7, err, sizeof err) == 0 &&
          tdiff(g->p.layers[L].wq, g2->p.layers[L].wq, (size_t)d * d) == 0);
    pf_model_free(g2);
    CHECK(pf_model_extend(&g2, base, 0, 0, L + 2, 8, err, sizeof err) == 0 &&
          tdiff(g->p.layers[L].wq, g2->p.layers[L].wq, (size_t)d * d) > 0);
    /* the same number of layers is a plain copy (same sha256); fewer is refused */
    pf_model_free(g2);
    CHECK(pf_model_extend(&g2, base, 0, 0, L, 7, err, sizeof err) == 0 &&
          strcmp(g2->sha256, base->sha256) == 0);
    CHECK(pf_model_extend(&bad, base, 0, 0, L - 1, 7, err, sizeof err) != 0 && !bad &&
          strstr(err, "not removed") != NULL);
    printf("  extend to %d layers refused: %s\n", L - 1, err);
    pf_model_free(g);
    pf_model_free(g2);
}

/* The CLI: warm start, training moves the new layers, resume, refusals. */
static void test_cli(const char *dir) {
    char cmd[4096], fa[512], p[3][512];
    if (cli_setup(dir, fa, p, 3) != 0) { CHECK(0); return; }
    const char *bin = tu_bin(), *init = "tests/fixtures/model_conv3.safetensors";
    /* identity at lr 0, with --local added in the same warm start */
    pf_model *ws = cli_warm_start(dir, fa, init, "--layers 3 --local 3", p[0]);
    CHECK(ws && ws->cfg.n_layers == 3 && ws->cfg.local_kernel == 3 && ws->cfg.conv_kernel == 3);
    pf_model_free(ws);
    snprintf(cmd, sizeof cmd, "grep -q 'from 2 to 3 layers' %s/train.log", dir);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    /* with a learning rate the new layer's zero projections move first, then its inputs */
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --init %s --layers 3 --out %s --steps 8 "
             "--warmup 2 --lr 3e-3 --crop 64 --batch-tokens 256 --eval-every 0 --quiet --threads 1 "
             "--name grown", bin, fa, init, p[1]);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    pf_model *t = load(p[1]), *base = load(init);
    if (t && base) {
        const pf_layer *n = &t->p.layers[2];
        const int d = t->cfg.d_model;
        double wo = 0, fc2 = 0;
        for (size_t i = 0; i < (size_t)d * d; i++) wo = fmax(wo, fabs(n->wo[i]));
        for (size_t i = 0; i < (size_t)d * t->cfg.d_ff; i++) fc2 = fmax(fc2, fabs(n->fc2_w[i]));
        double moved = tdiff(t->p.layers[0].wq, base->p.layers[0].wq, (size_t)d * d);
        printf("  grown 2 -> 3 layers, 8 steps: new layer max |wo| %.3g, |fc2| %.3g; old layer 0 wq "
               "moved %.3g; name %s\n", wo, fc2, moved, t->cfg.name);
        CHECK(t->cfg.n_layers == 3 && wo > 0 && fc2 > 0 && moved > 0 && strcmp(t->cfg.name, "grown") == 0);
    }
    pf_model_free(t);
    pf_model_free(base);
    /* a grown model checkpoints and resumes exactly */
    char arch[512];
    snprintf(arch, sizeof arch, "--init %s --layers 3 --crop 64 --batch-tokens 256 --eval-every 0 --quiet "
             "--threads 1 --steps 6 --warmup 2 --lr 3e-3 --seed 2", init);
    pf_model *u = resume_check(dir, fa, arch, "grown 2 -> 3 layers");
    CHECK(u && u->cfg.n_layers == 3);
    pf_model_free(u);
    /* options that cannot change, and fewer layers, are refused with the option named (F: 2
     * layers, d 32, 4 heads, d_ff 64, 16 features, favor-softmax) */
    const struct { const char *opt, *want; } bad[] = {
        { "--d-model 64", "--d-model 64: the weights have 32" },
        { "--heads 8", "--heads 8: the weights have 4" },
        { "--d-ff 128", "--d-ff 128: the weights have 64" },
        { "--features 32", "--features 32: the weights have 16" },
        { "--kernel exact", "use --train-kernel exact" },
        { "--layers 1", "not removed" } };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --init %s %s --out %s --steps 1 --quiet "
                 "--threads 1 --eval-every 0 2>%s/refuse.log && exit 9; grep -q -- '%s' %s/refuse.log",
                 bin, fa, init, bad[k].opt, p[2], dir, bad[k].want, dir);
        CHECKF(sh(cmd) == 0, "%s", cmd);
    }
    /* options equal to the weights' are accepted */
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --init %s --d-model 32 --heads 4 --layers 2 "
             "--out %s --steps 1 --lr 0 --quiet --threads 1 --eval-every 0 --crop 64 --batch-tokens 256",
             bin, fa, init, p[2]);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    cli_cleanup(dir);
    snprintf(cmd, sizeof cmd, "rm -f %s/refuse.log", dir);
    CHECK(sh(cmd) == 0);
}

int main(void) {
    pf_set_threads(1);
    char err[512];
    char dir[] = "/tmp/test_grow.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    pf_model *base = NULL, *conv = NULL;
    CHECKF(pf_model_load(&base, "tests/fixtures/model.safetensors", err, sizeof err) == 0, "%s", err);
    CHECKF(pf_model_load(&conv, "tests/fixtures/model_conv3_local3.safetensors", err, sizeof err) == 0,
           "%s", err);
    printf("pf_model_extend (layers):\n");
    if (base) test_extend(base);
    if (conv) test_extend(conv);     /* new layers get identity conv taps and local blocks */
    test_cli(dir);
    pf_model_free(base);
    pf_model_free(conv);
    rmdir(dir);
    return TEST_DONE();
}
