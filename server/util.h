/* util.h - small shared helpers for performerd: clocks, hex, random ids, SHA-256, a growable text
 * buffer for large JSON responses (prefix ut_). */
#ifndef PD_UTIL_H
#define PD_UTIL_H

#include <stddef.h>
#include <time.h>

#include <jansson.h>

/* Returns a monotonic clock in seconds. */
double ut_mono(void);

/* Returns the absolute CLOCK_MONOTONIC time `seconds` from now, for pthread_cond_timedwait. */
struct timespec ut_deadline_in(double seconds);

/* Returns the wall clock in seconds since the Unix epoch. */
double ut_wall(void);

/* Writes 2*n lower-case hex digits of n random bytes (libcrypto RAND_bytes) plus NUL to out. */
void ut_random_hex(char *out, size_t n);

/* Writes the lower-case hex SHA-256 of len bytes at data to out[65]. */
void ut_sha256_hex(const void *data, size_t len, char out[65]);

/* The identity results of the model with this weights SHA-256 are cached under in this process:
 * the SHA-256 itself, with "+bf16" appended when the products run in bfloat16 (model/gemm.h), so
 * the two precisions never share cached results or jobs. A per-thread buffer: use it or copy it
 * before the thread's next call. */
const char *ut_model_key(const char *sha256);

/* Returns 1 when s is exactly 64 hex digits (either case), else 0. */
int ut_is_hex64(const char *s);

/* Returns 1 when an If-None-Match header value matches etag (a quoted entity tag, "..."): "*", or
 * any entry of its comma-separated list equal to etag by the weak comparison of RFC 9110 (a W/
 * prefix on either side is ignored, so a proxy that weakened the tag, as nginx's gzip does, still
 * gets its 304); else 0 (also for NULL or malformed entries). */
int ut_etag_match(const char *header, const char *etag);

/* Returns 1 when a and b (NUL-terminated) are equal, comparing in time independent of content. */
int ut_secret_equal(const char *a, const char *b);

/* Writes the standard base64 of the SHA-256 of len bytes at data to out[45] (for CSP hashes). */
void ut_sha256_b64(const void *data, size_t len, char out[45]);

/* A growable NUL-terminated text buffer; oom is set (and later appends ignored) on allocation
 * failure. Start from {0}; the caller frees s. */
typedef struct { char *s; size_t len, cap; int oom; } ut_buf;

/* Appends n bytes. */
void ut_put(ut_buf *b, const char *s, size_t n);

/* Appends a C string. */
void ut_str(ut_buf *b, const char *s);

/* Appends printf-formatted text (pieces up to 255 bytes). */
__attribute__((format(printf, 2, 3))) void ut_printf(ut_buf *b, const char *fmt, ...);

/* Appends a number with 6 significant digits as valid JSON (non-finite values become +-1e308). */
void ut_num(ut_buf *b, double x);

/* Appends s (valid UTF-8) as a JSON string literal, escaping quotes, backslashes and controls. */
void ut_json_str(ut_buf *b, const char *s);

/* JSON has one number type: stores in *out the integer value of v, an integer or a real with no
 * fractional part (5.0, 1e2, as JSON Schema's "integer" accepts) within +-2^53. Returns 1, or 0 when v
 * is no such number (a fraction, a string, true, ...). */
int ut_json_int(const json_t *v, long long *out);

#endif
