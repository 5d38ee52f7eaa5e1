/* weights.c - the canonical tensor table, config checks, loading (validating, zero-copy mmap),
 * random initialisation, saving and the FAVOR+ projection draw (weights/FORMAT.md). */
#include "model.h"
#include "gemm.h"
#include "rng.h"
#include "safetensors.h"

#include <assert.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PF_MAX_LAYERS 256
#define PF_MAX_D_MODEL 8192
#define PF_MAX_HEADS 256
#define PF_MAX_D_FF 65536
#define PF_MAX_FEATURES 16384

/* Formats an error message into err (when err and errlen allow). */
static void pf_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* See model.h. */
void pf_copy_utf8(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Fills one table entry (when it fits) and returns the next index. */
static int pf_entry(pf_tensor_info *out, int cap, int i, const char *name, int ndim, int s0, int s1,
                    float **slot) {
    if (out && i < cap) {
        pf_tensor_info *e = &out[i];
        snprintf(e->name, sizeof e->name, "%s", name);
        e->ndim = ndim;
        e->shape[0] = s0;
        e->shape[1] = ndim == 2 ? s1 : 0;
        e->numel = (size_t)s0 * (size_t)(ndim == 2 ? s1 : 1);
        e->slot = slot;
    }
    return i + 1;
}

/* Returns the tensor count of cfg and fills out[] (cap entries) in canonical order bound to p. */
int pf_tensor_table(const pf_config *cfg, pf_params *p, pf_tensor_info *out, int cap) {
    int d = cfg->d_model, m = cfg->n_features, F = cfg->d_ff;
    int dh = cfg->n_heads > 0 ? d / cfg->n_heads : 0;
    int i = 0;
    char nm[64];
#define SLOT(expr) (p ? &(expr) : NULL)
    i = pf_entry(out, cap, i, "embed.weight", 2, TOK_VOCAB, d, SLOT(p->embed));
    for (int l = 0; l < cfg->n_layers; l++) {
        pf_layer *L = p && p->layers ? &p->layers[l] : NULL;
#define LSLOT(f) (L ? &L->f : NULL)
#define ADD(suffix, nd, a, b, f) \
    (snprintf(nm, sizeof nm, "layers.%d." suffix, l), i = pf_entry(out, cap, i, nm, nd, a, b, LSLOT(f)))
        ADD("ln1.weight", 1, d, 0, ln1_w);
        ADD("ln1.bias", 1, d, 0, ln1_b);
        ADD("attn.q.weight", 2, d, d, wq);
        ADD("attn.q.bias", 1, d, 0, bq);
        ADD("attn.k.weight", 2, d, d, wk);
        ADD("attn.k.bias", 1, d, 0, bk);
        ADD("attn.v.weight", 2, d, d, wv);
        ADD("attn.v.bias", 1, d, 0, bv);
        ADD("attn.o.weight", 2, d, d, wo);
        ADD("attn.o.bias", 1, d, 0, bo);
        ADD("attn.proj", 2, m, dh, proj);
        if (cfg->conv_kernel > 0) {     /* optional depthwise convolution (FORMAT.md) */
            ADD("attn.conv_q", 2, cfg->conv_kernel, d, conv_q);
            ADD("attn.conv_k", 2, cfg->conv_kernel, d, conv_k);
            ADD("attn.conv_v", 2, cfg->conv_kernel, d, conv_v);
        }
        if (cfg->local_kernel > 0) {    /* optional local block (FORMAT.md) */
            ADD("local.ln.weight", 1, d, 0, local_ln_w);
            ADD("local.ln.bias", 1, d, 0, local_ln_b);
            ADD("local.conv", 2, cfg->local_kernel, d, local_conv);
            ADD("local.out.weight", 2, d, d, local_out_w);
            ADD("local.out.bias", 1, d, 0, local_out_b);
        }
        ADD("ln2.weight", 1, d, 0, ln2_w);
        ADD("ln2.bias", 1, d, 0, ln2_b);
        ADD("ffn.fc1.weight", 2, F, d, fc1_w);
        ADD("ffn.fc1.bias", 1, F, 0, fc1_b);
        ADD("ffn.fc2.weight", 2, d, F, fc2_w);
        ADD("ffn.fc2.bias", 1, d, 0, fc2_b);
#undef ADD
#undef LSLOT
    }
    i = pf_entry(out, cap, i, "final_ln.weight", 1, d, 0, SLOT(p->lnf_w));
    i = pf_entry(out, cap, i, "final_ln.bias", 1, d, 0, SLOT(p->lnf_b));
    i = pf_entry(out, cap, i, "head.weight", 2, TOK_NRES, d, SLOT(p->head_w));
    i = pf_entry(out, cap, i, "head.bias", 1, TOK_NRES, 0, SLOT(p->head_b));
#undef SLOT
    return i;
}

/* Returns the total number of parameters (floats) of cfg. */
size_t pf_param_count(const pf_config *cfg) {
    size_t d = (size_t)cfg->d_model, F = (size_t)cfg->d_ff, m = (size_t)cfg->n_features;
    size_t dh = cfg->n_heads > 0 ? d / (size_t)cfg->n_heads : 0;
    size_t K = cfg->conv_kernel > 0 ? (size_t)cfg->conv_kernel : 0;
    size_t KL = cfg->local_kernel > 0 ? (size_t)cfg->local_kernel : 0;
    size_t local = KL ? 2 * d + KL * d + d * d + d : 0;
    size_t per_layer = 4 * d * d + 4 * d + m * dh + 3 * K * d + local + 4 * d + F * d + F + d * F + d;
    return (size_t)TOK_VOCAB * d + (size_t)cfg->n_layers * per_layer + 2 * d +
           (size_t)TOK_NRES * d + TOK_NRES;
}

/* Checks sizes (positive, within limits, d divisible by heads), kernel and eps; 0 or -1 + err. */
int pf_config_validate(const pf_config *cfg, char *err, size_t errlen) {
    if (!cfg) {
        pf_err(err, errlen, "no config given");
        return -1;
    }
    struct { const char *key; int v, max; } lim[] = {
        {"n_layers", cfg->n_layers, PF_MAX_LAYERS}, {"d_model", cfg->d_model, PF_MAX_D_MODEL},
        {"n_heads", cfg->n_heads, PF_MAX_HEADS}, {"d_ff", cfg->d_ff, PF_MAX_D_FF},
        {"n_features", cfg->n_features, PF_MAX_FEATURES},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (lim[i].v < 1 || lim[i].v > lim[i].max) {
            pf_err(err, errlen, "config %s = %d is out of range; it must be between 1 and %d",
                   lim[i].key, lim[i].v, lim[i].max);
            return -1;
        }
    if (cfg->d_model % cfg->n_heads != 0) {
        pf_err(err, errlen, "config d_model = %d is not divisible by n_heads = %d; choose d_model a "
               "multiple of n_heads", cfg->d_model, cfg->n_heads);
        return -1;
    }
    if (cfg->kernel != PF_KERNEL_FAVOR_SOFTMAX && cfg->kernel != PF_KERNEL_FAVOR_RELU &&
        cfg->kernel != PF_KERNEL_EXACT) {
        pf_err(err, errlen, "config kernel %d is invalid; use favor-softmax, favor-relu or exact",
               (int)cfg->kernel);
        return -1;
    }
    struct { const char *key; int v; } odd[] = {
        {"conv_kernel", cfg->conv_kernel}, {"local_kernel", cfg->local_kernel}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
        if (odd[i].v < 0 || odd[i].v > PF_MAX_CONV_KERNEL || (odd[i].v > 0 && odd[i].v % 2 == 0)) {
            pf_err(err, errlen, "config %s = %d is invalid; it must be odd (1, 3, 5, ..., %d) for a "
                   "centred depthwise convolution, or 0 for none", odd[i].key, odd[i].v,
                   PF_MAX_CONV_KERNEL);
            return -1;
        }
    if (!isfinite(cfg->norm_eps) || !(cfg->norm_eps > 0.0f)) {
        pf_err(err, errlen, "config norm_eps = %g is invalid; it must be a finite positive number "
               "(e.g. 1e-05)", (double)cfg->norm_eps);
        return -1;
    }
    return 0;
}

/* Returns the name of kernel k ("favor-softmax", "favor-relu", "exact"; "default"/"unknown"). */
const char *pf_kernel_name(pf_kernel k) {
    switch (k) {
    case PF_KERNEL_FAVOR_SOFTMAX: return "favor-softmax";
    case PF_KERNEL_FAVOR_RELU: return "favor-relu";
    case PF_KERNEL_EXACT: return "exact";
    case PF_KERNEL_DEFAULT: return "default";
    }
    return "unknown";
}

/* Parses a kernel name into *k; returns 0, or -1 leaving *k unchanged when unknown. */
int pf_kernel_parse(const char *s, pf_kernel *k) {
    if (!s) return -1;
    if (strcmp(s, "favor-softmax") == 0) *k = PF_KERNEL_FAVOR_SOFTMAX;
    else if (strcmp(s, "favor-relu") == 0) *k = PF_KERNEL_FAVOR_RELU;
    else if (strcmp(s, "exact") == 0) *k = PF_KERNEL_EXACT;
    else return -1;
    return 0;
}

/* Allocates a model shell (struct + layer array) for cfg; NULL on allocation failure. */
static pf_model *pf_model_alloc(const pf_config *cfg) {
    pf_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *cfg;
    m->layer_store = calloc((size_t)cfg->n_layers, sizeof *m->layer_store);
    if (!m->layer_store) {
        free(m);
        return NULL;
    }
    m->p.layers = m->layer_store;
    m->n_params = pf_param_count(cfg);
    return m;
}

/* Returns the canonical table of m (malloc'ed, *n entries) bound to m->p; NULL on OOM. */
static pf_tensor_info *pf_table_of(pf_model *m, int *n) {
    int cnt = pf_tensor_table(&m->cfg, NULL, NULL, 0);
    pf_tensor_info *t = malloc((size_t)cnt * sizeof *t);
    if (!t) return NULL;
    pf_tensor_table(&m->cfg, &m->p, t, cnt);
    *n = cnt;
    return t;
}

/* Gives m one 64-byte aligned owned buffer and points every slot of the table into it. */
static int pf_model_own(pf_model *m, const pf_tensor_info *t, int n) {
    size_t bytes = (m->n_params * sizeof(float) + 63) & ~(size_t)63;
    m->owned = aligned_alloc(64, bytes ? bytes : 64);
    if (!m->owned) return -1;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        *t[i].slot = m->owned + off;
        off += t[i].numel;
    }
    return 0;
}

/* Frees a model (unmaps or frees parameters); NULL is fine. */
void pf_model_free(pf_model *m) {
    if (!m) return;
    /* bf16 packs of these weights (gm_sgemm_w) must not outlive them */
    if (m->map) gm_weight_cache_drop(m->map, m->map_len);
    if (m->owned) gm_weight_cache_drop(m->owned, sizeof(float) * m->n_params);
    if (m->map) munmap(m->map, m->map_len);
    free(m->owned);
    free(m->layer_store);
    free(m);
}

/* Parses a decimal integer metadata value strictly into [1, max]; returns 0 or -1 + err. */
static int pf_meta_int(const st_file *f, const char *key, int max, int *out, char *err, size_t errlen) {
    const char *s = st_meta(f, key);
    if (!s) {
        pf_err(err, errlen, "metadata key '%s' is missing; add it to __metadata__ as a decimal string",
               key);
        return -1;
    }
    long long v = 0;
    size_t i = 0;
    for (; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 9) break;
        v = v * 10 + (s[i] - '0');
    }
    if (i == 0 || s[i] != '\0') {
        pf_err(err, errlen, "metadata %s = \"%.40s\" is not a decimal integer between 1 and %d",
               key, s, max);
        return -1;
    }
    if (v < 1 || v > max) {
        pf_err(err, errlen, "metadata %s = %lld is out of range; it must be between 1 and %d", key, v,
               max);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Returns the metadata value for key, or NULL with err saying it is missing. */
static const char *pf_meta_req(const st_file *f, const char *key, char *err, size_t errlen) {
    const char *s = st_meta(f, key);
    if (!s) pf_err(err, errlen, "metadata key '%s' is missing from __metadata__ (see weights/FORMAT.md)",
                   key);
    return s;
}

/* Parses an optional width value s (NULL = absent = 0) of metadata key into *out (model.h). */
int pf_parse_width(const char *s, const char *key, const char *what, int *out, char *err,
                   size_t errlen) {
    if (!s) { *out = 0; return 0; }
    long v = 0;
    size_t i = 0;
    for (; s[i] >= '0' && s[i] <= '9' && i < 4; i++) v = v * 10 + (s[i] - '0');
    if (i == 0 || s[i] != '\0' || v > PF_MAX_CONV_KERNEL || (v > 0 && v % 2 == 0)) {
        pf_err(err, errlen, "metadata %s = \"%.40s\" is invalid; it must be an odd decimal integer "
               "1..%d (the width of %s), or \"0\" / absent for none", key, s, PF_MAX_CONV_KERNEL,
               what);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Reads and checks the __metadata__ of f into *cfg; returns 0 or -1 + err. */
static int pf_parse_meta(const st_file *f, pf_config *cfg, char *err, size_t errlen) {
    const char *s;
    memset(cfg, 0, sizeof *cfg);
    if (!(s = pf_meta_req(f, "format", err, errlen))) return -1;
    if (strcmp(s, "performer-protein") != 0) {
        pf_err(err, errlen, "metadata format = \"%.40s\"; this reader needs \"performer-protein\"", s);
        return -1;
    }
    if (!(s = pf_meta_req(f, "format_version", err, errlen))) return -1;
    if (strcmp(s, "1") != 0) {
        pf_err(err, errlen, "metadata format_version = \"%.40s\" is not supported; this reader reads "
               "version 1 (convert the file or upgrade the server)", s);
        return -1;
    }
    if (!(s = pf_meta_req(f, "vocab", err, errlen))) return -1;
    json_t *want = json_loads(tok_vocab_json(), 0, NULL), *got = json_loads(s, 0, NULL);
    int same = want && got && json_is_array(got) && json_equal(want, got);
    json_decref(want);
    json_decref(got);
    if (!same) {
        pf_err(err, errlen, "metadata vocab does not equal the v1 vocabulary %s; the model was "
               "trained with a different tokenizer", tok_vocab_json());
        return -1;
    }
    if (pf_meta_int(f, "n_layers", PF_MAX_LAYERS, &cfg->n_layers, err, errlen) ||
        pf_meta_int(f, "d_model", PF_MAX_D_MODEL, &cfg->d_model, err, errlen) ||
        pf_meta_int(f, "n_heads", PF_MAX_HEADS, &cfg->n_heads, err, errlen) ||
        pf_meta_int(f, "d_ff", PF_MAX_D_FF, &cfg->d_ff, err, errlen) ||
        pf_meta_int(f, "n_features", PF_MAX_FEATURES, &cfg->n_features, err, errlen))
        return -1;
    if (!(s = pf_meta_req(f, "kernel", err, errlen))) return -1;
    if (pf_kernel_parse(s, &cfg->kernel) != 0) {
        pf_err(err, errlen, "metadata kernel = \"%.40s\" is unknown; use favor-softmax, favor-relu "
               "or exact", s);
        return -1;
    }
    if (!(s = pf_meta_req(f, "position", err, errlen))) return -1;
    if (strcmp(s, "sinusoidal") != 0) {
        pf_err(err, errlen, "metadata position = \"%.40s\" is not supported; v1 needs \"sinusoidal\"", s);
        return -1;
    }
    if (!(s = pf_meta_req(f, "norm_eps", err, errlen))) return -1;
    char *end = NULL;
    double eps = (s[0] >= '0' && s[0] <= '9') || s[0] == '.' ? strtod(s, &end) : 0.0;
    if (!end || end == s || *end != '\0' || !isfinite(eps) || !((float)eps > 0.0f) ||
        !isfinite((float)eps)) {
        pf_err(err, errlen, "metadata norm_eps = \"%.40s\" is not a finite positive number (e.g. "
               "\"1e-05\")", s);
        return -1;
    }
    cfg->norm_eps = (float)eps;
    if (pf_parse_width(st_meta(f, "conv_kernel"), "conv_kernel", PF_WIDTH_CONV, &cfg->conv_kernel,
                       err, errlen) != 0 ||
        pf_parse_width(st_meta(f, "local_kernel"), "local_kernel", PF_WIDTH_LOCAL,
                       &cfg->local_kernel, err, errlen) != 0)
        return -1;
    if (!(s = pf_meta_req(f, "trained", err, errlen))) return -1;
    if (strcmp(s, "true") == 0) cfg->trained = 1;
    else if (strcmp(s, "false") == 0) cfg->trained = 0;
    else {
        pf_err(err, errlen, "metadata trained = \"%.40s\"; it must be \"true\" or \"false\"", s);
        return -1;
    }
    pf_copy_utf8(cfg->name, sizeof cfg->name, (s = st_meta(f, "name")) ? s : "");
    pf_copy_utf8(cfg->provenance, sizeof cfg->provenance, (s = st_meta(f, "provenance")) ? s : "");
    return 0;
}

/* Formats a shape as "[a, b]" into buf. */
static const char *pf_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* Returns the index of the first non-finite float of n at p (unaligned-safe), or -1. */
static long long pf_first_nonfinite(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, b + 4 * i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return (long long)i;
    }
    return -1;
}

/* qsort/bsearch comparator over st_tensor pointers by name. */
static int pf_cmp_tensor(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* qsort/bsearch comparator over table entries by name. */
static int pf_cmp_info(const void *a, const void *b) {
    return strcmp(((const pf_tensor_info *)a)->name, ((const pf_tensor_info *)b)->name);
}

/* mmaps and validates a weights file into *out (zero-copy when aligned); 0 or -1 + err. */
int pf_model_load(pf_model **out, const char *path, char *err, size_t errlen) {
    st_file f;
    pf_config cfg;
    pf_model *m = NULL;
    pf_tensor_info *tab = NULL, *sorted_tab = NULL;
    const st_tensor **byname = NULL;
    int rc = -1, n = 0;
    char e2[768];
    *out = NULL;
    if (st_open(&f, path, e2, sizeof e2) != 0) {
        pf_err(err, errlen, "%s", e2);
        return -1;
    }
    if (pf_parse_meta(&f, &cfg, e2, sizeof e2) != 0 || pf_config_validate(&cfg, e2, sizeof e2) != 0) {
        pf_err(err, errlen, "'%s': %s", path, e2);
        goto cleanup;
    }
    m = pf_model_alloc(&cfg);
    if (!m || !(tab = pf_table_of(m, &n))) {
        pf_err(err, errlen, "'%s': out of memory", path);
        goto cleanup;
    }
    byname = malloc((size_t)(f.n ? f.n : 1) * sizeof *byname);
    sorted_tab = malloc((size_t)n * sizeof *sorted_tab);
    if (!byname || !sorted_tab) {
        pf_err(err, errlen, "'%s': out of memory", path);
        goto cleanup;
    }
    for (int i = 0; i < f.n; i++) byname[i] = &f.t[i];
    qsort(byname, (size_t)f.n, sizeof *byname, pf_cmp_tensor);
    memcpy(sorted_tab, tab, (size_t)n * sizeof *tab);
    qsort(sorted_tab, (size_t)n, sizeof *sorted_tab, pf_cmp_info);

    int aligned = 1;
    for (int i = 0; i < n; i++) {
        st_tensor probe;
        const st_tensor *kp = &probe, *const *hit;
        snprintf(probe.name, sizeof probe.name, "%s", tab[i].name);
        hit = bsearch(&kp, byname, (size_t)f.n, sizeof *byname, pf_cmp_tensor);
        char ws[64], gs[160];
        int64_t want[2] = {tab[i].shape[0], tab[i].shape[1]};
        pf_shape_str(ws, sizeof ws, tab[i].ndim, want);
        int is_conv = strstr(tab[i].name, "attn.conv_") != NULL;
        int is_local = strstr(tab[i].name, ".local.") != NULL;
        if (!hit && is_conv) {
            pf_err(err, errlen, "'%s': tensor '%s' (shape %s) is missing; metadata conv_kernel=%d "
                   "asks for depthwise convolution taps attn.conv_q/conv_k/conv_v [conv_kernel, "
                   "d_model] in every layer (add them, or drop conv_kernel for a model without "
                   "convolution)", path, tab[i].name, ws, cfg.conv_kernel);
            goto cleanup;
        }
        if (!hit && is_local) {
            pf_err(err, errlen, "'%s': tensor '%s' (shape %s) is missing; metadata local_kernel=%d "
                   "asks for a local block local.ln.weight/ln.bias [d_model], local.conv "
                   "[local_kernel, d_model], local.out.weight [d_model, d_model]/out.bias "
                   "[d_model] in every layer (add them, or drop local_kernel for a model without "
                   "local blocks)", path, tab[i].name, ws, cfg.local_kernel);
            goto cleanup;
        }
        if (!hit) {
            pf_err(err, errlen, "'%s': tensor '%s' (shape %s) is missing; the file does not match "
                   "its metadata (n_layers=%d d_model=%d)", path, tab[i].name, ws, cfg.n_layers,
                   cfg.d_model);
            goto cleanup;
        }
        const st_tensor *t = *hit;
        if (strcmp(t->dtype, "F32") != 0) {
            pf_err(err, errlen, "'%s': tensor '%s' has dtype %s; v1 requires F32 (convert it to "
                   "float32)", path, t->name, t->dtype);
            goto cleanup;
        }
        int ok = t->ndim == tab[i].ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == want[d];
        if (!ok && (is_conv || strstr(tab[i].name, "local.conv"))) {
            const char *key = is_conv ? "conv_kernel" : "local_kernel";
            pf_err(err, errlen, "'%s': tensor '%s' has shape %s, expected %s = [%s, d_model] (from "
                   "the metadata: %s=%d d_model=%d)", path, t->name,
                   pf_shape_str(gs, sizeof gs, t->ndim, t->shape), ws, key, key,
                   is_conv ? cfg.conv_kernel : cfg.local_kernel, cfg.d_model);
            goto cleanup;
        }
        if (!ok) {
            pf_err(err, errlen, "'%s': tensor '%s' has shape %s, expected %s (from the metadata: "
                   "d_model=%d n_heads=%d d_ff=%d n_features=%d)", path, t->name,
                   pf_shape_str(gs, sizeof gs, t->ndim, t->shape), ws, cfg.d_model, cfg.n_heads,
                   cfg.d_ff, cfg.n_features);
            goto cleanup;
        }
        if ((f.data_start + t->begin) % sizeof(float) != 0) aligned = 0;
        *tab[i].slot = (float *)t->data;
    }
    for (int i = 0; i < f.n; i++) {
        pf_tensor_info key_i;
        size_t nl = strlen(f.t[i].name);
        if (nl < sizeof key_i.name) memcpy(key_i.name, f.t[i].name, nl + 1);
        if (nl >= sizeof key_i.name ||
            !bsearch(&key_i, sorted_tab, (size_t)n, sizeof *sorted_tab, pf_cmp_info)) {
            char nb[80];
            size_t k = 0;
            for (; f.t[i].name[k] && k < sizeof nb - 1; k++) {
                unsigned char c = (unsigned char)f.t[i].name[k];
                nb[k] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
            }
            nb[k] = '\0';
            if (cfg.conv_kernel == 0 && strstr(nb, "attn.conv_"))
                pf_err(err, errlen, "'%s': unexpected tensor '%s': depthwise convolution taps need "
                       "metadata conv_kernel (their first dimension, odd), which is absent or 0 "
                       "(add conv_kernel, or remove the conv tensors)", path, nb);
            else if (cfg.local_kernel == 0 && strstr(nb, ".local."))
                pf_err(err, errlen, "'%s': unexpected tensor '%s': local block tensors need "
                       "metadata local_kernel (the width of local.conv, odd), which is absent or 0 "
                       "(add local_kernel, or remove the local tensors)", path, nb);
            else
                pf_err(err, errlen, "'%s': unexpected tensor '%s'; a v1 file holds exactly the "
                       "tensors listed in weights/FORMAT.md (remove it)", path, nb);
            goto cleanup;
        }
    }
    for (int i = 0; i < n; i++) {
        long long bad = pf_first_nonfinite(*tab[i].slot, tab[i].numel);
        if (bad >= 0) {
            pf_err(err, errlen, "'%s': tensor '%s' has a non-finite value (NaN or Inf) at flat index "
                   "%lld; the weights are corrupt (retrain or restore them)", path, tab[i].name, bad);
            goto cleanup;
        }
    }
    st_sha256_hex(f.map, f.len, m->sha256);
    pf_copy_utf8(m->path, sizeof m->path, path);
    if (aligned) {
        m->map = f.map;
        m->map_len = f.len;
        f.map = NULL;               /* the model owns the mapping now */
    } else {
        /* Unaligned data: copy into owned memory (the mapping is released by st_close). */
        const void **src = malloc((size_t)n * sizeof *src);
        if (!src) {
            pf_err(err, errlen, "'%s': out of memory", path);
            goto cleanup;
        }
        for (int i = 0; i < n; i++) src[i] = *tab[i].slot;
        if (pf_model_own(m, tab, n) != 0) {
            free(src);
            pf_err(err, errlen, "'%s': out of memory copying unaligned tensors", path);
            goto cleanup;
        }
        for (int i = 0; i < n; i++) memcpy(*tab[i].slot, src[i], tab[i].numel * sizeof(float));
        free(src);
    }
    *out = m;
    m = NULL;
    rc = 0;
cleanup:
    st_close(&f);
    pf_model_free(m);
    free(tab);
    free(sorted_tab);
    free(byname);
    return rc;
}

#define PF_SEED_PROJ 0x70726f6a65637469ULL    /* "projecti": layer l's FAVOR+ projection */
#define PF_SEED_LOCAL 0x6c6f63616c6f7574ULL   /* "localout": layer l's local.out.weight */
#define PF_SEED_GROW 0x67726f776c617972ULL    /* "growlayr": a layer added by pf_model_extend */

/* Returns the seed of layer l's stream tag (PF_SEED_*), derived from the model seed. */
static uint64_t pf_layer_seed(uint64_t seed, uint64_t tag, int l) {
    uint64_t x = seed ^ tag;
    x += 0x9e3779b97f4a7c15ULL * (uint64_t)(l + 1);
    return rng_splitmix64(&x);
}

/* Fills table entry t of cfg when it is a tensor that starts as the identity of an optional part
 * (conv taps and local.conv: centre tap 1, others 0; local.ln.weight 1; local.ln.bias and
 * local.out 0) and returns 1; returns 0 (leaving it) for any other tensor. */
static int pf_fill_identity(const pf_tensor_info *t, const pf_config *cfg) {
    float *p = *t->slot;
    int conv = strstr(t->name, "attn.conv_") != NULL, local = strstr(t->name, ".local.") != NULL;
    if (!conv && !local) return 0;
    memset(p, 0, t->numel * sizeof *p);
    if (conv || strstr(t->name, "local.conv")) {
        int K = conv ? cfg->conv_kernel : cfg->local_kernel, d = cfg->d_model;
        for (int c = 0; c < d; c++) p[(size_t)((K - 1) / 2) * d + c] = 1.0f;
    } else if (strstr(t->name, "local.ln.weight")) {
        for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f;
    }
    return 1;
}

/* Draws tensor t of a model of cfg as pf_model_init does: its layer's own streams of seed for the
 * FAVOR+ projection and local.out.weight, the identity for convolution taps and local blocks,
 * 0 / 1 for biases / LayerNorm weights, and normal draws from *r for the other matrices. */
static void pf_init_tensor(const pf_tensor_info *t, const pf_config *cfg, uint64_t seed, rng_t *r) {
    float *p = *t->slot;
    const char *nm = t->name;
    size_t len = strlen(nm);
    double std = 0.02, std_out = 0.02 / sqrt(2.0 * cfg->n_layers);
    int dh = cfg->d_model / cfg->n_heads;
#define ENDS(s) (len >= sizeof(s) - 1 && strcmp(nm + len - (sizeof(s) - 1), s) == 0)
    if (ENDS("local.out.weight")) {
        /* drawn like attn.o.weight, from the layer's own stream: the other tensors equal
         * those of the model without local blocks of the same seed */
        rng_t rl;
        rng_seed(&rl, pf_layer_seed(seed, PF_SEED_LOCAL, atoi(nm + strlen("layers."))));
        for (size_t k = 0; k < t->numel; k++) p[k] = (float)(std_out * rng_normal(&rl));
    } else if (pf_fill_identity(t, cfg)) {
        /* identity taps, LN 1/0 (no RNG draws): a conv model starts as the conv-less
         * function */
    } else if (ENDS("attn.proj")) {
        int l = atoi(nm + strlen("layers."));
        pf_draw_projection(p, cfg->n_features, dh, pf_layer_seed(seed, PF_SEED_PROJ, l));
    } else if (ENDS(".bias")) {
        memset(p, 0, t->numel * sizeof *p);
    } else if (ENDS("ln1.weight") || ENDS("ln2.weight") || ENDS("final_ln.weight")) {
        for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f;
    } else {
        /* token embeddings at unit scale so that they are not drowned by the sinusoidal
         * position encoding (entries of size ~1) */
        double s = ENDS("embed.weight") ? 1.0
                 : (ENDS("attn.o.weight") || ENDS("ffn.fc2.weight")) ? std_out : std;
        for (size_t k = 0; k < t->numel; k++) p[k] = (float)(s * rng_normal(r));
    }
#undef ENDS
}

/* Creates a randomly initialised owned model from cfg and seed (deterministic); 0 or -1 + err. */
int pf_model_init(pf_model **out, const pf_config *cfg, uint64_t seed, char *err, size_t errlen) {
    pf_model *m = NULL;
    pf_tensor_info *tab = NULL;
    int n = 0, rc = -1;
    *out = NULL;
    if (pf_config_validate(cfg, err, errlen) != 0) return -1;
    m = pf_model_alloc(cfg);
    if (!m || !(tab = pf_table_of(m, &n)) || pf_model_own(m, tab, n) != 0) {
        pf_err(err, errlen, "out of memory allocating %zu parameters", pf_param_count(cfg));
        goto cleanup;
    }
    m->cfg.trained = 0;
    if (!m->cfg.name[0]) snprintf(m->cfg.name, sizeof m->cfg.name, "performer-protein");
    if (!m->cfg.provenance[0])
        snprintf(m->cfg.provenance, sizeof m->cfg.provenance,
                 "{\"init\":\"random\",\"seed\":%llu}", (unsigned long long)seed);
    m->cfg.name[sizeof m->cfg.name - 1] = '\0';
    m->cfg.provenance[sizeof m->cfg.provenance - 1] = '\0';

    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) pf_init_tensor(&tab[i], cfg, seed, &r);
    *out = m;
    m = NULL;
    rc = 0;
cleanup:
    pf_model_free(m);
    free(tab);
    return rc;
}

/* Fills tensor t of layer l, a layer that pf_model_extend appends, so that the layer is the
 * identity: drawn as pf_model_init draws it (the matrices from a stream of seed, layer and tensor
 * name, so they can learn once training starts), then its residual branches' output projections
 * (attn.o, local.out, ffn.fc2) zeroed. */
static void pf_fill_new_layer(const pf_tensor_info *t, const pf_config *cfg, int l, uint64_t seed) {
    const char *nm = t->name;
    size_t len = strlen(nm);
    uint64_t h = 0xcbf29ce484222325ULL;             /* FNV-1a of the name */
    for (size_t k = 0; k < len; k++) h = (h ^ (unsigned char)nm[k]) * 0x100000001b3ULL;
    rng_t r;
    rng_seed(&r, pf_layer_seed(seed, PF_SEED_GROW, l) ^ h);
    pf_init_tensor(t, cfg, seed, &r);
    if (strstr(nm, ".attn.o.weight") || strstr(nm, ".local.out.weight") || strstr(nm, ".ffn.fc2.weight"))
        memset(*t->slot, 0, t->numel * sizeof(float));
}

/* Makes an owned model of configuration cfg from m: tensors of the same name are copied; the
 * others (the conv taps and local blocks cfg adds to an m without them, and the layers from
 * m's n_layers up to cfg's, drawn with seed) start as the identity, so the copy computes m's
 * function. Keeps m's path; sha256 is left empty. Returns 0 or -1 + err. */
static int model_copy(pf_model **out, const pf_model *m, const pf_config *cfg, uint64_t seed,
                      char *err, size_t errlen) {
    pf_model *c = NULL;
    pf_tensor_info *src = NULL, *dst = NULL;
    int n = 0, n2 = 0, rc = -1;
    *out = NULL;
    c = pf_model_alloc(cfg);
    if (!c || !(src = pf_table_of((pf_model *)m, &n)) || !(dst = pf_table_of(c, &n2)) ||
        pf_model_own(c, dst, n2) != 0) {
        pf_err(err, errlen, "out of memory copying %zu parameters", m->n_params);
        goto cleanup;
    }
    /* both tables list their tensors in the canonical order, dst possibly with 3 conv tensors
     * and 5 local tensors per layer inserted, and whole layers before final_ln */
    for (int i = 0, j = 0; j < n2; j++) {
        int l = strncmp(dst[j].name, "layers.", 7) == 0 ? atoi(dst[j].name + 7) : -1;
        if (i < n && strcmp(src[i].name, dst[j].name) == 0) {
            memcpy(*dst[j].slot, *src[i].slot, dst[j].numel * sizeof(float));
            i++;
        } else if (l >= m->cfg.n_layers) {
            pf_fill_new_layer(&dst[j], cfg, l, seed);
        } else {
            int added = pf_fill_identity(&dst[j], cfg);
            assert(added);
            (void)added;
        }
    }
    c->sha256[0] = '\0';
    memcpy(c->path, m->path, sizeof c->path);
    *out = c;
    c = NULL;
    rc = 0;
cleanup:
    pf_model_free(c);
    free(src);
    free(dst);
    return rc;
}

/* Makes an owned, writable deep copy of m (same cfg, sha256 and path); 0 or -1 + err. */
int pf_model_clone_owned(pf_model **out, const pf_model *m, char *err, size_t errlen) {
    return pf_model_extend(out, m, 0, 0, 0, 0, err, errlen);
}

int pf_model_extend(pf_model **out, const pf_model *m, int conv_kernel, int local_kernel,
                    int n_layers, uint64_t seed, char *err, size_t errlen) {
    *out = NULL;
    pf_config cfg = m->cfg;
    if (n_layers != 0 && n_layers < m->cfg.n_layers) {
        pf_err(err, errlen, "the model has %d layers; layers can be added (identity layers on top), "
               "not removed (asked for %d)", m->cfg.n_layers, n_layers);
        return -1;
    }
    if (n_layers > 0) cfg.n_layers = n_layers;
    const char *key[2] = { "conv_kernel", "local_kernel" };
    int want[2] = { conv_kernel, local_kernel }, *dst[2] = { &cfg.conv_kernel, &cfg.local_kernel };
    for (int j = 0; j < 2; j++) {
        if (want[j] == 0 || want[j] == *dst[j]) continue;
        if (*dst[j] != 0) {
            pf_err(err, errlen, "the model already has %s %d, not %d (a trained convolution cannot "
                   "change width)", key[j], *dst[j], want[j]);
            return -1;
        }
        *dst[j] = want[j];
    }
    if (pf_config_validate(&cfg, err, errlen) != 0 ||
        model_copy(out, m, &cfg, seed, err, errlen) != 0)
        return -1;
    if (cfg.conv_kernel == m->cfg.conv_kernel && cfg.local_kernel == m->cfg.local_kernel &&
        cfg.n_layers == m->cfg.n_layers)
        memcpy((*out)->sha256, m->sha256, sizeof m->sha256);   /* the same model */
    return 0;
}

/* pf_model_add_conv / pf_model_add_local: K (> 0) for the part (local or not) m must lack. */
static int model_add(pf_model **out, const pf_model *m, int local, int K, char *err,
                     size_t errlen) {
    *out = NULL;
    const char *key = local ? "local_kernel" : "conv_kernel";
    int have = local ? m->cfg.local_kernel : m->cfg.conv_kernel;
    if (have != 0) {
        pf_err(err, errlen, "the model already has %s (%s %d)",
               local ? "local blocks" : "a depthwise convolution", key, have);
        return -1;
    }
    if (K < 1) {
        pf_err(err, errlen, "%s %d is invalid; it must be odd, 1..%d", key, K, PF_MAX_CONV_KERNEL);
        return -1;
    }
    return pf_model_extend(out, m, local ? 0 : K, local ? K : 0, 0, 0, err, errlen);
}

/* Makes an owned copy of conv-less m with identity conv taps of width K; 0 or -1 + err. */
int pf_model_add_conv(pf_model **out, const pf_model *m, int K, char *err, size_t errlen) {
    return model_add(out, m, 0, K, err, errlen);
}

/* Makes an owned copy of m without local blocks with identity local blocks of width K; 0 or -1
 * + err. */
int pf_model_add_local(pf_model **out, const pf_model *m, int K, char *err, size_t errlen) {
    return model_add(out, m, 1, K, err, errlen);
}

/* Writes m as a v1 safetensors file atomically and sets m->sha256 (and m->path); 0 or -1 + err. */
int pf_model_save(pf_model *m, const char *path, char *err, size_t errlen) {
    pf_tensor_info *tab = NULL;
    st_out_tensor *ot = NULL;
    int n = 0, rc = -1;
    char ints[7][24], eps[32];
    if (pf_config_validate(&m->cfg, err, errlen) != 0) return -1;
    if (!(tab = pf_table_of(m, &n)) || !(ot = calloc((size_t)n, sizeof *ot))) {
        pf_err(err, errlen, "out of memory");
        goto cleanup;
    }
    for (int i = 0; i < n; i++) {
        ot[i].name = tab[i].name;
        ot[i].ndim = tab[i].ndim;
        ot[i].shape[0] = tab[i].shape[0];
        ot[i].shape[1] = tab[i].shape[1];
        ot[i].data = *tab[i].slot;
    }
    snprintf(ints[0], sizeof ints[0], "%d", m->cfg.n_layers);
    snprintf(ints[1], sizeof ints[1], "%d", m->cfg.d_model);
    snprintf(ints[2], sizeof ints[2], "%d", m->cfg.n_heads);
    snprintf(ints[3], sizeof ints[3], "%d", m->cfg.d_ff);
    snprintf(ints[4], sizeof ints[4], "%d", m->cfg.n_features);
    snprintf(eps, sizeof eps, "%.9g", (double)m->cfg.norm_eps);
    char name[sizeof m->cfg.name], prov[sizeof m->cfg.provenance];
    pf_copy_utf8(name, sizeof name, m->cfg.name);
    pf_copy_utf8(prov, sizeof prov, m->cfg.provenance);
    snprintf(ints[5], sizeof ints[5], "%d", m->cfg.conv_kernel);
    snprintf(ints[6], sizeof ints[6], "%d", m->cfg.local_kernel);
    /* conv_kernel and local_kernel are written only when the model has that part, so a model
     * without them has exactly the file it had before the keys existed */
    const char *keys[16] = {"format", "format_version", "name", "vocab", "n_layers", "d_model",
                            "n_heads", "d_ff", "kernel", "n_features", "position", "norm_eps",
                            "trained", "provenance"};
    const char *vals[16] = {"performer-protein", "1", name, tok_vocab_json(), ints[0], ints[1],
                            ints[2], ints[3], pf_kernel_name(m->cfg.kernel), ints[4], "sinusoidal",
                            eps, m->cfg.trained ? "true" : "false", prov};
    int n_meta = 14;
    if (m->cfg.conv_kernel > 0) { keys[n_meta] = "conv_kernel"; vals[n_meta++] = ints[5]; }
    if (m->cfg.local_kernel > 0) { keys[n_meta] = "local_kernel"; vals[n_meta++] = ints[6]; }
    if (st_write(path, ot, n, keys, vals, n_meta, err, errlen) != 0)
        goto cleanup;
    if (st_sha256_file(path, m->sha256, err, errlen) != 0) goto cleanup;
    pf_copy_utf8(m->path, sizeof m->path, path);
    rc = 0;
cleanup:
    free(tab);
    free(ot);
    return rc;
}

/* Draws FAVOR+ orthogonal random features into proj [m, dh] from seed (weights/FORMAT.md):
 * per block of dh rows, a dh x dh standard normal G (row-major draws) is QR-factorised by modified
 * Gram-Schmidt (twice, in double) and the block's rows are the columns of Q (rows of Q^T); the
 * last block keeps its first m mod dh rows. Then row r (r = 0..m-1, in order) is scaled by the
 * norm of a fresh dh-dim standard normal vector. Falls back to i.i.d. Gaussian rows if out of
 * memory (statistically the same row-norm distribution, without orthogonality). */
void pf_draw_projection(float *proj, int m, int dh, uint64_t seed) {
    if (m <= 0 || dh <= 0) return;
    rng_t r;
    rng_seed(&r, seed);
    double *q = malloc((size_t)dh * (size_t)dh * sizeof *q);   /* q[j*dh + i] = column j of G/Q */
    if (!q) {
        for (size_t k = 0; k < (size_t)m * (size_t)dh; k++) proj[k] = (float)rng_normal(&r);
        return;
    }
    for (int b0 = 0; b0 < m; b0 += dh) {
        int rows = m - b0 < dh ? m - b0 : dh;
        for (;;) {
            for (int i = 0; i < dh; i++)
                for (int j = 0; j < dh; j++) {
                    double g = rng_normal(&r);
                    if (j < rows) q[(size_t)j * dh + i] = g;   /* later columns do not affect Q's first */
                }
            int ok = 1;
            for (int j = 0; j < rows && ok; j++) {
                double *cj = q + (size_t)j * dh;
                for (int pass = 0; pass < 2; pass++)
                    for (int k = 0; k < j; k++) {
                        const double *ck = q + (size_t)k * dh;
                        double dot = 0;
                        for (int i = 0; i < dh; i++) dot += ck[i] * cj[i];
                        for (int i = 0; i < dh; i++) cj[i] -= dot * ck[i];
                    }
                double nrm = 0;
                for (int i = 0; i < dh; i++) nrm += cj[i] * cj[i];
                nrm = sqrt(nrm);
                if (!(nrm > 1e-10)) ok = 0;     /* (numerically) rank deficient: draw again */
                else
                    for (int i = 0; i < dh; i++) cj[i] /= nrm;
            }
            if (ok) break;
        }
        for (int j = 0; j < rows; j++)
            for (int i = 0; i < dh; i++) proj[(size_t)(b0 + j) * dh + i] = (float)q[(size_t)j * dh + i];
    }
    free(q);
    for (int row = 0; row < m; row++) {
        double s = 0;
        for (int i = 0; i < dh; i++) {
            double g = rng_normal(&r);
            s += g * g;
        }
        s = sqrt(s);
        for (int i = 0; i < dh; i++) proj[(size_t)row * dh + i] = (float)(proj[(size_t)row * dh + i] * s);
    }
}
