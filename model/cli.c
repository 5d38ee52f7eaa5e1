/* cli.c - bin/performer: the offline command-line tool (info, init, predict, train, eval, export,
 * and score, embed, run-jobs, which share server/task.c and server/batch.c with performerd). */
#include "atomic.h"
#include "batch.h"
#include "dataset.h"
#include "gemm.h"
#include "kmer.h"
#include "model.h"
#include "ops.h"
#include "task.h"
#include "train.h"
#include "util.h"

#include <errno.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

static const char *USAGE =
    "usage: performer <command> [options]\n"
    "\n"
    "commands:\n"
    "  info    --weights F                       config, parameter count and SHA-256\n"
    "  init    --out F [--layers N --d-model D --heads H --d-ff F --features M\n"
    "          --kernel favor-softmax|favor-relu|exact --conv K --local K --seed S --name NAME]\n"
    "                                            write a randomly initialised model; --conv K\n"
    "                                            (odd, 1..31; default 0 = none) adds a width-K\n"
    "                                            depthwise convolution over positions on q, k, v\n"
    "                                            (Primer), initialised to the identity; --local K\n"
    "                                            (odd, 1..31; default 0 = none) adds a residual\n"
    "                                            local block per layer: x += out(GELU(dwconv_K(\n"
    "                                            LN(x)))) between attention and feed-forward\n"
    "  predict --weights F [--top-k K] [--kernel K] SEQUENCE\n"
    "                                            top-k residues for every <mask> (or every\n"
    "                                            position when there is no mask)\n"
    "  train   --data train.bin | --fasta F  [--valid F] --out F [--ckpt F] [--resume]\n"
    "          [--init weights] [--log F.csv] [--steps N] [--warmup N] [--lr X]\n"
    "          [--crop N] [--batch-tokens N] [--redraw N] [--seed S] [--threads N]\n"
    "          [--ckpt-minutes X] [--max-minutes X] [--stop-after N] [--eval-every N]\n"
    "          [--eval-seqs N] [--train-kernel K] [--decay-steps N [--branch-ckpt F]]\n"
    "          [--min-lr-frac X] [--weight-decay X] [--clip X] [--mask-rate X] [--quiet]\n"
    "          [architecture options of init]    masked-LM training (README.md,\n"
    "                                            section Command-line tool);\n"
    "                                            --init F --conv K / --local K extends weights F\n"
    "                                            without them with identity convolutions / local\n"
    "                                            blocks, --layers N with identity layers on top\n"
    "                                            (same function); other architecture options\n"
    "                                            must match F; --decay-steps N: lr held after\n"
    "                                            the warm-up, 1 - sqrt decay over the last N steps\n"
    "                                            (default: cosine), --branch-ckpt F saves the\n"
    "                                            state where the decay starts (resume it with\n"
    "                                            more --steps to go on from before the decay)\n"
    "  eval    --weights F --fasta F [--mask-rate 0.15] [--seed S] [--kernel K]\n"
    "          [--max-seqs N] [--unigram F]      perplexity, top-1/top-5 accuracy and calibration\n"
    "          [--window N]                      of the top-1 probability (JSON), vs a unigram\n"
    "                                            baseline; --window N runs pieces of at most N\n"
    "                                            residues (same masks) instead of whole sequences\n"
    "  export  --ckpt F --out F                  write a checkpoint's model as a weights file (its\n"
    "                                            kernel: the one the run trained with)\n"
    "  overlap --train F --fasta F [--k 10]      per sequence of F: how many of its k-mers (k\n"
    "                                            residues, 1..12) occur anywhere in --train (TSV:\n"
    "                                            name, length, windows, shared, fraction)\n"
    "  score   --weights F (--mutations A24G,K30R:D31N | --mutations all | --mutations-file F)\n"
    "          [--method M] [--offset N] [--format list|matrix] [--json] [--out F] SEQUENCE\n"
    "                                            variant effect scores (log p(mt) - log p(wt) per site,\n"
    "                                            summed; M = masked-marginals (default), wt-marginals,\n"
    "                                            pseudo-likelihood); a table (matrix: a row per residue,\n"
    "                                            a column per substitute), or POST /score's JSON\n"
    "  embed   --weights F [--layer N] [--representations mean,per_residue,cls]\n"
    "          (SEQUENCE | --fasta F) [--out F]  embeddings as JSON Lines (one record per sequence)\n"
    "  run-jobs --weights F --fasta F --task predict|score|embed|logits [--out F.jsonl]\n"
    "          [--top-k K] [--mask-positions 1,4] [--mutations L] [--method M] [--offset N] [--format F]\n"
    "          [--layer N] [--representations L] a whole FASTA file offline: the JSON Lines of\n"
    "                                            GET /jobs/{id}/result, with a progress bar\n"
    "          (score/run-jobs also take --max-pll-length N, default 1024)\n"
    "\n"
    "common: --help (this text, also after any command), --threads N (default 2)\n"
    "        --precision fp32|bf16 (default fp32): bf16 runs the weight products in bfloat16 with\n"
    "        float32 sums, about 1.5-1.7x faster forward passes (needs AVX-512 BF16; weights/MODEL_CARD.md gives\n"
    "        its measured effect on quality)\n"
    "        (an option that a command does not use is refused)\n";

/* Returns the value following option i, or NULL (and complains) when absent. */
static const char *arg_val(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) { fprintf(stderr, "performer: %s needs a value\n", argv[*i]); return NULL; }
    return argv[++*i];
}

/* Parses a positive-or-zero long strictly; returns 0 or -1 with a message. */
static int parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "performer: %s expects an integer in %ld..%ld, got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses a finite double; returns 0 or -1. */
static int parse_double(const char *opt, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "performer: %s expects a number, got '%s'\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses a finite double in lo..hi (above lo when lo_open); returns 0 or -1 with a message. */
static int parse_double_in(const char *opt, const char *s, double lo, double hi, int lo_open, double *out) {
    double v;
    if (parse_double(opt, s, &v) != 0) return -1;
    if (v < lo || v > hi || (lo_open && v == lo)) {
        fprintf(stderr, "performer: %s expects a number in %s%g, %g], got '%s'\n", opt, lo_open ? "(" : "[", lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Writes s as a JSON string literal (quoted, escaped by ut_json_str) to stdout. */
static void print_json_str(const char *s) {
    ut_buf b = {0};
    ut_json_str(&b, s);
    fputs(b.oom ? "null" : b.s, stdout);
    free(b.s);
}

/* Prints a model's configuration. */
static void print_info(const pf_model *m) {
    const pf_config *c = &m->cfg;
    printf("file:        %s\n", m->path);
    printf("name:        %s\n", c->name);
    printf("sha256:      %s\n", m->sha256);
    printf("trained:     %s\n", c->trained ? "yes" : "no (random initialisation)");
    printf("layers:      %d\nd_model:     %d\nheads:       %d\nd_ff:        %d\n", c->n_layers,
           c->d_model, c->n_heads, c->d_ff);
    printf("kernel:      %s\nfeatures:    %d\nposition:    sinusoidal\nnorm_eps:    %g\n",
           pf_kernel_name(c->kernel), c->n_features, c->norm_eps);
    if (c->conv_kernel > 0) printf("conv_kernel: %d (depthwise convolution on q, k, v)\n", c->conv_kernel);
    if (c->local_kernel > 0)
        printf("local_kernel: %d (local block: depthwise convolution, GELU, projection)\n",
               c->local_kernel);
    printf("parameters:  %zu (%zu trainable; projections are fixed)\n", m->n_params,
           m->n_params - (size_t)c->n_layers * c->n_features * (c->d_model / c->n_heads));
    printf("vocabulary:  %s\n", tok_vocab_json());
    printf("provenance:  %s\n", c->provenance);
}

/* Applies one architecture option to cfg, setting its TR_ARCH_* bit in *given (NULL = none);
 * returns 1 if consumed, 0 if not, -1 on error. */
static int arch_opt(pf_config *cfg, unsigned *given, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    long x;
    unsigned dummy = 0;
    if (!given) given = &dummy;
    struct { const char *name; int *dst; long hi; unsigned bit; } ints[] = {
        { "--layers", &cfg->n_layers, 256, TR_ARCH_LAYERS }, { "--d-model", &cfg->d_model, 8192, TR_ARCH_D_MODEL },
        { "--heads", &cfg->n_heads, 256, TR_ARCH_HEADS }, { "--d-ff", &cfg->d_ff, 65536, TR_ARCH_D_FF },
        { "--features", &cfg->n_features, 16384, TR_ARCH_FEATURES } };
    if (strcmp(a, "--conv") == 0 || strcmp(a, "--local") == 0) {
        if (!(v = arg_val(argc, argv, i)) || parse_long(a, v, 0, PF_MAX_CONV_KERNEL, &x)) return -1;
        if (x % 2 == 0 && x != 0) {
            fprintf(stderr, "performer: %s expects an odd width (1, 3, 5, ..., %d) or 0, got %ld\n",
                    a, PF_MAX_CONV_KERNEL, x);
            return -1;
        }
        *(a[2] == 'c' ? &cfg->conv_kernel : &cfg->local_kernel) = (int)x;
        *given |= a[2] == 'c' ? TR_ARCH_CONV : TR_ARCH_LOCAL;
        return 1;
    }
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (strcmp(a, ints[k].name) == 0) {
            if (!(v = arg_val(argc, argv, i)) || parse_long(a, v, 1, ints[k].hi, &x)) return -1;
            *ints[k].dst = (int)x;
            *given |= ints[k].bit;
            return 1;
        }
    if (strcmp(a, "--kernel") == 0) {
        if (!(v = arg_val(argc, argv, i))) return -1;
        if (pf_kernel_parse(v, &cfg->kernel) != 0) { fprintf(stderr, "performer: unknown kernel '%s'\n", v); return -1; }
        *given |= TR_ARCH_KERNEL;
        return 1;
    }
    if (strcmp(a, "--name") == 0) {
        if (!(v = arg_val(argc, argv, i))) return -1;
        json_t *j = json_string(v);             /* NULL: not valid UTF-8 (the metadata must be) */
        json_decref(j);
        if (!j) {
            fprintf(stderr, "performer: --name is not valid UTF-8 text; give the name in UTF-8 (convert it with "
                    "iconv -t UTF-8)\n");
            return -1;
        }
        pf_copy_utf8(cfg->name, sizeof cfg->name, v);   /* a long name is cut between characters */
        *given |= TR_ARCH_NAME;
        return 1;
    }
    return 0;
}

/* `performer info`. */
static int cmd_info(int argc, char **argv) {
    const char *w = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--weights") == 0) { if (!(w = arg_val(argc, argv, &i))) return 2; }
        else { fprintf(stderr, "performer info: unknown option %s\n", argv[i]); return 2; }
    }
    if (!w) { fprintf(stderr, "performer info: --weights F is required\n"); return 2; }
    char err[512];
    pf_model *m = NULL;
    if (pf_model_load(&m, w, err, sizeof err) != 0) { fprintf(stderr, "performer: %s\n", err); return 1; }
    print_info(m);
    pf_model_free(m);
    return 0;
}

/* `performer init`. */
static int cmd_init(int argc, char **argv) {
    tr_options o;
    tr_options_default(&o);
    pf_config cfg = o.cfg;
    snprintf(cfg.name, sizeof cfg.name, "performer-protein-untrained");
    const char *out = NULL;
    long seed = 1;
    for (int i = 2; i < argc; i++) {
        int r = arch_opt(&cfg, NULL, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        const char *v;
        if (strcmp(argv[i], "--out") == 0) { if (!(out = arg_val(argc, argv, &i))) return 2; }
        else if (strcmp(argv[i], "--seed") == 0) {
            if (!(v = arg_val(argc, argv, &i)) || parse_long("--seed", v, 0, 0x7fffffffL, &seed)) return 2;
        } else { fprintf(stderr, "performer init: unknown option %s\n", argv[i]); return 2; }
    }
    if (!out) { fprintf(stderr, "performer init: --out F is required\n"); return 2; }
    snprintf(cfg.provenance, sizeof cfg.provenance,
             "{\"made_by\":\"performer init\",\"seed\":%ld,\"note\":\"random initialisation, untrained\"}", seed);
    char err[512];
    pf_model *m = NULL;
    if (pf_model_init(&m, &cfg, (uint64_t)seed, err, sizeof err) != 0 ||
        pf_model_save(m, out, err, sizeof err) != 0) {
        fprintf(stderr, "performer: %s\n", err);
        pf_model_free(m);
        return 1;
    }
    snprintf(m->path, sizeof m->path, "%s", out);
    print_info(m);
    pf_model_free(m);
    return 0;
}

/* `performer predict`. */
static int cmd_predict(int argc, char **argv) {
    const char *w = NULL, *seq = NULL, *v;
    long top_k = 5;
    pf_kernel kernel = PF_KERNEL_DEFAULT;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--weights") == 0) { if (!(w = arg_val(argc, argv, &i))) return 2; }
        else if (strcmp(argv[i], "--top-k") == 0) {
            if (!(v = arg_val(argc, argv, &i)) || parse_long("--top-k", v, 1, 20, &top_k)) return 2;
        } else if (strcmp(argv[i], "--kernel") == 0) {
            if (!(v = arg_val(argc, argv, &i))) return 2;
            if (pf_kernel_parse(v, &kernel) != 0) { fprintf(stderr, "performer: unknown kernel '%s'\n", v); return 2; }
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "performer predict: unknown option %s\n", argv[i]); return 2;
        } else seq = argv[i];
    }
    if (!w || !seq) { fprintf(stderr, "performer predict: --weights F and a SEQUENCE are required\n"); return 2; }
    char err[512];
    int rc = 1;
    pf_model *m = NULL;
    pf_ctx *ctx = NULL;
    int32_t *ids = NULL, *framed = NULL;
    float *logp = NULL;
    size_t n = 0, len = strlen(seq);
    tok_error te;
    if (tok_encode(seq, len, NULL, 0, &n, &te) != 0) { fprintf(stderr, "performer: %s\n", te.msg); return 1; }
    if (n == 0) { fprintf(stderr, "performer: empty sequence\n"); return 1; }
    ids = malloc(n * sizeof *ids);
    framed = malloc((n + 2) * sizeof *framed);
    logp = malloc((n + 2) * TOK_NRES * sizeof *logp);
    if (!ids || !framed || !logp) { fprintf(stderr, "performer: out of memory\n"); goto cleanup; }
    tok_encode(seq, len, ids, n, &n, &te);
    tok_frame(ids, n, framed);
    if (pf_model_load(&m, w, err, sizeof err) != 0 || !(ctx = pf_ctx_new(m))) {
        fprintf(stderr, "performer: %s\n", m ? "out of memory" : err);
        goto cleanup;
    }
    int L = (int)n + 2;
    if (pf_forward(ctx, m, kernel, framed, &L, 1, logp, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "performer: %s\n", err);
        goto cleanup;
    }
    int any_mask = 0;
    for (size_t i = 0; i < n; i++) any_mask |= ids[i] == TOK_MASK;
    if (!any_mask) printf("# no <mask> in the sequence: predictions for every position from one unmasked pass\n");
    for (size_t i = 0; i < n; i++) {
        if (any_mask && ids[i] != TOK_MASK) continue;
        const float *lp = logp + (i + 1) * TOK_NRES;
        int order[TOK_NRES];
        for (int c = 0; c < TOK_NRES; c++) order[c] = c;
        for (int a = 0; a < top_k; a++)
            for (int b = a + 1; b < TOK_NRES; b++)
                if (lp[order[b]] > lp[order[a]]) { int t = order[a]; order[a] = order[b]; order[b] = t; }
        printf("position %zu (%s):", i + 1, tok_name(ids[i]));
        for (int a = 0; a < top_k; a++)
            printf(" %s %.4f", tok_name(TOK_RES0 + order[a]), expf(lp[order[a]]));
        printf("\n");
    }
    rc = 0;
cleanup:
    free(ids); free(framed); free(logp);
    pf_ctx_free(ctx);
    pf_model_free(m);
    return rc;
}

/* `performer train`. */
static int cmd_train(int argc, char **argv) {
    tr_options o;
    tr_options_default(&o);
    o.cfg.trained = 0;
    for (int i = 2; i < argc; i++) {
        int r = arch_opt(&o.cfg, &o.arch_given, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i], *v;
        long x;
        double f;
        if (strcmp(a, "--resume") == 0) { o.resume = 1; continue; }
        if (strcmp(a, "--quiet") == 0) { o.quiet = 1; continue; }
        if (!(v = arg_val(argc, argv, &i))) return 2;
        if (strcmp(a, "--data") == 0) o.data = v;
        else if (strcmp(a, "--valid") == 0) o.valid = v;
        else if (strcmp(a, "--fasta") == 0) o.fasta = v;
        else if (strcmp(a, "--init") == 0) o.init = v;
        else if (strcmp(a, "--out") == 0) o.out = v;
        else if (strcmp(a, "--ckpt") == 0) o.ckpt = v;
        else if (strcmp(a, "--log") == 0) o.log = v;
        else if (strcmp(a, "--train-kernel") == 0) {
            if (pf_kernel_parse(v, &o.kernel) != 0) { fprintf(stderr, "performer: unknown kernel '%s'\n", v); return 2; }
        }
        else if (strcmp(a, "--seed") == 0) {
            if (parse_long(a, v, 0, 0x7fffffffL, &x)) return 2;
            o.seed = (uint64_t)x;
            o.seed_given = 1;
        }
        else if (strcmp(a, "--steps") == 0) { if (parse_long(a, v, 1, 100000000L, &o.steps)) return 2; }
        else if (strcmp(a, "--warmup") == 0) { if (parse_long(a, v, 1, 100000000L, &o.warmup)) return 2; }
        else if (strcmp(a, "--decay-steps") == 0) { if (parse_long(a, v, 0, 100000000L, &o.decay_steps)) return 2; }
        else if (strcmp(a, "--branch-ckpt") == 0) o.branch_ckpt = v;
        else if (strcmp(a, "--redraw") == 0) { if (parse_long(a, v, 0, 100000000L, &o.redraw)) return 2; }
        else if (strcmp(a, "--eval-every") == 0) { if (parse_long(a, v, 0, 100000000L, &o.eval_every)) return 2; }
        else if (strcmp(a, "--stop-after") == 0) { if (parse_long(a, v, 1, 100000000L, &o.stop_after)) return 2; }
        else if (strcmp(a, "--eval-seqs") == 0) { if (parse_long(a, v, 1, 10000000L, &x)) return 2; o.eval_seqs = (int)x; }
        else if (strcmp(a, "--crop") == 0) { if (parse_long(a, v, 8, 1000000L, &x)) return 2; o.crop = (int)x; }
        else if (strcmp(a, "--batch-tokens") == 0) { if (parse_long(a, v, 8, 100000000L, &x)) return 2; o.batch_tokens = (int)x; }
        else if (strcmp(a, "--lr") == 0) { if (parse_double_in(a, v, 0, 10, 0, &o.lr)) return 2; }
        else if (strcmp(a, "--weight-decay") == 0) { if (parse_double_in(a, v, 0, 10, 0, &o.weight_decay)) return 2; }
        else if (strcmp(a, "--clip") == 0) { if (parse_double_in(a, v, 0, 1e30, 0, &o.clip)) return 2; }
        else if (strcmp(a, "--mask-rate") == 0) { if (parse_double_in(a, v, 0, 1, 1, &o.mask_rate)) return 2; }
        else if (strcmp(a, "--ckpt-minutes") == 0) { if (parse_double_in(a, v, 0, 1e9, 0, &o.ckpt_minutes)) return 2; }
        else if (strcmp(a, "--max-minutes") == 0) { if (parse_double_in(a, v, 0, 1e9, 0, &o.max_minutes)) return 2; }
        else if (strcmp(a, "--min-lr-frac") == 0) { if (parse_double_in(a, v, 0, 1, 0, &f)) return 2; o.min_lr_frac = f; }
        else { fprintf(stderr, "performer train: unknown option %s\n", a); return 2; }
    }
    if (!o.out && !o.ckpt) { fprintf(stderr, "performer train: give --out F (and/or --ckpt F)\n"); return 2; }
    if (o.data && o.fasta) {
        fprintf(stderr, "performer train: give --data F.bin or --fasta F, not both\n");
        return 2;
    }
    if (o.resume && !o.ckpt) {
        fprintf(stderr, "performer train: --resume needs --ckpt F (the checkpoint to continue from)\n");
        return 2;
    }
    if (o.warmup >= o.steps) o.warmup = o.steps / 10 + 1;
    if (o.decay_steps > 0 && o.decay_steps > o.steps - o.warmup) {
        fprintf(stderr, "performer train: --decay-steps %ld leaves no room for the %ld warm-up steps of %ld "
                "(at most %ld)\n", o.decay_steps, o.warmup, o.steps, o.steps - o.warmup);
        return 2;
    }
    if (o.branch_ckpt && o.decay_steps == 0) {
        fprintf(stderr, "performer train: --branch-ckpt needs --decay-steps N (the checkpoint is written where the "
                "decay starts)\n");
        return 2;
    }
    char err[512] = "";
    int interrupted = 0;
    if (tr_run(&o, &interrupted, err, sizeof err) != 0) { fprintf(stderr, "performer train: %s\n", err); return 1; }
    return 0;
}

/* `performer eval`: prints one JSON object. */
static int cmd_eval(int argc, char **argv) {
    const char *w = NULL, *fa = NULL, *unif = NULL, *v;
    double rate = 0.15;
    long seed = 1, max_seqs = 0, window = 0;
    pf_kernel kernel = PF_KERNEL_DEFAULT;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!(v = arg_val(argc, argv, &i))) return 2;
        if (strcmp(a, "--weights") == 0) w = v;
        else if (strcmp(a, "--fasta") == 0) fa = v;
        else if (strcmp(a, "--unigram") == 0) unif = v;
        else if (strcmp(a, "--mask-rate") == 0) { if (parse_double_in(a, v, 0, 1, 1, &rate)) return 2; }
        else if (strcmp(a, "--seed") == 0) { if (parse_long(a, v, 0, 0x7fffffffL, &seed)) return 2; }
        else if (strcmp(a, "--max-seqs") == 0) { if (parse_long(a, v, 0, 100000000L, &max_seqs)) return 2; }
        else if (strcmp(a, "--window") == 0) { if (parse_long(a, v, 0, 1000000000L, &window)) return 2; }
        else if (strcmp(a, "--kernel") == 0) {
            if (pf_kernel_parse(v, &kernel) != 0) { fprintf(stderr, "performer: unknown kernel '%s'\n", v); return 2; }
        } else { fprintf(stderr, "performer eval: unknown option %s\n", a); return 2; }
    }
    if (!w || !fa) { fprintf(stderr, "performer eval: --weights F and --fasta F are required\n"); return 2; }
    char err[512];
    int rc = 1;
    pf_model *m = NULL;
    ds_set *set = NULL, *uset = NULL;
    double uni[TOK_NRES], *unip = NULL;
    if (pf_model_load(&m, w, err, sizeof err) != 0) goto fail;
    if (ds_open_path(&set, fa, err, sizeof err) != 0) goto fail;
    if (ds_standard(set, max_seqs > 0 ? (size_t)max_seqs : ds_count(set)) == 0) {
        snprintf(err, sizeof err, "%s: no standard residues to score (X, B, Z, U and O are never masked)", fa);
        goto fail;
    }
    if (unif) {
        if (ds_open_path(&uset, unif, err, sizeof err) != 0) goto fail;
        ds_unigram(uset, ds_count(uset), uni);
        unip = uni;
    }
    tr_eval_result res;
    if (tr_evaluate(m, kernel, set, rate, (uint64_t)seed, max_seqs, 0, (int)window, unip, &res, err, sizeof err) != 0) goto fail;
    char cal[TR_CAL_BINS * 112] = "";
    size_t cl = 0;
    for (int k = 0; k < TR_CAL_BINS; k++) {     /* an empty bin has null mean and accuracy */
        char pm[32] = "null", ac[32] = "null";
        if (res.cal_count[k]) {
            tr_json_num(pm, sizeof pm, "%.4f", res.cal_conf[k]);
            tr_json_num(ac, sizeof ac, "%.4f", res.cal_acc[k]);
        }
        cl += (size_t)snprintf(cal + cl, sizeof cal - cl, "%s{\"from\": %.1f, \"to\": %.1f, \"residues\": %ld, "
                               "\"mean_probability\": %s, \"accuracy\": %s}", k ? ", " : "",
                               (double)k / TR_CAL_BINS, (double)(k + 1) / TR_CAL_BINS, res.cal_count[k], pm, ac);
    }
    printf("{\"weights\": ");                      /* paths escaped: any file name gives valid JSON */
    print_json_str(w);
    printf(", \"sha256\": \"%s\", \"fasta\": ", m->sha256);
    print_json_str(fa);
    /* non-finite numbers (weights whose outputs overflow) are null: the output is always valid JSON */
    char ppl[32], acc[32], top5[32], uppl[32], uacc[32], ece[32];
    tr_json_num(ppl, sizeof ppl, "%.4f", res.perplexity);
    tr_json_num(acc, sizeof acc, "%.4f", res.accuracy);
    tr_json_num(top5, sizeof top5, "%.4f", res.top5_accuracy);
    tr_json_num(uppl, sizeof uppl, "%.4f", res.uni_perplexity);
    tr_json_num(uacc, sizeof uacc, "%.4f", res.uni_accuracy);
    tr_json_num(ece, sizeof ece, "%.4f", res.ece);
    printf(", \"kernel\": \"%s\", \"mask_rate\": %g, "
           "\"seed\": %ld, \"window\": %ld, \"precision\": \"%s\", \"sequences\": %ld, \"residues\": %ld, \"perplexity\": %s, \"accuracy\": %s, "
           "\"top5_accuracy\": %s, "
           "\"unigram\": {\"perplexity\": %s, \"accuracy\": %s, \"source\": ",
           pf_kernel_name(kernel == PF_KERNEL_DEFAULT ? m->cfg.kernel : kernel), rate, seed, window,
           gm_precision_name(gm_precision()), res.sequences, res.residues, ppl, acc, top5, uppl, uacc);
    print_json_str(unif ? unif : fa);
    printf("}, \"calibration\": {\"ece\": %s, \"bins\": [%s]}}\n", ece, cal);
    if (!isfinite(res.perplexity) || !isfinite(res.ece))
        fprintf(stderr, "performer eval: some numbers are not finite (perplexity %g, ECE %g; the model's outputs "
                "overflow): they are null in the JSON\n", res.perplexity, res.ece);
    rc = 0;
    goto cleanup;
fail:
    fprintf(stderr, "performer eval: %s%s\n", err, strstr(err, "out of memory") && window == 0 ?
            " (run long sequences in pieces: --window 1022)" : "");
cleanup:
    ds_close(set); ds_close(uset);
    pf_model_free(m);
    return rc;
}

/* `performer overlap`: for each sequence of --fasta, the share of its k-mers found in --train. */
static int cmd_overlap(int argc, char **argv) {
    const char *tr = NULL, *fa = NULL, *v;
    long k = 10;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!(v = arg_val(argc, argv, &i))) return 2;
        if (strcmp(a, "--train") == 0) tr = v;
        else if (strcmp(a, "--fasta") == 0) fa = v;
        else if (strcmp(a, "--k") == 0) { if (parse_long(a, v, 1, KM_MAX_K, &k)) return 2; }
        else { fprintf(stderr, "performer overlap: unknown option %s\n", a); return 2; }
    }
    if (!tr || !fa) { fprintf(stderr, "performer overlap: --train F and --fasta F are required\n"); return 2; }
    char err[512];
    int rc = 1;
    ds_set *train = NULL, *set = NULL;
    km_index *idx = NULL;
    if (ds_open_path(&train, tr, err, sizeof err) != 0 || ds_open_path(&set, fa, err, sizeof err) != 0) goto fail;
    if (km_build(&idx, train, (int)k, err, sizeof err) != 0) goto fail;
    size_t all_w = 0, all_s = 0;
    printf("name\tlength\twindows\tshared\tfraction\n");
    for (size_t i = 0; i < ds_count(set); i++) {
        size_t n, w;
        const uint8_t *q = ds_seq(set, i, &n);
        size_t sh = km_shared(idx, q, n, &w);
        const char *name = ds_name(set, i);
        char num[32];
        if (!name) { snprintf(num, sizeof num, "%zu", i + 1); name = num; }
        printf("%s\t%zu\t%zu\t%zu\t%.4f\n", name, n, w, sh, w ? (double)sh / (double)w : 0.0);
        all_w += w; all_s += sh;
    }
    fprintf(stderr, "performer overlap: %zu distinct %ld-mers in %s; %zu sequences of %s, %zu of their %zu windows "
            "(%.1f%%) occur in it\n", km_size(idx), k, tr, ds_count(set), fa, all_s, all_w,
            all_w ? 100.0 * (double)all_s / (double)all_w : 0.0);
    rc = 0;
    goto cleanup;
fail:
    fprintf(stderr, "performer overlap: %s\n", err);
cleanup:
    km_free(idx);
    ds_close(set); ds_close(train);
    return rc;
}

/* `performer export`. */
static int cmd_export(int argc, char **argv) {
    const char *ck = NULL, *out = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!(v = arg_val(argc, argv, &i))) return 2;
        if (strcmp(a, "--ckpt") == 0) ck = v;
        else if (strcmp(a, "--out") == 0) out = v;
        else { fprintf(stderr, "performer export: unknown option %s\n", a); return 2; }
    }
    if (!ck || !out) { fprintf(stderr, "performer export: --ckpt F and --out F are required\n"); return 2; }
    if (tr_same_file(ck, out)) {
        fprintf(stderr, "performer export: --out %s is the same file as --ckpt %s and would overwrite the "
                "checkpoint: give another file name\n", out, ck);
        return 2;
    }
    char err[512];
    if (tr_export(ck, out, err, sizeof err) != 0) { fprintf(stderr, "performer export: %s\n", err); return 1; }
    pf_model *m = NULL;
    if (pf_model_load(&m, out, err, sizeof err) != 0) { fprintf(stderr, "performer export: %s\n", err); return 1; }
    print_info(m);
    pf_model_free(m);
    return 0;
}

/* ---- score, embed, run-jobs ------------------------------------------------------------------------ */

/* Progress over model inputs, drawn on stderr (a bar on a terminal, a line every 5 s otherwise). */
typedef struct {
    long long total, done, tokens;
    long seqs_total, seqs_done;
    double t0, last;
    int tty, quiet, drawn;
} progress;

/* Returns a monotonic clock in seconds. */
static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Draws the progress bar (force: draw now, e.g. at the end). */
static void progress_draw(progress *p, int force) {
    if (p->quiet || p->total <= 0) return;
    double now = mono_s();
    if (!force && now - p->last < (p->tty ? 0.2 : 5.0)) return;
    p->last = now;
    double el = now - p->t0, frac = (double)p->done / (double)p->total;
    double eta = p->done > 0 ? el * (double)(p->total - p->done) / (double)p->done : 0;
    int w = 24, fill = (int)(w * frac);
    char bar[32];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "%s[%s] %ld/%ld sequences | %lld/%lld passes | %.0f tok/s | %.0fs elapsed, ETA %.0fs%s",
            p->tty ? "\r" : "", bar, p->seqs_done, p->seqs_total, p->done, p->total,
            el > 0 ? (double)p->tokens / el : 0.0, el, eta, p->tty ? "   " : "\n");
    p->drawn = 1;
}

/* Ends the progress display (newline after a terminal bar). */
static void progress_end(progress *p) {
    progress_draw(p, 1);
    if (p->drawn && p->tty && !p->quiet) fputc('\n', stderr);
}

/* Runs every input of r through the model in chunks of at most 16384 tokens (an input longer
 * than that alone) and hands the outputs to r. Returns 0, or -1 with err. */
static int run_task(pf_ctx *ctx, const pf_model *m, tk_request *r, progress *pg, char *err, size_t errlen) {
    size_t cap = 16384;
    for (int k = 0; k < r->n_inputs; k++)
        if (tk_input_len(r, k) + 2 > cap) cap = tk_input_len(r, k) + 2;
    int d = m->cfg.d_model, rc = -1;
    int32_t *tokens = malloc(cap * sizeof *tokens);
    int *lens = malloc((cap / 3 + 1) * sizeof *lens);
    float *logp = malloc(cap * TOK_NRES * sizeof *logp);
    float *hidden = r->hidden_layer != TK_NO_HIDDEN ? malloc(cap * (size_t)d * sizeof *hidden) : NULL;
    if (!tokens || !lens || !logp || (r->hidden_layer != TK_NO_HIDDEN && !hidden)) {
        snprintf(err, errlen, "out of memory for %zu tokens", cap);
        goto out;
    }
    for (int k = 0; k < r->n_inputs;) {
        size_t off = 0;
        int B = 0, first = k;
        while (k < r->n_inputs) {
            size_t n = tk_input_len(r, k);
            if (B > 0 && (off + n + 2 > cap || (size_t)B >= cap / 3)) break;
            tokens[off] = TOK_CLS;
            tk_input(r, k, tokens + off + 1);
            tokens[off + n + 1] = TOK_EOS;
            lens[B++] = (int)(n + 2);
            off += n + 2;
            k++;
        }
        if (pf_forward_ex(ctx, m, PF_KERNEL_DEFAULT, tokens, lens, B, logp, hidden,
                          r->hidden_layer == TK_NO_HIDDEN ? -1 : r->hidden_layer, err, errlen))
            goto out;
        off = 0;
        for (int b = 0; b < B; b++) {
            if (tk_consume(r, first + b, logp + off * TOK_NRES, hidden ? hidden + off * (size_t)d : NULL, d)) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
            off += (size_t)lens[b];
        }
        if (pg) {
            pg->done += B;
            pg->tokens += (long long)off;
            progress_draw(pg, 0);
        }
    }
    rc = 0;
out:
    free(tokens);
    free(lens);
    free(logp);
    free(hidden);
    return rc;
}

/* Fills the per-sequence limits for offline use (no request-size limits; pseudo-likelihood cap). */
static void cli_limits(const pf_model *m, long max_pll, tk_limits *lim) {
    lim->max_length = 10000000;
    lim->max_batch = 1;
    lim->max_pll_length = max_pll;
    lim->max_score_tokens = (long)1 << 40;
    lim->n_layers = m->cfg.n_layers;
    lim->d_model = m->cfg.d_model;
}

/* Reads a whole file into a malloc'd NUL-terminated buffer. Returns NULL with err. */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t r = fread(b + n, 1, cap - n - 1, f);
        n += r;
        if (n + 1 < cap) {
            if (feof(f) || ferror(f)) break;
            continue;
        }
        char *nb = realloc(b, cap * 2);
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    int bad = f != stdin && ferror(f);
    if (f != stdin) fclose(f);
    if (!b || bad) {
        free(b);
        snprintf(err, errlen, "cannot read %s", path);
        return NULL;
    }
    b[n] = '\0';
    *len = n;
    return b;
}

/* Runs a validated submission offline, writing its JSON Lines to out. Returns 0, 1 (some sequences
 * failed) or -1 with err. */
static int run_submission(const pf_model *m, const bt_submission *s, const tk_limits *lim, FILE *out, int quiet,
                          char *err, size_t errlen) {
    pf_ctx *ctx = pf_ctx_new(m);
    json_t *mref = tk_model_ref(m->cfg.name, m->sha256, m->cfg.trained);
    if (!ctx || !mref) {
        pf_ctx_free(ctx);
        json_decref(mref);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    progress pg = {0};
    pg.t0 = pg.last = mono_s();
    pg.tty = isatty(2);
    pg.quiet = quiet;
    pg.seqs_total = (long)s->n;
    for (long long i = 0; i < s->n; i++) {      /* the passes to run, for the bar */
        tk_request *r = NULL;
        pr_error e;
        if (tk_parse(s->kind, s->requests[i], strlen(s->requests[i]), lim, ut_model_key(m->sha256), &r, &e) == 0)
            pg.total += r->n_inputs;
        else
            json_decref(e.details);
        tk_free(r);
    }
    int failed = 0;
    for (long long i = 0; i < s->n; i++) {
        tk_request *r = NULL;
        pr_error e;
        ut_buf line = {0};
        char ferr[256] = "";
        if (tk_parse(s->kind, s->requests[i], strlen(s->requests[i]), lim, ut_model_key(m->sha256), &r, &e)) {
            json_t *o = json_pack("{s:s, s:s}", "error", e.msg, "error_type", e.type);
            json_decref(e.details);
            char *eo = json_dumps(o, JSON_COMPACT);
            json_decref(o);
            bt_result_line(&line, i, s->names[i], e.status, eo ? eo : "", eo ? strlen(eo) : 0);
            free(eo);
            failed = 1;
        } else if (run_task(ctx, m, r, &pg, ferr, sizeof ferr)) {
            json_t *o = json_pack("{s:s, s:s}", "error", ferr, "error_type", "inference_failed");
            char *eo = json_dumps(o, JSON_COMPACT);
            json_decref(o);
            bt_result_line(&line, i, s->names[i], 500, eo ? eo : "", eo ? strlen(eo) : 0);
            free(eo);
            failed = 1;
        } else {
            size_t len = 0;
            char *body = tk_response(r, mref, &len);
            if (!body) {
                tk_free(r);
                free(line.s);
                snprintf(err, errlen, "out of memory");
                pf_ctx_free(ctx);
                json_decref(mref);
                return -1;
            }
            bt_result_line(&line, i, s->names[i], 200, body, len);
            free(body);
        }
        tk_free(r);
        if (line.oom || fwrite(line.s, 1, line.len, out) != line.len) {
            free(line.s);
            snprintf(err, errlen, "cannot write the results: %s", strerror(errno));
            pf_ctx_free(ctx);
            json_decref(mref);
            return -1;
        }
        free(line.s);
        pg.seqs_done++;
        progress_draw(&pg, 0);
    }
    progress_end(&pg);
    pf_ctx_free(ctx);
    json_decref(mref);
    return failed;
}

/* Options shared by score, embed and run-jobs; the task parameters are collected as strings. */
typedef struct {
    const char *weights, *fasta, *task, *out, *seq, *mutations_file;
    long max_pll;
    int json, quiet;
    unsigned params_given;      /* bit k: task_params[k] was given */
    json_t *params;             /* query-style task parameters (strings) */
} task_opts;

/* The task parameter options, the parameter each sets (NULL: --per-residue, no value) and the task
 * that takes it. */
static const struct { const char *opt, *param; tk_kind kind; } task_params[] = {
    {"--top-k", "top_k", TK_PREDICT}, {"--mask-positions", "mask_positions", TK_PREDICT},
    {"--mutations", "mutations", TK_SCORE}, {"--method", "method", TK_SCORE}, {"--offset", "offset", TK_SCORE},
    {"--format", "format", TK_SCORE},
    {"--layer", "layer", TK_EMBED}, {"--representations", "representations", TK_EMBED},
    {"--per-residue", NULL, TK_EMBED}};

/* Says on stderr that command cmd does not use option opt (why: the hint) and returns 2. */
static int not_used(const char *cmd, const char *opt, const char *hint) {
    fprintf(stderr, "performer %s: %s is not used by %s (%s): remove it\n", cmd, opt, cmd, hint);
    return 2;
}

/* Parses the options of score/embed/run-jobs into o, refusing those cmd does not use; returns 0 or
 * 2 (usage error). The task parameters are checked against the task by check_task_params. */
static int parse_task_opts(int argc, char **argv, const char *cmd, task_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_pll = 1024;
    o->params = json_object();
    int score = !strcmp(cmd, "score"), embed = !strcmp(cmd, "embed"), jobs = !score && !embed;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--json")) {
            if (!score) return not_used(cmd, a, "it always writes JSON Lines");
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) { o->quiet = 1; continue; }
        const int np = (int)(sizeof task_params / sizeof task_params[0]);
        int k = 0;                              /* k < np: a is the task parameter option k */
        while (k < np && strcmp(a, task_params[k].opt)) k++;
        if (k < np) o->params_given |= 1u << k;
        if (!strcmp(a, "--per-residue")) {
            json_object_set_new(o->params, "representations", json_string("mean,per_residue"));
            continue;
        }
        if (strncmp(a, "--", 2)) {
            if (jobs) return not_used(cmd, "a SEQUENCE", "it runs the sequences of --fasta F; one sequence is "
                                      "performer predict, score or embed");
            if (o->seq) { fprintf(stderr, "performer %s: more than one SEQUENCE given\n", cmd); return 2; }
            o->seq = a;
            continue;
        }
        if (!(v = arg_val(argc, argv, &i))) return 2;
        if (k < np) {
            json_object_set_new(o->params, task_params[k].param, json_string(v));
            continue;
        }
        if (!strcmp(a, "--weights")) o->weights = v;
        else if (!strcmp(a, "--fasta")) {
            if (score) return not_used(cmd, a, "it scores one SEQUENCE; for the sequences of a FASTA file use "
                                       "performer run-jobs --task score");
            o->fasta = v;
        } else if (!strcmp(a, "--task")) {
            if (!jobs) return not_used(cmd, a, "only run-jobs takes a task");
            o->task = v;
        } else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--mutations-file")) {
            if (!score) return not_used(cmd, a, "only score reads it; run-jobs --task score takes --mutations");
            o->mutations_file = v;
        } else if (!strcmp(a, "--max-pll-length")) {
            if (embed) return not_used(cmd, a, "it limits the pseudo-likelihood scoring of score");
            if (parse_long(a, v, 1, 10000000, &o->max_pll)) return 2;
        }
        else { fprintf(stderr, "performer %s: unknown option %s\n", cmd, a); return 2; }
    }
    if (!o->weights) { fprintf(stderr, "performer %s: --weights F is required\n", cmd); return 2; }
    return 0;
}

/* Refuses (message, 2) the task parameter options of o that the task kind does not take; 0 if none. */
static int check_task_params(const task_opts *o, const char *cmd, tk_kind kind) {
    for (size_t k = 0; k < sizeof task_params / sizeof task_params[0]; k++)
        if ((o->params_given >> k & 1) && task_params[k].kind != kind) {
            fprintf(stderr, "performer %s: %s is an option of the %s task, not of %s: remove it\n", cmd,
                    task_params[k].opt, tk_kind_name(task_params[k].kind), tk_kind_name(kind));
            return 2;
        }
    return 0;
}

/* Refuses (message, 2) an --out that is one of the n input files inputs[i] = {option, path} (NULL
 * or "-" = none); 0 if it is none of them. */
static int out_is_input(const char *cmd, const char *out, const char *const inputs[][2], int n) {
    if (!out || !strcmp(out, "-")) return 0;
    for (int i = 0; i < n; i++)
        if (inputs[i][1] && strcmp(inputs[i][1], "-") && tr_same_file(out, inputs[i][1])) {
            fprintf(stderr, "performer %s: --out %s is the same file as %s %s and would overwrite it: give another "
                    "file name\n", cmd, out, inputs[i][0], inputs[i][1]);
            return 2;
        }
    return 0;
}

/* Loads the weights and parses a FASTA text (or one sequence) into a submission for task. */
static int load_submission(task_opts *o, tk_kind kind, pf_model **m, tk_limits *lim, bt_submission **sub) {
    char err[512];
    if (pf_model_load(m, o->weights, err, sizeof err)) { fprintf(stderr, "performer: %s\n", err); return 1; }
    cli_limits(*m, o->max_pll, lim);
    bt_limits bl = {100000000, *lim};
    size_t len = 0;
    char *text = NULL;
    if (o->fasta) {
        text = read_file(o->fasta, &len, err, sizeof err);
        if (!text) { fprintf(stderr, "performer: %s\n", err); return 1; }
    } else {
        ut_buf b = {0};
        ut_str(&b, ">sequence\n");
        ut_str(&b, o->seq);
        ut_str(&b, "\n");
        if (b.oom) { free(b.s); fprintf(stderr, "performer: out of memory\n"); return 1; }
        text = b.s;
        len = b.len;
    }
    pr_error e;
    int rc = bt_parse_fasta(text, len, tk_kind_name(kind), o->params, &bl, ut_model_key((*m)->sha256), sub, &e);
    free(text);
    if (rc) {
        const char *msg = e.msg, *pre = "sequence 1 ('sequence'): ";
        if (!o->fasta && !strncmp(msg, pre, strlen(pre))) msg += strlen(pre);
        fprintf(stderr, "performer: %s (%s)\n", msg, e.type);
        json_decref(e.details);
        return 1;
    }
    return 0;
}

/* An output stream: stdout, a device or pipe written directly, or a regular file written through a
 * temp file that replaces it only when out_close commits (a failed run leaves no partial file and
 * keeps an old one). */
typedef struct {
    FILE *f;
    af_file af;
    int atomic;
} out_file;

/* Opens --out (or stdout with NULL or "-") into *o; 0, or -1 after a message. */
static int out_open(out_file *o, const char *path) {
    o->f = stdout;
    o->atomic = 0;
    o->af.fd = -1;
    if (!path || !strcmp(path, "-")) return 0;
    struct stat st;
    /* a symbolic link (/dev/stdout), a device or a FIFO is written in place: renaming a temp file
     * over it would replace the link or device itself */
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode)) {
            fprintf(stderr, "performer: --out %s is a directory; give a file name\n", path);
            return -1;
        }
        o->f = fopen(path, "w");
        if (!o->f) fprintf(stderr, "performer: cannot write %s: %s\n", path, strerror(errno));
        return o->f ? 0 : -1;
    }
    char err[512];
    if (af_open(&o->af, path, err, sizeof err)) {
        fprintf(stderr, "performer: cannot write %s: %s\n", path, err);
        return -1;
    }
    int fd = dup(o->af.fd);
    o->f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!o->f) {
        fprintf(stderr, "performer: cannot write %s: %s\n", path, strerror(errno));
        if (fd >= 0) close(fd);
        af_abort(&o->af);
        return -1;
    }
    o->atomic = 1;
    return 0;
}

/* Flushes and closes o; with keep, a temp file replaces its target (else it is discarded). Returns
 * 0, or -1 with err when writing failed (the target is then left as it was). */
static int out_close(out_file *o, int keep, char *err, size_t errlen) {
    int rc = 0;
    if (o->f == stdout) {
        if (fflush(stdout) == 0) return 0;
        snprintf(err, errlen, "cannot write to stdout: %s", strerror(errno));
        return -1;
    }
    if (fclose(o->f) != 0) {
        snprintf(err, errlen, "cannot write: %s", strerror(errno));
        rc = -1;
    }
    o->f = NULL;
    if (!o->atomic) return rc;
    if (rc || !keep) {
        af_abort(&o->af);
        return rc;
    }
    return af_commit(&o->af, err, errlen);
}

/* `performer score`: a table of mutant scores, or the JSON of POST /score, on stdout or --out. */
static int cmd_score(int argc, char **argv) {
    task_opts o;
    int rc = parse_task_opts(argc, argv, "score", &o);
    if (rc) { json_decref(o.params); return rc; }
    const char *const inputs[][2] = {{"--weights", o.weights}, {"--mutations-file", o.mutations_file}};
    if ((rc = check_task_params(&o, "score", TK_SCORE)) || (rc = out_is_input("score", o.out, inputs, 2))) {
        json_decref(o.params);
        return rc;
    }
    if (!o.seq) { fprintf(stderr, "performer score: give the wild-type SEQUENCE\n"); json_decref(o.params); return 2; }
    if (o.mutations_file) {
        char err[512];
        size_t len;
        char *t = read_file(o.mutations_file, &len, err, sizeof err);
        if (!t) { fprintf(stderr, "performer: %s\n", err); json_decref(o.params); return 1; }
        for (char *p = t; *p;) {            /* one mutant per line; '#' starts a comment */
            if (*p == '#') while (*p && *p != '\n') *p++ = ' ';    /* stops at the end of the text */
            else p++;
        }
        for (char *p = t; *p; p++)
            if (*p == '\n' || *p == '\r' || *p == '\t') *p = ',';
        json_object_set_new(o.params, "mutations", json_string(t));
        free(t);
    }
    if (!json_object_get(o.params, "mutations")) {
        fprintf(stderr, "performer score: give --mutations A24G,K30R:D31N or --mutations-file F\n");
        json_decref(o.params);
        return 2;
    }
    pf_model *m = NULL;
    tk_limits lim;
    bt_submission *sub = NULL;
    rc = load_submission(&o, TK_SCORE, &m, &lim, &sub);
    json_decref(o.params);
    if (rc) { pf_model_free(m); return rc; }
    tk_request *r = NULL;
    pr_error e;
    char err[512];
    char *body = NULL;
    out_file out;
    int opened = 0;
    rc = 1;
    if (tk_parse(TK_SCORE, sub->requests[0], strlen(sub->requests[0]), &lim, ut_model_key(m->sha256), &r, &e)) {
        fprintf(stderr, "performer: %s\n", e.msg);
        json_decref(e.details);
        goto done;
    }
    if (out_open(&out, o.out) != 0) goto done;     /* before the passes: an unwritable --out fails at once */
    opened = 1;
    pf_ctx *ctx = pf_ctx_new(m);
    progress pg = {0};
    pg.t0 = pg.last = mono_s();
    pg.tty = isatty(2);
    pg.quiet = o.quiet || r->n_inputs < 64;
    pg.total = r->n_inputs;
    pg.seqs_total = 1;
    snprintf(err, sizeof err, "out of memory");
    int frc = ctx ? run_task(ctx, m, r, &pg, err, sizeof err) : -1;
    pf_ctx_free(ctx);
    if (frc) { fprintf(stderr, "performer: %s\n", err); goto done; }
    pg.seqs_done = 1;
    progress_end(&pg);
    json_t *mref = tk_model_ref(m->cfg.name, m->sha256, m->cfg.trained);
    size_t len = 0;
    body = tk_response(r, mref, &len);
    json_decref(mref);
    if (!body) { fprintf(stderr, "performer: out of memory\n"); goto done; }
    if (o.json) {
        fprintf(out.f, "%s\n", body);
    } else {
        json_t *j = json_loads(body, 0, NULL);
        fprintf(out.f, "# %s, offset %ld, %zu residues%s\n", tk_method_name(r->method), r->offset,
                r->seq->len[0], m->cfg.trained ? "" : " (UNTRAINED model: scores are meaningless)");
        size_t i, a;
        json_t *v, *x;
        if (r->matrix) {                        /* position, wild type, then one column per residue */
            const char *alpha = json_string_value(json_object_get(j, "alphabet")),
                       *wt = json_string_value(json_object_get(j, "wt"));
            fprintf(out.f, "position\twt");
            for (const char *c = alpha; c && *c; c++) fprintf(out.f, "\t%c", *c);
            fputc('\n', out.f);
            json_array_foreach(json_object_get(j, "matrix"), i, v) {
                fprintf(out.f, "%lld\t%c", (long long)i + r->offset, wt ? wt[i] : '?');
                for (a = 0; a < TOK_NRES; a++) {
                    x = json_array_get(v, a);   /* NULL for a null row (a non-standard residue) */
                    if (json_is_number(x)) fprintf(out.f, "\t%.4f", json_number_value(x));
                    else fputs("\tNA", out.f);
                }
                fputc('\n', out.f);
            }
        } else {
            fprintf(out.f, "mutant\tscore\n");
            json_array_foreach(json_object_get(j, "scores"), i, v)
                fprintf(out.f, "%s\t%.4f\n", json_string_value(json_object_get(v, "mutant")),
                        json_number_value(json_object_get(v, "score")));
        }
        json_decref(j);
    }
    rc = 0;
done:
    if (opened) {                               /* --out is replaced only by a complete output */
        char cerr[512] = "";
        if (out_close(&out, rc == 0, cerr, sizeof cerr) && rc == 0) {
            fprintf(stderr, "performer score: %.200s: %.300s\n", o.out ? o.out : "stdout", cerr);
            rc = 1;
        }
    }
    free(body);
    tk_free(r);
    bt_free(sub);
    pf_model_free(m);
    return rc;
}

/* `performer embed` and `performer run-jobs`: JSON Lines of a FASTA file (or one sequence). */
static int cmd_lines(int argc, char **argv, const char *cmd) {
    task_opts o;
    int rc = parse_task_opts(argc, argv, cmd, &o);
    if (rc) { json_decref(o.params); return rc; }
    tk_kind kind = TK_EMBED;
    if (!strcmp(cmd, "run-jobs")) {
        if (!o.fasta || !o.task) {
            fprintf(stderr, "performer run-jobs: --fasta F and --task predict|score|embed|logits are required\n");
            json_decref(o.params);
            return 2;
        }
        if (tk_kind_parse(o.task, &kind)) {
            fprintf(stderr, "performer run-jobs: unknown task '%s' (predict, score, embed, logits)\n", o.task);
            json_decref(o.params);
            return 2;
        }
    } else if (!o.fasta == !o.seq) {
        fprintf(stderr, "performer embed: give one SEQUENCE or --fasta F, not %s\n", o.fasta ? "both" : "neither");
        json_decref(o.params);
        return 2;
    }
    if (!o.fasta) o.quiet = 1;               /* one sequence: no progress bar */
    const char *const inputs[][2] = {{"--fasta", o.fasta}, {"--weights", o.weights}};
    if ((rc = check_task_params(&o, cmd, kind)) || (rc = out_is_input(cmd, o.out, inputs, 2))) {
        json_decref(o.params);
        return rc;
    }
    pf_model *m = NULL;
    tk_limits lim;
    bt_submission *sub = NULL;
    rc = load_submission(&o, kind, &m, &lim, &sub);
    json_decref(o.params);
    if (rc) { pf_model_free(m); return rc; }
    out_file out;
    char err[512] = "";
    int r = -1;
    if (out_open(&out, o.out) == 0) {
        r = run_submission(m, sub, &lim, out.f, o.quiet, err, sizeof err);
        /* the lines of failed sequences are part of a complete output (r = 1); a fatal error
         * (r < 0) leaves --out as it was */
        char cerr[512] = "";
        if (out_close(&out, r >= 0, cerr, sizeof cerr) && r >= 0) {
            snprintf(err, sizeof err, "%.200s: %.300s", o.out ? o.out : "stdout", cerr);
            r = -1;
        }
    }
    if (r < 0 && err[0]) fprintf(stderr, "performer %s: %s\n", cmd, err);
    if (r == 1) fprintf(stderr, "performer %s: some sequences failed (see their \"error\" lines)\n", cmd);
    if (r == 0 && o.out && !o.quiet)
        fprintf(stderr, "performer %s: %lld sequences -> %s\n", cmd, sub->n, o.out);
    bt_free(sub);
    pf_model_free(m);
    return r == 0 ? 0 : 1;
}

/* Applies and removes the common option --threads N from argv (every command takes it; train
 * runs on the threads so set); 0, or -1 after a message for a bad value. */
static int take_threads(int *argc, char **argv) {
    for (int i = 2; i < *argc; i++) {
        if (strcmp(argv[i], "--threads") != 0) continue;
        long t;
        if (i + 1 >= *argc) { fprintf(stderr, "performer: --threads needs a value\n"); return -1; }
        if (parse_long("--threads", argv[i + 1], 1, 256, &t)) return -1;
        pf_set_threads((int)t);
        memmove(argv + i, argv + i + 2, sizeof(char *) * (size_t)(*argc - i - 1));  /* keeps NULL */
        *argc -= 2;
        i--;
    }
    return 0;
}

/* Applies and removes the common option --precision P from argv (every command takes it);
 * 0, or -1 after a message for a bad or unsupported value. */
static int take_precision(int *argc, char **argv) {
    for (int i = 2; i < *argc; i++) {
        if (strcmp(argv[i], "--precision") != 0) continue;
        char err[128];
        if (gm_select_precision(i + 1 < *argc ? argv[i + 1] : NULL, err, sizeof err) != 0) {
            fprintf(stderr, "performer: %s\n", err);
            return -1;
        }
        memmove(argv + i, argv + i + 2, sizeof(char *) * (size_t)(*argc - i - 1));  /* keeps NULL */
        *argc -= 2;
        i--;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    pf_omp_passive(argv);
    pf_set_threads(2);
    for (int i = 2; i < argc; i++)                          /* performer <command> --help */
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(USAGE, stdout);
            return 0;
        }
    if (take_precision(&argc, argv) != 0 || take_threads(&argc, argv) != 0) return 2;
    if (strcmp(argv[1], "train") != 0) gm_weight_cache(1);   /* inference: the weights stay fixed */
    const char *c = argv[1];
    if (strcmp(c, "info") == 0) return cmd_info(argc, argv);
    if (strcmp(c, "init") == 0) return cmd_init(argc, argv);
    if (strcmp(c, "predict") == 0) return cmd_predict(argc, argv);
    if (strcmp(c, "train") == 0) return cmd_train(argc, argv);
    if (strcmp(c, "eval") == 0) return cmd_eval(argc, argv);
    if (strcmp(c, "export") == 0) return cmd_export(argc, argv);
    if (strcmp(c, "overlap") == 0) return cmd_overlap(argc, argv);
    if (strcmp(c, "score") == 0) return cmd_score(argc, argv);
    if (strcmp(c, "embed") == 0) return cmd_lines(argc, argv, "embed");
    if (strcmp(c, "run-jobs") == 0) return cmd_lines(argc, argv, "run-jobs");
    fprintf(stderr, "performer: unknown command '%s'\n\n%s", c, USAGE);
    return 2;
}
