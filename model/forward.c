/* forward.c - inference forward pass over a packed batch of framed sequences, in one reusable
 * activation arena per thread (weights/FORMAT.md gives the mathematics). */
#include "model.h"
#include "gemm.h"
#include "ops.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t g_exact_mem_limit = (size_t)1 << 30;
static _Atomic size_t g_group_tokens = PF_GROUP_TOKENS_AUTO;
static _Atomic size_t g_ffn_rows = PF_FFN_ROWS_AUTO;
static _Atomic int g_seq_parallel_len = PF_SEQ_PARALLEL_LEN_DEFAULT;
static _Atomic int g_seq_groups = PF_SEQ_GROUPS_DEFAULT;
static _Atomic size_t g_seq_group_tokens = PF_SEQ_GROUP_TOKENS_AUTO;

struct pf_ctx {
    const pf_model *m;
    float *arena;           /* one allocation holding every buffer below */
    size_t arena_floats;
    size_t cap_T, cap_L, cap_B; /* capacity: packed tokens, longest sequence, sequences */
    size_t cap_ff;              /* rows of ff */
    int exact_ready;        /* arena includes the L x L scores buffer */
    float *x, *h, *q, *k, *v, *ff;      /* [T, d] x5, [cap_ff, F] */
    float *cv;                          /* [T, d] convolution output (conv models only) */
    float *pe;                          /* [cap_L, d] */
    float *phi_q, *phi_k, *kv, *z, *den; /* FAVOR+ state of the batch (favor_state sizes) */
    float *scores;                      /* [cap_L, cap_L] (exact kernel only) */
    int *pos;                           /* [T] position of each token inside its sequence */
    struct pf_ctx **sub;                /* [n_sub] per-thread contexts of sequence-parallel batches */
    int n_sub;
};

void pf_omp_passive(char **argv) {
    int change = 0;
    if (!getenv("OMP_WAIT_POLICY")) {
        if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
        change = 1;
    }
    if (!getenv("GOMP_SPINCOUNT")) {
        if (setenv("GOMP_SPINCOUNT", PF_GOMP_SPINCOUNT, 1) != 0) return;
        change = 1;
    }
    if (!change) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = '\0';
    execv(self, argv);  /* keeps the program's name; only returns on failure: carry on as we are */
}

static _Atomic int g_threads = 0;   /* 0: never set (OpenMP's default) */

void pf_set_threads(int n) {
    if (n < 1) n = 1;
    g_threads = n;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

void pf_thread_init(void) {
    const int n = g_threads;
    if (n > 0) omp_set_num_threads(n);
}

void pf_set_exact_mem_limit(size_t bytes) { g_exact_mem_limit = bytes; }

void pf_set_group_tokens(size_t n) { g_group_tokens = n; }

/* setting, or when it is the AUTO value (PF_*_AUTO, all ones) amx_def for bf16 products on AMX
 * tiles and def elsewhere. */
static size_t by_products(size_t setting, size_t amx_def, size_t def) {
    if (setting != (size_t)-1) return setting;
    return gm_precision() == GM_BF16 && gm_bf16_is_amx() ? amx_def : def;
}

size_t pf_group_tokens(void) {
    return by_products(g_group_tokens, PF_GROUP_TOKENS_AMX_DEFAULT, PF_GROUP_TOKENS_DEFAULT);
}

void pf_set_ffn_rows(size_t n) { g_ffn_rows = n; }

size_t pf_ffn_rows(void) { return by_products(g_ffn_rows, PF_FFN_ROWS_AMX_DEFAULT, PF_FFN_ROWS_DEFAULT); }

/* Rows of the feed-forward block at a time for a group of T tokens (pf_ffn_rows). */
static size_t ffn_rows(size_t T) {
    const size_t r = pf_ffn_rows();
    return r == 0 || r > T ? T : r;
}

void pf_set_seq_parallel_len(int n) { g_seq_parallel_len = n < 0 ? 0 : n; }

void pf_set_seq_groups(int k) { g_seq_groups = k < 1 ? 1 : k; }

void pf_set_seq_group_tokens(size_t n) { g_seq_group_tokens = n; }

size_t pf_seq_group_tokens(void) {
    return by_products(g_seq_group_tokens, PF_SEQ_GROUP_TOKENS_AMX_DEFAULT, PF_SEQ_GROUP_TOKENS_DEFAULT);
}

size_t pf_exact_max_len(const pf_model *m) {
    (void)m;
    return (size_t)sqrt((double)(g_exact_mem_limit / sizeof(float)));
}

pf_ctx *pf_ctx_new(const pf_model *m) {
    pf_ctx *c = calloc(1, sizeof *c);
    if (c) c->m = m;
    return c;
}

void pf_ctx_free(pf_ctx *c) {
    if (!c) return;
    for (int i = 0; i < c->n_sub; i++) pf_ctx_free(c->sub[i]);
    free(c->sub);
    free(c->arena);
    free(c->pos);
    free(c);
}

/* Makes the arena hold T packed tokens in B sequences up to L long (scores when exact).
 * Returns 0, or -1 when memory cannot be had. */
static int ctx_reserve(pf_ctx *c, size_t T, size_t B, size_t L, int exact) {
    size_t rows = ffn_rows(T);
    if (T <= c->cap_T && B <= c->cap_B && L <= c->cap_L && rows <= c->cap_ff && (!exact || c->exact_ready))
        return 0;
    const pf_config *cfg = &c->m->cfg;
    size_t d = cfg->d_model, F = cfg->d_ff, H = cfg->n_heads, M = cfg->n_features, dh = d / H;
    if (T < c->cap_T) T = c->cap_T;
    if (L < c->cap_L) L = c->cap_L;
    if (B < c->cap_B) B = c->cap_B;
    exact = exact || c->exact_ready;
    size_t nconv = cfg->conv_kernel > 0 ? T * d : 0;
    if (rows < c->cap_ff) rows = c->cap_ff;
    /* FAVOR+'s features and sums: only favor_forward_batch needs them (favor_forward_fused, where
     * it takes the shape, keeps them in its registers and stack) */
    const size_t nfavor = favor_fused_ok((int)dh, (int)M) ? 0
                        : 2 * T * H * M + B * H * M * dh + B * H * M + T * H;
    size_t n = 5 * T * d + rows * F + L * d + nfavor + (exact ? L * L : 0) + nconv;
    float *a = malloc(n * sizeof(float));
    int *pos = malloc(T * sizeof(int));
    if (!a || !pos) { free(a); free(pos); return -1; }
    free(c->arena);
    free(c->pos);
    c->arena = a; c->pos = pos; c->arena_floats = n;
    c->x = a; a += T * d;
    c->h = a; a += T * d;
    c->q = a; a += T * d;
    c->k = a; a += T * d;
    c->v = a; a += T * d;
    c->ff = a; a += rows * F;
    c->pe = a; a += L * d;
    if (nfavor) {
        c->phi_q = a; a += T * H * M;
        c->phi_k = a; a += T * H * M;
        c->kv = a; a += B * H * M * dh;
        c->z = a; a += B * H * M;
        c->den = a; a += T * H;
    } else {
        c->phi_q = c->phi_k = c->kv = c->z = c->den = NULL;
    }
    c->scores = exact ? a : NULL;
    a += exact ? L * L : 0;
    c->cv = nconv ? a : NULL;
    c->cap_T = T; c->cap_L = L; c->cap_B = B; c->cap_ff = rows; c->exact_ready = exact;
    pe_fill(c->pe, (int)L, (int)d);
    return 0;
}

/* Whether pf_forward runs B sequences, the longest Lmax, sequence-parallel on nt threads. */
static int seq_parallel(int nt, int B, size_t Lmax) {
    return nt > 1 && B > 1 && g_seq_parallel_len > 0 && Lmax <= (size_t)g_seq_parallel_len;
}

/* Cuts B sequences (T tokens) into groups: group g is sequences gstart[g] .. gstart[g + 1] - 1,
 * its tokens from goff[g] (both arrays B + 1 long). Sequence-parallel on nt > 0 threads: k groups
 * per thread (k = pf_set_seq_groups's, more when a thread's share exceeds pf_seq_group_tokens, or
 * the group size where that is 0), cut at the sequence boundaries nearest to equal shares of the
 * tokens, so that the threads finish together.
 * nt = 0: whole sequences, at most the group size a group unless one sequence is longer.
 * Returns the number of groups. */
static int plan_groups(const int *lens, int B, size_t T, int nt, int *gstart, size_t *goff) {
    const size_t G = pf_group_tokens();
    int ng = 0;
    size_t off = 0;
    if (nt > 0) {
        const size_t cap = pf_seq_group_tokens(), Gs = cap > 0 ? cap : G;
        const size_t share = (T + (size_t)nt - 1) / (size_t)nt;
        const size_t by_size = Gs > 0 && share > Gs ? (share + Gs - 1) / Gs : 1;
        const size_t per = (size_t)g_seq_groups;
        const size_t want = (size_t)nt * (by_size > per ? by_size : per);
        for (int b = 0; b < B; b++) {
            /* a new group starts at b when b is the boundary nearest to the next equal share */
            const size_t target = (size_t)ng * T / want, len = (size_t)lens[b];
            if (ng == 0 || ((size_t)ng < want && off + len / 2 >= target)) { gstart[ng] = b; goff[ng++] = off; }
            off += len;
        }
    } else {
        size_t gB = 0;
        for (int b = 0; b < B; b++) {
            if (gB > 0 && G > 0 && off - goff[ng - 1] + (size_t)lens[b] > G) gB = 0;
            if (gB == 0) { gstart[ng] = b; goff[ng++] = off; }
            off += (size_t)lens[b]; gB++;
        }
    }
    gstart[ng] = B;
    goff[ng] = off;
    return ng;
}

/* How pf_forward, called from this thread, runs a batch: its size, threads, and groups. */
typedef struct {
    size_t T, Lmax;     /* packed tokens, longest sequence */
    int nt, par, ng;    /* threads; sequence-parallel (1) or not; number of groups */
    int *gstart;        /* [ng + 1] first sequence of each group (plan_groups) */
    size_t *goff;       /* [ng + 1] first token of each group */
} batch_plan;

/* Fills p for the B sequences lens[b] (lens[b] >= 1). Returns 0, or -1 when out of memory. */
static int plan_batch(batch_plan *p, const int *lens, int B) {
    p->T = p->Lmax = 0;
    for (int b = 0; b < B; b++) {
        p->T += (size_t)lens[b];
        if ((size_t)lens[b] > p->Lmax) p->Lmax = (size_t)lens[b];
    }
    p->nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    p->par = seq_parallel(p->nt, B, p->Lmax);
    p->gstart = malloc(sizeof(int) * ((size_t)B + 1));
    p->goff = malloc(sizeof(size_t) * ((size_t)B + 1));
    if (!p->gstart || !p->goff) {
        free(p->gstart); free(p->goff);
        p->gstart = NULL; p->goff = NULL;
        return -1;
    }
    p->ng = plan_groups(lens, B, p->T, p->par ? p->nt : 0, p->gstart, p->goff);
    return 0;
}

/* Frees what plan_batch allocated. */
static void plan_free(batch_plan *p) {
    free(p->gstart);
    free(p->goff);
}

size_t pf_forward_span(const int *lens, int B) {
    batch_plan p;
    if (plan_batch(&p, lens, B) != 0) return p.T;   /* T is set before the allocations */
    size_t span = p.T;
    size_t *load = p.par ? calloc((size_t)p.nt, sizeof *load) : NULL;
    if (load) {
        /* each group, in order, goes to the thread that becomes free first (equal speeds) */
        span = 0;
        for (int g = 0; g < p.ng; g++) {
            int t = 0;
            for (int u = 1; u < p.nt; u++) if (load[u] < load[t]) t = u;
            load[t] += p.goff[g + 1] - p.goff[g];
            if (load[t] > span) span = load[t];
        }
        free(load);
    }
    plan_free(&p);
    return span;
}

static void forward_group(pf_ctx *c, const pf_model *m, pf_kernel kernel, const int32_t *tokens,
                          const int *lens, int B, int N, float *logp, float *hidden, int hidden_layer);

/* forward_group on group g of plan p, in arena c: its slice of the packed inputs and outputs. */
static void run_group(pf_ctx *c, const pf_model *m, pf_kernel kernel, const batch_plan *p, int g,
                      const int32_t *tokens, const int *lens, float *logp, float *hidden, int hidden_layer) {
    const size_t o = p->goff[g];
    forward_group(c, m, kernel, tokens + o, lens + p->gstart[g], p->gstart[g + 1] - p->gstart[g],
                  (int)(p->goff[g + 1] - o), logp + o * TOK_NRES,
                  hidden ? hidden + o * (size_t)m->cfg.d_model : NULL, hidden_layer);
}

int pf_forward(pf_ctx *c, const pf_model *m, pf_kernel kernel, const int32_t *tokens,
               const int *lens, int B, float *logp, float *hidden, char *err, size_t errlen) {
    return pf_forward_ex(c, m, kernel, tokens, lens, B, logp, hidden, -1, err, errlen);
}

int pf_forward_ex(pf_ctx *c, const pf_model *m, pf_kernel kernel, const int32_t *tokens,
                  const int *lens, int B, float *logp, float *hidden, int hidden_layer, char *err,
                  size_t errlen) {
    const pf_config *cfg = &m->cfg;
    if (hidden_layer < -1 || hidden_layer > cfg->n_layers) {
        snprintf(err, errlen, "layer %d is out of range: 0..%d, or -1 for the final output",
                 hidden_layer, cfg->n_layers);
        return -1;
    }
    if (kernel == PF_KERNEL_DEFAULT) kernel = cfg->kernel;
    if (c->m != m) { snprintf(err, errlen, "context belongs to another model"); return -1; }
    if (B < 1) { snprintf(err, errlen, "empty batch"); return -1; }
    size_t T = 0, Lmax = 0;
    for (int b = 0; b < B; b++) {
        if (lens[b] < 1) { snprintf(err, errlen, "sequence %d has length %d", b, lens[b]); return -1; }
        T += (size_t)lens[b];
        if ((size_t)lens[b] > Lmax) Lmax = (size_t)lens[b];
    }
    if (T > (size_t)1 << 30) { snprintf(err, errlen, "batch of %zu tokens is too large", T); return -1; }
    for (size_t i = 0; i < T; i++)
        if (tokens[i] < 0 || tokens[i] >= TOK_VOCAB) {
            snprintf(err, errlen, "token id %d at index %zu is outside the vocabulary", (int)tokens[i], i);
            return -1;
        }
    if (kernel == PF_KERNEL_EXACT && Lmax > pf_exact_max_len(m)) {
        snprintf(err, errlen, "exact attention over %zu positions needs %.1f GiB for its L x L "
                 "scores, over the limit of %zu positions; use a favor kernel", Lmax,
                 (double)Lmax * Lmax * 4 / (1 << 30), pf_exact_max_len(m));
        return -1;
    }
    /* Sequence-parallel: a batch of short sequences runs as groups of whole sequences, one group
     * per thread at a time, each thread on its own arena with single-threaded products (no
     * fork/join per operation); otherwise groups of at most G tokens run one after another, each
     * operation on every thread. */
    batch_plan p;
    if (plan_batch(&p, lens, B) != 0) { snprintf(err, errlen, "out of memory"); return -1; }
    const int nt = p.nt, ng = p.ng, *gstart = p.gstart;
    const size_t *goff = p.goff;
    size_t maxT = 0, maxB = 0;
    for (int g = 0; g < ng; g++) {
        if (goff[g + 1] - goff[g] > maxT) maxT = goff[g + 1] - goff[g];
        if ((size_t)(gstart[g + 1] - gstart[g]) > maxB) maxB = (size_t)(gstart[g + 1] - gstart[g]);
    }
    const int exact = kernel == PF_KERNEL_EXACT, use_sub = p.par && ng > 1;
    const int nctx = use_sub ? nt : 1;
    int rc = 0;
    if (use_sub && c->n_sub < nt) {
        pf_ctx **sub = realloc(c->sub, sizeof *sub * (size_t)nt);
        if (sub) {
            c->sub = sub;
            while (c->n_sub < nt && (c->sub[c->n_sub] = pf_ctx_new(m)) != NULL) c->n_sub++;
        }
    }
    for (int i = 0; i < nctx && rc == 0; i++) {
        pf_ctx *x = use_sub ? (i < c->n_sub ? c->sub[i] : NULL) : c;
        if (!x || ctx_reserve(x, maxT, maxB, Lmax, exact) != 0) rc = -1;
    }
    if (rc != 0) {
        snprintf(err, errlen, "out of memory for a batch of %zu tokens (longest %zu, %d arenas)",
                 maxT, Lmax, nctx);
    } else if (use_sub) {
        #pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int g = 0; g < ng; g++)
            run_group(c->sub[omp_get_thread_num()], m, kernel, &p, g, tokens, lens, logp, hidden, hidden_layer);
    } else {
        for (int g = 0; g < ng; g++) run_group(c, m, kernel, &p, g, tokens, lens, logp, hidden, hidden_layer);
    }
    plan_free(&p);
    return rc;
}

/* Runs the B sequences of one group (N packed tokens; the arena holds them) through every layer:
 * pf_forward_ex's contract for those sequences, after its checks. */
static void forward_group(pf_ctx *c, const pf_model *m, pf_kernel kernel, const int32_t *tokens,
                          const int *lens, int B, int N, float *logp, float *hidden, int hidden_layer) {
    const pf_config *cfg = &m->cfg;
    const pf_params *P = &m->p;
    const size_t T = (size_t)N, fr = ffn_rows(T);
    assert(fr <= c->cap_ff);
    const int d = cfg->d_model, F = cfg->d_ff, H = cfg->n_heads, M = cfg->n_features, dh = d / H;
    for (int b = 0, i = 0; b < B; b++)
        for (int p = 0; p < lens[b]; p++) c->pos[i++] = p;

    embed_forward(c->x, tokens, c->pos, P->embed, c->pe, N, d);
    if (hidden && hidden_layer == 0) memcpy(hidden, c->x, T * d * sizeof(float));
    for (int l = 0; l < cfg->n_layers; l++) {
        const pf_layer *Lp = &P->layers[l];
        layernorm_forward(c->h, NULL, NULL, c->x, Lp->ln1_w, Lp->ln1_b, N, d, cfg->norm_eps);
        matmul_forward(c->q, c->h, Lp->wq, Lp->bq, N, d, d);
        matmul_forward(c->k, c->h, Lp->wk, Lp->bk, N, d, d);
        matmul_forward(c->v, c->h, Lp->wv, Lp->bv, N, d, d);
        float *q = c->q, *k = c->k, *v = c->v;
        if (cfg->conv_kernel > 0) {
            /* depthwise conv of q, k, v within each sequence; each result goes to the spare
             * buffer and the input's buffer becomes the spare */
            float *spare = c->cv, *t;
            dwconv_forward(spare, q, Lp->conv_q, lens, B, d, cfg->conv_kernel);
            t = q; q = spare; spare = t;
            dwconv_forward(spare, k, Lp->conv_k, lens, B, d, cfg->conv_kernel);
            t = k; k = spare; spare = t;
            dwconv_forward(spare, v, Lp->conv_v, lens, B, d, cfg->conv_kernel);
            v = spare;
        }
        /* attention within each sequence, written into h (free once q, k, v exist) */
        if (kernel == PF_KERNEL_EXACT) {
            size_t off = 0;
            for (int b = 0; b < B; b++) {
                size_t o = off * d;
                exact_forward(c->h + o, c->scores, q + o, k + o, v + o, lens[b], H, dh, 0);
                off += (size_t)lens[b];
            }
        } else if (favor_forward_fused(c->h, q, k, v, Lp->proj, lens, B, H, dh, M,
                                       kernel == PF_KERNEL_FAVOR_RELU) != 0) {
            favor_state st = { c->phi_q, c->phi_k, c->kv, c->z, c->den };
            favor_forward_batch(c->h, &st, q, k, v, Lp->proj, lens, B, H, dh, M,
                                kernel == PF_KERNEL_FAVOR_RELU);
        }
        matmul_residual(c->x, c->h, Lp->wo, Lp->bo, N, d, d);
        if (cfg->local_kernel > 0) {
            /* local block x += out(GELU(dwconv(LN(x)))); q, k, v, cv are all free now */
            layernorm_forward(c->h, NULL, NULL, c->x, Lp->local_ln_w, Lp->local_ln_b, N, d,
                              cfg->norm_eps);
            dwconv_forward(c->q, c->h, Lp->local_conv, lens, B, d, cfg->local_kernel);
            gelu_forward(c->q, c->q, T * d);
            matmul_residual(c->x, c->q, Lp->local_out_w, Lp->local_out_b, N, d, d);
        }
        /* feed-forward block, fr positions at a time (every step is row-wise) */
        for (size_t r0 = 0; r0 < T; r0 += fr) {
            const int n = (int)(T - r0 < fr ? T - r0 : fr);
            float *xr = c->x + r0 * d, *hr = c->h + r0 * d;
            layernorm_forward(hr, NULL, NULL, xr, Lp->ln2_w, Lp->ln2_b, n, d, cfg->norm_eps);
            matmul_gelu_forward(c->ff, hr, Lp->fc1_w, Lp->fc1_b, n, d, F);
            matmul_residual(xr, c->ff, Lp->fc2_w, Lp->fc2_b, n, F, d);
        }
        if (hidden && hidden_layer == l + 1) memcpy(hidden, c->x, T * d * sizeof(float));
    }
    layernorm_forward(c->h, NULL, NULL, c->x, P->lnf_w, P->lnf_b, N, d, cfg->norm_eps);
    if (hidden && hidden_layer == -1) memcpy(hidden, c->h, T * d * sizeof(float));
    matmul_forward(logp, c->h, P->head_w, P->head_b, N, d, TOK_NRES);
    log_softmax_rows(logp, N, TOK_NRES);
}
