/* safetensors.h - a validating reader and an atomic writer for the safetensors container
 * (prefix st_). Format: u64 LE header length N, N bytes of JSON, then the data section. */
#ifndef PF_SAFETENSORS_H
#define PF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef struct {
    char name[256];
    char dtype[8];              /* "F32", "F16", "BF16", "I32", ... as written in the file */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;               /* product of shape */
    size_t begin, end;          /* data_offsets, relative to the data section */
    const void *data;           /* pointer into the mapping */
} st_tensor;

typedef struct {
    void *map;                  /* read-only mmap of the whole file */
    size_t len;                 /* file length */
    size_t data_start;          /* 8 + header length */
    int n;                      /* number of tensors */
    st_tensor *t;               /* [n], in header order */
    int n_meta;
    char **meta_keys, **meta_vals;  /* __metadata__ (strings) */
} st_file;

/* mmaps path read-only and validates the container: header length within the file and <= 100 MB,
 * valid JSON object, every tensor with a known dtype, shape and data_offsets consistent with the
 * dtype size, offsets inside the data section and non-overlapping, no bytes unaccounted for,
 * metadata values strings. Returns 0, or -1 with err naming the tensor/key. */
int st_open(st_file *f, const char *path, char *err, size_t errlen);

/* Unmaps and frees. Safe on a zeroed or closed st_file. */
void st_close(st_file *f);

/* Returns the tensor with that name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);

/* Returns the metadata value for key, or NULL. */
const char *st_meta(const st_file *f, const char *key);

/* One tensor to write (F32 only). */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
} st_out_tensor;

/* Writes n F32 tensors and string metadata (n_meta key/value pairs) to path atomically: a temp
 * file in the same directory, fsync, rename, fsync of the directory. Returns 0 or -1 + err. */
int st_write(const char *path, const st_out_tensor *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta, char *err, size_t errlen);

/* Computes the lower-case hex SHA-256 (65 bytes with NUL) of len bytes at data (libcrypto). */
void st_sha256_hex(const void *data, size_t len, char out[65]);

/* Computes the lower-case hex SHA-256 of the whole file at path (streamed). Returns 0 or -1 + err. */
int st_sha256_file(const char *path, char out[65], char *err, size_t errlen);

#endif
