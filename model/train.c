/* train.c - masked-LM training: forward with saved activations, backward (llm.c style), AdamW
 * with warm-up + cosine decay (or warm-up-stable-decay) and clipping, atomic checkpoints with exact
 * resume, evaluation. */
#include "train.h"
#include "atomic.h"
#include "dataset.h"
#include "gemm.h"
#include "ops.h"
#include "rng.h"
#include "safetensors.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- activations ----------------------------------------------------------------------------- */

/* Most tensors of any config: 25 per layer (17, plus 3 depthwise conv taps, plus 5 of the local
 * block) + 5. */
#define TR_MAX_TENSORS (25 * 256 + 5)
_Static_assert(PF_MAX_CONV_KERNEL <= PF_DW_MAX_K, "dwconv must accept every valid conv_kernel");

typedef struct {
    float *x_in, *h1, *mean1, *rstd1, *q, *k, *v, *a, *x_mid, *h2, *mean2, *rstd2, *f1, *g;
    float *phi_q, *phi_k, *kv, *z, *den, *att;
    float *q0, *k0, *v0;        /* projections before the depthwise conv (== q, k, v without it) */
    float *x_att;               /* [T, d] x after attention = the local block's input (== x_mid
                                 * without a local block) */
    float *hl, *mean3, *rstd3, *cl, *gl; /* local block: LN [T, d] + stats [T], conv, GELU [T, d] */
} tr_layer_acts;

struct tr_state {
    pf_model *m;
    size_t cap_T, cap_B, cap_L, cap_att;
    float *arena;
    int *pos;
    tr_layer_acts *L;           /* [n_layers] */
    float *x_final, *lnf, *meanf, *rstdf, *logits, *pe;
    float *dx, *dh, *da, *dq, *dk, *dv, *tmp, *dg, *df, *dlogits, *scratch;
    pf_params g;                /* gradient views (bound on each call) */
    pf_layer *g_layers;
};

tr_state *tr_state_new(pf_model *m) {
    tr_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->L = calloc((size_t)m->cfg.n_layers, sizeof *s->L);
    s->g_layers = calloc((size_t)m->cfg.n_layers, sizeof *s->g_layers);
    if (!s->L || !s->g_layers) { tr_state_free(s); return NULL; }
    return s;
}

void tr_state_free(tr_state *s) {
    if (!s) return;
    free(s->arena);
    free(s->pos);
    free(s->L);
    free(s->g_layers);
    free(s);
}

/* Carves the arena for T tokens, B sequences, longest L, att_total exact floats; returns the
 * number of floats needed (assigning pointers when base != NULL). */
static size_t tr_layout(tr_state *s, float *base, size_t T, size_t B, size_t Lm, size_t att) {
    const pf_config *c = &s->m->cfg;
    size_t d = c->d_model, F = c->d_ff, H = c->n_heads, M = c->n_features, dh = d / H;
    size_t n = 0;
#define CARVE(ptr, count) do { if (base) (ptr) = base + n; n += (count); } while (0)
    for (int l = 0; l < c->n_layers; l++) {
        tr_layer_acts *a = &s->L[l];
        CARVE(a->x_in, T * d); CARVE(a->h1, T * d); CARVE(a->mean1, T); CARVE(a->rstd1, T);
        CARVE(a->q, T * d); CARVE(a->k, T * d); CARVE(a->v, T * d); CARVE(a->a, T * d);
        CARVE(a->x_mid, T * d); CARVE(a->h2, T * d); CARVE(a->mean2, T); CARVE(a->rstd2, T);
        CARVE(a->f1, T * F); CARVE(a->g, T * F);
        CARVE(a->phi_q, T * H * M); CARVE(a->phi_k, T * H * M); CARVE(a->kv, B * H * M * dh);
        CARVE(a->z, B * H * M); CARVE(a->den, T * H); CARVE(a->att, att);
        if (c->conv_kernel > 0) {
            CARVE(a->q0, T * d); CARVE(a->k0, T * d); CARVE(a->v0, T * d);
        } else if (base) {
            a->q0 = a->q; a->k0 = a->k; a->v0 = a->v;
        }
        if (c->local_kernel > 0) {
            CARVE(a->x_att, T * d); CARVE(a->hl, T * d); CARVE(a->mean3, T); CARVE(a->rstd3, T);
            CARVE(a->cl, T * d); CARVE(a->gl, T * d);
        } else if (base) {
            a->x_att = a->x_mid;
        }
    }
    CARVE(s->x_final, T * d); CARVE(s->lnf, T * d); CARVE(s->meanf, T); CARVE(s->rstdf, T);
    CARVE(s->logits, T * TOK_NRES); CARVE(s->pe, Lm * d);
    CARVE(s->dx, T * d); CARVE(s->dh, T * d); CARVE(s->da, T * d); CARVE(s->dq, T * d);
    CARVE(s->dk, T * d); CARVE(s->dv, T * d); CARVE(s->tmp, T * d); CARVE(s->dg, T * F);
    CARVE(s->df, T * F); CARVE(s->dlogits, T * TOK_NRES);
    size_t sc = favor_backward_scratch_batch(T, (int)B, (int)H, (int)dh, (int)M);
    if (Lm * Lm > sc) sc = Lm * Lm;
    CARVE(s->scratch, sc);
#undef CARVE
    return n;
}

/* The capacity to grow to when need exceeds cap (else cap): at least need, and by steps of a
 * fraction 1/div of cap, so that batches a little larger than the last do not each reallocate
 * (and page in) the whole arena again. */
static size_t tr_grow(size_t need, size_t cap, size_t div) {
    if (need <= cap) return cap;
    size_t step = cap + cap / div;
    return need > step ? need : step;
}

/* Grows the arena to the batch; returns 0 or -1 (out of memory). */
static int tr_reserve(tr_state *s, size_t T, size_t B, size_t Lm, size_t att) {
    if (T <= s->cap_T && B <= s->cap_B && Lm <= s->cap_L && att <= s->cap_att) return 0;
    T = tr_grow(T, s->cap_T, 8);        /* tokens: batches fill a fixed budget, grow by 1/8 */
    B = tr_grow(B, s->cap_B, 1);        /* sequences: per-sequence state is small, double */
    Lm = tr_grow(Lm, s->cap_L, 2);
    att = tr_grow(att, s->cap_att, 4);
    size_t n = tr_layout(s, NULL, T, B, Lm, att);
    float *a = malloc(n * sizeof(float));
    int *pos = malloc(T * sizeof(int));
    if (!a || !pos) { free(a); free(pos); return -1; }
    free(s->arena); free(s->pos);
    s->arena = a; s->pos = pos;
    tr_layout(s, a, T, B, Lm, att);
    s->cap_T = T; s->cap_B = B; s->cap_L = Lm; s->cap_att = att;
    pe_fill(s->pe, (int)Lm, s->m->cfg.d_model);
    return 0;
}

/* Points s->g's tensors into grads (canonical order). */
static void tr_bind_grads(tr_state *s, float *grads) {
    static pf_tensor_info info[TR_MAX_TENSORS];
    s->g.layers = s->g_layers;
    int n = pf_tensor_table(&s->m->cfg, &s->g, info, (int)(sizeof info / sizeof info[0]));
    float *p = grads;
    for (int i = 0; i < n; i++) { *info[i].slot = p; p += info[i].numel; }
}

double tr_forward_backward(tr_state *s, pf_kernel kernel, const int32_t *tokens, const int *lens,
                           int B, const int32_t *targets, float *grads, int *n_scored, char *err,
                           size_t errlen) {
    pf_model *m = s->m;
    const pf_config *c = &m->cfg;
    const pf_params *P = &m->p;
    if (kernel == PF_KERNEL_DEFAULT) kernel = c->kernel;
    const int d = c->d_model, F = c->d_ff, H = c->n_heads, M = c->n_features, dh = d / H;
    const int relu = kernel == PF_KERNEL_FAVOR_RELU, exact = kernel == PF_KERNEL_EXACT;
    size_t T = 0, Lm = 0, att = 0;
    for (int b = 0; b < B; b++) {
        if (lens[b] < 1) { snprintf(err, errlen, "empty sequence in batch"); return NAN; }
        T += lens[b];
        if ((size_t)lens[b] > Lm) Lm = lens[b];
        if (exact) att += (size_t)H * lens[b] * lens[b];
    }
    if (B < 1 || tr_reserve(s, T, B, Lm, att) != 0) {
        snprintf(err, errlen, "cannot allocate activations for %zu tokens", T);
        return NAN;
    }
    for (size_t i = 0; i < T; i++)
        if (tokens[i] < 0 || tokens[i] >= TOK_VOCAB) { snprintf(err, errlen, "bad token"); return NAN; }
    const int N = (int)T;
    for (int b = 0, i = 0; b < B; b++)
        for (int p = 0; p < lens[b]; p++) s->pos[i++] = p;

    /* ---- forward ---- */
    embed_forward(s->L[0].x_in, tokens, s->pos, P->embed, s->pe, N, d);
    for (int l = 0; l < c->n_layers; l++) {
        const pf_layer *W = &P->layers[l];
        tr_layer_acts *A = &s->L[l];
        layernorm_forward(A->h1, A->mean1, A->rstd1, A->x_in, W->ln1_w, W->ln1_b, N, d, c->norm_eps);
        matmul_forward(A->q0, A->h1, W->wq, W->bq, N, d, d);
        matmul_forward(A->k0, A->h1, W->wk, W->bk, N, d, d);
        matmul_forward(A->v0, A->h1, W->wv, W->bv, N, d, d);
        if (c->conv_kernel > 0) {
            dwconv_forward(A->q, A->q0, W->conv_q, lens, B, d, c->conv_kernel);
            dwconv_forward(A->k, A->k0, W->conv_k, lens, B, d, c->conv_kernel);
            dwconv_forward(A->v, A->v0, W->conv_v, lens, B, d, c->conv_kernel);
        }
        if (exact) {
            size_t off = 0, aoff = 0;
            for (int b = 0; b < B; b++) {
                size_t o = off * d;
                exact_forward(A->a + o, A->att + aoff, A->q + o, A->k + o, A->v + o, lens[b], H, dh, 1);
                aoff += (size_t)H * lens[b] * lens[b];
                off += lens[b];
            }
        } else {
            favor_state st = { A->phi_q, A->phi_k, A->kv, A->z, A->den };
            favor_forward_batch(A->a, &st, A->q, A->k, A->v, W->proj, lens, B, H, dh, M, relu);
        }
        matmul_forward(s->tmp, A->a, W->wo, W->bo, N, d, d);
        residual_forward(A->x_att, A->x_in, s->tmp, T * d);
        if (c->local_kernel > 0) {
            /* x_mid = x_att + local.out(GELU(dwconv(LN(x_att)))) */
            layernorm_forward(A->hl, A->mean3, A->rstd3, A->x_att, W->local_ln_w, W->local_ln_b, N,
                              d, c->norm_eps);
            dwconv_forward(A->cl, A->hl, W->local_conv, lens, B, d, c->local_kernel);
            gelu_forward(A->gl, A->cl, T * d);
            matmul_forward(s->tmp, A->gl, W->local_out_w, W->local_out_b, N, d, d);
            residual_forward(A->x_mid, A->x_att, s->tmp, T * d);
        }
        layernorm_forward(A->h2, A->mean2, A->rstd2, A->x_mid, W->ln2_w, W->ln2_b, N, d, c->norm_eps);
        matmul_forward(A->f1, A->h2, W->fc1_w, W->fc1_b, N, d, F);
        gelu_forward(A->g, A->f1, T * F);
        matmul_forward(s->tmp, A->g, W->fc2_w, W->fc2_b, N, F, d);
        float *x_out = l + 1 < c->n_layers ? s->L[l + 1].x_in : s->x_final;
        residual_forward(x_out, A->x_mid, s->tmp, T * d);
    }
    layernorm_forward(s->lnf, s->meanf, s->rstdf, s->x_final, P->lnf_w, P->lnf_b, N, d, c->norm_eps);
    matmul_forward(s->logits, s->lnf, P->head_w, P->head_b, N, d, TOK_NRES);
    int ns = 0;
    double loss = xent_forward_backward(s->dlogits, s->logits, targets, N, TOK_NRES, &ns);
    if (n_scored) *n_scored = ns;

    /* ---- backward ---- */
    memset(grads, 0, m->n_params * sizeof(float));
    tr_bind_grads(s, grads);
    pf_params *G = &s->g;
    memset(s->dx, 0, T * d * sizeof(float));
    matmul_backward_set(s->dh, G->head_w, G->head_b, s->dlogits, s->lnf, P->head_w, N, d, TOK_NRES);
    layernorm_backward(s->dx, G->lnf_w, G->lnf_b, s->dh, s->x_final, P->lnf_w, s->meanf, s->rstdf, N, d);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        const pf_layer *W = &P->layers[l];
        pf_layer *GW = &G->layers[l];
        tr_layer_acts *A = &s->L[l];
        /* x_out = x_mid + fc2(gelu(fc1(ln2(x_mid)))); s->dx holds d x_out */
        matmul_backward_set(s->dg, GW->fc2_w, GW->fc2_b, s->dx, A->g, W->fc2_w, N, F, d);
        gelu_backward(s->df, A->f1, s->dg, T * F);
        matmul_backward_set(s->dh, GW->fc1_w, GW->fc1_b, s->df, A->h2, W->fc1_w, N, d, F);
        layernorm_backward(s->dx, GW->ln2_w, GW->ln2_b, s->dh, A->x_mid, W->ln2_w, A->mean2, A->rstd2, N, d);
        if (c->local_kernel > 0) {
            /* x_mid = x_att + local.out(GELU(dwconv(LN(x_att)))); s->dx holds d x_mid and
             * becomes d x_att (the LayerNorm backward adds the block's path to it) */
            matmul_backward_set(s->da, GW->local_out_w, GW->local_out_b, s->dx, A->gl,
                                W->local_out_w, N, d, d);
            gelu_backward(s->tmp, A->cl, s->da, T * d);
            memset(s->dh, 0, T * d * sizeof(float));
            dwconv_backward(s->dh, GW->local_conv, s->tmp, A->hl, W->local_conv, lens, B, d,
                            c->local_kernel);
            layernorm_backward(s->dx, GW->local_ln_w, GW->local_ln_b, s->dh, A->x_att,
                               W->local_ln_w, A->mean3, A->rstd3, N, d);
        }
        /* x_att = x_in + o(attn(q, k, v)); s->dx holds d x_att */
        matmul_backward_set(s->da, GW->wo, GW->bo, s->dx, A->a, W->wo, N, d, d);
        if (exact) {
            size_t off = 0, aoff = 0;
            for (int b = 0; b < B; b++) {
                size_t o = off * d;
                exact_backward(s->dq + o, s->dk + o, s->dv + o, s->da + o, A->att + aoff, A->q + o,
                               A->k + o, A->v + o, lens[b], H, dh, s->scratch);
                aoff += (size_t)H * lens[b] * lens[b];
                off += lens[b];
            }
        } else {
            favor_state st = { A->phi_q, A->phi_k, A->kv, A->z, A->den };
            favor_backward_batch(s->dq, s->dk, s->dv, s->da, A->a, &st, A->q, A->k, A->v, W->proj,
                                 lens, B, H, dh, M, relu, s->scratch);
        }
        /* s->dh = the sum of the three projections' input gradients (the first one sets it) */
        if (c->conv_kernel > 0) {
            /* s->dq/dk/dv are gradients w.r.t. the conv outputs; s->tmp takes the gradient
             * w.r.t. each projection in turn */
            const float *cw[3] = { W->conv_q, W->conv_k, W->conv_v };
            float *gcw[3] = { GW->conv_q, GW->conv_k, GW->conv_v };
            const float *in0[3] = { A->q0, A->k0, A->v0 }, *dcv[3] = { s->dq, s->dk, s->dv };
            const float *wm[3] = { W->wq, W->wk, W->wv };
            float *gw[3] = { GW->wq, GW->wk, GW->wv }, *gb[3] = { GW->bq, GW->bk, GW->bv };
            for (int j = 0; j < 3; j++) {
                memset(s->tmp, 0, T * d * sizeof(float));
                dwconv_backward(s->tmp, gcw[j], dcv[j], in0[j], cw[j], lens, B, d, c->conv_kernel);
                (j ? matmul_backward : matmul_backward_set)(s->dh, gw[j], gb[j], s->tmp, A->h1,
                                                            wm[j], N, d, d);
            }
        } else {
            matmul_backward_set(s->dh, GW->wq, GW->bq, s->dq, A->h1, W->wq, N, d, d);
            matmul_backward(s->dh, GW->wk, GW->bk, s->dk, A->h1, W->wk, N, d, d);
            matmul_backward(s->dh, GW->wv, GW->bv, s->dv, A->h1, W->wv, N, d, d);
        }
        layernorm_backward(s->dx, GW->ln1_w, GW->ln1_b, s->dh, A->x_in, W->ln1_w, A->mean1, A->rstd1, N, d);
    }
    embed_backward(G->embed, s->dx, tokens, N, d);
    return loss;
}

/* ---- options, schedule, optimiser ------------------------------------------------------------ */

void tr_options_default(tr_options *o) {
    memset(o, 0, sizeof *o);
    o->cfg.n_layers = 4; o->cfg.d_model = 256; o->cfg.n_heads = 8; o->cfg.d_ff = 1024;
    o->cfg.n_features = 64; o->cfg.kernel = PF_KERNEL_FAVOR_SOFTMAX; o->cfg.norm_eps = 1e-5f;
    snprintf(o->cfg.name, sizeof o->cfg.name, "performer-protein");
    o->kernel = PF_KERNEL_DEFAULT;
    o->seed = 1; o->steps = 10000; o->warmup = 500;
    o->lr = 1e-3; o->min_lr_frac = 0.1; o->weight_decay = 0.01; o->beta1 = 0.9; o->beta2 = 0.98;
    o->clip = 1.0; o->crop = 512; o->batch_tokens = 8192; o->mask_rate = 0.15; o->redraw = 0;
    o->ckpt_minutes = 10; o->eval_every = 500; o->eval_seqs = 500; o->threads = 0;
}

/* With --init F: checks that the architecture options given (o->arch_given) agree with F (src):
 * d_model, heads, d_ff, features and kernel cannot change; --layers may only add layers and
 * --conv / --local only add parts (pf_model_extend checks those). Returns 0 or -1 + err. */
static int tr_init_check(const tr_options *o, const pf_model *src, char *err, size_t errlen) {
    const struct { unsigned bit; const char *opt; int want, have; } fixed[] = {
        { TR_ARCH_D_MODEL, "--d-model", o->cfg.d_model, src->cfg.d_model },
        { TR_ARCH_HEADS, "--heads", o->cfg.n_heads, src->cfg.n_heads },
        { TR_ARCH_D_FF, "--d-ff", o->cfg.d_ff, src->cfg.d_ff },
        { TR_ARCH_FEATURES, "--features", o->cfg.n_features, src->cfg.n_features } };
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++)
        if ((o->arch_given & fixed[k].bit) && fixed[k].want != fixed[k].have) {
            snprintf(err, errlen, "%s %d: the weights have %d, and %s cannot change on a warm start "
                     "(--layers, --conv and --local can add to them)", fixed[k].opt, fixed[k].want,
                     fixed[k].have, fixed[k].opt);
            return -1;
        }
    if ((o->arch_given & TR_ARCH_KERNEL) && o->cfg.kernel != src->cfg.kernel) {
        snprintf(err, errlen, "--kernel %s: the weights' kernel is %s; to train these weights "
                 "with another kernel use --train-kernel %s", pf_kernel_name(o->cfg.kernel),
                 pf_kernel_name(src->cfg.kernel), pf_kernel_name(o->cfg.kernel));
        return -1;
    }
    return 0;
}

/* The first step of the decay of a warm-up-stable-decay schedule (o->decay_steps > 0). */
static long tr_decay_start(const tr_options *o) { return o->steps - o->decay_steps; }

/* Returns the learning rate of step (0-based): linear warm-up, then cosine to min_lr_frac * lr or,
 * with decay_steps, lr held until the last decay_steps steps and 1 - sqrt(t) down to min_lr_frac *
 * lr over them (Hagele et al. 2024: a run can go on from before its decay, no warm restart). */
static double tr_lr(const tr_options *o, long step) {
    if (step < o->warmup) return o->lr * (step + 1) / (double)o->warmup;
    double lo = o->lr * o->min_lr_frac;
    if (o->decay_steps > 0) {
        long d0 = tr_decay_start(o);
        if (step < d0) return o->lr;
        double t = (double)(step - d0 + 1) / (double)o->decay_steps;
        return lo + (o->lr - lo) * (1 - sqrt(t > 1 ? 1 : t));
    }
    double t = (double)(step - o->warmup) / (double)(o->steps > o->warmup ? o->steps - o->warmup : 1);
    if (t > 1) t = 1;
    return lo + 0.5 * (o->lr - lo) * (1 + cos(M_PI * t));
}

/* Optimiser state and the per-float flags of what is trained / decayed. */
typedef struct {
    float *m, *v;               /* Adam moments [n_params] */
    unsigned char *kind;        /* 0 = frozen (proj), 1 = no decay, 2 = decay */
    long step;                  /* optimiser steps done */
    size_t cursor;              /* next training sequence */
    long tokens;                /* tokens seen */
    double elapsed;             /* seconds trained before this process */
    rng_t rng;
} tr_opt;

/* Fills kind[] from the tensor table: proj frozen, matrices decayed, vectors not. The depthwise
 * conv taps (attn.conv_*, local.conv) are not decayed either (like LayerNorm weights: few
 * parameters, and decay towards 0 would pull the centre tap away from its identity
 * initialisation, not towards a simpler model). */
static void tr_kinds(pf_model *m, unsigned char *kind) {
    static pf_tensor_info info[TR_MAX_TENSORS];
    int n = pf_tensor_table(&m->cfg, &m->p, info, (int)(sizeof info / sizeof info[0]));
    for (int i = 0; i < n; i++) {
        size_t off = (size_t)(*info[i].slot - m->owned);
        unsigned char k = strstr(info[i].name, "attn.proj") ? 0
                        : strstr(info[i].name, "attn.conv_") || strstr(info[i].name, "local.conv") ? 1
                        : info[i].ndim == 2 ? 2 : 1;
        memset(kind + off, k, info[i].numel);
    }
}

/* Clips grads to o->clip global norm, then applies one AdamW step at learning rate lr. Returns
 * the gradient norm before clipping. */
static double tr_adamw(pf_model *m, tr_opt *st, float *grads, const tr_options *o, double lr) {
    double ss = 0;
    for (size_t i = 0; i < m->n_params; i++) ss += (double)grads[i] * grads[i];
    double norm = sqrt(ss), scale = (o->clip > 0 && norm > o->clip) ? o->clip / norm : 1.0;
    st->step++;
    double bc1 = 1 - pow(o->beta1, (double)st->step), bc2 = 1 - pow(o->beta2, (double)st->step);
    float b1 = (float)o->beta1, b2 = (float)o->beta2, wd = (float)o->weight_decay;
    float *p = m->owned;
    #pragma omp parallel for
    for (size_t i = 0; i < m->n_params; i++) {
        if (!st->kind[i]) continue;
        float g = (float)(grads[i] * scale);
        st->m[i] = b1 * st->m[i] + (1 - b1) * g;
        st->v[i] = b2 * st->v[i] + (1 - b2) * g * g;
        float upd = (float)((st->m[i] / bc1) / (sqrt(st->v[i] / bc2) + 1e-8));
        if (st->kind[i] == 2) upd += wd * p[i];
        p[i] -= (float)lr * upd;
    }
    return norm;
}

/* Redraws every layer's FAVOR+ projection for redraw number k (deterministic in seed, k). */
static void tr_redraw(pf_model *m, uint64_t seed, long k) {
    int dh = m->cfg.d_model / m->cfg.n_heads;
    for (int l = 0; l < m->cfg.n_layers; l++)
        pf_draw_projection(m->p.layers[l].proj, m->cfg.n_features, dh,
                           seed * 0x9e3779b97f4a7c15ULL + (uint64_t)k * 1000003ULL + (uint64_t)l + 17);
}

/* ---- batches ---------------------------------------------------------------------------------- */

typedef struct {
    int32_t *tokens, *targets;
    int *lens;
    int B, T, cap_T, cap_B;
} tr_batch;

/* Appends one framed crop of residues r[0..n) with MLM corruption drawn from rng. */
static void tr_batch_add(tr_batch *b, const uint8_t *r, size_t n, double rate, rng_t *rng) {
    int32_t *t = b->tokens + b->T, *y = b->targets + b->T;
    t[0] = TOK_CLS; y[0] = -1;
    for (size_t i = 0; i < n; i++) {
        int tok = r[i];
        t[i + 1] = tok; y[i + 1] = -1;
        if (tok_is_standard(tok) && rng_uniform(rng) < rate) {
            y[i + 1] = tok - TOK_RES0;
            double u = rng_uniform(rng);
            if (u < 0.8) t[i + 1] = TOK_MASK;
            else if (u < 0.9) t[i + 1] = TOK_RES0 + (int)rng_below(rng, TOK_NRES);
        }
    }
    t[n + 1] = TOK_EOS; y[n + 1] = -1;
    b->lens[b->B++] = (int)n + 2;
    b->T += (int)n + 2;
}

/* Fills b with crops from set starting at *cursor until the token budget is reached. */
static void tr_next_batch(tr_batch *b, const ds_set *set, size_t *cursor, const tr_options *o,
                          rng_t *rng) {
    b->B = 0; b->T = 0;
    size_t count = ds_count(set);
    for (size_t tries = 0; tries < count + 1; tries++) {
        size_t n;
        const uint8_t *r = ds_seq(set, *cursor % count, &n);
        if (n == 0) { (*cursor)++; continue; }
        size_t keep = n > (size_t)o->crop - 2 ? (size_t)o->crop - 2 : n;
        if (b->B > 0 && (b->T + (int)keep + 2 > o->batch_tokens || b->B >= b->cap_B)) break;
        size_t off = n > keep ? rng_below(rng, n - keep + 1) : 0;
        tr_batch_add(b, r + off, keep, o->mask_rate, rng);
        (*cursor)++;
    }
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

/* Writes model, Adam moments, loop state and the run's seed and training kernel (o->kernel, resolved:
 * not PF_KERNEL_DEFAULT) to path atomically. Returns 0 or -1 + err. */
static int tr_save_ckpt(const char *path, pf_model *m, const tr_opt *st, const tr_options *o,
                        char *err, size_t errlen) {
    static pf_tensor_info info[TR_MAX_TENSORS];
    int n = pf_tensor_table(&m->cfg, &m->p, info, TR_MAX_TENSORS);
    st_out_tensor *t = calloc((size_t)n * 3, sizeof *t);
    char (*names)[80] = calloc((size_t)n * 2, sizeof *names);
    int rc = -1;
    if (!t || !names) { snprintf(err, errlen, "out of memory"); goto cleanup; }
    for (int i = 0; i < n; i++) {
        size_t off = (size_t)(*info[i].slot - m->owned);
        for (int j = 0; j < 3; j++) {
            st_out_tensor *x = &t[i + j * n];
            x->ndim = info[i].ndim;
            for (int k = 0; k < info[i].ndim; k++) x->shape[k] = info[i].shape[k];
            if (j == 0) { x->name = info[i].name; x->data = m->owned + off; }
            else {
                snprintf(names[i + (j - 1) * n], 80, "adam.%c.%.63s", j == 1 ? 'm' : 'v', info[i].name);
                x->name = names[i + (j - 1) * n];
                x->data = (j == 1 ? st->m : st->v) + off;
            }
        }
    }
    char v[16][64];
    snprintf(v[0], 64, "%d", m->cfg.n_layers); snprintf(v[1], 64, "%d", m->cfg.d_model);
    snprintf(v[2], 64, "%d", m->cfg.n_heads); snprintf(v[3], 64, "%d", m->cfg.d_ff);
    snprintf(v[4], 64, "%d", m->cfg.n_features); snprintf(v[5], 64, "%s", pf_kernel_name(m->cfg.kernel));
    snprintf(v[6], 64, "%.9g", m->cfg.norm_eps); snprintf(v[7], 64, "%ld", st->step);
    snprintf(v[8], 64, "%zu", st->cursor); snprintf(v[9], 64, "%ld", st->tokens);
    snprintf(v[10], 64, "%.3f", st->elapsed);
    for (int i = 0; i < 4; i++) snprintf(v[11 + i], 64, "%016llx", (unsigned long long)st->rng.s[i]);
    snprintf(v[15], 64, "%llu", (unsigned long long)o->seed);
    char conv[16], local[16];
    snprintf(conv, sizeof conv, "%d", m->cfg.conv_kernel);
    snprintf(local, sizeof local, "%d", m->cfg.local_kernel);
    /* "kernel" is the weights' default kernel, "train_kernel" the one this run trains with (a
     * checkpoint without it, from before the key existed, trained with "kernel" unless the run
     * gave --train-kernel) */
    const char *keys[24] = { "n_layers", "d_model", "n_heads", "d_ff", "n_features", "kernel",
                             "norm_eps", "step", "cursor", "tokens", "elapsed", "rng0", "rng1",
                             "rng2", "rng3", "seed", "format", "name", "train_kernel" };
    const char *vals[24] = { v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10],
                             v[11], v[12], v[13], v[14], v[15], "performer-protein-checkpoint",
                             m->cfg.name,
                             pf_kernel_name(o->kernel == PF_KERNEL_DEFAULT ? m->cfg.kernel : o->kernel) };
    /* conv_kernel / local_kernel only for models with them (other checkpoints are as before) */
    int nk = 19;
    if (m->cfg.conv_kernel > 0) { keys[nk] = "conv_kernel"; vals[nk++] = conv; }
    if (m->cfg.local_kernel > 0) { keys[nk] = "local_kernel"; vals[nk++] = local; }
    rc = st_write(path, t, n * 3, keys, vals, nk, err, errlen);
cleanup:
    free(t);
    free(names);
    return rc;
}

/* Says in err that checkpoint metadata key of path is missing (s NULL) or is s, not what. */
static void meta_bad(const char *path, const char *key, const char *s, const char *what, char *err,
                     size_t errlen) {
    if (!s)
        snprintf(err, errlen, "%s: checkpoint metadata '%s' is missing (not a checkpoint of performer train, or "
                 "a damaged one: use another copy of it)", path, key);
    else
        snprintf(err, errlen, "%s: checkpoint metadata '%s' = \"%.40s\" is not %s (a damaged checkpoint: use "
                 "another copy of it)", path, key, s, what);
}

/* Parses checkpoint metadata key of f (path, for messages) strictly as a decimal integer in lo..hi
 * (lo >= 0) into *out; returns 0, or -1 + err naming the key and the checkpoint. */
static int meta_long(const st_file *f, const char *path, const char *key, long lo, long hi, long *out,
                     char *err, size_t errlen) {
    const char *s = st_meta(f, key);
    char *end = NULL, what[80];
    long v = 0;
    errno = 0;
    if (s && s[0] >= '0' && s[0] <= '9') v = strtol(s, &end, 10);
    if (!s || !end || errno || *end || v < lo || v > hi) {
        snprintf(what, sizeof what, "an integer in %ld..%ld", lo, hi);
        meta_bad(path, key, s, what, err, errlen);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses checkpoint metadata key of f strictly as an unsigned 64-bit integer in base 10 or 16 into
 * *out; returns 0, or -1 + err naming the key and the checkpoint. */
static int meta_u64(const st_file *f, const char *path, const char *key, int base, uint64_t *out, char *err,
                    size_t errlen) {
    const char *s = st_meta(f, key);
    char *end = NULL;
    unsigned long long v = 0;
    errno = 0;
    if (s && (base == 16 ? isxdigit((unsigned char)s[0]) : isdigit((unsigned char)s[0])))
        v = strtoull(s, &end, base);
    if (!s || !end || errno || *end) {
        meta_bad(path, key, s, base == 16 ? "a 64-bit hexadecimal number" : "a 64-bit decimal integer", err,
                 errlen);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Parses checkpoint metadata key of f strictly as a finite number in lo..hi (above lo when
 * lo_open) into *out; returns 0, or -1 + err naming the key and the checkpoint. */
static int meta_double(const st_file *f, const char *path, const char *key, double lo, int lo_open, double hi,
                       double *out, char *err, size_t errlen) {
    const char *s = st_meta(f, key);
    char *end = NULL, what[80];
    double v = 0;
    errno = 0;
    if (s && (isdigit((unsigned char)s[0]) || s[0] == '.')) v = strtod(s, &end);
    if (!s || !end || *end || !isfinite(v) || v < lo || (lo_open && v == lo) || v > hi) {
        snprintf(what, sizeof what, "a number in %s%g, %g]", lo_open ? "(" : "[", lo, hi);
        meta_bad(path, key, s, what, err, errlen);
        return -1;
    }
    *out = v;
    return 0;
}

/* What a checkpoint records about its run beyond the model and the loop state. */
typedef struct {
    int has_seed;               /* 0: no "seed" key */
    uint64_t seed;
    int has_train_kernel;       /* 0: no "train_kernel" key (checkpoints from before it) */
    pf_kernel train_kernel;
} tr_ckpt_run;

/* Loads a checkpoint: creates *mp and fills st (moments, loop state) and *run (NULL = not wanted).
 * Every metadata value is parsed strictly and range-checked. Returns 0 or -1 + err. */
static int tr_load_ckpt(const char *path, pf_model **mp, tr_opt *st, tr_ckpt_run *run, char *err,
                        size_t errlen) {
    st_file f = {0};
    pf_model *m = NULL;
    tr_ckpt_run rdummy;
    static pf_tensor_info info[TR_MAX_TENSORS];
    if (!run) run = &rdummy;
    memset(run, 0, sizeof *run);
    if (st_open(&f, path, err, errlen) != 0) return -1;
    pf_config c = {0};
    long v[8];
    const struct { const char *key; long lo, hi; } ints[8] = {
        { "n_layers", 1, 256 }, { "d_model", 1, 8192 }, { "n_heads", 1, 256 }, { "d_ff", 1, 65536 },
        { "n_features", 1, 16384 }, { "step", 0, LONG_MAX }, { "cursor", 0, LONG_MAX },
        { "tokens", 0, LONG_MAX } };
    for (int i = 0; i < 8; i++)
        if (meta_long(&f, path, ints[i].key, ints[i].lo, ints[i].hi, &v[i], err, errlen) != 0) goto fail;
    c.n_layers = (int)v[0]; c.d_model = (int)v[1]; c.n_heads = (int)v[2]; c.d_ff = (int)v[3];
    c.n_features = (int)v[4];
    const char *k = st_meta(&f, "kernel"), *tk = st_meta(&f, "train_kernel"), *nm = st_meta(&f, "name");
    if (!k || pf_kernel_parse(k, &c.kernel) != 0) {
        meta_bad(path, "kernel", k, "favor-softmax, favor-relu or exact", err, errlen);
        goto fail;
    }
    if (tk && pf_kernel_parse(tk, &run->train_kernel) != 0) {
        meta_bad(path, "train_kernel", tk, "favor-softmax, favor-relu or exact", err, errlen);
        goto fail;
    }
    run->has_train_kernel = tk != NULL;
    double eps, elapsed = 0;
    if (meta_double(&f, path, "norm_eps", 0, 1, 1, &eps, err, errlen) != 0) goto fail;
    c.norm_eps = (float)eps;
    if (!(c.norm_eps > 0)) {
        meta_bad(path, "norm_eps", st_meta(&f, "norm_eps"), "a positive float32", err, errlen);
        goto fail;
    }
    /* elapsed is only informative: a checkpoint without it counts 0 seconds before it */
    if (st_meta(&f, "elapsed") && meta_double(&f, path, "elapsed", 0, 0, 1e15, &elapsed, err, errlen) != 0)
        goto fail;
    if (st_meta(&f, "seed") && meta_u64(&f, path, "seed", 10, &run->seed, err, errlen) != 0) goto fail;
    run->has_seed = st_meta(&f, "seed") != NULL;
    for (int i = 0; i < 4; i++) {
        char key[16];
        snprintf(key, sizeof key, "rng%d", i & 3);
        if (meta_u64(&f, path, key, 16, &st->rng.s[i], err, errlen) != 0) goto fail;
    }
    if (!(st->rng.s[0] | st->rng.s[1] | st->rng.s[2] | st->rng.s[3])) {
        meta_bad(path, "rng0", st_meta(&f, "rng0"), "part of a valid generator state (rng0..rng3 are all 0)",
                 err, errlen);
        goto fail;
    }
    char werr[256];
    if (pf_parse_width(st_meta(&f, "conv_kernel"), "conv_kernel", PF_WIDTH_CONV, &c.conv_kernel, werr,
                       sizeof werr) != 0 ||
        pf_parse_width(st_meta(&f, "local_kernel"), "local_kernel", PF_WIDTH_LOCAL, &c.local_kernel,
                       werr, sizeof werr) != 0) {
        snprintf(err, errlen, "%s: checkpoint %s", path, werr);
        goto fail;
    }
    pf_copy_utf8(c.name, sizeof c.name, nm ? nm : "performer-protein");
    if (pf_model_init(&m, &c, 0, err, errlen) != 0) goto fail;
    st->m = calloc(m->n_params, sizeof(float));
    st->v = calloc(m->n_params, sizeof(float));
    if (!st->m || !st->v) { snprintf(err, errlen, "out of memory"); goto fail; }
    int n = pf_tensor_table(&m->cfg, &m->p, info, TR_MAX_TENSORS);
    for (int i = 0; i < n; i++) {
        size_t off = (size_t)(*info[i].slot - m->owned);
        for (int j = 0; j < 3; j++) {
            char name[96];
            if (j == 0) snprintf(name, sizeof name, "%.63s", info[i].name);
            else snprintf(name, sizeof name, "adam.%c.%.63s", j == 1 ? 'm' : 'v', info[i].name);
            const st_tensor *t = st_find(&f, name);
            if (!t || strcmp(t->dtype, "F32") != 0 || t->numel != info[i].numel) {
                snprintf(err, errlen, "%s: checkpoint tensor '%s' missing or of the wrong shape", path, name);
                goto fail;
            }
            float *dst = j == 0 ? m->owned + off : (j == 1 ? st->m : st->v) + off;
            memcpy(dst, t->data, info[i].numel * sizeof(float));
        }
    }
    st->step = v[5]; st->cursor = (size_t)v[6]; st->tokens = v[7];
    st->elapsed = elapsed;
    st_close(&f);
    *mp = m;
    return 0;
fail:
    st_close(&f);
    pf_model_free(m);
    free(st->m); free(st->v);
    st->m = st->v = NULL;
    return -1;
}

/* Writes s as a JSON string literal (quotes included, escaped by jansson) into dst of n bytes, or
 * null when s is not valid UTF-8 or its literal does not fit. */
static void tr_json_str(char *dst, size_t n, const char *s) {
    json_t *j = json_string(s ? s : "");
    char *txt = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    size_t len = txt ? strlen(txt) : n;
    if (len < n) memcpy(dst, txt, len + 1);
    else snprintf(dst, n, "null");
    free(txt);
    json_decref(j);
}

/* Writes v as a JSON number with fmt into dst, or null when v is not finite (e.g. no validation). */
void tr_json_num(char *dst, size_t n, const char *fmt, double v) {
    if (isfinite(v)) snprintf(dst, n, fmt, v);
    else snprintf(dst, n, "null");
}

int tr_export(const char *ckpt, const char *out, char *err, size_t errlen) {
    pf_model *m = NULL;
    tr_opt st = {0};
    tr_ckpt_run run;
    if (tr_load_ckpt(ckpt, &m, &st, &run, err, errlen) != 0) return -1;
    char qpath[1024];
    tr_json_str(qpath, sizeof qpath, ckpt);
    m->cfg.trained = 1;
    /* the weights default to the kernel they were trained with, as the run's --out would */
    if (run.has_train_kernel) m->cfg.kernel = run.train_kernel;
    snprintf(m->cfg.provenance, sizeof m->cfg.provenance,
             "{\"trainer\":\"bin/performer train\",\"exported_from\":%s,\"steps\":%ld,\"tokens\":%ld,"
             "\"seconds\":%.0f,\"kernel\":\"%s\"}", qpath, st.step, st.tokens, st.elapsed,
             pf_kernel_name(m->cfg.kernel));
    int rc = pf_model_save(m, out, err, errlen);
    pf_model_free(m);
    free(st.m); free(st.v);
    return rc;
}

/* ---- evaluation ------------------------------------------------------------------------------- */

int tr_evaluate(const pf_model *m, pf_kernel kernel, const ds_set *set, double mask_rate,
                uint64_t seed, long max_seqs, int max_len, int window, const double *uni_in,
                tr_eval_result *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    size_t count = ds_count(set);
    if (max_seqs > 0 && (size_t)max_seqs < count) count = (size_t)max_seqs;
    double uni[TOK_NRES];
    if (uni_in) memcpy(uni, uni_in, sizeof uni);
    else ds_unigram(set, count, uni);
    int uni_best = 0;
    for (int i = 1; i < TOK_NRES; i++) if (uni[i] > uni[uni_best]) uni_best = i;
    const size_t budget = 16384;
    int rc = -1;
    pf_ctx *ctx = pf_ctx_new(m);
    /* positions a sequence of n residues takes: every window framed by <cls> ... <eos> */
#define EVAL_SPAN(n) ((n) + 2 * (window > 0 && (n) > 0 ? ((n) + (size_t)window - 1) / (size_t)window : 1))
    size_t capT = budget, capN = 1;
    for (size_t i = 0; i < count; i++) {
        size_t n; ds_seq(set, i, &n);
        if (max_len > 0 && n > (size_t)max_len) n = (size_t)max_len;
        if (budget + EVAL_SPAN(n) > capT) capT = budget + EVAL_SPAN(n);
        if (n > capN) capN = n;
    }
    int32_t *tok = malloc(capT * sizeof *tok), *tgt = malloc(capT * sizeof *tgt);
    int32_t *mtok = malloc(capN * sizeof *mtok), *mtgt = malloc(capN * sizeof *mtgt);
    int *lens = malloc(capT * sizeof *lens);
    float *logp = malloc(capT * TOK_NRES * sizeof *logp);
    if (!ctx || !tok || !tgt || !mtok || !mtgt || !lens || !logp) { snprintf(err, errlen, "out of memory"); goto cleanup; }
    double nll = 0, uni_nll = 0, cal_psum[TR_CAL_BINS] = {0};
    long correct = 0, correct5 = 0, uni_correct = 0, scored = 0, cal_hit[TR_CAL_BINS] = {0};
    memset(r, 0, sizeof *r);
    size_t i = 0;
    while (i < count) {
        size_t T = 0;
        int B = 0;
        while (i < count) {
            size_t n;
            const uint8_t *s = ds_seq(set, i, &n);
            if (max_len > 0 && n > (size_t)max_len) n = (size_t)max_len;
            if (B > 0 && T + EVAL_SPAN(n) > budget) break;
            rng_t rng;
            rng_seed(&rng, seed * 0x9e3779b97f4a7c15ULL + i);
            /* mask exactly round(rate * standard residues), at least one, chosen uniformly; the
             * masks depend on the sequence only, not on the window */
            size_t nstd = 0;
            for (size_t j = 0; j < n; j++) nstd += tok_is_standard(s[j]);
            size_t want = (size_t)llround(mask_rate * (double)nstd);
            if (want == 0 && nstd > 0) want = 1;
            size_t left = nstd;
            for (size_t j = 0; j < n; j++) {
                mtok[j] = s[j]; mtgt[j] = -1;
                if (!tok_is_standard(s[j])) continue;
                if (rng_uniform(&rng) * (double)left < (double)want) {
                    mtgt[j] = s[j] - TOK_RES0;
                    mtok[j] = TOK_MASK;
                    want--;
                }
                left--;
            }
            size_t w = window > 0 ? (size_t)window : (n ? n : 1);
            for (size_t c = 0; c < n || c == 0; c += w) {     /* one framed row per window */
                size_t len = n - c < w ? n - c : w;
                tok[T] = TOK_CLS; tgt[T] = -1;
                memcpy(tok + T + 1, mtok + c, len * sizeof *tok);
                memcpy(tgt + T + 1, mtgt + c, len * sizeof *tgt);
                tok[T + len + 1] = TOK_EOS; tgt[T + len + 1] = -1;
                lens[B++] = (int)len + 2;
                T += len + 2;
            }
            r->sequences++;
            i++;
        }
#undef EVAL_SPAN
        if (pf_forward(ctx, m, kernel, tok, lens, B, logp, NULL, err, errlen) != 0) goto cleanup;
        for (size_t p = 0; p < T; p++) {
            if (tgt[p] < 0) continue;
            const float *lp = logp + p * TOK_NRES;
            int best = 0, above = 0;    /* above: residues more likely than the true one */
            for (int c = 1; c < TOK_NRES; c++) if (lp[c] > lp[best]) best = c;
            for (int c = 0; c < TOK_NRES; c++) above += lp[c] > lp[tgt[p]];
            nll -= lp[tgt[p]];
            uni_nll -= log(uni[tgt[p]]);
            correct += best == tgt[p];
            correct5 += above < 5;
            double pbest = exp((double)lp[best]);
            /* a NaN (a model whose outputs overflow) goes to the last bin, not through an undefined cast */
            int k = pbest >= 0 && pbest < 1 ? (int)(pbest * TR_CAL_BINS) : TR_CAL_BINS - 1;
            r->cal_count[k]++;
            cal_psum[k] += pbest;
            cal_hit[k] += best == tgt[p];
            uni_correct += uni_best == tgt[p];
            scored++;
        }
    }
    if (!scored) {
        snprintf(err, errlen, "no standard residues to score in %zu sequences (X, B, Z, U and O are never masked)",
                 count);
        goto cleanup;
    }
    r->residues = scored;
    r->nll = nll / scored;
    r->perplexity = exp(r->nll);
    r->accuracy = (double)correct / scored;
    r->top5_accuracy = (double)correct5 / scored;
    for (int k = 0; k < TR_CAL_BINS; k++) {
        if (!r->cal_count[k]) continue;
        r->cal_conf[k] = cal_psum[k] / r->cal_count[k];
        r->cal_acc[k] = (double)cal_hit[k] / r->cal_count[k];
        r->ece += (double)r->cal_count[k] / scored * fabs(r->cal_acc[k] - r->cal_conf[k]);
    }
    r->uni_perplexity = exp(uni_nll / scored);
    r->uni_accuracy = (double)uni_correct / scored;
    rc = 0;
cleanup:
    pf_ctx_free(ctx);
    free(tok); free(tgt); free(mtok); free(mtgt); free(lens); free(logp);
    return rc;
}

/* ---- the loop --------------------------------------------------------------------------------- */

static volatile sig_atomic_t g_stop;
static void tr_on_signal(int sig) { (void)sig; g_stop = 1; }

/* Returns monotonic seconds. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Formats seconds as "1h02m" / "3m05s". */
static void fmt_dur(char *buf, size_t n, double s) {
    if (s < 0 || !isfinite(s)) { snprintf(buf, n, "?"); return; }
    long t = (long)s;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

/* Writes into out the absolute form of path (its directory resolved, the name kept) for comparing
 * paths of files that may not exist yet; a path whose directory cannot be resolved is copied. */
static void tr_abs_path(const char *path, char *out, size_t n) {
    char dir[4096], real[4096];
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash != path ? slash - path : 1), path);
    else snprintf(dir, sizeof dir, ".");
    if (realpath(dir, real)) snprintf(out, n, "%s/%s", strcmp(real, "/") ? real : "", name);
    else snprintf(out, n, "%s", path);
}

/* See train.h. */
int tr_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    char pa[8192], pb[8192];
    if (!a || !b) return 0;
    if (stat(a, &sa) == 0 && stat(b, &sb) == 0) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    tr_abs_path(a, pa, sizeof pa);
    tr_abs_path(b, pb, sizeof pb);
    return strcmp(pa, pb) == 0;
}

/* Checks before any training that the output files can be written: no output is an input or
 * another output, none is a directory, and a temporary file can be created beside each file that
 * is replaced atomically. Returns 0 or -1 + err naming the option and the fix. */
static int tr_check_paths(const tr_options *o, char *err, size_t errlen) {
    const struct { const char *opt, *path; } in[] = {
        { o->fasta ? "--fasta" : "--data", o->fasta ? o->fasta : o->data }, { "--valid", o->valid },
        { "--init", o->init } };
    const struct { const char *opt, *path; int atomic; } out[] = {
        { "--out", o->out, 1 }, { "--ckpt", o->ckpt, 1 }, { "--branch-ckpt", o->branch_ckpt, 1 },
        { "--log", o->log, 0 } };
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) {
        const char *p = out[i].path;
        struct stat st;
        if (!p) continue;
        for (size_t j = 0; j < sizeof in / sizeof in[0]; j++) {
            /* --out may replace its own --init weights (they are read first); nothing else may */
            if (!in[j].path || (i == 0 && j == 2) || !tr_same_file(p, in[j].path)) continue;
            snprintf(err, errlen, "%s %s is the same file as %s %s and would overwrite it: give another file name",
                     out[i].opt, p, in[j].opt, in[j].path);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (out[j].path && tr_same_file(p, out[j].path)) {
                snprintf(err, errlen, "%s and %s are the same file %s: give each its own file name", out[j].opt,
                         out[i].opt, p);
                return -1;
            }
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            snprintf(err, errlen, "%s %s is a directory: give a file name in it, e.g. %s/%s", out[i].opt, p, p,
                     i == 3 ? "train_log.csv" : i == 0 ? "model.safetensors" : "train.ckpt");
            return -1;
        }
        if (out[i].atomic) {
            af_file af;
            char e2[400];
            if (af_open(&af, p, e2, sizeof e2) != 0) {
                snprintf(err, errlen, "%s: %s (create the directory, or choose one you can write to)", out[i].opt, e2);
                return -1;
            }
            af_abort(&af);
        }
    }
    return 0;
}

/* Drops the rows of log path whose step is after step (a run stopped without a checkpoint logs
 * steps that its resume computes again) by truncating the file where the first of them starts (rows
 * are in step order), and ends a last kept row cut short by a crash with its newline. Returns the
 * number of rows dropped, or -1 + err. */
static long tr_log_trim(const char *path, long step, char *err, size_t errlen) {
    FILE *f = fopen(path, "r+");
    if (!f) { snprintf(err, errlen, "%s: %s", path, strerror(errno)); return -1; }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long dropped = 0, cut = -1, pos = 0;   /* cut: offset of the first dropped row */
    int unended = 0;                        /* the last kept row has no newline */
    while ((n = getline(&line, &cap, f)) > 0) {
        char *end;
        long row = strtol(line, &end, 10);
        if (end != line && *end == ',' && row > step) {   /* the header is kept */
            if (cut < 0) cut = pos;
            dropped++;
        } else {
            unended = line[n - 1] != '\n';
        }
        pos += n;
    }
    free(line);
    int ok = !ferror(f);
    if (ok && cut >= 0) ok = fflush(f) == 0 && ftruncate(fileno(f), cut) == 0;
    if (ok && unended) ok = fseek(f, 0, SEEK_END) == 0 && fputc('\n', f) != EOF;
    if (fclose(f) != 0) ok = 0;
    if (!ok) snprintf(err, errlen, "%s: could not trim the log: %s", path, strerror(errno));
    return ok ? dropped : -1;
}

/* On --resume from checkpoint path (model m, run record run): refuses the run-defining options
 * given (o->arch_given, o->kernel) that differ from what the checkpoint stores, as a resumed run
 * goes on with the checkpoint's, and sets o->kernel to the checkpoint's training kernel and o->seed
 * to its seed unless --seed was given (noted on stderr)
 * (a checkpoint without train_kernel, from before that key: --train-kernel or the weights' kernel,
 * as then). --name renames the model. Returns 0 or -1 + err. */
static int tr_resume_check(tr_options *o, const char *path, pf_model *m, const tr_ckpt_run *run, char *err,
                           size_t errlen) {
    const pf_config *c = &m->cfg;
    const struct { unsigned bit; const char *opt; int want, have; } fixed[] = {
        { TR_ARCH_LAYERS, "--layers", o->cfg.n_layers, c->n_layers },
        { TR_ARCH_D_MODEL, "--d-model", o->cfg.d_model, c->d_model },
        { TR_ARCH_HEADS, "--heads", o->cfg.n_heads, c->n_heads },
        { TR_ARCH_D_FF, "--d-ff", o->cfg.d_ff, c->d_ff },
        { TR_ARCH_FEATURES, "--features", o->cfg.n_features, c->n_features },
        { TR_ARCH_CONV, "--conv", o->cfg.conv_kernel, c->conv_kernel },
        { TR_ARCH_LOCAL, "--local", o->cfg.local_kernel, c->local_kernel } };
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++)
        if ((o->arch_given & fixed[k].bit) && fixed[k].want != fixed[k].have) {
            snprintf(err, errlen, "--resume: %s %d, but the checkpoint %s has %d, and a resumed run goes on with "
                     "the checkpoint's model: drop %s (or start a new run without --resume)", fixed[k].opt,
                     fixed[k].want, path, fixed[k].have, fixed[k].opt);
            return -1;
        }
    if ((o->arch_given & TR_ARCH_KERNEL) && o->cfg.kernel != c->kernel) {
        snprintf(err, errlen, "--resume: --kernel %s, but the weights of the checkpoint %s have kernel %s: drop "
                 "--kernel (the kernel a run trains with is --train-kernel, fixed when the run starts)",
                 pf_kernel_name(o->cfg.kernel), path, pf_kernel_name(c->kernel));
        return -1;
    }
    if (run->has_train_kernel) {
        if (o->kernel != PF_KERNEL_DEFAULT && o->kernel != run->train_kernel) {
            snprintf(err, errlen, "--resume: --train-kernel %s, but the checkpoint %s was trained with %s, and a "
                     "resumed run goes on with it: drop --train-kernel (to go on with another kernel, export "
                     "the checkpoint and start a run with --init on it)", pf_kernel_name(o->kernel), path,
                     pf_kernel_name(run->train_kernel));
            return -1;
        }
        o->kernel = run->train_kernel;
    } else if (o->kernel == PF_KERNEL_DEFAULT) {
        o->kernel = c->kernel;
    }
    if (run->has_seed) {
        /* the seed of a resumed run only draws FAVOR+ projection redraws (the data order and masks
         * continue the checkpoint's): a warm start of a new stage from a copied checkpoint gives a
         * new one, as the model card's stage commands do */
        if (o->seed_given && o->seed != run->seed)
            fprintf(stderr, "--resume: --seed %llu replaces the checkpoint's seed %llu (it draws only the "
                    "FAVOR+ projection redraws; the data order continues the checkpoint's)\n",
                    (unsigned long long)o->seed, (unsigned long long)run->seed);
        else
            o->seed = run->seed;
    }
    if (o->arch_given & TR_ARCH_NAME) pf_copy_utf8(m->cfg.name, sizeof m->cfg.name, o->cfg.name);
    return 0;
}

int tr_run(const tr_options *opt, int *interrupted, char *err, size_t errlen) {
    tr_options ro = *opt;       /* a resumed run takes its seed and training kernel from the checkpoint */
    const tr_options *o = &ro;
    int rc = -1;
    pf_model *m = NULL;
    ds_set *train = NULL, *valid = NULL;
    tr_state *s = NULL;
    float *grads = NULL;
    tr_batch b = {0};
    tr_opt st = {0};
    FILE *logf = NULL;
    struct sigaction sa = {0}, old_int, old_term;
    *interrupted = 0;
    g_stop = 0;
    if (o->threads > 0) pf_set_threads(o->threads);

    const char *tpath = o->fasta ? o->fasta : o->data;
    if (!tpath) { snprintf(err, errlen, "no training data: give --data FILE.bin or --fasta FILE"); return -1; }
    if (tr_check_paths(o, err, errlen) != 0) return -1;
    if (ds_open_path(&train, tpath, err, errlen) != 0) goto cleanup;
    if (ds_count(train) == 0) { snprintf(err, errlen, "%s: no sequences", tpath); goto cleanup; }
    if (ds_standard(train, ds_count(train)) == 0) {
        snprintf(err, errlen, "%s: no standard residues to train on (X, B, Z, U and O are never masked)", tpath);
        goto cleanup;
    }
    if (o->valid && ds_open_path(&valid, o->valid, err, errlen) != 0) goto cleanup;
    if (valid && o->eval_every > 0 && ds_standard(valid, (size_t)o->eval_seqs) == 0) {
        snprintf(err, errlen, "%s: no standard residues to validate on in its first %d sequences (X, B, Z, U and O "
                 "are never masked)", o->valid, o->eval_seqs);
        goto cleanup;
    }

    /* only a checkpoint that does not exist starts the run afresh: one that exists but cannot be
     * read stops it before the log is trimmed or the checkpoint replaced */
    int have_ckpt = 0;
    struct stat cs;
    if (o->resume && o->ckpt) {
        if (lstat(o->ckpt, &cs) == 0) {
            have_ckpt = 1;
        } else if (errno == ENOENT) {
            fprintf(stderr, "--resume: no checkpoint %s yet, starting from the beginning\n", o->ckpt);
        } else {
            snprintf(err, errlen, "--resume: cannot look for the checkpoint %s: %s (fix the path or its "
                     "directory's permissions; nothing was trained or changed)", o->ckpt, strerror(errno));
            goto cleanup;
        }
    }
    if (have_ckpt) {
        tr_ckpt_run run;
        char e2[400];
        if (tr_load_ckpt(o->ckpt, &m, &st, &run, e2, sizeof e2) != 0) {
            snprintf(err, errlen, "--resume: %s (the checkpoint exists but cannot be used: restore or fix it, or "
                     "remove it to start from the beginning; nothing was trained or changed)", e2);
            goto cleanup;
        }
        if (tr_resume_check(&ro, o->ckpt, m, &run, err, errlen) != 0) goto cleanup;
        fprintf(stderr, "resumed from %s at step %ld (%ld tokens)\n", o->ckpt, st.step, st.tokens);
    } else {
        if (o->init) {
            pf_model *src = NULL;
            if (pf_model_load(&src, o->init, err, errlen) != 0) goto cleanup;
            /* warm start with a conv on q, k, v and/or local blocks that F lacks: identity
             * parts, so training continues from exactly the function of the --init weights */
            char e2[400];
            int r2 = tr_init_check(o, src, e2, sizeof e2);
            if (r2 == 0)
                r2 = pf_model_extend(&m, src, o->cfg.conv_kernel, o->cfg.local_kernel,
                                     (o->arch_given & TR_ARCH_LAYERS) ? o->cfg.n_layers : 0, o->seed,
                                     e2, sizeof e2);
            if (r2 == 0 && (o->arch_given & TR_ARCH_NAME))
                pf_copy_utf8(m->cfg.name, sizeof m->cfg.name, o->cfg.name);
            if (r2 != 0) snprintf(err, errlen, "--init %s: %s", o->init, e2);
            if (r2 == 0 && m->cfg.conv_kernel != src->cfg.conv_kernel)
                fprintf(stderr, "extended %s with identity depthwise convolutions on q, k, v "
                        "(conv_kernel %d)\n", o->init, m->cfg.conv_kernel);
            if (r2 == 0 && m->cfg.local_kernel != src->cfg.local_kernel)
                fprintf(stderr, "extended %s with identity local blocks (local_kernel %d)\n",
                        o->init, m->cfg.local_kernel);
            if (r2 == 0 && m->cfg.n_layers != src->cfg.n_layers)
                fprintf(stderr, "extended %s from %d to %d layers (the new layers on top start as "
                        "the identity)\n", o->init, src->cfg.n_layers, m->cfg.n_layers);
            pf_model_free(src);
            if (r2 != 0) goto cleanup;
        } else if (pf_model_init(&m, &o->cfg, o->seed, err, errlen) != 0) {
            goto cleanup;
        }
        st.m = calloc(m->n_params, sizeof(float));
        st.v = calloc(m->n_params, sizeof(float));
        rng_seed(&st.rng, o->seed ^ 0x5eedULL);
        st.cursor = 0;
    }
    st.kind = malloc(m->n_params);
    grads = malloc(m->n_params * sizeof(float));
    s = tr_state_new(m);
    b.cap_T = o->batch_tokens + o->crop;
    b.cap_B = b.cap_T / 3 + 1;
    b.tokens = malloc(b.cap_T * sizeof(int32_t));
    b.targets = malloc(b.cap_T * sizeof(int32_t));
    b.lens = malloc(b.cap_B * sizeof(int));
    /* activations for the largest batch up front (tokens and crop length are bounded; sequences
     * start at one per 64 tokens and double when exceeded): growing the arena later pages it all
     * in again, which cost the first steps of a run about 0.1 s each */
    if (!st.m || !st.v || !st.kind || !grads || !s || !b.tokens || !b.targets || !b.lens ||
        tr_reserve(s, (size_t)b.cap_T, (size_t)b.cap_T / 64 + 1, (size_t)o->crop, 0) != 0) {
        snprintf(err, errlen, "out of memory");
        goto cleanup;
    }
    tr_kinds(m, st.kind);
    if (o->log) {
        int exists = access(o->log, F_OK) == 0;
        struct stat ls;
        /* only a regular file is trimmed (a symlink, FIFO or /dev/stdout is appended to as it is) */
        if (o->resume && exists && lstat(o->log, &ls) == 0 && S_ISREG(ls.st_mode)) {
            long dropped = tr_log_trim(o->log, st.step, err, errlen);
            if (dropped < 0) goto cleanup;
            if (dropped > 0)
                fprintf(stderr, "%s: dropped %ld rows after step %ld (logged after the checkpoint; run again now)\n",
                        o->log, dropped, st.step);
        }
        logf = fopen(o->log, o->resume && exists ? "a" : "w");
        if (!logf) { snprintf(err, errlen, "%s: %s", o->log, strerror(errno)); goto cleanup; }
        if (!(o->resume && exists))
            fprintf(logf, "step,tokens,elapsed_s,lr,loss,grad_norm,tokens_per_s,val_ppl,val_acc,val_uni_ppl\n");
    }
    sa.sa_handler = tr_on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    pf_kernel kernel = o->kernel == PF_KERNEL_DEFAULT ? m->cfg.kernel : o->kernel;
    ro.kernel = kernel;         /* what the checkpoints store as the training kernel */
    fprintf(stderr, "training %s: %d layers, d %d, %d heads, d_ff %d, %d features, %zu params, kernel %s, "
            "products %s, %zu sequences\n", m->cfg.name, m->cfg.n_layers, m->cfg.d_model, m->cfg.n_heads,
            m->cfg.d_ff, m->cfg.n_features, m->n_params, pf_kernel_name(kernel),
            gm_precision_name(gm_precision()), ds_count(train));
    if (m->cfg.conv_kernel > 0)
        fprintf(stderr, "depthwise convolution on q, k, v: width %d\n", m->cfg.conv_kernel);
    if (m->cfg.local_kernel > 0)
        fprintf(stderr, "local blocks (depthwise convolution + GELU + projection): width %d\n",
                m->cfg.local_kernel);
    double t0 = now_s(), t_proc = t0, last_ckpt = t0, rate_t = t0, val_ppl = NAN, val_acc = NAN, val_uni = NAN;
    long rate_tok = 0, steps_here = 0;
    double rate = 0, loss_ema = NAN;
    int tty = isatty(2);
    while (st.step < o->steps && !g_stop) {
        if (o->branch_ckpt && o->decay_steps > 0 && st.step == tr_decay_start(o)) {
            /* the state before the first decay step: resuming it with more --steps goes on with
             * the stable phase exactly as a longer run would have */
            double now = now_s();
            st.elapsed += now - t0;
            t0 = now;
            if (tr_save_ckpt(o->branch_ckpt, m, &st, o, err, errlen) != 0) goto cleanup;
            fprintf(stderr, "%sdecay starts at step %ld: stable-phase checkpoint %s\n",
                    tty && !o->quiet ? "\n" : "", st.step, o->branch_ckpt);
        }
        if (o->redraw > 0 && st.step % o->redraw == 0 && st.step > 0) tr_redraw(m, o->seed, st.step / o->redraw);
        tr_next_batch(&b, train, &st.cursor, o, &st.rng);
        int ns = 0;
        double loss = tr_forward_backward(s, kernel, b.tokens, b.lens, b.B, b.targets, grads, &ns, err, errlen);
        if (!isfinite(loss)) {
            if (isnan(loss) && err[0]) goto cleanup;
            snprintf(err, errlen, "loss became %g at step %ld; lower --lr", loss, st.step);
            goto cleanup;
        }
        double lr = tr_lr(o, st.step);
        double gn = tr_adamw(m, &st, grads, o, lr);
        st.tokens += b.T;
        rate_tok += b.T;
        loss_ema = isnan(loss_ema) ? loss : 0.98 * loss_ema + 0.02 * loss;
        double now = now_s();
        if (now - rate_t > 5) { rate = rate_tok / (now - rate_t); rate_t = now; rate_tok = 0; }
        else if (rate == 0) rate = rate_tok / (now - rate_t + 1e-9);
        int do_eval = valid && o->eval_every > 0 && (st.step % o->eval_every == 0 || st.step == o->steps);
        if (do_eval) {
            tr_eval_result r;
            if (tr_evaluate(m, kernel, valid, o->mask_rate, 12345, o->eval_seqs, 1022, 0, NULL, &r, err, errlen) != 0)
                goto cleanup;
            val_ppl = r.perplexity; val_acc = r.accuracy; val_uni = r.uni_perplexity;
        }
        double elapsed = st.elapsed + (now - t0);
        if (logf) {
            fprintf(logf, "%ld,%ld,%.1f,%.6g,%.5f,%.4f,%.0f,", st.step, st.tokens, elapsed, lr, loss, gn, rate);
            if (do_eval) fprintf(logf, "%.4f,%.4f,%.4f\n", val_ppl, val_acc, val_uni);
            else fprintf(logf, ",,\n");
            if (do_eval || st.step % 50 == 0) fflush(logf);
        }
        if (!o->quiet && (tty || st.step % 50 == 0 || do_eval)) {
            char eta[32];
            double sps = steps_here > 0 ? (now - t_proc) / (double)steps_here : 0;
            fmt_dur(eta, sizeof eta, sps * (double)(o->steps - st.step));
            int w = 24, fill = (int)(w * (double)st.step / (double)o->steps);
            char bar[32];
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
            bar[w] = 0;
            char val[48];   /* "-" until this process has evaluated (a resumed run starts without a figure) */
            if (isnan(val_ppl)) snprintf(val, sizeof val, "val ppl - acc -");
            else snprintf(val, sizeof val, "val ppl %.3f acc %.3f", val_ppl, val_acc);
            fprintf(stderr, "%s[%s] step %ld/%ld | %.0f tok/s | loss %.4f | %s | ETA %s%s",
                    tty ? "\r" : "", bar, st.step, o->steps, rate, loss_ema, val, eta, tty ? "   " : "\n");
        }
        if (o->ckpt && (now - last_ckpt > o->ckpt_minutes * 60)) {
            st.elapsed = elapsed; t0 = now;
            if (logf) fflush(logf);   /* the log holds every step the checkpoint has */
            if (tr_save_ckpt(o->ckpt, m, &st, o, err, errlen) != 0) goto cleanup;
            last_ckpt = now;
        }
        if (o->max_minutes > 0 && now - t_proc > o->max_minutes * 60) g_stop = 1;  /* budget spent */
        steps_here++;
        if (o->stop_after > 0 && steps_here >= o->stop_after) g_stop = 1;
    }
    if (tty && !o->quiet) fputc('\n', stderr);
    st.elapsed += now_s() - t0;
    if (logf) fflush(logf);
    if (o->ckpt && tr_save_ckpt(o->ckpt, m, &st, o, err, errlen) != 0) goto cleanup;
    if (g_stop) {
        *interrupted = 1;
        if (o->ckpt)
            fprintf(stderr, "stopped at step %ld; checkpoint %s (resume with --resume)\n", st.step, o->ckpt);
        else if (st.step < o->steps)
            fprintf(stderr, "stopped at step %ld of %ld: nothing saved (--out is written when all --steps are done; "
                    "give --ckpt F to keep a stopped run and --resume it)\n", st.step, o->steps);
    }
    if (o->out && (!g_stop || st.step >= o->steps)) {
        char qpath[1024], vp[32], va[32];
        tr_json_str(qpath, sizeof qpath, tpath);      /* valid JSON for any path and without --valid */
        tr_json_num(vp, sizeof vp, "%.4f", val_ppl);
        tr_json_num(va, sizeof va, "%.4f", val_acc);
        m->cfg.trained = 1;
        snprintf(m->cfg.provenance, sizeof m->cfg.provenance,
                 "{\"trainer\":\"bin/performer train\",\"data\":%s,\"steps\":%ld,\"tokens\":%ld,"
                 "\"seconds\":%.0f,\"seed\":%llu,\"lr\":%g,\"decay_steps\":%ld,\"crop\":%d,\"batch_tokens\":%d,\"kernel\":\"%s\","
                 "\"val_perplexity\":%s,\"val_accuracy\":%s}", qpath, st.step, st.tokens, st.elapsed,
                 (unsigned long long)o->seed, o->lr, o->decay_steps, o->crop, o->batch_tokens, pf_kernel_name(kernel),
                 vp, va);
        m->cfg.kernel = kernel;
        if (pf_model_save(m, o->out, err, errlen) != 0) goto cleanup;
        fprintf(stderr, "saved %s (sha256 %s)\n", o->out, m->sha256);
    }
    rc = 0;
cleanup:
    if (logf) fclose(logf);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    tr_state_free(s);
    free(grads); free(st.m); free(st.v); free(st.kind);
    free(b.tokens); free(b.targets); free(b.lens);
    ds_close(train); ds_close(valid);
    pf_model_free(m);
    return rc;
}
