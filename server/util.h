/* util.h - small shared helpers for performerd: clocks, hex, random ids, SHA-256 (prefix ut_). */
#ifndef PD_UTIL_H
#define PD_UTIL_H

#include <stddef.h>

/* Returns a monotonic clock in seconds. */
double ut_mono(void);

/* Returns the wall clock in seconds since the Unix epoch. */
double ut_wall(void);

/* Writes 2*n lower-case hex digits of n random bytes (libcrypto RAND_bytes) plus NUL to out. */
void ut_random_hex(char *out, size_t n);

/* Writes the lower-case hex SHA-256 of len bytes at data to out[65]. */
void ut_sha256_hex(const void *data, size_t len, char out[65]);

/* Returns 1 when s is exactly 64 hex digits (either case), else 0. */
int ut_is_hex64(const char *s);

/* Returns 1 when a and b (NUL-terminated) are equal, comparing in time independent of content. */
int ut_secret_equal(const char *a, const char *b);

#endif
