/* atomic.h - files replaced atomically (prefix af_): write a temp file beside the target, fsync it,
 * rename it over the target, fsync the directory. A crash leaves the old file or the new one. */
#ifndef PF_ATOMIC_H
#define PF_ATOMIC_H

#include <stddef.h>

typedef struct {
    int fd;                     /* the temp file, -1 when none is open */
    char *tmp;                  /* its path (malloc'd), NULL when none */
    char *path;                 /* the target (malloc'd copy) */
} af_file;

/* Creates a temp file (mode 0644) beside path. Returns 0, or -1 with err. */
int af_open(af_file *af, const char *path, char *err, size_t errlen);

/* Writes all n bytes at buf. Returns 0, or -1 with errno set. */
int af_write(af_file *af, const void *buf, size_t n);

/* fsyncs and closes the temp file, renames it over the target and fsyncs the directory. Returns 0,
 * or -1 with err; either way the af_file is released (no temp file is left behind). */
int af_commit(af_file *af, char *err, size_t errlen);

/* Discards an uncommitted temp file and releases the af_file. Safe on a released one. */
void af_abort(af_file *af);

#endif
