/* kmer.h - exact k-mer sets of a sequence set (prefix km_), to measure how much of a sequence
 * already occurs in the training data (weights/similarity.sh: test quality by similarity to train).
 *
 * A k-mer is k consecutive residue ids (5..29, any residue token, standard or not) packed 5 bits
 * each into a uint64_t, so 1 <= k <= 12. The index is the sorted, de-duplicated array of every
 * k-mer of every sequence of a set; membership is a binary search. Functions that can fail return
 * 0 on success or -1 with a one-line message in err (err may be NULL). */
#ifndef PF_KMER_H
#define PF_KMER_H

#include <stddef.h>
#include <stdint.h>

struct ds_set;
typedef struct km_index km_index;

#define KM_MAX_K 12

/* Builds the k-mer set of s (every window of k residues of every sequence; sequences shorter than
 * k contribute none) into *out; k must be 1..KM_MAX_K. Memory: 16 bytes per window while sorting. */
int km_build(km_index **out, const struct ds_set *s, int k, char *err, size_t errlen);

/* Returns the number of distinct k-mers in idx. */
size_t km_size(const km_index *idx);

/* Returns k of idx. */
int km_k(const km_index *idx);

/* Returns how many of the n-k+1 windows of seq[0..n) are in idx and sets *windows to n-k+1 (0 when
 * n < k); ids outside 5..29 never match. */
size_t km_shared(const km_index *idx, const uint8_t *seq, size_t n, size_t *windows);

/* Releases idx; NULL is a no-op. */
void km_free(km_index *idx);

#endif
