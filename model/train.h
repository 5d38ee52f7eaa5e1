/* train.h - masked-LM training of the Performer in C (prefix tr_): forward with saved
 * activations, backward, AdamW, checkpoints, the training loop and evaluation. */
#ifndef PF_TRAIN_H
#define PF_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include "model.h"

/* Activations and gradient scratch for one model; grows to the largest batch seen. */
typedef struct tr_state tr_state;

/* Returns a new training state for model m (owned parameters), or NULL when out of memory. */
tr_state *tr_state_new(pf_model *m);

/* Frees a training state. NULL is fine. */
void tr_state_free(tr_state *s);

/* Runs forward and backward on B framed sequences (tokens packed, lens[b] each) with targets
 * (class 0..19 per position, -1 = unscored). OVERWRITES grads [n_params] (canonical order) with the
 * gradient of the mean masked-LM loss, which it returns (NaN on error, with err set). proj is a
 * constant (its gradient stays 0). *n_scored receives the number of scored positions. */
double tr_forward_backward(tr_state *s, pf_kernel kernel, const int32_t *tokens, const int *lens,
                           int B, const int32_t *targets, float *grads, int *n_scored, char *err,
                           size_t errlen);

/* Architecture options given on the command line (tr_options.arch_given). */
enum { TR_ARCH_LAYERS = 1, TR_ARCH_D_MODEL = 2, TR_ARCH_HEADS = 4, TR_ARCH_D_FF = 8,
       TR_ARCH_FEATURES = 16, TR_ARCH_KERNEL = 32, TR_ARCH_NAME = 64, TR_ARCH_CONV = 128,
       TR_ARCH_LOCAL = 256 };

/* Options of `performer train`. */
typedef struct {
    const char *data;           /* training .bin (weights/data/train.bin) or NULL with fasta */
    const char *valid;          /* validation .bin or .fasta, may be NULL */
    const char *fasta;          /* training FASTA (fine-tuning), or NULL */
    const char *init;           /* start from these weights (fine-tuning), or NULL */
    const char *out;            /* final weights path */
    const char *ckpt;           /* checkpoint path (resume reads it) */
    const char *log;            /* CSV log path, or NULL */
    int resume;
    pf_config cfg;              /* architecture when not --init; with --init, cfg.conv_kernel and
                                 * cfg.local_kernel > 0 add that part to weights without it, and
                                 * cfg.n_layers (when given) adds layers on top, all as the
                                 * identity (same function); other given options must match */
    unsigned arch_given;        /* TR_ARCH_* bits: the architecture options given explicitly */
    pf_kernel kernel;           /* kernel to train (DEFAULT = cfg's); stored in checkpoints, and a
                                 * resumed run goes on with the checkpoint's */
    uint64_t seed;              /* a resumed run goes on with the checkpoint's unless --seed is given */
    int seed_given;             /* --seed was given (on --resume it replaces the checkpoint's, noted) */
    long steps;                 /* total optimiser steps (schedule length) */
    long warmup;                /* warm-up steps */
    long decay_steps;           /* 0: cosine from the warm-up to the end; N: warm-up-stable-decay,
                                 * lr held until steps - N, then 1 - sqrt down to min_lr_frac * lr */
    const char *branch_ckpt;    /* with decay_steps: a checkpoint written where the decay starts
                                 * (resume it with more --steps to go on with the stable phase) */
    double lr, min_lr_frac, weight_decay, beta1, beta2, clip;
    int crop;                   /* maximum framed length of a training crop */
    int batch_tokens;           /* token budget per batch */
    double mask_rate;           /* 0.15 */
    long redraw;                /* redraw FAVOR projections every N steps (0 = never) */
    double ckpt_minutes;        /* checkpoint interval */
    double max_minutes;         /* stop (after a checkpoint) when this wall time is spent; 0 = none */
    long eval_every;            /* validation every N steps */
    int eval_seqs;              /* validation sequences used */
    long stop_after;            /* stop (after a checkpoint) after this many steps in this process; 0 = no */
    int quiet;                  /* no progress bar */
    int threads;                /* threads to run on; 0 = as pf_set_threads last set them */
} tr_options;

/* Fills o with the defaults. */
void tr_options_default(tr_options *o);

/* Runs training per o (resuming when o->resume: with the checkpoint's model, training kernel and,
 * unless --seed is given, seed; conflicting architecture or kernel options are refused; a checkpoint that exists but cannot be read is an
 * error). Returns 0, or -1 with err. Saves a checkpoint on SIGINT/SIGTERM and returns 0 after it
 * (with *interrupted = 1). */
int tr_run(const tr_options *o, int *interrupted, char *err, size_t errlen);

/* Writes v as a JSON number with fmt into dst (n bytes), or null when v is not finite (JSON has no
 * NaN or infinity). */
void tr_json_num(char *dst, size_t n, const char *fmt, double v);

/* Writes the model of checkpoint ckpt as a weights file out (trained = true, kernel = the kernel it
 * was trained with, provenance = the checkpoint's step and tokens). Returns 0 or -1 with err. */
int tr_export(const char *ckpt, const char *out, char *err, size_t errlen);

/* Returns 1 when paths a and b (either may be NULL) name the same file: the same inode when both
 * exist, else the same absolute path (so an output that does not exist yet is compared by name). */
int tr_same_file(const char *a, const char *b);

#define TR_CAL_BINS 10                          /* calibration bins of the top-1 probability */

/* Result of an evaluation pass. */
typedef struct {
    double nll, perplexity, accuracy;           /* model, over the 20 standard residues */
    double top5_accuracy;                       /* the true residue among the model's 5 most likely */
    double uni_perplexity, uni_accuracy;        /* unigram baseline on the same masks */
    long residues;                              /* positions scored */
    long sequences;
    /* calibration of the top-1 probability p: bin k holds the positions with p in
     * [k / TR_CAL_BINS, (k + 1) / TR_CAL_BINS) (p = 1 in the last): their count, mean p and
     * top-1 accuracy; ece = sum_k count_k / residues * |accuracy_k - mean p_k| */
    long cal_count[TR_CAL_BINS];
    double cal_conf[TR_CAL_BINS], cal_acc[TR_CAL_BINS];
    double ece;
} tr_eval_result;

struct ds_set;
/* Evaluates m on set (masking mask_rate of the standard residues of each sequence with seed, up to
 * max_seqs sequences (0 = all), each cut to its first max_len residues (0 = whole)) with unigram
 * frequencies uni[20] (NULL = from the set). window 0 runs each sequence in one pass; window N > 0
 * runs consecutive pieces of at most N residues, each framed by <cls>/<eos>, with the same masks. */
int tr_evaluate(const pf_model *m, pf_kernel kernel, const struct ds_set *set, double mask_rate,
                uint64_t seed, long max_seqs, int max_len, int window, const double *uni,
                tr_eval_result *r, char *err, size_t errlen);

#endif
