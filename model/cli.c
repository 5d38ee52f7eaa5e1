/* cli.c - bin/performer: the offline command-line tool (info, init, predict, train, eval). */
#include "dataset.h"
#include "model.h"
#include "train.h"

#include <errno.h>
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
    "          --kernel favor-softmax|favor-relu|exact --seed S --name NAME]\n"
    "                                            write a randomly initialised model\n"
    "  predict --weights F [--top-k K] [--kernel K] SEQUENCE\n"
    "                                            top-k residues for every <mask> (or every\n"
    "                                            position when there is no mask)\n"
    "  train   --data train.bin | --fasta F  [--valid F] --out F [--ckpt F] [--resume]\n"
    "          [--init weights] [--log F.csv] [--steps N] [--warmup N] [--lr X]\n"
    "          [--crop N] [--batch-tokens N] [--redraw N] [--seed S] [--threads N]\n"
    "          [--ckpt-minutes X] [--max-minutes X] [--stop-after N] [--eval-every N]\n"
    "          [--eval-seqs N] [--train-kernel K]\n"
    "          [architecture options of init]    masked-LM training (see weights/TRAINING.md)\n"
    "  eval    --weights F --fasta F [--mask-rate 0.15] [--seed S] [--kernel K]\n"
    "          [--max-seqs N] [--unigram F]      perplexity/accuracy vs a unigram baseline (JSON)\n"
    "  export  --ckpt F --out F                  write a checkpoint's model as a weights file\n"
    "\n"
    "common: --threads N (default 2)\n";

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
    if (errno || end == s || *end) { fprintf(stderr, "performer: %s expects a number, got '%s'\n", opt, s); return -1; }
    *out = v;
    return 0;
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
    printf("parameters:  %zu (%zu trainable; projections are fixed)\n", m->n_params,
           m->n_params - (size_t)c->n_layers * c->n_features * (c->d_model / c->n_heads));
    printf("vocabulary:  %s\n", tok_vocab_json());
    printf("provenance:  %s\n", c->provenance);
}

/* Applies one architecture option to cfg; returns 1 if consumed, 0 if not, -1 on error. */
static int arch_opt(pf_config *cfg, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    long x;
    struct { const char *name; int *dst; long hi; } ints[] = {
        { "--layers", &cfg->n_layers, 256 }, { "--d-model", &cfg->d_model, 8192 },
        { "--heads", &cfg->n_heads, 256 }, { "--d-ff", &cfg->d_ff, 65536 },
        { "--features", &cfg->n_features, 16384 } };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (strcmp(a, ints[k].name) == 0) {
            if (!(v = arg_val(argc, argv, i)) || parse_long(a, v, 1, ints[k].hi, &x)) return -1;
            *ints[k].dst = (int)x;
            return 1;
        }
    if (strcmp(a, "--kernel") == 0) {
        if (!(v = arg_val(argc, argv, i))) return -1;
        if (pf_kernel_parse(v, &cfg->kernel) != 0) { fprintf(stderr, "performer: unknown kernel '%s'\n", v); return -1; }
        return 1;
    }
    if (strcmp(a, "--name") == 0) {
        if (!(v = arg_val(argc, argv, i))) return -1;
        snprintf(cfg->name, sizeof cfg->name, "%s", v);
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
        int r = arch_opt(&cfg, argc, argv, &i);
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
        } else if (strcmp(argv[i], "--threads") == 0) {
            long t;
            if (!(v = arg_val(argc, argv, &i)) || parse_long("--threads", v, 1, 256, &t)) return 2;
            pf_set_threads((int)t);
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
        int r = arch_opt(&o.cfg, argc, argv, &i);
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
        else if (strcmp(a, "--seed") == 0) { if (parse_long(a, v, 0, 0x7fffffffL, &x)) return 2; o.seed = (uint64_t)x; }
        else if (strcmp(a, "--steps") == 0) { if (parse_long(a, v, 1, 100000000L, &o.steps)) return 2; }
        else if (strcmp(a, "--warmup") == 0) { if (parse_long(a, v, 1, 100000000L, &o.warmup)) return 2; }
        else if (strcmp(a, "--redraw") == 0) { if (parse_long(a, v, 0, 100000000L, &o.redraw)) return 2; }
        else if (strcmp(a, "--eval-every") == 0) { if (parse_long(a, v, 0, 100000000L, &o.eval_every)) return 2; }
        else if (strcmp(a, "--stop-after") == 0) { if (parse_long(a, v, 1, 100000000L, &o.stop_after)) return 2; }
        else if (strcmp(a, "--eval-seqs") == 0) { if (parse_long(a, v, 1, 10000000L, &x)) return 2; o.eval_seqs = (int)x; }
        else if (strcmp(a, "--crop") == 0) { if (parse_long(a, v, 8, 1000000L, &x)) return 2; o.crop = (int)x; }
        else if (strcmp(a, "--batch-tokens") == 0) { if (parse_long(a, v, 8, 100000000L, &x)) return 2; o.batch_tokens = (int)x; }
        else if (strcmp(a, "--threads") == 0) { if (parse_long(a, v, 1, 256, &x)) return 2; o.threads = (int)x; }
        else if (strcmp(a, "--lr") == 0) { if (parse_double(a, v, &o.lr)) return 2; }
        else if (strcmp(a, "--weight-decay") == 0) { if (parse_double(a, v, &o.weight_decay)) return 2; }
        else if (strcmp(a, "--clip") == 0) { if (parse_double(a, v, &o.clip)) return 2; }
        else if (strcmp(a, "--mask-rate") == 0) { if (parse_double(a, v, &o.mask_rate)) return 2; }
        else if (strcmp(a, "--ckpt-minutes") == 0) { if (parse_double(a, v, &o.ckpt_minutes)) return 2; }
        else if (strcmp(a, "--max-minutes") == 0) { if (parse_double(a, v, &o.max_minutes)) return 2; }
        else if (strcmp(a, "--min-lr-frac") == 0) { if (parse_double(a, v, &f)) return 2; o.min_lr_frac = f; }
        else { fprintf(stderr, "performer train: unknown option %s\n", a); return 2; }
    }
    if (!o.out && !o.ckpt) { fprintf(stderr, "performer train: give --out F (and/or --ckpt F)\n"); return 2; }
    if (o.warmup >= o.steps) o.warmup = o.steps / 10 + 1;
    char err[512] = "";
    int interrupted = 0;
    if (tr_run(&o, &interrupted, err, sizeof err) != 0) { fprintf(stderr, "performer train: %s\n", err); return 1; }
    return 0;
}

/* `performer eval`: prints one JSON object. */
static int cmd_eval(int argc, char **argv) {
    const char *w = NULL, *fa = NULL, *unif = NULL, *v;
    double rate = 0.15;
    long seed = 1, max_seqs = 0;
    pf_kernel kernel = PF_KERNEL_DEFAULT;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!(v = arg_val(argc, argv, &i))) return 2;
        if (strcmp(a, "--weights") == 0) w = v;
        else if (strcmp(a, "--fasta") == 0) fa = v;
        else if (strcmp(a, "--unigram") == 0) unif = v;
        else if (strcmp(a, "--mask-rate") == 0) { if (parse_double(a, v, &rate) || rate <= 0 || rate > 1) return 2; }
        else if (strcmp(a, "--seed") == 0) { if (parse_long(a, v, 0, 0x7fffffffL, &seed)) return 2; }
        else if (strcmp(a, "--max-seqs") == 0) { if (parse_long(a, v, 0, 100000000L, &max_seqs)) return 2; }
        else if (strcmp(a, "--threads") == 0) { long t; if (parse_long(a, v, 1, 256, &t)) return 2; pf_set_threads((int)t); }
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
    size_t fl = strlen(fa);
    int r = (fl > 4 && strcmp(fa + fl - 4, ".bin") == 0) ? ds_open(&set, fa, err, sizeof err)
                                                          : ds_load_fasta(&set, fa, err, sizeof err);
    if (r != 0) goto fail;
    if (unif) {
        size_t ul = strlen(unif);
        r = (ul > 4 && strcmp(unif + ul - 4, ".bin") == 0) ? ds_open(&uset, unif, err, sizeof err)
                                                            : ds_load_fasta(&uset, unif, err, sizeof err);
        if (r != 0) goto fail;
        double tot = 0;
        for (int c = 0; c < TOK_NRES; c++) uni[c] = 1;
        for (size_t i = 0; i < ds_count(uset); i++) {
            size_t n;
            const uint8_t *s = ds_seq(uset, i, &n);
            for (size_t j = 0; j < n; j++) if (tok_is_standard(s[j])) uni[s[j] - TOK_RES0] += 1;
        }
        for (int c = 0; c < TOK_NRES; c++) tot += uni[c];
        for (int c = 0; c < TOK_NRES; c++) uni[c] /= tot;
        unip = uni;
    }
    tr_eval_result res;
    if (tr_evaluate(m, kernel, set, rate, (uint64_t)seed, max_seqs, 0, unip, &res, err, sizeof err) != 0) goto fail;
    printf("{\"weights\": \"%s\", \"sha256\": \"%s\", \"fasta\": \"%s\", \"kernel\": \"%s\", \"mask_rate\": %g, "
           "\"seed\": %ld, \"sequences\": %ld, \"residues\": %ld, \"perplexity\": %.4f, \"accuracy\": %.4f, "
           "\"unigram\": {\"perplexity\": %.4f, \"accuracy\": %.4f, \"source\": \"%s\"}}\n",
           w, m->sha256, fa, pf_kernel_name(kernel == PF_KERNEL_DEFAULT ? m->cfg.kernel : kernel), rate, seed,
           res.sequences, res.residues, res.perplexity, res.accuracy, res.uni_perplexity, res.uni_accuracy,
           unif ? unif : fa);
    rc = 0;
    goto cleanup;
fail:
    fprintf(stderr, "performer eval: %s\n", err);
cleanup:
    ds_close(set); ds_close(uset);
    pf_model_free(m);
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
    char err[512];
    if (tr_export(ck, out, err, sizeof err) != 0) { fprintf(stderr, "performer export: %s\n", err); return 1; }
    pf_model *m = NULL;
    if (pf_model_load(&m, out, err, sizeof err) != 0) { fprintf(stderr, "performer export: %s\n", err); return 1; }
    print_info(m);
    pf_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    pf_omp_passive(argv);
    pf_set_threads(2);
    const char *c = argv[1];
    if (strcmp(c, "info") == 0) return cmd_info(argc, argv);
    if (strcmp(c, "init") == 0) return cmd_init(argc, argv);
    if (strcmp(c, "predict") == 0) return cmd_predict(argc, argv);
    if (strcmp(c, "train") == 0) return cmd_train(argc, argv);
    if (strcmp(c, "eval") == 0) return cmd_eval(argc, argv);
    if (strcmp(c, "export") == 0) return cmd_export(argc, argv);
    fprintf(stderr, "performer: unknown command '%s'\n\n%s", c, USAGE);
    return 2;
}
