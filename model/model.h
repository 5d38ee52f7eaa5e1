/* model.h - Performer protein masked LM: config, parameters, loading, forward pass (prefix pf_).
 *
 * A pf_model owns (or maps) all parameters; a pf_ctx is one thread's activation arena. The
 * forward pass is described exactly in weights/FORMAT.md. */
#ifndef PF_MODEL_H
#define PF_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"

typedef enum {
    PF_KERNEL_FAVOR_SOFTMAX = 0,
    PF_KERNEL_FAVOR_RELU = 1,
    PF_KERNEL_EXACT = 2,
    PF_KERNEL_DEFAULT = -1      /* use the kernel of the weights' config */
} pf_kernel;

typedef struct {
    int n_layers;               /* blocks */
    int d_model;                /* width d */
    int n_heads;                /* heads H; dh = d / H */
    int d_ff;                   /* feed-forward width F */
    int n_features;             /* FAVOR+ random features m */
    pf_kernel kernel;           /* default attention kernel */
    float norm_eps;             /* LayerNorm epsilon */
    int conv_kernel;            /* width K of the depthwise conv on q, k, v (odd, 1..31); 0 = none */
    int local_kernel;           /* width K of the local block's depthwise conv (odd, 1..31); 0 = no
                                 * local block */
    int trained;                /* 1 when metadata says trained */
    char name[128];
    char provenance[2048];
} pf_config;

/* Pointers to one block's parameters (shapes per weights/FORMAT.md). */
typedef struct {
    float *ln1_w, *ln1_b;       /* [d] */
    float *wq, *bq;             /* [d, d], [d] */
    float *wk, *bk;             /* [d, d], [d] */
    float *wv, *bv;             /* [d, d], [d] */
    float *wo, *bo;             /* [d, d], [d] */
    float *proj;                /* [m, dh] */
    float *conv_q, *conv_k, *conv_v; /* [K, d] depthwise conv taps (NULL when conv_kernel = 0) */
    float *local_ln_w, *local_ln_b;  /* [d] local block (all NULL when local_kernel = 0) */
    float *local_conv;               /* [K, d] its depthwise conv taps */
    float *local_out_w, *local_out_b; /* [d, d], [d] */
    float *ln2_w, *ln2_b;       /* [d] */
    float *fc1_w, *fc1_b;       /* [F, d], [F] */
    float *fc2_w, *fc2_b;       /* [d, F], [d] */
} pf_layer;

/* All parameters. In a loaded model they point into the read-only mapping; in an initialised or
 * training model into one owned allocation laid out in pf_tensor_table order. */
typedef struct {
    float *embed;               /* [V, d] */
    pf_layer *layers;           /* [n_layers] */
    float *lnf_w, *lnf_b;       /* [d] */
    float *head_w, *head_b;     /* [20, d], [20] */
} pf_params;

typedef struct {
    pf_config cfg;
    pf_params p;
    pf_layer *layer_store;      /* backing array of p.layers */
    float *owned;               /* owned parameter buffer (NULL when mapped) */
    size_t n_params;            /* number of floats */
    void *map;                  /* mmap base (NULL when owned) */
    size_t map_len;
    char sha256[65];            /* lower-case hex SHA-256 of the file ("" for an unsaved model) */
    char path[1024];
} pf_model;

/* One entry of the canonical tensor list. */
typedef struct {
    char name[64];
    int ndim;
    int shape[2];
    size_t numel;
    float **slot;               /* where the tensor's pointer lives inside a pf_params */
} pf_tensor_info;

/* Returns the number of tensors of cfg and fills out[] (capacity cap) in canonical order, binding
 * slots to params p (p->layers must have cfg->n_layers entries). */
int pf_tensor_table(const pf_config *cfg, pf_params *p, pf_tensor_info *out, int cap);

/* Returns the total number of parameters (floats) of cfg. */
size_t pf_param_count(const pf_config *cfg);

/* Largest conv_kernel and local_kernel accepted. */
#define PF_MAX_CONV_KERNEL 31

/* Checks a config (positive sizes, d divisible by heads, kernel valid, conv_kernel and
 * local_kernel 0 or odd 1..PF_MAX_CONV_KERNEL). Returns 0 or -1 + err. */
int pf_config_validate(const pf_config *cfg, char *err, size_t errlen);

/* Returns "favor-softmax" / "favor-relu" / "exact". */
const char *pf_kernel_name(pf_kernel k);

/* Parses a kernel name; returns -1 (and leaves *k) when unknown. */
int pf_kernel_parse(const char *s, pf_kernel *k);

/* mmaps and validates a safetensors weights file. Returns 0 and *out, or -1 with a message naming
 * the tensor/key and the fix in err. Never crashes on a malformed file. */
int pf_model_load(pf_model **out, const char *path, char *err, size_t errlen);

/* Creates a randomly initialised model (owned parameters) from cfg and seed. */
int pf_model_init(pf_model **out, const pf_config *cfg, uint64_t seed, char *err, size_t errlen);

/* Makes an owned, writable copy of m (for training from loaded weights). */
int pf_model_clone_owned(pf_model **out, const pf_model *m, char *err, size_t errlen);

/* Makes an owned copy of m (which has no convolution) with conv_kernel K (odd, 1..31) and identity
 * taps (w[(K-1)/2, c] = 1, others 0), so the copy computes exactly the same function as m (warm
 * start of a conv model from a conv-less one). Returns 0 or -1 + err. */
int pf_model_add_conv(pf_model **out, const pf_model *m, int K, char *err, size_t errlen);

/* Makes an owned copy of m (which has no local block) with local_kernel K (odd, 1..31) and
 * identity-preserving local blocks (LN 1/0, identity taps, local.out weight and bias 0), so the
 * copy computes exactly the same function as m. Returns 0 or -1 + err. */
int pf_model_add_local(pf_model **out, const pf_model *m, int K, char *err, size_t errlen);

/* Parses the value s of the optional width key (conv_kernel / local_kernel; NULL = absent = 0 =
 * none) into *out: an odd decimal integer 1..PF_MAX_CONV_KERNEL or 0. what names the convolution
 * for the message (PF_WIDTH_CONV / PF_WIDTH_LOCAL). Returns 0 or -1 + err. */
#define PF_WIDTH_CONV "the depthwise convolution on q, k, v"
#define PF_WIDTH_LOCAL "the local block's depthwise convolution"
int pf_parse_width(const char *s, const char *key, const char *what, int *out, char *err,
                   size_t errlen);

/* Makes an owned copy of m with conv_kernel / local_kernel set to the given widths (0 = as m has
 * it) and n_layers layers (0 = as m; more appends layers on top, drawn with seed); the parts m
 * lacks start as the identity (an added layer's residual branches end in zero projections), so
 * the copy computes exactly m's function. A width m already has with another value, or fewer
 * layers, is refused. The sha256 is kept when nothing was added. Returns 0 or -1 + err. */
int pf_model_extend(pf_model **out, const pf_model *m, int conv_kernel, int local_kernel,
                    int n_layers, uint64_t seed, char *err, size_t errlen);

/* Copies src into dst (capacity cap > 0), cut if needed at a character boundary so that a valid
 * UTF-8 src stays valid UTF-8 (a name cut to the size of pf_config.name). */
void pf_copy_utf8(char *dst, size_t cap, const char *src);

/* Writes m as safetensors atomically (temp file, fsync, rename, fsync dir); sets m->sha256. */
int pf_model_save(pf_model *m, const char *path, char *err, size_t errlen);

/* Frees a model (unmaps or frees parameters). NULL is fine. */
void pf_model_free(pf_model *m);

/* Draws FAVOR+ orthogonal random features into proj [m, dh] (weights/FORMAT.md) from seed. */
void pf_draw_projection(float *proj, int m, int dh, uint64_t seed);

/* Per-thread activation arena for forward passes; grows to the largest batch seen. */
typedef struct pf_ctx pf_ctx;

/* Returns a new empty context for model m, or NULL on allocation failure. */
pf_ctx *pf_ctx_new(const pf_model *m);

/* Frees a context. NULL is fine. */
void pf_ctx_free(pf_ctx *ctx);

/* Largest sequence length the exact kernel accepts under the default L x L memory limit. */
size_t pf_exact_max_len(const pf_model *m);

/* Sets the memory limit (bytes) for the exact kernel's L x L scores (default 1 GiB). */
void pf_set_exact_mem_limit(size_t bytes);

/* Defaults of pf_set_group_tokens: the most packed tokens a forward pass runs through all layers
 * at once (a longer sequence runs alone). Measured when it was added (bench_forward
 * --group-tokens, 2 threads): against the whole batch at once, 4,096 kept the speed within the
 * noise in both precisions and cut the peak RSS of 16 x 512 positions from about 160 MB to 92 MB;
 * 2,048 was up to 8% slower in bf16. With bf16 on AMX tiles 2,048 was the faster (session 47,
 * Intel AMX, 2 threads, interleaved rounds): with 2,048-row feed-forward chunks 1,024 x 8
 * 1.06-1.09x and 512 x 16 1.08-1.12x; on top of PF_FFN_ROWS_AMX_DEFAULT's 512-row chunks, 1,024 x 8
 * 1.04-1.07x and 512 x 16 0.97-1.09x (three rounds); sequence-parallel batches (256 x 16,
 * 128 x 32) plan the same groups either way. So it is the default there; elsewhere 4,096. */
#define PF_GROUP_TOKENS_DEFAULT 4096
#define PF_GROUP_TOKENS_AMX_DEFAULT 2048
/* The initial setting of pf_set_group_tokens: the default for each pass's products. */
#define PF_GROUP_TOKENS_AUTO ((size_t)-1)

/* Sets how many packed tokens pf_forward runs through all layers at once: a batch is cut into
 * groups of whole sequences of at most n tokens (a longer sequence forms its own group) and the
 * groups run one after another, so that a group's activations stay in cache and the arena holds
 * one group, not the batch. 0 = the whole batch at once. Results do not depend on it. */
void pf_set_group_tokens(size_t n);

/* The group size a pass would use now (pf_set_group_tokens's setting, or PF_GROUP_TOKENS_AUTO's
 * choice for the current products); 0 = the whole batch at once. */
size_t pf_group_tokens(void);

/* Defaults of pf_set_ffn_rows, by the weight products' kernel. PF_FFN_ROWS_DEFAULT, measured when
 * it was added (bench_forward, 2 threads, interleaved, favor-relu): at L = 32,768 1.12x faster in
 * bf16 and 1.06x in float32 than the whole sequence at once, peak RSS 559 -> 431 MB; at 4,096
 * 1.03-1.07x; 512 rows were 7% slower at L = 1,024 in bf16 (before fc1's bias and GELU ran in its
 * product's epilogue). bf16 on AMX tiles (gm_bf16_is_amx) since: 512 rows beat 2,048 at every
 * length tried (session 47, Intel AMX, 2 threads, three interleaved rounds: L = 2,048
 * 1.03-1.08x, 4,096 1.04-1.10x, 32,768 1.03-1.09x, 512 x 16 1.09-1.13x; 1,024 and 512 x 1 within
 * noise), so it is the default there; float32 showed no difference beyond noise. */
#define PF_FFN_ROWS_DEFAULT 2048
#define PF_FFN_ROWS_AMX_DEFAULT 512
/* The initial setting of pf_set_ffn_rows: the default for each pass's products. */
#define PF_FFN_ROWS_AUTO ((size_t)-1)

/* Sets how many positions the feed-forward block (LayerNorm, fc1, GELU, fc2 + residual: all
 * row-wise) runs at a time, so that its [rows, d_ff] activations stay in cache at any length and
 * the arena holds only that many rows of them. 0 = all positions of a group at once;
 * PF_FFN_ROWS_AUTO (the initial setting) = PF_FFN_ROWS_AMX_DEFAULT for bf16 products on AMX tiles,
 * else PF_FFN_ROWS_DEFAULT. Results do not depend on it (float32 sums per row are the same). */
void pf_set_ffn_rows(size_t n);

/* The rows per chunk a pass would use now (pf_set_ffn_rows's setting, or PF_FFN_ROWS_AUTO's
 * choice for the current products); 0 = all positions at once. */
size_t pf_ffn_rows(void);

/* Default of pf_set_seq_parallel_len. On an idle 2-core machine sequence-parallel batches ran
 * 1.04-1.08x faster up to 256 positions and 0.90-1.0x at 512 (bench/RESULTS.md, "Batches of short
 * sequences: sequence-parallel"); with the cores shared with another process it ran 3.6x (fp32) and
 * 10.9x (bf16) faster at 64 positions, as it waits at one barrier per batch instead of hundreds. */
#define PF_SEQ_PARALLEL_LEN_DEFAULT 256

/* Sets the longest sequence (framed positions) of a sequence-parallel batch: when pf_forward gets
 * two or more sequences, none longer than n, and more than one thread, it runs them as groups of
 * whole sequences on the threads side by side, each thread on its own arena with single-threaded
 * products, instead of each operation on all threads in turn (fewer fork/joins for short
 * sequences). 0 = never. Results do not depend on it beyond float32 summation order. */
void pf_set_seq_parallel_len(int n);

/* Default of pf_set_seq_groups: one group per thread. Measured when it was added (session 40, AMD,
 * idle, 64 positions x 8, interleaved rounds): bench_forward ran 1.07-1.09x (bf16) and 1.05-1.08x
 * (float32) slower with 2 groups a thread and 1.09-1.15x slower with 3 (smaller products), and the
 * daemon under wrk (62-residue misses) gained nothing from it: c = 16 bf16 and float32 level within
 * the noise, c = 8 float32 8-11% fewer requests/s with 2 (bench/README.md). */
#define PF_SEQ_GROUPS_DEFAULT 1

/* Sets how many groups per thread a sequence-parallel batch is cut into (at least 1). The groups
 * go to the threads as each thread becomes free (dynamic scheduling), so that a thread slowed by
 * other work on its core (the daemon's HTTP threads) leaves the rest to the others instead of
 * making them wait at the end; smaller groups run smaller matrix products. Results do not depend
 * on it beyond float32 summation order. */
void pf_set_seq_groups(int k);

/* Default cap on a sequence-parallel group's tokens (0: only the group size of pf_group_tokens):
 * for bf16 products on AMX tiles a thread's share is cut into groups of about 256 tokens, which
 * keep a group's activations in the core's cache. Measured (session 48, Intel AMX, 2 threads,
 * 64 positions per sequence, groups per thread set by hand): 16 sequences 1,141 seq/s with one
 * group of 512 tokens a thread against 1,263 with two of 256; 32 sequences 1,054 (1 group of
 * 1,024) against 1,164 (4 of 256); 64 sequences 1,041-1,053 (2 of 1,024) against 1,208-1,229
 * (8 of 256). Float32 showed no gain (16 and 32 sequences: one group a thread was as fast or
 * faster), so it keeps 0. */
#define PF_SEQ_GROUP_TOKENS_DEFAULT 0
#define PF_SEQ_GROUP_TOKENS_AMX_DEFAULT 256
/* The initial setting of pf_set_seq_group_tokens: the default for each pass's products. */
#define PF_SEQ_GROUP_TOKENS_AUTO ((size_t)-1)

/* Sets the most tokens a sequence-parallel group takes before a thread's share is cut into more
 * groups (whole sequences still; one sequence longer than n is a group of its own). 0 = the group
 * size (pf_group_tokens); PF_SEQ_GROUP_TOKENS_AUTO (the initial setting) =
 * PF_SEQ_GROUP_TOKENS_AMX_DEFAULT for bf16 products on AMX tiles, else PF_SEQ_GROUP_TOKENS_DEFAULT.
 * Results do not depend on it: the same bits with the own products (float32 on AVX-512, bf16 on
 * either kernel), float32 summation order with OpenBLAS. */
void pf_set_seq_group_tokens(size_t n);

/* The cap a sequence-parallel pass would use now (pf_set_seq_group_tokens's setting, or
 * PF_SEQ_GROUP_TOKENS_AUTO's choice for the current products); 0 = the group size. */
size_t pf_seq_group_tokens(void);

/* Returns the most packed tokens one thread runs when pf_forward, called from this thread, gets
 * the B sequences lens[b]: a thread's share when they run sequence-parallel, else the total
 * (every operation on all threads). Time is about proportional to it, so a scheduler can compare
 * batches by tokens per span (the daemon drops the last jobs of a batch that would leave a thread
 * idle). */
size_t pf_forward_span(const int *lens, int B);

/* Runs B framed sequences (tokens packed back to back, lens[b] each, including <cls>/<eos>)
 * through the model with the given kernel (PF_KERNEL_DEFAULT = config's). Writes log-probs
 * over the 20 standard residues for every position, packed: logp[(sum of lens) * 20].
 * When hidden != NULL also writes the final-LayerNorm hidden states [(sum of lens) * d].
 * Returns 0, or -1 with err (exact kernel over its memory limit, out of memory, bad token). */
int pf_forward(pf_ctx *ctx, const pf_model *m, pf_kernel kernel, const int32_t *tokens,
               const int *lens, int B, float *logp, float *hidden, char *err, size_t errlen);

/* libgomp spins this many rounds (about 0.4 ms of CPU on a 2-core AMD EPYC) before an idle thread
 * sleeps: enough to bridge the gaps between the parallel regions of one forward pass (a 64-residue
 * pass took 3.6 ms instead of 5.3 ms with 0), too short to matter when the service is idle. */
#define PF_GOMP_SPINCOUNT "10000"

/* Re-executes the running program with OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=
 * PF_GOMP_SPINCOUNT when either is unset (the OpenMP runtime reads them only at load time), so
 * idle OpenMP threads sleep after a brief spin instead of spinning on. Returns (doing nothing)
 * when both are set or the re-exec fails. */
void pf_omp_passive(char **argv);

/* As pf_forward, but hidden receives the representation after layer hidden_layer instead:
 * -1 = the final-LayerNorm output (as pf_forward), 0 = the input embeddings, k = the residual
 * stream after block k (1..n_layers). Returns -1 with err for an out-of-range layer. */
int pf_forward_ex(pf_ctx *ctx, const pf_model *m, pf_kernel kernel, const int32_t *tokens,
                  const int *lens, int B, float *logp, float *hidden, int hidden_layer, char *err,
                  size_t errlen);

/* Sets the number of threads used by OpenBLAS, the bf16 products and the element-wise loops, for
 * the calling thread and (through pf_thread_init) for threads started later. */
void pf_set_threads(int n);

/* Applies the count of the last pf_set_threads to the calling thread: OpenMP keeps its team size
 * per thread, so every thread that runs the model (the daemon's workers) calls this first. */
void pf_thread_init(void);

#endif
