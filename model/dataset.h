/* dataset.h - protein sequence sets for training and evaluation (prefix ds_).
 *
 * A set is an ordered list of residue-id sequences (ids 5..29, no <cls>/<eos> framing), read either
 * from a PFDATA1 token file (weights/DATA.md; memory-mapped and fully validated on open) or from a
 * FASTA file (parsed into memory, record names kept). Both give the same read-only interface.
 * Functions that can fail return 0 on success or -1 with a one-line message in err (err may be
 * NULL; the message is truncated to errlen). Nothing here exits or aborts on bad input. */
#ifndef PF_DATASET_H
#define PF_DATASET_H

#include <stddef.h>
#include <stdint.h>

#define DS_MAGIC "PFDATA1"      /* 7 bytes + NUL = the 8-byte file magic */
#define DS_HEADER_BYTES 24      /* magic, u64 n_seqs, u64 n_tokens; then u64 offsets[n_seqs + 1] */

typedef struct ds_set ds_set;

/* Opens a PFDATA1 file read-only (mmap) after checking magic, sizes against the file length,
 * offsets (0 first, non-decreasing, n_tokens last) and every token id (5..29); *out on success. */
int ds_open(ds_set **out, const char *path, char *err, size_t errlen);

/* Parses a FASTA file into memory: '>' starts a record (name = header text up to the first
 * whitespace), sequences may span lines, blank lines, ';' comment lines, whitespace (CRLF line
 * endings too) and a leading UTF-8 byte-order mark are ignored, residues are case-insensitive, one
 * terminal '*' per record is stripped; any other character, an empty record, data before the first
 * header or a file without records is an error naming record, line and position, with the fix
 * (gaps, numbered lines, binary/compressed/UTF-16 files, old Mac line endings). */
int ds_load_fasta(ds_set **out, const char *path, char *err, size_t errlen);

/* Opens path with ds_open when its name ends in ".bin", else with ds_load_fasta. */
int ds_open_path(ds_set **out, const char *path, char *err, size_t errlen);

/* Returns the number of sequences (0 for NULL). */
size_t ds_count(const ds_set *s);

/* Returns the total number of residues over all sequences (0 for NULL). */
size_t ds_tokens(const ds_set *s);

/* Returns the residue ids of sequence i and sets *len (len may be NULL); NULL and *len = 0 when i is
 * out of range. The pointer stays valid until ds_close. */
const uint8_t *ds_seq(const ds_set *s, size_t i, size_t *len);

/* Returns the number of standard residues (the 20 that are masked and scored) in the first count
 * sequences of s (all when count exceeds them). */
size_t ds_standard(const ds_set *s, size_t count);

/* Fills freq[20] with the add-one smoothed frequencies of the 20 standard residues (tokenizer
 * order) over the first count sequences of s (all when count exceeds them): the unigram baseline. */
void ds_unigram(const ds_set *s, size_t count, double freq[20]);

/* Returns the FASTA name of sequence i, or NULL for sets opened from a .bin file or i out of range. */
const char *ds_name(const ds_set *s, size_t i);

/* Returns the length of the longest sequence (0 for an empty set). */
size_t ds_max_len(const ds_set *s);

/* Writes s as a PFDATA1 file at path atomically (temporary file in the same directory, fsync,
 * rename); on failure path is left untouched and no temporary file remains. */
int ds_write_bin(const char *path, const ds_set *s, char *err, size_t errlen);

/* Releases s (unmaps or frees); NULL is a no-op. */
void ds_close(ds_set *s);

#endif
