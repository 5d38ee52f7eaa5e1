/* refutil.h - helpers of the C tests that compare against the PyTorch reference fixtures
 * (tests/fixtures): max differences, fixture tensor lookup, a reporting comparison that prints
 * the max abs diff and fails the test when it is over its tolerance, finite-difference checks
 * of the model's gradients, forward and identity-extension checks, weights-file variants for
 * loader tests, and the CLI's train / resume / export check. */
#ifndef PF_REFUTIL_H
#define PF_REFUTIL_H
#include "model.h"
#include "safetensors.h"
#include "testutil.h"
#include "train.h"

#include <sys/wait.h>
#include <unistd.h>

static const char *const KERNELS[] = { "favor-softmax", "favor-relu", "exact" };

/* Returns max |a - b| over n floats (NaN counts as infinitely far). */
static inline double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) { double d = fabs((double)a[i] - b[i]); if (!(d <= m)) m = d; }
    return m;
}

/* Returns max |a| over n floats. */
static inline double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

/* Returns the fixture tensor's data (numel elements, 0 = any) or fails the test. */
static inline const void *fx(const st_file *f, const char *name, size_t numel) {
    const st_tensor *t = st_find(f, name);
    CHECKF(t != NULL, "fixture tensor %s missing", name);
    if (!t) return NULL;
    CHECKF(numel == 0 || t->numel == numel, "%s has %zu elements, expected %zu", name, t->numel, numel);
    return t->numel == numel || numel == 0 ? t->data : NULL;
}

/* Compares and reports one tensor. */
static inline void compare(const char *what, const float *got, const float *want, size_t n, double tol) {
    if (!got || !want) return;
    double d = max_diff(got, want, n);
    printf("  %-48s max abs diff %.3g (tol %.3g)\n", what, d, tol);
    CHECKF(d <= tol, "%s: max abs diff %g > %g", what, d, tol);
}
/* Central finite differences vs the analytic gradient: one entry of every parameter tensor, and
 * every tap row of the conv tensors (attn.conv_* and local.conv). The favor-softmax stabilisers are constants in the analytic
 * gradient (FORMAT.md), so that kernel is checked only when first_kernel is 0 (a model whose
 * features stay far above the 1e-4 floor). */
static inline void fd_check(pf_model *m, const int32_t *tok, const int *lens, int B,
                            const int32_t *tgt, int first_kernel, const char *label) {
    char err[512];
    static pf_tensor_info info[64];
    int nt = pf_tensor_table(&m->cfg, &m->p, info, 64);
    tr_state *s = tr_state_new(m);
    float *g = malloc(m->n_params * sizeof(float)), *g2 = malloc(m->n_params * sizeof(float));
    printf("finite differences (%s):\n", label);
    for (int k = first_kernel; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        int ns;
        tr_forward_backward(s, kern, tok, lens, B, tgt, g, &ns, err, sizeof err);
        double worst = 0, worst_conv = 0, worst_local = 0;
        int checked = 0;
        for (int i = 0; i < nt; i++) {
            if (strstr(info[i].name, "attn.proj")) continue;
            int local = strstr(info[i].name, "local.conv") != NULL;
            int conv = local || strstr(info[i].name, "attn.conv_") != NULL;
            int reps = local ? m->cfg.local_kernel : conv ? m->cfg.conv_kernel : 1;
            for (int rep = 0; rep < reps; rep++) {
                float *p = *info[i].slot;
                size_t j = conv ? (size_t)rep * m->cfg.d_model + (size_t)(5 + 7 * rep) % m->cfg.d_model
                                : (info[i].numel * 7 + 3) / 11 % info[i].numel;
                float keep = p[j];
                const float h = 1e-2f;
                p[j] = keep + h;
                double lp = tr_forward_backward(s, kern, tok, lens, B, tgt, g2, &ns, err, sizeof err);
                p[j] = keep - h;
                double lm = tr_forward_backward(s, kern, tok, lens, B, tgt, g2, &ns, err, sizeof err);
                p[j] = keep;
                double fd = (lp - lm) / (2 * h), an = g[p + j - m->owned];
                double rel = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-3);
                if (rel > worst) worst = rel;
                if (conv && !local && rel > worst_conv) worst_conv = rel;
                if (local && rel > worst_local) worst_local = rel;
                CHECKF(rel < 0.05, "%s %s[%zu]: finite difference %g vs analytic %g", KERNELS[k],
                       info[i].name, j, fd, an);
                checked++;
            }
        }
        printf("  %-14s %d entries, worst relative error %.3g", KERNELS[k], checked, worst);
        if (m->cfg.conv_kernel > 0) printf(" (conv taps %.3g)", worst_conv);
        if (m->cfg.local_kernel > 0) printf(" (local taps %.3g)", worst_local);
        printf("\n");
    }
    free(g); free(g2);
    tr_state_free(s);
}

/* Loss and every gradient tensor of m on a fixture batch vs the PyTorch reference (the fixture's
 * loss.KERNEL and grad.KERNEL.TENSOR), for all three kernels: prints the max abs diffs (each conv
 * and local-block tensor on its own line) and fails over 1e-4 + 1e-3 * max |reference|. */
static inline void grad_check(pf_model *m, const st_file *f, const int32_t *tok, const int *lens,
                              int B, const int32_t *tgt, const char *label) {
    char err[512];
    tr_state *s = tr_state_new(m);
    float *g = malloc(m->n_params * sizeof(float));
    static pf_tensor_info info[64];
    int nt = pf_tensor_table(&m->cfg, &m->p, info, 64);
    printf("%s gradients vs reference:\n", label);
    for (int k = 0; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        int ns;
        double loss = tr_forward_backward(s, kern, tok, lens, B, tgt, g, &ns, err, sizeof err);
        char name[128];
        snprintf(name, sizeof name, "loss.%s", KERNELS[k]);
        const float *want = fx(f, name, 1);
        if (want) {
            printf("  %-48s |diff| %.3g\n", name, fabs(loss - want[0]));
            CHECK_CLOSE(loss, want[0], 1e-5);
        }
        double worst = 0, worst_abs = 0;
        const char *worst_name = "";
        int ntens = 0;
        for (int i = 0; i < nt; i++) {
            if (strstr(info[i].name, "attn.proj")) continue;
            snprintf(name, sizeof name, "grad.%s.%.63s", KERNELS[k], info[i].name);
            const float *w = fx(f, name, info[i].numel);
            if (!w) continue;
            const float *got = g + (*info[i].slot - m->owned);
            double d = max_diff(got, w, info[i].numel), tol = 1e-4 + 1e-3 * max_abs(w, info[i].numel);
            CHECKF(d <= tol, "%s: max abs diff %g > %g", name, d, tol);
            if (d / tol > worst) { worst = d / tol; worst_name = info[i].name; }
            if (d > worst_abs) worst_abs = d;
            if (strstr(info[i].name, "attn.conv_") || strstr(info[i].name, ".local."))
                printf("  %-48s max abs diff %.3g (tol %.3g)\n", name, d, tol);
            ntens++;
        }
        printf("  grad.%s.* (%d tensors): max abs diff %.3g, worst diff/tol %.3g (%s)\n", KERNELS[k],
               ntens, worst_abs, worst, worst_name);
    }
    free(g);
    tr_state_free(s);
}

/* Reads the lens of a fixture into lens[16]; returns B and the total in *T. */
static inline int fx_lens(const st_file *f, int *lens, size_t *T) {
    const st_tensor *lt = st_find(f, "lens");
    CHECK(lt != NULL && lt->numel <= 16);
    if (!lt || lt->numel > 16) return 0;
    *T = 0;
    for (size_t b = 0; b < lt->numel; b++) { lens[b] = ((const int32_t *)lt->data)[b]; *T += lens[b]; }
    return (int)lt->numel;
}
/* Opens the batch fixture at path into f (tokens, lens, targets): fills lens [16], *T, *tok and
 * *tgt and returns B, or returns 0 (f closed, the test failed) when it cannot be read. */
static inline int fx_batch(st_file *f, const char *path, int *lens, size_t *T, const int32_t **tok,
                           const int32_t **tgt) {
    char err[512];
    CHECKF(st_open(f, path, err, sizeof err) == 0, "%s", err);
    int B = fx_lens(f, lens, T);
    if (!B) { st_close(f); return 0; }
    *tok = fx(f, "tokens", *T);
    *tgt = fx(f, "targets", *T);
    return B;
}

/* A model's forward pass vs a forward fixture (path): logp and hidden of every kernel (tolerance
 * 1e-4), and packed-batch independence (each sequence alone and the reversed batch == the batch). */
static inline inline void forward_check(const pf_model *m, const char *path, const char *label) {
    st_file f = {0};
    char err[512];
    CHECKF(st_open(&f, path, err, sizeof err) == 0, "%s", err);
    int lens[16];
    size_t T;
    int B = fx_lens(&f, lens, &T);
    if (!B) { st_close(&f); return; }
    const int32_t *tok = fx(&f, "tokens", T);
    int d = m->cfg.d_model;
    float *logp = malloc(T * 20 * sizeof(float)), *hid = malloc(T * d * sizeof(float));
    float *one = malloc(T * 20 * sizeof(float)), *rlp = malloc(T * 20 * sizeof(float));
    int32_t *rt = malloc(T * sizeof *rt);
    pf_ctx *ctx = pf_ctx_new(m);
    printf("%s forward vs reference (B=%d, T=%zu):\n", label, B, T);
    for (int k = 0; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        CHECKF(pf_forward(ctx, m, kern, tok, lens, B, logp, hid, err, sizeof err) == 0, "%s", err);
        char name[64];
        snprintf(name, sizeof name, "logp.%s", KERNELS[k]);
        compare(name, logp, fx(&f, name, T * 20), T * 20, 1e-4);
        snprintf(name, sizeof name, "hidden.%s", KERNELS[k]);
        compare(name, hid, fx(&f, name, T * d), T * d, 1e-4);
        /* packed-batch independence: alone == in the batch == in the reversed batch */
        size_t off = 0;
        for (int b = 0; b < B; b++) {
            CHECK(pf_forward(ctx, m, kern, tok + off, &lens[b], 1, one + off * 20, NULL, err, sizeof err) == 0);
            off += lens[b];
        }
        double worst = max_diff(one, logp, T * 20);
        int rl[16];
        size_t o2 = 0;
        for (int b = B - 1; b >= 0; b--) {
            size_t src = 0;
            for (int j = 0; j < b; j++) src += lens[j];
            memcpy(rt + o2, tok + src, lens[b] * sizeof *rt);
            rl[B - 1 - b] = lens[b];
            o2 += lens[b];
        }
        CHECK(pf_forward(ctx, m, kern, rt, rl, B, rlp, NULL, err, sizeof err) == 0);
        size_t ro = T, lo = 0;      /* sequence b sits at T - (lens[0] + .. + lens[b]) reversed */
        for (int b = 0; b < B; b++) {
            ro -= lens[b];
            double dd = max_diff(rlp + ro * 20, logp + lo * 20, lens[b] * 20);
            if (dd > worst) worst = dd;
            lo += lens[b];
        }
        printf("  packed-batch independence %-21s max abs diff %.3g (alone, reversed batch)\n",
               KERNELS[k], worst);
        CHECKF(worst <= 1e-5, "%s: alone / reversed vs batch differ by %g", KERNELS[k], worst);
    }
    pf_ctx_free(ctx);
    free(logp); free(hid); free(one); free(rlp); free(rt);
    st_close(&f);
}
/* Runs a shell command quietly; returns its exit status. */
static inline int sh(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* Loads path and returns the model or NULL (failing the test). */
static inline pf_model *load(const char *path) {
    char err[512];
    pf_model *m = NULL;
    CHECKF(pf_model_load(&m, path, err, sizeof err) == 0, "%s", err);
    return m;
}

/* Compares the forward passes of a and b on one sequence (all kernels); returns max abs diff. */
static inline double fwd_diff(const pf_model *a, const pf_model *b) {
    char err[512];
    static const char *seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACVRESVPALL";
    int L = (int)strlen(seq) + 2;
    int32_t *tok = malloc(L * sizeof *tok);
    tok[0] = TOK_CLS;
    tok[L - 1] = TOK_EOS;
    for (int i = 0; i + 2 < L; i++) tok[i + 1] = tok_residue_id(seq[i]);
    float *x = malloc(L * 20 * sizeof(float)), *y = malloc(L * 20 * sizeof(float));
    double worst = 0;
    pf_ctx *ca = pf_ctx_new(a), *cb = pf_ctx_new(b);
    for (int k = 0; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        CHECK(pf_forward(ca, a, kern, tok, &L, 1, x, NULL, err, sizeof err) == 0);
        CHECK(pf_forward(cb, b, kern, tok, &L, 1, y, NULL, err, sizeof err) == 0);
        double d = max_diff(x, y, (size_t)L * 20);
        if (d > worst) worst = d;
    }
    pf_ctx_free(ca); pf_ctx_free(cb);
    free(tok); free(x); free(y);
    return worst;
}

/* Checks that ext (m extended with identity parts) computes exactly m's function on a fixture
 * batch: bit-identical logp for every kernel, and in training the same loss and bit-identical
 * gradients of the tensors they share. label names ext in the report. */
static inline void same_function(const pf_model *m, pf_model *ext, const int32_t *tok,
                                 const int *lens, int B, const int32_t *tgt, size_t T,
                                 const char *label) {
    char err[512];
    pf_model *own = NULL;
    float *a = malloc(T * 20 * sizeof(float)), *b = malloc(T * 20 * sizeof(float));
    pf_ctx *c1 = pf_ctx_new(m), *c2 = pf_ctx_new(ext);
    for (int k = 0; k < 3; k++) {
        pf_kernel kern;
        pf_kernel_parse(KERNELS[k], &kern);
        CHECK(pf_forward(c1, m, kern, tok, lens, B, a, NULL, err, sizeof err) == 0);
        CHECK(pf_forward(c2, ext, kern, tok, lens, B, b, NULL, err, sizeof err) == 0);
        int same = memcmp(a, b, T * 20 * sizeof(float)) == 0;
        printf("  %s %-14s logp max abs diff %.3g (%s)\n", label, KERNELS[k], max_diff(a, b, T * 20),
               same ? "bit-identical" : "DIFFERENT");
        CHECKF(same, "%s %s: the extended model's logp differ from the original's", label, KERNELS[k]);
    }
    /* training sees the same function: same loss, same gradients of the shared tensors */
    CHECK(pf_model_clone_owned(&own, m, err, sizeof err) == 0);
    if (own) {
        tr_state *s1 = tr_state_new(own), *s2 = tr_state_new(ext);
        float *g1 = malloc(own->n_params * sizeof(float)), *g2 = malloc(ext->n_params * sizeof(float));
        int ns;
        double l1 = tr_forward_backward(s1, PF_KERNEL_FAVOR_RELU, tok, lens, B, tgt, g1, &ns, err, sizeof err);
        double l2 = tr_forward_backward(s2, PF_KERNEL_FAVOR_RELU, tok, lens, B, tgt, g2, &ns, err, sizeof err);
        static pf_tensor_info t1[64], t2[64];
        int n1 = pf_tensor_table(&own->cfg, &own->p, t1, 64), n2 = pf_tensor_table(&ext->cfg, &ext->p, t2, 64);
        int gsame = 1;
        for (int i = 0, j = 0; i < n1 && j < n2; j++) {
            if (strcmp(t1[i].name, t2[j].name) != 0) continue;
            gsame &= memcmp(g1 + (*t1[i].slot - own->owned), g2 + (*t2[j].slot - ext->owned),
                            t1[i].numel * sizeof(float)) == 0;
            i++;
        }
        printf("  %s training: loss %.9g vs %.9g, shared gradients %s\n", label, l1, l2,
               gsame ? "bit-identical" : "DIFFERENT");
        CHECK(l1 == l2 && gsame);
        free(g1); free(g2);
        tr_state_free(s1); tr_state_free(s2);
    }
    pf_ctx_free(c1); pf_ctx_free(c2);
    pf_model_free(own);
    free(a); free(b);
}

/* Writes m's tensors to path with metadata key = val (val NULL: key absent). drop: a tensor name
 * to leave out; reshape: a tensor name whose first dimension becomes 5 (data taken from a buffer
 * big enough); extra: a model whose tensors with part in their name are added. Returns 0 or -1. */
static inline int write_variant(const char *path, pf_model *m, const char *key, const char *val,
                                const char *drop, const char *reshape, pf_model *extra,
                                const char *part) {
    static pf_tensor_info t[64], x[64];
    int n = pf_tensor_table(&m->cfg, &m->p, t, 64), nx = 0, k = 0;
    if (extra) nx = pf_tensor_table(&extra->cfg, &extra->p, x, 64);
    st_out_tensor o[128];
    static float big[5 * 64];
    for (int i = 0; i < n; i++) {
        if (drop && strcmp(t[i].name, drop) == 0) continue;
        o[k].name = t[i].name;
        o[k].ndim = t[i].ndim;
        o[k].shape[0] = t[i].shape[0];
        o[k].shape[1] = t[i].shape[1];
        o[k].data = *t[i].slot;
        if (reshape && strcmp(t[i].name, reshape) == 0) { o[k].shape[0] = 5; o[k].data = big; }
        k++;
    }
    for (int i = 0; i < nx; i++)
        if (strstr(x[i].name, part)) {
            o[k].name = x[i].name; o[k].ndim = x[i].ndim;
            o[k].shape[0] = x[i].shape[0]; o[k].shape[1] = x[i].shape[1];
            o[k].data = *x[i].slot;
            k++;
        }
    char ints[5][16], err[256];
    int v[5] = { m->cfg.n_layers, m->cfg.d_model, m->cfg.n_heads, m->cfg.d_ff, m->cfg.n_features };
    for (int i = 0; i < 5; i++) snprintf(ints[i], sizeof ints[i], "%d", v[i]);
    const char *keys[] = { "format", "format_version", "name", "vocab", "n_layers", "d_model", "n_heads",
                           "d_ff", "kernel", "n_features", "position", "norm_eps", "trained",
                           "provenance", key };
    const char *vals[] = { "performer-protein", "1", "t", tok_vocab_json(), ints[0], ints[1], ints[2],
                           ints[3], "favor-softmax", ints[4], "sinusoidal", "1e-05", "false", "",
                           val ? val : "" };
    return st_write(path, o, k, keys, vals, val ? 15 : 14, err, sizeof err);
}

/* Trains a fresh model (arch: architecture and training options) on FASTA fa in dir three ways:
 * uninterrupted, stopped after 3 steps and resumed from a checkpoint, and exported from that
 * checkpoint; checks that all three are identical and the export is marked trained. Returns the
 * uninterrupted model (NULL on failure) for the caller to inspect and free. */
static inline pf_model *resume_check(const char *dir, const char *fa, const char *arch,
                                     const char *label) {
    char cmd[4096], p[3][512];
    const char *bin = tu_bin();
    const char *nm[3] = { "fresh", "resumed", "exported" };
    for (int i = 0; i < 3; i++) snprintf(p[i], sizeof p[i], "%s/%s.safetensors", dir, nm[i]);
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --out %s %s 2>/dev/null", bin, fa, p[0], arch);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --out %s --ckpt %s/r.ckpt %s --stop-after 3 "
             "2>/dev/null && %s/performer train --fasta %s --out %s --ckpt %s/r.ckpt %s --resume 2>/dev/null",
             bin, fa, p[1], dir, arch, bin, fa, p[1], dir, arch);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "%s/performer export --ckpt %s/r.ckpt --out %s > /dev/null", bin, dir, p[2]);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    pf_model *u = load(p[0]), *r = load(p[1]), *e = load(p[2]);
    if (u && r && e) {
        int same = u->n_params == r->n_params && r->n_params == e->n_params;
        enum { CAP = 512 };
        static pf_tensor_info tu[CAP], tr[CAP], te[CAP];
        int n = pf_tensor_table(&u->cfg, &u->p, tu, CAP);
        same = same && n <= CAP && pf_tensor_table(&r->cfg, &r->p, tr, CAP) == n &&
               pf_tensor_table(&e->cfg, &e->p, te, CAP) == n;
        for (int i = 0; same && i < n; i++)
            same = memcmp(*tu[i].slot, *tr[i].slot, tu[i].numel * 4) == 0 &&
                   memcmp(*tr[i].slot, *te[i].slot, tu[i].numel * 4) == 0;
        same = same && u->cfg.conv_kernel == e->cfg.conv_kernel &&
               u->cfg.local_kernel == e->cfg.local_kernel;
        printf("  %s: resumed run %s uninterrupted run, export %s\n", label, same ? "==" : "!=",
               same ? "identical" : "differs");
        CHECK(same && e->cfg.trained);
    }
    pf_model_free(r); pf_model_free(e);
    return u;
}

/* One loader case of an optional part: metadata value (NULL: key absent), a tensor to drop, a
 * tensor whose first dimension becomes 5, whether the file is the model with the part (use3) or
 * without it plus the part's tensors (extra), whether it loads, and a text the error must hold. */
typedef struct { const char *val, *drop, *reshape; int use3, extra, ok; const char *want; } variant_case;

/* Returns cfg's width of the optional part named by its metadata key (conv_kernel/local_kernel). */
static inline int *part_width(pf_config *cfg, const char *key) {
    return strcmp(key, "conv_kernel") == 0 ? &cfg->conv_kernel : &cfg->local_kernel;
}

/* Loader validation of an optional part (metadata key, tensors with part in their name) with a
 * 1-layer d 16 model with the part (width 3) and one without: the metadata values 3, absent, 0
 * (load) and 4, 33, -1, 3x, "" (fail), then each of cases (loads or fails with its text), the save / load round trip (the part-less file has no key), and config validation of
 * the key's values. */
static inline void loader_cases(const char *dir, const char *key, const char *part,
                                const variant_case *cases, size_t n) {
    char err[768], p[512];
    pf_config c = { .n_layers = 1, .d_model = 16, .n_heads = 2, .d_ff = 32, .n_features = 8,
                    .kernel = PF_KERNEL_FAVOR_SOFTMAX, .norm_eps = 1e-5f };
    pf_model *m3 = NULL, *m0 = NULL, *l = NULL;
    *part_width(&c, key) = 3;
    CHECK(pf_model_init(&m3, &c, 5, err, sizeof err) == 0);
    *part_width(&c, key) = 0;
    CHECK(pf_model_init(&m0, &c, 5, err, sizeof err) == 0);
    if (!m3 || !m0) return;
    printf("loader validation (%s):\n", key);
    snprintf(p, sizeof p, "%s/v.safetensors", dir);
    /* the metadata values every part shares, then the part's own cases */
    char w4[64], w33[64];
    snprintf(w4, sizeof w4, "%s = \"4\" is invalid", key);
    snprintf(w33, sizeof w33, "%s = \"33\" is invalid", key);
    const variant_case common[] = {
        { "3", NULL, NULL, 1, 0, 1, NULL }, { NULL, NULL, NULL, 0, 0, 1, NULL },
        { "0", NULL, NULL, 0, 0, 1, NULL }, { "4", NULL, NULL, 1, 0, 0, w4 },
        { "33", NULL, NULL, 1, 0, 0, w33 }, { "-1", NULL, NULL, 1, 0, 0, key },
        { "3x", NULL, NULL, 1, 0, 0, key }, { "", NULL, NULL, 1, 0, 0, key },
    };
    const size_t nc = sizeof common / sizeof common[0];
    for (size_t i = 0; i < nc + n; i++) {
        const variant_case *k = i < nc ? &common[i] : &cases[i - nc];
        CHECK(write_variant(p, k->use3 ? m3 : m0, key, k->val, k->drop, k->reshape,
                            k->extra ? m3 : NULL, part) == 0);
        err[0] = '\0';
        int rc = pf_model_load(&l, p, err, sizeof err);
        printf("  %s %-5s%s%s%s%s -> %s\n", key, k->val ? k->val : "(none)", k->drop ? " minus " : "",
               k->drop ? k->drop : "", k->reshape ? " [5, d] " : "", k->extra ? " plus its tensors" : "",
               rc == 0 ? "loads" : err);
        CHECKF((rc == 0) == k->ok, "case %zu: rc %d (%s)", i, rc, err);
        if (k->want) CHECKF(strstr(err, k->want) != NULL, "case %zu: error '%s' lacks '%s'", i, err, k->want);
        if (rc == 0)
            CHECK(*part_width(&l->cfg, key) == (k->use3 ? 3 : 0) &&
                  l->n_params == (k->use3 ? m3 : m0)->n_params);
        pf_model_free(l);
        l = NULL;
    }
    CHECK(pf_model_save(m3, p, err, sizeof err) == 0);
    CHECK(pf_model_load(&l, p, err, sizeof err) == 0);
    if (l) {
        static pf_tensor_info ta[64], tb[64];
        int nt = pf_tensor_table(&l->cfg, &l->p, ta, 64), same = l->n_params == m3->n_params;
        pf_tensor_table(&m3->cfg, &m3->p, tb, 64);
        for (int i = 0; same && i < nt; i++) same = memcmp(*ta[i].slot, *tb[i].slot, ta[i].numel * 4) == 0;
        CHECK(*part_width(&l->cfg, key) == 3 && same);
        pf_model_free(l);
        l = NULL;
    }
    st_file f = {0};
    CHECK(pf_model_save(m0, p, err, sizeof err) == 0 && st_open(&f, p, err, sizeof err) == 0);
    CHECK(st_meta(&f, key) == NULL);
    st_close(&f);
    int bad[] = { -1, 2, 4, 33, 99 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        *part_width(&c, key) = bad[i];
        CHECK(pf_config_validate(&c, err, sizeof err) == -1 && strstr(err, key));
    }
    for (int k = 0; k <= 31; k += (k ? 2 : 1)) {
        *part_width(&c, key) = k;
        CHECKF(pf_config_validate(&c, err, sizeof err) == 0, "%s %d: %s", key, k, err);
    }
    pf_model_free(m3);
    pf_model_free(m0);
    unlink(p);
}

/* Prepares a CLI test in dir: writes a small FASTA file (24 overlapping sequences of 30..53
 * residues) to fa [512] and n weights paths dir/cliI.safetensors to p; returns 0 or -1. */
static inline int cli_setup(const char *dir, char *fa, char (*p)[512], int n) {
    snprintf(fa, 512, "%s/tiny.fasta", dir);
    for (int i = 0; i < n; i++) snprintf(p[i], 512, "%s/cli%d.safetensors", dir, i);
    printf("CLI:\n");
    FILE *f = fopen(fa, "w");
    if (!f) return -1;
    const char *motif = "MKTAYIAKQRQISFVKSHFSRQMKTAYIAKQRQISFVKSHFSRQMKTAYIAKQRQISFVKSHFSRQ";
    for (int i = 0; i < 24; i++) fprintf(f, ">s%d\n%.*s\n", i, 30 + i, motif + i % 20);
    return fclose(f);
}

/* Removes what cli_setup, cli_init, cli_warm_start and resume_check wrote into dir. */
static inline void cli_cleanup(const char *dir) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -f %s/*.safetensors %s/r.ckpt %s/tiny.fasta %s/*.txt %s/*.log "
             "%s/*.csv", dir, dir, dir, dir, dir, dir);
    CHECK(sh(cmd) == 0);
}

/* Runs `init opts` (a 1-layer d 16 model) into out and checks that its info lists "want", and
 * that `init bad` is refused (exit 2). Returns the model (NULL on failure; the caller frees). */
static inline pf_model *cli_init(const char *dir, const char *out, const char *opts,
                                 const char *want, const char *bad) {
    char cmd[4096];
    const char *bin = tu_bin();
    snprintf(cmd, sizeof cmd, "%s/performer init --out %s --layers 1 --d-model 16 --heads 2 --d-ff 32 "
             "--features 8 --seed 4 %s > %s/info.txt && grep -q '%s' %s/info.txt", bin, out, opts, dir,
             want, dir);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "%s/performer init --out %s/bad.safetensors %s 2>/dev/null", bin, dir, bad);
    CHECKF(sh(cmd) == 2, "%s", cmd);
    return load(out);
}

/* Runs `train --init init opts` for one step at learning rate 0 into out and checks that the result
 * computes exactly init's function (prints the max abs diff). Returns the trained model (NULL on
 * failure) for the caller to inspect and free. */
static inline pf_model *cli_warm_start(const char *dir, const char *fa, const char *init,
                                       const char *opts, const char *out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/performer train --fasta %s --init %s %s --out %s --steps 1 --lr 0 "
             "--crop 64 --batch-tokens 256 --eval-every 0 --quiet --threads 1 2>%s/train.log",
             tu_bin(), fa, init, opts, out, dir);
    CHECKF(sh(cmd) == 0, "%s", cmd);
    pf_model *base = load(init), *ws = load(out);
    if (base && ws) {
        double d = fwd_diff(base, ws);
        printf("  train --init %s %s (lr 0): logp max abs diff %.3g vs the original\n",
               strrchr(init, '/') ? strrchr(init, '/') + 1 : init, opts, d);
        CHECK(d == 0.0);
    }
    pf_model_free(base);
    return ws;
}

#endif
