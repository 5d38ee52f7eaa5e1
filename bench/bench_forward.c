/* bench_forward.c - forward-pass and sgemm microbenchmarks for `make bench` (bench/run.sh).
 *
 * Every mode prints one JSON object per line on stdout (bench/report.py reads them).
 *
 *   bench_forward info
 *       OpenBLAS core and build config, thread count, OMP_WAIT_POLICY.
 *   bench_forward forward --weights F --kernel K --len L [--batch B] [--threads N]
 *                 [--warmup N] [--min-reps N] [--max-reps N] [--min-time S] [--single-over S]
 *                 [--seed S] [--tokens-out F] [--logp-out F] [--exact-limit-mb MB]
 *                 [--precision fp32|bf16] [--group-tokens N] [--seq-parallel-len N] [--seq-groups K] [--seq-group-tokens N]
 *                 [--fp32-kernel own|openblas] [--ffn-rows N]
 *       Runs pf_forward on B random sequences of L framed positions (<cls> + L-2 standard
 *       residues + <eos>) with warm-up and repeats; reports median/mean/min/max seconds, the matmul
 *       FLOPs of one forward (weights/FORMAT.md shapes), GFLOP/s, and memory: VmRSS after loading
 *       the weights and VmHWM (peak RSS) at exit. Run one process per (kernel, L, B) so that peak
 *       RSS belongs to that configuration alone. A kernel that refuses the length (exact attention
 *       over its L x L memory limit) gives "status": "refused" and exit 0.
 *       --tokens-out writes the int32 tokens [B*L], --logp-out the float32 log-probs [B*L*20]
 *       of the last run (for the PyTorch agreement check in bench_torch.py). --exact-limit-mb
 *       changes the exact kernel's L x L memory limit (default: the library's, 1 GiB).
 *       --precision (default fp32) sets the weight products' precision (gm_set_precision, as
 *       `performer --precision` does) before the model runs; bf16 on a CPU without AVX-512 BF16
 *       fails with exit 2. The JSON line always says "precision". --fp32-kernel (default: own
 *       where the CPU has AVX-512F, as in every program) picks the float32 products' kernel
 *       (gm_fp32_own); the JSON line says "fp32_kernel". --ffn-rows N sets pf_set_ffn_rows (the
 *       feed-forward block's rows per chunk; default: the library's for the products,
 *       pf_ffn_rows); the JSON line says "ffn_rows" (0 = all at once).
 *       --group-tokens N (default: the library's, pf_group_tokens; 0 = the whole batch at once) sets
 *       pf_set_group_tokens; the JSON line says "group_tokens". --seq-parallel-len N (default
 *       PF_SEQ_PARALLEL_LEN_DEFAULT; 0 = never) sets pf_set_seq_parallel_len ("seq_parallel_len").
 *       --seq-groups K (default PF_SEQ_GROUPS_DEFAULT) sets pf_set_seq_groups ("seq_groups").
 *       --seq-group-tokens N (default: by products) sets pf_set_seq_group_tokens ("seq_group_tokens").
 *   bench_forward sgemm [--threads N] [--n 2048] [--reps 5] [--shapes-T T] [--d D --d-ff F]
 *       Best-of-reps GFLOP/s of an n x n x n cblas_sgemm (the machine's sgemm peak), and of the
 *       model's own linear-layer shapes at T tokens (what a forward pass can reach at best). When
 *       the CPU has AVX-512 BF16 (gm_bf16_supported()), the same products again with
 *       gm_sgemm_bf16 (bf16 operands, float32 accumulation): "bf16_gflops" on every line (the
 *       n^3 one is the bf16 peak) and "bf16_frac_of_bf16_peak" on the shape lines;
 *       "bf16_supported" on the n^3 line says whether they were measured. On a CPU with AVX-512F
 *       the own float32 product (gm_sgemm_f32, what the model's fp32 products use by default)
 *       too: "own_gflops" on every line.
 *   bench_forward dwconv [--threads N] [--batch B] [--len L] [--d C] [--conv K] [--reps 21]
 *                 [--seed S]
 *       The q/k/v depthwise convolution alone (dwconv_forward, dwconv_backward) on random data:
 *       B packed sequences of L rows (default 32 x 512 = 16,384 tokens), C channels (256), width
 *       K (15); median/min seconds of reps runs after one warm-up, and GFLOP/s counting
 *       2 N C K FLOPs forward and 4 N C K backward (dinp and dw).
 */
#include "gemm.h"
#include "model.h"
#include "ops.h"
#include "tokenizer.h"

#include <cblas.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Returns the value in kB of a "Key:   123 kB" line of /proc/self/status, or -1. */
static long proc_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static uint64_t rng_state;
static uint64_t splitmix(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints a JSON string (s may contain quotes/backslashes/control characters). */
static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_forward info\n"
            "       bench_forward forward --weights F --kernel K --len L [--batch B] [--threads N]\n"
            "                     [--warmup N] [--min-reps N] [--max-reps N] [--min-time S]\n"
            "                     [--single-over S] [--seed S] [--tokens-out F] [--logp-out F]\n"
            "                     [--exact-limit-mb MB] [--precision fp32|bf16] [--group-tokens N]\n"
            "                     [--seq-parallel-len N] [--seq-groups K] [--seq-group-tokens N] [--fp32-kernel own|openblas] [--ffn-rows N]\n"
            "       bench_forward sgemm [--threads N] [--n 2048] [--reps 5] [--shapes-T T]\n"
            "                     [--d D] [--d-ff F]\n"
            "       bench_forward dwconv [--threads N] [--batch B] [--len L] [--d C] [--conv K]\n"
            "                     [--reps N] [--seed S]\n");
    exit(2);
}

/* FLOPs of the matrix products of one forward over B sequences of L positions (2 per
 * multiply-add), split into linear layers (q, k, v, o, fc1, fc2, local.out), attention (with the
 * optional convolutions on q, k, v and of the local block) and the head. */
typedef struct { double linear, attention, head, total; } flops_t;

static flops_t forward_flops(const pf_config *c, pf_kernel k, double L, double B) {
    double d = c->d_model, F = c->d_ff, H = c->n_heads, m = c->n_features, dh = d / H;
    double T = L * B, nl = c->n_layers;
    flops_t f;
    f.linear = nl * 2.0 * T * (4.0 * d * d + 2.0 * d * F);
    if (k == PF_KERNEL_EXACT) {
        /* per head: scores q k^T [L, L] (2 L^2 dh) and probabilities x v (2 L^2 dh) */
        f.attention = nl * B * H * 4.0 * L * L * dh;
    } else {
        /* features of q and k (2 x 2 T H m dh), KV = phi_k^T v and phi_q KV (2 x 2 T H m dh),
         * z . phi_q denominators (2 T H m) */
        f.attention = nl * (8.0 * T * H * m * dh + 2.0 * T * H * m);
    }
    /* the depthwise convolution on q, k, v (conv_kernel K): K multiply-adds per element */
    f.attention += nl * 3.0 * 2.0 * T * d * c->conv_kernel;
    /* the local block (local_kernel K): its depthwise convolution (K multiply-adds per element,
     * counted with attention like the conv above) and its d x d output projection (linear) */
    f.attention += nl * 2.0 * T * d * c->local_kernel;
    if (c->local_kernel > 0) f.linear += nl * 2.0 * T * d * d;
    f.head = 2.0 * T * d * TOK_NRES;
    f.total = f.linear + f.attention + f.head;
    return f;
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    int rc = (w == n && fclose(f) == 0) ? 0 : -1;
    if (w != n) fclose(f);
    return rc;
}

static int mode_info(int threads) {
    pf_set_threads(threads);
    const char *wp = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("{\"bench\":\"info\",\"openblas_core\":");
    json_str(openblas_get_corename());
    printf(",\"openblas_config\":");
    json_str(openblas_get_config());
    printf(",\"openblas_coretype_env\":");
    json_str(ct ? ct : "");
    printf(",\"openblas_threads\":%d,\"omp_wait_policy\":", openblas_get_num_threads());
    json_str(wp ? wp : "");
    printf(",\"gomp_spincount\":");
    json_str(spin ? spin : "");
    printf(",\"bf16_kernel\":");
    json_str(!gm_bf16_supported() ? "none" : gm_bf16_is_amx() ? "amx" : "avx512_bf16");
    printf("}\n");
    return 0;
}

/* Times one cblas_sgemm(RowMajor, ta, tb, M, N, K) (kind 0), gm_sgemm_bf16 (kind 1) or the own
 * float32 product gm_sgemm_f32 (kind 2) of the same product, best of reps; returns GFLOP/s. */
static double time_sgemm(int ta, int M, int N, int K, int reps, int tb, int kind) {
    float *A = malloc(sizeof(float) * (size_t)M * K);
    float *Bm = malloc(sizeof(float) * (size_t)K * N);
    float *C = malloc(sizeof(float) * (size_t)M * N);
    if (!A || !Bm || !C) { fprintf(stderr, "bench_forward: out of memory\n"); exit(1); }
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(splitmix() >> 40) * 0x1p-24f - 0.5f;
    for (size_t i = 0; i < (size_t)K * N; i++) Bm[i] = (float)(splitmix() >> 40) * 0x1p-24f - 0.5f;
    memset(C, 0, sizeof(float) * (size_t)M * N);
    int lda = ta ? M : K, ldb = tb ? K : N;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {    /* the first run is a warm-up */
        double t0 = now_s();
        if (kind == 1)
            gm_sgemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 0.0f, C, N);
        else if (kind == 2)
            gm_sgemm_f32(ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 0.0f, C, N);
        else
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                        M, N, K, 1.0f, A, lda, Bm, ldb, 0.0f, C, N);
        double t = now_s() - t0;
        if (r > 0 && t < best) best = t;
    }
    free(A); free(Bm); free(C);
    return 2.0 * M * N * K / best * 1e-9;
}

static int mode_sgemm(int threads, int n, int reps, int T, int d, int F) {
    pf_set_threads(threads);
    rng_state = 12345;
    const int bf = gm_bf16_supported();
    const int own = gm_avx512f_supported();
    double peak = time_sgemm(0, n, n, n, reps, 0, 0);
    double bpeak = bf ? time_sgemm(0, n, n, n, reps, 0, 1) : 0;
    double opeak = own ? time_sgemm(0, n, n, n, reps, 0, 2) : 0;
    printf("{\"bench\":\"sgemm\",\"threads\":%d,\"n\":%d,\"reps\":%d,\"gflops\":%.2f,\"openblas_core\":",
           threads, n, reps, peak);
    json_str(openblas_get_corename());
    printf(",\"bf16_supported\":%s", bf ? "true" : "false");
    if (bf) printf(",\"bf16_gflops\":%.2f", bpeak);
    if (own) printf(",\"own_gflops\":%.2f", opeak);
    printf("}\n");
    fflush(stdout);
    if (T > 0) {
        /* the model's linear layers as matmul_forward calls them: out[T, OC] = in[T, C] W[OC, C]^T */
        struct { const char *name; int C, OC; } s[] = {
            { "qkvo", d, d }, { "fc1", d, F }, { "fc2", F, d }, { "head", d, TOK_NRES } };
        for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
            double g = time_sgemm(0, T, s[i].OC, s[i].C, reps, 1, 0);
            printf("{\"bench\":\"sgemm_shape\",\"threads\":%d,\"layer\":\"%s\",\"M\":%d,\"N\":%d,\"K\":%d,"
                   "\"gflops\":%.2f,\"frac_of_peak\":%.4f", threads, s[i].name, T, s[i].OC, s[i].C, g,
                   g / peak);
            if (bf) {
                double gb = time_sgemm(0, T, s[i].OC, s[i].C, reps, 1, 1);
                printf(",\"bf16_gflops\":%.2f,\"bf16_frac_of_bf16_peak\":%.4f", gb, gb / bpeak);
            }
            if (own) printf(",\"own_gflops\":%.2f", time_sgemm(0, T, s[i].OC, s[i].C, reps, 1, 2));
            printf("}\n");
            fflush(stdout);
        }
    }
    return 0;
}

static double median_of(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Times dwconv_forward and dwconv_backward on B random sequences of L rows, C channels, width K. */
static int mode_dwconv(int threads, int B, int L, int C, int K, int reps, uint64_t seed) {
    if (B < 1 || L < 1 || C < 1 || K < 1 || K % 2 == 0 || K > PF_DW_MAX_K || reps < 1) usage();
    pf_set_threads(threads);
    size_t N = (size_t)B * L;
    int *lens = malloc((size_t)B * sizeof *lens);
    float *x = malloc(N * C * sizeof(float)), *g = malloc(N * C * sizeof(float));
    float *out = malloc(N * C * sizeof(float)), *dx = malloc(N * C * sizeof(float));
    float *w = malloc((size_t)K * C * sizeof(float)), *dw = malloc((size_t)K * C * sizeof(float));
    double *tf = malloc(sizeof(double) * (size_t)reps), *tb = malloc(sizeof(double) * (size_t)reps);
    if (!lens || !x || !g || !out || !dx || !w || !dw || !tf || !tb) {
        fprintf(stderr, "bench_forward: out of memory\n");
        return 1;
    }
    rng_state = seed;
    for (int b = 0; b < B; b++) lens[b] = L;
    for (size_t i = 0; i < N * C; i++) x[i] = (float)(splitmix() >> 40) * 0x1p-24f - 0.5f;
    for (size_t i = 0; i < N * C; i++) g[i] = (float)(splitmix() >> 40) * 0x1p-24f - 0.5f;
    for (size_t i = 0; i < (size_t)K * C; i++) w[i] = (float)(splitmix() >> 40) * 0x1p-24f - 0.5f;
    memset(dx, 0, N * C * sizeof(float));
    memset(dw, 0, (size_t)K * C * sizeof(float));
    for (int r = -1; r < reps; r++) {    /* r = -1 is the warm-up */
        double t0 = now_s();
        dwconv_forward(out, x, w, lens, B, C, K);
        double t1 = now_s();
        dwconv_backward(dx, dw, g, x, w, lens, B, C, K);
        double t2 = now_s();
        if (r >= 0) { tf[r] = t1 - t0; tb[r] = t2 - t1; }
    }
    double chk = 0;    /* keeps the results live */
    for (size_t i = 0; i < N * C; i += 4099) chk += (double)out[i] + dx[i];
    for (size_t i = 0; i < (size_t)K * C; i++) chk += dw[i];
    double ff = 2.0 * (double)N * C * K, fb = 4.0 * (double)N * C * K;
    double mf = median_of(tf, reps), mb = median_of(tb, reps);
    printf("{\"bench\":\"dwconv\",\"threads\":%d,\"batch\":%d,\"L\":%d,\"N\":%zu,\"C\":%d,"
           "\"K\":%d,\"reps\":%d,\"forward_median_s\":%.6f,\"forward_min_s\":%.6f,"
           "\"forward_gflops\":%.3f,\"backward_median_s\":%.6f,\"backward_min_s\":%.6f,"
           "\"backward_gflops\":%.3f,\"checksum\":%.6g}\n",
           threads, B, L, N, C, K, reps, mf, tf[0], ff / mf * 1e-9, mb, tb[0], fb / mb * 1e-9, chk);
    fflush(stdout);
    free(lens); free(x); free(g); free(out); free(dx); free(w); free(dw); free(tf); free(tb);
    return 0;
}

int main(int argc, char **argv) {
    pf_omp_passive(argv);   /* as bin/performer and bin/performerd do */
    if (argc < 2) usage();
    const char *mode = argv[1];
    const char *weights = "weights/model.safetensors", *kname = NULL, *tok_out = NULL, *logp_out = NULL;
    const char *prec_name = NULL, *f32k = NULL;
    long ffn_rows = -1;   /* -1: the library's default */
    int L = 0, B = 1, threads = 2, warmup = 1, min_reps = 3, max_reps = 50, n = 2048, reps = 5;
    int shapesT = 0, d = 256, F = 1024, conv = 15;
    double min_time = 2.0, single_over = 5.0, exact_limit_mb = 0;
    long group_tokens = -1, seq_group_tokens = -1;   /* -1: the library's default */
    int seq_par = PF_SEQ_PARALLEL_LEN_DEFAULT, seq_groups = PF_SEQ_GROUPS_DEFAULT;
    uint64_t seed = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--weights")) weights = v;
        else if (!strcmp(a, "--kernel")) kname = v;
        else if (!strcmp(a, "--len")) L = atoi(v);
        else if (!strcmp(a, "--batch")) B = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--min-reps")) min_reps = atoi(v);
        else if (!strcmp(a, "--max-reps")) max_reps = atoi(v);
        else if (!strcmp(a, "--min-time")) min_time = atof(v);
        else if (!strcmp(a, "--single-over")) single_over = atof(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--tokens-out")) tok_out = v;
        else if (!strcmp(a, "--logp-out")) logp_out = v;
        else if (!strcmp(a, "--n")) n = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--shapes-T")) shapesT = atoi(v);
        else if (!strcmp(a, "--d")) d = atoi(v);
        else if (!strcmp(a, "--d-ff")) F = atoi(v);
        else if (!strcmp(a, "--conv")) conv = atoi(v);
        else if (!strcmp(a, "--exact-limit-mb")) exact_limit_mb = atof(v);
        else if (!strcmp(a, "--precision")) prec_name = v;
        else if (!strcmp(a, "--fp32-kernel")) f32k = v;
        else if (!strcmp(a, "--ffn-rows")) ffn_rows = atol(v);
        else if (!strcmp(a, "--group-tokens")) group_tokens = atol(v);
        else if (!strcmp(a, "--seq-group-tokens")) seq_group_tokens = atol(v);
        else if (!strcmp(a, "--seq-parallel-len")) seq_par = atoi(v);
        else if (!strcmp(a, "--seq-groups")) seq_groups = atoi(v);
        else usage();
    }
    if (threads < 1) threads = 1;
    if ((prec_name || f32k) && strcmp(mode, "forward") != 0) usage();   /* only the forward pass takes them */
    if (f32k && strcmp(f32k, "own") != 0 && strcmp(f32k, "openblas") != 0) usage();
    if (f32k && gm_fp32_own(strcmp(f32k, "own") == 0) != 0) {
        fprintf(stderr, "bench_forward: --fp32-kernel own needs a CPU with AVX-512F\n");
        return 2;
    }
    if (!strcmp(mode, "info")) return mode_info(threads);
    if (!strcmp(mode, "sgemm")) {
        if (n < 1 || reps < 1) usage();
        return mode_sgemm(threads, n, reps, shapesT, d, F);
    }
    if (!strcmp(mode, "dwconv")) {
        /* defaults: 32 sequences of 512 (16,384 packed tokens), 21 timed runs */
        int reps_given = 0, len_given = 0, batch_given = 0;
        for (int i = 2; i + 1 < argc; i += 2) {
            reps_given |= !strcmp(argv[i], "--reps");
            len_given |= !strcmp(argv[i], "--len");
            batch_given |= !strcmp(argv[i], "--batch");
        }
        return mode_dwconv(threads, batch_given ? B : 32, len_given ? L : 512, d, conv,
                           reps_given ? reps : 21, seed);
    }
    if (strcmp(mode, "forward") != 0 || L < 3 || B < 1 || max_reps < 1 || group_tokens < -1 || seq_group_tokens < -1) usage();
    if (group_tokens >= 0) pf_set_group_tokens((size_t)group_tokens);
    if (seq_group_tokens >= 0) pf_set_seq_group_tokens((size_t)seq_group_tokens);
    pf_set_seq_parallel_len(seq_par);
    pf_set_seq_groups(seq_groups);
    if (ffn_rows >= 0) pf_set_ffn_rows((size_t)ffn_rows);
    char perr[128];
    if (gm_select_precision(prec_name ? prec_name : "fp32", perr, sizeof perr) != 0) {
        fprintf(stderr, "bench_forward: %s\n", perr);
        return 2;
    }
    gm_weight_cache(1);   /* as performerd and the inference commands run: weights packed once */

    char err[512];
    pf_set_threads(threads);
    if (exact_limit_mb > 0) pf_set_exact_mem_limit((size_t)(exact_limit_mb * 1048576.0));
    pf_model *m = NULL;
    if (pf_model_load(&m, weights, err, sizeof err) != 0) {
        fprintf(stderr, "bench_forward: %s\n", err);
        return 1;
    }
    pf_kernel k = m->cfg.kernel;
    if (kname && pf_kernel_parse(kname, &k) != 0) {
        fprintf(stderr, "bench_forward: unknown kernel %s\n", kname);
        return 2;
    }
    pf_ctx *ctx = pf_ctx_new(m);
    size_t T = (size_t)L * B;
    int32_t *tok = malloc(T * sizeof *tok);
    int *lens = malloc((size_t)B * sizeof *lens);
    float *logp = malloc(T * TOK_NRES * sizeof *logp);
    if (!ctx || !tok || !lens || !logp) { fprintf(stderr, "bench_forward: out of memory\n"); return 1; }
    rng_state = seed;
    for (int b = 0; b < B; b++) {
        int32_t *t = tok + (size_t)b * L;
        lens[b] = L;
        t[0] = TOK_CLS;
        for (int p = 1; p < L - 1; p++) t[p] = TOK_RES0 + (int32_t)(splitmix() % TOK_NRES);
        t[L - 1] = TOK_EOS;
    }
    long rss_loaded = proc_status_kb("VmRSS");
    flops_t fl = forward_flops(&m->cfg, k, L, B);

    printf("{\"bench\":\"forward\",\"kernel\":\"%s\",\"L\":%d,\"batch\":%d,\"threads\":%d,"
           "\"precision\":\"%s\",\"fp32_kernel\":\"%s\",\"group_tokens\":%zu,\"seq_parallel_len\":%d,\"seq_groups\":%d,\"seq_group_tokens\":%zu,\"ffn_rows\":%zu,\"n_layers\":%d,\"d_model\":%d,\"n_heads\":%d,\"d_ff\":%d,"
           "\"n_features\":%d,",
           pf_kernel_name(k), L, B, threads, gm_precision_name(gm_precision()),
           gm_fp32_is_own() ? "own" : "openblas", pf_group_tokens(), seq_par, seq_groups, pf_seq_group_tokens(), pf_ffn_rows(),
           m->cfg.n_layers,
           m->cfg.d_model, m->cfg.n_heads, m->cfg.d_ff, m->cfg.n_features);

    double *times = malloc(sizeof(double) * (size_t)(max_reps + warmup + 1));
    int nt = 0;
    if (k == PF_KERNEL_EXACT && (size_t)L > pf_exact_max_len(m)) {
        snprintf(err, sizeof err, "exact attention refuses L = %d: its L x L scores are over the "
                 "memory limit (longest accepted %zu)", L, pf_exact_max_len(m));
        goto failed;
    }
    double first = -1, total = 0;
    for (int w = 0; w < warmup; w++) {
        double t0 = now_s();
        if (pf_forward(ctx, m, k, tok, lens, B, logp, NULL, err, sizeof err) != 0) goto failed;
        double t = now_s() - t0;
        if (first < 0) first = t;
    }
    /* one timed run when the warm-up alone took over single_over seconds (long exact runs) */
    int want_min = (first > single_over) ? 1 : min_reps;
    while (nt < max_reps && (nt < want_min || total < min_time)) {
        double t0 = now_s();
        if (pf_forward(ctx, m, k, tok, lens, B, logp, NULL, err, sizeof err) != 0) goto failed;
        double t = now_s() - t0;
        if (first < 0) first = t;
        times[nt++] = t;
        total += t;
        if (nt >= want_min && t > single_over) break;
    }
    qsort(times, (size_t)nt, sizeof(double), cmp_double);
    double med = nt % 2 ? times[nt / 2] : 0.5 * (times[nt / 2 - 1] + times[nt / 2]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long hwm = proc_status_kb("VmHWM");
    printf("\"status\":\"ok\",\"reps\":%d,\"warmup\":%d,\"median_s\":%.6f,\"mean_s\":%.6f,\"min_s\":%.6f,\"max_s\":%.6f,"
           "\"first_s\":%.6f,\"us_per_position\":%.4f,\"flops\":%.6e,\"flops_linear\":%.6e,"
           "\"flops_attention\":%.6e,\"flops_head\":%.6e,\"gflops\":%.3f,"
           "\"rss_loaded_kb\":%ld,\"peak_rss_kb\":%ld,\"ru_maxrss_kb\":%ld}\n",
           nt, warmup, med, total / nt, times[0], times[nt - 1], first, med / (double)T * 1e6, fl.total,
           fl.linear, fl.attention, fl.head, fl.total / med * 1e-9, rss_loaded, hwm, ru.ru_maxrss);
    fflush(stdout);
    if (tok_out && write_file(tok_out, tok, T * sizeof *tok) != 0) {
        fprintf(stderr, "bench_forward: %s: %s\n", tok_out, strerror(errno));
        return 1;
    }
    if (logp_out && write_file(logp_out, logp, T * TOK_NRES * sizeof *logp) != 0) {
        fprintf(stderr, "bench_forward: %s: %s\n", logp_out, strerror(errno));
        return 1;
    }
    free(times); free(tok); free(lens); free(logp);
    pf_ctx_free(ctx);
    pf_model_free(m);
    return 0;

failed:;
    int refused = k == PF_KERNEL_EXACT && (size_t)L > pf_exact_max_len(m);
    printf("\"status\":\"%s\",\"error\":", refused ? "refused" : "error");
    json_str(err);
    printf(",\"rss_loaded_kb\":%ld,\"peak_rss_kb\":%ld}\n", rss_loaded, proc_status_kb("VmHWM"));
    free(times); free(tok); free(lens); free(logp);
    pf_ctx_free(ctx);
    pf_model_free(m);
    return refused ? 0 : 1;
}
